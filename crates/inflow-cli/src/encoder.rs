//! `inflow encoder train`, `inflow encode` and `inflow bench encode`: argument parsing and
//! printing around `inflow::pipeline::encoder`.

use anyhow::Result;
use clap::{Args, Subcommand};
use inflow::data::Format;
use inflow::encoder::distil::DistilConfig;
use inflow::pipeline::encoder as pipe;
use std::path::PathBuf;

use crate::progress::Bars;

#[derive(Subcommand)]
pub(crate) enum EncoderWhat {
    /// Distil a teacher gradient store into an encoder: the first --layers blocks of its model,
    /// pooled, and a trained head whose cosines follow the teacher's (listwise KL + Pearson,
    /// in-batch and hard negatives). Resumable, seeded; prints agreement on held-out samples
    /// and queries beside RepSim and the untrained truncated model.
    Train(TrainArgs),
}

#[derive(Args)]
pub(crate) struct TrainArgs {
    /// The teacher: a complete store `inflow index` wrote.
    #[arg(long)]
    teacher: PathBuf,
    /// Query samples (probes) used as anchors besides the training samples.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// Query data format.
    #[arg(long, default_value = "auto")]
    format: String,
    /// The queries' gradient features: a store `inflow index` wrote of --queries with the
    /// teacher's settings (default: computed here).
    #[arg(long)]
    query_store: Option<PathBuf>,
    /// Model override (default: the teacher's, from its run.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A LoRA adapter (or checkpoint) the trunk carries: the one the teacher was indexed at
    /// (then give --query-store, the queries indexed at the same weights).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Encoder folder; rerunning the same command resumes it.
    #[arg(long)]
    out: PathBuf,
    /// Trunk: the model's first K blocks.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 6)]
    layers: usize,
    /// Pooling of the trunk's states: last (last prompt token), mean (response tokens) or
    /// last-mean (both, concatenated) or all (both and the mean over the prompt tokens).
    #[arg(long, default_value = "last-mean")]
    pooling: String,
    /// Hidden width of the head's MLP (0: linear head).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1024)]
    hidden: usize,
    /// Embedding dimension.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    dim: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 600)]
    steps: usize,
    /// Anchors per step.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 64)]
    batch: usize,
    /// Random training samples in every anchor's candidate list.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    in_batch: usize,
    /// Hard negatives per anchor: its teacher top-H.
    #[arg(long, default_value_t = 32)]
    hard: usize,
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, value_parser = crate::bounds::non_negative, default_value_t = 0.0)]
    weight_decay: f64,
    /// τ_t on standardized teacher cosines.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 0.5)]
    tau_teacher: f64,
    /// λ of the Pearson term.
    #[arg(long, value_parser = crate::bounds::non_negative, default_value_t = 1.0)]
    pearson_weight: f64,
    /// Share of training samples and of queries held out.
    #[arg(long, value_parser = crate::bounds::fraction, default_value_t = 0.2)]
    val_fraction: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 100)]
    checkpoint_every: usize,
}

/// The encoder an experiment distils from its teacher store when `encoder` is among its
/// methods (`eval planted`, `eval selection`); the rest of `encoder train`'s settings keep
/// their defaults.
#[derive(Args)]
pub(crate) struct ExperimentEncoderArgs {
    /// encoder: trunk of the model's first K blocks.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 6)]
    encoder_layers: usize,
    /// encoder: hidden width of the head's MLP (0: linear head).
    #[arg(long, default_value_t = 1024)]
    encoder_hidden: usize,
    /// encoder: embedding dimension.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    encoder_dim: usize,
    /// encoder: distillation steps.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 600)]
    encoder_steps: usize,
    /// encoder: seed of the split, the head's initialisation and the sampler.
    #[arg(long, default_value_t = 0)]
    encoder_seed: u64,
}

impl ExperimentEncoderArgs {
    /// The library's settings.
    pub(crate) fn settings(&self) -> pipe::EncoderSettings {
        let d = pipe::EncoderSettings::default();
        pipe::EncoderSettings {
            layers: self.encoder_layers,
            hidden: self.encoder_hidden,
            dim: self.encoder_dim,
            distil: DistilConfig {
                steps: self.encoder_steps,
                seed: self.encoder_seed,
                ..d.distil
            },
            ..d
        }
    }
}

#[derive(Args)]
pub(crate) struct EncodeArgs {
    /// Encoder folder (`inflow encoder train`).
    #[arg(long)]
    encoder: PathBuf,
    #[command(flatten)]
    input: crate::args::DataArgs,
    /// Store folder; rerunning the same command resumes it.
    #[arg(long)]
    out: PathBuf,
    /// Model override (default: the encoder's).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Element type: f16 (default), f32, int8 or bit.
    #[arg(long, default_value = "f16")]
    dtype: String,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1024)]
    shard_size: usize,
    /// Samples per forward pass per worker (1 avoids padding).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    batch_size: usize,
    /// Encode only part I of N (counted from 0: contiguous whole shards) into a part store,
    /// for `inflow store merge`.
    #[arg(long, value_name = "I/N", value_parser = crate::args::part)]
    shard: Option<inflow::store::Part>,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Encoder folder; `index` runs with its teacher's settings.
    #[arg(long)]
    encoder: PathBuf,
    #[arg(long)]
    data: PathBuf,
    /// Samples per pass.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 32)]
    limit: usize,
    /// Rounds, each `index` then `encode`.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 2)]
    rounds: usize,
    #[arg(long)]
    model: Option<PathBuf>,
    /// Scratch folder (removed afterwards).
    #[arg(long, default_value = "runs/bench-encode")]
    scratch: PathBuf,
}

pub(crate) fn run(what: EncoderWhat, threads: usize, json: bool) -> Result<()> {
    match what {
        EncoderWhat::Train(a) => train(a, threads, json),
    }
}

fn train(a: TrainArgs, threads: usize, json: bool) -> Result<()> {
    let o = pipe::TrainOptions {
        teacher: a.teacher,
        queries: a.queries,
        query_format: a.format.parse::<Format>()?,
        query_store: a.query_store,
        model: a.model,
        adapter: a.adapter,
        out: a.out,
        layers: a.layers,
        pooling: a.pooling.parse()?,
        hidden: a.hidden,
        dim: a.dim,
        distil: DistilConfig {
            steps: a.steps,
            batch: a.batch,
            in_batch: a.in_batch,
            hard: a.hard,
            lr: a.lr,
            weight_decay: a.weight_decay,
            tau_teacher: a.tau_teacher,
            pearson_weight: a.pearson_weight,
            val_fraction: a.val_fraction,
            seed: a.seed,
            checkpoint_every: a.checkpoint_every,
        },
        threads,
        stop_after: None,
    };
    let s = pipe::train(&o, &Bars::default())?;
    crate::output::pretty(json, &s, || {
        println!(
            "encoder {}: {} steps{}, {} → {} dims; {} + {} training samples, {} + {} queries (train + held out)",
            s.out.display(),
            s.steps,
            s.resumed_from
                .map(|r| format!(" (resumed at {r})"))
                .unwrap_or_default(),
            s.d_in,
            s.dim,
            s.n_train,
            s.n_val,
            s.nq_train,
            s.nq_val
        );
        println!(
            "  trunk features {:.1} s, teacher targets {:.1} s, distillation {:.1} s, final loss {:.4}",
            s.seconds_trunk,
            s.seconds_teacher,
            s.seconds_distil,
            s.final_loss.unwrap_or(f64::NAN)
        );
        if let Some(m) = &s.metrics {
            for (title, table) in [
                ("held-out training samples", &m.held_out_samples),
                ("held-out queries", &m.held_out_queries),
            ] {
                if table.is_empty() {
                    continue;
                }
                println!("agreement with the teacher on {title} (mean per query):");
                println!(
                    "  {:<16} {:>9} {:>14} {:>7} {:>7}",
                    "scorer", "spearman", "within-task", "top10", "top50"
                );
                for (name, g) in table {
                    println!(
                        "  {:<16} {:>9.3} {:>14} {:>7.3} {:>7.3}",
                        name,
                        g.spearman,
                        g.spearman_within_task
                            .map_or("n/a".into(), |v| format!("{v:.3}")),
                        g.top10,
                        g.top50
                    );
                }
            }
        } else {
            println!("  not finished: rerun the same command to continue");
        }
        Ok(())
    })
}

pub(crate) fn encode(a: EncodeArgs, threads: usize, json: bool) -> Result<()> {
    let o = pipe::EncodeOptions {
        encoder: a.encoder,
        data: a.input.data.clone(),
        read: a.input.read_options()?,
        model: a.model,
        out: a.out.clone(),
        dtype: a.dtype.parse()?,
        shard_size: a.shard_size,
        batch_size: a.batch_size,
        threads,
        part: a.shard,
    };
    let encode = || Ok(pipe::encode(&o, &Bars::default())?);
    crate::output::store_written(json, &a.out, encode, |s, secs| {
        let rate = s.n_written as f64 / secs.max(1e-9);
        let head = crate::output::stored("encoded", &a.out, s, secs);
        println!("{head}, {rate:.1} samples/s");
        Ok(())
    })?;
    Ok(())
}

pub(crate) fn bench(a: BenchArgs, threads: usize, json: bool) -> Result<()> {
    let o = pipe::BenchOptions {
        encoder: a.encoder,
        data: a.data,
        limit: a.limit,
        rounds: a.rounds,
        model: a.model,
        threads,
        scratch: a.scratch,
    };
    let r = pipe::bench(&o, &Bars::default())?;
    crate::output::pretty(json, &r, || {
        println!(
            "{:<7} {:>5} {:>8} {:>7} {:>8} {:>7} {:>9} {:>10} {:>10}",
            "pass",
            "round",
            "samples",
            "tokens",
            "wall s",
            "cpu s",
            "samples/s",
            "tokens/s",
            "B/sample"
        );
        for p in &r.passes {
            println!(
                "{:<7} {:>5} {:>8} {:>7} {:>8.2} {:>7} {:>9.2} {:>10.0} {:>10.0}",
                p.what,
                p.round,
                p.samples,
                p.tokens,
                p.wall_s,
                p.cpu_s.map_or("n/a".into(), |c| format!("{c:.2}")),
                p.samples_per_s,
                p.tokens_per_s,
                p.bytes_per_sample
            );
        }
        println!(
            "median samples/s: index {:.2}, encode {:.2}: speed-up {:.1}x; bytes/sample {:.0} → {:.0} ({} threads)",
            r.index_samples_per_s,
            r.encode_samples_per_s,
            r.speedup,
            r.index_bytes_per_sample,
            r.encode_bytes_per_sample,
            r.threads
        );
        Ok(())
    })
}
