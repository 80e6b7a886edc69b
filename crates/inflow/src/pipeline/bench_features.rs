//! `inflow bench features`: the gradient-feature path's throughput, with the work it really
//! does counted part by part, beside what this machine does in the same run (its GEMM rate,
//! plain candle autograd, and optionally an external baseline command such as
//! `../shared/bench/torch_baseline.py`, interleaved round by round).
//!
//! FLOPs are those executed, not the 6·P·T rule of thumb: the capture path runs the forward,
//! then a backward that produces input gradients only (no weight-gradient GEMM), then the
//! LoGra projections. Per sample of T tokens, with block Linears of shapes d_in × d_out:
//! - forward: Σ 2·T·d_in·d_out (block Linears) + 2·T·V·d (LM head) + 4·T²·d per layer
//!   (QKᵀ and AV over all heads; the causal mask is applied, not skipped);
//! - input-gradient backward: the same Linear and head GEMMs once more (dX = δ·W) and
//!   8·T²·d per layer (the gradients of both attention products w.r.t. both operands);
//! - projection (LoGra rank r per side, per tracked Linear): 2·T·d_in·r + 2·T·d_out·r for
//!   x·P_in and δ·P_out, and 2·T·r² for their product.
//!
//! Elementwise work (norms, RoPE, softmax, SiLU) is not counted: it is not GEMM work, and
//! counting it would flatter the rate.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use super::machine::{children_cpu_seconds, gemm_gflops, median, peak_rss, process_cpu_seconds};
use super::report::Reporter;
use crate::data::{read_samples, Format, ReadOptions};
use crate::features::Projection;
use crate::index::{FeatureOptions, FeaturePass, Featurizer, Progress};
use crate::model::{LlamaConfig, LoadedModel};
use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchFeaturesOptions {
    pub data: PathBuf,
    pub format: Format,
    /// The first N samples of `data`.
    pub limit: usize,
    pub max_tokens: usize,
    /// LoGra rank per side.
    pub rank: usize,
    pub threads: usize,
    /// Timed passes of our path (and of the baseline command), interleaved.
    pub rounds: usize,
    /// A shell command timed in the same run, between our passes (its own output is kept
    /// out of ours); `None`: no external baseline.
    pub baseline_cmd: Option<String>,
    /// Samples for the plain-autograd comparison on one thread (0: skip it).
    pub autograd_samples: usize,
}

/// FLOPs executed for the samples measured, by part.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Flops {
    pub forward: f64,
    pub input_backward: f64,
    pub projection: f64,
}

impl Flops {
    /// All parts together.
    pub fn total(&self) -> f64 {
        self.forward + self.input_backward + self.projection
    }
}

/// The (d_in, d_out) of each of a block's seven Linears (q, k, v, o, gate, up, down).
fn block_linears(c: &LlamaConfig) -> [(usize, usize); 7] {
    let (d, i) = (c.hidden_size, c.intermediate_size);
    let kv = c.num_key_value_heads * c.head_dim();
    [(d, d), (d, kv), (d, kv), (d, d), (d, i), (d, i), (i, d)]
}

/// The FLOPs of capturing LoGra features (rank `rank` per side, every block Linear tracked)
/// for samples of the given token counts: see the module documentation.
pub fn capture_flops(c: &LlamaConfig, tokens: &[usize], rank: usize) -> Flops {
    let linears = block_linears(c);
    let per_token_linear: f64 = linears
        .iter()
        .map(|&(a, b)| 2.0 * (a * b) as f64)
        .sum::<f64>()
        * c.num_hidden_layers as f64
        + 2.0 * (c.vocab_size * c.hidden_size) as f64;
    let per_token_projection: f64 = linears
        .iter()
        .map(|&(a, b)| 2.0 * ((a + b) * rank + rank * rank) as f64)
        .sum::<f64>()
        * c.num_hidden_layers as f64;
    let attention = |k: f64| -> f64 {
        tokens
            .iter()
            .map(|&t| k * (t * t) as f64 * c.hidden_size as f64 * c.num_hidden_layers as f64)
            .sum()
    };
    let n: f64 = tokens.iter().map(|&t| t as f64).sum();
    Flops {
        forward: n * per_token_linear + attention(4.0),
        input_backward: n * per_token_linear + attention(8.0),
        projection: n * per_token_projection,
    }
}

/// One timed pass.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pass {
    /// `inflow` or `baseline`.
    pub what: String,
    pub round: usize,
    pub wall_s: f64,
    /// CPU seconds (user + system) of the pass: this process's own for inflow, the command's
    /// and its children's for the baseline.
    pub cpu_s: Option<f64>,
}

/// What `bench features` measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchFeatures {
    pub samples: usize,
    pub tokens: usize,
    pub threads: usize,
    pub params: usize,
    pub feature_dim: usize,
    pub flops: Flops,
    pub passes: Vec<Pass>,
    /// Medians of our passes.
    pub ours: Timing,
    pub tokens_per_s: f64,
    /// Executed FLOPs per wall second, and per CPU second (the rate per core actually used).
    pub gflops: f64,
    pub gflops_per_cpu_s: Option<f64>,
    /// This machine's f32 GEMM GFLOP/s in the same run, on 1 thread and on `threads`.
    pub gemm_gflops: [f64; 2],
    /// The baseline command's medians and ours over theirs (> 1: we are faster).
    pub baseline: Option<Versus>,
    /// Plain candle autograd (every weight gradient) on one thread against our path on the
    /// same `autograd_samples` samples.
    pub autograd_samples: usize,
    pub autograd: Option<Versus>,
    pub peak_rss_bytes: Option<u64>,
}

/// Median wall and CPU seconds of a set of passes.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Timing {
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
}

/// Another way of doing the job, timed against ours: its times and the ratios theirs / ours.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Versus {
    pub theirs: Timing,
    pub ours: Timing,
    pub speedup_wall: f64,
    pub speedup_cpu: Option<f64>,
}

impl Versus {
    fn new(theirs: Timing, ours: Timing) -> Self {
        Versus {
            theirs,
            ours,
            speedup_wall: theirs.wall_s / ours.wall_s.max(1e-9),
            speedup_cpu: theirs.cpu_s.zip(ours.cpu_s).map(|(t, o)| t / o.max(1e-9)),
        }
    }
}

/// Runs `cmd` with `sh -c`, timing wall and CPU seconds; its output goes to the log, not ours.
fn run_baseline(cmd: &str, round: usize, reporter: &dyn Reporter) -> Result<Pass> {
    let cpu0 = children_cpu_seconds();
    let t = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| Error::Msg(format!("--baseline-cmd `{cmd}`: cannot start sh: {e}")))?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        let tail = String::from_utf8_lossy(&out.stderr);
        let last = tail.lines().last().unwrap_or_default();
        return Err(Error::Msg(format!(
            "--baseline-cmd `{cmd}` failed ({}): {last}",
            out.status
        )));
    }
    reporter.note(&format!("baseline round {round}: {wall:.2} s"));
    Ok(Pass {
        what: "baseline".into(),
        round,
        wall_s: wall,
        cpu_s: cpu0.zip(children_cpu_seconds()).map(|(a, b)| b - a),
    })
}

/// Measures our feature path (and the baseline command, interleaved) on `model`.
pub fn bench(
    model: &LoadedModel,
    o: &BenchFeaturesOptions,
    reporter: &dyn Reporter,
) -> Result<BenchFeatures> {
    if o.limit == 0 || o.rounds == 0 {
        return Err(Error::Msg("--limit and --rounds must be at least 1".into()));
    }
    let read = ReadOptions {
        format: o.format,
        skip_bad: false,
        limit: Some(o.limit),
    };
    let samples = read_samples(&o.data, &read)?.samples;
    if samples.is_empty() {
        return Err(Error::Msg(format!(
            "--data {}: no samples",
            o.data.display()
        )));
    }
    let opts = FeatureOptions {
        projection: Projection::Logra {
            rank_in: o.rank,
            rank_out: o.rank,
        },
        seed: 0,
        modules: "all".into(),
        template: crate::data::tokens::Template::Auto,
        max_tokens: o.max_tokens,
        truncate: Default::default(),
        labels: Default::default(),
    };
    let fz = Featurizer::new(model, &opts)?;
    reporter.note(&format!(
        "measuring GEMM (1024³ f32) with 1 and {} threads…",
        o.threads
    ));
    let gemm1 = gemm_gflops(1, 1024, 8)?;
    let gemm_n = gemm_gflops(o.threads, 1024, 8)?;

    let mut passes = Vec::new();
    let mut tokens = Vec::new();
    for round in 0..o.rounds {
        let progress = Progress::default();
        let cpu0 = process_cpu_seconds();
        let t = Instant::now();
        let res = super::report::watch(reporter, "features", &progress, || {
            fz.featurize(&samples, 1, o.threads, &progress)
        });
        reporter.finish("features");
        let res = res?;
        let wall = t.elapsed().as_secs_f64();
        reporter.note(&format!("inflow round {round}: {wall:.2} s"));
        tokens = res.rows.iter().map(|r| r.n_tokens as usize).collect();
        passes.push(Pass {
            what: "inflow".into(),
            round,
            wall_s: wall,
            cpu_s: cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a),
        });
        if let Some(cmd) = &o.baseline_cmd {
            passes.push(run_baseline(cmd, round, reporter)?);
        }
    }
    let med = |w: &str| -> Option<Timing> {
        let mine: Vec<&Pass> = passes.iter().filter(|p| p.what == w).collect();
        let cpu: Vec<f64> = mine.iter().filter_map(|p| p.cpu_s).collect();
        (!mine.is_empty()).then(|| Timing {
            wall_s: median(mine.iter().map(|p| p.wall_s).collect()),
            cpu_s: (cpu.len() == mine.len()).then(|| median(cpu)),
        })
    };
    let ours = med("inflow").ok_or_else(|| Error::Msg("no timed pass".into()))?;
    let flops = capture_flops(&model.llama.config, &tokens, o.rank);
    let n_tokens: usize = tokens.iter().sum();

    // Plain candle autograd (weights as Vars, every dW) on one thread, beside our path on the
    // same samples and thread count.
    let nb = o.autograd_samples.min(samples.len());
    let autograd = if nb > 0 {
        reporter.note(&format!("plain autograd on {nb} samples, 1 thread…"));
        let timed = |work: &mut dyn FnMut() -> Result<()>| -> Result<Timing> {
            let (cpu0, t) = (process_cpu_seconds(), Instant::now());
            work()?;
            Ok(Timing {
                wall_s: t.elapsed().as_secs_f64(),
                cpu_s: cpu0.zip(process_cpu_seconds()).map(|(a, b)| b - a),
            })
        };
        let ours_1t = timed(&mut || {
            fz.featurize(&samples[..nb], 1, 1, &Progress::default())
                .map(|_| ())
        })?;
        let mut trainable = LoadedModel::load(&model.source.path, candle_core::DType::F32)?;
        trainable.llama.make_trainable()?;
        let seqs: Vec<_> = samples[..nb]
            .iter()
            .map(|s| fz.renderer().tokenize(s).map(|t| t.seq))
            .collect::<Result<_>>()?;
        let theirs = timed(&mut || {
            for s in &seqs {
                trainable.llama.loss_and_grads(std::slice::from_ref(s))?;
            }
            Ok(())
        })?;
        Some(Versus::new(theirs, ours_1t))
    } else {
        None
    };
    Ok(BenchFeatures {
        samples: samples.len(),
        tokens: n_tokens,
        threads: o.threads,
        params: model.llama.n_params(),
        feature_dim: fz.spec().dim(),
        flops,
        ours,
        tokens_per_s: n_tokens as f64 / ours.wall_s.max(1e-9),
        gflops: flops.total() / ours.wall_s.max(1e-9) / 1e9,
        gflops_per_cpu_s: ours.cpu_s.map(|c| flops.total() / c.max(1e-9) / 1e9),
        gemm_gflops: [gemm1, gemm_n],
        baseline: med("baseline").map(|b| Versus::new(b, ours)),
        autograd_samples: nb,
        autograd,
        passes,
        peak_rss_bytes: peak_rss(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counts by hand for a one-layer model: d = 4, I = 8, 2 heads of 2 (kv 2), V = 10,
    /// one sample of 3 tokens, rank 1.
    #[test]
    fn flops_are_the_work_of_each_part() {
        let c: LlamaConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 10, "hidden_size": 4, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2
        }))
        .unwrap();
        let f = capture_flops(&c, &[3], 1);
        // Linears: q,k,v,o 4·4 each, gate/up 4·8, down 8·4 → 64 + 96 = 160 weights; head 40.
        let linear = 3.0 * 2.0 * (160.0 + 40.0);
        assert_eq!(f.forward, linear + 4.0 * 9.0 * 4.0);
        assert_eq!(f.input_backward, linear + 8.0 * 9.0 * 4.0);
        // Σ (d_in + d_out)·r + r² per Linear: 4·(8+1) + 2·(12+1) + (12+1) = 36 + 26 + 13.
        assert_eq!(f.projection, 3.0 * 2.0 * 75.0);
        assert_eq!(f.total(), f.forward + f.input_backward + f.projection);
    }
}
