//! A frozen Linear layer whose backward pass returns dL/dx only and keeps dL/dy.
//!
//! Per-sample gradient features need, for every tracked layer y = W x, the inputs x_t
//! (kept from the forward pass) and the output gradients δ_t = ∂ℓ/∂y_t (METHODS.md §1).
//! candle drops intermediate gradients, and its stock matmul backward also computes the
//! (unused) weight gradient; this custom op skips that and stores δ in a slot instead
//! (STACK.md, "the fast per-sample path").

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use std::sync::{Arc, Mutex};

/// Where the backward pass leaves δ (shape: rows × d_out) for one tracked layer.
pub type GradSlot = Arc<Mutex<Option<Tensor>>>;

/// y = x Wᵀ for x of shape (rows, d_in) and W of shape (d_out, d_in).
pub(crate) struct FrozenLinear {
    pub w: Tensor,
    pub slot: Option<GradSlot>,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, x_l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, d_in) = x_l.shape().dims2()?;
        let (d_out, w_in) = self.w.dims2()?;
        if w_in != d_in {
            candle_core::bail!("frozen-linear: input has {d_in} features, weight expects {w_in}")
        }
        let (w_storage, w_l) = self.w.storage_and_layout();
        let Storage::Cpu(w_cpu) = &*w_storage else {
            candle_core::bail!("frozen-linear: weight is not on the CPU")
        };
        // Wᵀ as a strided view: no copy.
        let wt_l = w_l.transpose(0, 1)?;
        let y = x.matmul(w_cpu, (1, rows, d_out, d_in), x_l, &wt_l)?;
        Ok((y, Shape::from((rows, d_out))))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if let Some(slot) = &self.slot {
            let mut guard = slot
                .lock()
                .map_err(|_| candle_core::Error::Msg("gradient slot poisoned".into()))?;
            *guard = Some(grad_y.detach());
        }
        Ok(Some(grad_y.matmul(&self.w)?))
    }
}

/// Applies y = x Wᵀ to x of any rank (…, d_in), keeping δ in `slot` during backward when given.
pub(crate) fn apply(x: &Tensor, w: &Tensor, slot: Option<GradSlot>) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    let d_in = x.dim(candle_core::D::Minus1)?;
    let rows = x.elem_count() / d_in.max(1);
    let y = x
        .reshape((rows, d_in))?
        .apply_op1(FrozenLinear { w: w.clone(), slot })?;
    let mut out_dims = dims;
    if let Some(last) = out_dims.last_mut() {
        *last = w.dim(0)?;
    }
    y.reshape(out_dims)
}
