//! LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").
//!
//! An adapted Linear computes y = W x + (α/r)·B A dropout(x), with A ∈ R^{r×d_in} and
//! B ∈ R^{d_out×r} trainable and W frozen. As in PEFT, A starts Kaiming-uniform
//! (U(−1/√d_in, 1/√d_in)) and B at zero, so training starts from the base model. Adapters are
//! saved in PEFT's layout (`adapter_model.safetensors` + `adapter_config.json`, with only
//! fields of PEFT's `LoraConfig`) so Python's `peft` loads them without warnings; what PEFT
//! has no field for (the `--modules` pattern, the local base model and its hash) is in the
//! sidecar `inflow_adapter.json`.
//!
//! A and B are Linears themselves (A applied to x, B to h = A x), so their per-sample gradients
//! are G_A = Σ_t (∂ℓ/∂h_t) x_tᵀ and G_B = Σ_t (∂ℓ/∂u_t) h_tᵀ with u = B h: the same (input,
//! output-gradient) pairs the features module projects (METHODS.md §1). [`Adapters::loss_and_capture`]
//! records them by adding a zero-valued `Var` to h and u (STACK.md: candle drops intermediate
//! gradients, but keeps those of `Var`s).

use super::capture::{Captured, LayerCapture, LinearInfo};
use super::llama::{LinearBranch, Llama, TokenSeq};
use super::modules::select_modules;
use super::LoadedModel;
use crate::random::Stream;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File names of PEFT's adapter layout.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// inflow's sidecar beside PEFT's files.
pub const ADAPTER_SIDECAR: &str = "inflow_adapter.json";
/// The fields of PEFT's `LoraConfig` that `adapter_config.json` holds (nothing else).
pub const PEFT_CONFIG_KEYS: &[&str] = &[
    "peft_type",
    "task_type",
    "base_model_name_or_path",
    "r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "layers_to_transform",
    "bias",
    "fan_in_fan_out",
    "inference_mode",
    "init_lora_weights",
    "use_rslora",
    "modules_to_save",
];

/// The model an adapter was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterBase {
    /// What PEFT is told (`base_model_name_or_path`): the absolute path of a Hugging Face
    /// folder, the Hugging Face repository a GGUF file names (see `gguf::hf_repo`; its
    /// weights are not the GGUF's quantized ones: `inflow export --unmerged` writes the exact
    /// pair), else the file's path.
    pub name_or_path: String,
    /// `gguf`, `hf` (or `tiny` in tests).
    pub kind: String,
    /// The local file or folder (absolute when it exists).
    pub path: PathBuf,
    /// sha256 of the weights, as the store manifests record it.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_repo: Option<String>,
}

impl AdapterBase {
    /// The base of adapters trained on `model`.
    pub fn of(model: &LoadedModel) -> Self {
        let s = &model.source;
        let path = std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone());
        let name_or_path = match (&s.hf_repo, s.kind.as_str()) {
            (_, "hf") => path.display().to_string(),
            (Some(repo), _) => repo.clone(),
            (None, _) => path.display().to_string(),
        };
        Self {
            name_or_path,
            kind: s.kind.clone(),
            path,
            sha256: s.sha256.clone(),
            hf_repo: s.hf_repo.clone(),
        }
    }
}

/// `inflow_adapter.json`: what PEFT's config has no field for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSidecar {
    /// The `--modules` pattern the adapters were made with.
    pub modules: String,
    /// The model they were trained on.
    pub base_model: AdapterBase,
    /// inflow version that wrote them.
    pub inflow_version: String,
}

impl AdapterSidecar {
    /// The sidecar in `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let p = dir.join(ADAPTER_SIDECAR);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Model {
                path: p.clone(),
                msg: format!("invalid {ADAPTER_SIDECAR}: {e}"),
            })
    }
}
/// Prefix PEFT puts before the base model's parameter names.
const PEFT_PREFIX: &str = "base_model.model.";

/// Shape and placement of the adapters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// r: inner dimension of B A.
    pub rank: usize,
    /// α: the branch is scaled by α/r.
    pub alpha: f64,
    /// Probability of zeroing an input coordinate of A during training (inverted dropout).
    pub dropout: f64,
    /// Adapted Linears, a `--modules` pattern (`q,v`, `layers.3.`; see [`select_modules`]).
    pub modules: String,
}

/// The adapter of one Linear.
pub struct LoraLayer {
    /// Flat index of the adapted Linear (layer · 7 + j).
    pub flat: usize,
    /// Its Hugging Face name (`model.layers.3.self_attn.q_proj`).
    pub base: String,
    /// A: r × d_in.
    pub a: Var,
    /// B: d_out × r.
    pub b: Var,
}

/// Which factor of an adapter a captured pair belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    A,
    B,
}

/// One forward pass's LoRA state on this thread: the dropout seed while training, and the
/// inputs and zero probes of a capture pass. Thread-local because a model is shared by worker
/// threads that each run their own passes.
#[derive(Default)]
struct Pass {
    dropout_seed: Option<u64>,
    capture: Option<HashMap<(usize, Side), (Tensor, Var)>>,
}

thread_local! {
    static PASS: RefCell<Pass> = RefCell::new(Pass::default());
}

/// Restores the thread's pass state when a pass ends, also on error or panic.
struct PassGuard;

impl Drop for PassGuard {
    fn drop(&mut self) {
        PASS.with(|p| *p.borrow_mut() = Pass::default());
    }
}

/// Runs `f` (one forward/backward pass of a model with adapters) with LoRA dropout on, its
/// masks drawn from `seed` (one stream per adapted Linear), so a training step is reproducible.
pub fn with_dropout<T>(seed: u64, f: impl FnOnce() -> T) -> T {
    PASS.with(|p| p.borrow_mut().dropout_seed = Some(seed));
    let _guard = PassGuard;
    f()
}

/// LoRA adapters on some of a model's block Linears.
pub struct Adapters {
    config: LoraConfig,
    layers: Vec<LoraLayer>,
    by_flat: HashMap<usize, usize>,
    /// Blocks of the model (PEFT's `layers_to_transform` is left out when all are adapted).
    n_layers: usize,
}

impl Adapters {
    /// Fresh adapters as PEFT makes them: A ~ U(−1/√d_in, 1/√d_in) (Kaiming-uniform with
    /// a = √5) from `seed` and the layer name, B = 0.
    pub fn init(llama: &Llama, config: LoraConfig, seed: u64) -> Result<Self> {
        validate(&config)?;
        let all = llama.linears();
        let sel = select_modules(&all, &config.modules)?;
        let mut layers = Vec::with_capacity(sel.len());
        for flat in sel {
            let info = &all[flat];
            let bound = 1.0 / (info.d_in as f64).sqrt();
            let mut s = Stream::new(seed, &format!("lora-init/{}", info.name));
            let a: Vec<f64> = (0..config.rank * info.d_in)
                .map(|_| (2.0 * s.uniform() - 1.0) * bound)
                .collect();
            let a = Tensor::from_vec(a, (config.rank, info.d_in), &Device::Cpu)?
                .to_dtype(llama.dtype())?;
            let b = Tensor::zeros((info.d_out, config.rank), llama.dtype(), &Device::Cpu)?;
            layers.push(LoraLayer {
                flat,
                base: info.name.clone(),
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
            });
        }
        Ok(Self::from_layers(config, layers, llama))
    }

    fn from_layers(config: LoraConfig, layers: Vec<LoraLayer>, llama: &Llama) -> Self {
        let by_flat = layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.flat, i))
            .collect();
        Self {
            config,
            layers,
            by_flat,
            n_layers: llama.config.num_hidden_layers,
        }
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// α/r, the factor of the branch.
    pub fn scale(&self) -> f64 {
        self.config.alpha / self.config.rank as f64
    }

    pub fn layers(&self) -> &[LoraLayer] {
        &self.layers
    }

    /// The trainable parameters by name (`model.layers.3.self_attn.q_proj.lora_A.weight`),
    /// A then B for each adapted Linear in model order.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut out = Vec::with_capacity(2 * self.layers.len());
        for l in &self.layers {
            out.push((format!("{}.lora_A.weight", l.base), l.a.clone()));
            out.push((format!("{}.lora_B.weight", l.base), l.b.clone()));
        }
        out
    }

    /// The A and B factors as Linears (`….q_proj.lora_A`: r × d_in, `….q_proj.lora_B`: d_out × r),
    /// in the order of [`Self::params`]: the layers of LoRA gradient features.
    pub fn infos(&self) -> Vec<LinearInfo> {
        let mut out = Vec::with_capacity(2 * self.layers.len());
        for l in &self.layers {
            let (r, d_in) = l.a.dims2().unwrap_or((0, 0));
            let (d_out, _) = l.b.dims2().unwrap_or((0, 0));
            out.push(LinearInfo {
                name: format!("{}.lora_A", l.base),
                d_out: r,
                d_in,
            });
            out.push(LinearInfo {
                name: format!("{}.lora_B", l.base),
                d_out,
                d_in: r,
            });
        }
        out
    }

    /// Number of trainable values.
    pub fn n_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.a.elem_count() + l.b.elem_count())
            .sum()
    }

    /// The hook of [`Llama`]'s Linears: returns y + (α/r)·B A dropout(x) when Linear `flat` is
    /// adapted, y otherwise. Dropout is applied only inside [`with_dropout`]; inside a capture
    /// pass the inputs and output gradients of A and B are recorded.
    pub fn add_branch(&self, flat: usize, x: &Tensor, y: Tensor) -> Result<Tensor> {
        let Some(&i) = self.by_flat.get(&flat) else {
            return Ok(y);
        };
        let l = &self.layers[i];
        let (seed, capturing) = PASS.with(|p| {
            let p = p.borrow();
            (p.dropout_seed, p.capture.is_some())
        });
        let x = match seed {
            Some(seed) if self.config.dropout > 0.0 => {
                let mask = dropout_mask(seed, flat, x.dims(), self.config.dropout)?;
                x.broadcast_mul(&mask.to_dtype(x.dtype())?)?
            }
            _ => x.clone(),
        };
        let mut h = x.broadcast_matmul(&l.a.t()?)?;
        if capturing {
            h = probe(flat, Side::A, &x, h)?;
        }
        let mut u = h.broadcast_matmul(&l.b.t()?)?;
        if capturing {
            u = probe(flat, Side::B, &h, u)?;
        }
        Ok((y + (u * self.scale())?)?)
    }

    /// Per-sample losses and, for every A and B (in [`Self::infos`] order), the inputs and output
    /// gradients of one padded forward/backward pass of Σ_b ℓ_b, ready for
    /// [`crate::features::Projector`]. No dropout. `llama` must carry these adapters.
    pub fn loss_and_capture(&self, llama: &Llama, batch: &[TokenSeq]) -> Result<Captured> {
        PASS.with(|p| p.borrow_mut().capture = Some(HashMap::new()));
        let _guard = PassGuard;
        let (losses, grads, hidden) = llama.loss_grads_hidden(batch)?;
        let mut rec = PASS
            .with(|p| p.borrow_mut().capture.take())
            .unwrap_or_default();
        let infos = self.infos();
        let mut layers = Vec::with_capacity(infos.len());
        for (k, info) in infos.into_iter().enumerate() {
            let l = &self.layers[k / 2];
            let side = if k % 2 == 0 { Side::A } else { Side::B };
            let (x, p) = rec.remove(&(l.flat, side)).ok_or_else(|| {
                Error::Msg(format!(
                    "{}: the model did not run this adapter (is it attached to the model?)",
                    info.name
                ))
            })?;
            let delta = match grads.as_ref().and_then(|g| g.get(p.as_tensor())) {
                Some(d) => d.clone(),
                // No response token in the batch: every gradient is zero.
                None => p.as_tensor().zeros_like()?,
            };
            layers.push(LayerCapture { info, x, delta });
        }
        Ok(Captured {
            losses,
            layers,
            hidden,
        })
    }

    /// W + (α/r)·B A for every adapted Linear, with the other tensors unchanged, in Hugging
    /// Face naming (the merged model).
    pub fn merged_tensors(&self, llama: &Llama) -> Result<HashMap<String, Tensor>> {
        let mut t: HashMap<String, Tensor> = llama.hf_tensors().into_iter().collect();
        for l in &self.layers {
            let name = format!("{}.weight", l.base);
            let w = t
                .get(&name)
                .ok_or_else(|| Error::Msg(format!("merge: the model has no `{name}`")))?;
            let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * self.scale())?;
            let merged = (w + delta.to_dtype(w.dtype())?)?;
            t.insert(name, merged);
        }
        Ok(t)
    }

    /// The model with the adapters merged into its weights (and none attached).
    pub fn merge(&self, model: &LoadedModel) -> Result<LoadedModel> {
        let tensors = self.merged_tensors(&model.llama)?;
        let llama = Llama::from_tensors(
            model.llama.config.clone(),
            tensors,
            model.source.path.clone(),
            model.llama.dtype(),
        )?;
        Ok(LoadedModel {
            llama,
            tokenizer: model.tokenizer.clone(),
            chat_template: model.chat_template.clone(),
            bos_token: model.bos_token.clone(),
            eos_token: model.eos_token.clone(),
            source: model.source.clone(),
        })
    }

    /// The PEFT tensors: `base_model.model.{name}.lora_A.weight` → A, in the model's dtype
    /// (f32 for real models; kept exact so a resumed run continues bit for bit).
    pub fn peft_tensors(&self) -> HashMap<String, Tensor> {
        self.params()
            .into_iter()
            .map(|(n, v)| (format!("{PEFT_PREFIX}{n}"), v.as_tensor().clone()))
            .collect()
    }

    /// `adapter_config.json`: only fields of PEFT's `LoraConfig` ([`PEFT_CONFIG_KEYS`]).
    pub fn peft_config(&self, base_model: &str) -> serde_json::Value {
        let targets: BTreeSet<String> = self
            .layers
            .iter()
            .map(|l| l.base.rsplit('.').next().unwrap_or(&l.base).to_string())
            .collect();
        let layer_ids: BTreeSet<usize> = self
            .layers
            .iter()
            .filter_map(|l| l.base.split('.').nth(2)?.parse().ok())
            .collect();
        let layers_to_transform = if layer_ids.len() == self.n_layers {
            serde_json::Value::Null
        } else {
            serde_json::json!(layer_ids)
        };
        serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model,
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": self.config.dropout,
            "target_modules": targets,
            "layers_to_transform": layers_to_transform,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "modules_to_save": null,
        })
    }

    /// Writes `adapter_model.safetensors`, `adapter_config.json` (PEFT's `base_model_name_or_path`
    /// = `base.name_or_path`) and the sidecar [`ADAPTER_SIDECAR`] into `dir`.
    pub fn save(&self, dir: &Path, base: &AdapterBase) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let st = dir.join(ADAPTER_WEIGHTS);
        crate::atomic_write::write_atomic_at(&st, |tmp| {
            candle_core::safetensors::save(&self.peft_tensors(), tmp).map_err(|e| Error::Model {
                path: st.clone(),
                msg: format!("cannot write safetensors: {e}"),
            })
        })?;
        let write = |name: &str, v: &serde_json::Value| -> Result<()> {
            let p = dir.join(name);
            let text = serde_json::to_string_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
            crate::atomic_write::write_atomic(&p, |f| {
                std::io::Write::write_all(f, text.as_bytes()).map_err(|e| Error::io(&p, e))
            })
            .map(|_| ())
        };
        write(ADAPTER_CONFIG, &self.peft_config(&base.name_or_path))?;
        let sidecar = AdapterSidecar {
            modules: self.config.modules.clone(),
            base_model: base.clone(),
            inflow_version: crate::version().to_string(),
        };
        write(
            ADAPTER_SIDECAR,
            &serde_json::to_value(&sidecar).map_err(|e| Error::Msg(e.to_string()))?,
        )
    }

    /// Reads PEFT adapters from `dir` for `llama` (keys `base_model.model.{name}.lora_A.weight`,
    /// also with PEFT's `.default` adapter name). Every adapted Linear needs both factors with
    /// shapes r × d_in and d_out × r. The `--modules` pattern comes from the sidecar, else from
    /// an `inflow_modules` field of the config (adapters written before the sidecar), else it
    /// is the list of adapted Linears (adapters made by PEFT).
    pub fn load(dir: &Path, llama: &Llama) -> Result<Self> {
        let cfg_path = dir.join(ADAPTER_CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Model {
            path: cfg_path.clone(),
            msg: format!("invalid JSON: {e}"),
        })?;
        let bad = |msg: String| Error::Model {
            path: cfg_path.clone(),
            msg,
        };
        if let Some(t) = v.get("peft_type").and_then(|t| t.as_str()) {
            if t != "LORA" {
                return Err(bad(format!("peft_type is `{t}`, only LORA is supported")));
            }
        }
        let rank = v
            .get("r")
            .and_then(|r| r.as_u64())
            .ok_or_else(|| bad("missing integer field `r`".into()))? as usize;
        let alpha = v
            .get("lora_alpha")
            .and_then(|a| a.as_f64())
            .ok_or_else(|| bad("missing number field `lora_alpha`".into()))?;
        let dropout = v
            .get("lora_dropout")
            .and_then(|d| d.as_f64())
            .unwrap_or(0.0);
        let st = dir.join(ADAPTER_WEIGHTS);
        let tensors =
            candle_core::safetensors::load(&st, &Device::Cpu).map_err(|e| Error::Model {
                path: st.clone(),
                msg: format!("cannot read safetensors: {e}"),
            })?;
        let all = llama.linears();
        let by_name: HashMap<&str, usize> = all
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        let st_err = |msg: String| Error::Model {
            path: st.clone(),
            msg,
        };
        let mut factors: HashMap<usize, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
        for (key, t) in tensors {
            let name = key.strip_prefix(PEFT_PREFIX).unwrap_or(&key);
            let name = name.strip_suffix(".weight").unwrap_or(name);
            let name = name.strip_suffix(".default").unwrap_or(name);
            let (base, side) = if let Some(b) = name.strip_suffix(".lora_A") {
                (b, Side::A)
            } else if let Some(b) = name.strip_suffix(".lora_B") {
                (b, Side::B)
            } else {
                return Err(st_err(format!(
                    "tensor `{key}` is not a LoRA factor (expected …lora_A.weight or …lora_B.weight)"
                )));
            };
            let &flat = by_name.get(base).ok_or_else(|| {
                st_err(format!(
                    "tensor `{key}` adapts `{base}`, which the model does not have"
                ))
            })?;
            let info = &all[flat];
            let want = match side {
                Side::A => [rank, info.d_in],
                Side::B => [info.d_out, rank],
            };
            if t.dims() != want {
                return Err(st_err(format!(
                    "tensor `{key}` has shape {:?}, expected {want:?} (r = {rank})",
                    t.dims()
                )));
            }
            let t = t.to_dtype(llama.dtype())?;
            let e = factors.entry(flat).or_default();
            match side {
                Side::A => e.0 = Some(t),
                Side::B => e.1 = Some(t),
            }
        }
        if factors.is_empty() {
            return Err(st_err("no LoRA tensors in the file".into()));
        }
        let mut flats: Vec<usize> = factors.keys().copied().collect();
        flats.sort_unstable();
        let mut layers = Vec::with_capacity(flats.len());
        for flat in flats {
            let base = all[flat].name.clone();
            let (a, b) = factors.remove(&flat).unwrap_or_default();
            let (Some(a), Some(b)) = (a, b) else {
                return Err(st_err(format!(
                    "`{base}` lacks its lora_A or lora_B tensor"
                )));
            };
            layers.push(LoraLayer {
                flat,
                base,
                a: Var::from_tensor(&a)?,
                b: Var::from_tensor(&b)?,
            });
        }
        let sidecar = AdapterSidecar::read(dir)?;
        let modules = match (
            sidecar.map(|s| s.modules),
            v.get("inflow_modules").and_then(|m| m.as_str()),
        ) {
            (Some(m), _) => m,
            (None, Some(m)) => m.to_string(),
            (None, None) => layers
                .iter()
                .map(|l| l.base.clone())
                .collect::<Vec<_>>()
                .join(","),
        };
        let config = LoraConfig {
            rank,
            alpha,
            dropout,
            modules,
        };
        validate(&config).map_err(|e| bad(e.to_string()))?;
        Ok(Self::from_layers(config, layers, llama))
    }

    /// Copies another set of adapters' values into these (same layers and shapes).
    pub fn set_from(&self, other: &Adapters) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            return Err(Error::Msg(format!(
                "adapters differ: {} vs {} adapted Linears",
                self.layers.len(),
                other.layers.len()
            )));
        }
        for (x, y) in self.layers.iter().zip(&other.layers) {
            if x.flat != y.flat {
                return Err(Error::Msg(format!(
                    "adapters differ: {} vs {}",
                    x.base, y.base
                )));
            }
            x.a.set(y.a.as_tensor())?;
            x.b.set(y.b.as_tensor())?;
        }
        Ok(())
    }
}

fn validate(c: &LoraConfig) -> Result<()> {
    if c.rank == 0 {
        return Err(Error::Msg("LoRA rank must be positive".into()));
    }
    if !(0.0..1.0).contains(&c.dropout) {
        return Err(Error::Msg(format!(
            "LoRA dropout {} is not in [0, 1)",
            c.dropout
        )));
    }
    if !c.alpha.is_finite() {
        return Err(Error::Msg("LoRA alpha must be finite".into()));
    }
    Ok(())
}

/// Adds a zero `Var` to `out` so that backward keeps ∂ℓ/∂out, and records it with the
/// factor's input.
fn probe(flat: usize, side: Side, input: &Tensor, out: Tensor) -> Result<Tensor> {
    let p = Var::zeros(out.dims(), out.dtype(), out.device())?;
    let out = (out + p.as_tensor())?;
    PASS.with(|s| {
        if let Some(c) = s.borrow_mut().capture.as_mut() {
            c.insert((flat, side), (input.detach(), p));
        }
    });
    Ok(out)
}

/// Inverted-dropout mask: 0 with probability p, 1/(1−p) otherwise, from (seed, Linear).
fn dropout_mask(seed: u64, flat: usize, dims: &[usize], p: f64) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut s = Stream::new(seed, &format!("lora-dropout/{flat}"));
    let keep = (1.0 / (1.0 - p)) as f32;
    let v: Vec<f32> = (0..n)
        .map(|_| if s.uniform() < p { 0.0 } else { keep })
        .collect();
    Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
}

impl LinearBranch for Adapters {
    fn add_branch(&self, flat: usize, x: &Tensor, y: Tensor) -> Result<Tensor> {
        Adapters::add_branch(self, flat, x, y)
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Llama {
    /// Attaches (or with `None` detaches) LoRA adapters; every forward pass then adds their
    /// branch to the adapted Linears' outputs.
    pub fn set_adapters(&mut self, adapters: Option<Arc<Adapters>>) {
        self.set_branch(adapters.map(|a| a as Arc<dyn LinearBranch>));
    }

    /// The attached LoRA adapters, if any (None also when another kind of branch is attached).
    pub fn adapters(&self) -> Option<Arc<Adapters>> {
        self.branch()
            .cloned()?
            .into_any()
            .downcast::<Adapters>()
            .ok()
    }
}
