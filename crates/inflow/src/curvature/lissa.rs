//! LiSSA (Agarwal et al. 2017): the inverse-HVP by the recursion
//! v_{t+1} = g + (I − (H_B + Λ)/s) v_t, v_0 = g, whose fixed point is s (H + Λ)⁻¹ g; the
//! estimate is x_t = v_t / s. H_B is the empirical Fisher of a random mini-batch of the stored
//! per-sample gradients (all of them when `--lissa-batch` ≥ their number), H the Fisher of all
//! of them (the matrix `exact` factors), Λ the per-layer damping, and s = 1.5 × the largest
//! eigenvalue of H + Λ (power iteration), so the recursion contracts.
//!
//! **Stopping rule.** After iteration t the relative change δ_t = ‖x_t − x_{t−1}‖ / ‖x_t‖ is
//! compared with the change tolerance c = tol · λ / (s − λ), λ the smallest damping (a lower
//! bound of the smallest eigenvalue of H + Λ). For the full-batch recursion, whose contraction
//! factor is at most ρ = 1 − λ/s, ‖x_t − x*‖ ≤ ρ/(1−ρ) ‖x_t − x_{t−1}‖, so δ_t ≤ c guarantees
//! a relative error ‖x_t − x*‖/‖x_t‖ ≤ tol: a plain "small relative change" would not, since
//! a slowly contracting recursion changes little per step while still far from x*. Each query
//! stops at the first t with δ_t ≤ c, or at `--lissa-iters`. With mini-batches δ_t also holds
//! sampling noise and the bound is indicative only.
//!
//! **Residual.** ‖(H + Λ) x − g‖ / ‖g‖ with H the Fisher of **all** stored gradients: the
//! residual of the very system (H + Λ) x = g that exact solves and LiSSA's mini-batches
//! sample, so a small residual means that system is solved.
//!
//! **Converged** (per query): the stopping rule fired and the residual is ≤ tol. The report
//! ([`Lissa::report`], `report()` of the influence estimator) has a one-line `summary`, the
//! settings, and the per-query `trace` (δ_t at every 10th iteration and the last).

use super::fisher::FisherSamples;
use super::{block_damping_over, blocks, store_feature_spec, Options, Preconditioner};
use crate::random::Stream;
use crate::store::Store;
use crate::Result;
use std::sync::Mutex;

/// One query's run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueryTrace {
    pub query: usize,
    pub iterations: usize,
    pub converged: bool,
    /// δ at the last iteration.
    pub final_relative_change: f64,
    /// ‖(H + Λ) x − g‖ / ‖g‖ on the full Fisher.
    pub residual: f64,
    /// δ_t = ‖x_t − x_{t−1}‖ / ‖x_t‖ at iterations 1, 11, 21, … and the last.
    pub relative_change: Vec<f64>,
}

/// What the last [`Preconditioner::apply`] did (see the module documentation for the rules).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LissaReport {
    /// One line for people: iterations, final relative change against its tolerance,
    /// converged or not, residual.
    pub summary: String,
    /// Every query converged.
    pub converged: bool,
    pub n_converged: usize,
    pub n_queries: usize,
    /// Iterations run, the most over the queries.
    pub iterations: usize,
    pub max_iterations: usize,
    /// tol: the relative error the stopping rule guarantees (full batch) and the residual bound.
    pub tolerance: f64,
    /// c = tol · λ / (s − λ): the relative change at which a query stops.
    pub change_tolerance: f64,
    /// s.
    pub scale: f64,
    /// λ, the smallest per-layer damping.
    pub min_damping: f64,
    /// Gradients per Hessian-vector product, and in the full Fisher.
    pub batch: usize,
    pub n_fisher: usize,
    /// The largest final δ over the queries.
    pub final_relative_change: f64,
    /// ‖(H + Λ) x − g‖ / ‖g‖ on the full Fisher, worst query.
    pub residual: f64,
    pub stopping_rule: String,
    pub residual_definition: String,
    pub trace: Vec<QueryTrace>,
}

impl LissaReport {
    /// Fills `summary`, `converged` and the totals from the trace.
    fn finish(&mut self) {
        let t = &self.trace;
        self.n_queries = t.len();
        self.n_converged = t.iter().filter(|q| q.converged).count();
        self.converged = !t.is_empty() && self.n_converged == t.len();
        self.iterations = t.iter().map(|q| q.iterations).max().unwrap_or(0);
        let fewest = t.iter().map(|q| q.iterations).min().unwrap_or(0);
        self.final_relative_change = t
            .iter()
            .map(|q| q.final_relative_change)
            .fold(0.0, f64::max);
        self.residual = t.iter().map(|q| q.residual).fold(0.0, f64::max);
        let iters = if fewest == self.iterations {
            format!("{} iterations", self.iterations)
        } else {
            format!("{fewest}–{} iterations", self.iterations)
        };
        let verdict = if self.converged {
            "converged".to_string()
        } else if t.len() > 1 {
            format!(
                "not converged ({} of {} queries)",
                self.n_converged,
                t.len()
            )
        } else {
            "not converged".to_string()
        };
        self.summary = format!(
            "LiSSA: {iters} (max {}), final relative change {:.1e} (tolerance {:.1e}, for a \
             relative error ≤ {:.0e}): {verdict}; residual ‖(H+λI)x−g‖/‖g‖ = {:.2e} on the \
             Fisher of {} gradients{}",
            self.max_iterations,
            self.final_relative_change,
            self.change_tolerance,
            self.tolerance,
            self.residual,
            self.n_fisher,
            if t.len() > 1 { " (worst query)" } else { "" },
        );
    }
}

pub struct Lissa {
    fisher: FisherSamples,
    diag: Vec<f64>,
    iters: usize,
    batch: usize,
    tol: f64,
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
            tol: opts.lissa_tol,
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
        let lam = self
            .diag
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(0.0);
        let change_tol = if lam > 0.0 && scale > lam {
            self.tol * lam / (scale - lam)
        } else {
            0.0
        };
        let mut report = LissaReport {
            scale,
            max_iterations: self.iters,
            tolerance: self.tol,
            change_tolerance: change_tol,
            min_damping: lam,
            batch: self.batch.min(refs.len()),
            n_fisher: refs.len(),
            stopping_rule:
                "stop at the first iteration t with ‖x_t − x_{t−1}‖/‖x_t‖ ≤ tol·λ/(s−λ) \
                            (then ‖x_t − x*‖/‖x_t‖ ≤ tol for a full batch), or at the maximum"
                    .into(),
            residual_definition: "‖(H + Λ) x − g‖/‖g‖, H the empirical Fisher of all stored \
                                  gradients (the system exact solves); converged: the rule \
                                  fired and the residual is ≤ tol"
                .into(),
            ..Default::default()
        };
        for (qi, q) in queries.chunks_exact_mut(dim).enumerate() {
            let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            let mut v = q64.clone();
            let mut trace = QueryTrace {
                query: qi,
                ..Default::default()
            };
            let mut stopped = false;
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
                // x = v/s: the relative change of x is that of v.
                let d: Vec<f64> = next.iter().zip(&v).map(|(a, b)| a - b).collect();
                let delta = norm(&d) / norm(&next).max(1e-300);
                v = next;
                trace.iterations = it + 1;
                trace.final_relative_change = delta;
                stopped = delta <= change_tol;
                if it % 10 == 0 || stopped || it + 1 == self.iters {
                    trace.relative_change.push(delta);
                }
                if stopped {
                    break;
                }
            }
            let x: Vec<f64> = v.iter().map(|x| x / scale).collect();
            let r = self.hvp(&refs, &x);
            let res: Vec<f64> = r.iter().zip(&q64).map(|(a, b)| a - b).collect();
            trace.residual = norm(&res) / norm(&q64).max(1e-300);
            trace.converged = stopped && trace.residual <= self.tol;
            report.trace.push(trace);
            for (o, xi) in q.iter_mut().zip(x) {
                *o = xi as f32;
            }
        }
        report.finish();
        if let Ok(mut r) = self.report.lock() {
            *r = report;
        }
        Ok(())
    }
}
