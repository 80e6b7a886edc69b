//! `eval lds`: the linear datamodeling score of attribution methods (Park et al. 2023;
//! METHODS.md §5). Retrains LoRA on M random subsets, scores the queries with each method of
//! [`crate::methods`] in-process (or reads precomputed matrices), and correlates
//! Σ_{z∈S} score(z, q) with the negated query loss after retraining on S (scores are
//! helpfulness; see [`crate::eval::lds`]). Every step is resumable from `out`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::index::index;
use super::report::Reporter;
use super::score::load_model;
use crate::data::tokens::{Renderer, Template, Truncate};
use crate::data::{read_samples, Format, ReadOptions, Sample};
use crate::eval::lds::{self, LdsReport, LossSpread, MethodLds};
use crate::eval::retrain::retrain_and_eval;
use crate::features::Projection;
use crate::index::{FeatureOptions, IndexOptions, Progress};
use crate::methods::{self, Context, Need, TrainSet};
use crate::model::LoadedModel;
use crate::store::{Dtype, Store};
use crate::train::TrainOptions;
use crate::{Error, Result};

/// Settings of an LDS run.
#[derive(Debug, Clone)]
pub struct LdsOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub format: Format,
    /// Its name as given, recorded in the matrices' cache keys.
    pub format_name: String,
    pub queries: PathBuf,
    /// The first `limit` training samples (n of the LDS).
    pub limit: usize,
    /// M random subsets.
    pub subsets: usize,
    /// α: each subset holds round(α n) samples.
    pub ratio: f64,
    /// Methods of [`crate::methods`] scored in-process.
    pub methods: Vec<String>,
    /// Precomputed dense nq × n matrices (`score --full`), by name.
    pub scores: Vec<(String, PathBuf)>,
    pub epochs: usize,
    pub lr: f64,
    pub lora_rank: usize,
    pub lora_modules: String,
    pub batch_size: usize,
    pub max_tokens: usize,
    /// LoGra rank per side of the gradient features.
    pub rank: usize,
    pub damping: f64,
    pub template: Template,
    /// Truncation of training samples, queries and features alike.
    pub truncate: Truncate,
    pub seed: u64,
    pub out: PathBuf,
    pub threads: usize,
}

/// A dense nq × n score matrix of one method and what produced it.
struct Matrix {
    scores: Vec<f32>,
    estimator: String,
    sign: String,
    settings: Value,
    seconds: f64,
}

/// Everything the scoring steps share.
struct Ctx<'a> {
    o: &'a LdsOptions,
    model: &'a LoadedModel,
    queries: &'a [Sample],
    n: usize,
    store_dir: PathBuf,
    features: FeatureOptions,
    reporter: &'a dyn Reporter,
}

fn read(format: Format, limit: Option<usize>) -> ReadOptions {
    ReadOptions {
        format,
        skip_bad: false,
        limit,
    }
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    crate::atomic_write::write_json(path, v).map(|_| ())
}

impl Ctx<'_> {
    /// Indexes the training samples once (resumable) and fits K-FAC/EK-FAC when asked.
    fn store(&self, fit: bool) -> Result<()> {
        let opts = IndexOptions {
            part: None,
            data: self.o.data.clone(),
            read: read(self.o.format, Some(self.o.limit)),
            features: self.features.clone(),
            dtype: Dtype::F16,
            shard_size: 64,
            batch_size: 1,
            threads: self.o.threads,
        };
        let summary = index(self.model, &opts, &self.store_dir, "index", self.reporter)?;
        if summary.n_samples != self.n {
            return Err(Error::Store {
                path: self.store_dir.clone(),
                msg: format!("holds {} samples, expected {}", summary.n_samples, self.n),
            });
        }
        let fitted = crate::curvature::kfac::fit_path(&self.store_dir);
        if fit && !fitted.exists() {
            let s = Store::open(&self.store_dir)?;
            crate::curvature::kfac::fit(&s, crate::curvature::kfac::FactorSource::Tokens)?;
        }
        Ok(())
    }

    /// Scores the queries with a registered method, dense.
    fn method(&self, name: &str) -> Result<Matrix> {
        let method = methods::by_name(name)?;
        let needs = method.needs();
        if needs.contains(&Need::Store) {
            self.store(needs.contains(&Need::Curvature))?;
        }
        let t = Instant::now();
        let options = methods::Options {
            curvature: crate::curvature::Options {
                damping: self.o.damping,
                ..Default::default()
            },
            ..Default::default()
        };
        let progress = Progress::default();
        let ctx = Context {
            train: TrainSet {
                store: &self.store_dir,
                data: self.o.data.clone(),
                read: read(self.o.format, Some(self.o.limit)),
                features: self.features.clone(),
            },
            model: Some(self.model),
            model_path: Some(&self.o.model),
            queries: self.queries,
            queries_path: &self.o.queries,
            query_features: None,
            options: &options,
            top_k: 1,
            full: true,
            threads: self.o.threads,
            scratch: self.o.out.clone(),
            progress: &progress,
            on_rows: &|_| {},
        };
        let scored = super::watch(self.reporter, name, &progress, || method.score(&ctx))?;
        let scores = scored
            .result
            .full
            .ok_or_else(|| Error::Msg(format!("{}: no dense score matrix", scored.method)))?;
        if scores.len() != self.queries.len() * self.n {
            return Err(Error::Msg(format!(
                "{name}: {} scores, expected {} queries × {} training samples",
                scores.len(),
                self.queries.len(),
                self.n
            )));
        }
        Ok(Matrix {
            scores,
            estimator: scored.method,
            sign: scored.sign_convention,
            settings: json!({
                "source": "in-process (inflow::methods)",
                "store": self.store_dir,
                "method": name,
                "damping": self.o.damping,
                "features": self.features,
                "report": scored.report,
            }),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// A matrix written by `inflow score --full` (nq × n query-major, JSON sidecar).
    fn external(&self, path: &Path) -> Result<Matrix> {
        let npy = crate::store::npy::NpyFile::open(path)?;
        let nq = self.queries.len();
        let shape = npy.shape().to_vec();
        if shape.len() != 2 || shape[0] != nq || shape[1] < self.n {
            return Err(Error::Msg(format!(
                "{}: shape {shape:?}, expected [{nq}, n ≥ {}] (queries × training rows, query-major)",
                path.display(),
                self.n
            )));
        }
        let cols = shape[1];
        let full = npy.to_f32_vec();
        let sidecar = path.with_extension("json");
        let meta: Value = match std::fs::read(&sidecar) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Msg(format!("reading {}: {e}", sidecar.display())))?,
            Err(_) => Value::Null,
        };
        // Rows in our query order (by id when the sidecar names them).
        let ids: Option<Vec<String>> = meta["query_ids"].as_array().map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        });
        let mut scores = Vec::with_capacity(nq * self.n);
        for (qi, q) in self.queries.iter().enumerate() {
            let row = match &ids {
                Some(ids) => ids.iter().position(|i| *i == q.id).ok_or_else(|| {
                    Error::Msg(format!(
                        "{}: no row for query {} in its sidecar",
                        path.display(),
                        q.id
                    ))
                })?,
                None => qi,
            };
            // Column j is training row j of the store; --limit keeps the first n rows.
            scores.extend_from_slice(&full[row * cols..row * cols + self.n]);
        }
        Ok(Matrix {
            scores,
            estimator: meta["method"].as_str().unwrap_or("external").to_string(),
            sign: meta["sign_convention"]
                .as_str()
                .unwrap_or("unstated (assumed helpfulness: positive lowers the query loss)")
                .to_string(),
            settings: json!({"source": path, "columns_used": self.n, "columns": cols}),
            seconds: 0.0,
        })
    }

    /// The matrix of `name`, reused from `out/scores/` when it was computed with the same
    /// settings, else computed and saved there.
    fn matrix(&self, name: &str, path: Option<&Path>, key: &Value) -> Result<(Matrix, bool)> {
        let dir = self.o.out.join("scores");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let npy_path = dir.join(format!("{name}.npy"));
        let info_path = dir.join(format!("{name}.lds.json"));
        if let (Ok(info), Ok(npy)) = (
            std::fs::read(&info_path),
            crate::store::npy::NpyFile::open(&npy_path),
        ) {
            let info: Value = serde_json::from_slice(&info)
                .map_err(|e| Error::Msg(format!("reading {}: {e}", info_path.display())))?;
            if info["key"] == *key && npy.shape() == [self.queries.len(), self.n] {
                return Ok((
                    Matrix {
                        scores: npy.to_f32_vec(),
                        estimator: info["estimator"].as_str().unwrap_or(name).to_string(),
                        sign: info["sign_convention"].as_str().unwrap_or("").to_string(),
                        settings: info["settings"].clone(),
                        seconds: info["seconds"].as_f64().unwrap_or(0.0),
                    },
                    true,
                ));
            }
        }
        let m = match path {
            Some(p) => self.external(p)?,
            None => self.method(name)?,
        };
        let result = crate::scores::ScoreResult {
            topk: vec![Vec::new(); self.queries.len()],
            full: Some(m.scores.clone()),
            n_train: self.n,
            part: None,
        };
        let qids: Vec<String> = self.queries.iter().map(|q| q.id.clone()).collect();
        crate::scores::write_full_npy(&npy_path, &result, &qids, &m.estimator, &m.sign)?;
        write_json(
            &info_path,
            &json!({"key": key, "estimator": m.estimator, "sign_convention": m.sign,
                    "settings": m.settings, "seconds": m.seconds}),
        )?;
        Ok((m, false))
    }
}

/// Checks the method names against the registry before any work: unknown names, and
/// methods that need checkpoint stores (give their matrices with `scores` instead).
pub fn check_methods(o: &LdsOptions) -> Result<()> {
    for m in &o.methods {
        let found = methods::by_name(m).map_err(|_| {
            Error::Msg(format!(
                "unknown LDS method `{m}`; known: {} (other matrices, e.g. from checkpoint stores, via --scores NAME=PATH.npy from `inflow score --full`)",
                methods::names().join(", ")
            ))
        })?;
        if found.needs().contains(&Need::Checkpoints) {
            return Err(Error::Msg(format!(
                "LDS: `{m}` needs checkpoint stores, which LDS does not make: score it with `inflow score --method {m} --full m.npy` and give --scores {m}=m.npy"
            )));
        }
    }
    for (name, _) in &o.scores {
        if name.is_empty() || name.contains(['/', '\\']) || o.methods.contains(name) {
            return Err(Error::Msg(format!(
                "--scores `{name}=…`: NAME must be a new, plain name"
            )));
        }
    }
    if o.methods.is_empty() && o.scores.is_empty() {
        return Err(Error::Msg(
            "no methods: give --methods and/or --scores".into(),
        ));
    }
    if o.lora_rank == 0 || o.batch_size == 0 || o.epochs == 0 || o.rank == 0 {
        return Err(Error::Msg(
            "--lora-rank, --batch-size, --epochs and --rank must be positive".into(),
        ));
    }
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        return Err(Error::Msg("--lr must be a positive number".into()));
    }
    Ok(())
}

/// Runs (or resumes) an LDS evaluation; writes `lds.json`, `lds.png`, `scatter.png` and the
/// score matrices under `o.out`.
pub fn run(o: &LdsOptions, reporter: &dyn Reporter) -> Result<LdsReport> {
    check_methods(o)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let mut model = load_model(&o.model, reporter)?;
    let train_report = read_samples(&o.data, &read(o.format, Some(o.limit)))?;
    let query_report = read_samples(&o.queries, &read(Format::Auto, None))?;
    let n = train_report.samples.len();
    let nq = query_report.samples.len();
    if nq == 0 {
        return Err(Error::Msg(format!("{}: no queries", o.queries.display())));
    }
    let renderer = Renderer::new(&model, o.template, o.max_tokens)?.with_truncate(o.truncate);
    let (train_seqs, cut_train) = renderer.tokenize_all(&train_report.samples)?;
    let (query_seqs, cut_q) = renderer.tokenize_all(&query_report.samples)?;
    drop(renderer);

    // Subsets: a pure function of (n, M, α, seed); a folder made with others is refused.
    let subsets = lds::sample_subsets(n, o.subsets, o.ratio, o.seed)?;
    let subsets_path = o.out.join("subsets.json");
    let subsets_doc = json!({
        "n_train": n, "m": o.subsets, "ratio": o.ratio, "seed": o.seed,
        "subset_size": lds::subset_size(n, o.ratio), "data_sha256": train_report.sha256,
        "train_ids": train_report.samples.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        "subsets": subsets,
    });
    if let Ok(b) = std::fs::read(&subsets_path) {
        let old: Value = serde_json::from_slice(&b)
            .map_err(|e| Error::Msg(format!("reading {}: {e}", subsets_path.display())))?;
        if old != subsets_doc {
            return Err(Error::Msg(format!(
                "{} was made with other data, subsets or seed; remove --out or choose another",
                subsets_path.display()
            )));
        }
    } else {
        write_json(&subsets_path, &subsets_doc)?;
    }

    let features = FeatureOptions {
        projection: Projection::Logra {
            rank_in: o.rank,
            rank_out: o.rank,
        },
        seed: o.seed,
        modules: "all".into(),
        template: o.template,
        max_tokens: o.max_tokens,
        truncate: o.truncate,
        labels: Default::default(),
    };
    let mut matrices = Vec::new();
    {
        let ctx = Ctx {
            o,
            model: &model,
            queries: &query_report.samples,
            n,
            store_dir: o.out.join("store"),
            features: features.clone(),
            reporter,
        };
        let named = o
            .methods
            .iter()
            .map(|m| (m.clone(), None))
            .chain(o.scores.iter().map(|(m, p)| (m.clone(), Some(p.clone()))));
        for (name, path) in named {
            let key = json!({
                "name": name, "path": path, "damping": o.damping, "features": features,
                "data_sha256": train_report.sha256, "n_train": n,
                "queries_sha256": query_report.sha256, "format": o.format_name,
            });
            let (m, reused) = ctx
                .matrix(&name, path.as_deref(), &key)
                .map_err(|e| Error::Msg(format!("scoring with `{name}`: {e}")))?;
            reporter.note(&format!(
                "{name}: scores {} ({:.1} s)",
                if reused { "reused" } else { "computed" },
                m.seconds
            ));
            matrices.push((name, m));
        }
    }

    // Base losses, then one retraining per subset (finished runs are reused).
    let base: Vec<f64> = crate::train::eval_loss(&model, &query_seqs, 4, o.threads)?
        .losses
        .iter()
        .map(|&l| l as f64)
        .collect();
    let lora_alpha = 2.0 * o.lora_rank as f64;
    let mut topts = TrainOptions::lora(o.lora_rank, lora_alpha, &o.lora_modules);
    topts.epochs = o.epochs;
    topts.lr = o.lr;
    topts.batch_size = o.batch_size;
    topts.seed = o.seed;
    topts.threads = o.threads;
    reporter.start("retrain", subsets.len());
    let mut losses = Vec::with_capacity(subsets.len());
    let mut retrain_seconds = 0.0;
    for (s, sub) in subsets.iter().enumerate() {
        let dir = o.out.join("runs").join(format!("subset-{s:03}"));
        let r = retrain_and_eval(
            &mut model,
            &train_seqs,
            sub,
            &query_seqs,
            &topts,
            &dir,
            o.threads,
        )
        .map_err(|e| {
            Error::Msg(format!(
                "retraining on subset {s} in {}: {e}",
                dir.display()
            ))
        })?;
        retrain_seconds += r.train_seconds;
        losses.push(r.losses.iter().map(|&l| l as f64).collect::<Vec<f64>>());
        reporter.update(
            "retrain",
            s + 1,
            subsets.len(),
            &format!("loss {:.4}", r.mean_loss),
        );
    }
    reporter.finish("retrain");

    let mut reports = Vec::new();
    let mut predictions = Vec::with_capacity(matrices.len());
    for (name, m) in &matrices {
        let predicted = lds::predict(&m.scores, n, nq, &subsets)?;
        let per_query = lds::per_query(&predicted, &losses)?;
        let (mean, std, k) = lds::mean_std(&per_query);
        reports.push(MethodLds {
            name: name.clone(),
            estimator: m.estimator.clone(),
            mean,
            std,
            n_queries: k,
            per_query,
            sign_convention: m.sign.clone(),
            settings: m.settings.clone(),
            seconds: m.seconds,
        });
        predictions.push(predicted);
    }
    let report = LdsReport {
        m: subsets.len(),
        ratio: o.ratio,
        subset_size: lds::subset_size(n, o.ratio),
        n_train: n,
        n_queries: nq,
        seed: o.seed,
        query_ids: query_report.samples.iter().map(|q| q.id.clone()).collect(),
        statistic: lds::STATISTIC.into(),
        settings: json!({
            "model": o.model, "data": o.data, "queries": o.queries, "retrain": topts,
            "max_tokens": o.max_tokens, "truncate": o.truncate,
            "truncated_train": cut_train.samples, "truncated_queries": cut_q.samples,
            "cuts_train": cut_train, "cuts_queries": cut_q,
            "features": features, "damping": o.damping, "threads": o.threads,
        }),
        measured: LossSpread::new(&base, &losses),
        losses,
        retrain_seconds,
        methods: reports,
    };
    write_json(&o.out.join("lds.json"), &report)?;
    plots(&o.out, &report, &predictions)?;
    Ok(report)
}

/// `lds.png` (bars per method) and `scatter.png` (the best method's prediction vs measured
/// loss for its median query).
fn plots(out: &Path, report: &LdsReport, predictions: &[Vec<Vec<f64>>]) -> Result<()> {
    let labels: Vec<String> = report.methods.iter().map(|m| m.name.clone()).collect();
    let values: Vec<f64> = report
        .methods
        .iter()
        .map(|m| if m.mean.is_finite() { m.mean } else { 0.0 })
        .collect();
    crate::eval::plot::bars(
        &out.join("lds.png"),
        &labels,
        &values,
        "mean LDS over queries",
        &format!(
            "LDS (M = {}, α = {}, n = {})",
            report.m, report.ratio, report.n_train
        ),
    )?;
    let best = report
        .methods
        .iter()
        .enumerate()
        .filter(|(_, m)| m.mean.is_finite())
        .max_by(|x, y| x.1.mean.total_cmp(&y.1.mean));
    if let Some((i, b)) = best {
        // The query whose LDS is the median of the best method's defined ones.
        let mut defined: Vec<(usize, f64)> = b
            .per_query
            .iter()
            .enumerate()
            .filter_map(|(q, v)| v.map(|v| (q, v)))
            .collect();
        defined.sort_by(|x, y| x.1.total_cmp(&y.1));
        if let Some(&(q, rho)) = defined.get(defined.len() / 2) {
            let xs: Vec<f64> = predictions[i].iter().map(|r| r[q]).collect();
            let ys: Vec<f64> = report.losses.iter().map(|r| r[q]).collect();
            crate::eval::plot::scatter(
                &out.join("scatter.png"),
                &xs,
                &ys,
                &format!("predicted Σ score ({})", b.name),
                "measured query loss after retraining",
                &format!(
                    "query {} (median LDS of {}: ρ = {rho:.3})",
                    report.query_ids[q], b.name
                ),
            )?;
        }
    }
    Ok(())
}
