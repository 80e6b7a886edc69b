//! LiSSA (Agarwal et al. 2017): the inverse-HVP by the recursion
//! v_{j+1} = q + (I − (H_B + Λ)/s) v_j, whose fixed point is s (H + Λ)⁻¹ q; the estimate is v/s.
//! H_B is the empirical Fisher of a random mini-batch of stored per-sample gradients, Λ the
//! per-layer damping, and s a scale above the largest eigenvalue (estimated by power iteration)
//! so the recursion contracts. Convergence (relative change per iteration and the final residual
//! on the full H) is recorded in [`Lissa::report`].

use super::fisher::FisherSamples;
use super::{block_damping_over, blocks, store_feature_spec, Options, Preconditioner};
use crate::random::Stream;
use crate::store::Store;
use crate::Result;
use std::sync::Mutex;

/// What the last [`Preconditioner::apply`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LissaReport {
    pub iterations: usize,
    pub scale: f64,
    /// ‖v_{j+1} − v_j‖ / ‖v_j‖ at every 10th iteration.
    pub relative_change: Vec<f64>,
    /// ‖(H + Λ) x − q‖ / ‖q‖ of the result on the full H, worst query.
    pub residual: f64,
}

pub struct Lissa {
    fisher: FisherSamples,
    diag: Vec<f64>,
    iters: usize,
    batch: usize,
    seed: u64,
    report: Mutex<LissaReport>,
}

impl Lissa {
    /// LiSSA on the Fisher recorded for `store` (its own gradients unless fitted otherwise).
    pub fn new(store: &Store, opts: &Options) -> Result<Self> {
        let fisher = FisherSamples::of(store)?;
        let bl = blocks(&store_feature_spec(store)?);
        let lam = block_damping_over(&fisher.stores(), &bl, opts.damping)?;
        let mut diag = vec![0f64; store.dim()];
        for (b, l) in bl.iter().zip(lam) {
            diag[b.offset..b.offset + b.len()]
                .iter_mut()
                .for_each(|d| *d = l);
        }
        Ok(Self {
            fisher,
            diag,
            iters: opts.lissa_iters,
            batch: opts.lissa_batch.max(1),
            seed: opts.seed,
            report: Mutex::new(LissaReport::default()),
        })
    }

    /// Convergence of the last application.
    pub fn report(&self) -> LissaReport {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// (H_rows + Λ) v for the given rows (mean over rows).
    fn hvp(&self, rows: &[&[f32]], v: &[f64]) -> Vec<f64> {
        let mut out: Vec<f64> = v.iter().zip(&self.diag).map(|(x, d)| x * d).collect();
        let inv = 1.0 / rows.len().max(1) as f64;
        for g in rows {
            let c = g.iter().zip(v).map(|(&a, b)| a as f64 * b).sum::<f64>() * inv;
            out.iter_mut()
                .zip(g.iter())
                .for_each(|(o, &a)| *o += c * a as f64);
        }
        out
    }

    fn all_rows(&self) -> Result<Vec<Vec<f32>>> {
        let dim = self.fisher.dim();
        let mut out = Vec::new();
        self.fisher.for_each_shard(|f, rows| {
            out.extend((0..rows).map(|r| f[r * dim..(r + 1) * dim].to_vec()));
            Ok(())
        })?;
        Ok(out)
    }
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

impl Preconditioner for Lissa {
    fn name(&self) -> &str {
        "lissa"
    }

    fn report(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.report()).ok()
    }

    fn apply(&self, queries: &mut [f32], dim: usize) -> Result<()> {
        let rows = self.all_rows()?;
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        // Largest eigenvalue of H + Λ by power iteration on the full matrix.
        let mut rng = Stream::new(self.seed, "lissa");
        let mut v: Vec<f64> = (0..dim).map(|_| rng.normal()).collect();
        let mut lmax = 0.0;
        for _ in 0..30 {
            let w = self.hvp(&refs, &v);
            lmax = norm(&w) / norm(&v).max(1e-300);
            let n = norm(&w).max(1e-300);
            v = w.into_iter().map(|x| x / n).collect();
        }
        let scale = 1.5 * lmax;
        let mut report = LissaReport {
            scale,
            ..Default::default()
        };
        for q in queries.chunks_exact_mut(dim) {
            let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let mut v = q64.clone();
            for it in 0..self.iters {
                let batch: Vec<&[f32]> = if self.batch >= refs.len() {
                    refs.clone()
                } else {
                    (0..self.batch)
                        .map(|_| refs[(rng.next_u64() % refs.len() as u64) as usize])
                        .collect()
                };
                let hv = self.hvp(&batch, &v);
                let next: Vec<f64> = q64
                    .iter()
                    .zip(&v)
                    .zip(&hv)
                    .map(|((qi, vi), hi)| qi + vi - hi / scale)
                    .collect();
                if it % 10 == 0 || it + 1 == self.iters {
                    let d: Vec<f64> = next.iter().zip(&v).map(|(a, b)| a - b).collect();
                    report.relative_change.push(norm(&d) / norm(&v).max(1e-300));
                }
                v = next;
            }
            let x: Vec<f64> = v.iter().map(|x| x / scale).collect();
            let r = self.hvp(&refs, &x);
            let res: Vec<f64> = r.iter().zip(&q64).map(|(a, b)| a - b).collect();
            report.residual = report.residual.max(norm(&res) / norm(&q64).max(1e-300));
            for (o, xi) in q.iter_mut().zip(x) {
                *o = xi as f32;
            }
        }
        report.iterations = self.iters;
        if let Ok(mut r) = self.report.lock() {
            *r = report;
        }
        Ok(())
    }
}
