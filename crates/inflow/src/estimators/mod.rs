//! Scoring methods (METHODS.md §2). Each method is one file implementing [`Estimator`];
//! adding one means adding its file and one line in [`REGISTRY`].

mod cosine;
mod dot;
pub mod influence;
mod repsim;

pub use cosine::Cosine;
pub use dot::Dot;
pub use repsim::RepSim;

use crate::{Error, Result};

/// A scorer of the form s(q, z) = (prepare(q) · φ(z)) · train_scale(‖φ(z)‖).
///
/// The form lets scoring stream over the store as one matrix product: the query side is
/// transformed once, the training side only rescaled by its stored norm.
pub trait Estimator: Send + Sync {
    /// The method name, as given to [`by_name`] and recorded in outputs.
    fn name(&self) -> &str;
    /// One sentence stating the sign convention and what the score means, stored in every output.
    fn sign_convention(&self) -> &str;
    /// Transform the query features once (nq × dim row-major): identity for dot, unit-normalize
    /// for cosine; later methods precondition here (q' = H⁻¹ q).
    fn prepare_queries(&self, queries: Vec<f32>, dim: usize) -> Result<Vec<f32>>;
    /// Scale applied to each training row's dot product, given its stored L2 norm
    /// (cosine: 1/‖z‖, 0 for a zero vector).
    fn train_scale(&self, norm: f32) -> f32;
    /// Which feature set of a store the method scores: `gradients` (the store itself) or the
    /// name of a representation sub-store written beside it by `index`.
    fn features(&self) -> &str {
        "gradients"
    }
    /// Diagnostics of the last query preparation (e.g. LiSSA convergence), if any.
    fn report(&self) -> Option<serde_json::Value> {
        None
    }
}

/// Builds one estimator.
type Constructor = fn() -> Box<dyn Estimator>;

/// Known methods: name and constructor.
const REGISTRY: &[(&str, Constructor)] = &[
    ("dot", || Box::new(Dot)),
    ("cosine", || Box::new(Cosine)),
    ("repsim", || Box::new(RepSim::Last)),
    ("repsim-mean", || Box::new(RepSim::Mean)),
];

/// The estimator called `name`; an unknown name gives an error listing the known ones.
pub fn by_name(name: &str) -> Result<Box<dyn Estimator>> {
    REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, make)| make())
        .ok_or_else(|| {
            Error::Msg(format!(
                "unknown method '{name}'; known methods: {}",
                names().join(", ")
            ))
        })
}

/// Names of all known methods, in registry order.
pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|(n, _)| *n).collect()
}

/// Checks that `queries` is a whole number of `dim`-long rows (shared by the estimators).
pub(crate) fn check_query_shape(queries: &[f32], dim: usize) -> Result<()> {
    if dim == 0 || !queries.len().is_multiple_of(dim) {
        return Err(Error::Msg(format!(
            "query features: {} values is not a whole number of rows of dim {dim}",
            queries.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_finds_methods_and_lists_them_on_error() {
        for n in names() {
            let e = by_name(n).unwrap();
            assert_eq!(e.name(), n);
            assert!(!e.sign_convention().is_empty());
        }
        let msg = by_name("tracin2").err().unwrap().to_string();
        assert!(
            msg.contains("tracin2") && msg.contains("dot, cosine"),
            "{msg}"
        );
    }
}
