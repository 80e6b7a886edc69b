//! DataInf (Kwon et al. 2024): a closed form for the damped empirical Fisher inverse per layer,
//! (1/n Σ_i g_i g_iᵀ + λ I)⁻¹ v ≈ (1/λ) (v − 1/n Σ_i g_i (g_iᵀ v) / (λ + ‖g_i‖²)),
//! exact for n = 1 and the swap of inverse and mean the paper makes otherwise.

use super::fisher::FisherSamples;
use super::{block_damping_over, blocks, store_feature_spec, Block, Preconditioner};
use crate::store::Store;
use crate::Result;

/// DataInf over the per-sample rows of a store's Fisher (one streamed pass per query batch).
pub struct DataInf {
    fisher: FisherSamples,
    blocks: Vec<Block>,
    lambda: Vec<f64>,
}

impl DataInf {
    /// DataInf over the Fisher recorded for `store` (its own gradients unless fitted otherwise).
    pub fn new(store: &Store, damping: f64) -> Result<Self> {
        Self::over(store, FisherSamples::of(store)?, damping)
    }

    /// DataInf over the rows of `fisher`, laid out like `store`'s features.
    pub fn over(store: &Store, fisher: FisherSamples, damping: f64) -> Result<Self> {
        let bl = blocks(&store_feature_spec(store)?);
        let lambda = block_damping_over(&fisher.stores(), &bl, damping)?;
        Ok(Self {
            fisher,
            blocks: bl,
            lambda,
        })
    }
}

impl Preconditioner for DataInf {
    fn name(&self) -> &str {
        "datainf"
    }

    fn apply(&self, queries: &mut [f32], dim: usize) -> Result<()> {
        let nq = queries.len() / dim;
        let q64: Vec<f64> = queries.iter().map(|&x| x as f64).collect();
        let mut acc = vec![0f64; q64.len()];
        let mut n = 0usize;
        self.fisher.for_each_shard(|f, rows| {
            for r in 0..rows {
                let g = &f[r * dim..(r + 1) * dim];
                for (b, &lam) in self.blocks.iter().zip(&self.lambda) {
                    let gb = &g[b.offset..b.offset + b.len()];
                    let norm2: f64 = gb.iter().map(|&x| x as f64 * x as f64).sum();
                    for qi in 0..nq {
                        let qb = &q64[qi * dim + b.offset..qi * dim + b.offset + b.len()];
                        let c = gb.iter().zip(qb).map(|(&x, y)| x as f64 * y).sum::<f64>()
                            / (lam + norm2);
                        let ab = &mut acc[qi * dim + b.offset..qi * dim + b.offset + b.len()];
                        ab.iter_mut().zip(gb).for_each(|(a, &x)| *a += c * x as f64);
                    }
                }
            }
            n += rows;
            Ok(())
        })?;
        for qi in 0..nq {
            for (b, &lam) in self.blocks.iter().zip(&self.lambda) {
                for k in b.offset..b.offset + b.len() {
                    let i = qi * dim + k;
                    queries[i] = ((q64[i] - acc[i] / n.max(1) as f64) / lam) as f32;
                }
            }
        }
        Ok(())
    }
}
