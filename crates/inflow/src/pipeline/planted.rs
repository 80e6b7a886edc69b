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
use crate::model::LoadedModel;
use crate::store::{Dtype, Store};
use crate::train::features::{FeatureSource, LoraGradient};
use crate::train::{self, TrainData, TrainOptions};
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
    /// Held-out queries the fine-tuned model answers (attack success, and the queries of the
    /// paper's setting); class answers all its queries.
    pub generate: usize,
    /// Train epoch by epoch until the behaviour fires, or all `epochs`.
    pub until: Until,
    /// Least attack success at which retrieval is reported (backdoor, harmful).
    pub min_attack_success: f64,
    /// Report retrieval even below `min_attack_success`.
    pub force_retrieval: bool,
    /// class: tasks in the mix.
    pub n_tasks: usize,
    /// Also index and score at every earlier epoch checkpoint (retrieval along training; all
    /// methods but `less` and `encoder`), with the queries of the last one.
    pub trajectory: bool,
    /// The encoder distilled from the mix's store when `encoder` is among the methods.
    pub encoder: EncoderSettings,
    /// Worker threads.
    pub threads: usize,
}

/// How long `eval planted` fine-tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Until {
    /// Epoch by epoch, until the greedy answers to the held-out queries show the behaviour at
    /// least `min_attack_success` of the time (at most `epochs`); kinds without a behaviour
    /// train all epochs.
    Fires,
    /// All `epochs`.
    Epochs,
}

crate::error::names!(Until: "--until", Fires = "fires", Epochs = "epochs");

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
    /// Per method, in the order asked, against the queries with the planted (class: reference)
    /// response (mislabel: methods with a self-score, then `loss`).
    pub methods: Vec<MethodMetrics>,
    /// Per method against the fine-tuned model's own answers that show the behaviour (the
    /// paper's setting; class: all non-empty answers); empty when there are none, or for
    /// mislabel.
    pub methods_generated: Vec<MethodMetrics>,
    /// Queries among them.
    pub n_generated: usize,
    /// Attack success of the model the retrieval ran at (backdoor, harmful).
    pub attack_success: Option<f64>,
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
    popts.n_tasks = o.n_tasks;
    let set = planted::build(&pool, &popts)?;
    let written = PlantedData {
        mix: o.out.join("mix.jsonl"),
        n_mix: set.mix.len(),
        n_planted: set.planted.iter().filter(|p| **p).count(),
        queries: o.out.join("queries.jsonl"),
    };
    planted::write_records(&written.mix, &set.mix)?;
    planted::write_records(&written.queries, &set.queries)?;
    reporter.note(&if o.kind == Kind::Class {
        format!(
            "class: {} samples of {} tasks; {} queries",
            written.n_mix,
            set.tasks.len(),
            set.queries.len()
        )
    } else {
        format!(
            "planted {} of {} samples ({}); {} queries",
            written.n_planted,
            written.n_mix,
            o.kind,
            set.queries.len()
        )
    });
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

/// One checkpoint of the fine-tuning: its step, epoch and (backdoor, harmful) how often the
/// greedy answers to the held-out queries show the behaviour.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointBehaviour {
    pub step: usize,
    pub epoch: usize,
    pub attack_success: Option<f64>,
    pub answers: Vec<Value>,
}

/// Runs the whole experiment (see the module doc) and writes report.json and the plots.
pub fn run(o: &PlantedOptions, reporter: &dyn Reporter) -> Result<PlantedReport> {
    check_methods(&o.methods)?;
    if !(0.0..=1.0).contains(&o.min_attack_success) {
        return Err(Error::Msg(format!(
            "--min-attack-success {} must be in [0, 1]",
            o.min_attack_success
        )));
    }
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
    let answered: &[Sample] = if kind == Kind::Class {
        &qsamples
    } else {
        &qsamples[..o.generate.min(qsamples.len())]
    };
    let ft = o.out.join("ft");
    let td = TrainData {
        seqs: mix_seqs,
        identity: {
            let mut id = json!({"planted": popts, "max_tokens": o.max_tokens});
            o.truncate.record(&mut id);
            id
        },
    };
    let (trajectory, last) = fine_tune(o, &mut m, &td, &ft, answered, reporter)?;
    let log = train::log::read_log(&ft)?;
    let last_step = trajectory.last().map_or(0, |c| c.step);
    let ckpts: Vec<(usize, PathBuf)> = train::checkpoint::list(&ft)
        .into_iter()
        .filter(|(s, _)| *s <= last_step)
        .collect();
    m.llama.set_adapters(None);
    train::features::attach(&mut m, &last)?;
    let ft_q_loss = query_loss(&m)?;
    let fired = trajectory.last().and_then(|c| c.attack_success);
    let generations = trajectory
        .last()
        .map(|c| c.answers.clone())
        .unwrap_or_default();
    let fine_tune_entry = json!({
        "epochs": o.epochs, "until": o.until, "lr": o.lr, "lora_rank": o.lora_rank,
        "modules": o.lora_modules,
        "first_loss": log.first().map(|r| r.loss),
        "last_loss": log.iter().take_while(|r| r.step <= last_step).last().map(|r| r.loss),
        "steps": last_step,
        "checkpoints": ckpts.iter().map(|c| &c.1).collect::<Vec<_>>(),
        "query_loss_before": base_q_loss, "query_loss_after": ft_q_loss,
        "attack_success_per_checkpoint": trajectory.iter().map(|c| json!({
            "step": c.step, "epoch": c.epoch, "attack_success": c.attack_success,
        })).collect::<Vec<_>>(),
    });
    crate::atomic_write::write_json(
        &o.out.join("fine-tune.json"),
        &json!({"fine_tune": fine_tune_entry, "trajectory": trajectory}),
    )?;
    // The paper's setting: retrieval is only meaningful on a model that shows the behaviour.
    if let Some(asr) = fired {
        if asr < o.min_attack_success && !o.force_retrieval {
            return Err(Error::NotLearned {
                attack_success: asr,
                msg: format!(
                "the fine-tuned model shows the planted {kind} behaviour in {:.0}% of its answers \
                 to held-out queries (per epoch: {}), under --min-attack-success {:.0}%: it did not \
                 learn the behaviour, so retrieval would not attribute one. Train longer or harder \
                 (--epochs, --lr, --lora-rank, --lora-modules; a rerun continues the fine-tuning \
                 in {}), or pass --force-retrieval to report it anyway (answers in {})",
                100.0 * asr,
                trajectory
                    .iter()
                    .map(|c| format!("{:.0}%", 100.0 * c.attack_success.unwrap_or(0.0)))
                    .collect::<Vec<_>>()
                    .join(", "),
                100.0 * o.min_attack_success,
                ft.display(),
                o.out.join("fine-tune.json").display()
            ),
            });
        }
    }
    // The model's own answers as queries: those that show the behaviour (class: every non-empty
    // answer).
    let generated_path = o.out.join("queries-generated.jsonl");
    let (gen_records, gen_class): (Vec<_>, Vec<usize>) = answered
        .iter()
        .zip(&generations)
        .enumerate()
        // An empty answer has no response token to score.
        .filter(|(_, (_, g))| {
            (kind == Kind::Class || g["planted_behaviour"] == true)
                && !g["answer"].as_str().unwrap_or_default().trim().is_empty()
        })
        .map(|(i, (_, g))| {
            let mut r = set.queries[i].clone();
            let answer = g["answer"].as_str().unwrap_or_default().trim().to_string();
            r.insert("output".into(), Value::String(answer));
            r.insert("generated".into(), Value::Bool(true));
            (r, set.query_class.get(i).copied().unwrap_or(0))
        })
        .unzip();
    planted::write_records(&generated_path, &gen_records)?;
    let gen_samples = if gen_records.is_empty() {
        Vec::new()
    } else {
        read_samples(&generated_path, &alpaca())?.samples
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

    // 4. Scores and metrics per method, for each query set.
    let scoring = Scoring {
        o,
        methods: &o.methods,
        model: &m,
        store: &store,
        store_dir: &store_dir,
        iopts: &iopts,
        ckpts: &ckpts,
        written: &written,
        distilled: distilled.as_ref(),
        set: &set,
        reporter,
    };
    let mut results: Vec<MethodMetrics> = Vec::new();
    let mut results_generated: Vec<MethodMetrics> = Vec::new();
    if kind == Kind::Mislabel {
        let options = scoring.options();
        for name in &o.methods {
            // Methods with no informative self-score are left out: cosine's is 1 by
            // definition; LESS and RepSim compare different feature kinds.
            if let Some(s) = methods::by_name(name)?.self_scores(&store, &options)? {
                results.push(self_score_metrics(name, &s, &set.planted));
            }
        }
        // Mislabel's loss baseline: flipped samples are hard to fit.
        let loss: Vec<f32> = rows.iter().map(|r| r.loss).collect();
        results.push(self_score_metrics("loss", &loss, &set.planted));
    } else {
        results = scoring.query_set(&qsamples, &written.queries, &set.query_class, "", "work")?;
        if !gen_samples.is_empty() {
            results_generated = scoring.query_set(
                &gen_samples,
                &generated_path,
                &gen_class,
                " (answers)",
                "work-answers",
            )?;
        }
    }

    // 4b. Retrieval at every earlier checkpoint, with the same queries.
    let along = if o.trajectory && kind.has_queries() {
        let queries = [
            (
                &qsamples[..],
                written.queries.as_path(),
                &set.query_class[..],
            ),
            (&gen_samples[..], generated_path.as_path(), &gen_class[..]),
        ];
        let earlier: Vec<&(usize, PathBuf)> =
            ckpts.iter().filter(|(s, _)| *s < last_step).collect();
        let mut along = Vec::new();
        for (step, dir) in earlier {
            along.push(retrieval_at(&scoring, *step, dir, &queries)?);
        }
        along.push((last_step, results.clone(), results_generated.clone()));
        along
    } else {
        Vec::new()
    };

    // 5. Report.
    let mut plots = plot(&o.out, kind, &results, &written, "")?;
    if !results_generated.is_empty() {
        plots.extend(plot(
            &o.out,
            kind,
            &results_generated,
            &written,
            "generated",
        )?);
    }
    let by_name = |rs: &[MethodMetrics]| {
        rs.iter()
            .map(|r| (r.name.clone(), r.value.clone()))
            .collect::<serde_json::Map<_, _>>()
    };
    plots.extend(plot_along(&o.out, kind, &along, &trajectory)?);
    let along_json: Vec<Value> = along
        .iter()
        .map(|(step, r, g)| {
            let at = trajectory.iter().find(|c| c.step == *step);
            json!({
                "step": step,
                "epoch": at.map(|c| c.epoch),
                "attack_success": at.and_then(|c| c.attack_success),
                "metrics": by_name(r),
                "metrics_generated": by_name(g),
            })
        })
        .collect();
    let report = json!({
        "kind": kind,
        "model": o.model,
        "data": o.data,
        "options": popts,
        "n_train": written.n_mix,
        "n_planted": written.n_planted,
        "n_queries": qsamples.len(),
        "tasks": set.tasks,
        "fine_tune": fine_tune_entry,
        "generations": generations,
        "attack_success_rate": fired,
        "min_attack_success": o.min_attack_success,
        "forced": fired.is_some_and(|a| a < o.min_attack_success),
        "features": {"projection": "logra", "rank": o.rank, "modules": "all", "dim": store.dim()},
        "damping": o.damping,
        "encoder": distilled.as_ref().map(|d| encoder_entry(d, o)),
        "fisher": fisher,
        "factors": o.factors.to_string(),
        "metrics": by_name(&results),
        "n_generated": gen_samples.len(),
        "along_training": along_json,
        "metrics_generated": if results_generated.is_empty() { Value::Null } else { Value::Object(by_name(&results_generated)) },
        "query_sets": {
            "metrics": if kind == Kind::Class { "held-out queries with their reference responses (queries.jsonl)" } else { "held-out queries with the planted response (queries.jsonl)" },
            "metrics_generated": if kind == Kind::Class { "the fine-tuned model's greedy answers to the held-out queries (queries-generated.jsonl)" } else { "the fine-tuned model's greedy answers that show the behaviour (queries-generated.jsonl): the paper's setting" },
        },
        "definitions": {
            "acc": if kind == Kind::Class { "fraction of queries whose top-1 training sample is of the query's task" } else { "fraction of queries whose top-1 training sample is planted" },
            "cover": if kind == Kind::Class { "fraction of a query's top-k of its task, k = n_train / n_tasks" } else { "fraction of a query's top-k that is planted, k = number of planted samples" },
            "auc": match kind {
                Kind::Mislabel => "AUC of the self-score s(z, z) for flipped vs clean samples",
                Kind::Class => "mean over queries of the AUC of the query's scores, its task's samples vs the others",
                _ => "AUC of the mean score over queries for planted vs clean samples",
            },
            "attack_success": "fraction of greedy answers to held-out queries that start like the planted response (backdoor) or use a word of the abusive style (harmful)",
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
        methods_generated: results_generated,
        n_generated: gen_samples.len(),
        attack_success: fired,
        path,
        json: report,
    })
}

/// Fine-tunes epoch by epoch (a checkpoint per epoch), answering the held-out queries at each
/// checkpoint, until the behaviour fires (`Until::Fires`) or all epochs ran. A rerun continues
/// the run in `ft` and answers again at its checkpoints (greedy, so the same answers). Returns
/// the behaviour per checkpoint and the checkpoint the experiment continues at; the model is
/// left without adapters.
fn fine_tune(
    o: &PlantedOptions,
    m: &mut LoadedModel,
    td: &TrainData,
    ft: &Path,
    answered: &[Sample],
    reporter: &dyn Reporter,
) -> Result<(Vec<CheckpointBehaviour>, PathBuf)> {
    let mut topts = TrainOptions::lora(o.lora_rank, 2.0 * o.lora_rank as f64, &o.lora_modules);
    topts.epochs = o.epochs;
    topts.lr = o.lr;
    topts.batch_size = 4;
    topts.grad_accum = 2;
    topts.seed = o.seed;
    topts.threads = o.threads;
    let spe = train::steps_per_epoch(td.seqs.len(), 4, 2);
    topts.save_every = spe;
    let mut trajectory = Vec::new();
    // Checkpoints already past an epoch are used without training: they must be this run's.
    train::check_same_run(m, td, &topts, ft)?;
    // Attaching a checkpoint extends the model's identity; training continues from the base's.
    let base_sha = m.source.sha256.clone();
    for epoch in 1..=o.epochs {
        let target = epoch * spe;
        let have = train::checkpoint::latest(ft).map_or(0, |(s, _)| s);
        if have < target {
            topts.stop_after = Some(target);
            m.llama.set_adapters(None);
            reporter.start("fine-tune", 0);
            let r = train::train(m, td, &topts, ft, have > 0, &mut |r, total| {
                reporter.update("fine-tune", r.step, total, &format!("loss {:.3}", r.loss));
            });
            reporter.finish("fine-tune");
            r.map_err(|e| {
                Error::Msg(format!(
                    "fine-tuning in {} (a rerun continues this run: give the same settings, \
                     --threads included, or another --out): {e}",
                    ft.display()
                ))
            })?;
        }
        let dir = train::checkpoint::checkpoint_dir(ft, target);
        if !dir.exists() {
            return Err(Error::Msg(format!(
                "{}: the fine-tuning left no checkpoint at the end of epoch {epoch}",
                dir.display()
            )));
        }
        let behaviour = o.kind.has_behaviour() || o.kind == Kind::Class;
        let answers = if behaviour && (o.kind.has_behaviour() || epoch == o.epochs) {
            train::features::attach(m, &dir)?;
            let a = answer(m, answered, o);
            m.llama.set_adapters(None);
            m.source.sha256 = base_sha.clone();
            a?
        } else {
            Vec::new()
        };
        let asr = (o.kind.has_behaviour() && !answers.is_empty()).then(|| {
            answers
                .iter()
                .filter(|g| g["planted_behaviour"] == true)
                .count() as f64
                / answers.len() as f64
        });
        if let Some(a) = asr {
            reporter.note(&format!(
                "epoch {epoch}: attack success {:.0}% ({} answers)",
                100.0 * a,
                answers.len()
            ));
        }
        trajectory.push(CheckpointBehaviour {
            step: target,
            epoch,
            attack_success: asr,
            answers,
        });
        let fired = asr.is_some_and(|a| a >= o.min_attack_success);
        if o.until == Until::Fires && fired {
            return Ok((trajectory, dir));
        }
    }
    let dir = train::checkpoint::checkpoint_dir(ft, o.epochs * spe);
    Ok((trajectory, dir))
}

/// What scoring a query set needs of the experiment.
#[derive(Clone, Copy)]
struct Scoring<'a> {
    o: &'a PlantedOptions,
    methods: &'a [String],
    model: &'a LoadedModel,
    store: &'a Store,
    store_dir: &'a Path,
    iopts: &'a IndexOptions,
    ckpts: &'a [(usize, PathBuf)],
    written: &'a PlantedData,
    distilled: Option<&'a Distilled>,
    set: &'a PlantedSet,
    reporter: &'a dyn Reporter,
}

impl Scoring<'_> {
    fn options(&self) -> methods::Options {
        methods::Options {
            curvature: crate::curvature::Options {
                damping: self.o.damping,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Every method's metrics against the queries `qsamples` (read from `qpath`; of classes
    /// `qclass` for the class kind). `label` tells the progress bars apart; the methods'
    /// resumable work (ICP, one-step) goes to OUT/`scratch`, one folder per query set.
    fn query_set(
        &self,
        qsamples: &[Sample],
        qpath: &Path,
        qclass: &[usize],
        label: &str,
        scratch: &str,
    ) -> Result<Vec<MethodMetrics>> {
        let (o, reporter) = (self.o, self.reporter);
        let options = self.options();
        let nq = qsamples.len();
        let mut results = Vec::new();
        for name in self.methods {
            let method = methods::by_name(name)?;
            let bar = format!("{name}{label}");
            let full: Vec<f32> = if name == "less" {
                less_scores(o, self.ckpts, &self.written.mix, qsamples, reporter)?
            } else {
                let n = self.store.n_samples();
                reporter.start(&bar, n);
                let progress = crate::index::Progress::default();
                // `encoder` scores the encoded mix, its queries through the same encoder; every
                // other method the gradient store. Both models are the fine-tuned one.
                let (scored_store, model) = match (self.distilled, name.as_str()) {
                    (Some(d), "encoder") => (d.store.as_path(), &d.model),
                    _ => (self.store_dir, self.model),
                };
                let ctx = methods::Context {
                    train: methods::TrainSet {
                        store: scored_store,
                        data: self.iopts.data.clone(),
                        read: self.iopts.read.clone(),
                        features: self.iopts.features.clone(),
                    },
                    model: Some(model),
                    model_path: Some(&o.model),
                    queries: qsamples,
                    queries_path: qpath,
                    query_features: None,
                    options: &options,
                    top_k: 1,
                    full: true,
                    threads: o.threads,
                    scratch: o.out.join(scratch),
                    progress: &progress,
                    on_rows: &|d| reporter.update(&bar, d, n, ""),
                };
                let sc = method.score(&ctx);
                reporter.finish(&bar);
                sc?.result.full.unwrap_or_default()
            };
            results.push(self.metrics(name, &full, nq, qclass));
        }
        Ok(results)
    }

    fn metrics(&self, name: &str, full: &[f32], nq: usize, qclass: &[usize]) -> MethodMetrics {
        let set = self.set;
        let (ac, auc, extra) = if self.o.kind == Kind::Class {
            let ac = retrieval::acc_cover_classes(full, &set.mix_class, qclass);
            let auc = retrieval::auc_classes(full, &set.mix_class, qclass);
            (ac, auc, json!({}))
        } else {
            let ac = retrieval::acc_cover(full, nq, &set.planted);
            let mean = crate::scores::mean_over_queries(full, nq);
            let auc = retrieval::auc(&mean, &set.planted);
            let ranks = crate::scores::ranks(&mean);
            let planted_ranks: Vec<u32> = ranks
                .iter()
                .zip(&set.planted)
                .filter(|(_, p)| **p)
                .map(|(r, _)| *r)
                .collect();
            (
                ac,
                auc,
                json!({ "planted_ranks_by_mean_score": planted_ranks }),
            )
        };
        let mut value = json!({
            "acc": ac.acc, "cover": ac.cover, "k": ac.k, "auc": auc,
            "per_query": ac.per_query,
        });
        if let (Value::Object(v), Value::Object(e)) = (&mut value, extra) {
            v.extend(e);
        }
        MethodMetrics {
            name: name.into(),
            value,
            acc: ac.acc,
            cover: ac.cover,
            auc,
        }
    }
}

/// Retrieval at one checkpoint: its step, the metrics against the planted-response and the
/// generated queries.
type Along = (usize, Vec<MethodMetrics>, Vec<MethodMetrics>);

/// A query set: its samples, their file, and (class) their task index.
type QuerySet<'a> = (&'a [Sample], &'a Path, &'a [usize]);

/// Retrieval with the model at the checkpoint `dir` (step `step`): the mix indexed there into
/// OUT/store-step-N, its curvature fitted, and every method but `less` and `encoder` scored
/// on both query sets (the answers set only when it has queries).
fn retrieval_at(sc: &Scoring, step: usize, dir: &Path, queries: &[QuerySet; 2]) -> Result<Along> {
    let o = sc.o;
    let mut m = load_model(&o.model, sc.reporter)?;
    train::features::attach(&mut m, dir)?;
    let sdir = o.out.join(format!("store-step-{step}"));
    index(
        &m,
        sc.iopts,
        &sdir,
        &format!("index (step {step})"),
        sc.reporter,
    )?;
    let store = Store::open(&sdir)?;
    fit_curvature(&m, sc.iopts, &store, o, sc.reporter)?;
    let methods: Vec<String> = o
        .methods
        .iter()
        .filter(|x| *x != "less" && *x != "encoder")
        .cloned()
        .collect();
    let at = Scoring {
        methods: &methods,
        model: &m,
        store: &store,
        store_dir: &sdir,
        distilled: None,
        ..*sc
    };
    let [(rq, rp, rc), (gq, gp, gc)] = queries;
    let (label, work) = (format!(" (step {step})"), format!("work-step-{step}"));
    let r = at.query_set(rq, rp, rc, &label, &work)?;
    let g = if gq.is_empty() {
        Vec::new()
    } else {
        let label = format!(" (answers, step {step})");
        at.query_set(gq, gp, gc, &label, &format!("{work}-answers"))?
    };
    Ok((step, r, g))
}

/// `along-{acc,cover}[-generated].png`: each method's figure per epoch along training.
fn plot_along(
    out: &Path,
    kind: Kind,
    along: &[Along],
    trajectory: &[CheckpointBehaviour],
) -> Result<Vec<PathBuf>> {
    if along.len() < 2 {
        return Ok(Vec::new());
    }
    let epochs: Vec<f64> = along
        .iter()
        .map(|(step, _, _)| {
            trajectory
                .iter()
                .find(|c| c.step == *step)
                .map_or(f64::NAN, |c| c.epoch as f64)
        })
        .collect();
    let mut plots = Vec::new();
    type Set = fn(&Along) -> &[MethodMetrics];
    type Metric = fn(&MethodMetrics) -> f64;
    let sets: [(&str, &str, Set); 2] = [
        ("", "planted-response", |a| &a.1),
        ("-generated", "generated", |a| &a.2),
    ];
    for (tag, what, of) in sets {
        let names: Vec<String> = along
            .last()
            .map(|a| of(a).iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        if names.is_empty() {
            continue;
        }
        let metrics: [(&str, Metric); 2] = [("acc", |m| m.acc), ("cover", |m| m.cover)];
        for (metric, value) in metrics {
            let series: Vec<(String, Vec<f64>)> = names
                .iter()
                .map(|n| {
                    let ys = along
                        .iter()
                        .map(|a| of(a).iter().find(|m| &m.name == n).map_or(f64::NAN, value))
                        .collect();
                    (n.clone(), ys)
                })
                .collect();
            let p = out.join(format!("along-{metric}{tag}.png"));
            crate::eval::plot::lines(
                &p,
                &epochs,
                &series,
                "epoch (checkpoint)",
                metric,
                &format!("planted {kind}: {metric} along training, {what} queries"),
            )?;
            plots.push(p);
        }
    }
    Ok(plots)
}

/// Mean ± sd over seeds of one figure (sample sd, n − 1; 0 for one value), with the values.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub values: Vec<f64>,
}

impl Spread {
    fn of(values: Vec<f64>) -> Self {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else if v.len() == 1 {
            0.0
        } else {
            f64::NAN
        };
        Self { mean, sd, values }
    }
}

/// One method's figures over seeds against one query set.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRow {
    /// `planted response` (class: `reference response`) or `answers` (the model's own).
    pub queries: String,
    pub method: String,
    pub acc: Spread,
    pub cover: Spread,
    pub auc: Spread,
}

/// What [`run_seeds`] measured, and OUT/report.json as written.
#[derive(Debug, Clone)]
pub struct SeedsReport {
    pub kind: Kind,
    /// The seeds averaged over: those whose model learned the behaviour.
    pub seeds: Vec<u64>,
    /// Seeds left out because their model did not (listed in report.json's `refused`).
    pub refused: usize,
    pub attack_success: Option<Spread>,
    pub rows: Vec<SeedRow>,
    pub path: PathBuf,
    pub json: Value,
}

/// The experiment once per seed (a different planted subset, LoRA initialisation and data
/// order; class: other tasks and records) in OUT/seed-S, then mean ± sd of every figure over
/// the seeds in OUT/report.json and bar charts of the means (`*-mean.png`). A seed whose model
/// does not learn the behaviour is left out of the means and listed under `refused`.
pub fn run_seeds(
    o: &PlantedOptions,
    seeds: &[u64],
    reporter: &dyn Reporter,
) -> Result<SeedsReport> {
    if seeds.is_empty() {
        return Err(Error::Msg("--seeds: no seed given".into()));
    }
    check_methods(&o.methods)?;
    let (mut runs, mut refused) = (Vec::new(), Vec::new());
    let mut used = Vec::new();
    for &seed in seeds {
        reporter.note(&format!("seed {seed}"));
        let mut os = o.clone();
        os.seed = seed;
        os.out = o.out.join(format!("seed-{seed}"));
        // A seed whose model did not learn the behaviour is reported, not averaged in.
        match run(&os, reporter) {
            Ok(r) => {
                runs.push(r);
                used.push(seed);
            }
            Err(Error::NotLearned {
                attack_success,
                msg,
            }) => {
                reporter.note(&format!("seed {seed} left out: {msg}"));
                refused.push(json!({
                    "seed": seed,
                    "attack_success": attack_success,
                    "fine_tune": os.out.join("fine-tune.json"),
                }));
            }
            Err(e) => return Err(e),
        }
    }
    if runs.is_empty() {
        return Err(Error::Msg(format!(
            "no seed of {seeds:?} gave a model that shows the planted {} behaviour at \
             --min-attack-success {:.0}% (each seed's fine-tune.json under {} has its answers); \
             train longer or harder, or pass --force-retrieval",
            o.kind,
            100.0 * o.min_attack_success,
            o.out.display()
        )));
    }
    let reference = if o.kind == Kind::Class {
        "reference response"
    } else {
        "planted response"
    };
    let mut rows = Vec::new();
    type Of = fn(&PlantedReport) -> &[MethodMetrics];
    let sets: [(&str, Of); 2] = [
        (reference, |r| &r.methods),
        ("answers", |r| &r.methods_generated),
    ];
    for (queries, of) in sets {
        let names: Vec<String> = runs
            .first()
            .map(|r| of(r).iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let pick = |f: fn(&MethodMetrics) -> f64| {
                Spread::of(
                    runs.iter()
                        .map(|r| of(r).iter().find(|m| m.name == name).map_or(f64::NAN, f))
                        .collect(),
                )
            };
            rows.push(SeedRow {
                queries: queries.into(),
                method: name.clone(),
                acc: pick(|m| m.acc),
                cover: pick(|m| m.cover),
                auc: pick(|m| m.auc),
            });
        }
    }
    let attack_success = o.kind.has_behaviour().then(|| {
        Spread::of(
            runs.iter()
                .map(|r| r.attack_success.unwrap_or(f64::NAN))
                .collect(),
        )
    });
    let mut plots = Vec::new();
    for (queries, tag) in [(reference, ""), ("answers", "-generated")] {
        let sub: Vec<&SeedRow> = rows.iter().filter(|r| r.queries == queries).collect();
        if sub.is_empty() {
            continue;
        }
        let labels: Vec<String> = sub.iter().map(|r| r.method.clone()).collect();
        type Pick = fn(&SeedRow) -> &Spread;
        let figures: [(&str, Pick); 3] = [
            ("acc", |r| &r.acc),
            ("cover", |r| &r.cover),
            ("auc", |r| &r.auc),
        ];
        for (metric, pick) in figures {
            let p = o.out.join(format!("{metric}{tag}-mean.png"));
            let values: Vec<f64> = sub.iter().map(|r| pick(r).mean).collect();
            crate::eval::plot::bars(
                &p,
                &labels,
                &values,
                metric,
                &format!(
                    "planted {}, {queries} queries: mean {metric} over {} seeds",
                    o.kind,
                    used.len()
                ),
            )?;
            plots.push(p);
        }
    }
    let json = json!({
        "kind": o.kind,
        "seeds": used,
        "refused": refused,
        "runs": runs.iter().map(|r| &r.path).collect::<Vec<_>>(),
        "attack_success": attack_success,
        "n_generated": runs.iter().map(|r| r.n_generated).collect::<Vec<_>>(),
        "steps": runs.iter().map(|r| r.json["fine_tune"]["steps"].clone()).collect::<Vec<_>>(),
        "rows": rows,
        "plots": plots,
        "sd": "sample standard deviation over seeds (n − 1)",
    });
    let path = o.out.join("report.json");
    crate::atomic_write::write_json(&path, &json)?;
    Ok(SeedsReport {
        kind: o.kind,
        seeds: used,
        refused: refused.len(),
        attack_success,
        rows,
        path,
        json,
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

/// Greedy answers (up to 48 new tokens) to `qsamples`, each marked whether it shows the
/// planted behaviour ([`planted::shows_behaviour`]).
fn answer(m: &LoadedModel, qsamples: &[Sample], o: &PlantedOptions) -> Result<Vec<Value>> {
    let stop = super::generate::turn_stops(m);
    let r = Renderer::new(m, Template::Auto, o.max_tokens)?.with_truncate(o.truncate);
    let mut answers = Vec::new();
    for s in qsamples {
        let (prompt, _) = r.render(&s.body)?;
        let ids = m.encode(&prompt)?;
        let gen = m.decode(&m.llama.generate_greedy_cached(&ids, 48, &stop)?)?;
        let hit = planted::shows_behaviour(o.kind, &gen, s.body.response());
        answers.push(json!({"id": s.id, "answer": gen, "planted_behaviour": hit}));
    }
    Ok(answers)
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
    set: &str,
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
        let p = if set.is_empty() {
            out.join(format!("{metric}.png"))
        } else {
            out.join(format!("{metric}-{set}.png"))
        };
        let values: Vec<f64> = results.iter().map(value).collect();
        crate::eval::plot::bars(
            &p,
            &labels,
            &values,
            metric,
            &format!(
                "planted {kind}{}: {metric} per method ({} of {} planted)",
                if set.is_empty() {
                    String::new()
                } else {
                    format!(", {set} queries")
                },
                written.n_planted,
                written.n_mix
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
    let mut opts = mix_index(o, mix, Projection::Dense { dim: 2048 });
    // The dense projection is regenerated per batch (D × 2048 draws, D = the LoRA parameters):
    // batches of 4 pay for it once per 4 samples (16 ran out of memory on 24 GB with the
    // captures of LoRA on all 210 Linears).
    opts.batch_size = 4;
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
