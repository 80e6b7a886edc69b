//! `inflow eval selection`: fine-tune on each method's selection, on random subsets of the
//! same size and on the full pool, and compare held-out loss, exact match and ROUGE-L on the
//! target tasks (the library part is `inflow::eval::selection`).

use anyhow::{bail, Context, Result};
use clap::Args;
use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_samples, Format, ReadOptions, Sample};
use inflow::eval::selection::{self, Arm, ArmKind, SelectionEvalOptions, TestItem};
use inflow::index::Progress;
use inflow::model::TokenSeq;
use inflow::scores::queries::{score_samples, MethodSpec};
use inflow::select::gdig::{self, GdigOptions, Quality};
use inflow::select::ranked::{self, Size};
use inflow::select::{input, Scored};
use inflow::store::Store;
use inflow::train::TrainOptions;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub(crate) struct SelectionEvalArgs {
    #[arg(long)]
    model: PathBuf,
    /// The training pool to select from (.jsonl/.parquet).
    #[arg(long)]
    pool: PathBuf,
    /// Use only the first N pool samples.
    #[arg(long, default_value_t = 120)]
    pool_limit: usize,
    /// Target samples (their `task` field names the target tasks); the seed set of gdig and
    /// the queries of in-process scores.
    #[arg(long)]
    targets: PathBuf,
    /// Held-out samples; those of the target tasks (all, if the targets have no task) are
    /// evaluated, taken round-robin over tasks.
    #[arg(long)]
    test: PathBuf,
    /// Held-out samples evaluated.
    #[arg(long, default_value_t = 16)]
    test_limit: usize,
    /// Selection size: a count (24) or a percentage of the pool (20%).
    #[arg(long, default_value = "20%")]
    size: String,
    /// Comma-separated: random, full, gdig (seed-set quality + k-means over --store features),
    /// less (per target task mean, max over tasks; from --scores less=… or, in-process, gradient
    /// cosine on --store at the base model), icp (top by --scores icp=…), cosine, dot,
    /// influence (top by mean score against the targets on --store), or any NAME given in
    /// --scores NAME=file (top by that score).
    #[arg(long, default_value = "random,gdig,less,full")]
    methods: String,
    /// Precomputed per-sample score files, NAME=path (Parquet with train_id and score).
    #[arg(long, num_args = 1..)]
    scores: Vec<String>,
    /// Store of the pool (made by `inflow index` on --pool): in-process scores and gdig's features.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Random subsets of the selection size, one per seed.
    #[arg(long, default_value_t = 3)]
    random_seeds: usize,
    /// Seed of the random subsets (seed, seed+1, …), LoRA initialisation and data order, k-means.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// gdig: k of k-means.
    #[arg(long, default_value_t = 8)]
    clusters: usize,
    /// gdig: keep this top fraction by seed-set score before clustering.
    #[arg(long, default_value_t = 0.5)]
    gdig_quality_top: f64,
    /// Greedy generation cap per test prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// LoRA target modules (same syntax as index --modules).
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Longest sample in tokens (training and evaluation).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    #[arg(long, default_value = "auto")]
    template: String,
    /// Skip the untrained base model's row.
    #[arg(long)]
    no_base: bool,
    /// Output folder (one subfolder per run; rerunning resumes).
    #[arg(long)]
    out: PathBuf,
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
        bail!("no scored sample is in the pool: the scores were computed on other data");
    }
    Ok((idx, Scored::new(ids, sc)?))
}

pub(crate) fn run(a: SelectionEvalArgs, threads: usize, json: bool) -> Result<()> {
    let size: Size = a.size.parse()?;
    let mut model = crate::load_model(&a.model)?;
    let pool = read(&a.pool, Some(a.pool_limit))?;
    let targets = read(&a.targets, None)?;
    let test = pick_test(&targets, read(&a.test, None)?, a.test_limit);
    if test.is_empty() {
        bail!(
            "{}: no held-out samples of the target tasks",
            a.test.display()
        );
    }
    let renderer = Renderer::new(&model, a.template.parse::<Template>()?, a.max_tokens)?
        .with_truncate(a.truncate.policy()?);
    let pool_seqs: Vec<TokenSeq> = pool
        .iter()
        .map(|s| Ok(renderer.tokenize(s)?.seq))
        .collect::<Result<_>>()?;
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
    let pool_pos: HashMap<&str, usize> = pool
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let score_files: HashMap<String, PathBuf> = a
        .scores
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
                .with_context(|| format!("--scores {s}: expected NAME=path"))
        })
        .collect::<Result<_>>()?;
    let m = size.resolve(pool.len());
    let mut arms = Vec::new();
    let mut notes = serde_json::Map::new();
    for method in a
        .methods
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let method_arm = |subset: Vec<usize>| Arm {
            method: method.to_string(),
            kind: ArmKind::Method,
            subset,
        };
        match method {
            "random" => {
                for k in 0..a.random_seeds as u64 {
                    arms.push(Arm {
                        method: "random".into(),
                        kind: ArmKind::Random { seed: a.seed + k },
                        subset: selection::random_subset(pool.len(), m, a.seed + k),
                    });
                }
            }
            "full" => arms.push(Arm {
                method: "full".into(),
                kind: ArmKind::Full,
                subset: (0..pool.len()).collect(),
            }),
            name if score_files.contains_key(name) && name != "gdig" => {
                let f = input::read_per_train(&score_files[name])?;
                let (idx, sc) = on_pool(&f.scored, &pool_pos)?;
                let sel = ranked::top(&sc, Size::Count(m));
                notes.insert(
                    name.into(),
                    format!("top {m} by {}", score_files[name].display()).into(),
                );
                arms.push(method_arm(sel.picks.iter().map(|p| idx[p.index]).collect()));
            }
            "icp" => bail!(
                "--methods icp needs --scores icp=PATH (the scores.parquet of `inflow probe`)"
            ),
            "gdig" | "less" | "cosine" | "dot" | "influence" => {
                let store_dir = a.store.as_ref().with_context(|| {
                    format!("--methods {method} needs --store (an index of --pool) or --scores {method}=PATH")
                })?;
                let progress = Progress::default();
                let subset = if method == "gdig" {
                    let scored = match score_files.get("gdig") {
                        Some(p) => input::read_per_train(p)?.scored,
                        None => {
                            let spec = input::default_seed_method(store_dir);
                            notes.insert(
                                "gdig".into(),
                                format!("quality: mean {} score against the targets", spec.method)
                                    .into(),
                            );
                            input::seed_set_scores(
                                store_dir,
                                &model,
                                &targets,
                                &spec,
                                threads,
                                &progress,
                                &mut |_| {},
                            )?
                            .0
                        }
                    };
                    let (idx, sc) = on_pool(&scored, &pool_pos)?;
                    let mut opts = GdigOptions::new(Size::Count(m));
                    opts.quality =
                        Quality::TopFraction(a.gdig_quality_top.max(m as f64 / sc.len() as f64));
                    opts.clusters = a.clusters;
                    opts.seed = a.seed;
                    let kept = gdig::quality_filter(&sc, opts.quality);
                    let ids: Vec<&str> = kept.iter().map(|&i| sc.ids[i].as_str()).collect();
                    let store = Store::open(store_dir)?;
                    let feats = input::store_features(&store, &ids)?;
                    let sel = gdig::select(&sc, &kept, feats, store.dim(), &opts)?;
                    sel.picks.iter().map(|p| idx[p.index]).collect()
                } else {
                    let spec = match method {
                        "less" | "cosine" => MethodSpec::plain("cosine"),
                        "influence" => input::default_seed_method(store_dir),
                        other => MethodSpec::plain(other),
                    };
                    let s = score_samples(
                        store_dir,
                        &model,
                        &targets,
                        &spec,
                        1,
                        true,
                        threads,
                        &progress,
                        &mut |_| {},
                    )?;
                    let full = s.result.full.context("internal: no full matrix")?;
                    let ids: Vec<String> = Store::open(store_dir)?
                        .samples()?
                        .into_iter()
                        .map(|r| r.id)
                        .collect();
                    let scores = if method == "less" {
                        let tasks: Vec<String> = targets
                            .iter()
                            .map(|t| task(t).unwrap_or("all").to_string())
                            .collect();
                        notes.insert("less".into(), "in-process: per target task mean gradient cosine at the base model, max over tasks (one checkpoint, SGD gradients; give --scores less=… for checkpoint LESS)".into());
                        inflow::scores::checkpoints::per_task_max(&full, targets.len(), &tasks)
                    } else {
                        notes.insert(
                            method.into(),
                            format!("top {m} by mean {} score against the targets", s.method)
                                .into(),
                        );
                        inflow::scores::mean_over_queries(&full, targets.len())
                    };
                    let (idx, sc) = on_pool(&Scored::new(ids, scores)?, &pool_pos)?;
                    ranked::top(&sc, Size::Count(m))
                        .picks
                        .iter()
                        .map(|p| idx[p.index])
                        .collect()
                };
                arms.push(method_arm(subset));
            }
            other => bail!(
                "unknown method `{other}` in --methods; give its scores as --scores {other}=PATH"
            ),
        }
    }
    let mut train = TrainOptions::lora(a.lora_rank, a.lora_alpha, &a.lora_modules);
    train.lr = a.lr;
    train.epochs = a.epochs;
    train.batch_size = a.batch_size;
    train.seed = a.seed;
    train.threads = threads;
    let stop: Vec<u32> = [model.eos_token.clone(), Some("<|im_end|>".to_string())]
        .into_iter()
        .flatten()
        .filter_map(|t| model.token_id(&t))
        .collect();
    let opts = SelectionEvalOptions {
        train,
        max_new_tokens: a.max_new_tokens,
        stop,
    };
    std::fs::create_dir_all(&a.out).with_context(|| a.out.display().to_string())?;
    let total = arms.len() + (!a.no_base) as usize;
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("runs {bar:30} {pos}/{len}  ETA {eta}  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = selection::run(
        &mut model,
        &pool_seqs,
        &test_items,
        &arms,
        !a.no_base,
        &opts,
        &a.out,
        threads,
        &mut |i, _, name| {
            pb.set_position(i as u64);
            pb.set_message(name.to_string());
        },
    );
    pb.finish_and_clear();
    let report = report?;
    selection::plot(&report, &a.out)?;
    let notes_path = a.out.join("methods.json");
    std::fs::write(&notes_path, serde_json::to_vec_pretty(&notes)?)
        .with_context(|| notes_path.display().to_string())?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    println!(
        "selection experiment: pool {}, size {} ({}), {} test samples of the target tasks; {}",
        report.n_pool,
        m,
        a.size,
        report.n_test,
        a.out.join("report.json").display()
    );
    println!(
        "{:<10} {:>4} {:>6} {:>16} {:>16} {:>16}",
        "method", "runs", "train", "loss", "exact match", "ROUGE-L"
    );
    for s in &report.summary {
        let f = |st: &selection::Stat| {
            if s.n_runs > 1 {
                format!("{:.4} ± {:.4}", st.mean, st.std)
            } else {
                format!("{:.4}", st.mean)
            }
        };
        println!(
            "{:<10} {:>4} {:>6} {:>16} {:>16} {:>16}",
            s.method,
            s.n_runs,
            s.n_train,
            f(&s.loss),
            f(&s.exact_match),
            f(&s.rouge_l)
        );
    }
    println!(
        "plots: {}, {}",
        a.out.join("loss.png").display(),
        a.out.join("rouge_l.png").display()
    );
    Ok(())
}
