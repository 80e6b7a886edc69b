//! `inflow eval lds`: the linear datamodeling score of attribution methods (Park et al. 2023;
//! METHODS.md §5). Retrains LoRA on M random subsets, scores the queries with each method
//! in-process (or reads precomputed matrices), and correlates Σ_{z∈S} score(z, q) with the
//! negated query loss after retraining on S (scores are helpfulness; see
//! `inflow::eval::lds`). Every step is resumable from `--out`.

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_samples, Format, ReadOptions, Sample};
use inflow::eval::lds::{self, LdsReport, LossSpread, MethodLds};
use inflow::eval::retrain::retrain_and_eval;
use inflow::features::Projection;
use inflow::index::{FeatureOptions, IndexOptions, Progress};
use inflow::model::LoadedModel;
use inflow::scores::queries::MethodSpec;
use inflow::store::{Dtype, Store};
use inflow::train::TrainOptions;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Method names `--methods` understands (computed in-process).
const KNOWN: &[&str] = &[
    "cosine",
    "dot",
    "repsim",
    "repsim-mean",
    "ekfac",
    "kfac",
    "datainf",
    "lissa",
    "identity",
    "icp",
];

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
    #[arg(long, default_value_t = 64)]
    limit: usize,
    /// Number of random subsets M (each is one LoRA retraining).
    #[arg(long, default_value_t = 16)]
    subsets: usize,
    /// Subset ratio α: each subset holds round(α n) training samples.
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    /// Methods scored in-process, comma-separated: cosine, dot, repsim, repsim-mean, ekfac,
    /// kfac, datainf, lissa, identity (influence with that preconditioner), icp.
    #[arg(long, default_value = "cosine,dot,ekfac,datainf,repsim")]
    methods: String,
    /// Precomputed dense score matrices, NAME=PATH.npy (nq × n query-major, as written by
    /// `inflow score --full`; e.g. LESS or TracIn). Repeatable.
    #[arg(long = "scores", value_name = "NAME=PATH")]
    scores: Vec<String>,
    /// Retraining epochs over each subset.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Peak learning rate of the LoRA retraining (large enough that subsets move the losses).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// LoRA rank (α = 2 × rank) of the retraining.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// Linears the retraining adapts.
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    /// Retraining batch size.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Longest sample in tokens (training, queries and features).
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// LoGra rank per side of the gradient features.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Relative damping of the influence preconditioners.
    #[arg(long, default_value_t = 0.1)]
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

fn read(format: &str, limit: Option<usize>) -> Result<ReadOptions> {
    Ok(ReadOptions {
        format: format.parse::<Format>()?,
        skip_bad: false,
        limit,
    })
}

fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<()> {
    inflow::store::atomic_write::write_json(path, v)?;
    Ok(())
}

fn style(pb: &ProgressBar, what: &str) {
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}}  {{msg}}  ETA {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
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
    a: &'a LdsArgs,
    model: &'a LoadedModel,
    queries: &'a [Sample],
    n: usize,
    threads: usize,
    store_dir: PathBuf,
    features: FeatureOptions,
}

impl Ctx<'_> {
    fn read_opts(&self) -> Result<ReadOptions> {
        read(&self.a.format, Some(self.a.limit))
    }

    /// Indexes the training samples once (resumable) and fits K-FAC/EK-FAC when asked.
    fn store(&self, fit: bool) -> Result<()> {
        let opts = IndexOptions {
            data: self.a.data.clone(),
            read: self.read_opts()?,
            features: self.features.clone(),
            dtype: Dtype::F16,
            shard_size: 64,
            batch_size: 1,
            threads: self.threads,
        };
        let pb = crate::bar(0, "index");
        let progress = Progress::default();
        let summary = crate::with_progress(&pb, &progress, || {
            inflow::curvature::kfac::run_index(
                self.model,
                &opts,
                &self.store_dir,
                &progress,
                &mut |done, total| {
                    pb.set_length(total as u64);
                    pb.set_position(done as u64);
                },
            )
        });
        pb.finish_and_clear();
        let summary = summary?;
        if summary.n_samples != self.n {
            bail!(
                "store {} holds {} samples, expected {}",
                self.store_dir.display(),
                summary.n_samples,
                self.n
            );
        }
        let fitted = inflow::curvature::kfac::fit_path(&self.store_dir);
        if fit && !fitted.exists() {
            let s = Store::open(&self.store_dir)?;
            inflow::curvature::kfac::fit(&s, inflow::curvature::kfac::FactorSource::Tokens)?;
        }
        Ok(())
    }

    /// Scores the queries with a gradient or representation method, dense.
    fn library(&self, spec: &MethodSpec) -> Result<Matrix> {
        let fit = matches!(spec.preconditioner.as_str(), "kfac" | "ekfac");
        self.store(fit && spec.method == "influence")?;
        let t = Instant::now();
        let pb = crate::bar(self.queries.len(), "queries");
        let progress = Progress::default();
        let scored = crate::with_progress(&pb, &progress, || {
            inflow::scores::queries::score_samples(
                &self.store_dir,
                self.model,
                self.queries,
                spec,
                1,
                true,
                self.threads,
                &progress,
                &mut |_| {},
            )
        });
        pb.finish_and_clear();
        let scored = scored?;
        let scores = scored
            .result
            .full
            .ok_or_else(|| anyhow!("{}: no dense score matrix", scored.method))?;
        Ok(Matrix {
            scores,
            estimator: scored.method,
            sign: scored.sign_convention,
            settings: json!({
                "source": "in-process (inflow::scores::queries::score_samples)",
                "store": self.store_dir,
                "method": spec.method,
                "preconditioner": spec.preconditioner,
                "damping": spec.curvature.damping,
                "features": self.features,
            }),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// In-context probing with the queries as probes: score(z, q) = Δ_q(z) =
    /// log p(a_q | z ⊕ q) − log p(a_q | q) (positive: z as a demonstration helps q).
    fn icp(&self) -> Result<Matrix> {
        use inflow::probe::icp::{DemoTemplate, Icp};
        use inflow::probe::{ProbeMethod, ProbeRun, Probes};
        let t = Instant::now();
        let probes = Probes::read(&self.a.queries, None, None)?;
        if probes.samples.len() != self.queries.len() {
            bail!("the ICP probes do not match the queries");
        }
        // The model's chat template when it has one (as `--template auto` renders).
        let demo = match (self.features.template, self.model.chat_template.is_some()) {
            (Template::Plain, _) | (Template::Auto, false) => DemoTemplate::Plain,
            _ => DemoTemplate::Chat,
        };
        let icp = Icp::new(self.model, &probes, demo, self.a.max_tokens, 4)?;
        let run = ProbeRun {
            model: self.model,
            data: self.a.data.clone(),
            read: self.read_opts()?,
            probes: &probes,
            shard_size: 16,
            threads: self.threads,
        };
        let dir = self.a.out.join("icp");
        let pb = crate::bar(0, "icp");
        let progress = Progress::default();
        let r = crate::with_progress(&pb, &progress, || {
            inflow::probe::run(&run, &icp, &dir, &progress)
        });
        pb.finish_and_clear();
        r?;
        let store = Store::open(&dir)?;
        let nq = self.queries.len();
        let mut rows = Vec::with_capacity(self.n * nq);
        for i in 0..store.n_shards() {
            rows.extend(store.shard_features(i)?.0);
        }
        if rows.len() != self.n * nq {
            bail!("{}: ICP matrix is not {} × {nq}", dir.display(), self.n);
        }
        // n × nq (train-major) → nq × n (query-major).
        let mut scores = vec![0f32; rows.len()];
        for z in 0..self.n {
            for q in 0..nq {
                scores[q * self.n + z] = rows[z * nq + q];
            }
        }
        Ok(Matrix {
            scores,
            estimator: "icp".into(),
            sign: format!(
                "score(z, q) = Δ_q(z) = log p(a_q | z ⊕ q) − log p(a_q | q), the per-probe ICP value \
                 (positive: z as a one-shot demonstration raises the query answer's probability); {}",
                icp.sign_convention()
            ),
            settings: json!({"source": "in-process (inflow::probe::icp)", "store": dir,
                             "demo_template": format!("{demo:?}"), "max_tokens": self.a.max_tokens}),
            seconds: t.elapsed().as_secs_f64(),
        })
    }

    /// A matrix written by `inflow score --full` (nq × n query-major, JSON sidecar).
    fn external(&self, path: &Path) -> Result<Matrix> {
        let npy = inflow::store::npy::NpyFile::open(path)?;
        let nq = self.queries.len();
        let shape = npy.shape().to_vec();
        if shape.len() != 2 || shape[0] != nq || shape[1] < self.n {
            bail!(
                "{}: shape {shape:?}, expected [{nq}, n ≥ {}] (queries × training rows, query-major)",
                path.display(),
                self.n
            );
        }
        let cols = shape[1];
        let full = npy.to_f32_vec();
        let sidecar = path.with_extension("json");
        let meta: Value = match std::fs::read(&sidecar) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("reading {}", sidecar.display()))?,
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
                    anyhow!(
                        "{}: no row for query {} in its sidecar",
                        path.display(),
                        q.id
                    )
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
        let dir = self.a.out.join("scores");
        std::fs::create_dir_all(&dir)?;
        let npy_path = dir.join(format!("{name}.npy"));
        let info_path = dir.join(format!("{name}.lds.json"));
        if let (Ok(info), Ok(npy)) = (
            std::fs::read(&info_path),
            inflow::store::npy::NpyFile::open(&npy_path),
        ) {
            let info: Value = serde_json::from_slice(&info)?;
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
        let m = match (path, name) {
            (Some(p), _) => self.external(p)?,
            (None, "icp") => self.icp()?,
            (None, "cosine" | "dot" | "repsim" | "repsim-mean") => {
                self.library(&MethodSpec::plain(name))?
            }
            (None, p) => self.library(&MethodSpec::influence(p, self.a.damping))?,
        };
        let result = inflow::scores::ScoreResult {
            topk: vec![Vec::new(); self.queries.len()],
            full: Some(m.scores.clone()),
            n_train: self.n,
        };
        let qids: Vec<String> = self.queries.iter().map(|q| q.id.clone()).collect();
        inflow::scores::write_full_npy(&npy_path, &result, &qids, &m.estimator, &m.sign)?;
        write_json(
            &info_path,
            &json!({"key": key, "estimator": m.estimator, "sign_convention": m.sign,
                    "settings": m.settings, "seconds": m.seconds}),
        )?;
        Ok((m, false))
    }
}

pub(crate) fn run(a: LdsArgs, threads: usize, json_out: bool) -> Result<()> {
    let t0 = Instant::now();
    // Methods first, so a typo fails before any work.
    let mut methods: Vec<(String, Option<PathBuf>)> = Vec::new();
    for m in a
        .methods
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        if !KNOWN.contains(&m) {
            bail!(
                "unknown LDS method `{m}`; known: {} (other methods, e.g. less or tracin, \
                 via --scores NAME=PATH.npy from `inflow score --full`)",
                KNOWN.join(", ")
            );
        }
        methods.push((m.to_string(), None));
    }
    for s in &a.scores {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("--scores `{s}`: expected NAME=PATH.npy"))?;
        if name.is_empty() || name.contains(['/', '\\']) || methods.iter().any(|(m, _)| m == name) {
            bail!("--scores `{s}`: NAME must be a new, plain name");
        }
        methods.push((name.to_string(), Some(PathBuf::from(path))));
    }
    if methods.is_empty() {
        bail!("no methods: give --methods and/or --scores");
    }
    if a.lora_rank == 0 || a.batch_size == 0 || a.epochs == 0 || a.rank == 0 {
        bail!("--lora-rank, --batch-size, --epochs and --rank must be positive");
    }
    if !(a.lr > 0.0 && a.lr.is_finite()) {
        bail!("--lr must be a positive number");
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    let mut model = crate::load_model(&a.model)?;
    let train_report = read_samples(&a.data, &read(&a.format, Some(a.limit))?)?;
    let query_report = read_samples(&a.queries, &read("auto", None)?)?;
    let n = train_report.samples.len();
    let nq = query_report.samples.len();
    if nq == 0 {
        bail!("{}: no queries", a.queries.display());
    }
    let template = a.template.parse::<Template>()?;
    let renderer = Renderer::new(&model, template, a.max_tokens)?;
    let (train_seqs, cut_train) = crate::train::tokenize_samples(&renderer, &train_report.samples)?;
    let (query_seqs, cut_q) = crate::train::tokenize_samples(&renderer, &query_report.samples)?;
    drop(renderer);

    // Subsets: a pure function of (n, M, α, seed); a folder made with others is refused.
    let subsets = lds::sample_subsets(n, a.subsets, a.ratio, a.seed)?;
    let subsets_path = a.out.join("subsets.json");
    let subsets_doc = json!({
        "n_train": n, "m": a.subsets, "ratio": a.ratio, "seed": a.seed,
        "subset_size": lds::subset_size(n, a.ratio), "data_sha256": train_report.sha256,
        "train_ids": train_report.samples.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        "subsets": subsets,
    });
    if let Ok(b) = std::fs::read(&subsets_path) {
        let old: Value = serde_json::from_slice(&b)?;
        if old != subsets_doc {
            bail!(
                "{} was made with other data, subsets or seed; remove --out or choose another",
                subsets_path.display()
            );
        }
    } else {
        write_json(&subsets_path, &subsets_doc)?;
    }

    let features = FeatureOptions {
        projection: Projection::Logra {
            rank_in: a.rank,
            rank_out: a.rank,
        },
        seed: a.seed,
        modules: "all".into(),
        template,
        max_tokens: a.max_tokens,
        labels: Default::default(),
    };
    let ctx = Ctx {
        a: &a,
        model: &model,
        queries: &query_report.samples,
        n,
        threads,
        store_dir: a.out.join("store"),
        features: features.clone(),
    };
    let mut matrices = Vec::new();
    for (name, path) in &methods {
        let key = json!({
            "name": name, "path": path, "damping": a.damping, "features": features,
            "data_sha256": train_report.sha256, "n_train": n,
            "queries_sha256": query_report.sha256, "format": a.format,
        });
        let (m, reused) = ctx
            .matrix(name, path.as_deref(), &key)
            .with_context(|| format!("scoring with `{name}`"))?;
        eprintln!(
            "{name}: scores {} ({:.1} s)",
            if reused { "reused" } else { "computed" },
            m.seconds
        );
        matrices.push((name.clone(), m));
    }

    // Base losses, then one retraining per subset (finished runs are reused).
    let base: Vec<f64> = inflow::train::eval_loss(&model, &query_seqs, 4, threads)?
        .losses
        .iter()
        .map(|&l| l as f64)
        .collect();
    let lora_alpha = 2.0 * a.lora_rank as f64;
    let mut opts = TrainOptions::lora(a.lora_rank, lora_alpha, &a.lora_modules);
    opts.epochs = a.epochs;
    opts.lr = a.lr;
    opts.batch_size = a.batch_size;
    opts.seed = a.seed;
    opts.threads = threads;
    let pb = ProgressBar::new(subsets.len() as u64);
    style(&pb, "retrain");
    let mut losses = Vec::with_capacity(subsets.len());
    let mut retrain_seconds = 0.0;
    for (s, sub) in subsets.iter().enumerate() {
        let dir = a.out.join("runs").join(format!("subset-{s:03}"));
        let r = retrain_and_eval(
            &mut model,
            &train_seqs,
            sub,
            &query_seqs,
            &opts,
            &dir,
            threads,
        )
        .with_context(|| format!("retraining on subset {s} in {}", dir.display()))?;
        retrain_seconds += r.train_seconds;
        losses.push(r.losses.iter().map(|&l| l as f64).collect::<Vec<f64>>());
        pb.set_message(format!("loss {:.4}", r.mean_loss));
        pb.inc(1);
    }
    pb.finish_and_clear();

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
        ratio: a.ratio,
        subset_size: lds::subset_size(n, a.ratio),
        n_train: n,
        n_queries: nq,
        seed: a.seed,
        query_ids: query_report.samples.iter().map(|q| q.id.clone()).collect(),
        statistic: lds::STATISTIC.into(),
        settings: json!({
            "model": a.model, "data": a.data, "queries": a.queries, "retrain": opts,
            "max_tokens": a.max_tokens, "truncated_train": cut_train, "truncated_queries": cut_q,
            "features": features, "damping": a.damping, "threads": threads,
        }),
        measured: LossSpread::new(&base, &losses),
        losses,
        retrain_seconds,
        methods: reports,
    };
    write_json(&a.out.join("lds.json"), &report)?;
    plots(&a.out, &report, &predictions)?;

    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
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
            a.out.display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `lds.png` (bars per method) and `scatter.png` (the best method's prediction vs measured
/// loss for its best-defined query).
fn plots(out: &Path, report: &LdsReport, predictions: &[Vec<Vec<f64>>]) -> Result<()> {
    let labels: Vec<String> = report.methods.iter().map(|m| m.name.clone()).collect();
    let values: Vec<f64> = report
        .methods
        .iter()
        .map(|m| if m.mean.is_finite() { m.mean } else { 0.0 })
        .collect();
    inflow::eval::plot::bars(
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
            inflow::eval::plot::scatter(
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
