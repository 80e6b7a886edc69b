//! Cosine similarity: s = φ(q)·φ(z) / (‖φ(q)‖ ‖φ(z)‖) (METHODS.md §2).
//! Removes the bias toward samples with large gradients (often short ones).

use super::{check_query_shape, Estimator};
use crate::Result;

/// Cosine of the angle between query and training features; zero vectors score 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cosine;

impl Estimator for Cosine {
    fn name(&self) -> &str {
        "cosine"
    }

    fn sign_convention(&self) -> &str {
        "score = cos(φ(q), φ(z)) in [-1, 1]; for loss-gradient features a positive score means a \
         gradient step on the training sample lowers the query loss to first order (helpful), \
         negative raises it"
    }

    fn prepare_queries(&self, mut queries: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
        check_query_shape(&queries, dim)?;
        for q in queries.chunks_exact_mut(dim) {
            let norm = q
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt();
            // A zero query has no direction: leave it zero so all its scores are 0.
            if norm > 0.0 {
                let inv = (1.0 / norm) as f32;
                q.iter_mut().for_each(|x| *x *= inv);
            }
        }
        Ok(queries)
    }

    fn train_scale(&self, norm: f32) -> f32 {
        if norm > 0.0 {
            1.0 / norm
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_unit_rows_and_zero_stays_zero() {
        let q = Cosine.prepare_queries(vec![3.0, 4.0, 0.0, 0.0], 2).unwrap();
        assert_eq!(q, vec![0.6, 0.8, 0.0, 0.0]);
        assert_eq!(
            (Cosine.train_scale(4.0), Cosine.train_scale(0.0)),
            (0.25, 0.0)
        );
        assert!(Cosine.prepare_queries(vec![1.0; 3], 2).is_err());
    }
}
