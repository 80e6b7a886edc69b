//! `inflow demo`: index the bundled Natural Instructions sample with the reference model and
//! show, for each bundled probe, the training samples most similar in gradient space.

use crate::args::FeatureArgs;
use crate::{IndexArgs, ScoreArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// `inflow demo`'s arguments (its help is the `Demo` variant's).
#[derive(Args)]
pub(crate) struct DemoArgs {
    /// Model (default: models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by scripts/fetch-model.sh).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training samples to index from assets/data/train.jsonl.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 120)]
    limit: usize,
    /// Store folder.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
}

pub(crate) fn run(a: DemoArgs, threads: usize, json: bool) -> Result<()> {
    let DemoArgs { model, limit, out } = a;
    let model = crate::model_or_default(model)?;
    let assets = crate::assets_dir()?;
    eprintln!(
        "demo: indexing {limit} Natural Instructions training samples with {} ({} threads), then scoring the bundled probes",
        model.display(),
        threads
    );
    let summary = crate::index(
        IndexArgs {
            model: crate::args::ModelArgs {
                path: model.clone(),
                adapter: None,
            },
            input: crate::args::DataArgs {
                data: assets.join("train.jsonl"),
                format: "alpaca".into(),
                limit: Some(limit),
                skip_bad: false,
            },
            out: out.clone(),
            features: FeatureArgs {
                projection: "logra".into(),
                rank: 8,
                dim: 8192,
                seed: 0,
                modules: "all".into(),
                tokens: crate::args::TokenArgs {
                    template: "auto".into(),
                    max_tokens: 256,
                    truncate: crate::args::TruncateArgs {
                        truncate: "middle".into(),
                    },
                },
            },
            store: crate::args::StoreArgs {
                dtype: "f16".into(),
                shard_size: 32,
                batch_size: 1,
            },
            lora_grads: false,
            adam: false,
            checkpoints: Vec::new(),
            shard: None,
        },
        threads,
        json,
    )?;
    let _ = summary;
    crate::score(
        ScoreArgs {
            store: out.clone(),
            queries: assets.join("probe.jsonl"),
            format: "alpaca".into(),
            method: "cosine".into(),
            top_k: 3,
            out: Some(out.join("demo-top3.parquet")),
            // The demo's own folder: a rerun replaces its earlier answer.
            force: true,
            full: None,
            model: Some(model),
            limit: None,
            aggregate: None,
            preconditioner: "ekfac".into(),
            damping: 0.1,
            lissa_iters: 300,
            lissa_batch: 64,
            lissa_tol: 1e-2,
            show: 8,
            rerank: None,
            part: None,
        },
        threads,
        json,
    )?;
    if !json {
        println!(
            "\nRead it from Python: pandas.read_parquet(\"{}\"); features: numpy.load(\"{}/features-00000.npy\", mmap_mode=\"r\")",
            out.join("demo-top3.parquet").display(),
            out.display()
        );
    }
    Ok(())
}
