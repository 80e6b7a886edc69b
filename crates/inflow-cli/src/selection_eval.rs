//! `inflow eval selection`: fine-tune on each method's selection, on random subsets of the
//! same size and on the full pool, and compare held-out loss, exact match and ROUGE-L on the
//! target tasks (the experiment is `inflow::pipeline::selection`, its runs
//! `inflow::eval::selection`).

use anyhow::{Context, Result};
use clap::Args;
use inflow::eval::selection::Stat;
use inflow::pipeline::selection::SelectionEvalOptions;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SelectionEvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// The training pool to select from (.jsonl/.parquet).
    #[arg(long)]
    pool: PathBuf,
    /// Use only the first N pool samples.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 120)]
    pool_limit: usize,
    /// Target samples (their `task` field names the target tasks); the seed set of gdig and
    /// the queries of in-process scores.
    #[arg(long)]
    targets: PathBuf,
    /// Held-out samples; those of the target tasks (all, if the targets have no task) are
    /// evaluated, taken round-robin over tasks.
    #[arg(long)]
    test: PathBuf,
    /// Held-out samples evaluated.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    test_limit: usize,
    /// Selection size: a count (24) or a percentage of the pool (20%).
    #[arg(long, default_value = "20%")]
    size: String,
    /// Comma-separated: random, full, gdig (seed-set quality + k-means over --store features),
    /// less (per target task mean, max over tasks; from --scores less=… or, in-process, gradient
    /// cosine on --store at the base model), icp (top by --scores icp=…), cosine, dot,
    /// influence (top by mean score against the targets on --store), encoder (an encoder
    /// distilled from --store with the targets as anchors, --encoder-*; top by mean encoder
    /// cosine against the targets), or any NAME given in --scores NAME=file (top by that score).
    #[arg(long, default_value = "random,gdig,less,full")]
    methods: String,
    /// Precomputed per-sample score files, NAME=path (Parquet with train_id and score).
    #[arg(long, num_args = 1..)]
    scores: Vec<String>,
    /// Store of the pool (made by `inflow index` on --pool): in-process scores and gdig's features.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Random subsets of the selection size, one per seed.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 3)]
    random_seeds: usize,
    /// Seed of the random subsets (seed, seed+1, …), LoRA initialisation and data order, k-means.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// gdig: k of k-means.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    clusters: usize,
    /// gdig: keep this top fraction by seed-set score before clustering.
    #[arg(long, value_parser = crate::bounds::share, default_value_t = 0.5)]
    gdig_quality_top: f64,
    /// Greedy generation cap per test prompt.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    lora_rank: usize,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA target modules (same syntax as index --modules).
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    epochs: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    batch_size: usize,
    /// Longest sample in tokens (training and evaluation).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    #[arg(long, default_value = "auto")]
    template: String,
    /// Skip the untrained base model's row.
    #[arg(long)]
    no_base: bool,
    /// Output folder (one subfolder per run; rerunning resumes).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    encoder: crate::encoder::ExperimentEncoderArgs,
}

pub(crate) fn run(a: SelectionEvalArgs, threads: usize, json: bool) -> Result<()> {
    let scores = a
        .scores
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                .with_context(|| format!("--scores {s}: expected NAME=path"))
        })
        .collect::<Result<_>>()?;
    let o = SelectionEvalOptions {
        model: a.model,
        pool: a.pool,
        pool_limit: a.pool_limit,
        targets: a.targets,
        test: a.test,
        test_limit: a.test_limit,
        size: a.size.parse()?,
        methods: crate::args::list(&a.methods),
        scores,
        store: a.store,
        random_seeds: a.random_seeds,
        seed: a.seed,
        clusters: a.clusters,
        gdig_quality_top: a.gdig_quality_top,
        max_new_tokens: a.max_new_tokens,
        lora_rank: a.lora_rank,
        lora_alpha: a.lora_alpha,
        lora_modules: a.lora_modules,
        lr: a.lr,
        epochs: a.epochs,
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
        truncate: a.truncate.policy()?,
        template: a.template.parse()?,
        with_base: !a.no_base,
        encoder: a.encoder.settings(),
        out: a.out,
        threads,
    };
    let r = inflow::pipeline::selection::run(&o, &crate::progress::Bars::default())?;
    let report = &r.report;
    crate::output::line(json, report, || {
        println!(
            "selection experiment: pool {}, size {} ({}), {} test samples of the target tasks; {}",
            report.n_pool,
            r.size,
            a.size,
            report.n_test,
            o.out.join("report.json").display()
        );
        println!(
            "{:<10} {:>4} {:>6} {:>16} {:>16} {:>16}",
            "method", "runs", "train", "loss", "exact match", "ROUGE-L"
        );
        for s in &report.summary {
            let f = |st: &Stat| {
                if s.n_runs > 1 {
                    format!("{:.4} ± {:.4}", st.mean, st.std)
                } else {
                    format!("{:.4}", st.mean)
                }
            };
            println!(
                "{:<10} {:>4} {:>6} {:>16} {:>16} {:>16}",
                s.method,
                s.n_runs,
                s.n_train,
                f(&s.loss),
                f(&s.exact_match),
                f(&s.rouge_l)
            );
        }
        println!(
            "plots: {}, {}",
            o.out.join("loss.png").display(),
            o.out.join("rouge_l.png").display()
        );
        Ok(())
    })
}
