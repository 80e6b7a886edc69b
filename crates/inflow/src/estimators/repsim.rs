//! Representation similarity (RepSim; Li et al. 2024, "Do Influence Functions Work on Large
//! Language Models?"): cosine between the final-layer hidden states of q and z, forward only.
//! The baseline to beat: it out-retrieved every influence function on harmful-data and
//! backdoor attribution there.

use super::{Cosine, Estimator};
use crate::Result;

/// Cosine over final hidden states pooled at the last prompt token (`Last`) or averaged over
/// the response tokens (`Mean`).
#[derive(Debug, Clone, Copy)]
pub enum RepSim {
    Last,
    Mean,
}

impl Estimator for RepSim {
    fn name(&self) -> &str {
        match self {
            RepSim::Last => "repsim",
            RepSim::Mean => "repsim-mean",
        }
    }

    fn sign_convention(&self) -> &str {
        match self {
            RepSim::Last => "score = cos(h(q), h(z)) in [-1, 1], h = final-layer hidden state at the last prompt token; higher means more similar representations",
            RepSim::Mean => "score = cos(h(q), h(z)) in [-1, 1], h = final-layer hidden state averaged over response tokens; higher means more similar representations",
        }
    }

    fn features(&self) -> &str {
        match self {
            RepSim::Last => crate::index::REPSIM_LAST,
            RepSim::Mean => crate::index::REPSIM_MEAN,
        }
    }

    fn prepare_queries(&self, queries: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
        Cosine.prepare_queries(queries, dim)
    }

    fn train_scale(&self, norm: f32) -> f32 {
        Cosine.train_scale(norm)
    }
}
