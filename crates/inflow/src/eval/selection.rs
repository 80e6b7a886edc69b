//! Selection experiments (METHODS.md §5, "Selection quality"): fine-tune the base model with
//! LoRA on each method's selection, on random subsets of the same size (several seeds) and on
//! the full pool, then measure on held-out samples of the target tasks: mean response loss,
//! exact match and ROUGE-L F1 of greedy generations against the reference responses.
//!
//! Every run lives in `dir/<run name>/`: the retraining folder of
//! [`super::retrain::retrain_and_eval`] (resumable, `result.json` when done) plus
//! `generations.json` (written atomically once all generations are done), so a killed
//! experiment reruns only what had not finished.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::retrain::retrain_and_eval;
use crate::atomic_write::write_json;
use crate::model::{LoadedModel, TokenSeq};
use crate::random::Stream;
use crate::train::TrainOptions;
use crate::{Error, Result};

/// Lower-cased whitespace tokens of a text.
fn tokens(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_lowercase).collect()
}

/// ROUGE-L F1 (Lin 2004) on lower-cased whitespace tokens: with L the length of the longest
/// common subsequence of candidate c and reference r, P = L/|c|, R = L/|r|,
/// F1 = 2PR/(P+R). Two empty texts score 1, one empty text 0.
pub fn rouge_l_f1(candidate: &str, reference: &str) -> f64 {
    let (c, r) = (tokens(candidate), tokens(reference));
    if c.is_empty() && r.is_empty() {
        return 1.0;
    }
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    let mut prev = vec![0usize; r.len() + 1];
    let mut cur = vec![0usize; r.len() + 1];
    for a in &c {
        for (j, b) in r.iter().enumerate() {
            cur[j + 1] = if a == b {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    let l = prev[r.len()] as f64;
    if l == 0.0 {
        return 0.0;
    }
    let (p, rec) = (l / c.len() as f64, l / r.len() as f64);
    2.0 * p * rec / (p + rec)
}

/// Exact match after lower-casing and collapsing whitespace.
pub fn exact_match(candidate: &str, reference: &str) -> bool {
    tokens(candidate) == tokens(reference)
}

/// `k` distinct indices of `0..n` drawn uniformly with `seed` (partial Fisher–Yates), sorted.
pub fn random_subset(n: usize, k: usize, seed: u64) -> Vec<usize> {
    let all: Vec<usize> = (0..n).collect();
    Stream::new(seed, "selection-random").choose(&all, k)
}

/// One held-out target sample: its token sequence (for the loss), the prompt tokens to
/// generate from, and the reference response.
#[derive(Debug, Clone)]
pub struct TestItem {
    pub seq: TokenSeq,
    pub prompt: Vec<u32>,
    pub reference: String,
}

/// What a run trains on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmKind {
    /// No training: the base model.
    Base,
    /// A selection method's subset.
    Method,
    /// A uniformly random subset of the same size.
    Random { seed: u64 },
    /// The whole pool.
    Full,
}

/// One fine-tuning run of the experiment.
#[derive(Debug, Clone)]
pub struct Arm {
    /// The group it is reported under (`random` for every random seed).
    pub method: String,
    pub kind: ArmKind,
    /// Indices into the pool.
    pub subset: Vec<usize>,
}

impl Arm {
    /// Folder name of the run.
    pub fn run_name(&self) -> String {
        match self.kind {
            ArmKind::Random { seed } => format!("{}-seed{seed}", self.method),
            _ => self.method.clone(),
        }
    }
}

/// Settings of the experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionEvalOptions {
    pub train: TrainOptions,
    /// Greedy generation cap per test prompt.
    pub max_new_tokens: usize,
    /// Token ids that end a generation (end of turn / end of text).
    pub stop: Vec<u32>,
}

/// Measurements of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    pub name: String,
    pub method: String,
    pub kind: ArmKind,
    pub n_train: usize,
    pub mean_loss: f64,
    pub exact_match: f64,
    pub rouge_l: f64,
    pub train_seconds: f64,
    pub last_train_loss: Option<f64>,
}

/// A method's runs combined (several for `random`): mean, sample standard deviation (0 for a
/// single run), min and max.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MethodSummary {
    pub method: String,
    pub n_runs: usize,
    pub n_train: usize,
    pub loss: Stat,
    pub exact_match: Stat,
    pub rouge_l: Stat,
}

/// Mean, standard deviation, min and max of a few values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(v: &[f64]) -> Self {
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
        } else {
            0.0
        };
        Self {
            mean,
            std: var.sqrt(),
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        }
    }
}

/// The experiment's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SelectionReport {
    pub n_pool: usize,
    pub n_test: usize,
    pub options: SelectionEvalOptions,
    pub runs: Vec<RunReport>,
    /// One entry per method, in the order the methods first appear in the runs.
    pub summary: Vec<MethodSummary>,
}

#[derive(Serialize, Deserialize)]
struct Generations {
    key: String,
    outputs: Vec<String>,
}

/// Greedy generations for every test prompt with the model as it is (adapters included),
/// cached in `dir/generations.json` under `key`. `checkpoint` (a run's adapter) is attached
/// only when they have to be generated, and detached again.
fn generations(
    model: &mut LoadedModel,
    checkpoint: Option<&Path>,
    test: &[TestItem],
    opts: &SelectionEvalOptions,
    dir: &Path,
    key: &str,
) -> Result<Vec<String>> {
    let path = dir.join("generations.json");
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(g) = serde_json::from_slice::<Generations>(&bytes) {
            if g.key == key && g.outputs.len() == test.len() {
                return Ok(g.outputs);
            }
        }
    }
    let Some(ckpt) = checkpoint else {
        return generate_and_cache(model, test, opts, dir, key, &path);
    };
    let outputs = crate::train::features::attach(model, ckpt)
        .and_then(|_| generate_and_cache(model, test, opts, dir, key, &path));
    model.llama.set_adapters(None);
    outputs
}

fn generate_and_cache(
    model: &LoadedModel,
    test: &[TestItem],
    opts: &SelectionEvalOptions,
    dir: &Path,
    key: &str,
    path: &Path,
) -> Result<Vec<String>> {
    let mut outputs = Vec::with_capacity(test.len());
    for t in test {
        let ids = model
            .llama
            .generate_greedy_cached(&t.prompt, opts.max_new_tokens, &opts.stop)?;
        outputs.push(model.decode(&ids)?);
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_json(
        path,
        &Generations {
            key: key.to_string(),
            outputs: outputs.clone(),
        },
    )?;
    Ok(outputs)
}

fn score_generations(outputs: &[String], test: &[TestItem]) -> (f64, f64) {
    let n = test.len().max(1) as f64;
    let em = outputs
        .iter()
        .zip(test)
        .filter(|(o, t)| exact_match(o, &t.reference))
        .count() as f64
        / n;
    let rl = outputs
        .iter()
        .zip(test)
        .map(|(o, t)| rouge_l_f1(o, &t.reference))
        .sum::<f64>()
        / n;
    (em, rl)
}

/// Runs every arm (base model first when `with_base`), each resumable in `dir/<run name>/`,
/// and summarises per method. `on_run(i, total, name)` is called before each run.
#[allow(clippy::too_many_arguments)]
pub fn run(
    model: &mut LoadedModel,
    pool: &[TokenSeq],
    test: &[TestItem],
    arms: &[Arm],
    with_base: bool,
    opts: &SelectionEvalOptions,
    dir: &Path,
    threads: usize,
    on_run: &mut dyn FnMut(usize, usize, &str),
) -> Result<SelectionReport> {
    if test.is_empty() {
        return Err(Error::Msg("no test samples to evaluate on".into()));
    }
    let eval: Vec<TokenSeq> = test.iter().map(|t| t.seq.clone()).collect();
    let total = arms.len() + with_base as usize;
    let mut runs = Vec::new();
    if with_base {
        on_run(0, total, "base");
        model.llama.set_adapters(None);
        let e = crate::train::eval_loss(model, &eval, 4, threads)?;
        let key = format!("base-{}-{}", model.source.sha256, opts.max_new_tokens);
        let outs = generations(model, None, test, opts, &dir.join("base"), &key)?;
        let (em, rl) = score_generations(&outs, test);
        runs.push(RunReport {
            name: "base".into(),
            method: "base".into(),
            kind: ArmKind::Base,
            n_train: 0,
            mean_loss: e.mean_loss,
            exact_match: em,
            rouge_l: rl,
            train_seconds: 0.0,
            last_train_loss: None,
        });
    }
    for (i, arm) in arms.iter().enumerate() {
        let name = arm.run_name();
        on_run(i + with_base as usize, total, &name);
        let rdir = dir.join(&name);
        let r = retrain_and_eval(model, pool, &arm.subset, &eval, &opts.train, &rdir, threads)?;
        let (_, ckpt) = crate::train::checkpoint::latest(&rdir)
            .ok_or_else(|| Error::Msg(format!("{}: the run left no checkpoint", rdir.display())))?;
        let key = format!("{}-{}", r.key, opts.max_new_tokens);
        let outs = generations(model, Some(&ckpt), test, opts, &rdir, &key)?;
        let (em, rl) = score_generations(&outs, test);
        runs.push(RunReport {
            name,
            method: arm.method.clone(),
            kind: arm.kind.clone(),
            n_train: arm.subset.len(),
            mean_loss: r.mean_loss,
            exact_match: em,
            rouge_l: rl,
            train_seconds: r.train_seconds,
            last_train_loss: r.last_train_loss,
        });
    }
    let report = SelectionReport {
        n_pool: pool.len(),
        n_test: test.len(),
        options: opts.clone(),
        summary: summarise(&runs),
        runs,
    };
    write_json(&dir.join("report.json"), &report)?;
    Ok(report)
}

/// Per-method statistics over runs, methods in order of first appearance.
pub fn summarise(runs: &[RunReport]) -> Vec<MethodSummary> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Vec<&RunReport>> = HashMap::new();
    for r in runs {
        if !groups.contains_key(r.method.as_str()) {
            order.push(&r.method);
        }
        groups.entry(&r.method).or_default().push(r);
    }
    order
        .into_iter()
        .map(|m| {
            let g = &groups[m];
            let stat = |f: &dyn Fn(&RunReport) -> f64| {
                Stat::of(&g.iter().map(|r| f(r)).collect::<Vec<_>>())
            };
            MethodSummary {
                method: m.to_string(),
                n_runs: g.len(),
                n_train: g[0].n_train,
                loss: stat(&|r| r.mean_loss),
                exact_match: stat(&|r| r.exact_match),
                rouge_l: stat(&|r| r.rouge_l),
            }
        })
        .collect()
}

/// Bar charts of the summary: `loss.png` (mean held-out loss) and `rouge_l.png` per method;
/// methods with several runs (random) show their mean, labelled with ± the standard deviation.
pub fn plot(report: &SelectionReport, dir: &Path) -> Result<()> {
    type StatOf = fn(&MethodSummary) -> &Stat;
    let charts: [(&str, StatOf, &str, &str); 2] = [
        (
            "loss.png",
            |s| &s.loss,
            "mean held-out response loss",
            "Selection: held-out loss on target tasks (lower is better)",
        ),
        (
            "rouge_l.png",
            |s| &s.rouge_l,
            "ROUGE-L F1",
            "Selection: ROUGE-L of greedy answers on target tasks (higher is better)",
        ),
    ];
    for (file, stat, y, title) in charts {
        let labels: Vec<String> = report
            .summary
            .iter()
            .map(|s| {
                if s.n_runs > 1 {
                    format!("{} (n={}, ±{:.3})", s.method, s.n_runs, stat(s).std)
                } else {
                    s.method.clone()
                }
            })
            .collect();
        let values: Vec<f64> = report.summary.iter().map(|s| stat(s).mean).collect();
        super::plot::bars(&dir.join(file), &labels, &values, y, title)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rouge_l_on_known_values() {
        // LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5.
        let f = rouge_l_f1("the cat sat on the mat", "the cat is on the mat");
        assert!((f - 5.0 / 6.0).abs() < 1e-12, "{f}");
        // L = 1 ("police"): P = 1/2, R = 1/4, F1 = 1/3.
        let f = rouge_l_f1("police killed", "police kill the gunman");
        assert!((f - 1.0 / 3.0).abs() < 1e-12, "{f}");
        // |c| = 2, |r| = 4, L = 2: P = 1, R = 1/2, F1 = 2/3 (case-insensitive).
        let f = rouge_l_f1("A b", "a B c d");
        assert!((f - 2.0 / 3.0).abs() < 1e-12, "{f}");
        // Order matters: LCS of reversed sequences is 1.
        let f = rouge_l_f1("a b c", "c b a");
        assert!((f - 1.0 / 3.0).abs() < 1e-12, "{f}");
        assert_eq!(rouge_l_f1("Same  words\n", "same words"), 1.0);
        assert_eq!(rouge_l_f1("", "x"), 0.0);
        assert_eq!(rouge_l_f1("", " "), 1.0);
        assert_eq!(rouge_l_f1("x y", "z"), 0.0);
        assert!(exact_match(" Yes\n", "yes"));
        assert!(!exact_match("yes.", "yes"));
    }

    #[test]
    fn random_subsets_are_seeded_distinct_and_sized() {
        let a = random_subset(50, 10, 1);
        assert_eq!(a, random_subset(50, 10, 1));
        assert_ne!(a, random_subset(50, 10, 2));
        let mut d = a.clone();
        d.dedup();
        assert_eq!(d.len(), 10);
        assert!(a.iter().all(|&i| i < 50));
        assert_eq!(random_subset(5, 9, 0), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn summary_groups_random_seeds() {
        let r = |m: &str, kind: ArmKind, loss: f64| RunReport {
            name: m.into(),
            method: m.into(),
            kind,
            n_train: 4,
            mean_loss: loss,
            exact_match: 0.0,
            rouge_l: loss / 10.0,
            train_seconds: 0.0,
            last_train_loss: None,
        };
        let s = summarise(&[
            r("gdig", ArmKind::Method, 1.0),
            r("random", ArmKind::Random { seed: 0 }, 2.0),
            r("random", ArmKind::Random { seed: 1 }, 4.0),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].method, "random");
        assert_eq!(s[1].n_runs, 2);
        assert_eq!(s[1].loss.mean, 3.0);
        assert!((s[1].loss.std - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!((s[1].loss.min, s[1].loss.max), (2.0, 4.0));
        assert_eq!(s[0].loss.std, 0.0);
    }
}
