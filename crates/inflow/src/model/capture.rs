//! What a model pass records of each tracked Linear: its inputs x_t and output gradients δ_t.
//! Both the base model's pass (`llama`) and the LoRA factors' (`lora`) yield these, so they
//! live below both.

use candle_core::Tensor;

/// One tracked Linear: its full name and shape (d_out, d_in).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LinearInfo {
    pub name: String,
    pub d_out: usize,
    pub d_in: usize,
}

/// What one tracked layer saw in a forward/backward pass over a padded batch.
pub struct LayerCapture {
    pub info: LinearInfo,
    /// Layer inputs x_t, shape (B, T, d_in).
    pub x: Tensor,
    /// Output gradients δ_t = ∂ℓ_b/∂y_t, shape (B, T, d_out); zero at padding.
    pub delta: Tensor,
}

/// Result of [`Llama::loss_and_capture`](super::Llama::loss_and_capture).
pub struct Captured {
    /// ℓ_b: mean cross-entropy over sample b's response tokens (0 if it has none).
    pub losses: Vec<f32>,
    pub layers: Vec<LayerCapture>,
    /// Final-norm hidden states (B, T, H) of the same pass (RepSim uses them).
    pub hidden: Tensor,
}
