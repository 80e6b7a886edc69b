//! The one registry of scoring methods: every name a user can give to `score --method`,
//! `eval lds --methods`, `eval planted --methods` or `select --seed-method`, what each needs,
//! and how it turns queries into an nq × n matrix of scores against a training set.
//!
//! Adding a method is one file implementing [`Method`] (or, for a plain feature-space
//! estimator, one [`crate::estimators::Estimator`] file) plus one line in [`REGISTRY`].
//! [`register`] adds a method at run time (plugins, tests); it is then found by every
//! pipeline exactly like a built-in one.

mod checkpoint;
mod encoder;
mod influence;
mod probe;
mod similarity;

pub use checkpoint::CheckpointMethod;
pub use encoder::EncoderMethod;
pub use influence::InfluenceMethod;
pub use probe::ProbeScorer;
pub use similarity::Similarity;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::curvature;
use crate::data::{ReadOptions, Sample};
use crate::index::{FeatureOptions, Progress};
use crate::model::LoadedModel;
use crate::store::SampleRow;
use crate::{Error, Result};

/// What a method needs before it can score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Need {
    /// A gradient store of the training set (`inflow index`).
    Store,
    /// Curvature fitted on that store (`inflow fit`).
    Curvature,
    /// One store per training checkpoint (`inflow index --checkpoints`).
    Checkpoints,
    /// The model itself, run on (demonstration, query) pairs: no store needed.
    Model,
}

impl Need {
    /// Its name in listings (as serialized).
    pub fn name(self) -> &'static str {
        match self {
            Need::Store => "store",
            Need::Curvature => "curvature",
            Need::Checkpoints => "checkpoints",
            Need::Model => "model",
        }
    }

    /// What the user does to provide it.
    pub fn how(self) -> &'static str {
        match self {
            Need::Store => "index the training set first (`inflow index`)",
            Need::Curvature => "fit curvature on the store first (`inflow fit --store …`)",
            Need::Checkpoints => {
                "index one store per checkpoint (`inflow index --checkpoints CKPT… --lora-grads`)"
            }
            Need::Model => "a model (the store's, from its run.json, or --model)",
        }
    }
}

/// Options every method may read; each uses the ones it understands.
#[derive(Debug, Clone)]
pub struct Options {
    /// For `influence`: identity, kfac, ekfac, datainf, lissa, exact.
    pub preconditioner: String,
    /// Damping and iteration settings of the preconditioners.
    pub curvature: curvature::Options,
    /// Forward-only probes: probe tails per padded batch.
    pub probe_batch: usize,
    /// One-step fine-tuning: the step size η.
    pub one_step_lr: f64,
    /// On a compact store: rescore the best K candidates exactly on its parent.
    pub rerank: Option<usize>,
    /// Score only this part of the store's shards (`score --part I/N`): a partial result for
    /// `scores merge`. Methods that score one store's features take it.
    pub part: Option<crate::store::Part>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            preconditioner: "ekfac".into(),
            curvature: curvature::Options::default(),
            probe_batch: 4,
            one_step_lr: 1e-4,
            rerank: None,
            part: None,
        }
    }
}

/// The training set a method scores against: a store and, for forward-only methods, the
/// data and settings it was (or would be) indexed with.
pub struct TrainSet<'a> {
    /// A store of the training set (gradients, or the parent folder of checkpoint stores).
    pub store: &'a Path,
    /// The training data file and how it is read.
    pub data: PathBuf,
    pub read: ReadOptions,
    /// The feature settings (template and token limit are shared by every method).
    pub features: FeatureOptions,
}

/// Everything a method gets to score queries.
pub struct Context<'a> {
    pub train: TrainSet<'a>,
    /// The model at the store's weights (`None` for methods that load their own, per checkpoint).
    pub model: Option<&'a LoadedModel>,
    /// An explicit model path, overriding the stores' run.json (checkpoint methods).
    pub model_path: Option<&'a Path>,
    pub queries: &'a [Sample],
    /// The file the queries were read from (forward-only methods read them as probes).
    pub queries_path: &'a Path,
    /// The queries' features, when they came from a query store (`score --queries STORE`)
    /// rather than being computed here.
    pub query_features: Option<&'a crate::index::Featurized>,
    pub options: &'a Options,
    /// Per query, keep the top `top_k`; with `full`, also the dense nq × n matrix.
    pub top_k: usize,
    pub full: bool,
    pub threads: usize,
    /// Folder for resumable intermediate results of this scoring run (e.g. an ICP store).
    pub scratch: PathBuf,
    /// Counters a progress display follows.
    pub progress: &'a Progress,
    /// Called with the training rows scored so far.
    pub on_rows: &'a (dyn Fn(usize) + Sync),
}

impl Context<'_> {
    /// The model, or an error saying which method needs it.
    pub fn model(&self, method: &str) -> Result<&LoadedModel> {
        self.model
            .ok_or_else(|| Error::Msg(format!("method `{method}` needs {}", Need::Model.how())))
    }
}

/// How a method's scores reduce to one value per training sample when a per-sample file is
/// written (`score --aggregate`, or a method whose default output is per sample).
#[derive(Debug, Clone, PartialEq)]
pub struct PerTrain {
    pub scores: Vec<f32>,
    /// What the reduction is, recorded in the file's `inflow.aggregate` metadata.
    pub what: String,
}

/// The scores of one method.
pub struct Scored {
    pub result: crate::scores::ScoreResult,
    /// The name recorded in outputs (for influence, including its preconditioner).
    pub method: String,
    pub sign_convention: String,
    /// Diagnostics (LiSSA's convergence, checkpoint list), if any.
    pub report: Option<serde_json::Value>,
    /// The queries as tokenized, when the method featurized them (for printing).
    pub query_rows: Vec<SampleRow>,
    /// The training sample ids, in column order.
    pub train_ids: Vec<String>,
    /// The method's own reduction to one score per training sample, when its natural output
    /// is per sample (LESS: mean per task, max over tasks).
    pub per_train: Option<PerTrain>,
}

/// A scoring method.
pub trait Method: Send + Sync {
    /// The name a user gives.
    fn name(&self) -> &str;
    /// One line for `--help` and error messages.
    fn about(&self) -> &str;
    /// What it needs before it can score.
    fn needs(&self) -> &[Need];
    /// Scores `ctx.queries` against the training set: top-k per query and, with `ctx.full`,
    /// the dense nq × n matrix.
    fn score(&self, ctx: &Context) -> Result<Scored>;
    /// s(z, z) for every training row (the mislabel self-score), when the method defines one
    /// that carries information.
    fn self_scores(
        &self,
        _store: &crate::store::Store,
        _options: &Options,
    ) -> Result<Option<Vec<f32>>> {
        Ok(None)
    }
}

/// Builds one method.
pub type Constructor = fn() -> Box<dyn Method>;

/// Every built-in method: name and constructor, in the order `--help` lists them.
pub const REGISTRY: &[(&str, Constructor)] = &[
    ("cosine", || Box::new(Similarity::named("cosine"))),
    ("dot", || Box::new(Similarity::named("dot"))),
    ("repsim", || Box::new(Similarity::named("repsim"))),
    ("repsim-mean", || Box::new(Similarity::named("repsim-mean"))),
    ("influence", || Box::new(InfluenceMethod::chosen())),
    ("identity", || Box::new(InfluenceMethod::fixed("identity"))),
    ("kfac", || Box::new(InfluenceMethod::fixed("kfac"))),
    ("ekfac", || Box::new(InfluenceMethod::fixed("ekfac"))),
    ("datainf", || Box::new(InfluenceMethod::fixed("datainf"))),
    ("lissa", || Box::new(InfluenceMethod::fixed("lissa"))),
    ("exact", || Box::new(InfluenceMethod::fixed("exact"))),
    ("tracin", || Box::new(CheckpointMethod::TracIn)),
    ("less", || Box::new(CheckpointMethod::Less)),
    ("icp", || Box::new(ProbeScorer::Icp)),
    ("one-step", || Box::new(ProbeScorer::OneStep)),
    ("encoder", || Box::new(EncoderMethod)),
];

/// Methods added at run time with [`register`].
fn extra() -> &'static Mutex<Vec<Arc<dyn Method>>> {
    static EXTRA: OnceLock<Mutex<Vec<Arc<dyn Method>>>> = OnceLock::new();
    EXTRA.get_or_init(|| Mutex::new(Vec::new()))
}

/// Adds a method under its own name; a name already known is refused.
pub fn register(method: Box<dyn Method>) -> Result<()> {
    let name = method.name().to_string();
    if names().contains(&name) {
        return Err(Error::Msg(format!("method `{name}` is already registered")));
    }
    extra()
        .lock()
        .map_err(|_| Error::Msg("method registry poisoned".into()))?
        .push(Arc::from(method));
    Ok(())
}

/// The method called `name`; an unknown name gives an error listing the known ones.
pub fn by_name(name: &str) -> Result<Arc<dyn Method>> {
    if let Some((_, make)) = REGISTRY.iter().find(|(n, _)| *n == name) {
        return Ok(Arc::from(make()));
    }
    let found = extra()
        .lock()
        .map_err(|_| Error::Msg("method registry poisoned".into()))?
        .iter()
        .find(|m| m.name() == name)
        .cloned();
    // The lock is released before the error lists the names (which locks again).
    found.ok_or_else(|| {
        Error::Msg(format!(
            "unknown method `{name}`; known methods: {}",
            names().join(", ")
        ))
    })
}

/// Every known method name: built-in ones in registry order, then registered ones.
pub fn names() -> Vec<String> {
    let mut v: Vec<String> = REGISTRY.iter().map(|(n, _)| n.to_string()).collect();
    if let Ok(extra) = extra().lock() {
        v.extend(extra.iter().map(|m| m.name().to_string()));
    }
    v
}

/// One line per method: name, what it needs, what it is (for `--help` and docs).
pub fn describe() -> String {
    let mut out = String::new();
    for n in names() {
        if let Ok(m) = by_name(&n) {
            let needs: Vec<&str> = m.needs().iter().map(|x| x.name()).collect();
            out.push_str(&format!("{n:<12} [{}] {}\n", needs.join(", "), m.about()));
        }
    }
    out
}

/// The top `k` of every row of a dense nq × n matrix, best first, ties by smaller row.
pub fn top_k_of(full: &[f32], nq: usize, k: usize) -> Vec<Vec<(usize, f32)>> {
    let n = full.len() / nq.max(1);
    (0..nq)
        .map(|q| {
            let row = &full[q * n..(q + 1) * n];
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
            idx.into_iter().take(k).map(|j| (j, row[j])).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_is_found_under_its_own_name_and_says_what_it_needs() {
        for n in names() {
            let m = by_name(&n).unwrap();
            assert_eq!(m.name(), n);
            assert!(!m.about().is_empty() && !m.needs().is_empty(), "{n}");
        }
        let msg = by_name("tracin2").err().unwrap().to_string();
        assert!(
            msg.contains("tracin2") && msg.contains("cosine, dot"),
            "{msg}"
        );
    }

    #[test]
    fn top_k_of_breaks_ties_by_row() {
        let full = [1.0, 3.0, 3.0, 0.0, /* q1 */ 0.5, 0.1, 0.9, 0.9];
        assert_eq!(
            top_k_of(&full, 2, 2),
            vec![vec![(1, 3.0), (2, 3.0)], vec![(2, 0.9), (3, 0.9)]]
        );
    }
}
