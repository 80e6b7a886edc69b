//! AdamW (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization"), as PyTorch's
//! `torch.optim.AdamW` computes it, so runs and checkpoints compare with the Python ecosystem:
//!
//! ```text
//! θ ← θ·(1 − η·λ)                               decoupled weight decay
//! m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²
//! θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)   bias-corrected step
//! ```

use crate::{Error, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

/// AdamW hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// λ, decoupled: θ shrinks by η·λ per step whatever the gradient.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults except weight decay 0 (PEFT/LESS recipes use 0).
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Optimizer state: first and second moments per parameter and the number of steps taken.
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken so far (t of the bias correction is `step + 1` for the next one).
    pub step: usize,
    /// (m, v) per parameter, in the trainer's parameter order.
    pub moments: Vec<(Tensor, Tensor)>,
}

impl AdamW {
    /// Zero moments shaped like `params`.
    pub fn new(config: AdamWConfig, params: &[(String, Var)]) -> Result<Self> {
        let moments = params
            .iter()
            .map(|(_, p)| Ok((p.zeros_like()?, p.zeros_like()?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            config,
            step: 0,
            moments,
        })
    }

    /// One update of every parameter with gradient `grads[i]` at learning rate `lr`.
    pub fn step(&mut self, params: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        if params.len() != grads.len() || params.len() != self.moments.len() {
            return Err(Error::Msg(format!(
                "AdamW: {} parameters, {} gradients, {} moment pairs",
                params.len(),
                grads.len(),
                self.moments.len()
            )));
        }
        self.step += 1;
        let c = &self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = lr / bc1;
        for (((_, p), g), (m, v)) in params.iter().zip(grads).zip(self.moments.iter_mut()) {
            let g = g.to_dtype(p.dtype())?;
            *m = ((&*m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            *v = ((&*v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let denom = ((v.sqrt()? / bc2.sqrt())? + c.eps)?;
            let decayed = if c.weight_decay != 0.0 {
                (p.as_tensor() * (1.0 - lr * c.weight_decay))?
            } else {
                p.as_tensor().clone()
            };
            let next = (decayed - (m.div(&denom)? * step_size)?)?;
            p.set(&next)?;
        }
        Ok(())
    }
}

/// LESS's Adam-update feature of a gradient g given checkpoint moments (m, v)
/// (Xia et al. 2024; METHODS.md §2): Γ = m'/(√v' + ε), m' = β₁ m + (1 − β₁) g,
/// v' = β₂ v + (1 − β₂) g². Elementwise on flat slices.
pub fn adam_update_feature(g: &[f32], m: &[f32], v: &[f32], c: &AdamWConfig, out: &mut [f32]) {
    for i in 0..g.len() {
        let g64 = g[i] as f64;
        let m1 = c.beta1 * m[i] as f64 + (1.0 - c.beta1) * g64;
        let v1 = c.beta2 * v[i] as f64 + (1.0 - c.beta2) * g64 * g64;
        out[i] = (m1 / (v1.sqrt() + c.eps)) as f32;
    }
}

/// √(Σ‖g_i‖²) over all gradients (f64 accumulation).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut s = 0f64;
    for g in grads {
        s += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    Ok(s.sqrt())
}

/// Scales gradients so their global norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor max_norm / (norm + 1e-6), applied only when below 1).
/// Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two steps against the formulas evaluated by hand in f64.
    #[test]
    fn adamw_matches_hand_computation() {
        let dev = Device::Cpu;
        let theta0 = [0.5f64, -1.0, 2.0];
        let g1 = [0.1f64, -0.2, 0.0];
        let g2 = [0.3f64, 0.1, -0.4];
        let p = Var::from_tensor(&Tensor::new(&theta0, &dev).unwrap()).unwrap();
        let params = vec![("w".to_string(), p.clone())];
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(cfg.clone(), &params).unwrap();
        let (lr1, lr2) = (0.01, 0.005);
        opt.step(&params, &[Tensor::new(&g1, &dev).unwrap()], lr1)
            .unwrap();
        opt.step(&params, &[Tensor::new(&g2, &dev).unwrap()], lr2)
            .unwrap();
        let got: Vec<f64> = p.as_tensor().to_vec1().unwrap();
        for i in 0..3 {
            let (mut th, mut m, mut v) = (theta0[i], 0.0, 0.0);
            for (t, (g, lr)) in [(g1[i], lr1), (g2[i], lr2)].into_iter().enumerate() {
                let t = t as i32 + 1;
                th *= 1.0 - lr * 0.1;
                m = 0.9 * m + 0.1 * g;
                v = 0.99 * v + 0.01 * g * g;
                let mh = m / (1.0 - 0.9f64.powi(t));
                let vh = v / (1.0 - 0.99f64.powi(t));
                th -= lr * mh / (vh.sqrt() + 1e-8);
            }
            assert!((got[i] - th).abs() < 1e-12, "θ[{i}] = {} vs {th}", got[i]);
        }
        // First step: Adam moves each coordinate with a nonzero gradient by ≈ lr (sign of g).
        assert!((got[2] - theta0[2] * (1.0 - lr1 * 0.1) * (1.0 - lr2 * 0.1)).abs() > 1e-3);
        let m: Vec<f64> = opt.moments[0].0.to_vec1().unwrap();
        assert!((m[0] - (0.9 * 0.1 * 0.1 + 0.1 * 0.3)).abs() < 1e-12);
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let dev = Device::Cpu;
        let mut g = vec![
            Tensor::new(&[3f32, 0.0], &dev).unwrap(),
            Tensor::new(&[4f32], &dev).unwrap(),
        ];
        let n = clip_grad_norm(&mut g, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((global_norm(&g).unwrap() - 1.0).abs() < 1e-5);
        let n2 = clip_grad_norm(&mut g, 10.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5, "no change below the max");
        assert_eq!(g[0].dtype(), DType::F32);
    }

    #[test]
    fn adam_update_feature_follows_less() {
        let c = AdamWConfig::default();
        let mut out = [0f32; 2];
        adam_update_feature(&[0.5, -2.0], &[0.1, 0.0], &[0.01, 0.0], &c, &mut out);
        let m = 0.9 * 0.1 + 0.1 * 0.5;
        let v: f64 = 0.999 * 0.01 + 0.001 * 0.25;
        assert!((out[0] as f64 - m / (v.sqrt() + 1e-8)).abs() < 1e-6);
        // Zero moments: Γ = 0.1 g / (√0.001 |g|) = ±0.1/√0.001.
        assert!((out[1] as f64 + 0.1 / 0.001f64.sqrt()).abs() < 1e-4);
    }
}
