//! Training checkpoints: one folder `checkpoint-{step}` per save, written to a temporary folder
//! and renamed into place, so a folder with that name is always whole.
//!
//! ```text
//! checkpoint-200/
//!   adapter_model.safetensors   LoRA factors, PEFT key names   (LoRA runs)
//!   adapter_config.json         PEFT config                    (LoRA runs)
//!   weights.safetensors         trained block weights, HF names (full fine-tuning)
//!   optimizer.safetensors       `{param}.exp_avg` (m) and `{param}.exp_avg_sq` (v)
//!   trainer_state.json          step, epoch, lr, RNG state, data-order seed, loss history, config
//! ```

use super::log::StepRecord;
use crate::model::lora::{Adapters, ADAPTER_CONFIG};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "trainer_state.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trained block weights of a full fine-tuning run (Hugging Face names).
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps taken.
    pub step: usize,
    pub total_steps: usize,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Learning rate of the last step taken (η_c of TracIn and LESS).
    pub lr: f64,
    /// Position of the trainer's random stream (dropout seeds) after the step.
    pub rng_state: u64,
    /// Seed of the per-epoch data order.
    pub data_seed: u64,
    /// `lora` or `full`.
    pub method: String,
    /// Trained parameters, in optimizer order.
    pub params: Vec<String>,
    /// The settings that define the run; a resumed run must have the same.
    pub config: serde_json::Value,
    /// Every step so far.
    pub log_history: Vec<StepRecord>,
}

/// What a checkpoint saves besides its state.
pub struct Snapshot<'a> {
    pub adapters: Option<&'a Adapters>,
    pub base_model: &'a crate::model::lora::AdapterBase,
    pub params: &'a [(String, Var)],
    pub moments: &'a [(Tensor, Tensor)],
}

/// `dir/checkpoint-{step}`.
pub fn checkpoint_dir(out: &Path, step: usize) -> PathBuf {
    out.join(format!("checkpoint-{step}"))
}

/// Writes `out/checkpoint-{state.step}` atomically (temp folder, fsync, rename).
pub fn save(out: &Path, state: &TrainerState, snap: &Snapshot) -> Result<PathBuf> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (tmp, dest) = staging(out, state.step)?;
    let st_err = |p: &Path, e: candle_core::Error| Error::Model {
        path: p.into(),
        msg: format!("cannot write safetensors: {e}"),
    };
    match snap.adapters {
        Some(a) => a.save(&tmp, snap.base_model)?,
        None => {
            let w: HashMap<String, Tensor> = snap
                .params
                .iter()
                .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
                .collect();
            let p = tmp.join(WEIGHTS_FILE);
            candle_core::safetensors::save(&w, &p).map_err(|e| st_err(&p, e))?;
        }
    }
    save_moments(
        &tmp.join(OPTIMIZER_FILE),
        snap.params.iter().map(|(n, _)| n.as_str()),
        snap.moments,
    )?;
    let p = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Msg(e.to_string()))?;
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
        let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io(&path, e))?;
    }
    publish(&tmp, &dest)?;
    if let Ok(d) = std::fs::File::open(out) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

/// A fresh temporary folder for the checkpoint of `step` under `out`, and the folder it is
/// renamed to once whole ([`publish`]). The process id keeps two writers' folders apart.
pub fn staging(out: &Path, step: usize) -> Result<(PathBuf, PathBuf)> {
    let tmp = out.join(format!(".checkpoint-{step}.tmp.{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    Ok((tmp, checkpoint_dir(out, step)))
}

/// Renames the whole temporary folder `tmp` into place as `dest`, replacing an older one.
pub fn publish(tmp: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    }
    std::fs::rename(tmp, dest).map_err(|e| Error::io(dest, e))
}

/// Writes AdamW's moments as `{param}.exp_avg` (m) and `{param}.exp_avg_sq` (v), the names
/// PyTorch's optimizer state uses, in one safetensors file.
pub fn save_moments<'a>(
    path: &Path,
    names: impl Iterator<Item = &'a str>,
    moments: &[(Tensor, Tensor)],
) -> Result<()> {
    let mut opt: HashMap<String, Tensor> = HashMap::new();
    for (n, (m, v)) in names.zip(moments) {
        opt.insert(format!("{n}.exp_avg"), m.clone());
        opt.insert(format!("{n}.exp_avg_sq"), v.clone());
    }
    candle_core::safetensors::save(&opt, path).map_err(|e| Error::Model {
        path: path.into(),
        msg: format!("cannot write safetensors: {e}"),
    })
}

/// Complete checkpoints under `out`, by step (temporary folders are not listed).
pub fn list(out: &Path) -> Vec<(usize, PathBuf)> {
    list_marked(out, STATE_FILE)
}

/// The folders `checkpoint-{step}` under `out` that hold `marker` (their state file, written
/// last), by step.
pub fn list_marked(out: &Path, marker: &str) -> Vec<(usize, PathBuf)> {
    let mut found: Vec<(usize, PathBuf)> = std::fs::read_dir(out)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let step = name.strip_prefix("checkpoint-")?.parse().ok()?;
            e.path().join(marker).exists().then(|| (step, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// The latest complete checkpoint under `out`.
pub fn latest(out: &Path) -> Option<(usize, PathBuf)> {
    list(out).pop()
}

/// Reads `trainer_state.json`.
pub fn read_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadInput {
        path: p,
        line: 1,
        msg: format!("not a trainer state: {e}"),
    })
}

pub(super) fn load_st(p: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(p, &Device::Cpu).map_err(|e| Error::Model {
        path: p.into(),
        msg: format!("cannot read safetensors: {e}"),
    })
}

fn take(t: &mut HashMap<String, Tensor>, p: &Path, name: &str, like: &Tensor) -> Result<Tensor> {
    let v = t.remove(name).ok_or_else(|| Error::Model {
        path: p.into(),
        msg: format!("missing tensor `{name}`"),
    })?;
    crate::model::check_shape(p, name, v.dims(), like.dims())?;
    Ok(v.to_dtype(like.dtype())?)
}

/// The moments (m, v) of `params` saved in a checkpoint.
pub fn read_moments(dir: &Path, params: &[(String, Var)]) -> Result<Vec<(Tensor, Tensor)>> {
    let p = dir.join(OPTIMIZER_FILE);
    let mut t = load_st(&p)?;
    params
        .iter()
        .map(|(n, v)| {
            Ok((
                take(&mut t, &p, &format!("{n}.exp_avg"), v.as_tensor())?,
                take(&mut t, &p, &format!("{n}.exp_avg_sq"), v.as_tensor())?,
            ))
        })
        .collect()
}

/// Sets `params` to the values saved in a checkpoint (LoRA factors or trained weights).
pub fn restore_params(dir: &Path, params: &[(String, Var)]) -> Result<()> {
    let (p, prefix) = if dir.join(ADAPTER_CONFIG).exists() {
        (
            dir.join(crate::model::lora::ADAPTER_WEIGHTS),
            "base_model.model.",
        )
    } else {
        (dir.join(WEIGHTS_FILE), "")
    };
    let mut t = load_st(&p)?;
    for (n, v) in params {
        let val = take(&mut t, &p, &format!("{prefix}{n}"), v.as_tensor())?;
        v.set(&val)?;
    }
    Ok(())
}
