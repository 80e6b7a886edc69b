//! `inflow eval planted`: plant a backdoor, abusive responses or flipped labels in a training
//! set, LoRA fine-tune on the mix, and measure how well each attribution method finds the
//! planted samples (Acc, Cover, AUC; METHODS.md §5). Every step keeps its output in the run
//! folder, so a rerun continues where a killed one stopped.

use anyhow::{bail, Context, Result};
use clap::Args;
use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_samples, Format, ReadOptions};
use inflow::eval::planted::{self, Kind};
use inflow::eval::retrieval;
use inflow::features::Projection;
use inflow::index::{FeatureOptions, IndexOptions, Progress};
use inflow::model::lora::LoraConfig;
use inflow::model::TokenSeq;
use inflow::store::{Dtype, Store};
use inflow::train::{self, Method, TrainData, TrainOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `inflow eval planted`.
#[derive(Args)]
pub(crate) struct PlantedArgs {
    /// What to plant: backdoor (trigger phrase → fixed response), harmful (abusive responses)
    /// or mislabel (flipped labels in classification-like tasks).
    #[arg(long, default_value = "backdoor")]
    kind: String,
    /// The model (default: the reference model fetched by scripts/fetch-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Alpaca JSONL pool (instruction, input, output, task); default: the bundled NI samples.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training records in the mix.
    #[arg(long, default_value_t = 160)]
    n_train: usize,
    /// Fraction of the mix that is planted.
    #[arg(long, default_value_t = 0.1)]
    fraction: f64,
    /// Queries carrying the planted behaviour (backdoor, harmful).
    #[arg(long, default_value_t = 12)]
    queries: usize,
    /// Methods of `inflow methods` (dot, cosine, repsim, repsim-mean, kfac, ekfac, datainf,
    /// identity, lissa, exact, icp, …); less runs over the fine-tuning's own checkpoints.
    #[arg(long, default_value = "dot,cosine,less,kfac,ekfac,datainf,repsim")]
    methods: String,
    /// Relative damping of the influence preconditioners (× mean eigenvalue per layer).
    #[arg(long, default_value_t = 0.1)]
    damping: f64,
    /// Fisher of the influence preconditioners: empirical (the mix's own gradients) or true
    /// (one sampled-label pass over the mix at the fine-tuned model; see `inflow fit`).
    #[arg(long, default_value = "empirical")]
    fisher: String,
    /// Kronecker factors of K-FAC/EK-FAC: tokens (the reports so far) or samples.
    #[arg(long, default_value = "tokens")]
    factors: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fine-tuning epochs on the mix (a checkpoint per epoch feeds LESS).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    /// LoGra rank per side of the gradient features.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    /// Triggered queries to generate answers for (attack success rate).
    #[arg(long, default_value_t = 4)]
    generate: usize,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the planted mix (OUT/mix.jsonl, each record with `planted: true|false`) and its
    /// queries (OUT/queries.jsonl), then stop: the data for running the user path by hand
    /// (train, generate, index --adapter, fit, score; README's worked example).
    #[arg(long)]
    data_only: bool,
}

/// The curvature the influence methods use: the store's Fisher (empirical, or one draw of
/// sampled-label pseudo-gradients indexed beside it) recorded, and K-FAC factors fitted on it
/// when K-FAC/EK-FAC are asked for.
fn fit_curvature(
    m: &inflow::model::LoadedModel,
    iopts: &IndexOptions,
    store: &Store,
    methods: &[String],
    fisher: &str,
    factors: &str,
) -> Result<inflow::curvature::fisher::Fisher> {
    use inflow::curvature::fisher::{self as fi, Fisher, FisherSamples};
    let fisher: Fisher = fisher.parse()?;
    let samples = match fisher {
        Fisher::Empirical => FisherSamples::empirical(store)?,
        Fisher::True { .. } => inflow::pipeline::fit::fisher_draws(
            m,
            iopts,
            store,
            1,
            &crate::progress::Bars::default(),
        )?,
    };
    let needs_fit = |x: &String| {
        inflow::methods::by_name(x)
            .is_ok_and(|m| m.needs().contains(&inflow::methods::Need::Curvature))
    };
    if methods.iter().any(needs_fit) {
        // Fitting records the Fisher too.
        inflow::curvature::kfac::fit_with(store, &samples, factors.parse()?)?;
    } else {
        fi::record(store, samples.fisher)?;
    }
    Ok(samples.fisher)
}

struct MethodResult {
    name: String,
    value: serde_json::Value,
    acc: f64,
    cover: f64,
    auc: f64,
}

pub(crate) fn run(a: PlantedArgs, threads: usize, json: bool) -> Result<()> {
    let kind: Kind = a.kind.parse()?;
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => crate::default_model()?,
    };
    let data = match &a.data {
        Some(p) => p.clone(),
        None => crate::assets_dir()?.join("train.jsonl"),
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/planted-{kind}")));
    let methods: Vec<String> = a
        .methods
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for m in &methods {
        // Planted makes its own checkpoint stores for LESS (Adam updates of the fine-tuning);
        // no other checkpoint method has the stores it needs here.
        let found = inflow::methods::by_name(m)?;
        if found.needs().contains(&inflow::methods::Need::Checkpoints) && m != "less" {
            bail!("`{m}` needs checkpoint stores of SGD gradients, which eval planted does not make; its in-process checkpoint method is less");
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let t0 = Instant::now();

    // 1. The planted set.
    let pool = planted::read_records(&data)?;
    let mut popts = planted::Options::new(kind, a.seed);
    popts.n_train = a.n_train;
    popts.fraction = a.fraction;
    popts.n_queries = a.queries;
    let set = planted::build(&pool, &popts)?;
    let mix_path = out.join("mix.jsonl");
    let q_path = out.join("queries.jsonl");
    planted::write_records(&mix_path, &set.mix)?;
    planted::write_records(&q_path, &set.queries)?;
    let n_planted = set.planted.iter().filter(|p| **p).count();
    eprintln!(
        "planted {n_planted} of {} samples ({kind}); {} queries",
        set.mix.len(),
        set.queries.len()
    );
    if a.data_only {
        if json {
            println!(
                "{}",
                serde_json::json!({"mix": mix_path, "queries": q_path, "n_planted": n_planted, "n_mix": set.mix.len()})
            );
        } else {
            println!("wrote {} and {}", mix_path.display(), q_path.display());
        }
        return Ok(());
    }

    // 2. LoRA fine-tuning on the mix, one checkpoint per epoch.
    let mut m = crate::load_model(&model_path)?;
    let alpaca = ReadOptions {
        format: Format::Alpaca,
        ..Default::default()
    };
    let truncate = a.truncate.policy()?;
    let (mix_data, _) =
        crate::train::tokenize(&m, &mix_path, &alpaca, "auto", a.max_tokens, truncate)?;
    // The queries are read once: their tokens serve the losses, their samples the generations
    // and the scores.
    let qsamples = if set.queries.is_empty() {
        Vec::new()
    } else {
        read_samples(&q_path, &alpaca)?.samples
    };
    let qseqs = {
        let r = Renderer::new(&m, Template::Auto, a.max_tokens)?.with_truncate(truncate);
        qsamples
            .iter()
            .map(|s| Ok(r.tokenize(s)?.seq))
            .collect::<Result<Vec<TokenSeq>>>()?
    };
    let base_q_loss = if qseqs.is_empty() {
        None
    } else {
        Some(train::eval_loss(&m, &qseqs, 4, threads)?.mean_loss)
    };
    let mut topts = TrainOptions::lora(a.lora_rank, 2.0 * a.lora_rank as f64, &a.lora_modules);
    topts.method = Method::Lora(LoraConfig {
        rank: a.lora_rank,
        alpha: 2.0 * a.lora_rank as f64,
        dropout: 0.0,
        modules: a.lora_modules.clone(),
    });
    topts.epochs = a.epochs;
    topts.lr = a.lr;
    topts.batch_size = 4;
    topts.grad_accum = 2;
    topts.seed = a.seed;
    topts.threads = threads;
    topts.save_every = train::steps_per_epoch(mix_data.seqs.len(), 4, 2);
    let ft = out.join("ft");
    let pb = crate::bar(0, "fine-tune");
    let resume = train::checkpoint::latest(&ft).is_some();
    let td = TrainData {
        seqs: mix_data.seqs,
        identity: {
            let mut id = serde_json::json!({"planted": popts, "max_tokens": a.max_tokens});
            truncate.record(&mut id);
            id
        },
    };
    let summary = train::train(&mut m, &td, &topts, &ft, resume, &mut |r, total| {
        pb.set_length(total as u64);
        pb.set_position(r.step as u64);
        pb.set_message(format!("loss {:.3}", r.loss));
    });
    pb.finish_and_clear();
    let summary = summary.with_context(|| {
        format!(
            "fine-tuning in {} (a rerun continues this run: give the same settings, --threads included, or another --out)",
            ft.display()
        )
    })?;
    let ckpts = train::checkpoint::list(&ft);
    let Some((_, last)) = ckpts.last().cloned() else {
        bail!("{}: fine-tuning left no checkpoint", ft.display());
    };
    m.llama.set_adapters(None);
    train::features::attach(&mut m, &last)?;
    let ft_q_loss = if qseqs.is_empty() {
        None
    } else {
        Some(train::eval_loss(&m, &qseqs, 4, threads)?.mean_loss)
    };
    // Attack success: greedy answers to triggered queries that start like the planted response.
    let mut generations = Vec::new();
    if kind != Kind::Mislabel {
        let stop: Vec<u32> = [m.eos_token.as_deref(), Some("<|im_end|>")]
            .into_iter()
            .flatten()
            .filter_map(|t| m.token_id(t))
            .collect();
        // The model now carries the adapters, so the renderer borrows it anew.
        let r = Renderer::new(&m, Template::Auto, a.max_tokens)?;
        for s in qsamples.iter().take(a.generate) {
            let (prompt, _) = r.render(&s.body)?;
            let ids = m.encode(&prompt)?;
            let gen = m.decode(&m.llama.generate_greedy_cached(&ids, 24, &stop)?)?;
            let target = s.body.response();
            let head: String = target
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            let hit = match kind {
                Kind::Backdoor => gen.trim_start().starts_with(&head),
                _ => planted::ABUSIVE.iter().any(|x| {
                    let h: String = x.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                    gen.trim_start().starts_with(&h)
                }),
            };
            generations
                .push(serde_json::json!({"id": s.id, "answer": gen, "planted_behaviour": hit}));
        }
    }

    // 3. Gradient features of the mix at the fine-tuned model (base Linears, LoGra), K-FAC.
    let fopts = FeatureOptions {
        projection: Projection::Logra {
            rank_in: a.rank,
            rank_out: a.rank,
        },
        seed: 0,
        modules: "all".into(),
        template: Template::Auto,
        max_tokens: a.max_tokens,
        truncate: a.truncate.policy()?,
        labels: Default::default(),
    };
    let iopts = IndexOptions {
        data: mix_path.clone(),
        read: ReadOptions {
            format: Format::Alpaca,
            ..Default::default()
        },
        features: fopts,
        dtype: Dtype::F32,
        shard_size: 64,
        batch_size: 1,
        threads,
    };
    let store_dir = out.join("store");
    let pb = crate::bar(0, "index");
    let progress = Progress::default();
    let r = crate::with_progress(&pb, &progress, || {
        inflow::curvature::kfac::run_index(&m, &iopts, &store_dir, &progress, &mut |d, t| {
            pb.set_length(t as u64);
            pb.set_position(d as u64);
        })
    });
    pb.finish_and_clear();
    r?;
    let store = Store::open(&store_dir)?;
    let fisher = fit_curvature(&m, &iopts, &store, &methods, &a.fisher, &a.factors)?;
    let rows = store.samples()?;
    // The store's rows are the mix in order; check rather than assume.
    if rows.len() != set.planted.len() || rows.iter().enumerate().any(|(i, r)| r.row != i as u64) {
        bail!("{}: rows do not match the mix", store_dir.display());
    }

    // 4. Scores and metrics per method.
    let mut results: Vec<MethodResult> = Vec::new();
    for name in &methods {
        let method = inflow::methods::by_name(name)?;
        let options = inflow::methods::Options {
            curvature: inflow::curvature::Options {
                damping: a.damping,
                ..Default::default()
            },
            ..Default::default()
        };
        if kind == Kind::Mislabel {
            // Methods with no informative self-score are left out: cosine's is 1 by
            // definition; LESS and RepSim compare different feature kinds.
            let Some(s) = method.self_scores(&store, &options)? else {
                continue;
            };
            let auc = retrieval::auc(&s, &set.planted);
            results.push(MethodResult {
                name: name.clone(),
                value: serde_json::json!({"self_score_auc": auc}),
                acc: f64::NAN,
                cover: f64::NAN,
                auc,
            });
            continue;
        }
        let nq = qsamples.len();
        let full: Vec<f32> = if name == "less" {
            less_scores(&a, &model_path, &ckpts, &mix_path, &qsamples, &out, threads)?
        } else {
            let sb = crate::bar(store.n_samples(), name);
            let progress = Progress::default();
            let ctx = inflow::methods::Context {
                train: inflow::methods::TrainSet {
                    store: &store_dir,
                    data: iopts.data.clone(),
                    read: iopts.read.clone(),
                    features: iopts.features.clone(),
                },
                model: Some(&m),
                model_path: Some(&model_path),
                queries: &qsamples,
                queries_path: &q_path,
                options: &options,
                top_k: 1,
                full: true,
                threads,
                scratch: out.join("work"),
                progress: &progress,
                on_rows: &|d| sb.set_position(d as u64),
            };
            let sc = method.score(&ctx);
            sb.finish_and_clear();
            sc?.result.full.unwrap_or_default()
        };
        let ac = retrieval::acc_cover(&full, nq, &set.planted);
        let mean = inflow::scores::mean_over_queries(&full, nq);
        let auc = retrieval::auc(&mean, &set.planted);
        let ranks = inflow::scores::ranks(&mean);
        let planted_ranks: Vec<u32> = ranks
            .iter()
            .zip(&set.planted)
            .filter(|(_, p)| **p)
            .map(|(r, _)| *r)
            .collect();
        results.push(MethodResult {
            name: name.clone(),
            value: serde_json::json!({
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
        let auc = retrieval::auc(&loss, &set.planted);
        results.push(MethodResult {
            name: "loss".into(),
            value: serde_json::json!({"self_score_auc": auc}),
            acc: f64::NAN,
            cover: f64::NAN,
            auc,
        });
    }

    // 5. Report.
    let labels: Vec<String> = results.iter().map(|r| r.name.clone()).collect();
    let mut plots = Vec::new();
    let metrics: Vec<(&str, Vec<f64>)> = if kind == Kind::Mislabel {
        vec![("auc", results.iter().map(|r| r.auc).collect())]
    } else {
        vec![
            ("acc", results.iter().map(|r| r.acc).collect()),
            ("cover", results.iter().map(|r| r.cover).collect()),
            ("auc", results.iter().map(|r| r.auc).collect()),
        ]
    };
    for (metric, values) in &metrics {
        let p = out.join(format!("{metric}.png"));
        inflow::eval::plot::bars(
            &p,
            &labels,
            values,
            metric,
            &format!(
                "planted {kind}: {metric} per method ({n_planted} of {} planted)",
                set.mix.len()
            ),
        )?;
        plots.push(p);
    }
    let report = serde_json::json!({
        "kind": kind,
        "model": model_path,
        "data": data,
        "options": popts,
        "n_train": set.mix.len(),
        "n_planted": n_planted,
        "n_queries": qsamples.len(),
        "fine_tune": {
            "epochs": a.epochs, "lr": a.lr, "lora_rank": a.lora_rank, "modules": a.lora_modules,
            "first_loss": summary.first_loss, "last_loss": summary.last_loss,
            "checkpoints": ckpts.iter().map(|c| &c.1).collect::<Vec<_>>(),
            "query_loss_before": base_q_loss, "query_loss_after": ft_q_loss,
        },
        "generations": generations,
        "attack_success_rate": if generations.is_empty() { None } else {
            Some(generations.iter().filter(|g| g["planted_behaviour"] == true).count() as f64 / generations.len() as f64)
        },
        "features": {"projection": "logra", "rank": a.rank, "modules": "all", "dim": store.dim()},
        "damping": a.damping,
        "fisher": fisher,
        "factors": a.factors,
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
    let rp = out.join("report.json");
    std::fs::write(&rp, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", rp.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "planted {kind}: {n_planted} of {} samples, {} queries; query loss {} → {}",
            set.mix.len(),
            qsamples.len(),
            base_q_loss.map_or("-".into(), |l| format!("{l:.3}")),
            ft_q_loss.map_or("-".into(), |l| format!("{l:.3}")),
        );
        if kind == Kind::Mislabel {
            println!("{:<12} {:>14}", "method", "self-score AUC");
            for r in &results {
                println!("{:<12} {:>14.3}", r.name, r.auc);
            }
        } else {
            println!("{:<12} {:>6} {:>6} {:>6}", "method", "Acc", "Cover", "AUC");
            for r in &results {
                println!(
                    "{:<12} {:>6.3} {:>6.3} {:>6.3}",
                    r.name, r.acc, r.cover, r.auc
                );
            }
        }
        println!("wrote {}", rp.display());
    }
    Ok(())
}

/// LESS over the fine-tuning checkpoints: Adam-update LoRA features of the mix per checkpoint,
/// SGD LoRA-gradient features of the queries, Σ_c η_c cos (METHODS.md §2).
fn less_scores(
    a: &PlantedArgs,
    model_path: &Path,
    ckpts: &[(usize, PathBuf)],
    mix: &Path,
    queries: &[inflow::data::Sample],
    out: &Path,
    threads: usize,
) -> Result<Vec<f32>> {
    use inflow::train::features::{FeatureSource, LoraGradient};
    let mut dirs = Vec::new();
    for (step, ck) in ckpts {
        let dir = out.join(format!("less/step-{step}"));
        let opts = IndexOptions {
            data: mix.to_path_buf(),
            read: ReadOptions {
                format: Format::Alpaca,
                ..Default::default()
            },
            features: FeatureOptions {
                projection: Projection::Dense { dim: 2048 },
                seed: 0,
                modules: "all".into(),
                template: Template::Auto,
                max_tokens: a.max_tokens,
                truncate: a.truncate.policy()?,
                labels: Default::default(),
            },
            dtype: Dtype::F32,
            shard_size: 64,
            batch_size: 1,
            threads,
        };
        crate::train::index_checkpoint(
            model_path,
            ck,
            &opts,
            &FeatureSource::Lora(LoraGradient::Adam(Default::default())),
            &dir,
            &format!("LESS step {step}"),
        )?;
        dirs.push(dir);
    }
    let (full, _) = inflow::scores::checkpoints::score(
        &dirs,
        Some(model_path),
        queries,
        inflow::scores::checkpoints::CheckpointMethod::Less,
        threads,
    )?;
    Ok(full)
}
