//! Dot product / single-checkpoint TracIn: s = φ(q)·φ(z) (METHODS.md §2; Pruthi et al. 2020).

use super::{check_query_shape, Estimator};
use crate::Result;

/// Raw inner product of query and training features.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dot;

impl Estimator for Dot {
    fn name(&self) -> &str {
        "dot"
    }

    fn sign_convention(&self) -> &str {
        "score = φ(q)·φ(z); for loss-gradient features a positive score means a gradient step \
         on the training sample lowers the query loss to first order (helpful), negative raises it"
    }

    fn prepare_queries(&self, queries: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
        check_query_shape(&queries, dim)?;
        Ok(queries)
    }

    fn train_scale(&self, _norm: f32) -> f32 {
        1.0
    }
}
