//! `inflow train`, `inflow eval-loss`, `inflow export` and the checkpoint modes of
//! `inflow index` (`--adapter`, `--lora-grads`, `--adam`, `--checkpoints`).

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inflow::data::tokens::{Cuts, Renderer, Template, Truncate};
use inflow::data::{read_samples, Format, ReadOptions};
use inflow::index::{IndexOptions, Progress};
use inflow::model::lora::LoraConfig;
use inflow::model::LoadedModel;
use inflow::train::adamw::AdamWConfig;
use inflow::train::features::{self, FeatureSource, LoraGradient};
use inflow::train::{Method, TrainData, TrainOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Fine-tune a model with LoRA (default) or fully, with checkpoints that resume bit for bit.
#[derive(Args)]
pub(crate) struct TrainArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    input: crate::args::DataArgs,
    #[command(flatten)]
    tokens: crate::args::TokenArgs,
    /// LoRA rank r (LoRA is the default method).
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA α; the branch is scaled by α/r (default 2r).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the LoRA input during training.
    #[arg(long, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Full fine-tuning of the --modules weights instead of LoRA.
    #[arg(long)]
    full: bool,
    /// Trained Linears: short names (q,k,v,o,gate,up,down), parts of names (`layers.3.`), or all.
    #[arg(long, default_value = "q,v")]
    modules: String,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many optimizer steps (the schedule spans them).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Decay after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Decoupled weight decay λ of AdamW.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Samples per forward/backward pass (padded to the longest; split across --threads).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Passes accumulated into one optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Checkpoint every N steps (the last step is always saved).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// Seed of data order, LoRA initialization and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder: checkpoint-{step}/, train_log.jsonl.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out (or in the given folder) from its latest checkpoint.
    #[arg(long, num_args = 0..=1)]
    resume: Option<Option<PathBuf>>,
    /// Stop after this many steps as if killed (no final checkpoint); for testing resumption.
    #[arg(long, hide = true)]
    stop_after: Option<usize>,
}

/// Held-out loss of a model, optionally with an adapter or checkpoint.
#[derive(Args)]
pub(crate) struct EvalLossArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    #[command(flatten)]
    input: crate::args::DataArgs,
    #[command(flatten)]
    tokens: crate::args::TokenArgs,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
}

/// Merge a LoRA adapter (or full fine-tuning checkpoint) into the model and write a Hugging
/// Face folder; or, with --unmerged, write the pair PEFT loads: OUT/base (the model as a
/// Hugging Face folder) and OUT/adapter (the adapter, naming OUT/base as its base model).
#[derive(Args)]
pub(crate) struct ExportArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Write OUT/base + OUT/adapter for `AutoPeftModelForCausalLM.from_pretrained("OUT/adapter")`
    /// instead of merging (LoRA adapters only).
    #[arg(long)]
    unmerged: bool,
}

fn read_opts(format: &str, skip_bad: bool, limit: Option<usize>) -> Result<ReadOptions> {
    Ok(ReadOptions {
        format: format.parse::<Format>()?,
        skip_bad,
        limit,
    })
}

/// [`tokenize`] of a verb's data with its token options: the sequences, what the limit cut
/// (as a report line too) and the truncation policy.
fn tokenize_input(
    m: &LoadedModel,
    input: &crate::args::DataArgs,
    t: &crate::args::TokenArgs,
) -> Result<(TrainData, Cuts, String, Truncate)> {
    let truncate = t.truncate.policy()?;
    let read = input.read_options()?;
    let (data, cuts) = tokenize(m, &input.data, &read, &t.template, t.max_tokens, truncate)?;
    let cut_line = cuts.describe(data.seqs.len(), t.max_tokens, truncate);
    Ok((data, cuts, cut_line, truncate))
}

/// Token sequences of a data file, with what the limit cut. The data identity (checked when a
/// run resumes) records the truncation policy unless it is `left` (see `Truncate::record`), so
/// runs started before the option resume with `--truncate left`.
pub(crate) fn tokenize(
    m: &LoadedModel,
    data: &Path,
    read: &ReadOptions,
    template: &str,
    max_tokens: usize,
    truncate: Truncate,
) -> Result<(TrainData, Cuts)> {
    let report = read_samples(data, read)?;
    if report.samples.is_empty() {
        bail!("{}: no samples", data.display());
    }
    let r = Renderer::new(m, template.parse::<Template>()?, max_tokens)?.with_truncate(truncate);
    let (seqs, cuts) = r.tokenize_all(&report.samples)?;
    let mut identity = serde_json::json!({
        "sha256": report.sha256, "format": report.format.to_string(), "limit": read.limit,
        "skip_bad": read.skip_bad, "template": r.template(), "max_tokens": max_tokens,
    });
    truncate.record(&mut identity);
    Ok((TrainData { seqs, identity }, cuts))
}

pub(crate) fn train(a: TrainArgs, threads: usize, json: bool) -> Result<()> {
    let mut m = crate::load_model(&a.model)?;
    let (data, cuts, cut_line, truncate) = tokenize_input(&m, &a.input, &a.tokens)?;
    let method = if a.full {
        Method::Full {
            modules: a.modules.clone(),
        }
    } else {
        Method::Lora(LoraConfig {
            rank: a.lora_rank,
            alpha: a.lora_alpha.unwrap_or(2.0 * a.lora_rank as f64),
            dropout: a.lora_dropout,
            modules: a.modules.clone(),
        })
    };
    let opts = TrainOptions {
        method,
        epochs: a.epochs,
        max_steps: a.max_steps,
        lr: a.lr,
        decay: a.schedule.parse()?,
        warmup_steps: a.warmup_steps,
        adam: AdamWConfig {
            beta1: a.beta1,
            beta2: a.beta2,
            eps: a.adam_eps,
            weight_decay: a.weight_decay,
        },
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        batch_size: a.batch_size,
        grad_accum: a.grad_accum,
        save_every: a.save_every,
        seed: a.seed,
        threads,
        stop_after: a.stop_after,
    };
    let (out, resume) = match &a.resume {
        Some(Some(dir)) => (dir.clone(), true),
        Some(None) => (a.out.clone(), true),
        None => (a.out.clone(), false),
    };
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template("train {bar:30} {pos}/{len} steps  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t = Instant::now();
    let (mut tokens, mut first) = (0usize, true);
    let summary = inflow::train::train(&mut m, &data, &opts, &out, resume, &mut |r, total| {
        if first {
            pb.set_length(total as u64);
            pb.set_position(r.step as u64 - 1);
            pb.reset_eta();
            first = false;
        }
        tokens += r.tokens;
        pb.set_position(r.step as u64);
        pb.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.0} tok/s",
            r.loss,
            r.lr,
            tokens as f64 / t.elapsed().as_secs_f64().max(1e-9)
        ));
    });
    pb.finish_and_clear();
    let summary = summary?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "summary": summary, "n_truncated": cuts.samples, "truncate": truncate,
                "cuts": cuts,
            }))?
        );
    } else {
        println!(
            "trained {} ({} parameters) for steps {}..{} of {} on {} samples in {:.1} s ({:.0} tokens/s): loss {} → {}; {cut_line}",
            summary.method,
            summary.trainable_params,
            summary.resumed_from + 1,
            summary.resumed_from + summary.steps_run,
            summary.total_steps,
            summary.n_samples,
            summary.seconds,
            summary.tokens_per_s,
            summary.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            summary.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
        );
        for c in &summary.checkpoints {
            println!("  wrote {}", c.display());
        }
    }
    Ok(())
}

pub(crate) fn eval_loss(a: EvalLossArgs, threads: usize, json: bool) -> Result<()> {
    let mut m = crate::load_model(&a.model.path)?;
    let ck = match &a.model.adapter {
        Some(dir) => Some(
            features::attach(&mut m, dir)
                .with_context(|| format!("loading the adapter {}", dir.display()))?,
        ),
        None => None,
    };
    let (data, cuts, cut_line, truncate) = tokenize_input(&m, &a.input, &a.tokens)?;
    let t = Instant::now();
    let e = inflow::train::eval_loss(&m, &data.seqs, a.batch_size, threads)?;
    let secs = t.elapsed().as_secs_f64();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "model": a.model.path, "adapter": a.model.adapter, "checkpoint": ck,
                "data": a.input.data,
                "n_samples": e.n_samples, "mean_loss": e.mean_loss,
                "token_mean_loss": e.token_mean_loss, "n_loss_tokens": e.n_loss_tokens,
                "n_truncated": cuts.samples, "truncate": truncate, "cuts": cuts,
                "seconds": secs,
            }))?
        );
    } else {
        println!(
            "{} samples: mean loss {:.4} (per-token {:.4} over {} response tokens, perplexity {:.2}); {cut_line}; {secs:.1} s",
            e.n_samples,
            e.mean_loss,
            e.token_mean_loss,
            e.n_loss_tokens,
            e.token_mean_loss.exp()
        );
    }
    Ok(())
}

pub(crate) fn export(a: ExportArgs, json: bool) -> Result<()> {
    if a.unmerged {
        return export_unmerged(a, json);
    }
    let mut m = crate::load_model(&a.model)?;
    let ck = features::attach(&mut m, &a.adapter)?;
    let merged = match m.llama.adapters().cloned() {
        Some(ad) => ad.merge(&m)?,
        None => m,
    };
    inflow::model::hf::save_dir(&merged, &a.out)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"out": a.out, "checkpoint": ck, "kind": ck.kind})
        );
    } else {
        println!(
            "wrote {} ({} checkpoint {} merged into {})",
            a.out.display(),
            ck.kind,
            a.adapter.display(),
            a.model.display()
        );
    }
    Ok(())
}

/// `export --unmerged`: OUT/base, the base model as a Hugging Face folder (a GGUF file is
/// dequantized: the weights the adapter was trained against), and OUT/adapter, the adapter
/// with PEFT's `base_model_name_or_path` set to OUT/base's absolute path (its sidecar still
/// names the model it was trained on).
fn export_unmerged(a: ExportArgs, json: bool) -> Result<()> {
    let mut m = crate::load_model(&a.model)?;
    let (base, adapter) = (a.out.join("base"), a.out.join("adapter"));
    inflow::model::hf::save_dir(&m, &base)?;
    let trained_on = inflow::model::lora::AdapterSidecar::read(&a.adapter)?
        .map(|s| s.base_model)
        .unwrap_or_else(|| inflow::model::lora::AdapterBase::of(&m));
    let ck = features::attach(&mut m, &a.adapter)
        .with_context(|| format!("loading the adapter {}", a.adapter.display()))?;
    let Some(ad) = m.llama.adapters().cloned() else {
        bail!(
            "--unmerged: {} is a full fine-tuning checkpoint, not a LoRA adapter; export it merged",
            a.adapter.display()
        );
    };
    let base_abs = std::fs::canonicalize(&base).unwrap_or_else(|_| base.clone());
    ad.save(
        &adapter,
        &inflow::model::lora::AdapterBase {
            name_or_path: base_abs.display().to_string(),
            ..trained_on
        },
    )?;
    if json {
        println!(
            "{}",
            serde_json::json!({"out": a.out, "base": base, "adapter": adapter, "checkpoint": ck})
        );
    } else {
        println!(
            "wrote {} (the base model) and {} (the adapter, base_model_name_or_path = {}); in Python: \
             peft.AutoPeftModelForCausalLM.from_pretrained(\"{}\")",
            base.display(),
            adapter.display(),
            base_abs.display(),
            adapter.display()
        );
    }
    Ok(())
}

/// `index` with `--adapter`, `--lora-grads`, `--adam` or `--checkpoints`: one store per
/// checkpoint (`--out` itself for one, `--out/{checkpoint name}` for several).
pub(crate) fn index_checkpoints(a: crate::IndexArgs, threads: usize, json: bool) -> Result<()> {
    let mut dirs: Vec<PathBuf> = a.checkpoints.clone();
    if let Some(ad) = &a.model.adapter {
        if !dirs.is_empty() {
            bail!("give either --adapter or --checkpoints, not both");
        }
        dirs.push(ad.clone());
    }
    if dirs.is_empty() {
        bail!("--lora-grads and --adam need --adapter DIR or --checkpoints DIR…");
    }
    if a.adam && !a.lora_grads {
        bail!("--adam (LESS's Adam-update features) needs --lora-grads");
    }
    let opts = a.store.index_options(&a.input, &a.features, threads)?;
    let source = match (a.lora_grads, a.adam) {
        (false, _) => FeatureSource::Base,
        (true, false) => FeatureSource::Lora(LoraGradient::Sgd),
        (true, true) => FeatureSource::Lora(LoraGradient::Adam(AdamWConfig::default())),
    };
    let mut results = Vec::new();
    for dir in &dirs {
        let out = if dirs.len() == 1 {
            a.out.clone()
        } else {
            let name = dir
                .file_name()
                .with_context(|| format!("{}: no folder name", dir.display()))?;
            a.out.join(name)
        };
        let t = Instant::now();
        let (ck, summary) = index_checkpoint(&a.model.path, dir, &opts, &source, &out, "index")?;
        let secs = t.elapsed().as_secs_f64();
        if !json {
            println!(
                "indexed {} samples into {} from {} (step {}, lr {}) in {secs:.1} s: dim {}",
                summary.n_samples,
                out.display(),
                dir.display(),
                ck.step.map_or("?".into(), |s| s.to_string()),
                ck.lr.map_or("?".into(), |l| format!("{l:.3e}")),
                summary.dim
            );
        }
        results.push(serde_json::json!({
            "out": out, "checkpoint": ck, "summary": summary, "seconds": secs,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    }
    Ok(())
}

/// Loads the model, attaches one checkpoint and indexes `opts.data` with its features into
/// `out`, with a progress bar (shared by `index --checkpoints` and `eval planted`'s LESS).
pub(crate) fn index_checkpoint(
    model: &Path,
    checkpoint: &Path,
    opts: &IndexOptions,
    source: &FeatureSource,
    out: &Path,
    what: &str,
) -> Result<(features::CheckpointInfo, inflow::index::IndexSummary)> {
    let mut m = crate::load_model(model)?;
    let ck = features::attach(&mut m, checkpoint)
        .with_context(|| format!("loading the checkpoint {}", checkpoint.display()))?;
    let pb = crate::bar(0, what);
    let progress = Progress::default();
    let summary = crate::with_progress(&pb, &progress, || {
        features::run_checkpoint_index::<Option<inflow::curvature::kfac_stats::KfacStats>>(
            &m,
            opts,
            Some(&ck),
            source,
            out,
            &progress,
            &mut |done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            },
        )
    });
    pb.finish_and_clear();
    Ok((ck, summary?))
}

/// `inflow bench train`.
#[derive(Args)]
pub(crate) struct BenchTrainArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Samples per step (one padded pass split across --threads).
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Timed steps per method (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Methods to time: lora, full or both.
    #[arg(long, default_value = "both")]
    methods: String,
}

/// Tokens/s of training steps: the per-step times of the trainer's log, warm-up step left out.
pub(crate) fn bench(a: BenchTrainArgs, threads: usize, json: bool) -> Result<()> {
    let model_path = crate::model_or_default(a.model)?;
    let data = crate::assets_dir()?.join("train.jsonl");
    eprintln!("measuring GEMM (1024³ f32) with 1 and {threads} threads…");
    let gemm1 = crate::bench::gemm_gflops(1, 1024, 8)?;
    let gemm_n = crate::bench::gemm_gflops(threads, 1024, 8)?;
    let mut rows = Vec::new();
    let methods: Vec<&str> = match a.methods.as_str() {
        "both" => vec!["lora", "full"],
        m @ ("lora" | "full") => vec![m],
        m => bail!("unknown --methods `{m}`; expected lora, full or both"),
    };
    for method in methods {
        let mut m = crate::load_model(&model_path)?;
        let n_params = m.llama.n_params() as f64;
        let (td, _) = tokenize(
            &m,
            &data,
            &read_opts("alpaca", false, Some(a.batch_size * (a.steps + 2)))?,
            "auto",
            a.max_tokens,
            Truncate::default(),
        )?;
        let opts = TrainOptions {
            method: match method {
                "lora" => Method::Lora(LoraConfig {
                    rank: 8,
                    alpha: 16.0,
                    dropout: 0.05,
                    modules: "q,v".into(),
                }),
                _ => Method::Full {
                    modules: "all".into(),
                },
            },
            batch_size: a.batch_size,
            threads,
            // Stopping before the last step skips the final checkpoint (a GB for full).
            max_steps: Some(a.steps + 2),
            stop_after: Some(a.steps + 1),
            ..TrainOptions::lora(8, 16.0, "q,v")
        };
        let out = std::env::temp_dir().join(format!(
            "inflow-bench-train-{method}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&out);
        eprintln!(
            "{method}: {} steps of {} samples…",
            a.steps + 1,
            a.batch_size
        );
        let mut recs = Vec::new();
        inflow::train::train(&mut m, &td, &opts, &out, false, &mut |r, _| {
            recs.push(r.clone())
        })?;
        let _ = std::fs::remove_dir_all(&out);
        let timed = &recs[1.min(recs.len() - 1)..];
        let secs: f64 = timed.iter().map(|r| r.seconds).sum();
        let tokens: usize = timed.iter().map(|r| r.tokens).sum();
        let tps = tokens as f64 / secs;
        // Forward 2·P·T plus backward: 2·P·T for dX, and 2·P·T more for dW when the weights
        // train (full); LoRA's own FLOPs are negligible.
        let flops_per_token = if method == "full" { 6.0 } else { 4.0 } * n_params;
        rows.push(serde_json::json!({
            "method": method, "steps_timed": timed.len(), "tokens": tokens, "seconds": secs,
            "tokens_per_s": tps, "gflops": flops_per_token * tps / 1e9,
            "flops_per_token": flops_per_token,
            "fraction_of_gemm": flops_per_token * tps / 1e9 / gemm_n,
        }));
    }
    let out = serde_json::json!({
        "model": model_path, "threads": threads, "batch_size": a.batch_size,
        "max_tokens": a.max_tokens, "gemm_gflops_1_thread": gemm1,
        "gemm_gflops_all_threads": gemm_n, "methods": rows,
        "peak_rss_bytes": crate::bench::peak_rss(),
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "inflow bench train — {}, {threads} threads, batch {}, ≤ {} tokens/sample",
            model_path.display(),
            a.batch_size,
            a.max_tokens
        );
        println!("  GEMM, same run   {gemm1:.1} GFLOP/s on 1 thread, {gemm_n:.1} on {threads}");
        for r in &rows {
            println!(
                "  {:<5} {:>8.0} tokens/s  {:>6.1} GFLOP/s ({} FLOPs/token·params)  {:.0}% of GEMM",
                r["method"].as_str().unwrap_or(""),
                r["tokens_per_s"].as_f64().unwrap_or(0.0),
                r["gflops"].as_f64().unwrap_or(0.0),
                if r["method"] == "full" { 6 } else { 4 },
                100.0 * r["fraction_of_gemm"].as_f64().unwrap_or(0.0)
            );
        }
    }
    Ok(())
}
