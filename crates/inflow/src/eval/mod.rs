//! How we know a score is right (METHODS.md §5): rank agreement between methods, and plots
//! a person can look at.

pub mod compare;
pub mod lds;
pub mod planted;
pub mod plot;
pub mod rank;
pub mod retrain;
pub mod retrieval;
pub mod selection;
