//! inflow: which training data a causal language model learned a behaviour from,
//! and which data is worth training on.
//!
//! The crate mirrors the pipeline of DESIGN.md:
//! samples → tokens → model pass → features → store → estimator → scores.

pub mod atomic_write;
pub mod curvature;
pub mod data;
pub mod encoder;
pub mod error;
pub mod estimators;
pub mod eval;
pub mod features;
pub mod file_pieces;
pub mod index;
pub mod methods;
pub mod model;
pub mod output_guard;
pub mod pipeline;
pub mod probe;
pub mod random;
pub mod rank;
pub mod scores;
pub mod select;
pub mod store;
pub mod train;

pub use error::{Error, Result};

/// The crate version, recorded in every store manifest.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
