//! `inflow select`: choose training samples by score (top-k / top-p%, LESS per-task max),
//! G-DIG (quality against a seed set, k-means diversity) or an ICP threshold, and write them
//! back in the input's format with a manifest beside them.

use anyhow::Result;
use clap::Args;
use inflow::data::Format;
use inflow::pipeline::select::SelectOptions;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SelectArgs {
    /// `top`: the best --size samples by score (ties by sample id); with a full `.npy` matrix
    /// and --queries, LESS's per-task max (mean over a task's queries, max over tasks).
    /// `gdig`: G-DIG (keep samples beneficial to --seed-set, k-means over their gradient
    /// features, resample evenly across clusters). `icp`: samples whose score > --threshold.
    #[arg(long, default_value = "top")]
    method: String,
    /// Training data the scores were computed on (.jsonl/.parquet); the selection is written
    /// in its format.
    #[arg(long)]
    data: PathBuf,
    /// Data format.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Output file (same extension as --data); the manifest goes to OUT.selection.{parquet,json}.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out and its manifest files if they exist.
    #[arg(long)]
    force: bool,
    /// Per-sample scores: a Parquet file with `train_id` and `score` (`inflow score
    /// --aggregate mean`, `inflow probe`'s scores.parquet), or a full `.npy` matrix (`inflow
    /// score --full`) with --store and --queries. gdig computes its own when omitted.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// How many to select: a count (500) or a percentage of the scored samples (5%).
    #[arg(long)]
    size: Option<String>,
    /// icp: keep samples whose score is strictly above this.
    #[arg(long, value_parser = crate::bounds::finite, default_value_t = 0.9)]
    threshold: f32,
    /// Store made by `inflow index`: gdig's gradient features; column ids of a .npy matrix.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The query samples of a .npy matrix (their `task` field groups them for the per-task max).
    #[arg(long)]
    queries: Option<PathBuf>,
    /// gdig: the small high-quality seed set S (.jsonl/.parquet).
    #[arg(long)]
    seed_set: Option<PathBuf>,
    /// gdig: how the seed set scores the training samples (`cosine`, `dot`, `influence`, …);
    /// default: influence with EK-FAC when the store has `inflow fit` curvature, else cosine.
    #[arg(long)]
    seed_method: Option<String>,
    /// gdig, with --seed-method influence: the preconditioner.
    #[arg(long, default_value = "ekfac")]
    preconditioner: String,
    /// gdig: k of k-means.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 32)]
    clusters: usize,
    /// gdig: keep samples whose mean seed-set score is above this (0: beneficial).
    #[arg(long, value_parser = crate::bounds::finite, default_value_t = 0.0)]
    quality_threshold: f32,
    /// gdig: keep this top fraction (0, 1] by seed-set score instead of a threshold.
    #[arg(long, value_parser = crate::bounds::share)]
    quality_top: Option<f64>,
    /// gdig: cluster the raw gradient features (default: L2-normalised, cosine geometry).
    #[arg(long)]
    raw_features: bool,
    /// gdig: seed of k-means++.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Model override for gdig's seed-set scoring (default: the store's).
    #[arg(long)]
    model: Option<PathBuf>,
}

pub(crate) fn select(a: SelectArgs, threads: usize, json: bool) -> Result<()> {
    let o = SelectOptions {
        format: a.format.parse::<Format>()?,
        method: a.method,
        data: a.data,
        out: a.out,
        force: a.force,
        scores: a.scores,
        size: a.size,
        threshold: a.threshold,
        store: a.store,
        queries: a.queries,
        seed_set: a.seed_set,
        seed_method: a.seed_method,
        preconditioner: a.preconditioner,
        clusters: a.clusters,
        quality_threshold: a.quality_threshold,
        quality_top: a.quality_top,
        raw_features: a.raw_features,
        seed: a.seed,
        model: a.model,
        threads,
    };
    let r = inflow::pipeline::select::run(&o, &crate::progress::Bars::default())?;
    crate::output::line(json, &serde_json::to_value(&r)?, || {
        let sel = &r.selection;
        println!(
            "selected {} of {} samples ({}) into {}; manifest {}",
            r.selected,
            sel.n_candidates,
            sel.method,
            r.out.display(),
            r.manifest[0].display()
        );
        for p in sel.picks.iter().take(5) {
            let c = p
                .cluster
                .map(|c| format!("  cluster {c}"))
                .unwrap_or_default();
            println!("  #{:<4} {:>10.4}  {}{c}", p.rank, p.score, p.id);
        }
        if sel.picks.len() > 5 {
            println!("  … {} more", sel.picks.len() - 5);
        }
        Ok(())
    })
}
