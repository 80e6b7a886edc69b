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
    #[arg(long, default_value = "dot,cosine,less,kfac,ekfac,datainf,repsim")]
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
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Fine-tuning epochs on the mix (a checkpoint per epoch feeds LESS).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 2)]
    epochs: usize,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    lora_rank: usize,
    #[arg(long, default_value = "q,v")]
    lora_modules: String,
    /// LoGra rank per side of the gradient features.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    rank: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 128)]
    max_tokens: usize,
    #[command(flatten)]
    truncate: crate::args::TruncateArgs,
    /// Triggered queries to generate answers for (attack success rate).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 4)]
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
    let r = planted::run(&o, &bars)?;
    crate::output::pretty(json, &r.json, || {
        println!(
            "planted {kind}: {} of {} samples, {} queries; query loss {} → {}",
            r.n_planted,
            r.n_mix,
            r.n_queries,
            r.query_loss_before
                .map_or("-".into(), |l| format!("{l:.3}")),
            r.query_loss_after.map_or("-".into(), |l| format!("{l:.3}")),
        );
        if kind == Kind::Mislabel {
            println!("{:<12} {:>14}", "method", "self-score AUC");
            for m in &r.methods {
                println!("{:<12} {:>14.3}", m.name, m.auc);
            }
        } else {
            println!("{:<12} {:>6} {:>6} {:>6}", "method", "Acc", "Cover", "AUC");
            for m in &r.methods {
                println!(
                    "{:<12} {:>6.3} {:>6.3} {:>6.3}",
                    m.name, m.acc, m.cover, m.auc
                );
            }
        }
        println!("wrote {}", r.path.display());
        Ok(())
    })
}
