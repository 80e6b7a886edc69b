//! `eval selection`: select from a pool with each method, then fine-tune on each selection,
//! on random subsets of the same size and on the full pool, and compare held-out loss, exact
//! match and ROUGE-L on the target tasks. The runs, their resumption, the summary and the
//! plots are [`crate::eval::selection`]'s; this builds the arms (the selections) from the
//! registry's scores, G-DIG or score files, and writes `methods.json` beside the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::encoder::{distil_and_encode, EncoderSettings};
use super::report::{watch, Reporter};
use super::score::load_model;
use crate::data::tokens::{Renderer, Template, Truncate};
use crate::data::{read_samples, Format, ReadOptions, Sample};
use crate::eval::selection::{self, Arm, ArmKind, SelectionReport, TestItem};
use crate::index::Progress;
use crate::model::{LoadedModel, TokenSeq};
use crate::scores::queries::{score_samples, MethodSpec};
use crate::select::gdig::{self, GdigOptions, Quality};
use crate::select::ranked::{self, Size};
use crate::select::{input, Scored};
use crate::store::Store;
use crate::train::TrainOptions;
use crate::{Error, Result};

/// Settings of a selection experiment (the training and generation settings of its runs are
/// derived from them as [`selection::SelectionEvalOptions`]).
#[derive(Debug, Clone)]
pub struct SelectionEvalOptions {
    /// The base model (GGUF or Hugging Face folder).
    pub model: PathBuf,
    /// The training pool to select from (.jsonl/.parquet).
    pub pool: PathBuf,
    /// Use only the first `pool_limit` pool samples.
    pub pool_limit: usize,
    /// Target samples (their `task` field names the target tasks): the seed set of gdig and
    /// the queries of in-process scores.
    pub targets: PathBuf,
    /// Held-out samples; those of the target tasks (all, if the targets have no task) are
    /// evaluated, taken round-robin over tasks.
    pub test: PathBuf,
    /// Held-out samples evaluated.
    pub test_limit: usize,
    /// Selection size.
    pub size: Size,
    /// random, full, gdig, less, cosine, dot, influence, encoder, or a name of `scores`.
    pub methods: Vec<String>,
    /// Precomputed per-sample score files (Parquet with train_id and score), by name.
    pub scores: Vec<(String, PathBuf)>,
    /// Store of the pool: in-process scores and gdig's features.
    pub store: Option<PathBuf>,
    /// Random subsets of the selection size, one per seed.
    pub random_seeds: usize,
    /// Seed of the random subsets (seed, seed+1, …), LoRA initialisation and data order, k-means.
    pub seed: u64,
    /// gdig: k of k-means.
    pub clusters: usize,
    /// gdig: keep this top fraction by seed-set score before clustering.
    pub gdig_quality_top: f64,
    /// Greedy generation cap per test prompt.
    pub max_new_tokens: usize,
    /// LoRA rank of the runs.
    pub lora_rank: usize,
    /// LoRA α (the branch is scaled by α/rank).
    pub lora_alpha: f64,
    /// Linears the LoRA adapts (same syntax as the index's modules).
    pub lora_modules: String,
    /// Peak learning rate.
    pub lr: f64,
    /// Epochs over each run's subset.
    pub epochs: usize,
    /// Samples per step.
    pub batch_size: usize,
    /// Longest sample in tokens (training and evaluation).
    pub max_tokens: usize,
    /// What goes when a sample is over `max_tokens`.
    pub truncate: Truncate,
    /// Conversation rendering.
    pub template: Template,
    /// Evaluate the untrained base model too (its own row).
    pub with_base: bool,
    /// `encoder`: the encoder distilled from `store` (with the targets as anchors).
    pub encoder: EncoderSettings,
    /// Output folder (one subfolder per run; rerunning resumes).
    pub out: PathBuf,
    /// Worker threads.
    pub threads: usize,
}

/// What [`run`] produced.
#[derive(Debug, Clone)]
pub struct SelectionEvalOutput {
    /// The experiment's report (also `out/report.json`).
    pub report: SelectionReport,
    /// The selection size resolved on the pool.
    pub size: usize,
    /// How each method selected (also `out/methods.json`).
    pub notes: Map<String, Value>,
}

fn read(path: &Path, limit: Option<usize>) -> Result<Vec<Sample>> {
    let opts = ReadOptions {
        format: Format::Auto,
        skip_bad: false,
        limit,
    };
    Ok(read_samples(path, &opts)?.samples)
}

fn task(s: &Sample) -> Option<&str> {
    s.meta.get("task").and_then(|t| t.as_str())
}

/// Test samples of the target tasks, round-robin over tasks (in the targets' order).
fn pick_test(targets: &[Sample], test: Vec<Sample>, limit: usize) -> Vec<Sample> {
    let mut tasks: Vec<&str> = Vec::new();
    for t in targets.iter().filter_map(task) {
        if !tasks.contains(&t) {
            tasks.push(t);
        }
    }
    if tasks.is_empty() {
        return test.into_iter().take(limit).collect();
    }
    let mut by_task: Vec<Vec<Sample>> = vec![Vec::new(); tasks.len()];
    for s in test {
        if let Some(i) = task(&s).and_then(|t| tasks.iter().position(|x| *x == t)) {
            by_task[i].push(s);
        }
    }
    let mut out = Vec::new();
    let mut round = 0;
    while out.len() < limit && by_task.iter().any(|g| g.len() > round) {
        for g in &by_task {
            if let Some(s) = g.get(round) {
                if out.len() < limit {
                    out.push(s.clone());
                }
            }
        }
        round += 1;
    }
    out
}

/// Scores restricted to the pool: (pool indices, scores over them).
fn on_pool(scored: &Scored, pool_pos: &HashMap<&str, usize>) -> Result<(Vec<usize>, Scored)> {
    let mut idx = Vec::new();
    let (mut ids, mut sc) = (Vec::new(), Vec::new());
    for (id, s) in scored.ids.iter().zip(&scored.scores) {
        if let Some(&p) = pool_pos.get(id.as_str()) {
            idx.push(p);
            ids.push(id.clone());
            sc.push(*s);
        }
    }
    if idx.is_empty() {
        return Err(Error::Msg(
            "no scored sample is in the pool: the scores were computed on other data".into(),
        ));
    }
    Ok((idx, Scored::new(ids, sc)?))
}

/// Pool indices of the top `m` of `scored` (restricted to the pool).
fn top(scored: &Scored, pool_pos: &HashMap<&str, usize>, m: usize) -> Result<Vec<usize>> {
    let (idx, sc) = on_pool(scored, pool_pos)?;
    Ok(ranked::top(&sc, Size::Count(m))
        .picks
        .iter()
        .map(|p| idx[p.index])
        .collect())
}

/// What the arms are built from.
struct Selector<'a> {
    o: &'a SelectionEvalOptions,
    model: &'a LoadedModel,
    targets: &'a [Sample],
    pool_pos: HashMap<&'a str, usize>,
    score_files: HashMap<String, PathBuf>,
    /// The selection size.
    m: usize,
    reporter: &'a dyn Reporter,
}

impl Selector<'_> {
    /// The store of the pool, which `method` needs.
    fn store(&self, method: &str) -> Result<&Path> {
        self.o.store.as_deref().ok_or_else(|| {
            Error::Msg(format!(
                "--methods {method} needs --store (an index of --pool) or --scores {method}=PATH"
            ))
        })
    }

    /// G-DIG: quality by the seed-set score (from `--scores gdig=…` or in-process), then
    /// k-means diversity over the store's features.
    fn gdig(&self, notes: &mut Map<String, Value>) -> Result<Vec<usize>> {
        let store_dir = self.store("gdig")?;
        let scored = match self.score_files.get("gdig") {
            Some(p) => input::read_per_train(p)?.scored,
            None => {
                let spec = input::default_seed_method(store_dir);
                notes.insert(
                    "gdig".into(),
                    format!("quality: mean {} score against the targets", spec.method).into(),
                );
                let progress = Progress::default();
                watch(self.reporter, "gdig", &progress, || {
                    input::seed_set_scores(
                        store_dir,
                        self.model,
                        self.targets,
                        &spec,
                        self.o.threads,
                        &progress,
                        &mut |_| {},
                    )
                })?
                .0
            }
        };
        let m = self.m;
        let (idx, sc) = on_pool(&scored, &self.pool_pos)?;
        let mut opts = GdigOptions::new(Size::Count(m));
        opts.quality =
            Quality::TopFraction(self.o.gdig_quality_top.max(m as f64 / sc.len() as f64));
        opts.clusters = self.o.clusters;
        opts.seed = self.o.seed;
        let kept = gdig::quality_filter(&sc, opts.quality);
        let ids: Vec<&str> = kept.iter().map(|&i| sc.ids[i].as_str()).collect();
        let store = Store::open(store_dir)?;
        let feats = input::store_features(&store, &ids)?;
        let sel = gdig::select(&sc, &kept, feats, store.dim(), &opts)?;
        Ok(sel.picks.iter().map(|p| idx[p.index]).collect())
    }

    /// The top `m` by the mean score against the targets on the store (`less`: per target
    /// task mean gradient cosine, max over tasks).
    fn scored(&self, method: &str, notes: &mut Map<String, Value>) -> Result<Vec<usize>> {
        let store_dir = self.store(method)?;
        let spec = match method {
            "less" | "cosine" => MethodSpec::plain("cosine"),
            "influence" => input::default_seed_method(store_dir),
            other => MethodSpec::plain(other),
        };
        self.top_by_score(method, store_dir, self.model, &spec, notes)
    }

    /// The amortized encoder: distilled from the store (the teacher) with the targets as
    /// anchors into `out/distil/`, the pool encoded forward only, then the top `m` by the mean
    /// encoder cosine against the targets (encoded by the same encoder): `cosine`'s rule on
    /// the encoder's features.
    fn encoder(&self, notes: &mut Map<String, Value>) -> Result<Vec<usize>> {
        let teacher = self.store("encoder")?;
        let d = distil_and_encode(
            teacher,
            None,
            Some(&self.o.targets),
            Format::Auto,
            None,
            &self.o.encoder,
            &self.o.out.join("distil"),
            self.o.threads,
            self.reporter,
        )?;
        let picks = self.top_by_score(
            "encoder",
            &d.store,
            &d.model,
            &MethodSpec::plain("cosine"),
            notes,
        )?;
        let s = &self.o.encoder;
        notes.insert(
            "encoder_distillation".into(),
            serde_json::json!({
                "encoder": d.encoder, "store": d.store, "teacher": teacher,
                "layers": s.layers, "pooling": s.pooling.to_string(), "hidden": s.hidden,
                "dim": s.dim, "steps": s.distil.steps, "seed": s.distil.seed,
                "training": d.summary,
            }),
        );
        Ok(picks)
    }

    /// The top `m` by the mean score of `spec` on `store_dir` against the targets (`less`: per
    /// target task mean, max over tasks).
    fn top_by_score(
        &self,
        method: &str,
        store_dir: &Path,
        model: &LoadedModel,
        spec: &MethodSpec,
        notes: &mut Map<String, Value>,
    ) -> Result<Vec<usize>> {
        let progress = Progress::default();
        let s = watch(self.reporter, method, &progress, || {
            score_samples(
                store_dir,
                model,
                self.targets,
                spec,
                1,
                true,
                self.o.threads,
                &progress,
                None,
                &mut |_| {},
            )
        })?;
        let full = s
            .result
            .full
            .ok_or_else(|| Error::Msg("internal: no full matrix".into()))?;
        let ids: Vec<String> = Store::open(store_dir)?
            .samples()?
            .into_iter()
            .map(|r| r.id)
            .collect();
        let nt = self.targets.len();
        let scores = if method == "less" {
            let tasks: Vec<String> = self
                .targets
                .iter()
                .map(|t| task(t).unwrap_or("all").to_string())
                .collect();
            notes.insert("less".into(), "in-process: per target task mean gradient cosine at the base model, max over tasks (one checkpoint, SGD gradients; give --scores less=… for checkpoint LESS)".into());
            crate::scores::checkpoints::per_task_max(&full, nt, &tasks)
        } else {
            notes.insert(
                method.into(),
                format!(
                    "top {} by mean {} score against the targets",
                    self.m, s.method
                )
                .into(),
            );
            crate::scores::mean_over_queries(&full, nt)
        };
        top(&Scored::new(ids, scores)?, &self.pool_pos, self.m)
    }

    /// The arms of `method` (several for `random`).
    fn arms(
        &self,
        method: &str,
        n_pool: usize,
        notes: &mut Map<String, Value>,
    ) -> Result<Vec<Arm>> {
        let (o, m) = (self.o, self.m);
        let method_arm = |subset: Vec<usize>| {
            vec![Arm {
                method: method.to_string(),
                kind: ArmKind::Method,
                subset,
            }]
        };
        Ok(match method {
            "random" => (0..o.random_seeds as u64)
                .map(|k| Arm {
                    method: "random".into(),
                    kind: ArmKind::Random { seed: o.seed + k },
                    subset: selection::random_subset(n_pool, m, o.seed + k),
                })
                .collect(),
            "full" => vec![Arm {
                method: "full".into(),
                kind: ArmKind::Full,
                subset: (0..n_pool).collect(),
            }],
            name if self.score_files.contains_key(name) && name != "gdig" => {
                let path = &self.score_files[name];
                let f = input::read_per_train(path)?;
                notes.insert(name.into(), format!("top {m} by {}", path.display()).into());
                method_arm(top(&f.scored, &self.pool_pos, m)?)
            }
            "icp" => {
                return Err(Error::Msg(
                    "--methods icp needs --scores icp=PATH (the scores.parquet of `inflow probe`)"
                        .into(),
                ))
            }
            "gdig" => method_arm(self.gdig(notes)?),
            "less" | "cosine" | "dot" | "influence" => method_arm(self.scored(method, notes)?),
            "encoder" => method_arm(self.encoder(notes)?),
            other => {
                return Err(Error::Msg(format!(
                "unknown method `{other}` in --methods; give its scores as --scores {other}=PATH"
            )))
            }
        })
    }
}

/// Runs the experiment (see the module doc): `out/report.json`, `loss.png`, `rouge_l.png`,
/// `methods.json` and one resumable folder per run.
pub fn run(o: &SelectionEvalOptions, reporter: &dyn Reporter) -> Result<SelectionEvalOutput> {
    let mut model = load_model(&o.model, reporter)?;
    let pool = read(&o.pool, Some(o.pool_limit))?;
    let targets = read(&o.targets, None)?;
    let test = pick_test(&targets, read(&o.test, None)?, o.test_limit);
    if test.is_empty() {
        return Err(Error::Msg(format!(
            "{}: no held-out samples of the target tasks",
            o.test.display()
        )));
    }
    let renderer = Renderer::new(&model, o.template, o.max_tokens)?.with_truncate(o.truncate);
    let pool_seqs: Vec<TokenSeq> = renderer.tokenize_all(&pool)?.0;
    let test_items: Vec<TestItem> = test
        .iter()
        .map(|s| {
            let (prompt, _) = renderer.render(&s.body)?;
            Ok(TestItem {
                seq: renderer.tokenize(s)?.seq,
                prompt: model.encode(&prompt)?,
                reference: s.body.response().to_string(),
            })
        })
        .collect::<Result<_>>()?;
    drop(renderer);
    let m = o.size.resolve(pool.len());
    let mut arms = Vec::new();
    let mut notes = Map::new();
    {
        let selector = Selector {
            o,
            model: &model,
            targets: &targets,
            pool_pos: pool
                .iter()
                .enumerate()
                .map(|(i, s)| (s.id.as_str(), i))
                .collect(),
            score_files: o.scores.iter().cloned().collect(),
            m,
            reporter,
        };
        for method in &o.methods {
            arms.extend(selector.arms(method, pool.len(), &mut notes)?);
        }
    }
    // Which pool samples each method picked (not random's or full's): the selections can be
    // compared with each other, e.g. the encoder's with the teacher's.
    let selected: Map<String, Value> = arms
        .iter()
        .filter(|a| a.kind == ArmKind::Method)
        .map(|a| {
            let ids: Vec<&str> = a.subset.iter().map(|&i| pool[i].id.as_str()).collect();
            (a.method.clone(), serde_json::json!(ids))
        })
        .collect();
    notes.insert("selected".into(), selected.into());
    let mut train = TrainOptions::lora(o.lora_rank, o.lora_alpha, &o.lora_modules);
    train.lr = o.lr;
    train.epochs = o.epochs;
    train.batch_size = o.batch_size;
    train.seed = o.seed;
    train.threads = o.threads;
    let opts = selection::SelectionEvalOptions {
        train,
        max_new_tokens: o.max_new_tokens,
        stop: super::generate::turn_stops(&model),
    };
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let total = arms.len() + o.with_base as usize;
    reporter.start("runs", total);
    let report = selection::run(
        &mut model,
        &pool_seqs,
        &test_items,
        &arms,
        o.with_base,
        &opts,
        &o.out,
        o.threads,
        &mut |i, total, name| reporter.update("runs", i, total, name),
    );
    reporter.finish("runs");
    let report = report?;
    selection::plot(&report, &o.out)?;
    let notes_path = o.out.join("methods.json");
    crate::atomic_write::write_json(&notes_path, &notes)?;
    Ok(SelectionEvalOutput {
        report,
        size: m,
        notes,
    })
}
