//! The model at a store's weights: every verb that featurizes against a store (`score`,
//! `fit --fisher true`, `select --seed-set`) loads the model the store was indexed with, plus
//! the adapter or checkpoint recorded in its run.json, and checks the result by hash, so
//! queries and training samples are always featurized at the same weights.

use std::path::{Path, PathBuf};

use super::report::Reporter;
use crate::index::RunInfo;
use crate::model::LoadedModel;
use crate::store::Store;
use crate::train::features::{self, store_weights, CheckpointInfo};
use crate::{Error, Result};

/// A store's model at its weights.
pub struct StoreModel {
    pub model: LoadedModel,
    pub run: RunInfo,
    /// The adapter or checkpoint the store was indexed at (None: the plain model).
    pub checkpoint: Option<CheckpointInfo>,
    /// Whether the features are gradients of the LoRA parameters (`index --lora-grads`).
    pub lora_grads: bool,
}

/// Loads a model, noting where from and how long it took.
pub fn load_model(path: &Path, reporter: &dyn Reporter) -> Result<LoadedModel> {
    let t = std::time::Instant::now();
    let m = LoadedModel::load(path, candle_core::DType::F32)?;
    reporter.note(&format!(
        "loaded {} ({:.1} M parameters) in {:.1} s",
        path.display(),
        m.llama.n_params() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    Ok(m)
}

/// Loads `store`'s model (or `base`, a copy of the same base model elsewhere) with the
/// store's adapter or checkpoint attached, and checks that the weights hash to the store's.
pub fn load(store: &Path, base: Option<&Path>, reporter: &dyn Reporter) -> Result<StoreModel> {
    let w = store_weights(store)?;
    let base: PathBuf = base
        .map(Path::to_path_buf)
        .unwrap_or(w.run.model_path.clone());
    let mut model = load_model(&base, reporter)
        .map_err(|e| Error::Msg(format!("loading the store's model {}: {e}", base.display())))?;
    if let Some(want) = &w.checkpoint {
        let got = features::attach(&mut model, &want.path).map_err(|e| {
            Error::Msg(format!(
                "loading the {} {} that the store {} was indexed at: {e}",
                want.kind,
                want.path.display(),
                store.display()
            ))
        })?;
        if got.sha256 != want.sha256 {
            return Err(Error::Msg(format!(
                "{}: the checkpoint changed since the store {} was indexed (sha256 {} then, {} now); index again",
                want.path.display(),
                store.display(),
                want.sha256,
                got.sha256
            )));
        }
        reporter.note(&format!("at the store's weights: {}", w.describe(&base)));
    }
    if !w.lora_grads {
        if let Some(m) = features::merged_for_base_features(&model)? {
            model = m;
        }
    }
    let s = Store::open(store)?;
    let have = s.spec().model["sha256"].as_str().unwrap_or_default();
    if have != model.source.sha256 {
        let hint = if w.checkpoint.is_some() {
            "score loads the base model and the adapter from the store's run.json by itself; --model may only name the same base model elsewhere (not a merged export: index that as its own store)"
        } else if model.source.sha256.contains('+') || base != w.run.model_path {
            "pass the model the store was indexed with, or index again with this one"
        } else {
            "the model file changed since the store was indexed: index again"
        };
        return Err(Error::Store {
            path: store.into(),
            msg: format!(
                "was indexed at {} (model.sha256 {have}), but {} has model.sha256 {}: {hint}",
                w.describe(&w.run.model_path),
                base.display(),
                model.source.sha256
            ),
        });
    }
    Ok(StoreModel {
        model,
        run: w.run,
        checkpoint: w.checkpoint,
        lora_grads: w.lora_grads,
    })
}
