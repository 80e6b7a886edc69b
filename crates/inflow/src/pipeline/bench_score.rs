//! `bench score`: exact top-k scoring throughput on a large synthetic store (seeded, written
//! to disk once, then streamed through its memory map), beside this machine's own ceilings
//! measured in the same run: sequential read of the store's files, memory bandwidth, f32
//! GEMM and the int8 dot-product peak.

use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::machine;
use super::report::Reporter;
use crate::estimators::Cosine;
use crate::random::Stream;
use crate::scores::{int8, score_store};
use crate::store::{Dtype, SampleRow, Store, StoreSpec};
use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchScoreOptions {
    pub rows: usize,
    pub dim: usize,
    pub dtype: Dtype,
    pub queries: usize,
    pub top_k: usize,
    /// The synthetic store's folder: reused when it already holds this store.
    pub dir: PathBuf,
    pub shard_size: usize,
    /// Timed scoring passes (the median is reported).
    pub repeats: usize,
    pub threads: usize,
    pub seed: u64,
}

/// One timed scoring pass.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
}

/// The figures of a `bench score` run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchScore {
    pub rows: usize,
    pub dim: usize,
    pub dtype: Dtype,
    pub queries: usize,
    pub top_k: usize,
    pub threads: usize,
    /// The product kernel used: `avx512-vnni`, `avx512-vpopcntdq`, `portable` or `sgemm`.
    pub kernel: String,
    pub store_bytes: u64,
    pub bytes_per_row: f64,
    /// Seconds to write the synthetic store (0 when reused).
    pub write_s: f64,
    pub passes: Vec<Pass>,
    /// Median pass.
    pub wall_s: f64,
    pub rows_per_s: f64,
    /// Store bytes streamed per second.
    pub gb_per_s: f64,
    /// Operations per second: 2·rows·dim·queries (a multiply-add is 2; for bits, one bit
    /// pair compared is 2, as xor then count).
    pub gops: f64,
    /// This machine, same run.
    pub file_read_gb_s: f64,
    pub memory_read_gb_s: f64,
    pub f32_gemm_gflops: f64,
    pub int8_peak_gops: Option<f64>,
    /// The same peak on one thread: the ceiling of one core.
    pub int8_peak_gops_1_thread: Option<f64>,
    /// Operations per CPU-second of the median pass (robust to cores taken by others), and
    /// its fraction of the one-thread peak (int8) or of one thread's f32 GEMM (floats).
    pub gops_per_cpu_s: Option<f64>,
    pub fraction_of_core_peak: Option<f64>,
    /// gops / int8 peak for int8, / f32 GEMM for floats.
    pub fraction_of_peak: Option<f64>,
    /// Peak resident memory during the scoring passes only (reset before them), and over
    /// the whole run.
    pub scoring_peak_rss_bytes: Option<u64>,
    pub peak_rss_bytes: Option<u64>,
}

/// Runs the benchmark.
pub fn bench_score(o: &BenchScoreOptions, reporter: &dyn Reporter) -> Result<BenchScore> {
    if o.rows == 0 || o.dim == 0 || o.queries == 0 || o.repeats == 0 {
        return Err(Error::Msg(
            "--rows, --dim, --queries and --repeats must be positive".into(),
        ));
    }
    let spec = StoreSpec::synthetic(
        serde_json::json!({"kind": "bench-score", "seed": o.seed}),
        o.dtype,
        o.dim,
        o.shard_size,
    );
    let t = Instant::now();
    let mut store = Store::create_or_resume(&o.dir, spec, o.rows)?;
    let pending = store.pending_shards();
    let write_s = if pending.is_empty() && store.is_complete() {
        0.0
    } else {
        reporter.start("write store", o.rows);
        for sh in pending {
            let r = store.shard_range(sh);
            // A seeded stream per shard: the same store whatever was written before.
            let mut s = Stream::new(o.seed, &format!("bench-score/{sh}"));
            let x: Vec<f32> = (0..r.len() * o.dim)
                .map(|_| s.uniform() as f32 - 0.5)
                .collect();
            let meta: Vec<SampleRow> = r.clone().map(SampleRow::placeholder).collect();
            store.write_shard(sh, &x, &meta)?;
            reporter.update("write store", store.n_done_rows(), o.rows, "");
        }
        store.finish()?;
        reporter.finish("write store");
        t.elapsed().as_secs_f64()
    };
    let store = Store::open(&o.dir)?;
    let files: Vec<PathBuf> = store
        .manifest()
        .shards
        .iter()
        .map(|s| o.dir.join(&s.features))
        .collect();
    let store_bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();

    let mut s = Stream::new(o.seed, "bench-score/queries");
    let q: Vec<f32> = (0..o.queries * o.dim)
        .map(|_| s.uniform() as f32 - 0.5)
        .collect();
    let reset = machine::reset_peak_rss();
    let mut passes = Vec::new();
    for i in 0..o.repeats {
        reporter.note(&format!("scoring pass {} of {}", i + 1, o.repeats));
        let (t, c) = (Instant::now(), machine::process_cpu_seconds());
        let r = score_store(&store, &q, o.queries, &Cosine, o.top_k, false, &mut |_| {})?;
        std::hint::black_box(r);
        passes.push(Pass {
            wall_s: t.elapsed().as_secs_f64(),
            cpu_s: c.zip(machine::process_cpu_seconds()).map(|(a, b)| b - a),
        });
    }
    let scoring_rss = if reset { machine::peak_rss() } else { None };
    let wall = machine::median(passes.iter().map(|p| p.wall_s).collect());

    reporter.note("measuring this machine: file read, memory, f32 GEMM, int8 peak");
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let file_read = machine::file_read_gb_s(&paths)?;
    let memory = machine::memory_read_gb_s(512 << 20, o.threads);
    let gemm = machine::gemm_gflops(o.threads, 1024, 4)?;
    let peak = machine::int8_peak_gops(o.threads);
    let peak1 = machine::int8_peak_gops(1);
    let gemm1 = machine::gemm_gflops(1, 1024, 4)?;
    let ops = 2.0 * o.rows as f64 * o.dim as f64 * o.queries as f64;
    let gops = ops / wall / 1e9;
    let cpus: Vec<f64> = passes.iter().filter_map(|p| p.cpu_s).collect();
    let per_cpu = Some(machine::median(cpus))
        .filter(|&c| c > 0.0)
        .map(|c| ops / c / 1e9);
    let kernel = match o.dtype {
        Dtype::I8 if int8::has_vnni() => "avx512-vnni",
        Dtype::Bit if crate::scores::bits::has_vpopcnt() => "avx512-vpopcntdq",
        Dtype::I8 | Dtype::Bit => "portable",
        Dtype::F16 | Dtype::F32 => "sgemm",
    };
    Ok(BenchScore {
        rows: o.rows,
        dim: o.dim,
        dtype: o.dtype,
        queries: o.queries,
        top_k: o.top_k,
        threads: o.threads,
        kernel: kernel.into(),
        store_bytes,
        bytes_per_row: store_bytes as f64 / o.rows as f64,
        write_s,
        passes,
        wall_s: wall,
        rows_per_s: o.rows as f64 / wall,
        gb_per_s: store_bytes as f64 / wall / 1e9,
        gops,
        file_read_gb_s: file_read,
        memory_read_gb_s: memory,
        f32_gemm_gflops: gemm,
        int8_peak_gops: peak,
        int8_peak_gops_1_thread: peak1,
        gops_per_cpu_s: per_cpu,
        fraction_of_core_peak: match o.dtype {
            Dtype::I8 => per_cpu.zip(peak1).map(|(g, p)| g / p),
            Dtype::F16 | Dtype::F32 => per_cpu.map(|g| g / gemm1),
            Dtype::Bit => None,
        },
        fraction_of_peak: match o.dtype {
            Dtype::I8 => peak.map(|p| gops / p),
            Dtype::F16 | Dtype::F32 => Some(gops / gemm),
            Dtype::Bit => None,
        },
        scoring_peak_rss_bytes: scoring_rss,
        peak_rss_bytes: machine::peak_rss(),
    })
}
