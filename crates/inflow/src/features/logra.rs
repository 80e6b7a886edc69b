//! LoGra factorized projection (Choe et al. 2024, "What is your data worth to GPT?").
//!
//! φ_layer(z) = P_outᵀ G P_in = Σ_t (P_outᵀ δ_t)(P_inᵀ x_t)ᵀ: the small factors are
//! projected first, so the d_out × d_in gradient is never formed.

use crate::model::LinearInfo;
use crate::random::Stream;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// Seeded per-layer projection matrices.
pub struct Logra {
    /// (P_in: d_in × r_in, P_out: d_out × r_out) per layer.
    mats: Vec<(Tensor, Tensor)>,
}

/// A d × r Gaussian matrix with N(0, 1/r) entries from (seed, label), so E[P Pᵀ] = I and
/// inner products of projected gradients are unbiased.
pub fn gaussian(seed: u64, label: &str, d: usize, r: usize, dtype: DType) -> Result<Tensor> {
    let mut s = Stream::new(seed, label);
    let scale = 1.0 / (r as f64).sqrt();
    let v: Vec<f64> = (0..d * r).map(|_| s.normal() * scale).collect();
    Ok(Tensor::from_vec(v, (d, r), &Device::Cpu)?.to_dtype(dtype)?)
}

impl Logra {
    pub fn new(
        layers: &[LinearInfo],
        rank_in: usize,
        rank_out: usize,
        seed: u64,
        dtype: DType,
    ) -> Result<Self> {
        let mats = layers
            .iter()
            .map(|l| {
                Ok((
                    gaussian(seed, &format!("{}/in", l.name), l.d_in, rank_in, dtype)?,
                    gaussian(seed, &format!("{}/out", l.name), l.d_out, rank_out, dtype)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self { mats })
    }

    /// The projection matrices of layer `i` (P_in, P_out).
    pub fn matrices(&self, i: usize) -> Option<&(Tensor, Tensor)> {
        self.mats.get(i)
    }

    /// (B, r_out·r_in) features of layer `i` from x (B, T, d_in) and δ (B, T, d_out).
    pub fn project_layer(&self, i: usize, x: &Tensor, delta: &Tensor) -> Result<Tensor> {
        let (p_in, p_out) = &self.mats[i];
        let (b, t, d_in) = x.dims3()?;
        let d_out = delta.dim(2)?;
        let xp = x
            .reshape((b * t, d_in))?
            .matmul(p_in)?
            .reshape((b, t, ()))?;
        let gp = delta
            .reshape((b * t, d_out))?
            .matmul(p_out)?
            .reshape((b, t, ()))?;
        let phi = gp.transpose(1, 2)?.contiguous()?.matmul(&xp)?;
        Ok(phi.reshape((b, ()))?)
    }
}
