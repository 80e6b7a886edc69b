//! `eval planted`: plant a backdoor, abusive responses or flipped labels in a training set
//! ([`crate::eval::planted`]), LoRA fine-tune on the mix, index the mix at the fine-tuned
//! model, fit the curvature, and measure how well each method of [`crate::methods`] finds
//! the planted samples (Acc, Cover, AUC; METHODS.md §5). Every step keeps its output in the
//! run folder, so a rerun continues where a killed one stopped.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};

use super::encoder::{distil_and_encode, Distilled, EncoderSettings};
use super::index::{at_checkpoint, index};
use super::report::Reporter;
use super::score::load_model;
use crate::curvature::fisher::{self as fi, Fisher, FisherSamples};
use crate::curvature::kfac::FactorSource;
use crate::data::tokens::{Renderer, Template, Truncate};
use crate::data::{read_samples, Format, ReadOptions, Sample};
use crate::eval::planted::{self, Kind, PlantedSet};
use crate::eval::retrieval;
use crate::features::Projection;
use crate::index::{FeatureOptions, IndexOptions};
use crate::methods::{self, Need};
use crate::model::lora::LoraConfig;
use crate::model::LoadedModel;
use crate::store::{Dtype, Store};
use crate::train::features::{FeatureSource, LoraGradient};
use crate::train::{self, Method, TrainData, TrainOptions};
use crate::{Error, Result};

/// Settings of a planted-data experiment.
#[derive(Debug, Clone)]
pub struct PlantedOptions {
    /// What to plant.
    pub kind: Kind,
    /// The base model (GGUF or Hugging Face folder).
    pub model: PathBuf,
    /// Alpaca JSONL pool (instruction, input, output, task).
    pub data: PathBuf,
    /// Run folder: mix.jsonl, queries.jsonl, ft/, store/, less/, report.json, PNGs.
    pub out: PathBuf,
    /// Training records in the mix.
    pub n_train: usize,
    /// Fraction of the mix that is planted.
    pub fraction: f64,
    /// Queries carrying the planted behaviour (backdoor, harmful).
    pub queries: usize,
    /// Methods of [`crate::methods`]; `less` runs over the fine-tuning's own checkpoints.
    pub methods: Vec<String>,
    /// Relative damping of the influence preconditioners.
    pub damping: f64,
    /// Fisher of the influence preconditioners.
    pub fisher: Fisher,
    /// Kronecker factors of K-FAC/EK-FAC.
    pub factors: FactorSource,
    /// Seed of the planted set, the LoRA initialisation and the data order.
    pub seed: u64,
    /// Fine-tuning epochs on the mix (a checkpoint per epoch feeds LESS).
    pub epochs: usize,
    /// Peak learning rate of the fine-tuning.
    pub lr: f64,
    /// LoRA rank (α = 2 × rank).
    pub lora_rank: usize,
    /// Linears the LoRA adapts.
    pub lora_modules: String,
    /// LoGra rank per side of the gradient features.
    pub rank: usize,
    /// Longest sample in tokens (fine-tuning, features and queries).
    pub max_tokens: usize,
    /// What goes when a sample is over `max_tokens`.
    pub truncate: Truncate,
    /// Triggered queries to generate answers for (attack success rate).
    pub generate: usize,
    /// The encoder distilled from the mix's store when `encoder` is among the methods.
    pub encoder: EncoderSettings,
    /// Worker threads.
    pub threads: usize,
}

/// The files [`data`] wrote (fields in the order of the CLI's `--data-only --json` keys).
#[derive(Debug, Clone, Serialize)]
pub struct PlantedData {
    /// The mix, each record with `planted: true|false`.
    pub mix: PathBuf,
    /// Records in the mix.
    pub n_mix: usize,
    /// Planted records among them.
    pub n_planted: usize,
    /// The queries carrying the planted behaviour.
    pub queries: PathBuf,
}

/// One method's retrieval of the planted samples (NaN where the kind does not define it).
#[derive(Debug, Clone)]
pub struct MethodMetrics {
    /// The method's registry name (or `loss`, mislabel's baseline).
    pub name: String,
    /// Fraction of queries whose top-1 training sample is planted.
    pub acc: f64,
    /// Fraction of a query's top-k that is planted (k = planted samples), over queries.
    pub cover: f64,
    /// AUC of the mean score over queries (mislabel: of the self-score) for planted samples.
    pub auc: f64,
    /// Its entry under `metrics` in report.json.
    pub value: Value,
}

/// What [`run`] measured, and report.json as written.
#[derive(Debug, Clone)]
pub struct PlantedReport {
    /// What was planted.
    pub kind: Kind,
    /// Records in the mix.
    pub n_mix: usize,
    /// Planted records among them.
    pub n_planted: usize,
    /// Queries scored.
    pub n_queries: usize,
    /// Mean query loss before and after the fine-tuning (None without queries).
    pub query_loss_before: Option<f64>,
    pub query_loss_after: Option<f64>,
    /// Per method, in the order asked (mislabel: methods with a self-score, then `loss`).
    pub methods: Vec<MethodMetrics>,
    /// Where report.json is.
    pub path: PathBuf,
    /// report.json's content.
    pub json: Value,
}

/// Checks the method names before any work: known to the registry, and no checkpoint method
/// but `less` (the only one whose checkpoint stores the experiment makes).
pub fn check_methods(names: &[String]) -> Result<()> {
    for m in names {
        let found = methods::by_name(m)?;
        if found.needs().contains(&Need::Checkpoints) && m != "less" {
            return Err(Error::Msg(format!(
                "`{m}` needs checkpoint stores of SGD gradients, which eval planted does not make; its in-process checkpoint method is less"
            )));
        }
    }
    Ok(())
}

/// Builds the planted set and writes it to `out`: the data of the experiment, for running the
/// user path by hand (train, generate, index --adapter, fit, score).
pub fn data(o: &PlantedOptions, reporter: &dyn Reporter) -> Result<PlantedData> {
    Ok(plant(o, reporter)?.2)
}

fn plant(
    o: &PlantedOptions,
    reporter: &dyn Reporter,
) -> Result<(PlantedSet, planted::Options, PlantedData)> {
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let pool = planted::read_records(&o.data)?;
    let mut popts = planted::Options::new(o.kind, o.seed);
    popts.n_train = o.n_train;
    popts.fraction = o.fraction;
    popts.n_queries = o.queries;
    let set = planted::build(&pool, &popts)?;
    let written = PlantedData {
        mix: o.out.join("mix.jsonl"),
        n_mix: set.mix.len(),
        n_planted: set.planted.iter().filter(|p| **p).count(),
        queries: o.out.join("queries.jsonl"),
    };
    planted::write_records(&written.mix, &set.mix)?;
    planted::write_records(&written.queries, &set.queries)?;
    reporter.note(&format!(
        "planted {} of {} samples ({}); {} queries",
        written.n_planted,
        written.n_mix,
        o.kind,
        set.queries.len()
    ));
    Ok((set, popts, written))
}

fn alpaca() -> ReadOptions {
    ReadOptions {
        format: Format::Alpaca,
        ..Default::default()
    }
}

/// Index options over the mix with features of `projection` at the model's weights.
fn mix_index(o: &PlantedOptions, mix: &Path, projection: Projection) -> IndexOptions {
    IndexOptions {
        part: None,
        data: mix.to_path_buf(),
        read: alpaca(),
        features: FeatureOptions {
            projection,
            seed: 0,
            modules: "all".into(),
            template: Template::Auto,
            max_tokens: o.max_tokens,
            truncate: o.truncate,
            labels: Default::default(),
        },
        dtype: Dtype::F32,
        shard_size: 64,
        batch_size: 1,
        threads: o.threads,
    }
}

/// Runs the whole experiment (see the module doc) and writes report.json and the plots.
pub fn run(o: &PlantedOptions, reporter: &dyn Reporter) -> Result<PlantedReport> {
    check_methods(&o.methods)?;
    let t0 = Instant::now();
    let kind = o.kind;

    // 1. The planted set.
    let (set, popts, written) = plant(o, reporter)?;

    // 2. LoRA fine-tuning on the mix, one checkpoint per epoch.
    let mut m = load_model(&o.model, reporter)?;
    let mix_samples = read_samples(&written.mix, &alpaca())?.samples;
    if mix_samples.is_empty() {
        return Err(Error::Msg(format!("{}: no samples", written.mix.display())));
    }
    // The queries are read once: their tokens serve the losses, their samples the generations
    // and the scores.
    let qsamples = if set.queries.is_empty() {
        Vec::new()
    } else {
        read_samples(&written.queries, &alpaca())?.samples
    };
    let (mix_seqs, qseqs) = {
        let r = Renderer::new(&m, Template::Auto, o.max_tokens)?.with_truncate(o.truncate);
        (
            r.tokenize_all(&mix_samples)?.0,
            r.tokenize_all(&qsamples)?.0,
        )
    };
    let query_loss = |m: &LoadedModel| -> Result<Option<f64>> {
        if qseqs.is_empty() {
            return Ok(None);
        }
        Ok(Some(train::eval_loss(m, &qseqs, 4, o.threads)?.mean_loss))
    };
    let base_q_loss = query_loss(&m)?;
    let mut topts = TrainOptions::lora(o.lora_rank, 2.0 * o.lora_rank as f64, &o.lora_modules);
    topts.method = Method::Lora(LoraConfig {
        rank: o.lora_rank,
        alpha: 2.0 * o.lora_rank as f64,
        dropout: 0.0,
        modules: o.lora_modules.clone(),
    });
    topts.epochs = o.epochs;
    topts.lr = o.lr;
    topts.batch_size = 4;
    topts.grad_accum = 2;
    topts.seed = o.seed;
    topts.threads = o.threads;
    topts.save_every = train::steps_per_epoch(mix_seqs.len(), 4, 2);
    let ft = o.out.join("ft");
    let resume = train::checkpoint::latest(&ft).is_some();
    let td = TrainData {
        seqs: mix_seqs,
        identity: {
            let mut id = json!({"planted": popts, "max_tokens": o.max_tokens});
            o.truncate.record(&mut id);
            id
        },
    };
    reporter.start("fine-tune", 0);
    let summary = train::train(&mut m, &td, &topts, &ft, resume, &mut |r, total| {
        reporter.update("fine-tune", r.step, total, &format!("loss {:.3}", r.loss));
    });
    reporter.finish("fine-tune");
    let summary = summary.map_err(|e| {
        Error::Msg(format!(
            "fine-tuning in {} (a rerun continues this run: give the same settings, --threads included, or another --out): {e}",
            ft.display()
        ))
    })?;
    let ckpts = train::checkpoint::list(&ft);
    let Some((_, last)) = ckpts.last().cloned() else {
        return Err(Error::Msg(format!(
            "{}: fine-tuning left no checkpoint",
            ft.display()
        )));
    };
    m.llama.set_adapters(None);
    train::features::attach(&mut m, &last)?;
    let ft_q_loss = query_loss(&m)?;
    let generations = if kind == Kind::Mislabel {
        Vec::new()
    } else {
        attack(&m, &qsamples, o)?
    };

    // 3. Gradient features of the mix at the fine-tuned model (base Linears, LoGra), K-FAC.
    let iopts = mix_index(
        o,
        &written.mix,
        Projection::Logra {
            rank_in: o.rank,
            rank_out: o.rank,
        },
    );
    let store_dir = o.out.join("store");
    index(&m, &iopts, &store_dir, "index", reporter)?;
    let store = Store::open(&store_dir)?;
    let fisher = fit_curvature(&m, &iopts, &store, o, reporter)?;
    let rows = store.samples()?;
    // The store's rows are the mix in order; check rather than assume.
    if rows.len() != set.planted.len() || rows.iter().enumerate().any(|(i, r)| r.row != i as u64) {
        return Err(Error::Msg(format!(
            "{}: rows do not match the mix",
            store_dir.display()
        )));
    }
    // The amortized encoder, distilled from this store (mislabel needs a self-score, which a
    // cosine does not have).
    let distilled = if kind != Kind::Mislabel && o.methods.iter().any(|x| x == "encoder") {
        Some(distil(o, &m, &last, &store_dir, &written, reporter)?)
    } else {
        None
    };

    // 4. Scores and metrics per method.
    let mut results: Vec<MethodMetrics> = Vec::new();
    let options = methods::Options {
        curvature: crate::curvature::Options {
            damping: o.damping,
            ..Default::default()
        },
        ..Default::default()
    };
    for name in &o.methods {
        let method = methods::by_name(name)?;
        if kind == Kind::Mislabel {
            // Methods with no informative self-score are left out: cosine's is 1 by
            // definition; LESS and RepSim compare different feature kinds.
            if let Some(s) = method.self_scores(&store, &options)? {
                results.push(self_score_metrics(name, &s, &set.planted));
            }
            continue;
        }
        let nq = qsamples.len();
        let full: Vec<f32> = if name == "less" {
            less_scores(o, &ckpts, &written.mix, &qsamples, reporter)?
        } else {
            let n = store.n_samples();
            reporter.start(name, n);
            let progress = crate::index::Progress::default();
            // `encoder` scores the encoded mix, its queries through the same encoder; every
            // other method the gradient store. Both models are the fine-tuned one.
            let (scored_store, model) = match (&distilled, name.as_str()) {
                (Some(d), "encoder") => (d.store.as_path(), &d.model),
                _ => (store_dir.as_path(), &m),
            };
            let ctx = methods::Context {
                train: methods::TrainSet {
                    store: scored_store,
                    data: iopts.data.clone(),
                    read: iopts.read.clone(),
                    features: iopts.features.clone(),
                },
                model: Some(model),
                model_path: Some(&o.model),
                queries: &qsamples,
                queries_path: &written.queries,
                query_features: None,
                options: &options,
                top_k: 1,
                full: true,
                threads: o.threads,
                scratch: o.out.join("work"),
                progress: &progress,
                on_rows: &|d| reporter.update(name, d, n, ""),
            };
            let sc = method.score(&ctx);
            reporter.finish(name);
            sc?.result.full.unwrap_or_default()
        };
        let ac = retrieval::acc_cover(&full, nq, &set.planted);
        let mean = crate::scores::mean_over_queries(&full, nq);
        let auc = retrieval::auc(&mean, &set.planted);
        let ranks = crate::scores::ranks(&mean);
        let planted_ranks: Vec<u32> = ranks
            .iter()
            .zip(&set.planted)
            .filter(|(_, p)| **p)
            .map(|(r, _)| *r)
            .collect();
        results.push(MethodMetrics {
            name: name.clone(),
            value: json!({
                "acc": ac.acc, "cover": ac.cover, "k": ac.k, "auc": auc,
                "planted_ranks_by_mean_score": planted_ranks,
                "per_query": ac.per_query,
            }),
            acc: ac.acc,
            cover: ac.cover,
            auc,
        });
    }
    // Mislabel's loss baseline: flipped samples are hard to fit.
    if kind == Kind::Mislabel {
        let loss: Vec<f32> = rows.iter().map(|r| r.loss).collect();
        results.push(self_score_metrics("loss", &loss, &set.planted));
    }

    // 5. Report.
    let plots = plot(&o.out, kind, &results, &written)?;
    let report = json!({
        "kind": kind,
        "model": o.model,
        "data": o.data,
        "options": popts,
        "n_train": written.n_mix,
        "n_planted": written.n_planted,
        "n_queries": qsamples.len(),
        "fine_tune": {
            "epochs": o.epochs, "lr": o.lr, "lora_rank": o.lora_rank, "modules": o.lora_modules,
            "first_loss": summary.first_loss, "last_loss": summary.last_loss,
            "checkpoints": ckpts.iter().map(|c| &c.1).collect::<Vec<_>>(),
            "query_loss_before": base_q_loss, "query_loss_after": ft_q_loss,
        },
        "generations": generations,
        "attack_success_rate": if generations.is_empty() { None } else {
            Some(generations.iter().filter(|g| g["planted_behaviour"] == true).count() as f64 / generations.len() as f64)
        },
        "features": {"projection": "logra", "rank": o.rank, "modules": "all", "dim": store.dim()},
        "damping": o.damping,
        "encoder": distilled.as_ref().map(|d| encoder_entry(d, o)),
        "fisher": fisher,
        "factors": o.factors.to_string(),
        "metrics": results.iter().map(|r| (r.name.clone(), r.value.clone())).collect::<serde_json::Map<_, _>>(),
        "definitions": {
            "acc": "fraction of queries whose top-1 training sample is planted",
            "cover": "fraction of a query's top-k that is planted, k = number of planted samples",
            "auc": if kind == Kind::Mislabel { "AUC of the self-score s(z, z) for flipped vs clean samples" } else { "AUC of the mean score over queries for planted vs clean samples" },
            "sign": "larger = more attributed (helpfulness: up-weighting z lowers the query loss)",
        },
        "plots": plots,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    let path = o.out.join("report.json");
    crate::atomic_write::write_json(&path, &report)?;
    Ok(PlantedReport {
        kind,
        n_mix: written.n_mix,
        n_planted: written.n_planted,
        n_queries: qsamples.len(),
        query_loss_before: base_q_loss,
        query_loss_after: ft_q_loss,
        methods: results,
        path,
        json: report,
    })
}

/// Distils the mix's gradient store (at the fine-tuned model) into an encoder under
/// `out/distil/` with the queries as anchors (their teacher features indexed at the same
/// weights into `out/distil/query-store`) and encodes the mix with it. The trunk carries the
/// fine-tuned adapter `adapter`, so it sees the weights the teacher's gradients were taken at.
fn distil(
    o: &PlantedOptions,
    m: &LoadedModel,
    adapter: &Path,
    store_dir: &Path,
    written: &PlantedData,
    reporter: &dyn Reporter,
) -> Result<Distilled> {
    let dir = o.out.join("distil");
    let qstore = dir.join("query-store");
    let qopts = mix_index(
        o,
        &written.queries,
        Projection::Logra {
            rank_in: o.rank,
            rank_out: o.rank,
        },
    );
    index(m, &qopts, &qstore, "index (queries)", reporter)?;
    distil_and_encode(
        store_dir,
        Some(adapter),
        Some(&written.queries),
        Format::Alpaca,
        Some(&qstore),
        &o.encoder,
        &dir,
        o.threads,
        reporter,
    )
}

/// The encoder's entry in report.json: where it is, how it was made, and its agreement with
/// the teacher on held-out samples and queries.
fn encoder_entry(d: &Distilled, o: &PlantedOptions) -> Value {
    json!({
        "encoder": d.encoder,
        "store": d.store,
        "teacher": "the mix's LoGra store at the fine-tuned model (store/)",
        "trunk": format!("the first {} blocks of the fine-tuned model (base + the last checkpoint's LoRA adapter)", o.encoder.layers),
        "queries": "the planted queries are distillation anchors (their held-out share is in training.metrics.held_out_queries)",
        "pooling": o.encoder.pooling.to_string(),
        "hidden": o.encoder.hidden,
        "dim": o.encoder.dim,
        "distil": {"steps": o.encoder.distil.steps, "seed": o.encoder.distil.seed},
        "training": d.summary,
    })
}

/// Mislabel's metric: the AUC of a per-sample score (a self-score, or the loss) for flipped
/// vs clean samples.
fn self_score_metrics(name: &str, scores: &[f32], planted: &[bool]) -> MethodMetrics {
    let auc = retrieval::auc(scores, planted);
    MethodMetrics {
        name: name.into(),
        value: json!({ "self_score_auc": auc }),
        acc: f64::NAN,
        cover: f64::NAN,
        auc,
    }
}

/// Attack success: greedy answers to the first `o.generate` triggered queries, each marked
/// whether it starts like the planted response (backdoor) or an abusive one (harmful).
fn attack(m: &LoadedModel, qsamples: &[Sample], o: &PlantedOptions) -> Result<Vec<Value>> {
    let head = |s: &str| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let stop = super::generate::turn_stops(m);
    let r = Renderer::new(m, Template::Auto, o.max_tokens)?;
    let mut generations = Vec::new();
    for s in qsamples.iter().take(o.generate) {
        let (prompt, _) = r.render(&s.body)?;
        let ids = m.encode(&prompt)?;
        let gen = m.decode(&m.llama.generate_greedy_cached(&ids, 24, &stop)?)?;
        let answer = gen.trim_start();
        let hit = match o.kind {
            Kind::Backdoor => answer.starts_with(&head(s.body.response())),
            _ => planted::ABUSIVE
                .iter()
                .any(|x| answer.starts_with(&head(x))),
        };
        generations.push(json!({"id": s.id, "answer": gen, "planted_behaviour": hit}));
    }
    Ok(generations)
}

/// The curvature the influence methods use: the store's Fisher (empirical, or one draw of
/// sampled-label pseudo-gradients indexed beside it) recorded, and K-FAC factors fitted on it
/// when K-FAC/EK-FAC are asked for.
fn fit_curvature(
    m: &LoadedModel,
    iopts: &IndexOptions,
    store: &Store,
    o: &PlantedOptions,
    reporter: &dyn Reporter,
) -> Result<Fisher> {
    let samples = match o.fisher {
        Fisher::Empirical => FisherSamples::empirical(store)?,
        Fisher::True { .. } => super::fit::fisher_draws(m, iopts, store, 1, reporter)?,
    };
    let needs_fit =
        |x: &String| methods::by_name(x).is_ok_and(|m| m.needs().contains(&Need::Curvature));
    if o.methods.iter().any(needs_fit) {
        // Fitting records the Fisher too.
        crate::curvature::kfac::fit_with(store, &samples, o.factors)?;
    } else {
        fi::record(store, samples.fisher)?;
    }
    Ok(samples.fisher)
}

/// `acc.png`, `cover.png`, `auc.png` (mislabel: `auc.png` only): bars per method.
fn plot(
    out: &Path,
    kind: Kind,
    results: &[MethodMetrics],
    written: &PlantedData,
) -> Result<Vec<PathBuf>> {
    let labels: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
    type Metric = fn(&MethodMetrics) -> f64;
    let metrics: Vec<(&str, Metric)> = if kind == Kind::Mislabel {
        vec![("auc", |r| r.auc)]
    } else {
        vec![
            ("acc", |r| r.acc),
            ("cover", |r| r.cover),
            ("auc", |r| r.auc),
        ]
    };
    let mut plots = Vec::new();
    for (metric, value) in metrics {
        let p = out.join(format!("{metric}.png"));
        let values: Vec<f64> = results.iter().map(value).collect();
        crate::eval::plot::bars(
            &p,
            &labels,
            &values,
            metric,
            &format!(
                "planted {kind}: {metric} per method ({} of {} planted)",
                written.n_planted, written.n_mix
            ),
        )?;
        plots.push(p);
    }
    Ok(plots)
}

/// LESS over the fine-tuning checkpoints: Adam-update LoRA features of the mix per checkpoint,
/// SGD LoRA-gradient features of the queries, Σ_c η_c cos (METHODS.md §2).
fn less_scores(
    o: &PlantedOptions,
    ckpts: &[(usize, PathBuf)],
    mix: &Path,
    queries: &[Sample],
    reporter: &dyn Reporter,
) -> Result<Vec<f32>> {
    let opts = mix_index(o, mix, Projection::Dense { dim: 2048 });
    let mut dirs = Vec::new();
    for (step, ck) in ckpts {
        let dir = o.out.join(format!("less/step-{step}"));
        at_checkpoint(
            &o.model,
            ck,
            &opts,
            &FeatureSource::Lora(LoraGradient::Adam(Default::default())),
            &dir,
            &format!("LESS step {step}"),
            reporter,
        )?;
        dirs.push(dir);
    }
    let (full, _) = crate::scores::checkpoints::score(
        &dirs,
        Some(&o.model),
        queries,
        crate::scores::checkpoints::CheckpointMethod::Less,
        o.threads,
    )?;
    Ok(full)
}
