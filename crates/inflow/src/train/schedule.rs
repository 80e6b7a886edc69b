//! Learning-rate schedules: linear warm-up, then linear or cosine decay to 0, or constant
//! (Hugging Face's `get_linear_schedule_with_warmup` / `get_cosine_schedule_with_warmup`).

use serde::{Deserialize, Serialize};

/// Shape of the decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    /// η_k = η · (K − k)/(K − W).
    Linear,
    /// η_k = η · ½(1 + cos(π (k − W)/(K − W))).
    Cosine,
    /// η_k = η.
    Constant,
}

crate::error::names!(Decay: "schedule",
    Linear = "linear", Cosine = "cosine", Constant = "constant");

/// η at optimizer step k (0-based) of K: k/W · η during the W warm-up steps, then the decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate used by step `k` (0-based).
    pub fn lr(&self, k: usize) -> f64 {
        let (w, total) = (self.warmup_steps, self.total_steps);
        if k < w {
            return self.peak_lr * k as f64 / w.max(1) as f64;
        }
        let progress = (k - w) as f64 / (total.saturating_sub(w)).max(1) as f64;
        let f = match self.decay {
            Decay::Linear => (1.0 - progress).max(0.0),
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()),
            Decay::Constant => 1.0,
        };
        self.peak_lr * f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let s = Schedule {
            peak_lr: 1.0,
            warmup_steps: 2,
            total_steps: 6,
            decay: Decay::Linear,
        };
        let lrs: Vec<f64> = (0..6).map(|k| s.lr(k)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        let c = Schedule {
            decay: Decay::Cosine,
            ..s.clone()
        };
        assert!((c.lr(2) - 1.0).abs() < 1e-12);
        assert!((c.lr(4) - 0.5).abs() < 1e-12);
        assert!(c.lr(5) < c.lr(4));
        let k = Schedule {
            decay: Decay::Constant,
            warmup_steps: 0,
            ..s
        };
        assert_eq!(k.lr(0), 1.0);
        assert_eq!(k.lr(5), 1.0);
    }
}
