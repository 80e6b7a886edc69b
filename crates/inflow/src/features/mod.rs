//! Per-sample gradient features from each tracked Linear's (x_t, δ_t) (METHODS.md §1).
//!
//! The per-sample gradient of y = W x is G = Σ_t δ_t x_tᵀ; it is never needed whole for
//! the default LoGra projection, which projects the two factors first.

pub mod dense;
pub mod logra;
// Old paths of the seeded stream and of module selection, which moved below the model layer
// (the CLI and tests still name them here).
pub use crate::model::select_modules;
pub use crate::random;

use crate::model::{Captured, LinearInfo};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// How gradients become feature vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Projection {
    /// LoGra (Choe et al. 2024): φ_layer = P_outᵀ G P_in with seeded Gaussian
    /// P_in ∈ R^{d_in×rank_in}, P_out ∈ R^{d_out×rank_out}, entries N(0, 1/rank).
    Logra { rank_in: usize, rank_out: usize },
    /// Dense Rademacher JL projection (TRAK, LESS): φ = Pᵀ vec(g), P_ij = ±1/√dim, generated in
    /// blocks from the seed, never stored.
    Dense { dim: usize },
    /// The exact flattened gradient (tiny models only).
    Full,
}

/// Everything that defines a feature vector: projection, seed and tracked layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub projection: Projection,
    pub seed: u64,
    /// Per-sample loss whose gradient is projected: mean token cross-entropy over response tokens.
    pub loss: String,
    pub layers: Vec<LinearInfo>,
}

impl FeatureSpec {
    /// The layout of synthetic features (benchmarks, tests of curvature and scoring): `layers`
    /// square `d` × `d` layers named `layer{i}` under `projection`, seed 0, loss `synthetic`.
    pub fn synthetic(layers: usize, d: usize, projection: Projection) -> FeatureSpec {
        FeatureSpec {
            projection,
            seed: 0,
            loss: "synthetic".into(),
            layers: (0..layers)
                .map(|i| LinearInfo {
                    name: format!("layer{i}"),
                    d_out: d,
                    d_in: d,
                })
                .collect(),
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        match &self.projection {
            Projection::Logra { rank_in, rank_out } => self.layers.len() * rank_in * rank_out,
            Projection::Dense { dim } => *dim,
            Projection::Full => self.layers.iter().map(|l| l.d_in * l.d_out).sum(),
        }
    }
}

/// Turns captured (x_t, δ_t) into one feature row per sample.
pub struct Projector {
    spec: FeatureSpec,
    logra: Option<logra::Logra>,
}

impl Projector {
    /// Builds the projector; LoGra matrices are generated here once (they are small).
    pub fn new(spec: FeatureSpec, dtype: DType) -> Result<Self> {
        let logra = match &spec.projection {
            Projection::Logra { rank_in, rank_out } => Some(logra::Logra::new(
                &spec.layers,
                *rank_in,
                *rank_out,
                spec.seed,
                dtype,
            )?),
            _ => None,
        };
        Ok(Self { spec, logra })
    }

    pub fn spec(&self) -> &FeatureSpec {
        &self.spec
    }

    /// The inputs of layer `i`'s K-FAC factors: (x̃, δ̃) = (P_inᵀ x, P_outᵀ δ) per token for LoGra,
    /// (x, δ) for full gradients, None for the dense projection (no Kronecker structure).
    pub fn factor_inputs(
        &self,
        i: usize,
        x: &Tensor,
        delta: &Tensor,
    ) -> Result<Option<(Tensor, Tensor)>> {
        match (&self.spec.projection, &self.logra) {
            (Projection::Logra { .. }, Some(lg)) => {
                let (p_in, p_out) = lg
                    .matrices(i)
                    .ok_or_else(|| Error::Msg(format!("no projection for layer {i}")))?;
                let (b, t, _) = x.dims3()?;
                let xp = x.reshape((b * t, ()))?.matmul(p_in)?.reshape((b, t, ()))?;
                let gp = delta
                    .reshape((b * t, ()))?
                    .matmul(p_out)?
                    .reshape((b, t, ()))?;
                Ok(Some((xp, gp)))
            }
            (Projection::Full, _) => Ok(Some((x.clone(), delta.clone()))),
            _ => Ok(None),
        }
    }

    /// Feature rows (B × dim, row-major, f32) for a captured batch; layers in spec order.
    pub fn project(&self, cap: &Captured) -> Result<Vec<f32>> {
        if cap.layers.len() != self.spec.layers.len()
            || cap
                .layers
                .iter()
                .zip(&self.spec.layers)
                .any(|(c, s)| c.info != *s)
        {
            return Err(Error::Msg(
                "captured layers differ from the feature spec's layers".into(),
            ));
        }
        let b = cap.losses.len();
        let blocks: Vec<Tensor> = match &self.spec.projection {
            Projection::Logra { .. } => {
                let lg = self
                    .logra
                    .as_ref()
                    .ok_or_else(|| Error::Msg("logra".into()))?;
                cap.layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| lg.project_layer(i, &l.x, &l.delta))
                    .collect::<Result<_>>()?
            }
            Projection::Full => cap
                .layers
                .iter()
                .map(|l| Ok(per_sample_gradient(&l.x, &l.delta)?.reshape((b, ()))?))
                .collect::<Result<_>>()?,
            Projection::Dense { dim } => {
                return dense::project(cap, *dim, self.spec.seed);
            }
        };
        let all = Tensor::cat(&blocks, 1)?.to_dtype(DType::F32)?;
        Ok(all.flatten_all()?.to_vec1()?)
    }
}

/// Per-sample weight gradients G_b = Σ_t δ_{b,t} x_{b,t}ᵀ, shape (B, d_out, d_in).
pub fn per_sample_gradient(x: &Tensor, delta: &Tensor) -> Result<Tensor> {
    Ok(delta
        .transpose(1, 2)?
        .contiguous()?
        .matmul(&x.contiguous()?)?)
}
