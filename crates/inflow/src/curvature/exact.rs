//! The exact damped empirical Fisher inverse in feature space, F = 1/n Σ_i g_i g_iᵀ + diag(λ_l),
//! formed explicitly and solved by Cholesky (faer). The ground truth the approximations are
//! tested against; only for small feature dimensions (tiny models, or few layers).

use super::{block_damping_over, blocks, store_feature_spec, Preconditioner};
use crate::store::Store;
use crate::{Error, Result};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// Largest feature dimension for which the dense Fisher is formed (f64: 8 × d² bytes).
pub const MAX_DIM: usize = 6000;

/// Cholesky factor of the damped Fisher.
pub struct Exact {
    llt: faer::linalg::solvers::Llt<f64>,
    dim: usize,
}

impl Exact {
    /// The exact inverse of the Fisher recorded for `store` (its own gradients unless it was
    /// fitted on another; see [`super::fisher`]).
    pub fn new(store: &Store, damping: f64) -> Result<Self> {
        let fisher = super::fisher::FisherSamples::of(store)?;
        Self::over(&fisher.stores(), damping)
    }

    /// The damped Fisher over the samples of several stores with one feature layout (for
    /// example one store of sampled-label pseudo-gradients per draw: the true Fisher).
    pub fn over(stores: &[&Store], damping: f64) -> Result<Self> {
        Self::over_blocks(stores, damping, false)
    }

    /// [`Self::over`], keeping only the per-layer diagonal blocks of the Fisher when
    /// `block_diagonal` (the layer-independence assumption K-FAC and EK-FAC make), so that
    /// assumption's cost can be told apart from the Kronecker one's.
    pub fn over_blocks(stores: &[&Store], damping: f64, block_diagonal: bool) -> Result<Self> {
        let store = stores
            .first()
            .ok_or_else(|| Error::Msg("exact inverse: no Fisher samples".into()))?;
        super::check_same_layout(store, stores)?;
        let dim = store.dim();
        if dim > MAX_DIM {
            return Err(Error::Msg(format!(
                "exact inverse: feature dim {dim} is above {MAX_DIM}; use ekfac, datainf or lissa"
            )));
        }
        let bl = blocks(&store_feature_spec(store)?);
        let lam = block_damping_over(stores, &bl, damping)?;
        let mut f = Mat::<f64>::zeros(dim, dim);
        let mut n = 0usize;
        super::for_each_shard(stores, |feat, rows| {
            let g = Mat::<f64>::from_fn(rows, dim, |i, j| feat[i * dim + j] as f64);
            f += g.transpose() * &g;
            n += rows;
            Ok(())
        })?;
        let scale = 1.0 / n.max(1) as f64;
        for i in 0..dim {
            for j in 0..dim {
                f[(i, j)] *= scale;
            }
        }
        if block_diagonal {
            let owner: Vec<usize> = bl
                .iter()
                .enumerate()
                .flat_map(|(k, b)| std::iter::repeat_n(k, b.len()))
                .collect();
            for i in 0..dim {
                for j in 0..dim {
                    if owner[i] != owner[j] {
                        f[(i, j)] = 0.0;
                    }
                }
            }
        }
        for (b, l) in bl.iter().zip(lam) {
            for k in b.offset..b.offset + b.len() {
                f[(k, k)] += l;
            }
        }
        let llt = f
            .llt(Side::Lower)
            .map_err(|e| Error::Msg(format!("Cholesky of the damped Fisher failed: {e:?}")))?;
        Ok(Self { llt, dim })
    }

    /// The damped-Fisher inverse applied to one vector (for tests and LiSSA checks).
    pub fn solve(&self, v: &[f64]) -> Vec<f64> {
        let rhs = Mat::<f64>::from_fn(self.dim, 1, |i, _| v[i]);
        let x = self.llt.solve(&rhs);
        (0..self.dim).map(|i| x[(i, 0)]).collect()
    }
}

impl Preconditioner for Exact {
    fn name(&self) -> &str {
        "exact"
    }

    fn apply(&self, queries: &mut [f32], dim: usize) -> Result<()> {
        for q in queries.chunks_exact_mut(dim) {
            let v: Vec<f64> = q.iter().map(|&x| x as f64).collect();
            for (o, x) in q.iter_mut().zip(self.solve(&v)) {
                *o = x as f32;
            }
        }
        Ok(())
    }
}
