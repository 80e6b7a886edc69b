//! Scores summed over training checkpoints (METHODS.md §2):
//! - TracIn (Pruthi et al. 2020): s(q, z) = Σ_c η_c φ_c(q)·φ_c(z);
//! - LESS (Xia et al. 2024): s(q, z) = Σ_c η_c cos(Γ_c(z), φ_c(q)), training features the
//!   Adam updates Γ of a checkpoint's moments, query features plain (SGD) gradients; for target
//!   tasks, the mean over a task's queries, then the max over tasks.
//!
//! Each checkpoint store (made by `inflow index --checkpoints`) records its checkpoint and
//! learning rate η_c; queries are featurized at each checkpoint with the store's settings.

use super::queries::featurize_queries;
use crate::data::Sample;
use crate::estimators::{Cosine, Dot, Estimator};
use crate::index::{model_spec, Progress};
use crate::model::LoadedModel;
use crate::store::Store;
use crate::train::features::{attach, merged_for_base_features, store_weights, CheckpointInfo};
use crate::{Error, Result};
use candle_core::DType;
use std::path::{Path, PathBuf};

/// TracIn or LESS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMethod {
    TracIn,
    Less,
}

impl CheckpointMethod {
    pub fn name(self) -> &'static str {
        match self {
            Self::TracIn => "tracin",
            Self::Less => "less",
        }
    }

    pub fn sign_convention(self) -> &'static str {
        match self {
            Self::TracIn => "score = sum_c lr_c * grad_c(q) . grad_c(z) over checkpoints (TracIn); positive means training on z lowered the query loss to first order",
            Self::Less => "score = sum_c lr_c * cos(Adam update_c(z), grad_c(q)) (LESS); per target task the mean over its queries, then the max over tasks; higher means z's update aligns with the targets",
        }
    }
}

/// The checkpoint stores under `dir` (itself, or its subfolders), ordered by step.
pub fn find(dir: &Path) -> Result<Vec<PathBuf>> {
    let is_ckpt = |d: &Path| d.join("manifest.json").exists() && d.join("run.json").exists();
    let mut out = Vec::new();
    if is_ckpt(dir) {
        out.push(dir.to_path_buf());
    } else {
        for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let p = e.map_err(|e| Error::io(dir, e))?.path();
            if p.is_dir() && is_ckpt(&p) {
                out.push(p);
            }
        }
    }
    let mut keyed = Vec::new();
    for p in out {
        let ck = checkpoint_of(&p)?;
        keyed.push((ck.step.unwrap_or(0), p));
    }
    keyed.sort();
    if keyed.is_empty() {
        return Err(Error::Store {
            path: dir.into(),
            msg: "no checkpoint stores here (make them with `inflow index --checkpoints …`)".into(),
        });
    }
    Ok(keyed.into_iter().map(|(_, p)| p).collect())
}

fn checkpoint_of(dir: &Path) -> Result<CheckpointInfo> {
    store_weights(dir)?.checkpoint.ok_or_else(|| Error::Store {
        path: dir.into(),
        msg: "not a checkpoint store (its run.json names no checkpoint): TracIn and LESS weight each checkpoint's scores by its learning rate, so they need stores indexed at training checkpoints (`inflow index --checkpoints CK1 CK2 … --out DIR`, or `--adapter CK` for one); on a plain store use dot or cosine".into(),
    })
}

/// The dense nq × n score matrix summed over checkpoint stores, and the training ids.
pub fn score(
    dirs: &[PathBuf],
    model_override: Option<&Path>,
    queries: &[Sample],
    method: CheckpointMethod,
    threads: usize,
) -> Result<(Vec<f32>, Vec<String>)> {
    let nq = queries.len();
    let mut acc: Vec<f64> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    for dir in dirs {
        let store = Store::open(dir)?;
        let recorded = store_weights(dir)?;
        let ck = checkpoint_of(dir)?;
        let lr = ck.lr.ok_or_else(|| Error::Store {
            path: dir.clone(),
            msg: format!(
                "checkpoint {} has no learning rate (trainer_state.json); TracIn and LESS weight checkpoints by it",
                ck.path.display()
            ),
        })?;
        let kind = store
            .spec()
            .features
            .get("gradient")
            .and_then(|g| g.get("kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("sgd")
            .to_string();
        if method == CheckpointMethod::Less && kind != "adam" {
            return Err(Error::Store {
                path: dir.clone(),
                msg: "LESS needs Adam-update training features: index with --lora-grads --adam"
                    .into(),
            });
        }
        let base = model_override.unwrap_or(&recorded.run.model_path);
        let mut model = LoadedModel::load(base, DType::F32)?;
        attach(&mut model, &ck.path)?;
        // Base-Linear features were indexed on the merged weights (run_checkpoint_index).
        if !recorded.lora_grads {
            if let Some(m) = merged_for_base_features(&model)? {
                model = m;
            }
        }
        store.check_compatible(&serde_json::json!({ "model": model_spec(&model)? }))?;
        let q = featurize_queries(
            &model,
            &store,
            &recorded,
            queries,
            threads,
            &Progress::default(),
        )?
        .grads;
        let est: Box<dyn Estimator> = match method {
            CheckpointMethod::TracIn => Box::new(Dot),
            CheckpointMethod::Less => Box::new(Cosine),
        };
        let r = super::score_store(&store, &q, nq, est.as_ref(), 1, true, &mut |_| {})?;
        let full = r.full.unwrap_or_default();
        if acc.is_empty() {
            acc = vec![0.0; full.len()];
            ids = store.samples()?.into_iter().map(|s| s.id).collect();
        } else if acc.len() != full.len() {
            return Err(Error::Store {
                path: dir.clone(),
                msg: "checkpoint stores hold different training sets".into(),
            });
        }
        acc.iter_mut()
            .zip(&full)
            .for_each(|(a, s)| *a += lr * *s as f64);
    }
    Ok((acc.into_iter().map(|x| x as f32).collect(), ids))
}

/// LESS's task aggregation: per task the mean over its queries, then the max over tasks.
/// `full` is nq × n; `tasks[q]` names query q's task.
pub fn per_task_max(full: &[f32], nq: usize, tasks: &[String]) -> Vec<f32> {
    let n = full.len() / nq.max(1);
    let mut names: Vec<&String> = tasks.iter().collect();
    names.sort();
    names.dedup();
    let mut best = vec![f32::NEG_INFINITY; n];
    for t in names {
        let qs: Vec<usize> = (0..nq).filter(|&q| &tasks[q] == t).collect();
        for (j, b) in best.iter_mut().enumerate() {
            let m = qs.iter().map(|&q| full[q * n + j]).sum::<f32>() / qs.len() as f32;
            *b = b.max(m);
        }
    }
    best
}
