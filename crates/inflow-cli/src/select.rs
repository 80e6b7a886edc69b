//! `inflow select`: choose training samples by score (top-k / top-p%, LESS per-task max),
//! G-DIG (quality against a seed set, k-means diversity) or an ICP threshold, and write them
//! back in the input's format with a manifest beside them.

use anyhow::{bail, Context, Result};
use clap::Args;
use inflow::data::{read_samples, Format, ReadOptions, Sample};
use inflow::index::Progress;
use inflow::scores::queries::MethodSpec;
use inflow::select::gdig::{self, GdigOptions, Quality};
use inflow::select::input;
use inflow::select::ranked::{self, Size};
use inflow::select::{threshold, write, Scored, Selection};
use inflow::store::Store;
use std::path::{Path, PathBuf};

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
    /// Per-sample scores: a Parquet file with `train_id` and `score` (`inflow score
    /// --aggregate mean`, `inflow probe`'s scores.parquet), or a full `.npy` matrix (`inflow
    /// score --full`) with --store and --queries. gdig computes its own when omitted.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// How many to select: a count (500) or a percentage of the scored samples (5%).
    #[arg(long)]
    size: Option<String>,
    /// icp: keep samples whose score is strictly above this.
    #[arg(long, default_value_t = 0.9)]
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
    #[arg(long, default_value_t = 32)]
    clusters: usize,
    /// gdig: keep samples whose mean seed-set score is above this (0: beneficial).
    #[arg(long, default_value_t = 0.0)]
    quality_threshold: f32,
    /// gdig: keep this top fraction (0, 1] by seed-set score instead of a threshold.
    #[arg(long)]
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

fn read_data(path: &Path, format: &str) -> Result<Vec<Sample>> {
    let opts = ReadOptions {
        format: format.parse::<Format>()?,
        ..ReadOptions::default()
    };
    Ok(read_samples(path, &opts)?.samples)
}

fn size(a: &SelectArgs) -> Result<Size> {
    match &a.size {
        Some(s) => Ok(s.parse::<Size>()?),
        None => bail!(
            "--method {} needs --size (a count like 500 or a percentage like 5%)",
            a.method
        ),
    }
}

/// Per-sample scores from --scores: a per-train Parquet file or a full .npy (per-task max).
fn read_scores(a: &SelectArgs, path: &Path) -> Result<(Scored, String)> {
    let is_npy = path.extension().and_then(|e| e.to_str()) == Some("npy");
    if !is_npy {
        let f = input::read_per_train(path)?;
        let method = f.method.unwrap_or_else(|| "scores".into());
        return Ok((f.scored, method));
    }
    let (Some(store), Some(queries)) = (&a.store, &a.queries) else {
        bail!(
            "{}: a full matrix needs --store (its columns are the store's rows) and --queries (the scored queries, with a `task` field)",
            path.display()
        );
    };
    let ids: Vec<String> = Store::open(store)?
        .samples()?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let tasks = input::query_tasks(&read_data(queries, "auto")?);
    let scored = input::read_full_per_task(path, &ids, &tasks)?;
    Ok((scored, "per_task_max".into()))
}

pub(crate) fn select(a: SelectArgs, threads: usize, json: bool) -> Result<()> {
    let samples = read_data(&a.data, &a.format)?;
    let mut settings = serde_json::json!({
        "method": a.method,
        "data": a.data,
        "scores": a.scores,
        "size": a.size,
    });
    let sel: Selection = match a.method.as_str() {
        "top" => {
            let path = a.scores.as_ref().context("--method top needs --scores")?;
            let (scored, m) = read_scores(&a, path)?;
            settings["score_method"] = m.into();
            ranked::top(&scored, size(&a)?)
        }
        "icp" => {
            let path = a
                .scores
                .as_ref()
                .context("--method icp needs --scores (the scores.parquet of `inflow probe`)")?;
            let (scored, m) = read_scores(&a, path)?;
            settings["score_method"] = m.into();
            settings["threshold"] = a.threshold.into();
            threshold::above(&scored, a.threshold)
        }
        "gdig" => gdig_select(&a, threads, &mut settings)?,
        m => bail!("unknown --method `{m}`; expected top, gdig or icp"),
    };
    let ids: Vec<String> = sel.picks.iter().map(|p| p.id.clone()).collect();
    let pos = input::join_data(&ids, &samples, &a.data)?;
    let rows: Vec<usize> = pos.iter().map(|&i| samples[i].row).collect();
    let n = write::write_rows(&a.data, &rows, &a.out)?;
    let (mpq, mjs) = write::write_manifest(&a.out, &sel, &rows, &settings)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "out": a.out, "selected": n, "candidates": sel.n_candidates,
                "manifest": [mpq, mjs], "details": sel.details,
            })
        );
    } else {
        println!(
            "selected {n} of {} samples ({}) into {}; manifest {}",
            sel.n_candidates,
            sel.method,
            a.out.display(),
            mpq.display()
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
    }
    Ok(())
}

fn gdig_select(
    a: &SelectArgs,
    threads: usize,
    settings: &mut serde_json::Value,
) -> Result<Selection> {
    let store_dir = a
        .store
        .as_ref()
        .context("--method gdig needs --store (gradient features to cluster)")?;
    // Arguments first: scoring a seed set can take minutes.
    let quality = match a.quality_top {
        Some(f) if f > 0.0 && f <= 1.0 => Quality::TopFraction(f),
        Some(f) => bail!("--quality-top {f}: expected a fraction in (0, 1]"),
        None => Quality::Above(a.quality_threshold),
    };
    let target = size(a)?;
    let store = Store::open(store_dir)?;
    let (scored, m) = match (&a.scores, &a.seed_set) {
        (Some(p), _) => read_scores(a, p)?,
        (None, Some(seed)) => {
            let seed_samples = read_data(seed, "auto")?;
            let spec = match a.seed_method.as_deref() {
                None => input::default_seed_method(store_dir),
                Some("influence") => MethodSpec::influence(&a.preconditioner, 0.1),
                // The registry's preconditioner shorthands (`ekfac` = influence with EK-FAC).
                Some(p @ ("identity" | "kfac" | "ekfac" | "datainf" | "lissa" | "exact")) => {
                    MethodSpec::influence(p, 0.1)
                }
                Some(m) => MethodSpec::plain(m),
            };
            // The seed set is featurized at the store's weights (its adapter, if any).
            let model = inflow::pipeline::store_model::load(
                store_dir,
                a.model.as_deref(),
                &crate::progress::Bars::default(),
            )?
            .model;
            let pb = crate::bar(seed_samples.len(), "seed set");
            let sb = crate::bar(store.n_samples(), "score");
            let progress = Progress::default();
            let r = crate::with_progress(&pb, &progress, || {
                input::seed_set_scores(
                    store_dir,
                    &model,
                    &seed_samples,
                    &spec,
                    threads,
                    &progress,
                    &mut |d| sb.set_position(d as u64),
                )
            });
            pb.finish_and_clear();
            sb.finish_and_clear();
            let (scored, method, _sign) = r?;
            settings["seed_set"] = serde_json::json!(seed);
            (scored, method)
        }
        (None, None) => bail!("--method gdig needs --seed-set (to score the samples) or --scores"),
    };
    let opts = GdigOptions {
        quality,
        clusters: a.clusters,
        size: target,
        seed: a.seed,
        max_iter: 100,
        normalize: !a.raw_features,
    };
    let kept = gdig::quality_filter(&scored, quality);
    let kept_ids: Vec<&str> = kept.iter().map(|&i| scored.ids[i].as_str()).collect();
    let feats = input::store_features(&store, &kept_ids)?;
    settings["score_method"] = m.into();
    settings["store"] = serde_json::json!(store_dir);
    settings["gdig"] = serde_json::to_value(&opts)?;
    Ok(gdig::select(&scored, &kept, feats, store.dim(), &opts)?)
}
