//! `score`: queries against a store with any registered method, written as Parquet (top-k
//! lists or one score per training sample) and optionally the dense matrix as `.npy`.

use std::path::{Path, PathBuf};

use super::report::{watch, Reporter};
use crate::data::{self, Format, ReadOptions, Sample};
use crate::index::{self, Progress};
use crate::methods::{self, Context, Need, PerTrain, TrainSet};
use crate::output_guard::{check_output, check_overwrite};
use crate::scores::{self, ScoreResult};
use crate::store::{SampleRow, Store};
use crate::{Error, Result};

/// How a score run reduces its matrix to one value per training sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// The mean over the queries (e.g. similarity to a whole probe set).
    Mean,
    /// No reduction: top-k per query, also for methods whose default output is one score per
    /// training sample (LESS's per-task max).
    None,
}

crate::error::names!(Aggregate: "--aggregate", Mean = "mean", None = "none");

/// What to score and where to write it.
#[derive(Debug, Clone)]
pub struct ScoreOptions {
    /// A store made by `index` (for checkpoint methods, the folder of checkpoint stores).
    pub store: PathBuf,
    pub queries: PathBuf,
    pub format: Format,
    /// Score only the first N queries.
    pub limit: Option<usize>,
    /// A name of [`crate::methods`].
    pub method: String,
    pub options: methods::Options,
    pub top_k: usize,
    /// Parquet output; default STORE/scores-METHOD.parquet ([`output_path`]).
    pub out: Option<PathBuf>,
    /// Replace outputs that exist already.
    pub force: bool,
    /// Also the dense nq × n matrix as `.npy` (with a JSON sidecar naming the queries).
    pub full: Option<PathBuf>,
    /// Model override (default: the store's, from run.json).
    pub model: Option<PathBuf>,
    pub aggregate: Option<Aggregate>,
    pub threads: usize,
}

/// Everything a score run produced.
pub struct ScoreOutput {
    pub query_ids: Vec<String>,
    /// Prompt and response of each query as featurized (or as read).
    pub query_text: Vec<String>,
    pub result: ScoreResult,
    /// The training rows, in column order (empty where the method has no single store).
    pub train: Vec<SampleRow>,
    pub train_ids: Vec<String>,
    pub method: String,
    pub sign_convention: String,
    pub report: Option<serde_json::Value>,
    /// The per-sample reduction, when the file written holds one score per training sample.
    pub per_train: Option<PerTrain>,
    pub out: PathBuf,
    pub full: Option<PathBuf>,
}

pub use super::store_model::load_model;

/// Reads a query file (at least one query).
pub fn read_queries(path: &Path, format: Format, limit: Option<usize>) -> Result<Vec<Sample>> {
    let report = data::read_samples(
        path,
        &ReadOptions {
            format,
            skip_bad: false,
            limit,
        },
    )?;
    if report.samples.is_empty() {
        return Err(Error::Msg(format!("{}: no queries", path.display())));
    }
    Ok(report.samples)
}

/// The training set of a store, from its run.json (or, for a folder of checkpoint stores,
/// the first one's).
pub fn train_set(store: &Path) -> Result<TrainSet<'_>> {
    let dir = if store.join("run.json").exists() {
        store.to_path_buf()
    } else {
        scores::checkpoints::find(store)?.remove(0)
    };
    let run = index::read_run_info(&dir)?;
    let read = recorded_read(&Store::open(&dir)?, &run)?;
    Ok(TrainSet {
        store,
        data: run.data_path,
        read,
        features: run.features,
    })
}

/// How a store read its data: the format from run.json, the limit and bad-record policy from
/// the manifest.
pub fn recorded_read(s: &Store, run: &index::RunInfo) -> Result<ReadOptions> {
    let d = &s.spec().data;
    Ok(ReadOptions {
        format: run.format.parse::<Format>()?,
        skip_bad: d["skip_bad"].as_bool().unwrap_or(false),
        limit: d["limit"].as_u64().map(|v| v as usize),
    })
}

/// Where `o`'s scores go: `--out`, or `STORE/scores-METHOD.parquet`, where METHOD is the
/// method's name (`influence-PRECONDITIONER` for influence), known before any work so an
/// existing file is refused up front.
pub fn output_path(o: &ScoreOptions) -> PathBuf {
    o.out.clone().unwrap_or_else(|| {
        let name = match o.method.as_str() {
            "influence" => format!("influence-{}", o.options.preconditioner),
            m => m.to_string(),
        };
        o.store.join(format!("scores-{name}.parquet"))
    })
}

/// Scores the queries of `o` with its method and writes the outputs.
pub fn score(o: &ScoreOptions, reporter: &dyn Reporter) -> Result<ScoreOutput> {
    let method = methods::by_name(&o.method)?;
    if o.top_k == 0 {
        return Err(Error::Msg("--top-k must be at least 1".into()));
    }
    if let Some(p) = o.options.part {
        if method.needs().contains(&Need::Checkpoints) || !method.needs().contains(&Need::Store) {
            return Err(Error::Msg(format!(
                "--part {p} scores a share of one store's shards; `{}` does not score from a \
                 single store (score it whole)",
                method.name()
            )));
        }
    }
    // Outputs must not replace an input or a store's own files, nor (without --force) an
    // earlier result: checked before any work, after the cheap checks of the inputs below.
    let out = output_path(o);
    let mut outputs = vec![("--out", out.clone()), ("--out", report_path(&out))];
    if let Some(full) = &o.full {
        outputs.push(("--full", full.clone()));
        outputs.push(("--full", full.with_extension("json")));
    }
    for (flag, p) in &outputs {
        check_output(flag, p, &[&o.queries])?;
    }
    let train = train_set(&o.store)?;
    // A store folder as --queries: features indexed once, scored against many stores.
    let (queries, given) = if o.queries.join("manifest.json").exists() {
        if !method.needs().contains(&Need::Store) || method.needs().contains(&Need::Checkpoints) {
            return Err(Error::Msg(format!(
                "--queries {} is a store of query features; `{}` needs the query samples themselves: give the query file",
                o.queries.display(),
                method.name()
            )));
        }
        let (s, f) =
            scores::queries::read_query_store(&o.queries, &Store::open(&o.store)?, o.limit)?;
        (s, Some(f))
    } else {
        (read_queries(&o.queries, o.format, o.limit)?, None)
    };
    let nq = queries.len();
    let needs_model = method.needs().contains(&Need::Model);
    // Queries are featurized at the store's weights: its base model plus the adapter or
    // checkpoint recorded in run.json, hash-checked.
    let model = if needs_model {
        Some(super::store_model::load(&o.store, o.model.as_deref(), reporter)?.model)
    } else {
        None
    };
    for (flag, p) in &outputs {
        check_overwrite(flag, p, o.force)?;
    }
    if method.needs().contains(&Need::Checkpoints) {
        let n = scores::checkpoints::find(&o.store)?.len();
        reporter.note(&format!(
            "{}: {n} checkpoint stores, {nq} queries",
            method.name()
        ));
    }
    let scratch = o.store.join("work").join(method.name());
    let progress = Progress::default();
    let n_rows = Store::open(&o.store).map(|s| s.n_samples()).unwrap_or(0);
    reporter.start("score", n_rows);
    let on_rows = |d: usize| reporter.update("score", d, n_rows, "");
    let want_full = o.full.is_some() || o.aggregate == Some(Aggregate::Mean);
    let ctx = Context {
        train,
        model: model.as_ref(),
        model_path: o.model.as_deref(),
        queries: &queries,
        queries_path: &o.queries,
        query_features: given.as_ref(),
        options: &o.options,
        top_k: o.top_k,
        full: want_full,
        threads: o.threads,
        scratch,
        progress: &progress,
        on_rows: &on_rows,
    };
    let scored = watch(reporter, "queries", &progress, || method.score(&ctx));
    reporter.finish("score");
    let scored = scored?;
    let query_ids: Vec<String> = queries.iter().map(|s| s.id.clone()).collect();
    let query_text: Vec<String> = if scored.query_rows.len() == nq {
        scored
            .query_rows
            .iter()
            .map(|r| format!("{}{}", r.prompt, r.response))
            .collect()
    } else {
        queries
            .iter()
            .map(|s| format!("{}{}", s.body.prompt_text(), s.body.response()))
            .collect()
    };
    let out = output_path(o);
    // A partial run's per-sample scores and ids: its part's rows.
    let part_rows = scored.result.part.as_ref().map(|p| p.rows.clone());
    let per_train = match (o.aggregate, &scored.per_train) {
        (Some(Aggregate::Mean), _) => Some(PerTrain {
            scores: scores::mean_over_queries(
                scored.result.full.as_deref().unwrap_or_default(),
                nq,
            ),
            what: "mean over queries".into(),
        }),
        (Some(Aggregate::None), _) => None,
        (None, Some(p)) => Some(p.clone()),
        (None, None) => None,
    };
    match &per_train {
        Some(p) => scores::write_per_train_parquet(
            &out,
            part_rows
                .clone()
                .map_or(&scored.train_ids[..], |r| &scored.train_ids[r]),
            &p.scores,
            nq,
            &scored.method,
            &scored.sign_convention,
            &p.what,
            scored.result.part.as_ref(),
        )?,
        None => scores::write_topk_parquet(
            &out,
            &query_ids,
            &scored.train_ids,
            &scored.result,
            &scored.method,
            &scored.sign_convention,
        )?,
    }
    if let Some(r) = &scored.report {
        // The whole report (LiSSA's per-iteration trace, …) goes beside the scores; the
        // terminal gets its one-line summary.
        let side = report_path(&out);
        crate::atomic_write::write_json(&side, r)?;
        if let Some(summary) = r.get("summary").and_then(|v| v.as_str()) {
            reporter.note(&format!("{summary} (report: {})", side.display()));
        } else if !method.needs().contains(&Need::Checkpoints) {
            reporter.note(&format!("{}: report in {}", scored.method, side.display()));
        }
    }
    if let Some(full) = &o.full {
        scores::write_full_npy(
            full,
            &scored.result,
            &query_ids,
            &scored.method,
            &scored.sign_convention,
        )?;
    }
    // A folder of checkpoint stores: they share one training set.
    let train = if o.store.join("manifest.json").exists() {
        Store::open(&o.store)?.samples()?
    } else {
        match scores::checkpoints::find(&o.store) {
            Ok(dirs) => Store::open(&dirs[0])?.samples()?,
            Err(_) => Vec::new(),
        }
    };
    Ok(ScoreOutput {
        query_ids,
        query_text,
        result: scored.result,
        train,
        train_ids: scored.train_ids,
        method: scored.method,
        sign_convention: scored.sign_convention,
        report: scored.report,
        per_train,
        out,
        full: o.full.clone(),
    })
}

/// Where a score run's method report goes: OUT with `.report.json` for its extension.
pub fn report_path(out: &Path) -> PathBuf {
    out.with_extension("report.json")
}
