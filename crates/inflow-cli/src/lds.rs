//! `inflow eval lds`: the linear datamodeling score of attribution methods (Park et al. 2023;
//! METHODS.md §5). Retrains LoRA on M random subsets, scores the queries with each method
//! in-process (or reads precomputed matrices), and correlates Σ_{z∈S} score(z, q) with the
//! negated query loss after retraining on S (scores are helpfulness; see
//! `inflow::eval::lds`). Every step is resumable from `--out`.

use anyhow::{anyhow, Result};
use clap::Args;
use inflow::data::tokens::Template;
use inflow::data::Format;
use inflow::pipeline::lds::LdsOptions;
use std::path::PathBuf;
use std::time::Instant;

/// Linear datamodeling score: retrain on random subsets, correlate predicted and measured
/// query losses per method.
#[derive(Args)]
pub(crate) struct LdsArgs {
    #[arg(long)]
    model: PathBuf,
    /// Training data (.jsonl/.parquet).
    #[arg(long)]
    data: PathBuf,
    /// Training data format: auto, alpaca, chat, prompt_completion, text.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Query samples whose losses are measured after each retraining.
    #[arg(long)]
    queries: PathBuf,
    /// Use the first N training samples (n of the LDS).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 64)]
    limit: usize,
    /// Number of random subsets M (each is one LoRA retraining).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    subsets: usize,
    /// Subset ratio α: each subset holds round(α n) training samples.
    #[arg(long, value_parser = crate::bounds::fraction, default_value_t = 0.5)]
    ratio: f64,
    /// Methods scored in-process, comma-separated: any name of `inflow methods` that needs no
    /// checkpoint stores (cosine, dot, repsim, repsim-mean, ekfac, kfac, datainf, lissa,
    /// identity, exact, icp, one-step, …).
    #[arg(long, default_value = "cosine,dot,ekfac,datainf,repsim")]
    methods: String,
    /// Precomputed dense score matrices, NAME=PATH.npy (nq × n query-major, as written by
    /// `inflow score --full`; e.g. LESS or TracIn). Repeatable.
    #[arg(long = "scores", value_name = "NAME=PATH")]
    scores: Vec<String>,
    /// Retraining epochs over each subset.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate of the LoRA retraining (large enough that subsets move the losses).
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 2e-3)]
    lr: f64,
    /// LoRA rank (α = 2 × rank) of the retraining.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    lora_rank: usize,
    /// Linears the retraining adapts.
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    /// Retraining batch size.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 4)]
    batch_size: usize,
    /// Longest sample in tokens (training, queries and features).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    /// LoGra rank per side of the gradient features.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    rank: usize,
    /// Relative damping of the influence preconditioners.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 0.1)]
    damping: f64,
    /// Conversation rendering: auto, chat, plain.
    #[arg(long, default_value = "auto")]
    template: String,
    /// Seed of the subsets, the retraining (LoRA init, data order) and the projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (rerunning the same command resumes it).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(a: LdsArgs, threads: usize, json_out: bool) -> Result<()> {
    let t0 = Instant::now();
    let mut scores = Vec::new();
    for s in &a.scores {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("--scores `{s}`: expected NAME=PATH.npy"))?;
        scores.push((name.to_string(), PathBuf::from(path)));
    }
    let o = LdsOptions {
        model: a.model,
        data: a.data,
        format: a.format.parse::<Format>()?,
        format_name: a.format,
        queries: a.queries,
        limit: a.limit,
        subsets: a.subsets,
        ratio: a.ratio,
        methods: crate::args::list(&a.methods),
        scores,
        epochs: a.epochs,
        lr: a.lr,
        lora_rank: a.lora_rank,
        lora_modules: a.lora_modules,
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
        rank: a.rank,
        damping: a.damping,
        template: a.template.parse::<Template>()?,
        truncate: a.truncate.policy()?,
        seed: a.seed,
        out: a.out,
        threads,
    };
    let report = inflow::pipeline::lds::run(&o, &crate::progress::Bars::default())?;
    let (n, nq) = (report.n_train, report.n_queries);
    crate::output::pretty(json_out, &report, || {
        println!(
            "LDS over M = {} subsets of {} / {} training samples, {} queries (Spearman of Σ score vs −loss):",
            report.m, report.subset_size, n, nq
        );
        println!(
            "{:<14} {:>8} {:>8} {:>8} {:>9}",
            "method", "mean", "std", "queries", "score s"
        );
        for r in &report.methods {
            println!(
                "{:<14} {:>8.4} {:>8.4} {:>8} {:>9.1}",
                r.name, r.mean, r.std, r.n_queries, r.seconds
            );
        }
        println!(
            "measured query loss: base {:.4} → mean {:.4} after retraining; std over subsets {:.4} (mean over queries)",
            report.measured.base.iter().sum::<f64>() / nq as f64,
            report.measured.mean.iter().sum::<f64>() / nq as f64,
            report.measured.mean_std
        );
        println!(
            "wrote {} (lds.json, lds.png, scatter.png) in {:.1} s",
            o.out.display(),
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    })
}
