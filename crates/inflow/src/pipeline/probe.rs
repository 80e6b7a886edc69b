//! `probe`: in-context probing or one-step fine-tuning of every training sample against a
//! probe set (the methods are [`crate::probe`]'s), resumable, with an optional check of the
//! cached ICP against the naive one.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::report::{watch, Reporter};
use super::score::load_model;
use crate::data::{read_samples, ReadOptions};
use crate::index::Progress;
use crate::model::LoadedModel;
use crate::probe::icp::{DemoTemplate, Icp};
use crate::probe::one_step::OneStep;
use crate::probe::{ProbeMethod, ProbeRun, Probes};
use crate::Result;

/// The probing method and its own settings.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// Δ_j = log p(a_j | z ⊕ q_j) − log p(a_j | q_j), z joined to q_j by the template.
    Icp(DemoTemplate),
    /// Δ_j = ℓ_j(θ) − ℓ_j(θ − lr·∇ℓ(z)), one SGD step on z of the `modules` Linears.
    OneStep { lr: f64, modules: String },
}

impl ProbeKind {
    /// The method's name: `icp` or `one-step`.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Icp(_) => "icp",
            ProbeKind::OneStep { .. } => "one-step",
        }
    }
}

/// Settings of a probe run.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    pub model: PathBuf,
    pub data: PathBuf,
    pub read: ReadOptions,
    /// Probe tasks: samples (q_j, a_j) with an optional `task` field.
    pub probes: PathBuf,
    /// Keep the first N probes of each task.
    pub probes_per_task: Option<usize>,
    /// Keep the first N probe tasks.
    pub probe_tasks: Option<usize>,
    pub kind: ProbeKind,
    /// Longest demonstration (ICP) or sample (one-step) in tokens.
    pub max_tokens: usize,
    /// Probes per batch.
    pub probe_batch: usize,
    /// Training samples per shard (the unit of resumption).
    pub shard_size: usize,
    pub out: PathBuf,
    /// With ICP: also time the naive ICP on the first N samples and compare the scores.
    pub bench_naive: usize,
    pub threads: usize,
}

/// Cached vs naive ICP on the first samples. Fields in alphabetical order: the JSON printed.
#[derive(Debug, Clone, Serialize)]
pub struct NaiveCheck {
    pub cached_seconds: f64,
    pub max_abs_logprob_difference: f64,
    pub naive_seconds: f64,
    pub probes: usize,
    pub samples: usize,
    pub speedup: f64,
}

/// What a probe run wrote. Fields in alphabetical order: the JSON the CLI prints.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeOutput {
    pub method: String,
    pub n_probes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub naive_check: Option<NaiveCheck>,
    pub out: PathBuf,
    /// The scores file.
    pub scores: PathBuf,
    pub seconds: f64,
    /// Seconds of the method's setup (probe baselines, caches).
    pub setup_seconds: f64,
}

/// Scores every training sample against the probes into `out` (resuming what is there),
/// reporting stage `icp` or `one-step`.
pub fn run(o: &ProbeOptions, reporter: &dyn Reporter) -> Result<ProbeOutput> {
    let model = load_model(&o.model, reporter)?;
    let probes = Probes::read(&o.probes, o.probes_per_task, o.probe_tasks)?;
    reporter.note(&format!(
        "{} probes from {} tasks",
        probes.samples.len(),
        probes.groups().len()
    ));
    let t0 = Instant::now();
    let method: Box<dyn ProbeMethod> = match &o.kind {
        ProbeKind::Icp(template) => Box::new(Icp::new(
            &model,
            &probes,
            *template,
            o.max_tokens,
            o.probe_batch,
        )?),
        ProbeKind::OneStep { lr, modules } => Box::new(OneStep::new(
            &model,
            &probes,
            *lr,
            modules,
            o.max_tokens,
            o.probe_batch,
        )?),
    };
    let setup_seconds = t0.elapsed().as_secs_f64();
    let run = ProbeRun {
        model: &model,
        data: o.data.clone(),
        read: o.read.clone(),
        probes: &probes,
        shard_size: o.shard_size.max(1),
        threads: o.threads,
    };
    let progress = Progress::default();
    let t = Instant::now();
    let scores = watch(reporter, o.kind.name(), &progress, || {
        crate::probe::run(&run, method.as_ref(), &o.out, &progress)
    })?;
    let seconds = t.elapsed().as_secs_f64();
    let naive_check = match &o.kind {
        ProbeKind::Icp(template) if o.bench_naive > 0 => {
            Some(naive_check(&model, &probes, o, *template)?)
        }
        _ => None,
    };
    Ok(ProbeOutput {
        method: o.kind.name().into(),
        n_probes: probes.samples.len(),
        naive_check,
        out: o.out.clone(),
        scores,
        seconds,
        setup_seconds,
    })
}

/// Times cached vs naive ICP on the first samples (one thread each) and checks equality.
fn naive_check(
    model: &LoadedModel,
    probes: &Probes,
    o: &ProbeOptions,
    template: DemoTemplate,
) -> Result<NaiveCheck> {
    let icp = Icp::new(model, probes, template, o.max_tokens, o.probe_batch)?;
    let samples = read_samples(
        &o.data,
        &ReadOptions {
            limit: Some(o.bench_naive),
            ..o.read.clone()
        },
    )?
    .samples;
    let base = icp.baselines();
    let t = Instant::now();
    let fast: Vec<Vec<f64>> = samples
        .iter()
        .map(|z| icp.conditional_logprobs(z).map(|r| r.0))
        .collect::<Result<_>>()?;
    let t_fast = t.elapsed().as_secs_f64();
    // The naive way recomputes the baseline log p(a_j | q_j) for every z too.
    let t = Instant::now();
    let mut max_diff: f64 = 0.0;
    for (z, f) in samples.iter().zip(&fast) {
        let slow = icp.conditional_logprobs_naive(z)?;
        for (x, y) in f.iter().zip(&slow) {
            max_diff = max_diff.max((x - y).abs());
        }
    }
    let t_slow_cond = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let _ = Icp::new(model, probes, template, o.max_tokens, 1)?;
    let t_base = t.elapsed().as_secs_f64();
    let t_slow = t_slow_cond + t_base * samples.len() as f64;
    Ok(NaiveCheck {
        cached_seconds: t_fast,
        max_abs_logprob_difference: max_diff,
        naive_seconds: t_slow,
        probes: base.len(),
        samples: samples.len(),
        speedup: t_slow / t_fast,
    })
}
