//! The library's error type: every variant names the file, line or tensor at fault.

use std::path::PathBuf;

/// Errors raised by the inflow library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Malformed input data: file, 1-based line (or row) and what was expected.
    #[error("{path}:{line}: {msg}")]
    BadInput {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A model file that cannot be used: file and the tensor or key at fault.
    #[error("model {path}: {msg}")]
    Model { path: PathBuf, msg: String },
    /// A store that does not match what the command expects.
    #[error("store {path}: {msg}")]
    Store { path: PathBuf, msg: String },
    /// A tensor operation failed.
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
    /// A Parquet or Arrow failure on a named file.
    #[error("{path}: parquet: {msg}")]
    Parquet { path: PathBuf, msg: String },
    /// Anything else, with a message that says what was expected.
    #[error("{0}")]
    Msg(String),
}

/// Result alias for the inflow library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
