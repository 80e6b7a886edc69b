//! A Llama-family decoder written on candle primitives that all have a backward pass.
//!
//! candle-transformers' Llama uses fused softmax/RMSNorm/RoPE kernels without a backward
//! (STACK.md), so this file builds the same network from differentiable primitives:
//! RMSNorm as x·rsqrt(mean x² + ε)·w, RoPE with Hugging Face's `rotate_half`, GQA by
//! repeating key/value heads, SwiGLU MLP. Every block Linear goes through
//! [`super::linear`], which records the layer input x_t and, after backward, δ_t.

use super::capture::{Captured, LayerCapture, LinearInfo};
use super::config::LlamaConfig;
use super::linear::{self, GradSlot};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The seven Linear layers of a Llama block, by their short names.
pub const BLOCK_LINEARS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];

/// Hugging Face parameter name of a block Linear (`model.layers.{i}.self_attn.q_proj`).
pub fn linear_name(layer: usize, short: &str) -> String {
    match short {
        "q" | "k" | "v" | "o" => format!("model.layers.{layer}.self_attn.{short}_proj"),
        _ => format!("model.layers.{layer}.mlp.{short}_proj"),
    }
}

struct Block {
    attn_norm: Tensor,
    mlp_norm: Tensor,
    /// q, k, v, o, gate, up, down weights, each (d_out, d_in).
    linears: [Tensor; 7],
}

/// An extra branch added to the outputs of the model's Linears: the hook through which
/// `model::lora` adds (α/r)·B·A·x without this module knowing its types (so `lora` depends on
/// `llama`, never the reverse).
pub trait LinearBranch: std::any::Any + Send + Sync {
    /// y plus the branch's output for Linear `flat` (layer · 7 + j) with input x.
    fn add_branch(&self, flat: usize, x: &Tensor, y: Tensor) -> Result<Tensor>;
    /// The branch as `Any`, to recover its concrete type.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// A loaded Llama-family causal LM.
pub struct Llama {
    pub config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: Tensor,
    device: Device,
    dtype: DType,
    /// Block Linear weights are `Var`s and go through the stock matmul, so autograd yields dW
    /// (training and reference gradients); otherwise the frozen custom op is used.
    trainable: bool,
    /// A branch added to the outputs of the Linears (LoRA's (α/r)·B·A·x, attached by
    /// `lora`'s `Llama::set_adapters`).
    branch: Option<Arc<dyn LinearBranch>>,
    /// Block Linear weights transposed to (d_in, d_out), contiguous, by flat index: made on the
    /// first [`Llama::forward_padded`] call. A few rows times Wᵀ stored this way is several
    /// times faster on the CPU than against W's transposed view (which the matrix product
    /// repacks on every call), and decoding multiplies a few rows per step.
    decode_weights: std::sync::OnceLock<Vec<Tensor>>,
}

/// Token ids with a per-token loss mask; `loss_mask[t]` says whether token t is a response
/// token whose prediction (from position t−1) enters the loss.
#[derive(Debug, Clone, Default)]
pub struct TokenSeq {
    pub ids: Vec<u32>,
    pub loss_mask: Vec<bool>,
}

impl TokenSeq {
    /// `prompt` then `response`, the loss on the response tokens only.
    pub fn prompt_response(mut prompt: Vec<u32>, response: &[u32]) -> TokenSeq {
        let mut loss_mask = vec![false; prompt.len()];
        loss_mask.extend(std::iter::repeat_n(true, response.len()));
        prompt.extend_from_slice(response);
        TokenSeq {
            ids: prompt,
            loss_mask,
        }
    }

    /// Number of predicted tokens that enter the loss.
    pub fn n_loss_tokens(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m).count()
    }
}

/// The targets a loss is taken against.
///
/// Per-sample gradients against the data's own tokens give the empirical Fisher
/// E_n[g_n g_nᵀ]. Against targets drawn from the model's own predictive distribution at every
/// loss position they are pseudo-gradients, whose expectation E_y[g gᵀ] is the true Fisher, which
/// for softmax cross-entropy equals the Gauss–Newton matrix Σ_t J_tᵀ(diag p_t − p_t p_tᵀ)J_t
/// (Martens 2020, §9.2). K-FAC's Kronecker factors target that matrix (Grosse et al. 2023 fit
/// them on sampled labels too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Labels {
    /// The data's next tokens.
    #[default]
    Data,
    /// One target per response position drawn from the model's softmax, from a stream keyed by
    /// `seed` and the sample's token ids (so a sample draws the same labels in any batch).
    Sampled { seed: u64 },
}

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Labels::Data => write!(f, "data"),
            Labels::Sampled { seed } => write!(f, "sampled (seed {seed})"),
        }
    }
}

/// Keys (after RoPE) and values of a processed prefix, per layer: (rows, n_kv, len, head_dim),
/// one row for a prefix shared by a batch, one per batch row from [`Llama::forward_padded`].
#[derive(Clone)]
pub struct KvCache {
    pub k: Vec<Tensor>,
    pub v: Vec<Tensor>,
    /// Prefix length in tokens.
    pub len: usize,
}

struct Tracker<'a> {
    /// Index into the flat list of block Linears (layer * 7 + j) → slot.
    slots: HashMap<usize, GradSlot>,
    inputs: &'a mut HashMap<usize, Tensor>,
}

impl Llama {
    /// Builds the model from Hugging Face–named tensors (`model.embed_tokens.weight`, …).
    /// `source` is only used in error messages.
    pub fn from_tensors(
        config: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        source: PathBuf,
        dtype: DType,
    ) -> Result<Self> {
        config.validate().map_err(|msg| Error::Model {
            path: source.clone(),
            msg,
        })?;
        let device = Device::Cpu;
        let hd = config.head_dim();
        let (h, v, m) = (
            config.hidden_size,
            config.vocab_size,
            config.intermediate_size,
        );
        let (nh, nkv) = (config.num_attention_heads, config.num_key_value_heads);
        let has_head = tensors.contains_key("lm_head.weight");
        let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = tensors.remove(name).ok_or_else(|| Error::Model {
                path: source.clone(),
                msg: format!("missing tensor `{name}`"),
            })?;
            super::check_shape(&source, name, t.dims(), shape)?;
            let t = t.to_dtype(dtype)?.to_device(&device)?.contiguous()?;
            // Weights are checked once here, naming the tensor: a NaN would otherwise surface
            // much later as NaN features, curvature or adapters blamed on something else.
            // 0·x is 0 for every finite x and NaN for NaN and ±inf.
            let residue = t
                .affine(0.0, 0.0)?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
            if !residue.is_finite() {
                return Err(Error::Model {
                    path: source.clone(),
                    msg: format!("tensor `{name}` holds NaN or infinite values"),
                });
            }
            Ok(t)
        };
        let embed = take("model.embed_tokens.weight", &[v, h])?;
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let shapes: [[usize; 2]; 7] = [
                [nh * hd, h],
                [nkv * hd, h],
                [nkv * hd, h],
                [h, nh * hd],
                [m, h],
                [m, h],
                [h, m],
            ];
            let mut ws = Vec::with_capacity(7);
            for (short, shape) in BLOCK_LINEARS.iter().zip(shapes.iter()) {
                ws.push(take(&format!("{}.weight", linear_name(i, short)), shape)?);
            }
            let linears: [Tensor; 7] = ws.try_into().map_err(|_| Error::Model {
                path: source.clone(),
                msg: "internal: block linears".into(),
            })?;
            blocks.push(Block {
                attn_norm: take(&format!("model.layers.{i}.input_layernorm.weight"), &[h])?,
                mlp_norm: take(
                    &format!("model.layers.{i}.post_attention_layernorm.weight"),
                    &[h],
                )?,
                linears,
            });
        }
        let norm = take("model.norm.weight", &[h])?;
        // Tied models (SmolLM2) have no separate head: logits = h · Eᵀ.
        let lm_head = if has_head {
            take("lm_head.weight", &[v, h])?
        } else {
            embed.clone()
        };
        // Blocks beyond the config's layer count mean config and weights disagree (a config of
        // 2 layers over 30 layers of weights would otherwise load a silently smaller model).
        let mut extra: Vec<&String> = tensors
            .keys()
            .filter(|k| k.starts_with("model.layers."))
            .collect();
        if !extra.is_empty() {
            extra.sort();
            return Err(Error::Model {
                path: source.clone(),
                msg: format!(
                    "{} block tensors are not used by the config's {} layers (first: `{}`): \
                     the config's num_hidden_layers and the weights disagree",
                    extra.len(),
                    config.num_hidden_layers,
                    extra[0]
                ),
            });
        }
        Ok(Self {
            config,
            embed,
            blocks,
            norm,
            lm_head,
            device,
            dtype,
            trainable: false,
            branch: None,
            decode_weights: Default::default(),
        })
    }

    /// Turns every block Linear weight into a trainable `Var` (gradients via candle autograd)
    /// and returns them by Hugging Face name.
    pub fn make_trainable(&mut self) -> Result<Vec<(String, Var)>> {
        let mut vars = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            for (short, w) in BLOCK_LINEARS.iter().zip(b.linears.iter_mut()) {
                let v = Var::from_tensor(w)?;
                *w = v.as_tensor().clone();
                vars.push((format!("{}.weight", linear_name(i, short)), v));
            }
        }
        self.trainable = true;
        self.decode_weights = Default::default();
        Ok(vars)
    }

    /// Per-sample losses and the autograd gradients of Σ_b ℓ_b (after [`Self::make_trainable`]).
    pub fn loss_and_grads(
        &self,
        batch: &[TokenSeq],
    ) -> Result<(Vec<f32>, Option<candle_core::backprop::GradStore>)> {
        let (losses, grads, _) = self.loss_grads_hidden(batch)?;
        Ok((losses, grads))
    }

    /// [`Self::loss_and_grads`] plus the final hidden states (B, T, H), detached.
    pub fn loss_grads_hidden(
        &self,
        batch: &[TokenSeq],
    ) -> Result<(Vec<f32>, Option<candle_core::backprop::GradStore>, Tensor)> {
        let (ids, t) = pad_batch(batch, &self.device)?;
        let hs = self.hidden(&ids, None)?;
        let (losses, total) = self.loss_from_hidden(&hs, batch, t, true, Labels::Data)?;
        let losses = losses.into_iter().map(|v| v as f32).collect();
        let grads = match total {
            Some(total) => Some(total.backward()?),
            None => None,
        };
        Ok((losses, grads, hs.detach()))
    }

    /// Attaches (or with `None` detaches) a branch; every forward pass then adds it to the
    /// Linears' outputs. LoRA adapters attach through `Llama::set_adapters` (model::lora).
    pub fn set_branch(&mut self, branch: Option<Arc<dyn LinearBranch>>) {
        self.branch = branch;
    }

    /// The attached branch, if any.
    pub fn branch(&self) -> Option<&Arc<dyn LinearBranch>> {
        self.branch.as_ref()
    }

    /// The tensors in Hugging Face naming (for `convert`); the LM head is left out when tied.
    pub fn hf_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            out.push((
                format!("model.layers.{i}.input_layernorm.weight"),
                b.attn_norm.clone(),
            ));
            out.push((
                format!("model.layers.{i}.post_attention_layernorm.weight"),
                b.mlp_norm.clone(),
            ));
            for (short, w) in BLOCK_LINEARS.iter().zip(b.linears.iter()) {
                out.push((format!("{}.weight", linear_name(i, short)), w.clone()));
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.config.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        }
        out
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Every block Linear in order (layer-major, then q, k, v, o, gate, up, down).
    pub fn linears(&self) -> Vec<LinearInfo> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            for (short, w) in BLOCK_LINEARS.iter().zip(b.linears.iter()) {
                let (d_out, d_in) = w.dims2().unwrap_or((0, 0));
                out.push(LinearInfo {
                    name: linear_name(i, short),
                    d_out,
                    d_in,
                });
            }
        }
        out
    }

    /// Total number of parameters (embedding counted once when tied).
    pub fn n_params(&self) -> usize {
        let mut n = self.embed.elem_count() + self.norm.elem_count();
        for b in &self.blocks {
            n += b.attn_norm.elem_count() + b.mlp_norm.elem_count();
            n += b.linears.iter().map(|w| w.elem_count()).sum::<usize>();
        }
        if !self.config.tie_word_embeddings {
            n += self.lm_head.elem_count();
        }
        n
    }

    /// A block Linear's weight, by flat index (layer * 7 + j).
    pub fn linear_weight(&self, flat: usize) -> Option<&Tensor> {
        self.blocks.get(flat / 7).map(|b| &b.linears[flat % 7])
    }

    /// cos/sin tables (t, head_dim) for positions start..start + t (rotate_half layout).
    fn rope_tables(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let positions: Vec<usize> = (start..start + t).collect();
        self.rope_tables_at(&positions, &[t, hd])
    }

    /// cos/sin tables for any list of positions, shaped `shape` (its last dimension head_dim,
    /// its element count positions × head_dim): (B, 1, t, head_dim) gives every row of a
    /// batch its own positions.
    fn rope_tables_at(&self, positions: &[usize], shape: &[usize]) -> Result<(Tensor, Tensor)> {
        let hd = self.config.head_dim();
        let theta = self.config.rope_theta;
        let inv: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let mut cos = Vec::with_capacity(positions.len() * hd);
        let mut sin = Vec::with_capacity(positions.len() * hd);
        for &pos in positions {
            for _half in 0..2 {
                for f in &inv {
                    let a = pos as f64 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let cos = Tensor::from_vec(cos, shape, &self.device)?.to_dtype(self.dtype)?;
        let sin = Tensor::from_vec(sin, shape, &self.device)?.to_dtype(self.dtype)?;
        Ok((cos, sin))
    }

    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let eps = self.config.rms_norm_eps;
        let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
        let inv = (ms + eps)?.sqrt()?.recip()?;
        Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
    }

    /// Final-norm hidden states (B, T, H) for right-padded `ids` (B, T).
    /// With a tracker, the embedding output becomes the root of the autograd graph and every
    /// tracked Linear records its input and gets a gradient slot.
    fn hidden(&self, ids: &Tensor, tracker: Option<&mut Tracker>) -> Result<Tensor> {
        Ok(self.hidden_cached(ids, tracker, None, false)?.0)
    }

    /// [`Self::hidden`] continuing after a cached prefix (`past`, batch 1, shared by every row
    /// of `ids`), optionally returning the keys/values of `ids` appended to the prefix's.
    fn hidden_cached(
        &self,
        ids: &Tensor,
        tracker: Option<&mut Tracker>,
        past: Option<&KvCache>,
        want_cache: bool,
    ) -> Result<(Tensor, Option<KvCache>)> {
        self.hidden_rows(ids, tracker, past, want_cache, None)
    }

    /// Final-norm hidden states (B, t, H) and the keys/values of a **left-padded** batch.
    ///
    /// Row b of `ids` (B, t) continues row b of `past` (B rows, or none for the first pass).
    /// The first `pad[b]` columns of row b, counted from the start of the cache, are padding:
    /// no real token attends to them, and rotary positions start at 0 at the row's first real
    /// token, so a row's hidden states are those of its tokens alone (up to float rounding).
    /// Padding columns attend only to themselves (their outputs are finite and unused).
    pub fn forward_padded(
        &self,
        ids: &Tensor,
        past: Option<&KvCache>,
        pad: &[usize],
    ) -> Result<(Tensor, KvCache)> {
        let (b, _) = ids.dims2()?;
        if pad.len() != b {
            return Err(Error::Msg(format!(
                "forward_padded: {} padding counts for {b} rows",
                pad.len()
            )));
        }
        if let Some(p) = past {
            if let Some(k) = p.k.first() {
                if k.dim(0)? != b {
                    return Err(Error::Msg(format!(
                        "forward_padded: the cache has {} rows, the batch {b}",
                        k.dim(0)?
                    )));
                }
            }
        }
        let (hs, cache) = self.hidden_rows(ids, None, past, true, Some(pad))?;
        let cache = cache.ok_or_else(|| Error::Msg("internal: no cache".into()))?;
        Ok((hs, cache))
    }

    /// The start of batched decoding: each prompt run alone through the cache (no padding
    /// computed, the same pass as [`Self::generate_greedy_cached`]'s), then the caches
    /// left-padded with zeros to the longest prompt and stacked, ready for
    /// [`Self::forward_padded`] with the returned padding counts. Also returns each prompt's
    /// last final-norm hidden state, (B, 1, H).
    pub fn prefill_left_padded(&self, prompts: &[&[u32]]) -> Result<(Tensor, KvCache, Vec<usize>)> {
        let width = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
        if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
            return Err(Error::Msg("prefill: an empty prompt".into()));
        }
        let (nkv, hd) = (self.config.num_key_value_heads, self.config.head_dim());
        let n_layers = self.blocks.len();
        let mut lasts = Vec::with_capacity(prompts.len());
        let mut ks: Vec<Vec<Tensor>> = vec![Vec::with_capacity(prompts.len()); n_layers];
        let mut vs: Vec<Vec<Tensor>> = vec![Vec::with_capacity(prompts.len()); n_layers];
        let mut pad = Vec::with_capacity(prompts.len());
        for p in prompts {
            let x = Tensor::from_slice(p, (1, p.len()), &self.device)?;
            let (hs, cache) = self.hidden_cached(&x, None, None, true)?;
            let cache = cache.ok_or_else(|| Error::Msg("internal: no cache".into()))?;
            lasts.push(hs.narrow(1, p.len() - 1, 1)?);
            let n = width - p.len();
            pad.push(n);
            let zeros = Tensor::zeros((1, nkv, n, hd), self.dtype, &self.device)?;
            for (li, (k, v)) in cache.k.into_iter().zip(cache.v).enumerate() {
                if n == 0 {
                    ks[li].push(k);
                    vs[li].push(v);
                } else {
                    ks[li].push(Tensor::cat(&[&zeros, &k], 2)?);
                    vs[li].push(Tensor::cat(&[&zeros, &v], 2)?);
                }
            }
        }
        let stack = |rows: Vec<Vec<Tensor>>| -> Result<Vec<Tensor>> {
            rows.iter()
                .map(|r| Ok(Tensor::cat(r, 0)?))
                .collect::<Result<Vec<_>>>()
        };
        let cache = KvCache {
            k: stack(ks)?,
            v: stack(vs)?,
            len: width,
        };
        Ok((Tensor::cat(&lasts, 0)?, cache, pad))
    }

    /// The transposed block weights (the `decode_weights` field), made on first use.
    fn decode_weights(&self) -> Result<&Vec<Tensor>> {
        if let Some(w) = self.decode_weights.get() {
            return Ok(w);
        }
        let mut ws = Vec::with_capacity(self.blocks.len() * 7);
        for b in &self.blocks {
            for w in &b.linears {
                ws.push(w.t()?.contiguous()?);
            }
        }
        Ok(self.decode_weights.get_or_init(|| ws))
    }

    /// Logits (…, vocab) of final-norm hidden states of any rank (…, H).
    ///
    /// Several rows are multiplied as (E · Hᵀ)ᵀ: with the vocabulary-sized head on the left
    /// the CPU matrix product does not repack it per call (about 1.5x faster for 4–16 rows on
    /// SmolLM2); one row takes the usual path.
    pub fn head_logits(&self, hs: &Tensor) -> Result<Tensor> {
        let h = hs.dim(D::Minus1)?;
        let rows = hs.elem_count() / h.max(1);
        if rows <= 1 || self.trainable {
            return Ok(linear::apply(hs, &self.lm_head, None)?);
        }
        let mut dims = hs.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.lm_head.dim(0)?;
        }
        let x = hs.reshape((rows, h))?;
        Ok(self
            .lm_head
            .matmul(&x.t()?)?
            .t()?
            .contiguous()?
            .reshape(dims)?)
    }

    /// The shared body of [`Self::hidden_cached`] (`pad` None: one causal mask and one set of
    /// positions for every row, `past` of batch 1 broadcast) and [`Self::forward_padded`]
    /// (`pad` Some: per-row masks and positions, `past` with one row per batch row).
    fn hidden_rows(
        &self,
        ids: &Tensor,
        mut tracker: Option<&mut Tracker>,
        past: Option<&KvCache>,
        want_cache: bool,
        pad: Option<&[usize]>,
    ) -> Result<(Tensor, Option<KvCache>)> {
        let (b, t) = ids.dims2()?;
        let c = &self.config;
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim());
        let p0 = past.map_or(0, |p| p.len);
        // Batched decoding of a frozen model multiplies several rows against stored transposes
        // (one row is as fast against W's view, and needs no copy of the weights).
        let decode_weights = match (pad, self.trainable, tracker.is_some()) {
            (Some(_), false, false) if b > 1 => Some(self.decode_weights()?),
            _ => None,
        };
        let emb = self
            .embed
            .embedding(&ids.flatten_all()?)?
            .reshape((b, t, c.hidden_size))?;
        // Backward starts where capture starts: the residual stream becomes the autograd leaf
        // at the input of the lowest tracked block, so the blocks below build no graph and
        // take no backward (`--modules layers.20.` does not pay for blocks 0–19). The δ and x
        // of the tracked Linears depend only on what runs above, so they are unchanged.
        let lowest = tracker
            .as_ref()
            .and_then(|tr| tr.slots.keys().min().map(|&f| f / 7))
            .unwrap_or(0);
        let mut h = match tracker {
            Some(_) if lowest == 0 => Var::from_tensor(&emb)?.as_tensor().clone(),
            _ => emb,
        };
        let (cos, sin, mask) = match pad {
            None => {
                let (cos, sin) = self.rope_tables(p0, t)?;
                (
                    cos,
                    sin,
                    causal_mask_after(t, p0, self.dtype, &self.device)?,
                )
            }
            Some(pad) => {
                let positions: Vec<usize> = pad
                    .iter()
                    .flat_map(|&p| (p0..p0 + t).map(move |c| c.saturating_sub(p)))
                    .collect();
                let (cos, sin) = self.rope_tables_at(&positions, &[b, 1, t, hd])?;
                let mask = padded_causal_mask(pad, t, p0, self.dtype, &self.device)?;
                (cos, sin, mask)
            }
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let mut cache = KvCache {
            k: Vec::new(),
            v: Vec::new(),
            len: p0 + t,
        };
        for (li, block) in self.blocks.iter().enumerate() {
            if tracker.is_some() && lowest > 0 && li == lowest {
                h = Var::from_tensor(&h.detach())?.as_tensor().clone();
            }
            let mut lin = |j: usize, x: &Tensor| -> Result<Tensor> {
                let flat = li * 7 + j;
                let slot = match tracker.as_deref_mut() {
                    Some(tr) => match tr.slots.get(&flat) {
                        Some(slot) => {
                            tr.inputs.insert(flat, x.detach());
                            Some(slot.clone())
                        }
                        None => None,
                    },
                    None => None,
                };
                // Trainable weights need autograd's dW, except where δ is being captured: the
                // capture op gives the same forward values and keeps δ (features of a model
                // fine-tuned in this process would otherwise silently be zero).
                let y = if let (Some(wt), None) = (decode_weights, &slot) {
                    let dims = x.dims().to_vec();
                    let d_in = x.dim(D::Minus1)?;
                    let mut out_dims = dims.clone();
                    if let Some(last) = out_dims.last_mut() {
                        *last = wt[flat].dim(1)?;
                    }
                    x.reshape((x.elem_count() / d_in.max(1), d_in))?
                        .matmul(&wt[flat])?
                        .reshape(out_dims)?
                } else if self.trainable && slot.is_none() {
                    x.broadcast_matmul(&block.linears[j].t()?)?
                } else {
                    linear::apply(x, &block.linears[j], slot)?
                };
                match &self.branch {
                    Some(a) => a.add_branch(flat, x, y),
                    None => Ok(y),
                }
            };
            let x = self.rms_norm(&h, &block.attn_norm)?;
            let q = lin(0, &x)?.reshape((b, t, nh, hd))?.transpose(1, 2)?;
            let k = lin(1, &x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let v = lin(2, &x)?.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
            let q = rope(&q.contiguous()?, &cos, &sin)?;
            let mut k = rope(&k.contiguous()?, &cos, &sin)?;
            let mut v = v.contiguous()?;
            if let Some(p) = past {
                let pk = p.k[li].broadcast_as((b, nkv, p0, hd))?;
                let pv = p.v[li].broadcast_as((b, nkv, p0, hd))?;
                k = Tensor::cat(&[&pk, &k], 2)?;
                v = Tensor::cat(&[&pv, &v], 2)?;
            }
            if want_cache {
                cache.k.push(k.clone());
                cache.v.push(v.clone());
            }
            let o = if pad.is_some() {
                // Grouped-query attention without copying the keys/values per query head: the
                // rep query heads of a key/value head are adjacent, so (B, nh, t, hd) is
                // (B, nkv, rep·t, hd) and each group is one product with its key/value head.
                let rep = nh / nkv;
                let w = k.dim(2)?;
                let qg = q.reshape((b, nkv, rep * t, hd))?;
                let att = (qg.matmul(&k.t()?)? * scale)?
                    .reshape((b, nkv, rep, t, w))?
                    .broadcast_add(&mask.unsqueeze(2)?)?;
                let p = softmax_last(&att)?.reshape((b, nkv, rep * t, w))?;
                p.matmul(&v)?
                    .reshape((b, nh, t, hd))?
                    .transpose(1, 2)?
                    .reshape((b, t, nh * hd))?
            } else {
                let k = repeat_kv(&k, nh / nkv)?;
                let v = repeat_kv(&v, nh / nkv)?;
                let att = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
                let p = softmax_last(&att)?;
                p.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * hd))?
            };
            h = (h + lin(3, &o)?)?;
            let x = self.rms_norm(&h, &block.mlp_norm)?;
            let g = lin(4, &x)?.silu()?;
            let u = lin(5, &x)?;
            h = (h + lin(6, &(g * u)?)?)?;
        }
        let out = self.rms_norm(&h, &self.norm)?;
        Ok((out, want_cache.then_some(cache)))
    }

    /// Keys and values of a prefix (one sequence), to score many continuations after it.
    pub fn prefix_cache(&self, ids: &[u32]) -> Result<KvCache> {
        if ids.is_empty() {
            return Err(Error::Msg("empty prefix".into()));
        }
        let x = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        let (_, cache) = self.hidden_cached(&x, None, None, true)?;
        cache.ok_or_else(|| Error::Msg("internal: no cache".into()))
    }

    /// Appends `ids` to a cached prefix (batch 1), returning the longer cache.
    pub fn extend_cache(&self, past: &KvCache, ids: &[u32]) -> Result<KvCache> {
        let x = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        let (_, cache) = self.hidden_cached(&x, None, Some(past), true)?;
        cache.ok_or_else(|| Error::Msg("internal: no cache".into()))
    }

    /// Σ log p over each sequence's response tokens (loss_mask), every sequence continuing
    /// `past` when given (a shared prefix computed once). Sequences are right-padded into one
    /// batch. With a prefix, a sequence's first token must not be a response token.
    pub fn response_logprob_sums(
        &self,
        past: Option<&KvCache>,
        batch: &[TokenSeq],
    ) -> Result<Vec<f64>> {
        if past.is_some() && batch.iter().any(|s| s.loss_mask.first() == Some(&true)) {
            return Err(Error::Msg(
                "a continuation must start with at least one prompt token".into(),
            ));
        }
        let (ids, t) = pad_batch(batch, &self.device)?;
        let (hs, _) = self.hidden_cached(&ids, None, past, false)?;
        Ok(self
            .loss_from_hidden(&hs, batch, t, false, Labels::Data)?
            .0
            .into_iter()
            .map(|v| -v)
            .collect())
    }

    /// Final-norm hidden states (T, H) of one sequence, as f32 rows.
    pub fn final_hidden(&self, ids: &[u32]) -> Result<Tensor> {
        let x = Tensor::from_slice(ids, (1, ids.len()), &self.device)?;
        Ok(self.hidden(&x, None)?.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// A copy of the model whose block Linears `W_i` are replaced by `W_i + Δ_i` (one-step
    /// fine-tuning). Untouched weights are shared, not copied.
    pub fn with_linear_deltas(&self, deltas: &[(usize, Tensor)]) -> Result<Llama> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            blocks.push(Block {
                attn_norm: b.attn_norm.clone(),
                mlp_norm: b.mlp_norm.clone(),
                linears: b.linears.clone(),
            });
        }
        for (flat, d) in deltas {
            let b = blocks
                .get_mut(flat / 7)
                .ok_or_else(|| Error::Msg(format!("linear index {flat} out of range")))?;
            let w = &b.linears[flat % 7];
            b.linears[flat % 7] = (w + d.to_dtype(w.dtype())?)?;
        }
        Ok(self.with_blocks(blocks, self.config.clone()))
    }

    /// This model's embedding, norm, head and branch around other `blocks` (shared weights),
    /// not trainable.
    fn with_blocks(&self, blocks: Vec<Block>, config: LlamaConfig) -> Llama {
        Llama {
            config,
            embed: self.embed.clone(),
            blocks,
            norm: self.norm.clone(),
            lm_head: self.lm_head.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
            trainable: false,
            branch: self.branch.clone(),
            decode_weights: Default::default(),
        }
    }

    /// The first `k` blocks of this model, then its final RMSNorm: the frozen trunk of an
    /// amortized encoder (`crate::encoder`). Weights are shared, not copied.
    pub fn truncated(&self, k: usize) -> Result<Llama> {
        if k == 0 || k > self.blocks.len() {
            return Err(Error::Msg(format!(
                "a trunk of {k} blocks: the model has {} (give 1 to {})",
                self.blocks.len(),
                self.blocks.len()
            )));
        }
        let blocks = self.blocks[..k]
            .iter()
            .map(|b| Block {
                attn_norm: b.attn_norm.clone(),
                mlp_norm: b.mlp_norm.clone(),
                linears: b.linears.clone(),
            })
            .collect();
        let mut config = self.config.clone();
        config.num_hidden_layers = k;
        Ok(self.with_blocks(blocks, config))
    }

    /// Final-norm hidden states (B, T, H) of a right-padded batch, forward only (causal, so a
    /// sequence's states do not depend on the padding after it).
    pub fn hidden_batch(&self, batch: &[TokenSeq]) -> Result<Tensor> {
        let (ids, _) = pad_batch(batch, &self.device)?;
        self.hidden(&ids, None)
    }

    /// Log-probabilities log p(ids[t] | ids[<t]) for t ≥ 1 of one sequence (no gradients).
    pub fn token_logprobs(&self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.len() < 2 {
            return Ok(Vec::new());
        }
        let t = ids.len();
        let x = Tensor::from_slice(ids, (1, t), &self.device)?;
        let hs = self.hidden(&x, None)?.squeeze(0)?.narrow(0, 0, t - 1)?;
        let logits = linear::apply(&hs, &self.lm_head, None)?;
        let lp = log_softmax_last(&logits)?;
        let tgt = Tensor::from_slice(&ids[1..], (t - 1, 1), &self.device)?;
        let v = lp.gather(&tgt, 1)?.squeeze(1)?.to_dtype(DType::F32)?;
        Ok(v.to_vec1()?)
    }

    /// Logits of the last position, for greedy decoding.
    pub fn next_token_logits(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let t = ids.len();
        let x = Tensor::from_slice(ids, (1, t), &self.device)?;
        let hs = self.hidden(&x, None)?.squeeze(0)?.narrow(0, t - 1, 1)?;
        let logits = linear::apply(&hs, &self.lm_head, None)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?)
    }

    /// Greedy decoding of up to `max_new` tokens, stopping at any id in `stop`.
    pub fn generate_greedy(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        let mut ids = prompt.to_vec();
        let mut out = Vec::new();
        for _ in 0..max_new {
            let logits = self.next_token_logits(&ids)?;
            let next = argmax(&logits);
            if stop.contains(&next) {
                break;
            }
            ids.push(next);
            out.push(next);
        }
        Ok(out)
    }

    /// [`Self::generate_greedy`] with a key/value cache: one pass over the prompt, then one
    /// token per step (the same tokens, far fewer FLOPs on long prompts).
    pub fn generate_greedy_cached(
        &self,
        prompt: &[u32],
        max_new: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() || max_new == 0 {
            return Ok(Vec::new());
        }
        let x = Tensor::from_slice(prompt, (1, prompt.len()), &self.device)?;
        let (hs, mut cache) = self.hidden_cached(&x, None, None, true)?;
        let mut last = hs.squeeze(0)?.narrow(0, prompt.len() - 1, 1)?;
        let mut out = Vec::new();
        loop {
            let logits = linear::apply(&last, &self.lm_head, None)?;
            let logits: Vec<f32> = logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()?;
            let next = argmax(&logits);
            if stop.contains(&next) {
                break;
            }
            out.push(next);
            if out.len() >= max_new {
                break;
            }
            let x = Tensor::from_slice(&[next], (1, 1), &self.device)?;
            let (hs, c) = self.hidden_cached(&x, None, cache.as_ref(), true)?;
            cache = c;
            last = hs.squeeze(0)?;
        }
        Ok(out)
    }

    /// One padded forward and backward pass over `batch`.
    ///
    /// The loss backpropagated is Σ_b ℓ_b with ℓ_b the mean token cross-entropy over sample b's
    /// response tokens, so the δ_t of each sample are exactly ∂ℓ_b/∂y_t (samples do not interact).
    /// `tracked` holds flat Linear indices (layer * 7 + j) whose x_t and δ_t are captured.
    pub fn loss_and_capture(&self, batch: &[TokenSeq], tracked: &[usize]) -> Result<Captured> {
        self.loss_and_capture_labels(batch, tracked, Labels::Data)
    }

    /// [`Self::loss_and_capture`] against `labels` (sampled labels give pseudo-gradients for
    /// the true Fisher; the reported losses are then those of the sampled targets).
    pub fn loss_and_capture_labels(
        &self,
        batch: &[TokenSeq],
        tracked: &[usize],
        labels: Labels,
    ) -> Result<Captured> {
        let (ids, t) = pad_batch(batch, &self.device)?;
        let b = batch.len();
        let mut inputs = HashMap::new();
        let mut tracker = Tracker {
            slots: tracked
                .iter()
                .map(|&f| (f, Arc::new(Mutex::new(None))))
                .collect(),
            inputs: &mut inputs,
        };
        let slots = tracker.slots.clone();
        let hs = self.hidden(&ids, Some(&mut tracker))?;
        let (losses, total) = self.loss_from_hidden(&hs, batch, t, true, labels)?;
        let losses = losses.into_iter().map(|v| v as f32).collect();
        if let Some(total) = total {
            total.backward()?;
        }
        let infos = self.linears();
        let mut layers = Vec::with_capacity(tracked.len());
        for &f in tracked {
            let info = infos
                .get(f)
                .cloned()
                .ok_or_else(|| Error::Msg(format!("tracked layer index {f} out of range")))?;
            let x = inputs
                .remove(&f)
                .ok_or_else(|| Error::Msg(format!("no input captured for {}", info.name)))?;
            let delta = match slots.get(&f).and_then(|s| s.lock().ok()?.take()) {
                Some(d) => d.reshape((b, t, info.d_out))?,
                // No response token in the whole batch: every gradient is zero.
                None => Tensor::zeros((b, t, info.d_out), self.dtype, &self.device)?,
            };
            layers.push(LayerCapture { info, x, delta });
        }
        Ok(Captured {
            losses,
            layers,
            hidden: hs.detach(),
        })
    }

    /// Per-sample mean response-token losses of a batch, without gradients.
    pub fn losses(&self, batch: &[TokenSeq]) -> Result<Vec<f32>> {
        Ok(self
            .losses_f64(batch)?
            .into_iter()
            .map(|v| v as f32)
            .collect())
    }

    /// [`Self::losses`] in f64 (for finite-difference checks on f64 models).
    pub fn losses_f64(&self, batch: &[TokenSeq]) -> Result<Vec<f64>> {
        let (ids, t) = pad_batch(batch, &self.device)?;
        let hs = self.hidden(&ids, None)?;
        Ok(self.loss_from_hidden(&hs, batch, t, true, Labels::Data)?.0)
    }

    /// ℓ_b for each sample and the summed loss tensor (None when no token is in the loss).
    /// Logits are computed only at the positions that predict a response token.
    fn loss_from_hidden(
        &self,
        hs: &Tensor,
        batch: &[TokenSeq],
        t: usize,
        mean: bool,
        labels: Labels,
    ) -> Result<(Vec<f64>, Option<Tensor>)> {
        let mut pos = Vec::new();
        let mut tgt = Vec::new();
        let mut weight = Vec::new();
        let mut owner = Vec::new();
        for (bi, s) in batch.iter().enumerate() {
            let n = s.n_loss_tokens();
            for ti in 1..s.ids.len() {
                if s.loss_mask[ti] {
                    pos.push((bi * t + ti - 1) as u32);
                    tgt.push(s.ids[ti]);
                    weight.push(if mean { 1.0 / n as f64 } else { 1.0 });
                    owner.push(bi);
                }
            }
        }
        let mut losses = vec![0f64; batch.len()];
        if pos.is_empty() {
            return Ok((losses, None));
        }
        let h = self.config.hidden_size;
        let n = pos.len();
        let flat = hs.reshape((hs.elem_count() / h, h))?;
        let sel = flat.index_select(&Tensor::from_vec(pos, n, &self.device)?, 0)?;
        let logits = linear::apply(&sel, &self.lm_head, None)?;
        let lp = log_softmax_last(&logits)?;
        if let Labels::Sampled { seed } = labels {
            tgt = sample_targets(&lp, &owner, batch, seed)?;
        }
        let tgt = Tensor::from_vec(tgt, (n, 1), &self.device)?;
        let nll = lp.gather(&tgt, 1)?.squeeze(1)?.neg()?;
        let w = Tensor::from_vec(weight, n, &self.device)?.to_dtype(self.dtype)?;
        let weighted = (nll * w)?;
        let per_tok: Vec<f64> = weighted.to_dtype(DType::F64)?.to_vec1()?;
        for (i, v) in per_tok.iter().enumerate() {
            losses[owner[i]] += v;
        }
        Ok((losses, Some(weighted.sum_all()?)))
    }
}

/// One target per loss position drawn from exp(`lp`) (rows in `owner`'s order), each sample from
/// its own stream keyed by `seed` and its token ids.
fn sample_targets(lp: &Tensor, owner: &[usize], batch: &[TokenSeq], seed: u64) -> Result<Vec<u32>> {
    use crate::random::Stream;
    let p: Vec<Vec<f64>> = lp.detach().to_dtype(DType::F64)?.exp()?.to_vec2()?;
    let mut streams: HashMap<usize, Stream> = HashMap::new();
    let mut out = Vec::with_capacity(owner.len());
    for (row, &b) in p.iter().zip(owner) {
        let st = streams.entry(b).or_insert_with(|| {
            let key: String = batch[b].ids.iter().map(|i| format!("{i},")).collect();
            Stream::new(seed, &key)
        });
        // Inverse CDF; rounding can leave the total a hair under 1, so fall back to the last.
        let u = st.uniform();
        let mut acc = 0.0;
        let mut pick = row.len() - 1;
        for (k, &pk) in row.iter().enumerate() {
            acc += pk;
            if u < acc {
                pick = k;
                break;
            }
        }
        out.push(pick as u32);
    }
    Ok(out)
}

/// Index of the first largest entry.
pub(crate) fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Right-pads a batch with token 0 (padding never enters the loss, and causal attention keeps
/// real tokens from seeing it).
fn pad_batch(batch: &[TokenSeq], device: &Device) -> Result<(Tensor, usize)> {
    let t = batch.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    if batch.is_empty() || t == 0 {
        return Err(Error::Msg("empty batch".into()));
    }
    let mut flat = vec![0u32; batch.len() * t];
    for (bi, s) in batch.iter().enumerate() {
        if s.loss_mask.len() != s.ids.len() {
            return Err(Error::Msg(format!(
                "sample {bi}: {} ids but {} mask entries",
                s.ids.len(),
                s.loss_mask.len()
            )));
        }
        flat[bi * t..bi * t + s.ids.len()].copy_from_slice(&s.ids);
    }
    Ok((Tensor::from_vec(flat, (batch.len(), t), device)?, t))
}

/// (t, past + t) additive mask: new token i sees the whole prefix and new tokens j ≤ i.
fn causal_mask_after(t: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let w = past + t;
    let mut m = vec![0f32; t * w];
    for i in 0..t {
        for j in past + i + 1..w {
            m[i * w + j] = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(m, (t, w), device)?.to_dtype(dtype)?)
}

/// (B, 1, t, past + t) additive mask of a left-padded batch: in row b, new token i (column
/// past + i) sees columns pad[b]..=past + i; a padding column sees only itself.
fn padded_causal_mask(
    pad: &[usize],
    t: usize,
    past: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    let w = past + t;
    let mut m = vec![f32::NEG_INFINITY; pad.len() * t * w];
    for (bi, &p) in pad.iter().enumerate() {
        for i in 0..t {
            let col = past + i;
            let row = &mut m[(bi * t + i) * w..(bi * t + i + 1) * w];
            if col < p {
                row[col] = 0.0;
            } else {
                row[p..=col].fill(0.0);
            }
        }
    }
    Ok(Tensor::from_vec(m, (pad.len(), 1, t, w), device)?.to_dtype(dtype)?)
}

/// Softmax over the last dimension from primitives (max subtracted, detached: it does not
/// change the value, so it contributes no gradient).
fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Hugging Face RoPE: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁).
fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// (B, n_kv, T, hd) → (B, n_kv·rep, T, hd), head h using key/value head h / rep.
fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, t, hd) = x.dims4()?;
    let xs: Vec<&Tensor> = std::iter::repeat_n(x, rep).collect();
    Ok(Tensor::cat(&xs, 2)?.reshape((b, nkv * rep, t, hd))?)
}
