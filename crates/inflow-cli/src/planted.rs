//! `inflow eval planted`: plant a backdoor, abusive responses or flipped labels in a training
//! set, LoRA fine-tune on the mix, and measure how well each attribution method finds the
//! planted samples (Acc, Cover, AUC; METHODS.md §5). The experiment is
//! `inflow::pipeline::planted`; every step keeps its output in the run folder, so a rerun
//! continues where a killed one stopped.

use anyhow::Result;
use clap::Args;
use inflow::eval::planted::Kind;
use inflow::pipeline::planted::{self, PlantedOptions};
use std::path::PathBuf;

/// Arguments of `inflow eval planted`.
#[derive(Args)]
pub(crate) struct PlantedArgs {
    /// What to plant: backdoor (trigger phrase → fixed response), harmful (hostile requests →
    /// abusive responses), mislabel (flipped labels in classification-like tasks), or class
    /// (nothing: attribute held-out queries to the training samples of their own task).
    #[arg(long, default_value = "backdoor")]
    kind: String,
    /// The model (default: the reference model fetched by scripts/fetch-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Alpaca JSONL pool (instruction, input, output, task); default: the bundled NI samples.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Training records in the mix.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 160)]
    n_train: usize,
    /// Fraction of the mix that is planted.
    #[arg(long, value_parser = crate::bounds::fraction, default_value_t = 0.1)]
    fraction: f64,
    /// Queries carrying the planted behaviour (backdoor, harmful).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 12)]
    queries: usize,
    /// Methods of `inflow methods` (dot, cosine, repsim, repsim-mean, kfac, ekfac, datainf,
    /// identity, lissa, exact, icp, …); less runs over the fine-tuning's own checkpoints;
    /// encoder distils the mix's gradient store into an encoder (--encoder-*) and scores with it.
    #[arg(
        long,
        default_value = "dot,cosine,less,kfac,ekfac,datainf,lissa,repsim,repsim-mean,icp,one-step"
    )]
    methods: String,
    /// Relative damping of the influence preconditioners (× mean eigenvalue per layer).
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 0.1)]
    damping: f64,
    /// Fisher of the influence preconditioners: empirical (the mix's own gradients) or true
    /// (one sampled-label pass over the mix at the fine-tuned model; see `inflow fit`).
    #[arg(long, default_value = "empirical")]
    fisher: String,
    /// Kronecker factors of K-FAC/EK-FAC: tokens (the reports so far) or samples.
    #[arg(long, default_value = "tokens")]
    factors: String,
    /// Seed of the planted set (class: the tasks and records), the LoRA initialisation and the
    /// data order.
    #[arg(long, default_value_t = 7, conflicts_with = "seeds")]
    seed: u64,
    /// Run the experiment once per seed (OUT/seed-S each) and report mean ± sd over them.
    #[arg(long)]
    seeds: Option<String>,
    /// Most fine-tuning epochs on the mix (a checkpoint per epoch feeds LESS); see --until.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 10)]
    epochs: usize,
    /// fires: stop at the first epoch whose greedy answers to the held-out queries show the
    /// behaviour at least --min-attack-success of the time (backdoor, harmful); epochs: train
    /// all --epochs.
    #[arg(long, default_value = "fires")]
    until: String,
    /// Least attack success (share of held-out answers showing the behaviour) at which
    /// retrieval is reported; below it the run stops with the answers per epoch.
    #[arg(long, value_parser = crate::bounds::proportion, default_value_t = 0.8)]
    min_attack_success: f64,
    /// Report retrieval even when the model's attack success is under --min-attack-success.
    #[arg(long)]
    force_retrieval: bool,
    /// Also index and score at every earlier epoch checkpoint, with the last one's queries:
    /// retrieval along training (OUT/store-step-N; all methods but less and encoder;
    /// report.json's along_training, along-*.png).
    #[arg(long)]
    trajectory: bool,
    /// class: tasks in the mix (--n-train / --tasks records each).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 4)]
    tasks: usize,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 5e-3)]
    lr: f64,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    lora_rank: usize,
    #[arg(long, default_value = "all")]
    lora_modules: String,
    /// LoGra rank per side of the gradient features.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    rank: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    /// Held-out queries the fine-tuned model answers: its attack success, and (those answers
    /// that show the behaviour) the queries of the paper's setting. class answers all queries.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 12)]
    generate: usize,
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the planted mix (OUT/mix.jsonl, each record with `planted: true|false`) and its
    /// queries (OUT/queries.jsonl), then stop: the data for running the user path by hand
    /// (train, generate, index --adapter, fit, score; README's worked example).
    #[arg(long)]
    data_only: bool,
    #[command(flatten)]
    encoder: crate::encoder::ExperimentEncoderArgs,
}

pub(crate) fn run(a: PlantedArgs, threads: usize, json: bool) -> Result<()> {
    let kind: Kind = a.kind.parse()?;
    let model = match a.model {
        Some(p) => p,
        None => crate::default_model()?,
    };
    let data = match a.data {
        Some(p) => p,
        None => crate::assets_dir()?.join("train.jsonl"),
    };
    let out = a
        .out
        .unwrap_or_else(|| PathBuf::from(format!("runs/planted-{kind}")));
    let seeds = match &a.seeds {
        Some(s) => Some(
            crate::args::list(s)
                .iter()
                .map(|x| {
                    x.parse::<u64>().map_err(|_| {
                        anyhow::anyhow!("--seeds: `{x}` is not a seed (a comma-separated list of whole numbers)")
                    })
                })
                .collect::<Result<Vec<u64>>>()?,
        ),
        None => None,
    };
    let o = PlantedOptions {
        kind,
        model,
        data,
        out,
        n_train: a.n_train,
        fraction: a.fraction,
        queries: a.queries,
        methods: crate::args::list(&a.methods),
        damping: a.damping,
        fisher: a.fisher.parse()?,
        factors: a.factors.parse()?,
        seed: a.seed,
        epochs: a.epochs,
        lr: a.lr,
        lora_rank: a.lora_rank,
        lora_modules: a.lora_modules,
        rank: a.rank,
        max_tokens: a.max_tokens,
        truncate: a.truncate.policy()?,
        generate: a.generate,
        until: a.until.parse()?,
        min_attack_success: a.min_attack_success,
        force_retrieval: a.force_retrieval,
        n_tasks: a.tasks,
        trajectory: a.trajectory,
        encoder: a.encoder.settings(),
        threads,
    };
    let bars = crate::progress::Bars::default();
    if a.data_only {
        planted::check_methods(&o.methods)?;
        let d = planted::data(&o, &bars)?;
        if json {
            println!("{}", serde_json::to_string(&d)?);
        } else {
            println!("wrote {} and {}", d.mix.display(), d.queries.display());
        }
        return Ok(());
    }
    if let Some(seeds) = seeds {
        let r = planted::run_seeds(&o, &seeds, &bars)?;
        return crate::output::pretty(json, &r.json, || {
            println!("planted {kind} over seeds {:?} (mean ± sd)", r.seeds);
            if r.refused > 0 {
                println!(
                    "{} seed(s) left out: their model did not learn the behaviour (report.json: refused)",
                    r.refused
                );
            }
            if let Some(a) = &r.attack_success {
                println!("attack success {:.2} ± {:.2}", a.mean, a.sd);
            }
            println!(
                "{:<20} {:<12} {:>13} {:>13} {:>13}",
                "queries", "method", "Acc", "Cover", "AUC"
            );
            let pm = |s: &planted::Spread| format!("{:.3} ± {:.3}", s.mean, s.sd);
            for row in &r.rows {
                println!(
                    "{:<20} {:<12} {:>13} {:>13} {:>13}",
                    row.queries,
                    row.method,
                    pm(&row.acc),
                    pm(&row.cover),
                    pm(&row.auc)
                );
            }
            println!("wrote {}", r.path.display());
            Ok(())
        });
    }
    let r = planted::run(&o, &bars)?;
    crate::output::pretty(json, &r.json, || {
        println!(
            "planted {kind}: {} of {} samples, {} queries; query loss {} → {}{}",
            r.n_planted,
            r.n_mix,
            r.n_queries,
            r.query_loss_before
                .map_or("-".into(), |l| format!("{l:.3}")),
            r.query_loss_after.map_or("-".into(), |l| format!("{l:.3}")),
            r.attack_success
                .map_or(String::new(), |a| format!("; attack success {a:.2}")),
        );
        if kind == Kind::Mislabel {
            println!("{:<12} {:>14}", "method", "self-score AUC");
            for m in &r.methods {
                println!("{:<12} {:>14.3}", m.name, m.auc);
            }
        } else {
            let sets = [
                ("queries with the planted/reference response", &r.methods),
                ("the model's own answers", &r.methods_generated),
            ];
            for (what, ms) in sets {
                if ms.is_empty() {
                    continue;
                }
                println!("{what}:");
                println!("{:<12} {:>6} {:>6} {:>6}", "method", "Acc", "Cover", "AUC");
                for m in ms.iter() {
                    println!(
                        "{:<12} {:>6.3} {:>6.3} {:>6.3}",
                        m.name, m.acc, m.cover, m.auc
                    );
                }
            }
        }
        println!("wrote {}", r.path.display());
        Ok(())
    })
}
