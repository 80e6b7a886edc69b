//! `train`, `eval-loss` and `export`: fine-tuning runs (resumable), held-out loss with or
//! without an adapter, and an adapter merged into the weights or written as the PEFT pair.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::report::Reporter;
use super::score::load_model;
use crate::data::tokens::{Cuts, Renderer, Template, Truncate};
use crate::data::{read_samples, ReadOptions};
use crate::model::lora::{AdapterBase, AdapterSidecar};
use crate::model::LoadedModel;
use crate::train::features::{self, CheckpointInfo};
use crate::train::{TrainData, TrainOptions, TrainSummary};
use crate::{Error, Result};

/// A data file and how it becomes token sequences.
#[derive(Debug, Clone)]
pub struct TokenizeOptions {
    pub data: PathBuf,
    pub read: ReadOptions,
    pub template: Template,
    /// Longest sample in tokens; longer ones are cut (counted in [`Cuts`]).
    pub max_tokens: usize,
    pub truncate: Truncate,
}

impl TokenizeOptions {
    /// The one-line account of what the limit cut from `n` samples.
    pub fn describe(&self, cuts: &Cuts, n: usize) -> String {
        cuts.describe(n, self.max_tokens, self.truncate)
    }
}

/// Token sequences of a data file, with what the limit cut. The data identity (checked when a
/// run resumes) records the truncation policy unless it is `left` (see `Truncate::record`), so
/// runs started before the option resume with `--truncate left`.
pub fn tokenize(m: &LoadedModel, o: &TokenizeOptions) -> Result<(TrainData, Cuts)> {
    let report = read_samples(&o.data, &o.read)?;
    if report.samples.is_empty() {
        return Err(Error::Msg(format!("{}: no samples", o.data.display())));
    }
    let r = Renderer::new(m, o.template, o.max_tokens)?.with_truncate(o.truncate);
    let (seqs, cuts) = r.tokenize_all(&report.samples)?;
    let mut identity = serde_json::json!({
        "sha256": report.sha256, "format": report.format.to_string(), "limit": o.read.limit,
        "skip_bad": o.read.skip_bad, "template": r.template(), "max_tokens": o.max_tokens,
    });
    o.truncate.record(&mut identity);
    Ok((TrainData { seqs, identity }, cuts))
}

/// Whether a training run starts afresh or continues from its latest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A new run in [`TrainRunOptions::out`].
    No,
    /// Continue the run in [`TrainRunOptions::out`].
    Latest,
    /// Continue the run in this folder (instead of `out`).
    In(PathBuf),
}

/// Settings of `train`.
#[derive(Debug, Clone)]
pub struct TrainRunOptions {
    pub model: PathBuf,
    pub input: TokenizeOptions,
    pub train: TrainOptions,
    /// Run folder: checkpoint-{step}/, train_log.jsonl.
    pub out: PathBuf,
    pub resume: Resume,
}

/// What a training run did. Fields in alphabetical order: the JSON the CLI prints.
#[derive(Debug, Clone, Serialize)]
pub struct Trained {
    pub cuts: Cuts,
    /// Samples over the token limit.
    pub n_truncated: usize,
    pub summary: TrainSummary,
    pub truncate: Truncate,
    /// What the limit cut, in one line.
    #[serde(skip)]
    pub cut_line: String,
}

/// Tokenizes the data, then trains (or resumes) into the run folder, reporting stage "train"
/// per optimizer step.
pub fn train(o: &TrainRunOptions, reporter: &dyn Reporter) -> Result<Trained> {
    let mut m = load_model(&o.model, reporter)?;
    let (data, cuts) = tokenize(&m, &o.input)?;
    let cut_line = o.input.describe(&cuts, data.seqs.len());
    let (out, resume) = match &o.resume {
        Resume::No => (&o.out, false),
        Resume::Latest => (&o.out, true),
        Resume::In(dir) => (dir, true),
    };
    // One trainer per run folder: a second would interleave checkpoints (held to the end).
    let _lock = crate::store::WriterLock::acquire(out)?;
    let t = Instant::now();
    let (mut tokens, mut first) = (0usize, true);
    let summary = crate::train::train(&mut m, &data, &o.train, out, resume, &mut |r, total| {
        if first {
            reporter.start("train", total);
            first = false;
        }
        tokens += r.tokens;
        reporter.update(
            "train",
            r.step,
            total,
            &format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s",
                r.loss,
                r.lr,
                tokens as f64 / t.elapsed().as_secs_f64().max(1e-9)
            ),
        );
    });
    if !first {
        reporter.finish("train");
    }
    Ok(Trained {
        n_truncated: cuts.samples,
        truncate: o.input.truncate,
        cuts,
        summary: summary?,
        cut_line,
    })
}

/// Settings of `eval-loss`.
#[derive(Debug, Clone)]
pub struct EvalLossOptions {
    pub model: PathBuf,
    /// LoRA adapter folder (PEFT layout) or checkpoint of [`crate::train::train`].
    pub adapter: Option<PathBuf>,
    pub input: TokenizeOptions,
    /// Samples per forward pass.
    pub batch_size: usize,
    pub threads: usize,
}

/// Held-out loss and what produced it. Fields in alphabetical order: the JSON the CLI prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalLossOutput {
    pub adapter: Option<PathBuf>,
    pub checkpoint: Option<CheckpointInfo>,
    pub cuts: Cuts,
    pub data: PathBuf,
    /// Mean over samples of each sample's mean response-token loss.
    pub mean_loss: f64,
    pub model: PathBuf,
    pub n_loss_tokens: usize,
    pub n_samples: usize,
    pub n_truncated: usize,
    /// Seconds of the loss passes (tokenization and loading left out).
    pub seconds: f64,
    /// Mean over all response tokens.
    pub token_mean_loss: f64,
    pub truncate: Truncate,
    /// What the limit cut, in one line.
    #[serde(skip)]
    pub cut_line: String,
}

/// Attaches `checkpoint` to `m`, its error naming the adapter.
fn attach(m: &mut LoadedModel, checkpoint: &Path) -> Result<CheckpointInfo> {
    features::attach(m, checkpoint)
        .map_err(|e| Error::Msg(format!("loading the adapter {}: {e}", checkpoint.display())))
}

/// Mean response-token loss of the data, with or without an adapter.
pub fn eval_loss(o: &EvalLossOptions, reporter: &dyn Reporter) -> Result<EvalLossOutput> {
    let mut m = load_model(&o.model, reporter)?;
    let checkpoint = match &o.adapter {
        Some(dir) => Some(attach(&mut m, dir)?),
        None => None,
    };
    let (data, cuts) = tokenize(&m, &o.input)?;
    let cut_line = o.input.describe(&cuts, data.seqs.len());
    let t = Instant::now();
    let e = crate::train::eval_loss(&m, &data.seqs, o.batch_size, o.threads)?;
    Ok(EvalLossOutput {
        adapter: o.adapter.clone(),
        checkpoint,
        n_truncated: cuts.samples,
        cuts,
        data: o.input.data.clone(),
        mean_loss: e.mean_loss,
        model: o.model.clone(),
        n_loss_tokens: e.n_loss_tokens,
        n_samples: e.n_samples,
        seconds: t.elapsed().as_secs_f64(),
        token_mean_loss: e.token_mean_loss,
        truncate: o.input.truncate,
        cut_line,
    })
}

/// Settings of `export`.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub model: PathBuf,
    /// LoRA adapter or checkpoint of [`crate::train::train`] (LoRA or full).
    pub adapter: PathBuf,
    pub out: PathBuf,
    /// Write `out/base` + `out/adapter` (PEFT's pair) instead of merging (LoRA only).
    pub unmerged: bool,
    /// Write over the files of an existing, non-empty `out`.
    pub force: bool,
}

/// What `export` wrote.
#[derive(Debug, Clone)]
pub enum Exported {
    /// The adapter merged into the weights, as a Hugging Face folder `out`.
    Merged {
        out: PathBuf,
        checkpoint: CheckpointInfo,
    },
    /// The base model as a Hugging Face folder and the adapter naming it as its base.
    Unmerged {
        out: PathBuf,
        base: PathBuf,
        adapter: PathBuf,
        /// `base` as the absolute path written into the adapter's config.
        base_abs: PathBuf,
        checkpoint: CheckpointInfo,
    },
}

/// Merges the adapter into the model and writes a Hugging Face folder; or, unmerged:
/// `out/base`, the base model as a Hugging Face folder (a GGUF file is dequantized: the
/// weights the adapter was trained against), and `out/adapter`, the adapter with PEFT's
/// `base_model_name_or_path` set to `out/base`'s absolute path (its sidecar still names the
/// model it was trained on).
pub fn export(o: &ExportOptions, reporter: &dyn Reporter) -> Result<Exported> {
    crate::output_guard::check_output_dir("--out", &o.out, o.force)?;
    let mut m = load_model(&o.model, reporter)?;
    if !o.unmerged {
        let checkpoint = features::attach(&mut m, &o.adapter)?;
        let merged = match m.llama.adapters() {
            Some(ad) => ad.merge(&m)?,
            None => m,
        };
        crate::model::hf::save_dir(&merged, &o.out)?;
        return Ok(Exported::Merged {
            out: o.out.clone(),
            checkpoint,
        });
    }
    let (base, adapter) = (o.out.join("base"), o.out.join("adapter"));
    crate::model::hf::save_dir(&m, &base)?;
    let trained_on = AdapterSidecar::read(&o.adapter)?
        .map(|s| s.base_model)
        .unwrap_or_else(|| AdapterBase::of(&m));
    let checkpoint = attach(&mut m, &o.adapter)?;
    let Some(ad) = m.llama.adapters() else {
        return Err(Error::Msg(format!(
            "--unmerged: {} is a full fine-tuning checkpoint, not a LoRA adapter; export it merged",
            o.adapter.display()
        )));
    };
    let base_abs = std::fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
    ad.save(
        &adapter,
        &AdapterBase {
            name_or_path: base_abs.display().to_string(),
            ..trained_on
        },
    )?;
    Ok(Exported::Unmerged {
        out: o.out.clone(),
        base,
        adapter,
        base_abs,
        checkpoint,
    })
}

/// Throughput of training steps of one method. Fields in alphabetical order: the JSON the
/// CLI prints (beside its GEMM rate).
#[derive(Debug, Clone, Serialize)]
pub struct StepRate {
    /// Forward 2·P·T plus backward: 2·P·T for dX, and 2·P·T more for dW when the weights
    /// train (full); LoRA's own FLOPs are negligible. Per token, as FLOPs.
    pub flops_per_token: f64,
    pub gflops: f64,
    /// `lora` or `full`.
    pub method: String,
    pub seconds: f64,
    pub steps_timed: usize,
    pub tokens: usize,
    pub tokens_per_s: f64,
}

/// Settings of [`bench_steps`].
#[derive(Debug, Clone)]
pub struct StepBenchOptions {
    pub model: PathBuf,
    /// Alpaca data; the first samples are trained on.
    pub data: PathBuf,
    /// `lora` (rank 8 on q,v) or `full` (every Linear).
    pub method: String,
    /// Samples per step.
    pub batch_size: usize,
    /// Timed steps (after one warm-up step).
    pub steps: usize,
    pub max_tokens: usize,
    pub threads: usize,
}

/// Times training steps of one method, from the trainer's log (the warm-up step left out).
pub fn bench_steps(o: &StepBenchOptions, reporter: &dyn Reporter) -> Result<StepRate> {
    let StepBenchOptions {
        model,
        data,
        method,
        batch_size,
        steps,
        max_tokens,
        threads,
    } = o;
    let (batch_size, steps, max_tokens, threads) = (*batch_size, *steps, *max_tokens, *threads);
    let mut m = load_model(model, reporter)?;
    let n_params = m.llama.n_params() as f64;
    let (td, _) = tokenize(
        &m,
        &TokenizeOptions {
            data: data.clone(),
            read: ReadOptions {
                format: crate::data::Format::Alpaca,
                skip_bad: false,
                limit: Some(batch_size * (steps + 2)),
            },
            template: Template::Auto,
            max_tokens,
            truncate: Truncate::default(),
        },
    )?;
    let full = method.as_str() == "full";
    let opts = TrainOptions {
        method: if full {
            crate::train::Method::Full {
                modules: "all".into(),
            }
        } else {
            crate::train::Method::Lora(crate::model::lora::LoraConfig {
                rank: 8,
                alpha: 16.0,
                dropout: 0.05,
                modules: "q,v".into(),
            })
        },
        batch_size,
        threads,
        // Stopping before the last step skips the final checkpoint (a GB for full).
        max_steps: Some(steps + 2),
        stop_after: Some(steps + 1),
        ..TrainOptions::lora(8, 16.0, "q,v")
    };
    let out = std::env::temp_dir().join(format!(
        "inflow-bench-train-{method}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    reporter.note(&format!(
        "{method}: {} steps of {batch_size} samples…",
        steps + 1
    ));
    let mut recs = Vec::new();
    crate::train::train(&mut m, &td, &opts, &out, false, &mut |r, _| {
        recs.push(r.clone())
    })?;
    let _ = std::fs::remove_dir_all(&out);
    if recs.is_empty() {
        return Err(Error::Msg(format!("{method}: no training step ran")));
    }
    let timed = &recs[1.min(recs.len() - 1)..];
    let seconds: f64 = timed.iter().map(|r| r.seconds).sum();
    let tokens: usize = timed.iter().map(|r| r.tokens).sum();
    let tokens_per_s = tokens as f64 / seconds;
    let flops_per_token = if full { 6.0 } else { 4.0 } * n_params;
    Ok(StepRate {
        flops_per_token,
        gflops: flops_per_token * tokens_per_s / 1e9,
        method: method.clone(),
        seconds,
        steps_timed: timed.len(),
        tokens,
        tokens_per_s,
    })
}
