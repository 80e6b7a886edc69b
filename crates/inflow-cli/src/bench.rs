//! `inflow bench …`: the CLI side of the benchmarks (the measuring is in
//! `inflow::pipeline::bench_features`, `bench_score` and `encoder::bench`).

use anyhow::Result;
use clap::Args;
use inflow::data::Format;
use inflow::pipeline::bench_features::{BenchFeatures, BenchFeaturesOptions};
use std::path::PathBuf;
use std::time::Instant;

pub(crate) use inflow::pipeline::machine::{gemm_gflops, peak_rss};

/// `inflow bench features`' arguments (its help is the `Features` variant's).
#[derive(Args)]
pub(crate) struct FeaturesArgs {
    #[arg(long)]
    model: Option<PathBuf>,
    /// Samples to read (default: the bundled Natural Instructions extract).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Format of --data.
    #[arg(long, default_value = "auto")]
    format: String,
    /// The first N samples of --data.
    #[arg(long, visible_alias = "limit", value_parser = crate::bounds::count, default_value_t = 64)]
    samples: usize,
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 256)]
    max_tokens: usize,
    /// LoGra rank per side.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    rank: usize,
    /// Timed passes of inflow (and of --baseline-cmd), interleaved: medians are reported.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    rounds: usize,
    /// A shell command timed in the same run between inflow's passes, e.g. the torch hooks
    /// baseline: `python3 ../shared/bench/torch_baseline.py …`. Wall and CPU seconds of both.
    #[arg(long)]
    baseline_cmd: Option<String>,
    /// Samples for the plain-autograd comparison on one thread (0 skips it).
    #[arg(long, default_value_t = 4)]
    autograd_samples: usize,
}

pub(crate) fn features(a: FeaturesArgs, threads: usize, json: bool) -> Result<()> {
    let model_path = crate::model_or_default(a.model)?;
    let m = crate::load_model(&model_path)?;
    let data = match a.data {
        Some(d) => d,
        None => crate::assets_dir()?.join("train.jsonl"),
    };
    let o = BenchFeaturesOptions {
        data,
        format: a.format.parse::<Format>()?,
        limit: a.samples,
        max_tokens: a.max_tokens,
        rank: a.rank,
        threads,
        rounds: a.rounds,
        baseline_cmd: a.baseline_cmd,
        autograd_samples: a.autograd_samples,
    };
    let r = inflow::pipeline::bench_features::bench(&m, &o, &crate::progress::Bars::default())?;
    let mut v = serde_json::to_value(&r)?;
    v["model"] = serde_json::json!(model_path);
    crate::output::pretty(json, &v, || {
        print_features(&r, &model_path, &o);
        Ok(())
    })
}

fn print_features(r: &BenchFeatures, model: &std::path::Path, o: &BenchFeaturesOptions) {
    let (gf, f) = (1e9, &r.flops);
    println!(
        "inflow bench features — {} ({:.1} M params), LoGra rank {}, {} workers, {} round(s)",
        model.display(),
        r.params as f64 / 1e6,
        o.rank,
        r.threads,
        o.rounds
    );
    println!(
        "  samples             {} ({} tokens, ≤ {} each) from {}",
        r.samples,
        r.tokens,
        o.max_tokens,
        o.data.display()
    );
    let cpu = |c: Option<f64>| c.map_or("?".into(), |c| format!("{c:.2}"));
    let ratio = |s: Option<f64>| s.map_or("?".into(), |s| format!("{s:.2}×"));
    println!(
        "  inflow              {:.2} s wall, {} CPU s → {:.2} samples/s, {:.0} tokens/s",
        r.ours.wall_s,
        cpu(r.ours.cpu_s),
        r.samples as f64 / r.ours.wall_s.max(1e-9),
        r.tokens_per_s
    );
    println!(
        "  work done           {:.1} GFLOP: forward {:.1}, input-gradient backward {:.1} (no dW), projection {:.2}",
        f.total() / gf,
        f.forward / gf,
        f.input_backward / gf,
        f.projection / gf
    );
    let per_cpu = r
        .gflops_per_cpu_s
        .map_or(String::new(), |g| format!(", {g:.1} per CPU second"));
    let [g1, gn] = r.gemm_gflops;
    println!(
        "  achieved            {:.1} GFLOP/s{per_cpu}; GEMM in the same run {g1:.1} on 1 thread, {gn:.1} on {} → {:.0}% of GEMM",
        r.gflops,
        r.threads,
        100.0 * r.gflops / gn.max(1e-9)
    );
    if let (Some(cmd), Some(b)) = (&o.baseline_cmd, &r.baseline) {
        println!(
            "  baseline            {:.2} s wall, {} CPU s  ({cmd})",
            b.theirs.wall_s,
            cpu(b.theirs.cpu_s)
        );
        println!(
            "  inflow vs baseline  {:.2}× by wall time, {} by CPU time",
            b.speedup_wall,
            ratio(b.speedup_cpu)
        );
    }
    if let Some(a) = &r.autograd {
        println!(
            "  vs plain autograd   {:.2}× by wall time, {} by CPU time ({} samples, 1 thread: {:.2} s vs {:.2} s)",
            a.speedup_wall,
            ratio(a.speedup_cpu),
            r.autograd_samples,
            a.ours.wall_s,
            a.theirs.wall_s
        );
    }
    println!(
        "  store               {} dims, {} bytes/sample (f16 + norm)",
        r.feature_dim,
        r.feature_dim * 2 + 4
    );
    if let Some(b) = r.peak_rss_bytes {
        println!(
            "  peak RSS            {:.2} GiB",
            b as f64 / (1u64 << 30) as f64
        );
    }
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
