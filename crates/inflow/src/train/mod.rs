//! The fine-tuning engine (DESIGN.md, "train"): LoRA or full fine-tuning of chosen block
//! Linears with AdamW, a warm-up + decay schedule, gradient clipping and accumulation, and
//! checkpoints that carry everything needed to continue bit for bit (weights, Adam moments,
//! step, learning rate, RNG state). TracIn and LESS read these checkpoints
//! ([`features`]); LDS retraining, planted-data models and selection experiments train with it.
//!
//! The loss of a step is the mean over its samples of each sample's mean response-token
//! cross-entropy (the per-sample loss ℓ_b the features use), computed on padded micro-batches.
//! A run is deterministic for a seed and a thread count: the data order is a seeded permutation
//! per epoch, dropout masks come from a seeded stream saved in checkpoints, and per-thread
//! gradients are summed in a fixed order.

pub mod adamw;
pub mod checkpoint;
pub mod features;
pub mod log;
pub mod schedule;

use crate::model::lora::{self, Adapters, LoraConfig};
use crate::model::select_modules;
use crate::model::{LoadedModel, TokenSeq};
use crate::random::Stream;
use crate::{Error, Result};
use adamw::{AdamW, AdamWConfig};
use candle_core::{Tensor, Var};
use checkpoint::{Snapshot, TrainerState};
use log::{StepRecord, TrainLog};
use schedule::{Decay, Schedule};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// What is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    /// LoRA adapters on the chosen Linears; the base model stays frozen.
    Lora(LoraConfig),
    /// The weights of the chosen block Linears (`--modules` pattern); the rest stays frozen.
    Full { modules: String },
}

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOptions {
    pub method: Method,
    pub epochs: usize,
    /// Stop after this many optimizer steps (the schedule decays over them).
    pub max_steps: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    pub decay: Decay,
    pub warmup_steps: usize,
    pub adam: AdamWConfig,
    /// Clip the global gradient norm to this value.
    pub max_grad_norm: Option<f64>,
    /// Samples per forward/backward pass (padded to the longest).
    pub batch_size: usize,
    /// Passes whose gradients are summed into one optimizer step.
    pub grad_accum: usize,
    /// Save a checkpoint every this many steps (0: only at the end).
    pub save_every: usize,
    /// Seed of the data order, LoRA initialization and dropout.
    pub seed: u64,
    /// Worker threads; each pass is split across them (part of the run's identity: the
    /// summation order of their gradients depends on it).
    pub threads: usize,
    /// Stop after this many steps as if killed (no final checkpoint): for tests of resumption.
    #[serde(skip)]
    pub stop_after: Option<usize>,
}

impl TrainOptions {
    /// LoRA with the defaults of the CLI.
    pub fn lora(rank: usize, alpha: f64, modules: &str) -> Self {
        Self {
            method: Method::Lora(LoraConfig {
                rank,
                alpha,
                dropout: 0.0,
                modules: modules.into(),
            }),
            epochs: 1,
            max_steps: None,
            lr: 2e-4,
            decay: Decay::Linear,
            warmup_steps: 0,
            adam: AdamWConfig::default(),
            max_grad_norm: Some(1.0),
            batch_size: 8,
            grad_accum: 1,
            save_every: 0,
            seed: 0,
            threads: 1,
            stop_after: None,
        }
    }
}

/// Token sequences to train on and what identifies them (data file hash, format, template…),
/// recorded in checkpoints so a resumed run uses the same data.
pub struct TrainData {
    pub seqs: Vec<TokenSeq>,
    pub identity: serde_json::Value,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub method: String,
    pub trainable_params: usize,
    pub n_samples: usize,
    pub total_steps: usize,
    /// Step the run started from (0, or the resumed checkpoint's).
    pub resumed_from: usize,
    pub steps_run: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    pub tokens: usize,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub checkpoints: Vec<PathBuf>,
}

/// Optimizer steps per epoch: ⌈n / (batch · accum)⌉ (the last step of an epoch may be short).
pub fn steps_per_epoch(n: usize, batch_size: usize, grad_accum: usize) -> usize {
    n.div_ceil((batch_size * grad_accum).max(1))
}

/// Seeded permutation of 0..n for an epoch (Fisher–Yates).
fn epoch_order(seed: u64, epoch: usize, n: usize) -> Vec<usize> {
    let mut s = Stream::new(seed, &format!("data-order/epoch-{epoch}"));
    let mut idx: Vec<usize> = (0..n).collect();
    s.shuffle(&mut idx);
    idx
}

/// Trained parameters by name, and the adapters they belong to (LoRA runs).
type Trained = (Vec<(String, Var)>, Option<Arc<Adapters>>);

/// The trained parameters of `model` for `method` (attaching fresh LoRA adapters, or turning
/// the chosen weights into `Var`s).
fn prepare(model: &mut LoadedModel, method: &Method, seed: u64) -> Result<Trained> {
    match method {
        Method::Lora(cfg) => {
            let a = Arc::new(Adapters::init(&model.llama, cfg.clone(), seed)?);
            model.llama.set_adapters(Some(a.clone()));
            Ok((a.params(), Some(a)))
        }
        Method::Full { modules } => {
            let sel = select_modules(&model.llama.linears(), modules)?;
            let vars = model.llama.make_trainable()?;
            Ok((sel.into_iter().map(|i| vars[i].clone()).collect(), None))
        }
    }
}

/// Per-sample losses of a pass and the gradient of each parameter (None: no loss token).
type PassOutput = (Vec<f32>, Vec<Option<Tensor>>);

/// Gradients of Σ_b ℓ_b over `batch` for `params`, the pass split into contiguous parts run on
/// `threads` threads and summed in part order.
fn pass_gradients(
    model: &LoadedModel,
    params: &[(String, Var)],
    batch: &[TokenSeq],
    threads: usize,
    dropout_seed: u64,
) -> Result<PassOutput> {
    let parts: Vec<&[TokenSeq]> = batch
        .chunks(batch.len().div_ceil(threads.max(1)).max(1))
        .collect();
    let run = |i: usize, part: &[TokenSeq]| -> Result<PassOutput> {
        let seed = Stream::new(dropout_seed, &format!("part-{i}")).next_u64();
        let (losses, grads) = lora::with_dropout(seed, || model.llama.loss_and_grads(part))?;
        let gs = match grads {
            None => vec![None; params.len()],
            Some(g) => params
                .iter()
                .map(|(n, v)| {
                    g.get(v.as_tensor()).cloned().map(Some).ok_or_else(|| {
                        Error::Msg(format!(
                            "parameter {n} got no gradient (not on the loss path)"
                        ))
                    })
                })
                .collect::<Result<_>>()?,
        };
        Ok((losses, gs))
    };
    let results: Vec<Result<PassOutput>> = if parts.len() == 1 {
        vec![run(0, parts[0])]
    } else {
        crate::index::on_threads(&parts, "training worker", |i, p| run(i, p))
    };
    let mut losses = Vec::with_capacity(batch.len());
    let mut sum: Vec<Option<Tensor>> = vec![None; params.len()];
    for r in results {
        let (l, gs) = r?;
        losses.extend(l);
        accumulate(&mut sum, gs)?;
    }
    Ok((losses, sum))
}

fn accumulate(acc: &mut [Option<Tensor>], gs: Vec<Option<Tensor>>) -> Result<()> {
    for (a, g) in acc.iter_mut().zip(gs) {
        if let Some(g) = g {
            *a = Some(match a.take() {
                Some(x) => (x + g)?,
                None => g,
            });
        }
    }
    Ok(())
}

/// The settings that must match for a run to resume from a checkpoint.
fn run_identity(model: &LoadedModel, opts: &TrainOptions, data: &TrainData) -> serde_json::Value {
    // How often checkpoints are written does not change the run.
    let opts = TrainOptions {
        save_every: 0,
        ..opts.clone()
    };
    serde_json::json!({
        "model_sha256": model.source.sha256,
        "data": data.identity,
        "n_samples": data.seqs.len(),
        "options": opts,
    })
}

/// The trainer state of the checkpoint `dir`, checked to belong to the run `identity` names
/// (model, data, options): a run started with other settings is not continued.
fn same_run(dir: &Path, identity: &serde_json::Value) -> Result<TrainerState> {
    let state = checkpoint::read_state(dir)?;
    let diffs = crate::store::differences(&state.config, identity);
    if !diffs.is_empty() {
        return Err(Error::Msg(format!(
            "{}: cannot resume, the run was started with other settings:\n  {}",
            dir.display(),
            diffs.join("\n  ")
        )));
    }
    Ok(state)
}

/// Checks that the latest checkpoint in `out` (if any) was written by the run `train` would
/// make of `model`, `data` and `opts`, for a caller that uses the checkpoints without
/// training on (a run already past the step it needs).
pub fn check_same_run(
    model: &LoadedModel,
    data: &TrainData,
    opts: &TrainOptions,
    out: &Path,
) -> Result<()> {
    match checkpoint::latest(out) {
        Some((_, dir)) => same_run(&dir, &run_identity(model, opts, data)).map(|_| ()),
        None => Ok(()),
    }
}

/// Trains `model` on `data` into the run folder `out`, or continues the run there from its
/// latest checkpoint when `resume` is set. `on_step` sees every step as it completes, with the
/// total. The model keeps the trained adapters (or weights) attached afterwards.
pub fn train(
    model: &mut LoadedModel,
    data: &TrainData,
    opts: &TrainOptions,
    out: &Path,
    resume: bool,
    on_step: &mut dyn FnMut(&StepRecord, usize),
) -> Result<TrainSummary> {
    let n = data.seqs.len();
    if n == 0 {
        return Err(Error::Msg("no training samples".into()));
    }
    if opts.batch_size == 0 || opts.grad_accum == 0 || opts.epochs == 0 {
        return Err(Error::Msg(
            "--batch-size, --grad-accum and --epochs must be positive".into(),
        ));
    }
    if !(opts.lr.is_finite() && opts.lr >= 0.0) {
        return Err(Error::Msg(format!(
            "--lr {} is not a learning rate",
            opts.lr
        )));
    }
    let spe = steps_per_epoch(n, opts.batch_size, opts.grad_accum);
    let total = opts
        .max_steps
        .map_or(spe * opts.epochs, |m| m.min(spe * opts.epochs).max(1));
    let schedule = Schedule {
        peak_lr: opts.lr,
        warmup_steps: opts.warmup_steps,
        total_steps: total,
        decay: opts.decay,
    };
    let identity = run_identity(model, opts, data);
    let (params, adapters) = prepare(model, &opts.method, opts.seed)?;
    let mut opt = AdamW::new(opts.adam.clone(), &params)?;
    let mut rng = Stream::new(opts.seed, "trainer");
    let mut history: Vec<StepRecord> = Vec::new();
    let mut start = 0;
    match (checkpoint::latest(out), resume) {
        (Some((step, dir)), true) => {
            let state = same_run(&dir, &identity)?;
            checkpoint::restore_params(&dir, &params)?;
            opt.moments = checkpoint::read_moments(&dir, &params)?;
            opt.step = state.step;
            rng = Stream::from_state(state.rng_state);
            history = state.log_history;
            start = step;
        }
        (Some((_, dir)), false) => {
            return Err(Error::Msg(format!(
                "{} already holds {}: pass --resume to continue that run, or choose another --out",
                out.display(),
                dir.display()
            )))
        }
        (None, _) => {}
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut log = TrainLog::open(out, start)?;
    let base_model = lora::AdapterBase::of(model);
    let method = match opts.method {
        Method::Lora(_) => "lora",
        Method::Full { .. } => "full",
    };
    let per_step = opts.batch_size * opts.grad_accum;
    let t0 = Instant::now();
    let (mut tokens_run, mut checkpoints) = (0usize, Vec::new());
    let mut order: Option<(usize, Vec<usize>)> = None;
    let state_at = |step: usize, lr: f64, rng: &Stream, history: &[StepRecord]| TrainerState {
        step,
        total_steps: total,
        epoch: step as f64 / spe as f64,
        lr,
        rng_state: rng.state(),
        data_seed: opts.seed,
        method: method.into(),
        params: params.iter().map(|(n, _)| n.clone()).collect(),
        config: identity.clone(),
        log_history: history.to_vec(),
    };
    let mut first_loss = None;
    for k in start..total {
        let ts = Instant::now();
        let (epoch, within) = (k / spe, k % spe);
        if order.as_ref().map(|(e, _)| *e) != Some(epoch) {
            order = Some((epoch, epoch_order(opts.seed, epoch, n)));
        }
        let ord = &order
            .as_ref()
            .map(|(_, o)| o)
            .ok_or_else(|| Error::Msg("order".into()))?;
        let idx = &ord[within * per_step..((within + 1) * per_step).min(n)];
        let lr = schedule.lr(k);
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let (mut loss_sum, mut tokens) = (0f64, 0usize);
        for mb in idx.chunks(opts.batch_size) {
            let batch: Vec<TokenSeq> = mb.iter().map(|&i| data.seqs[i].clone()).collect();
            tokens += batch.iter().map(|s| s.ids.len()).sum::<usize>();
            let (losses, gs) =
                pass_gradients(model, &params, &batch, opts.threads, rng.next_u64())?;
            // A non-finite loss would turn every parameter into NaN at this step: stop before
            // the optimizer touches them, naming the step and the sample.
            if let Some(j) = losses.iter().position(|l| !l.is_finite()) {
                return Err(Error::Msg(format!(
                    "step {}: training sample {} (0-based, in the data as read) has a non-finite \
                     loss {}; the model's weights or this sample are broken (nothing was written \
                     for this step)",
                    k + 1,
                    mb[j],
                    losses[j]
                )));
            }
            loss_sum += losses.iter().map(|&l| l as f64).sum::<f64>();
            accumulate(&mut grads, gs)?;
        }
        // Mean over the step's samples (Σ_b ℓ_b was backpropagated).
        let inv = 1.0 / idx.len() as f64;
        let mut grads: Vec<Tensor> = grads
            .into_iter()
            .zip(&params)
            .map(|(g, (_, v))| match g {
                Some(g) => Ok((g * inv)?),
                None => Ok(v.zeros_like()?),
            })
            .collect::<Result<_>>()?;
        let grad_norm = match opts.max_grad_norm {
            Some(max) => adamw::clip_grad_norm(&mut grads, max)?,
            None => adamw::global_norm(&grads)?,
        };
        if !grad_norm.is_finite() {
            return Err(Error::Msg(format!(
                "step {}: the gradient norm is {grad_norm} (the losses were finite); stopping \
                 before the update (nothing was written for this step)",
                k + 1
            )));
        }
        opt.step(&params, &grads, lr)?;
        let rec = StepRecord {
            step: k + 1,
            epoch: (k + 1) as f64 / spe as f64,
            loss: loss_sum * inv,
            lr,
            grad_norm,
            samples: idx.len(),
            tokens,
            seconds: ts.elapsed().as_secs_f64(),
        };
        first_loss.get_or_insert(rec.loss);
        tokens_run += tokens;
        log.append(&rec)?;
        history.push(rec.clone());
        on_step(&rec, total);
        let step = k + 1;
        if step == total || (opts.save_every > 0 && step % opts.save_every == 0) {
            let state = state_at(step, lr, &rng, &history);
            let snap = Snapshot {
                adapters: adapters.as_deref(),
                base_model: &base_model,
                params: &params,
                moments: &opt.moments,
            };
            checkpoints.push(checkpoint::save(out, &state, &snap)?);
        }
        if opts.stop_after.is_some_and(|s| step >= s) {
            break;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let n_params = params.iter().map(|(_, v)| v.elem_count()).sum();
    Ok(TrainSummary {
        out: out.to_path_buf(),
        method: method.into(),
        trainable_params: n_params,
        n_samples: n,
        total_steps: total,
        resumed_from: start,
        steps_run: history.len().saturating_sub(start),
        first_loss,
        last_loss: history.last().map(|r| r.loss),
        tokens: tokens_run,
        seconds,
        tokens_per_s: tokens_run as f64 / seconds.max(1e-9),
        checkpoints,
    })
}

/// Held-out loss of a model.
#[derive(Debug, Clone, Serialize)]
pub struct EvalLoss {
    pub n_samples: usize,
    /// Mean over samples of each sample's mean response-token cross-entropy (the training loss).
    pub mean_loss: f64,
    /// Cross-entropy averaged over all response tokens of all samples.
    pub token_mean_loss: f64,
    pub n_loss_tokens: usize,
    /// Per-sample losses, in input order.
    pub losses: Vec<f32>,
}

/// Per-sample losses of `seqs` (no dropout, no gradients), `threads` workers on contiguous parts.
pub fn eval_loss(
    model: &LoadedModel,
    seqs: &[TokenSeq],
    batch_size: usize,
    threads: usize,
) -> Result<EvalLoss> {
    if seqs.is_empty() {
        return Err(Error::Msg("no samples to evaluate".into()));
    }
    let part = seqs.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<&[TokenSeq]> = seqs.chunks(part).collect();
    let results = crate::index::on_threads(&parts, "evaluation worker", |_, chunk| {
        let mut out = Vec::with_capacity(chunk.len());
        for b in chunk.chunks(batch_size.max(1)) {
            out.extend(model.llama.losses(b)?);
        }
        Ok(out)
    });
    let mut losses = Vec::with_capacity(seqs.len());
    for r in results {
        losses.extend(r?);
    }
    let (mut tok_sum, mut n_tok) = (0f64, 0usize);
    for (l, s) in losses.iter().zip(seqs) {
        let k = s.n_loss_tokens();
        tok_sum += *l as f64 * k as f64;
        n_tok += k;
    }
    Ok(EvalLoss {
        n_samples: seqs.len(),
        mean_loss: losses.iter().map(|&l| l as f64).sum::<f64>() / seqs.len() as f64,
        token_mean_loss: tok_sum / n_tok.max(1) as f64,
        n_loss_tokens: n_tok,
        losses,
    })
}
