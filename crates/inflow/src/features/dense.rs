//! Dense Rademacher projection of the full per-sample gradient (TRAK, LESS):
//! φ = Pᵀ vec(g), P ∈ {±1/√k}^{D×k}. P is regenerated in row blocks from the seed and the
//! layer name and never held whole; each block is applied to the whole batch as one GEMM.
//! Costs D·k multiply-adds per sample: meant for small models or a few layers.

use crate::model::Captured;
use crate::random::Stream;
use crate::Result;
use candle_core::{DType, Device, Tensor};

/// Rows of P generated at a time.
const BLOCK_ROWS: usize = 2048;

/// Projects each sample's gradient of every captured layer to `dim` dimensions.
pub fn project(cap: &Captured, dim: usize, seed: u64) -> Result<Vec<f32>> {
    let b = cap.losses.len();
    let mut blocks = Vec::with_capacity(cap.layers.len());
    for layer in &cap.layers {
        let g = super::per_sample_gradient(&layer.x, &layer.delta)?.reshape((b, ()))?;
        blocks.push((layer.info.name.as_str(), g));
    }
    project_rows(&blocks, b, dim, seed)
}

/// φ = Σ_layers P_layerᵀ v_layer for per-sample vectors given layer by layer as (name, B × D_layer)
/// matrices (flattened gradients, or transforms of them such as LESS's Adam update
/// Γ = m'/(√v' + ε)). The same (name, seed) gives the same P_layer as [`project`], so vectors of
/// the same layers projected either way share one space.
pub fn project_rows(
    layers: &[(&str, Tensor)],
    b: usize,
    dim: usize,
    seed: u64,
) -> Result<Vec<f32>> {
    let scale = 1.0 / (dim as f32).sqrt();
    let mut out = Tensor::zeros((b, dim), DType::F32, &Device::Cpu)?;
    let mut block = vec![0f32; BLOCK_ROWS * dim];
    for (name, g) in layers {
        let g = g.to_dtype(DType::F32)?;
        let d = g.dim(1)?;
        let mut r0 = 0;
        let mut blk = 0;
        while r0 < d {
            let rows = BLOCK_ROWS.min(d - r0);
            let mut s = Stream::new(seed, &format!("{name}/dense/{blk}"));
            s.rademacher(&mut block[..rows * dim], scale);
            let p = Tensor::from_slice(&block[..rows * dim], (rows, dim), &Device::Cpu)?;
            out = (out + g.narrow(1, r0, rows)?.matmul(&p)?)?;
            r0 += rows;
            blk += 1;
        }
    }
    Ok(out.flatten_all()?.to_vec1()?)
}
