//! `select`: choose training samples by score (top-k / top-p%, LESS per-task max), G-DIG
//! (quality against a seed set, k-means diversity) or an ICP threshold — the methods are
//! [`crate::select`]'s — and write them back in the input's format with a manifest beside them.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{json, Value};

use super::report::{watch, Reporter};
use crate::data::{read_samples, Format, ReadOptions, Sample};
use crate::index::Progress;
use crate::scores::queries::MethodSpec;
use crate::select::gdig::{self, GdigOptions, Quality};
use crate::select::input;
use crate::select::ranked::{self, Size};
use crate::select::{threshold, write, Scored, Selection};
use crate::store::Store;
use crate::{Error, Result};

/// Settings of a selection (the flags of `inflow select`).
#[derive(Debug, Clone)]
pub struct SelectOptions {
    /// `top`, `gdig` or `icp`.
    pub method: String,
    /// Training data the scores were computed on; the selection is written in its format.
    pub data: PathBuf,
    pub format: Format,
    /// Output file; the manifest goes to OUT.selection.{parquet,json}.
    pub out: PathBuf,
    /// Replace outputs that exist already.
    pub force: bool,
    /// Per-sample scores (Parquet with `train_id`, `score`) or a full `.npy` matrix.
    pub scores: Option<PathBuf>,
    /// How many: a count (500) or a percentage of the scored samples (5%), as given.
    pub size: Option<String>,
    /// icp: keep samples whose score is strictly above this.
    pub threshold: f32,
    /// gdig's gradient features; the column ids of a `.npy` matrix.
    pub store: Option<PathBuf>,
    /// The query samples of a `.npy` matrix (their `task` groups them).
    pub queries: Option<PathBuf>,
    /// gdig: the seed set S.
    pub seed_set: Option<PathBuf>,
    /// gdig: how the seed set scores the samples (default: by the store's curvature).
    pub seed_method: Option<String>,
    /// gdig, with seed method influence: the preconditioner.
    pub preconditioner: String,
    /// gdig: k of k-means.
    pub clusters: usize,
    /// gdig: keep samples whose mean seed-set score is above this.
    pub quality_threshold: f32,
    /// gdig: keep this top fraction (0, 1] instead of a threshold.
    pub quality_top: Option<f64>,
    /// gdig: cluster the raw features (default: L2-normalised).
    pub raw_features: bool,
    /// gdig: seed of k-means++.
    pub seed: u64,
    /// Model override for the seed-set scoring (default: the store's).
    pub model: Option<PathBuf>,
    pub threads: usize,
}

/// What a selection wrote. Fields in alphabetical order: the JSON the CLI prints.
#[derive(Debug, Clone, Serialize)]
pub struct SelectOutput {
    pub candidates: usize,
    pub details: Value,
    /// The manifest: Parquet and JSON.
    pub manifest: [PathBuf; 2],
    pub out: PathBuf,
    /// Samples written.
    pub selected: usize,
    /// The selection itself (picks in rank order).
    #[serde(skip)]
    pub selection: Selection,
}

fn read_data(path: &Path, format: Format) -> Result<Vec<Sample>> {
    let opts = ReadOptions {
        format,
        ..ReadOptions::default()
    };
    Ok(read_samples(path, &opts)?.samples)
}

fn size(o: &SelectOptions) -> Result<Size> {
    match &o.size {
        Some(s) => s.parse::<Size>(),
        None => Err(Error::Msg(format!(
            "--method {} needs --size (a count like 500 or a percentage like 5%)",
            o.method
        ))),
    }
}

/// Per-sample scores from `scores`: a per-train Parquet file or a full .npy (per-task max).
fn read_scores(o: &SelectOptions, path: &Path) -> Result<(Scored, String)> {
    let is_npy = path.extension().and_then(|e| e.to_str()) == Some("npy");
    if !is_npy {
        let f = input::read_per_train(path)?;
        let method = f.method.unwrap_or_else(|| "scores".into());
        return Ok((f.scored, method));
    }
    let (Some(store), Some(queries)) = (&o.store, &o.queries) else {
        return Err(Error::Msg(format!(
            "{}: a full matrix needs --store (its columns are the store's rows) and --queries (the scored queries, with a `task` field)",
            path.display()
        )));
    };
    let ids: Vec<String> = Store::open(store)?
        .samples()?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let tasks = input::query_tasks(&read_data(queries, Format::Auto)?);
    let scored = input::read_full_per_task(path, &ids, &tasks)?;
    Ok((scored, "per_task_max".into()))
}

/// The scores file a method needs, or what it is missing.
fn need_scores<'a>(o: &'a SelectOptions, missing: &str) -> Result<&'a Path> {
    o.scores
        .as_deref()
        .ok_or_else(|| Error::Msg(missing.into()))
}

/// Selects, writes the chosen samples in the input's format and the manifest of why each was
/// chosen; G-DIG's seed-set scoring reports stages "seed set" and "score".
pub fn run(o: &SelectOptions, reporter: &dyn Reporter) -> Result<SelectOutput> {
    // The selection and its manifest must not replace an input (checked before any work).
    let inputs: Vec<&Path> = [
        Some(&o.data),
        o.scores.as_ref(),
        o.seed_set.as_ref(),
        o.queries.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(PathBuf::as_path)
    .collect();
    let (mpq, mjs) = write::manifest_paths(&o.out);
    // Inputs and store files are never written; an earlier selection only with --force,
    // checked once the (quick) score file has been read and matched, before slow work.
    let outputs = [&o.out, &mpq, &mjs];
    for out in outputs {
        crate::output_guard::check_output("--out", out, &inputs)?;
    }
    let check_overwrite = || {
        outputs
            .iter()
            .try_for_each(|out| crate::output_guard::check_overwrite("--out", out, o.force))
    };
    let samples = read_data(&o.data, o.format)?;
    let mut settings = json!({
        "method": o.method,
        "data": o.data,
        "scores": o.scores,
        "size": o.size,
    });
    let sel: Selection = match o.method.as_str() {
        "top" => {
            let path = need_scores(o, "--method top needs --scores")?;
            let (scored, m) = read_scores(o, path)?;
            input::check_coverage(&scored.ids, &samples, path, &o.data)?;
            check_overwrite()?;
            settings["score_method"] = m.into();
            ranked::top(&scored, size(o)?)
        }
        "icp" => {
            let path = need_scores(
                o,
                "--method icp needs --scores (the scores.parquet of `inflow probe`)",
            )?;
            let (scored, m) = read_scores(o, path)?;
            input::check_coverage(&scored.ids, &samples, path, &o.data)?;
            check_overwrite()?;
            settings["score_method"] = m.into();
            settings["threshold"] = o.threshold.into();
            threshold::above(&scored, o.threshold)
        }
        "gdig" => {
            check_overwrite()?;
            gdig_select(o, &samples, &mut settings, reporter)?
        }
        m => {
            return Err(Error::Msg(format!(
                "unknown --method `{m}`; expected top, gdig or icp"
            )))
        }
    };
    let ids: Vec<String> = sel.picks.iter().map(|p| p.id.clone()).collect();
    let pos = input::join_data(&ids, &samples, &o.data)?;
    let rows: Vec<usize> = pos.iter().map(|&i| samples[i].row).collect();
    let selected = write::write_rows(&o.data, &rows, &o.out)?;
    let (mpq, mjs) = write::write_manifest(&o.out, &sel, &rows, &settings)?;
    Ok(SelectOutput {
        candidates: sel.n_candidates,
        details: sel.details.clone(),
        manifest: [mpq, mjs],
        out: o.out.clone(),
        selected,
        selection: sel,
    })
}

fn gdig_select(
    o: &SelectOptions,
    samples: &[Sample],
    settings: &mut Value,
    reporter: &dyn Reporter,
) -> Result<Selection> {
    let store_dir = o.store.as_deref().ok_or_else(|| {
        Error::Msg("--method gdig needs --store (gradient features to cluster)".into())
    })?;
    // Settings first: scoring a seed set can take minutes.
    let quality = match o.quality_top {
        Some(f) if f > 0.0 && f <= 1.0 => Quality::TopFraction(f),
        Some(f) => {
            return Err(Error::Msg(format!(
                "--quality-top {f}: expected a fraction in (0, 1]"
            )))
        }
        None => Quality::Above(o.quality_threshold),
    };
    let target = size(o)?;
    let store = Store::open(store_dir)?;
    let (scored, m) = match (&o.scores, &o.seed_set) {
        (Some(p), _) => read_scores(o, p)?,
        (None, Some(seed)) => {
            let seed_samples = read_data(seed, Format::Auto)?;
            let spec = match o.seed_method.as_deref() {
                None => input::default_seed_method(store_dir),
                Some("influence") => MethodSpec::influence(&o.preconditioner, 0.1),
                // The registry's preconditioner shorthands (`ekfac` = influence with EK-FAC).
                Some(p @ ("identity" | "kfac" | "ekfac" | "datainf" | "lissa" | "exact")) => {
                    MethodSpec::influence(p, 0.1)
                }
                Some(m) => MethodSpec::plain(m),
            };
            // The seed set is featurized at the store's weights (its adapter, if any).
            let model = super::store_model::load(store_dir, o.model.as_deref(), reporter)?.model;
            let progress = Progress::default();
            let n = store.n_samples();
            reporter.start("score", n);
            let r = watch(reporter, "seed set", &progress, || {
                input::seed_set_scores(
                    store_dir,
                    &model,
                    &seed_samples,
                    &spec,
                    o.threads,
                    &progress,
                    &mut |d| reporter.update("score", d, n, ""),
                )
            });
            reporter.finish("score");
            let (scored, method, _sign) = r?;
            settings["seed_set"] = json!(seed);
            (scored, method)
        }
        (None, None) => {
            return Err(Error::Msg(
                "--method gdig needs --seed-set (to score the samples) or --scores".into(),
            ))
        }
    };
    input::check_coverage(
        &scored.ids,
        samples,
        o.scores.as_deref().unwrap_or(store_dir),
        &o.data,
    )?;
    let opts = GdigOptions {
        quality,
        clusters: o.clusters,
        size: target,
        seed: o.seed,
        max_iter: 100,
        normalize: !o.raw_features,
    };
    let kept = gdig::quality_filter(&scored, quality);
    let kept_ids: Vec<&str> = kept.iter().map(|&i| scored.ids[i].as_str()).collect();
    let feats = input::store_features(&store, &kept_ids)?;
    settings["score_method"] = m.into();
    settings["store"] = json!(store_dir);
    settings["gdig"] = serde_json::to_value(&opts).map_err(|e| Error::Msg(e.to_string()))?;
    gdig::select(&scored, &kept, feats, store.dim(), &opts)
}
