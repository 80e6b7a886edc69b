//! The amortized encoder (Influcoder; Kachler, Sileo & Denis 2026, arXiv 2606.13668;
//! METHODS.md §4): a forward-only map φ(z) whose cosine reproduces the teacher's
//! gradient cosine, cos(φ(z), φ(z')) ≈ cos(g(z), g(z')), at a fraction of `index`'s cost.
//!
//! ```text
//! trunk   h_t = RMSNorm(block_k ∘ … ∘ block_1(embed(tokens)))    first k blocks, frozen
//! pool    x = [h_{last prompt token} ; mean_{t ∈ response} h_t]   (or either one)
//! head    x̂ = (x − μ)/σ,   φ = W₂ gelu(W₁ x̂ + b₁) + b₂ + P x̂      trained (distil.rs)
//! ```
//!
//! The trunk is the same model the teacher store was indexed with, tokenizing and rendering
//! samples exactly as the teacher did (its `FeatureOptions`), so it needs no tokenizer or
//! template of its own. An encoder folder holds `encoder.json` ([`EncoderSpec`]),
//! `head.safetensors` (the trained head with its standardization μ, σ), the training
//! checkpoints and `metrics.json`; `encode` writes an ordinary store of φ (kind `encoder`)
//! that `score`, `select` and `compare` use unchanged.

pub mod agreement;
pub mod distil;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};

use crate::data::tokens::Renderer;
use crate::data::Sample;
use crate::features::{FeatureSpec, Projection};
use crate::index::{self, Batch, FeatureOptions, FeaturePass, Featurized, PassObserver, Progress};
use crate::model::{Llama, LoadedModel, TokenSeq};
use crate::store::Store;
use crate::{Error, Result};

/// The encoder's settings and provenance, `encoder.json` in its folder.
pub const SPEC_FILE: &str = "encoder.json";
/// The trained head (and its input standardization), `head.safetensors`.
pub const HEAD_FILE: &str = "head.safetensors";
/// The `kind` of an encoder store's `spec.features`.
pub const STORE_KIND: &str = "encoder";

/// Which hidden states of the trunk make a sample's input to the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The state at the last prompt token.
    Last,
    /// The mean over the response tokens.
    Mean,
    /// Both, concatenated (2 × hidden).
    LastMean,
    /// Both and the mean over the prompt tokens (3 × hidden).
    All,
}

crate::error::names!(Pooling: "--pooling", Last = "last", Mean = "mean", LastMean = "last-mean", All = "all");

impl Pooling {
    /// The pooled width for a trunk of width `hidden`.
    pub fn width(self, hidden: usize) -> usize {
        match self {
            Pooling::LastMean => 2 * hidden,
            Pooling::All => 3 * hidden,
            _ => hidden,
        }
    }
}

/// The head's shape: `d_in` → (`hidden`, gelu) → `d_out`, with a linear skip `P`; `hidden`
/// 0 is a linear head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadShape {
    pub d_in: usize,
    pub hidden: usize,
    pub d_out: usize,
}

/// The teacher store an encoder was distilled from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRef {
    pub path: PathBuf,
    /// sha256 of the teacher's manifest spec (`store::compress::spec_sha256`, as a compact store records its parent).
    pub spec_sha256: String,
    pub n_samples: usize,
    pub dim: usize,
}

/// `encoder.json`: what defines an encoder. A rerun of `encoder train` into the same folder
/// must have the same (it resumes); `encode` checks the model against `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderSpec {
    /// The model spec of the trunk's model (`index::model_spec`): weights and tokenizer hashes.
    pub model: serde_json::Value,
    /// Where the model was loaded from (`encode` loads it from here unless told otherwise).
    pub model_path: PathBuf,
    /// Rendering and truncation of samples: the teacher's.
    pub features: FeatureOptions,
    /// Trunk blocks k.
    pub layers: usize,
    pub pooling: Pooling,
    pub head: HeadShape,
    pub teacher: TeacherRef,
    /// The distillation settings.
    pub train: distil::DistilConfig,
    /// A LoRA adapter or checkpoint the trunk carries on top of `model_path` (the weights a
    /// teacher indexed at a fine-tuned model was taken at); `model` hashes it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<crate::train::features::CheckpointInfo>,
}

impl EncoderSpec {
    /// Reads `dir/encoder.json`.
    pub fn read(dir: &Path) -> Result<EncoderSpec> {
        let p = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| {
            Error::Msg(format!(
                "{} is not an encoder folder (no {SPEC_FILE}: {e}); make one with `inflow encoder train`",
                dir.display()
            ))
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Store {
            path: dir.into(),
            msg: format!("{SPEC_FILE}: {e}"),
        })
    }

    /// Refuses a model other than the one the encoder was trained on, naming both hashes.
    pub fn check_model(&self, model: &LoadedModel, dir: &Path) -> Result<()> {
        let have = index::model_spec(model)?;
        for key in ["sha256", "tokenizer_sha256"] {
            if have[key] != self.model[key] {
                return Err(Error::Msg(format!(
                    "encoder {} was trained on model {} ({key} {}), not on {} ({key} {})",
                    dir.display(),
                    self.model_path.display(),
                    self.model[key],
                    model.source.path.display(),
                    have[key]
                )));
            }
        }
        Ok(())
    }
}

/// The trained head: parameters (as `Var`s for training) and the standardization of its
/// input, fitted on the training split's pooled features.
pub struct Head {
    pub shape: HeadShape,
    /// μ and σ of the pooled features, each (d_in).
    pub mean: Tensor,
    pub std: Tensor,
    /// In optimizer order: `p` (d_out × d_in), then, for an MLP head, `w1`, `b1`, `w2`, `b2`;
    /// last `log_scale`, the student's logit scale (log 1/τ_s) of the listwise loss.
    pub params: Vec<(String, Var)>,
}

impl Head {
    /// A head initialized from `seed`: P, W₁ ~ N(0, 1/d_in), W₂ ~ N(0, 1/hidden) scaled by
    /// 0.1 (the MLP starts as a small correction of the linear map), biases 0, log_scale
    /// ln 20.
    pub fn init(shape: HeadShape, mean: Tensor, std: Tensor, seed: u64) -> Result<Head> {
        let dev = Device::Cpu;
        let gauss = |label: &str, rows: usize, cols: usize, sd: f64| -> Result<Var> {
            let mut s = crate::random::Stream::new(seed, label);
            let v: Vec<f32> = (0..rows * cols).map(|_| (s.normal() * sd) as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(v, (rows, cols), &dev)?)?)
        };
        let zeros = |n: usize| -> Result<Var> { Ok(Var::zeros(n, DType::F32, &dev)?) };
        let (di, h, d) = (shape.d_in, shape.hidden, shape.d_out);
        let mut params = vec![(
            "p".to_string(),
            gauss("encoder.p", d, di, 1.0 / (di as f64).sqrt())?,
        )];
        if h > 0 {
            params.push((
                "w1".into(),
                gauss("encoder.w1", h, di, 1.0 / (di as f64).sqrt())?,
            ));
            params.push(("b1".into(), zeros(h)?));
            params.push((
                "w2".into(),
                gauss("encoder.w2", d, h, 0.1 / (h as f64).sqrt())?,
            ));
            params.push(("b2".into(), zeros(d)?));
        }
        params.push((
            "log_scale".into(),
            Var::from_tensor(&Tensor::new(&[20f32.ln()], &dev)?)?,
        ));
        Ok(Head {
            shape,
            mean,
            std,
            params,
        })
    }

    fn param(&self, name: &str) -> Result<&Tensor> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor())
            .ok_or_else(|| Error::Msg(format!("encoder head: no parameter `{name}`")))
    }

    /// The student's logit scale exp(log_scale) = 1/τ_s, as a (1) tensor.
    pub fn scale(&self) -> Result<Tensor> {
        Ok(self.param("log_scale")?.exp()?)
    }

    /// φ of pooled features `x` (n × d_in): (n × d_out), not normalized.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xs = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let mut y = xs.matmul(&self.param("p")?.t()?)?;
        if self.shape.hidden > 0 {
            let h = xs
                .matmul(&self.param("w1")?.t()?)?
                .broadcast_add(self.param("b1")?)?
                .gelu_erf()?;
            let m = h
                .matmul(&self.param("w2")?.t()?)?
                .broadcast_add(self.param("b2")?)?;
            y = (y + m)?;
        }
        Ok(y)
    }

    /// φ of `n` pooled rows given flat, as flat f32 rows.
    pub fn apply(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let t = Tensor::from_slice(x, (n, self.shape.d_in), &Device::Cpu)?;
        Ok(self.forward(&t)?.flatten_all()?.to_vec1()?)
    }

    /// The head's tensors by name (parameters, `mean`, `std`).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut m: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect();
        m.insert("mean".into(), self.mean.clone());
        m.insert("std".into(), self.std.clone());
        m
    }

    /// Writes the head as safetensors at `path` (via a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        candle_core::safetensors::save(&self.tensors(), &tmp).map_err(|e| Error::Model {
            path: tmp.clone(),
            msg: format!("cannot write safetensors: {e}"),
        })?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    /// A head of `shape` read from `path` (written by [`Head::save`]).
    pub fn load(shape: HeadShape, path: &Path) -> Result<Head> {
        let mut t =
            candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| Error::Model {
                path: path.into(),
                msg: format!("cannot read the encoder head: {e}"),
            })?;
        let mut take = |name: &str| {
            t.remove(name).ok_or_else(|| Error::Model {
                path: path.into(),
                msg: format!("encoder head: missing tensor `{name}`"),
            })
        };
        let (mean, std) = (take("mean")?, take("std")?);
        let mut head = Head::init(shape, mean, std, 0)?;
        for (name, var) in head.params.iter_mut() {
            let v = take(name)?;
            if v.dims() != var.dims() {
                return Err(Error::Model {
                    path: path.into(),
                    msg: format!(
                        "encoder head: `{name}` is {:?}, encoder.json says {:?}",
                        v.dims(),
                        var.dims()
                    ),
                });
            }
            *var = Var::from_tensor(&v)?;
        }
        Ok(head)
    }
}

/// Rows of `x` (n × d) scaled to unit length (zero rows stay zero).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = (x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?;
    Ok(x.broadcast_div(&n)?)
}

/// Pools a batch's trunk states as `pooling` says: (B × width) flat rows.
fn pool(llama: &Llama, seqs: &[TokenSeq], pooling: Pooling) -> Result<Vec<f32>> {
    let hidden = llama.hidden_batch(seqs)?;
    let (last, mean) = index::pooled_hidden(&hidden, seqs)?;
    let h = llama.config.hidden_size;
    Ok(match pooling {
        Pooling::Last => last,
        Pooling::Mean => mean,
        Pooling::LastMean => last
            .chunks(h)
            .zip(mean.chunks(h))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect(),
        Pooling::All => {
            let prompt = prompt_means(&hidden, seqs)?;
            last.chunks(h)
                .zip(mean.chunks(h))
                .zip(prompt.chunks(h))
                .flat_map(|((a, b), c)| a.iter().chain(b).chain(c).copied())
                .collect()
        }
    })
}

/// The mean hidden state over each sample's prompt tokens (B × hidden, flat).
fn prompt_means(hidden: &Tensor, seqs: &[TokenSeq]) -> Result<Vec<f32>> {
    let h = hidden.to_dtype(DType::F32)?;
    let mut out = Vec::new();
    for (b, s) in seqs.iter().enumerate() {
        let n = s.loss_mask.iter().take_while(|&&m| !m).count().max(1);
        let m = h.get(b)?.narrow(0, 0, n.min(s.ids.len()))?.mean(0)?;
        out.extend(m.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// The feature spec an encoder pass reports: a `dense` row of the head's width with no
/// tracked layers (the store's `kind: encoder` and the encoder's hashes are added beside it).
fn pass_spec(dim: usize, what: String) -> FeatureSpec {
    FeatureSpec {
        projection: Projection::Dense { dim },
        seed: 0,
        loss: what,
        layers: Vec::new(),
    }
}

/// The trunk alone: pooled hidden states of the first k blocks (what the head is trained
/// on, cached once per encoder folder; also the "untrained truncated model" baseline).
pub struct TrunkPass<'a> {
    trunk: Llama,
    renderer: Renderer<'a>,
    pooling: Pooling,
    spec: FeatureSpec,
}

impl<'a> TrunkPass<'a> {
    /// The first `layers` blocks of `model`, rendering samples as `opts` says.
    pub fn new(
        model: &'a LoadedModel,
        opts: &FeatureOptions,
        layers: usize,
        pooling: Pooling,
    ) -> Result<Self> {
        let trunk = model.llama.truncated(layers)?;
        let width = pooling.width(trunk.config.hidden_size);
        Ok(Self {
            trunk,
            renderer: Renderer::new(model, opts.template, opts.max_tokens)?
                .with_truncate(opts.truncate),
            pooling,
            spec: pass_spec(
                width,
                format!(
                    "none (forward only): hidden states of the first {layers} blocks, pooled {pooling}"
                ),
            ),
        })
    }
}

impl FeaturePass for TrunkPass<'_> {
    fn renderer(&self) -> &Renderer<'_> {
        &self.renderer
    }
    fn spec(&self) -> &FeatureSpec {
        &self.spec
    }
    fn batch<O: PassObserver>(&self, seqs: &[TokenSeq], _: &mut O) -> Result<Batch> {
        Ok(Batch {
            grads: pool(&self.trunk, seqs, self.pooling)?,
            losses: vec![0.0; seqs.len()],
            ..Batch::default()
        })
    }
}

/// A trained encoder, ready to embed samples: trunk, pooling and head.
pub struct Encoder<'a> {
    pub dir: PathBuf,
    pub spec: EncoderSpec,
    pub head: Head,
    /// sha256 of `head.safetensors`.
    pub head_sha256: String,
    trunk: TrunkPass<'a>,
    pass_spec: FeatureSpec,
}

impl<'a> Encoder<'a> {
    /// The encoder in folder `dir` on `model`, which must be the model it was trained on.
    pub fn load(dir: &Path, model: &'a LoadedModel) -> Result<Self> {
        let spec = EncoderSpec::read(dir)?;
        spec.check_model(model, dir)?;
        let hp = dir.join(HEAD_FILE);
        if !hp.exists() {
            return Err(Error::Msg(format!(
                "encoder {} has no trained head ({HEAD_FILE}): finish `inflow encoder train` first",
                dir.display()
            )));
        }
        let head = Head::load(spec.head, &hp)?;
        let head_sha256 = crate::model::sha256_files(&[hp])?;
        let trunk = TrunkPass::new(model, &spec.features, spec.layers, spec.pooling)?;
        let pass_spec = pass_spec(
            spec.head.d_out,
            format!(
                "none (forward only): amortized encoder, {} blocks pooled {}, head {}→{}→{}",
                spec.layers, spec.pooling, spec.head.d_in, spec.head.hidden, spec.head.d_out
            ),
        );
        Ok(Self {
            dir: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
            spec,
            head,
            head_sha256,
            trunk,
            pass_spec,
        })
    }

    /// What an encoder store records of its encoder, beside the pass spec in
    /// `spec.features`: `kind: encoder` and `encoder: {path, head_sha256, teacher, …}`.
    pub fn store_fields(&self) -> Vec<(String, serde_json::Value)> {
        vec![
            ("kind".into(), STORE_KIND.into()),
            (
                "encoder".into(),
                serde_json::json!({
                    "path": self.dir,
                    "head_sha256": self.head_sha256,
                    "layers": self.spec.layers,
                    "pooling": self.spec.pooling,
                    "head": self.spec.head,
                    "teacher": self.spec.teacher.path,
                    "teacher_spec_sha256": self.spec.teacher.spec_sha256,
                }),
            ),
        ]
    }

    /// The whole `spec.features` of a store this encoder writes.
    pub fn store_features(&self) -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(&self.pass_spec).map_err(|e| Error::Msg(e.to_string()))?;
        if let Some(o) = v.as_object_mut() {
            o.extend(self.store_fields());
        }
        Ok(v)
    }
}

impl FeaturePass for Encoder<'_> {
    fn renderer(&self) -> &Renderer<'_> {
        &self.trunk.renderer
    }
    fn spec(&self) -> &FeatureSpec {
        &self.pass_spec
    }
    fn batch<O: PassObserver>(&self, seqs: &[TokenSeq], o: &mut O) -> Result<Batch> {
        let pooled = self.trunk.batch(seqs, o)?.grads;
        Ok(Batch {
            grads: self.head.apply(&pooled, seqs.len())?,
            losses: vec![0.0; seqs.len()],
            ..Batch::default()
        })
    }
}

/// Whether a store holds encoder features (`spec.features.kind == "encoder"`).
pub fn is_encoder_store(store: &Store) -> bool {
    store.spec().features.get("kind").and_then(|k| k.as_str()) == Some(STORE_KIND)
}

/// Features of `queries` for an encoder store: embedded by the encoder the store names,
/// which must still be the one that wrote it (the store's `spec.features` is compared field
/// by field with what this encoder would write, so a retrained head or another encoder is
/// refused naming the difference).
pub fn featurize_queries(
    model: &LoadedModel,
    store: &Store,
    queries: &[Sample],
    threads: usize,
    progress: &Progress,
) -> Result<Featurized> {
    let dir = store.spec().features["encoder"]["path"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| Error::Store {
            path: store.dir().into(),
            msg: "is an encoder store without `features.encoder.path`".into(),
        })?;
    let enc = Encoder::load(&dir, model)?;
    store
        .check_compatible(&serde_json::json!({
            "features": enc.store_features()?,
            "dim": enc.spec.head.d_out,
        }))
        .map_err(|e| {
            Error::Msg(format!(
                "encoder store {} was not written by the encoder now in {}: {e}",
                store.dir().display(),
                dir.display()
            ))
        })?;
    enc.featurize(queries, 1, threads, progress)
}
