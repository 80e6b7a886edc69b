//! `inflow bench features`: throughput of per-sample gradient features on the reference model,
//! beside baselines measured in the same run (this machine's GEMM rate, and plain candle
//! autograd that also computes every weight gradient).

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use inflow::data::{read_samples, Format, ReadOptions};
use inflow::features::Projection;
use inflow::index::{FeatureOptions, FeaturePass, Featurizer, Progress};
use std::path::PathBuf;
use std::time::Instant;

pub(crate) use inflow::pipeline::machine::{gemm_gflops, peak_rss};

/// `inflow bench features`' arguments (its help is the `Features` variant's).
#[derive(Args)]
pub(crate) struct FeaturesArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Samples from the bundled Natural Instructions data.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 64)]
    samples: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    max_tokens: usize,
    /// LoGra rank per side.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    rank: usize,
}

pub(crate) fn features(a: FeaturesArgs, threads: usize, json: bool) -> Result<()> {
    let (n, max_tokens, rank) = (a.samples, a.max_tokens, a.rank);
    let model_path = crate::model_or_default(a.model)?;
    let m = crate::load_model(&model_path)?;
    let data = crate::assets_dir()?.join("train.jsonl");
    let report = read_samples(
        &data,
        &ReadOptions {
            format: Format::Alpaca,
            skip_bad: false,
            limit: Some(n),
        },
    )?;
    if report.samples.is_empty() {
        bail!("no samples in {}", data.display());
    }
    let n = report.samples.len();
    let opts = FeatureOptions {
        projection: Projection::Logra {
            rank_in: rank,
            rank_out: rank,
        },
        seed: 0,
        modules: "all".into(),
        template: inflow::data::tokens::Template::Auto,
        max_tokens,
        truncate: Default::default(),
        labels: Default::default(),
    };
    let fz = Featurizer::new(&m, &opts)?;
    let dim = fz.spec().dim();
    let params = m.llama.n_params() as f64;

    eprintln!("measuring GEMM (1024³ f32) with 1 and {threads} threads…");
    let gemm1 = gemm_gflops(1, 1024, 8)?;
    let gemm_n = gemm_gflops(threads, 1024, 8)?;

    eprintln!("features: {n} samples, {threads} workers…");
    let progress = Progress::default();
    let pb = crate::bar(n, "bench");
    let t = Instant::now();
    let res = crate::with_progress(&pb, &progress, || {
        fz.featurize(&report.samples, 1, threads, &progress)
    });
    pb.finish_and_clear();
    let rows = res?.rows;
    let secs = t.elapsed().as_secs_f64();
    let tokens: usize = rows.iter().map(|r| r.n_tokens as usize).sum();
    let gflops = 6.0 * params * tokens as f64 / secs / 1e9;

    // Baseline in the same run: plain candle autograd (weights as Vars, stock matmul backward
    // computing every dW), one thread, on the first few samples, vs our path on the same ones.
    let nb = n.min(4);
    eprintln!("baseline: plain autograd on {nb} samples, 1 thread…");
    let fz1 = &fz;
    let t = Instant::now();
    let p1 = Progress::default();
    fz1.featurize(&report.samples[..nb], 1, 1, &p1)?;
    let ours_1t = t.elapsed().as_secs_f64();
    let mut trainable = inflow::model::LoadedModel::load(&model_path, DType::F32)?;
    trainable.llama.make_trainable()?;
    let seqs: Vec<_> = report.samples[..nb]
        .iter()
        .map(|s| fz.renderer().tokenize(s).map(|t| t.seq))
        .collect::<inflow::Result<_>>()?;
    let t = Instant::now();
    for s in &seqs {
        trainable.llama.loss_and_grads(std::slice::from_ref(s))?;
    }
    let autograd_1t = t.elapsed().as_secs_f64();
    drop(trainable);

    let out = serde_json::json!({
        "model": model_path, "samples": n, "tokens": tokens, "threads": threads,
        "seconds": secs, "samples_per_s": n as f64 / secs, "tokens_per_s": tokens as f64 / secs,
        "gflops_6pt": gflops, "gemm_gflops_1_thread": gemm1, "gemm_gflops_all_threads": gemm_n,
        "fraction_of_gemm": gflops / gemm_n,
        "feature_dim": dim, "bytes_per_sample_f16": dim * 2 + 4,
        "peak_rss_bytes": peak_rss(),
        "baseline_samples": nb, "ours_1_thread_s": ours_1t, "plain_autograd_1_thread_s": autograd_1t,
        "speedup_vs_plain_autograd": autograd_1t / ours_1t,
    });
    crate::output::pretty(json, &out, || {
        println!(
            "inflow bench features — {} ({:.1} M params), LoGra rank {rank}, {threads} workers",
            model_path.display(),
            params / 1e6
        );
        println!("  samples             {n} ({tokens} tokens, ≤ {max_tokens} each)");
        println!("  time                {secs:.2} s");
        println!(
            "  throughput          {:.2} samples/s, {:.0} tokens/s",
            n as f64 / secs,
            tokens as f64 / secs
        );
        println!("  achieved            {gflops:.1} GFLOP/s (6·params·tokens)");
        println!("  GEMM, same run      {gemm1:.1} GFLOP/s on 1 thread, {gemm_n:.1} on {threads}  → {:.0}% of GEMM", 100.0 * gflops / gemm_n);
        println!("  vs plain autograd   {:.2}× faster ({nb} samples, 1 thread: {ours_1t:.2} s vs {autograd_1t:.2} s)", autograd_1t / ours_1t);
        println!(
            "  store               {dim} dims, {} bytes/sample (f16 + norm)",
            dim * 2 + 4
        );
        if let Some(r) = peak_rss() {
            println!(
                "  peak RSS            {:.2} GiB",
                r as f64 / (1u64 << 30) as f64
            );
        }
        Ok(())
    })
}

/// `inflow bench influence`: EK-FAC fit and influence scoring at scale on synthetic features.
pub(crate) fn influence(
    n: usize,
    nq: usize,
    rank: usize,
    out: &std::path::Path,
    threads: usize,
    json: bool,
) -> Result<()> {
    use inflow::features::{FeatureSpec, Projection};
    use inflow::store::{Dtype, Store, StoreSpec};
    let fspec = FeatureSpec::synthetic(
        210,
        576,
        Projection::Logra {
            rank_in: rank,
            rank_out: rank,
        },
    );
    let dim = fspec.dim();
    let _ = std::fs::remove_dir_all(out);
    let spec = StoreSpec::synthetic(serde_json::to_value(&fspec)?, Dtype::F16, dim, 1000);
    eprintln!("writing a synthetic store: {n} × {dim} (f16)…");
    let mut rng = inflow::features::random::Stream::new(1, "bench-influence");
    let store = Store::write_synthetic(out, spec, n, |rows| {
        (0..rows.len() * dim)
            .map(|_| rng.normal() as f32 * 0.1)
            .collect()
    })?;
    let gemm = gemm_gflops(threads, 1024, 8)?;
    let rss0 = peak_rss();
    let t = Instant::now();
    inflow::curvature::kfac::fit(&store, inflow::curvature::kfac::FactorSource::Samples)?;
    let fit_s = t.elapsed().as_secs_f64();
    let pre = inflow::curvature::load("ekfac", &store, &inflow::curvature::Options::default())?;
    let est = inflow::estimators::influence::Influence::new(pre);
    let q: Vec<f32> = (0..nq * dim).map(|_| rng.normal() as f32 * 0.1).collect();
    let t = Instant::now();
    let r = inflow::scores::score_store(&store, &q, nq, &est, 10, false, &mut |_| {})?;
    let score_s = t.elapsed().as_secs_f64();
    let gflop = 2.0 * nq as f64 * n as f64 * dim as f64 / 1e9;
    let _ = std::fs::remove_dir_all(out);
    let outv = serde_json::json!({
        "samples": n, "queries": nq, "dim": dim, "threads": threads,
        "store_bytes": n * (dim * 2 + 4),
        "fit_ekfac_seconds": fit_s, "score_seconds": score_s,
        "score_gflop": gflop, "score_gflops": gflop / score_s,
        "gemm_gflops_all_threads": gemm, "fraction_of_gemm": gflop / score_s / gemm,
        "peak_rss_bytes": peak_rss(), "peak_rss_before_fit_bytes": rss0,
        "topk_per_query": r.topk.first().map(|t| t.len()),
    });
    crate::output::pretty(json, &outv, || {
        println!("inflow bench influence — {n} stored × {nq} queries, dim {dim} (210 layers × rank {rank}²), {threads} threads");
        println!("  fit EK-FAC (factors from samples, eigen, eigenvalue pass)  {fit_s:.1} s");
        println!("  score (EK-FAC-preconditioned queries, streamed, top-10)      {score_s:.1} s: {:.1} GFLOP/s", gflop / score_s);
        println!("  GEMM, same run                                             {gemm:.1} GFLOP/s → {:.0}%", 100.0 * gflop / score_s / gemm);
        if let Some(b) = peak_rss() {
            println!(
                "  peak RSS                                                   {:.2} GiB",
                b as f64 / (1u64 << 30) as f64
            );
        }
        Ok(())
    })
}

/// `inflow bench score`'s arguments.
#[derive(Args)]
pub(crate) struct ScoreArgs {
    /// Training rows in the synthetic store.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1_000_000)]
    rows: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1024)]
    dim: usize,
    /// Element type: int8, bit, f16 or f32.
    #[arg(long, default_value = "int8")]
    dtype: String,
    /// Queries scored in one pass.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 100)]
    queries: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 10)]
    top_k: usize,
    /// Timed passes (the median is reported).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 3)]
    repeats: usize,
    /// Store folder, reused by later runs with the same settings (default
    /// runs/bench-score/ROWSxDIM-DTYPE).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Rows per shard.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 65_536)]
    shard_size: usize,
    /// Delete the store afterwards.
    #[arg(long)]
    remove: bool,
}

pub(crate) fn score(a: ScoreArgs, threads: usize, json: bool) -> Result<()> {
    let dtype: inflow::store::Dtype = a.dtype.parse()?;
    let dir = a
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("runs/bench-score/{}x{}-{dtype}", a.rows, a.dim)));
    let o = inflow::pipeline::bench_score::BenchScoreOptions {
        rows: a.rows,
        dim: a.dim,
        dtype,
        queries: a.queries,
        top_k: a.top_k,
        dir: dir.clone(),
        shard_size: a.shard_size,
        repeats: a.repeats,
        threads,
        seed: 0,
    };
    let r = inflow::pipeline::bench_score::bench_score(&o, &crate::progress::Bars::default())?;
    if a.remove {
        let _ = std::fs::remove_dir_all(&dir);
    }
    crate::output::pretty(json, &r, || {
        let gib = |b: Option<u64>| {
            b.map_or("n/a".into(), |b| {
                format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
            })
        };
        println!(
            "inflow bench score — {} rows × {} dims ({}, {:.0} B/row, {:.2} GB), {} queries, top-{}, {} threads, kernel {}",
            r.rows, r.dim, r.dtype, r.bytes_per_row, r.store_bytes as f64 / 1e9, r.queries, r.top_k, r.threads, r.kernel
        );
        for (i, p) in r.passes.iter().enumerate() {
            println!(
                "  pass {}: {:.3} s wall, {} CPU",
                i + 1,
                p.wall_s,
                p.cpu_s.map_or("n/a".into(), |c| format!("{c:.2} s"))
            );
        }
        println!(
            "  median {:.3} s: {:.2} M rows/s, {:.2} GB/s read, {:.1} GOP/s",
            r.wall_s,
            r.rows_per_s / 1e6,
            r.gb_per_s,
            r.gops
        );
        println!(
            "  this machine, same run: file read {:.2} GB/s, memory read {:.2} GB/s, f32 GEMM {:.1} GFLOP/s, int8 peak {}",
            r.file_read_gb_s,
            r.memory_read_gb_s,
            r.f32_gemm_gflops,
            r.int8_peak_gops.map_or("n/a (no VNNI)".into(), |p| format!("{p:.1} GOP/s"))
        );
        if let Some(f) = r.fraction_of_peak {
            println!("  {:.0}% of the matching peak (all threads)", 100.0 * f);
        }
        if let (Some(g), Some(f)) = (r.gops_per_cpu_s, r.fraction_of_core_peak) {
            println!(
                "  per CPU-second: {g:.1} GOP, {:.0}% of one core's peak (robust to cores busy with other work)",
                100.0 * f
            );
        }
        println!(
            "  peak RSS while scoring {}, whole run {}",
            gib(r.scoring_peak_rss_bytes),
            gib(r.peak_rss_bytes)
        );
        Ok(())
    })
}
