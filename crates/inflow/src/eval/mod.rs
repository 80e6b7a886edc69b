//! How we know a score is right (METHODS.md §5): rank agreement between methods, and plots
//! a person can look at.

pub mod compare;
pub mod lds;
pub mod planted;
pub mod plot;
/// Rank statistics live below the layers that use them (the encoder's agreement too).
pub use crate::rank;
pub mod retrain;
pub mod retrieval;
pub mod selection;
