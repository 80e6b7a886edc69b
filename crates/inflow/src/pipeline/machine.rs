//! What this machine can do, measured in the same run as a benchmark so its figures have a
//! ceiling beside them: CPU time and peak memory of this process, memory and file read
//! bandwidth, f32 GEMM and int8 dot-product rates.

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// User + system CPU seconds of this process, all threads (Linux `/proc/self/stat`, in
/// clock ticks of 1/100 s, the kernel's USER_HZ on every common Linux build).
pub fn process_cpu_seconds() -> Option<f64> {
    stat_seconds(11)
}

/// User + system CPU seconds of this process's finished (waited-for) children: what
/// `getrusage(RUSAGE_CHILDREN)` reports, from the same file.
pub fn children_cpu_seconds() -> Option<f64> {
    stat_seconds(13)
}

/// The sum of two adjacent clock-tick fields of `/proc/self/stat`, in seconds: `at` counts
/// the fields after the command name (which may hold spaces) in parentheses, state being 0
/// (utime is 11, cutime 13).
fn stat_seconds(at: usize) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: f64 = f.get(at)?.parse().ok()?;
    let system: f64 = f.get(at + 1)?.parse().ok()?;
    Some((user + system) / 100.0)
}

/// The median of timed passes (the upper one of an even count; 0 for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Peak resident memory of this process in bytes (Linux VmHWM).
pub fn peak_rss() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Resets the peak resident memory to the current one (Linux `clear_refs` 5), so a later
/// [`peak_rss`] covers only what ran since; false where the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// f32 GEMM rate (GFLOP/s) of `threads` independent single-threaded n×n×n products at once.
pub fn gemm_gflops(threads: usize, n: usize, reps: usize) -> Result<f64> {
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    a.matmul(&b)?; // warm-up
    let t = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    for _ in 0..reps {
                        a.matmul(&b)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in hs {
            h.join()
                .map_err(|_| Error::Msg("gemm thread panicked".into()))??;
        }
        Ok(())
    })?;
    Ok(2.0 * (n * n * n * reps * threads) as f64 / t.elapsed().as_secs_f64() / 1e9)
}

/// int8 dot-product peak (GOP/s, a multiply-add counted as 2) of `threads` cores at once,
/// by the VNNI loop of [`crate::scores::int8::peak_macs_per_s`]; `None` without VNNI.
pub fn int8_peak_gops(threads: usize) -> Option<f64> {
    let iters = 20_000_000;
    let rates: Vec<Option<f64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || crate::scores::int8::peak_macs_per_s(iters)))
            .collect();
        hs.into_iter().map(|h| h.join().ok().flatten()).collect()
    });
    rates
        .into_iter()
        .sum::<Option<f64>>()
        .map(|macs| 2.0 * macs / 1e9)
}

/// Memory read bandwidth (GB/s): `threads` threads summing their parts of a buffer of
/// `bytes` (larger than the caches), best of three passes.
pub fn memory_read_gb_s(bytes: usize, threads: usize) -> f64 {
    let words = (bytes / 8).max(threads);
    let buf: Vec<u64> = (0..words as u64).collect();
    let per = words.div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().fold(0u64, |a, &x| a.wrapping_add(x))))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(0))
                .fold(0, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (words * 8) as f64 / best / 1e9
}

/// Sequential read bandwidth (GB/s) of `files`, read whole in 8 MiB pieces: the disk's, or
/// the page cache's when the files are cached (the usual case right after writing them).
pub fn file_read_gb_s(files: &[&Path]) -> Result<f64> {
    let mut total = 0u64;
    let t = Instant::now();
    crate::file_pieces::read_pieces(files, 8 << 20, |piece| total += piece.len() as u64)?;
    Ok(total as f64 / t.elapsed().as_secs_f64() / 1e9)
}
