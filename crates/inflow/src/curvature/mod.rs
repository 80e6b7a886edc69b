//! Inverse-Hessian approximations for influence functions (METHODS.md §2, "Influence function").
//!
//! Influence of training sample z on query q (helpfulness sign convention):
//! I(z, q) = g_qᵀ (H + λI)⁻¹ g_z, positive when up-weighting z lowers the query loss.
//! H is the empirical Fisher of the per-sample gradients in feature space (per tracked layer
//! blocks, or whole). Every method here is a [`Preconditioner`] applied once to the query side
//! (q' = (H + λI)⁻¹ q), so scoring stays one streamed matrix product over the store.
//!
//! Damping: per layer block l, λ_l = `damping` × mean_i ‖g_il‖² / d_l, i.e. `damping` times the
//! mean eigenvalue of that block's Fisher (DataInf's reference choice with `damping` = 0.1),
//! shared by every method so they approximate the same damped matrix.

pub mod datainf;
pub mod exact;
pub mod fisher;
pub mod kfac;
pub mod kfac_stats;
pub mod lissa;

use crate::features::{FeatureSpec, Projection};
use crate::store::Store;
use crate::{Error, Result};

/// q ← (H + λI)⁻¹ q for feature rows.
pub trait Preconditioner: Send + Sync {
    fn name(&self) -> &str;
    /// Applies the inverse to every row of `queries` (nq × dim, row-major) in place.
    fn apply(&self, queries: &mut [f32], dim: usize) -> Result<()>;
    /// Diagnostics of the last application (LiSSA's convergence), if any.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
}

/// One layer's slice of a feature vector: rows × cols (r_out × r_in, or d_out × d_in), row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: String,
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
}

impl Block {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The per-layer blocks of a feature spec; a dense projection is one unstructured block.
pub fn blocks(spec: &FeatureSpec) -> Vec<Block> {
    // A LoGra layer's block is rank_out × rank_in, a full one the layer's d_out × d_in.
    let (rank_in, rank_out) = match spec.projection {
        Projection::Logra { rank_in, rank_out } => (Some(rank_in), Some(rank_out)),
        Projection::Full => (None, None),
        Projection::Dense { dim } => {
            return vec![Block {
                name: "dense".into(),
                offset: 0,
                rows: 1,
                cols: dim,
            }]
        }
    };
    let mut off = 0;
    spec.layers
        .iter()
        .map(|l| {
            let b = Block {
                name: l.name.clone(),
                offset: off,
                rows: rank_out.unwrap_or(l.d_out),
                cols: rank_in.unwrap_or(l.d_in),
            };
            off += b.len();
            b
        })
        .collect()
}

/// The feature spec a store was built with.
pub fn store_feature_spec(store: &Store) -> Result<FeatureSpec> {
    serde_json::from_value(store.spec().features.clone()).map_err(|e| Error::Store {
        path: store.dir().into(),
        msg: format!("features are not gradient features ({e}); influence needs a gradient store"),
    })
}

/// Refuses Fisher stores whose features are not laid out like `target`'s (same layers,
/// projection and dimension), which would silently mix unrelated coordinates.
pub fn check_same_layout(target: &Store, fisher: &[&Store]) -> Result<()> {
    let want = store_feature_spec(target)?;
    for f in fisher {
        let got = store_feature_spec(f)?;
        if got.projection != want.projection
            || got.seed != want.seed
            || got.layers != want.layers
            || f.dim() != target.dim()
        {
            return Err(Error::Store {
                path: f.dir().into(),
                msg: format!(
                    "its features are not laid out like those of {} (layers, projection, seed and dim must match)",
                    target.dir().display()
                ),
            });
        }
    }
    Ok(())
}

/// Calls `f(features, rows)` for every shard of every store, in order: the one pass over a
/// Fisher's per-sample rows that damping, the exact matrix and the K-FAC fit share.
pub fn for_each_shard(
    stores: &[&Store],
    mut f: impl FnMut(&[f32], usize) -> Result<()>,
) -> Result<()> {
    for st in stores {
        for s in 0..st.n_shards() {
            let (feat, rows) = st.shard_features(s)?;
            f(&feat, rows)?;
        }
    }
    Ok(())
}

/// Per-block λ_l = damping × mean_i ‖g_il‖² / d_l over the rows of `stores` (the samples of
/// the Fisher), i.e. `damping` times the mean eigenvalue of each block of that Fisher.
pub fn block_damping_over(stores: &[&Store], blocks: &[Block], damping: f64) -> Result<Vec<f64>> {
    let mut sq = vec![0f64; blocks.len()];
    let mut n = 0usize;
    let dim = stores.first().map_or(0, |s| s.dim());
    for_each_shard(stores, |f, rows| {
        for row in f.chunks_exact(dim).take(rows) {
            for (k, b) in blocks.iter().enumerate() {
                sq[k] += row[b.offset..b.offset + b.len()]
                    .iter()
                    .map(|&x| x as f64 * x as f64)
                    .sum::<f64>();
            }
        }
        n += rows;
        Ok(())
    })?;
    Ok(blocks
        .iter()
        .zip(sq)
        .map(|(b, s)| {
            let l = damping * s / (n.max(1) as f64) / b.len() as f64;
            // A block whose gradients are all zero still needs an invertible damping.
            if l > 0.0 {
                l
            } else {
                damping.max(1e-12)
            }
        })
        .collect())
}

/// The identity (plain gradient dot product).
pub struct Identity;

impl Preconditioner for Identity {
    fn name(&self) -> &str {
        "identity"
    }
    fn apply(&self, _q: &mut [f32], _dim: usize) -> Result<()> {
        Ok(())
    }
}

/// Names accepted by `--preconditioner`.
pub const NAMES: [&str; 6] = ["identity", "kfac", "ekfac", "datainf", "lissa", "exact"];

/// Options for building a preconditioner.
#[derive(Debug, Clone)]
pub struct Options {
    pub damping: f64,
    /// LiSSA's maximum iterations per query.
    pub lissa_iters: usize,
    pub lissa_batch: usize,
    /// LiSSA's tolerance: the relative error its stopping rule guarantees (full batch) and the
    /// largest residual it calls converged (see [`lissa`]).
    pub lissa_tol: f64,
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            damping: 0.1,
            lissa_iters: 300,
            lissa_batch: 64,
            lissa_tol: 1e-2,
            seed: 0,
        }
    }
}

/// Builds the named preconditioner for a store (K-FAC and EK-FAC need `inflow fit` first).
pub fn load<'a>(
    name: &str,
    store: &'a Store,
    opts: &Options,
) -> Result<Box<dyn Preconditioner + 'a>> {
    Ok(match name {
        "identity" => Box::new(Identity),
        "kfac" | "ekfac" => Box::new(kfac::KfacPreconditioner::load(
            store,
            name == "ekfac",
            opts.damping,
        )?),
        "datainf" => Box::new(datainf::DataInf::new(store, opts.damping)?),
        "lissa" => Box::new(lissa::Lissa::new(store, opts)?),
        "exact" => Box::new(exact::Exact::new(store, opts.damping)?),
        _ => {
            return Err(Error::Msg(format!(
                "unknown preconditioner `{name}`; expected one of {}",
                NAMES.join(", ")
            )))
        }
    })
}
