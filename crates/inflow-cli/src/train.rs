//! `inflow train`, `inflow eval-loss`, `inflow export` and the checkpoint modes of
//! `inflow index` (`--adapter`, `--lora-grads`, `--adam`, `--checkpoints`): arguments into
//! the options of `inflow::pipeline::{train, index}`, and their results printed.

use crate::progress::Bars;
use anyhow::{bail, Result};
use clap::Args;
use inflow::data::tokens::Template;
use inflow::model::lora::LoraConfig;
use inflow::pipeline;
use inflow::pipeline::index::CheckpointsOptions;
use inflow::pipeline::train::{
    EvalLossOptions, ExportOptions, Exported, Resume, StepBenchOptions, TokenizeOptions,
    TrainRunOptions,
};
use inflow::train::adamw::AdamWConfig;
use inflow::train::{Method, TrainOptions};
use std::path::PathBuf;

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
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA α; the branch is scaled by α/r (default 2r).
    #[arg(long, value_parser = crate::bounds::positive)]
    lora_alpha: Option<f64>,
    /// Dropout on the LoRA input during training.
    #[arg(long, value_parser = crate::bounds::below_one, default_value_t = 0.05)]
    lora_dropout: f64,
    /// Full fine-tuning of the --modules weights instead of LoRA.
    #[arg(long)]
    full: bool,
    /// Trained Linears: short names (q,k,v,o,gate,up,down), parts of names (`layers.3.`), or all.
    #[arg(long, default_value = "q,v")]
    modules: String,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    epochs: usize,
    /// Stop after this many optimizer steps (the schedule spans them).
    #[arg(long, value_parser = crate::bounds::count)]
    max_steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 2e-4)]
    lr: f64,
    /// Decay after warm-up: linear, cosine or constant.
    #[arg(long, default_value = "linear")]
    schedule: String,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// Decoupled weight decay λ of AdamW.
    #[arg(long, value_parser = crate::bounds::non_negative, default_value_t = 0.0)]
    weight_decay: f64,
    #[arg(long, value_parser = crate::bounds::below_one, default_value_t = 0.9)]
    beta1: f64,
    #[arg(long, value_parser = crate::bounds::below_one, default_value_t = 0.999)]
    beta2: f64,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 1e-8)]
    adam_eps: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, value_parser = crate::bounds::non_negative, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Samples per forward/backward pass (padded to the longest; split across --threads).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    batch_size: usize,
    /// Passes accumulated into one optimizer step.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
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
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 4)]
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
    /// Write over the files of an existing, non-empty OUT.
    #[arg(long)]
    force: bool,
}

/// How `train` and `eval-loss` tokenize their data.
fn tokenize_options(
    input: &crate::args::DataArgs,
    template: &str,
    max_tokens: usize,
    truncate: &crate::args::TruncateArgs,
) -> Result<TokenizeOptions> {
    Ok(TokenizeOptions {
        data: input.data.clone(),
        read: input.read_options()?,
        template: template.parse::<Template>()?,
        max_tokens,
        truncate: truncate.policy()?,
    })
}

pub(crate) fn train(a: TrainArgs, threads: usize, json: bool) -> Result<()> {
    let input = tokenize_options(
        &a.input,
        &a.tokens.template,
        a.tokens.max_tokens,
        &a.tokens.truncate,
    )?;
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
    let train = TrainOptions {
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
    let resume = match a.resume {
        Some(Some(dir)) => Resume::In(dir),
        Some(None) => Resume::Latest,
        None => Resume::No,
    };
    let o = TrainRunOptions {
        model: a.model,
        input,
        train,
        out: a.out,
        resume,
    };
    let t = pipeline::train::train(&o, &Bars::default())?;
    crate::output::pretty(json, &t, || {
        let s = &t.summary;
        println!(
            "trained {} ({} parameters) for steps {}..{} of {} on {} samples in {:.1} s ({:.0} tokens/s): loss {} → {}; {}",
            s.method,
            s.trainable_params,
            s.resumed_from + 1,
            s.resumed_from + s.steps_run,
            s.total_steps,
            s.n_samples,
            s.seconds,
            s.tokens_per_s,
            s.first_loss.map_or("-".into(), |l| format!("{l:.4}")),
            s.last_loss.map_or("-".into(), |l| format!("{l:.4}")),
            t.cut_line,
        );
        for c in &s.checkpoints {
            println!("  wrote {}", c.display());
        }
        Ok(())
    })
}

pub(crate) fn eval_loss(a: EvalLossArgs, threads: usize, json: bool) -> Result<()> {
    let o = EvalLossOptions {
        input: tokenize_options(
            &a.input,
            &a.tokens.template,
            a.tokens.max_tokens,
            &a.tokens.truncate,
        )?,
        model: a.model.path,
        adapter: a.model.adapter,
        batch_size: a.batch_size,
        threads,
    };
    let e = pipeline::train::eval_loss(&o, &Bars::default())?;
    crate::output::pretty(json, &e, || {
        println!(
            "{} samples: mean loss {:.4} (per-token {:.4} over {} response tokens, perplexity {:.2}); {}; {:.1} s",
            e.n_samples,
            e.mean_loss,
            e.token_mean_loss,
            e.n_loss_tokens,
            e.token_mean_loss.exp(),
            e.cut_line,
            e.seconds
        );
        Ok(())
    })
}

pub(crate) fn export(a: ExportArgs, json: bool) -> Result<()> {
    let o = ExportOptions {
        model: a.model,
        adapter: a.adapter,
        out: a.out,
        unmerged: a.unmerged,
        force: a.force,
    };
    match pipeline::train::export(&o, &Bars::default())? {
        Exported::Merged { out, checkpoint } if json => println!(
            "{}",
            serde_json::json!({"out": out, "kind": checkpoint.kind, "checkpoint": checkpoint})
        ),
        Exported::Merged { out, checkpoint } => println!(
            "wrote {} ({} checkpoint {} merged into {})",
            out.display(),
            checkpoint.kind,
            o.adapter.display(),
            o.model.display()
        ),
        Exported::Unmerged {
            out,
            base,
            adapter,
            checkpoint,
            ..
        } if json => println!(
            "{}",
            serde_json::json!({"out": out, "base": base, "adapter": adapter, "checkpoint": checkpoint})
        ),
        Exported::Unmerged {
            base,
            adapter,
            base_abs,
            ..
        } => println!(
            "wrote {} (the base model) and {} (the adapter, base_model_name_or_path = {}); in Python: \
             peft.AutoPeftModelForCausalLM.from_pretrained(\"{}\")",
            base.display(),
            adapter.display(),
            base_abs.display(),
            adapter.display()
        ),
    }
    Ok(())
}

/// `index` with `--adapter`, `--lora-grads`, `--adam` or `--checkpoints`: one store per
/// checkpoint (`--out` itself for one, `--out/{checkpoint name}` for several).
pub(crate) fn index_checkpoints(a: crate::IndexArgs, threads: usize, json: bool) -> Result<()> {
    pipeline::index::check_checkpoints(
        a.model.adapter.as_deref(),
        &a.checkpoints,
        a.lora_grads,
        a.adam,
    )?;
    let o = CheckpointsOptions {
        index: inflow::index::IndexOptions {
            part: a.shard,
            ..a.store.index_options(&a.input, &a.features, threads)?
        },
        model: a.model.path,
        adapter: a.model.adapter,
        checkpoints: a.checkpoints,
        lora_grads: a.lora_grads,
        adam: a.adam,
        out: a.out,
    };
    let results = pipeline::index::checkpoints(&o, &Bars::default())?;
    crate::output::pretty(json, &results, || {
        for r in &results {
            println!(
                "indexed {} samples into {} from {} (step {}, lr {}) in {:.1} s: dim {}",
                r.summary.n_samples,
                r.out.display(),
                r.dir.display(),
                r.checkpoint.step.map_or("?".into(), |s| s.to_string()),
                r.checkpoint.lr.map_or("?".into(), |l| format!("{l:.3e}")),
                r.seconds,
                r.summary.dim
            );
        }
        Ok(())
    })
}

/// `inflow bench train`.
#[derive(Args)]
pub(crate) struct BenchTrainArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Samples per step (one padded pass split across --threads).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    batch_size: usize,
    /// Timed steps per method (after one warm-up step).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 3)]
    steps: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 128)]
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
        let o = StepBenchOptions {
            model: model_path.clone(),
            data: data.clone(),
            method: method.into(),
            batch_size: a.batch_size,
            steps: a.steps,
            max_tokens: a.max_tokens,
            threads,
        };
        let r = pipeline::train::bench_steps(&o, &Bars::default())?;
        let mut row = serde_json::to_value(&r)?;
        row["fraction_of_gemm"] = (r.gflops / gemm_n).into();
        rows.push(row);
    }
    let out = serde_json::json!({
        "model": model_path, "threads": threads, "batch_size": a.batch_size,
        "max_tokens": a.max_tokens, "gemm_gflops_1_thread": gemm1,
        "gemm_gflops_all_threads": gemm_n, "methods": rows,
        "peak_rss_bytes": crate::bench::peak_rss(),
    });
    crate::output::pretty(json, &out, || {
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
        Ok(())
    })
}
