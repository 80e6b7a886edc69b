//! Gradient features from training checkpoints, for TracIn and LESS (METHODS.md §2).
//!
//! - LoRA gradients (LESS's feature space): the per-sample gradients of the adapters' A and B
//!   factors, captured as (input, output-gradient) pairs of those small Linears and projected
//!   by the ordinary [`Projector`] (LoGra, dense or full).
//! - Adam updates (LESS's training-side features): Γ = m'/(√v' + ε) with
//!   m' = β₁ m + (1 − β₁) g, v' = β₂ v + (1 − β₂) g² from the checkpoint's moments (m, v),
//!   formed from the exact per-sample LoRA gradient g and then projected with the dense
//!   Rademacher projection of [`crate::features::dense`], so that plain-gradient query features
//!   of the same layers, seed and dimension lie in the same space.
//!
//! Every store records which checkpoint its features came from, with its step and learning
//! rate η_c (TracIn's Σ_c η_c φ_c(q)·φ_c(z)).

use super::adamw::{adam_update_feature, AdamWConfig};
use super::checkpoint::{self, WEIGHTS_FILE};
use crate::data::tokens::Renderer;
use crate::features::{dense, FeatureSpec, Projection, Projector};
use crate::index::{
    self, Batch, FeaturePass, Featurizer, IndexOptions, IndexSummary, PassObserver, Progress,
    StoreExtras,
};
use crate::model::lora::{Adapters, ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use crate::model::{sha256_files, Llama, LoadedModel, TokenSeq};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a model's fine-tuned state came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub path: PathBuf,
    /// `lora` (PEFT adapter folder) or `full` (trained weights).
    pub kind: String,
    /// Training step and the learning rate of that step, when the folder has a
    /// `trainer_state.json` (adapters trained elsewhere do not).
    pub step: Option<usize>,
    pub lr: Option<f64>,
    /// sha256 of the weight file.
    pub sha256: String,
}

/// Loads a checkpoint onto `model`: LoRA adapters are attached; trained weights of a full
/// fine-tuning run replace the base ones. The model's source hash then covers the checkpoint,
/// so stores built from different checkpoints never mix.
pub fn attach(model: &mut LoadedModel, dir: &Path) -> Result<CheckpointInfo> {
    let (step, lr) = match checkpoint::read_state(dir) {
        Ok(s) => (Some(s.step), Some(s.lr)),
        Err(_) => (None, None),
    };
    // Recorded absolute, so a store's run.json resolves from any working directory.
    let dir = &std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let info = if dir.join(ADAPTER_CONFIG).exists() {
        let a = Adapters::load(dir, &model.llama)?;
        model.llama.set_adapters(Some(Arc::new(a)));
        CheckpointInfo {
            path: dir.into(),
            kind: "lora".into(),
            step,
            lr,
            sha256: sha256_files(&[dir.join(ADAPTER_WEIGHTS)])?,
        }
    } else if dir.join(WEIGHTS_FILE).exists() {
        let p = dir.join(WEIGHTS_FILE);
        let w = checkpoint::load_st(&p)?;
        let mut t: HashMap<String, Tensor> = model.llama.hf_tensors().into_iter().collect();
        for (name, v) in w {
            let old = t.get(&name).ok_or_else(|| Error::Model {
                path: p.clone(),
                msg: format!("tensor `{name}` is not a parameter of the model"),
            })?;
            crate::model::check_shape(&p, &name, v.dims(), old.dims())?;
            t.insert(name, v);
        }
        model.llama = Llama::from_tensors(
            model.llama.config.clone(),
            t,
            dir.into(),
            model.llama.dtype(),
        )?;
        CheckpointInfo {
            path: dir.into(),
            kind: "full".into(),
            step,
            lr,
            sha256: sha256_files(&[p])?,
        }
    } else {
        return Err(Error::Model {
            path: dir.into(),
            msg: format!(
                "not a checkpoint: expected {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS} (LoRA) or {WEIGHTS_FILE} (full fine-tuning)"
            ),
        });
    };
    model.source.sha256 = format!("{}+{}", model.source.sha256, info.sha256);
    Ok(info)
}

/// What run.json says beyond [`RunInfo`]: the checkpoint and the feature parameters.
#[derive(Debug, Clone)]
pub struct StoreWeights {
    pub run: index::RunInfo,
    pub checkpoint: Option<CheckpointInfo>,
    pub lora_grads: bool,
}

/// Reads the weights a store was indexed at from its run.json.
pub fn store_weights(store: &Path) -> Result<StoreWeights> {
    let run_path = store.join("run.json");
    let bad = |e: String| Error::Store {
        path: store.into(),
        msg: format!("run.json: {e}"),
    };
    let text = std::fs::read_to_string(&run_path).map_err(|e| Error::io(&run_path, e))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let run: index::RunInfo =
        serde_json::from_value(raw.clone()).map_err(|e| bad(e.to_string()))?;
    let checkpoint = match raw.get("checkpoint").filter(|c| !c.is_null()) {
        Some(c) => Some(
            serde_json::from_value::<CheckpointInfo>(c.clone())
                .map_err(|e| bad(format!("checkpoint: {e}")))?,
        ),
        None => None,
    };
    Ok(StoreWeights {
        run,
        checkpoint,
        lora_grads: raw["lora_grads"] == true,
    })
}

impl StoreWeights {
    /// "BASE" or "BASE + adapter CKPT (step S)", for messages.
    pub fn describe(&self, base: &Path) -> String {
        match &self.checkpoint {
            None => base.display().to_string(),
            Some(c) => format!(
                "{} + {} {}{}",
                base.display(),
                if c.kind == "lora" {
                    "adapter"
                } else {
                    "checkpoint"
                },
                c.path.display(),
                c.step.map(|s| format!(" (step {s})")).unwrap_or_default()
            ),
        }
    }
}

/// The model whose base-Linear gradients are the features at an attached LoRA adapter: the
/// adapters merged into the weights, W + (α/r)·B A, exactly as `inflow export` writes them,
/// with the same source hash (base + adapter). The gradient of W is the same function either
/// way; merged, the features equal those of the exported model bit for bit (computed with the
/// LoRA branch apart they differ by float rounding, ~3e-5 relative on SmolLM2) and the pass
/// skips the branch. None when no adapter is attached.
pub fn merged_for_base_features(model: &LoadedModel) -> Result<Option<LoadedModel>> {
    match model.llama.adapters() {
        Some(a) => Ok(Some(a.merge(model)?)),
        None => Ok(None),
    }
}

/// Which per-sample vector of the LoRA parameters becomes the feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LoraGradient {
    /// The plain gradient g (SGD direction; LESS's target side, TracIn).
    Sgd,
    /// LESS's Adam update Γ = m'/(√v' + ε) from the checkpoint's moments.
    Adam(AdamWConfig),
}

/// Features of the attached adapters' parameters.
pub struct LoraFeaturizer<'a> {
    model: &'a LoadedModel,
    adapters: Arc<Adapters>,
    renderer: Renderer<'a>,
    spec: FeatureSpec,
    /// Projector of plain gradients (the spec's projection), or of the exact gradient for Γ.
    projector: Projector,
    /// (m, v) flattened in the spec's layer order, for Γ.
    moments: Option<(Vec<f32>, Vec<f32>, AdamWConfig)>,
}

impl<'a> LoraFeaturizer<'a> {
    /// `model` must carry adapters ([`attach`]); `checkpoint` is the folder holding
    /// `optimizer.safetensors` when `gradient` is [`LoraGradient::Adam`].
    pub fn new(
        model: &'a LoadedModel,
        projection: Projection,
        seed: u64,
        renderer: Renderer<'a>,
        gradient: &LoraGradient,
        checkpoint: Option<&Path>,
    ) -> Result<Self> {
        let adapters = model.llama.adapters().ok_or_else(|| {
            Error::Msg("--lora-grads needs LoRA adapters: pass --adapter DIR".into())
        })?;
        let spec = FeatureSpec {
            projection: projection.clone(),
            seed,
            loss: "mean token cross-entropy over response tokens".into(),
            layers: adapters.infos(),
        };
        let dtype = model.llama.dtype();
        let (projector, moments) = match gradient {
            LoraGradient::Sgd => (Projector::new(spec.clone(), dtype)?, None),
            LoraGradient::Adam(cfg) => {
                if matches!(projection, Projection::Logra { .. }) {
                    return Err(Error::Msg(
                        "Adam-update features need --projection dense (or full): Γ is not a sum of outer products, so LoGra cannot project it".into(),
                    ));
                }
                let dir = checkpoint.ok_or_else(|| {
                    Error::Msg(
                        "Adam-update features need a checkpoint with optimizer.safetensors".into(),
                    )
                })?;
                let mv = checkpoint::read_moments(dir, &adapters.params())?;
                let (mut m, mut v) = (Vec::new(), Vec::new());
                for (a, b) in mv {
                    m.extend(a.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                    v.extend(b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
                }
                let full = FeatureSpec {
                    projection: Projection::Full,
                    ..spec.clone()
                };
                (Projector::new(full, dtype)?, Some((m, v, cfg.clone())))
            }
        };
        Ok(Self {
            model,
            adapters,
            renderer,
            spec,
            projector,
            moments,
        })
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// Feature rows (B × dim) of one batch, and its per-sample losses.
    pub fn features(&self, seqs: &[TokenSeq]) -> Result<(Vec<f32>, Vec<f32>)> {
        self.features_observed(seqs, &mut ())
    }

    /// [`Self::features`], with `observer` seeing the adapters' capture.
    fn features_observed<O: PassObserver>(
        &self,
        seqs: &[TokenSeq],
        observer: &mut O,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let cap = self.adapters.loss_and_capture(&self.model.llama, seqs)?;
        observer.observe(&self.projector, &cap, seqs)?;
        let rows = self.projector.project(&cap)?;
        let Some((m, v, cfg)) = &self.moments else {
            return Ok((rows, cap.losses));
        };
        let b = seqs.len();
        let d = m.len();
        let mut gamma = vec![0f32; rows.len()];
        for i in 0..b {
            adam_update_feature(
                &rows[i * d..(i + 1) * d],
                m,
                v,
                cfg,
                &mut gamma[i * d..(i + 1) * d],
            );
        }
        let rows = match self.spec.projection {
            Projection::Dense { dim } => {
                let g = Tensor::from_vec(gamma, (b, d), &Device::Cpu)?;
                let mut blocks = Vec::with_capacity(self.spec.layers.len());
                let mut off = 0;
                for l in &self.spec.layers {
                    let n = l.d_in * l.d_out;
                    blocks.push((l.name.as_str(), g.narrow(1, off, n)?));
                    off += n;
                }
                dense::project_rows(&blocks, b, dim, self.spec.seed)?
            }
            _ => gamma,
        };
        Ok((rows, cap.losses))
    }
}

impl FeaturePass for LoraFeaturizer<'_> {
    fn renderer(&self) -> &Renderer<'_> {
        &self.renderer
    }

    fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    fn batch<O: PassObserver>(&self, seqs: &[TokenSeq], observer: &mut O) -> Result<Batch> {
        let (grads, losses) = self.features_observed(seqs, observer)?;
        Ok(Batch {
            grads,
            losses,
            ..Batch::default()
        })
    }
}

/// Which parameters a checkpoint store's features are gradients of.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureSource {
    /// The tracked base Linears (`--modules`), at the checkpoint's weights.
    Base,
    /// The LoRA factors, plain gradient or Adam update.
    Lora(LoraGradient),
}

/// Indexes `opts.data` into `out` with the features of a model carrying `checkpoint` (already
/// [`attach`]ed): the store's spec records the checkpoint (path, step, learning rate, hash) and
/// the gradient kind beside the usual projection settings. Base-Linear stores also get the
/// RepSim sub-stores, as a plain `index` does, so every method that scores a plain store
/// scores one at an adapter; `O` observes the pass (`curvature::kfac_stats::KfacStats` for
/// K-FAC's token factors). Resumable like `index`.
pub fn run_checkpoint_index<O: PassObserver>(
    model: &LoadedModel,
    opts: &IndexOptions,
    checkpoint: Option<&CheckpointInfo>,
    source: &FeatureSource,
    out: &Path,
    progress: &Progress,
    on_shard: &mut dyn FnMut(usize, usize),
) -> Result<IndexSummary> {
    let fo = &opts.features;
    let gradient = match source {
        FeatureSource::Base => serde_json::json!({"kind": "sgd", "params": "base"}),
        FeatureSource::Lora(LoraGradient::Sgd) => {
            serde_json::json!({"kind": "sgd", "params": "lora"})
        }
        FeatureSource::Lora(LoraGradient::Adam(c)) => {
            serde_json::json!({"kind": "adam", "params": "lora", "adam": c})
        }
    };
    let checkpoint_json =
        serde_json::to_value(checkpoint).map_err(|e| Error::Msg(e.to_string()))?;
    // LoRA-parameter passes have no hidden states to pool for RepSim.
    let extras = StoreExtras {
        repsim: matches!(source, FeatureSource::Base),
        features: vec![
            ("gradient".into(), gradient),
            ("checkpoint".into(), checkpoint_json.clone()),
        ],
        run: vec![
            ("checkpoint".into(), checkpoint_json),
            (
                "lora_grads".into(),
                serde_json::Value::Bool(matches!(source, FeatureSource::Lora(_))),
            ),
        ],
    };
    match source {
        FeatureSource::Base => {
            let merged = merged_for_base_features(model)?;
            let model = merged.as_ref().unwrap_or(model);
            index::index_pass::<_, O>(
                model,
                opts,
                out,
                || Featurizer::new(model, fo),
                extras,
                progress,
                on_shard,
            )
        }
        FeatureSource::Lora(g) => index::index_pass::<_, O>(
            model,
            opts,
            out,
            || {
                LoraFeaturizer::new(
                    model,
                    fo.projection.clone(),
                    fo.seed,
                    Renderer::new(model, fo.template, fo.max_tokens)?.with_truncate(fo.truncate),
                    g,
                    checkpoint.map(|c| c.path.as_path()),
                )
            },
            extras,
            progress,
            on_shard,
        ),
    }
}
