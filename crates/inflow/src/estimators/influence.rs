//! Influence functions (Koh & Liang 2017) with a choice of inverse-Hessian approximation:
//! I(z, q) = g_qᵀ (H + λI)⁻¹ g_z, computed as a dot product with the preconditioned query
//! q' = (H + λI)⁻¹ g_q (see [`crate::curvature`]).

use super::{check_query_shape, Estimator};
use crate::curvature::fisher::Fisher;
use crate::curvature::Preconditioner;
use crate::Result;

/// Influence with a preconditioner (identity, kfac, ekfac, datainf, lissa, exact).
pub struct Influence<'a> {
    pre: Box<dyn Preconditioner + 'a>,
    name: String,
    convention: String,
}

impl<'a> Influence<'a> {
    /// Influence with H the empirical Fisher of the stored gradients.
    pub fn new(pre: Box<dyn Preconditioner + 'a>) -> Self {
        Self::with_fisher(pre, Fisher::Empirical)
    }

    /// Influence whose preconditioner approximates `fisher` (see [`crate::curvature::fisher`]).
    pub fn with_fisher(pre: Box<dyn Preconditioner + 'a>, fisher: Fisher) -> Self {
        let name = format!("influence-{}", pre.name());
        let h = match fisher {
            Fisher::Empirical => "the empirical Fisher of the stored gradient features".to_string(),
            Fisher::True { draws } => format!(
                "the true Fisher (Gauss-Newton) of the stored features, from {draws} sampled-label draw(s)"
            ),
        };
        let convention = format!("score = g_q^T (H + lambda I)^-1 g_z (influence function, helpfulness convention): positive means up-weighting the training sample lowers the query loss; H = {h}, approximated by the named preconditioner");
        Self {
            pre,
            name,
            convention,
        }
    }
}

impl Estimator for Influence<'_> {
    fn name(&self) -> &str {
        &self.name
    }

    fn sign_convention(&self) -> &str {
        &self.convention
    }

    fn prepare_queries(&self, mut queries: Vec<f32>, dim: usize) -> Result<Vec<f32>> {
        check_query_shape(&queries, dim)?;
        self.pre.apply(&mut queries, dim)?;
        Ok(queries)
    }

    fn train_scale(&self, _norm: f32) -> f32 {
        1.0
    }

    fn report(&self) -> Option<serde_json::Value> {
        self.pre.report()
    }
}
