//! K-FAC and EK-FAC (Martens & Grosse 2015; George et al. 2018; Grosse et al. 2023).
//!
//! Per layer, with projected inputs x̃_t = P_inᵀ x_t and output gradients δ̃_t = P_outᵀ δ_t
//! (identity projections for full gradients):
//! A = mean over tokens of x̃ x̃ᵀ, S = mean over samples of Σ_t δ̃ δ̃ᵀ, so S ⊗ A approximates the
//! per-sample Fisher E_n[g_n g_nᵀ] of the layer (cross-token terms dropped).
//! Eigendecompose A = Q_A Λ_A Q_Aᵀ, S = Q_S Λ_S Q_Sᵀ.
//! - K-FAC: G ↦ Q_S [(Q_Sᵀ G Q_A) ⊘ (λ_S λ_Aᵀ + λ)] Q_Aᵀ (damping on the Kronecker eigenvalues).
//! - EK-FAC: the eigenvalues are refitted in that basis from the per-sample gradients,
//!   Λ_ij = E_n[(Q_Sᵀ G_n Q_A)_ij²], and G ↦ Q_S [(Q_Sᵀ G Q_A) ⊘ (Λ + λ)] Q_Aᵀ.
//!
//! A and S are accumulated in the same model pass as the features, by an observer of the index
//! pass ([`run_index`], in `kfac_stats`; one file per shard, so a resumed index keeps them
//! exact); `fit` sums them, eigendecomposes with faer, and makes the EK-FAC pass over the stored
//! features.

use super::fisher::FisherSamples;
use super::kfac_stats::{save_tensors, stats_path, KfacStats};
use super::{blocks, store_feature_spec, Block, Preconditioner};
use crate::store::Store;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use faer::{Mat, Side};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

// `inflow index` and the tests index through here (the K-FAC-observed index pass).
pub use super::kfac_stats::run_index;

/// Where `inflow fit` writes a store's K-FAC and EK-FAC factors.
pub fn fit_path(store_dir: &Path) -> PathBuf {
    store_dir.join("curvature").join("kfac.safetensors")
}

/// Symmetric eigendecomposition (ascending eigenvalues, clamped at 0: the factors are PSD).
fn eig(m: &[f64], n: usize) -> Result<(Mat<f64>, Vec<f64>)> {
    let a = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (m[i * n + j] + m[j * n + i]));
    let e = a
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| Error::Msg(format!("eigendecomposition failed: {e:?}")))?;
    let vals: Vec<f64> = (0..n).map(|i| e.S().column_vector()[i].max(0.0)).collect();
    Ok((e.U().to_owned(), vals))
}

fn block_mat(v: &[f32], b: &Block) -> Mat<f64> {
    Mat::<f64>::from_fn(b.rows, b.cols, |i, j| v[b.offset + i * b.cols + j] as f64)
}

/// The fitted factors of one layer.
pub struct LayerFit {
    q_a: Mat<f64>,
    lam_a: Vec<f64>,
    q_s: Mat<f64>,
    lam_s: Vec<f64>,
    /// EK-FAC eigenvalues, rows × cols.
    ekfac: Mat<f64>,
}

/// Where the Kronecker factors come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorSource {
    /// A = mean over tokens of x̃x̃ᵀ, S = mean over samples of Σ_t δ̃δ̃ᵀ, summed by `index` in
    /// the model pass (METHODS.md's definition).
    Tokens,
    /// The Kronecker marginals of the per-sample Fisher from the stored features:
    /// A = E_n[G_nᵀG_n], S = E_n[G_nG_nᵀ] / E_n‖G_n‖² (for F = S⊗A exactly these are F's own
    /// factors, so K-FAC is then exact).
    /// Needs no model pass.
    Samples,
}

crate::error::names!(FactorSource: "factor source", Tokens = "tokens", Samples = "samples");

/// Sums the Kronecker factors, eigendecomposes A and S per layer, and refits the EK-FAC
/// eigenvalues over the stored per-sample features (the empirical Fisher). Writes
/// `curvature/kfac.safetensors` and records the Fisher.
pub fn fit(store: &Store, source: FactorSource) -> Result<PathBuf> {
    fit_with(store, &FisherSamples::empirical(store)?, source)
}

/// [`fit`] with the Fisher taken over the samples of `fisher` (for example stores of
/// sampled-label pseudo-gradients, one per draw, for the true Fisher), the factors written
/// beside `target`, whose features must have the same layout, and `fisher`'s kind recorded in
/// `curvature/fisher.json` so that every other preconditioner of `target` uses the same Fisher.
pub fn fit_with(target: &Store, fisher: &FisherSamples, source: FactorSource) -> Result<PathBuf> {
    let spec = store_feature_spec(target)?;
    let bl = blocks(&spec);
    if matches!(spec.projection, crate::features::Projection::Dense { .. }) {
        return Err(Error::Msg(
            "K-FAC needs layer structure: index with --projection logra or full".into(),
        ));
    }
    let stores = fisher.stores();
    super::check_same_layout(target, &stores)?;
    let total = match source {
        FactorSource::Samples => sample_factors(&stores, &bl)?,
        FactorSource::Tokens => {
            let mut total = KfacStats::default();
            for store in &stores {
                for s in 0..store.n_shards() {
                    let p = stats_path(store.dir(), s);
                    if !p.exists() {
                        return Err(Error::Store {
                            path: store.dir().into(),
                            msg: format!(
                                "{} is missing (index it again with this version, or fit with --factors samples)",
                                p.display()
                            ),
                        });
                    }
                    total.merge(&KfacStats::load(&p, bl.len())?);
                }
            }
            total
        }
    };
    let mut fits = Vec::with_capacity(bl.len());
    for (b, (a, s)) in bl.iter().zip(&total.layers) {
        let a: Vec<f64> = a.iter().map(|v| v / total.n_tokens.max(1) as f64).collect();
        // Sample marginals carry E‖G‖² twice (tr A = tr S = E‖G‖²): dividing S by tr A gives
        // A⊗S the Fisher's trace, and A⊗S = F exactly when F is Kronecker-factored.
        let s_scale = match source {
            FactorSource::Tokens => total.n_samples.max(1) as f64,
            FactorSource::Samples => {
                let tr: f64 = (0..b.cols).map(|i| a[i * b.cols + i]).sum();
                total.n_samples.max(1) as f64 * if tr > 0.0 { tr } else { 1.0 }
            }
        };
        let s: Vec<f64> = s.iter().map(|v| v / s_scale).collect();
        let (q_a, lam_a) = eig(&a, b.cols)?;
        let (q_s, lam_s) = eig(&s, b.rows)?;
        fits.push(LayerFit {
            q_a,
            lam_a,
            q_s,
            lam_s,
            ekfac: Mat::zeros(b.rows, b.cols),
        });
    }
    // EK-FAC pass: Λ = E_n[(Q_Sᵀ G_n Q_A)²] over the stored per-sample features.
    let dim = target.dim();
    let mut n = 0usize;
    super::for_each_shard(&stores, |f, rows| {
        for row in f.chunks_exact(dim).take(rows) {
            for (b, fit) in bl.iter().zip(fits.iter_mut()) {
                let g = block_mat(row, b);
                let rot = fit.q_s.transpose() * &g * &fit.q_a;
                for i in 0..b.rows {
                    for j in 0..b.cols {
                        fit.ekfac[(i, j)] += rot[(i, j)] * rot[(i, j)];
                    }
                }
            }
        }
        n += rows;
        Ok(())
    })?;
    let dev = Device::Cpu;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mat_t = |m: &Mat<f64>| -> Result<Tensor> {
        let v: Vec<f64> = (0..m.nrows())
            .flat_map(|i| (0..m.ncols()).map(move |j| (i, j)))
            .map(|(i, j)| m[(i, j)])
            .collect();
        Ok(Tensor::from_vec(v, (m.nrows(), m.ncols()), &dev)?)
    };
    for (l, fit) in fits.iter_mut().enumerate() {
        for i in 0..fit.ekfac.nrows() {
            for j in 0..fit.ekfac.ncols() {
                fit.ekfac[(i, j)] /= n.max(1) as f64;
            }
        }
        // Curvature is checked before it is written: a non-finite factor would make every
        // influence score of this store NaN or arbitrary.
        let finite =
            |m: &Mat<f64>| (0..m.nrows()).all(|i| (0..m.ncols()).all(|j| m[(i, j)].is_finite()));
        if !(finite(&fit.q_a)
            && finite(&fit.q_s)
            && finite(&fit.ekfac)
            && fit.lam_a.iter().chain(&fit.lam_s).all(|v| v.is_finite()))
        {
            return Err(Error::Store {
                path: target.dir().into(),
                msg: format!(
                    "the fitted curvature of layer {} ({}) is not finite: a stored feature or \
                     K-FAC statistic is NaN or infinite; nothing was written",
                    l, spec.layers[l].name
                ),
            });
        }
        t.insert(format!("QA.{l}"), mat_t(&fit.q_a)?);
        t.insert(format!("QS.{l}"), mat_t(&fit.q_s)?);
        t.insert(
            format!("lamA.{l}"),
            Tensor::from_slice(&fit.lam_a, fit.lam_a.len(), &dev)?,
        );
        t.insert(
            format!("lamS.{l}"),
            Tensor::from_slice(&fit.lam_s, fit.lam_s.len(), &dev)?,
        );
        t.insert(format!("ekfac.{l}"), mat_t(&fit.ekfac)?);
    }
    let path = fit_path(target.dir());
    save_tensors(&t, &path)?;
    super::fisher::record(target, fisher.fisher)?;
    Ok(path)
}

/// Kronecker marginals of the per-sample Fisher from stored features: A = E[GᵀG], S = E[GGᵀ].
fn sample_factors(stores: &[&Store], bl: &[Block]) -> Result<KfacStats> {
    let mut st = KfacStats {
        layers: bl
            .iter()
            .map(|b| (vec![0.0; b.cols * b.cols], vec![0.0; b.rows * b.rows]))
            .collect(),
        n_tokens: 0,
        n_samples: 0,
    };
    let dim = stores.first().map_or(0, |s| s.dim());
    super::for_each_shard(stores, |f, rows| {
        for row in f.chunks_exact(dim).take(rows) {
            for (b, (a, s)) in bl.iter().zip(st.layers.iter_mut()) {
                let g = block_mat(row, b);
                let ga = g.transpose() * &g;
                let gs = &g * g.transpose();
                for i in 0..b.cols {
                    for j in 0..b.cols {
                        a[i * b.cols + j] += ga[(i, j)];
                    }
                }
                for i in 0..b.rows {
                    for j in 0..b.rows {
                        s[i * b.rows + j] += gs[(i, j)];
                    }
                }
            }
        }
        st.n_tokens += rows as u64;
        st.n_samples += rows as u64;
        Ok(())
    })?;
    Ok(st)
}

/// K-FAC or EK-FAC inverse applied per layer block.
pub struct KfacPreconditioner {
    blocks: Vec<Block>,
    fits: Vec<LayerFit>,
    /// Per layer, the damped eigenvalue grid (rows × cols) the rotated gradient is divided by.
    denom: Vec<Mat<f64>>,
    ekfac: bool,
}

impl KfacPreconditioner {
    /// Loads `curvature/kfac.safetensors` (made by `inflow fit`).
    pub fn load(store: &Store, ekfac: bool, damping: f64) -> Result<Self> {
        let spec = store_feature_spec(store)?;
        let bl = blocks(&spec);
        let path = fit_path(store.dir());
        if !path.exists() {
            return Err(Error::Store {
                path: store.dir().into(),
                msg: format!(
                    "no fitted curvature: run `inflow fit --store {}` first",
                    store.dir().display()
                ),
            });
        }
        let t = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| Error::Store {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let get = |k: &str| -> Result<&Tensor> {
            t.get(k).ok_or_else(|| Error::Store {
                path: path.clone(),
                msg: format!("missing tensor `{k}`"),
            })
        };
        let to_mat = |x: &Tensor| -> Result<Mat<f64>> {
            let v = x.to_vec2::<f64>()?;
            Ok(Mat::from_fn(
                v.len(),
                v.first().map_or(0, |r| r.len()),
                |i, j| v[i][j],
            ))
        };
        let mut fits = Vec::with_capacity(bl.len());
        let mut denom = Vec::with_capacity(bl.len());
        for (l, b) in bl.iter().enumerate() {
            let fit = LayerFit {
                q_a: to_mat(get(&format!("QA.{l}"))?)?,
                q_s: to_mat(get(&format!("QS.{l}"))?)?,
                lam_a: get(&format!("lamA.{l}"))?.to_vec1()?,
                lam_s: get(&format!("lamS.{l}"))?.to_vec1()?,
                ekfac: to_mat(get(&format!("ekfac.{l}"))?)?,
            };
            if fit.q_a.nrows() != b.cols || fit.q_s.nrows() != b.rows {
                return Err(Error::Store {
                    path: path.clone(),
                    msg: format!("layer {} factors do not match the features", b.name),
                });
            }
            let eigs = Mat::<f64>::from_fn(b.rows, b.cols, |i, j| {
                if ekfac {
                    fit.ekfac[(i, j)]
                } else {
                    fit.lam_s[i] * fit.lam_a[j]
                }
            });
            let mean = (0..b.rows)
                .flat_map(|i| (0..b.cols).map(move |j| (i, j)))
                .map(|(i, j)| eigs[(i, j)])
                .sum::<f64>()
                / b.len() as f64;
            let lam = if mean > 0.0 {
                damping * mean
            } else {
                damping.max(1e-12)
            };
            denom.push(Mat::from_fn(b.rows, b.cols, |i, j| eigs[(i, j)] + lam));
            fits.push(fit);
        }
        Ok(Self {
            blocks: bl,
            fits,
            denom,
            ekfac,
        })
    }
}

impl Preconditioner for KfacPreconditioner {
    fn name(&self) -> &str {
        if self.ekfac {
            "ekfac"
        } else {
            "kfac"
        }
    }

    fn apply(&self, queries: &mut [f32], dim: usize) -> Result<()> {
        for q in queries.chunks_exact_mut(dim) {
            for ((b, fit), d) in self.blocks.iter().zip(&self.fits).zip(&self.denom) {
                let g = block_mat(q, b);
                let mut rot = fit.q_s.transpose() * &g * &fit.q_a;
                for i in 0..b.rows {
                    for j in 0..b.cols {
                        rot[(i, j)] /= d[(i, j)];
                    }
                }
                let back = &fit.q_s * &rot * fit.q_a.transpose();
                for i in 0..b.rows {
                    for j in 0..b.cols {
                        q[b.offset + i * b.cols + j] = back[(i, j)] as f32;
                    }
                }
            }
        }
        Ok(())
    }
}
