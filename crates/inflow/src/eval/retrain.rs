//! Counterfactual retraining: fine-tune the base model on a subset of the training set and
//! measure the losses it leaves on evaluation sequences. LDS (METHODS.md §5, Park et al.
//! 2023) retrains once per random subset; selection experiments retrain once per selection;
//! planted-data evaluations train once on the poisoned mix.
//!
//! Each run lives in its own folder. `result.json` is written (atomically) only when the run
//! is complete, so a killed evaluation reruns exactly the runs that had not finished; a run
//! killed mid-training continues from its latest checkpoint.

use crate::atomic_write::write_json;
use crate::model::{LoadedModel, TokenSeq};
use crate::train::{self, Method, TrainData, TrainOptions};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What one retraining run left behind.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetrainResult {
    /// Indices (into the full training set) the run trained on, in the given order.
    pub subset: Vec<usize>,
    /// sha256 of the subset, the training options and the evaluation token ids: a stored
    /// result is reused only when all three match.
    pub key: String,
    /// Per-sequence mean response-token cross-entropy on the evaluation sequences, after
    /// training, in their order.
    pub losses: Vec<f32>,
    /// Mean of `losses`.
    pub mean_loss: f64,
    pub train_seconds: f64,
    pub last_train_loss: Option<f64>,
}

fn key(
    subset: &[usize],
    opts: &TrainOptions,
    eval: &[TokenSeq],
    train_ids: &[&TokenSeq],
) -> String {
    let mut h = Sha256::new();
    for i in subset {
        h.update((*i as u64).to_le_bytes());
    }
    h.update(serde_json::to_vec(opts).unwrap_or_default());
    for s in eval.iter().chain(train_ids.iter().copied()) {
        h.update((s.ids.len() as u64).to_le_bytes());
        for t in &s.ids {
            h.update(t.to_le_bytes());
        }
        for m in &s.loss_mask {
            h.update([*m as u8]);
        }
    }
    crate::model::hex(&h.finalize())
}

/// Trains LoRA adapters on `train_set[subset]` from the base model (any attached adapters
/// are detached first and again afterwards), then evaluates per-sequence losses on `eval`.
/// Reuses `dir/result.json` when its key matches; continues a killed run from its latest
/// checkpoint. Only LoRA: full fine-tuning would change the shared base weights.
pub fn retrain_and_eval(
    model: &mut LoadedModel,
    train_set: &[TokenSeq],
    subset: &[usize],
    eval: &[TokenSeq],
    opts: &TrainOptions,
    dir: &Path,
    threads: usize,
) -> Result<RetrainResult> {
    if !matches!(opts.method, Method::Lora(_)) {
        return Err(Error::Msg(
            "retraining runs use LoRA (full fine-tuning would change the shared base model)".into(),
        ));
    }
    let mut picked = Vec::with_capacity(subset.len());
    for &i in subset {
        let s = train_set.get(i).ok_or_else(|| {
            Error::Msg(format!(
                "subset index {i} is out of range ({} training samples)",
                train_set.len()
            ))
        })?;
        picked.push(s);
    }
    let key = key(subset, opts, eval, &picked);
    let result_path = dir.join("result.json");
    if let Ok(bytes) = std::fs::read(&result_path) {
        if let Ok(r) = serde_json::from_slice::<RetrainResult>(&bytes) {
            if r.key == key {
                return Ok(r);
            }
        }
        return Err(Error::Msg(format!(
            "{} holds a run with other data or settings; remove the folder or choose another",
            result_path.display()
        )));
    }
    let data = TrainData {
        seqs: picked.into_iter().cloned().collect(),
        identity: serde_json::json!({ "retrain_key": key }),
    };
    model.llama.set_adapters(None);
    let resume = train::checkpoint::latest(dir).is_some();
    let outcome = (|| {
        let summary = train::train(model, &data, opts, dir, resume, &mut |_, _| {})?;
        let e = train::eval_loss(model, eval, 4, threads)?;
        Ok::<_, Error>((summary, e))
    })();
    model.llama.set_adapters(None);
    let (summary, e) = outcome?;
    let r = RetrainResult {
        subset: subset.to_vec(),
        key,
        losses: e.losses,
        mean_loss: e.mean_loss,
        train_seconds: summary.seconds,
        last_train_loss: summary.last_loss,
    };
    write_json(&result_path, &r)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny;

    fn seq(m: &LoadedModel, prompt: &str, response: &str) -> TokenSeq {
        TokenSeq::prompt_response(m.encode(prompt).unwrap(), &m.encode(response).unwrap())
    }

    #[test]
    fn retrain_lowers_train_loss_and_resumes_from_result() {
        let mut m = tiny::random(&tiny::config(16, 2), 7, candle_core::DType::F32).unwrap();
        let seqs: Vec<TokenSeq> = (0..6)
            .map(|i| seq(&m, &format!("q{i}"), " the same answer every time"))
            .collect();
        let mut opts = TrainOptions::lora(4, 8.0, "q,v");
        opts.lr = 1e-2;
        opts.epochs = 3;
        opts.batch_size = 2;
        let dir = std::env::temp_dir().join(format!("inflow-retrain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let before = train::eval_loss(&m, &seqs, 4, 1).unwrap().mean_loss;
        let r = retrain_and_eval(&mut m, &seqs, &[0, 1, 2, 3], &seqs, &opts, &dir, 1).unwrap();
        assert!(r.mean_loss < before, "{} !< {before}", r.mean_loss);
        assert!(m.llama.adapters().is_none(), "adapters left attached");
        let again = retrain_and_eval(&mut m, &seqs, &[0, 1, 2, 3], &seqs, &opts, &dir, 1).unwrap();
        assert_eq!(r, again);
        assert!(retrain_and_eval(&mut m, &seqs, &[0, 1], &seqs, &opts, &dir, 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
