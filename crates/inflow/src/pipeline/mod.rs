//! The pipelines behind the verbs, callable from Rust (and later Python): each takes an
//! options struct and a [`Reporter`], writes its files, and returns what it produced. The
//! CLI parses arguments into these options, implements the reporter with progress bars, and
//! prints the results.

pub mod bench_features;
pub mod bench_score;
pub mod compress;
pub mod encoder;
pub mod fit;
pub mod generate;
pub mod index;
pub mod lds;
pub mod machine;
pub mod planted;
pub mod probe;
pub mod report;
pub mod score;
pub mod select;
pub mod selection;
pub mod store_model;
pub mod train;

pub use report::{watch, Reporter, Silent};
