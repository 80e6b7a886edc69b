//! Influence functions I(z, q) = g_qᵀ (H + λI)⁻¹ g_z (METHODS.md §2) with one of the
//! preconditioners of [`crate::curvature`]: `influence` takes it from the options, and each
//! preconditioner is also a method of its own name (`ekfac`, `datainf`, …).

use super::similarity::score_spec;
use super::{Context, Method, Need, Options, Scored};
use crate::scores::queries::MethodSpec;
use crate::store::Store;
use crate::Result;

/// Influence with a fixed preconditioner, or the one the options choose.
pub struct InfluenceMethod {
    fixed: Option<&'static str>,
}

impl InfluenceMethod {
    /// `influence`: the preconditioner comes from [`Options::preconditioner`].
    pub fn chosen() -> Self {
        Self { fixed: None }
    }
    /// The method named after its preconditioner.
    pub fn fixed(preconditioner: &'static str) -> Self {
        Self {
            fixed: Some(preconditioner),
        }
    }
    fn spec(&self, options: &Options) -> MethodSpec {
        MethodSpec {
            method: "influence".into(),
            preconditioner: self.fixed.unwrap_or(&options.preconditioner).to_string(),
            curvature: options.curvature.clone(),
            rerank: options.rerank,
            part: options.part,
        }
    }
}

impl Method for InfluenceMethod {
    fn name(&self) -> &str {
        self.fixed.unwrap_or("influence")
    }
    fn about(&self) -> &str {
        match self.fixed {
            None => "influence function with --preconditioner (identity, kfac, ekfac, datainf, lissa, exact)",
            Some("identity") => "influence without a preconditioner (= dot)",
            Some("kfac") => "influence with K-FAC (needs `inflow fit`)",
            Some("ekfac") => "influence with EK-FAC (needs `inflow fit`)",
            Some("datainf") => "influence with DataInf's closed-form layer inverse",
            Some("lissa") => "influence with the LiSSA Neumann recursion",
            _ => "influence with the exact damped Fisher inverse (small feature dims)",
        }
    }
    fn needs(&self) -> &[Need] {
        match self.fixed {
            Some("kfac" | "ekfac") => &[Need::Store, Need::Model, Need::Curvature],
            _ => &[Need::Store, Need::Model],
        }
    }
    fn score(&self, ctx: &Context) -> Result<Scored> {
        score_spec(&self.spec(ctx.options), ctx)
    }
    fn self_scores(&self, store: &Store, options: &Options) -> Result<Option<Vec<f32>>> {
        let est = crate::scores::queries::estimator(&self.spec(options), store)?;
        crate::scores::self_scores(store, est.as_ref()).map(Some)
    }
}
