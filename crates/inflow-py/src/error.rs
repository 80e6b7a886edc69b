//! The library's errors as the Python exception `inflow.Error` (a `ValueError`): the message
//! is the library's own one-line text, and the file and line it names are attributes too.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pyo3::create_exception!(
    inflow,
    Error,
    PyValueError,
    "An error of the inflow library. `str(e)` is the library's message, which names the file, \
     line or field at fault; `e.path` is that file (or None), `e.line` the 1-based line or row of \
     malformed input (or None), `e.kind` one of io, bad_input, model, store, tensor, parquet, other."
);

/// `e` as an `inflow.Error` with `path`, `line` and `kind` set.
pub fn to_py(e: inflow::Error) -> PyErr {
    use inflow::Error as E;
    let (kind, path, line) = match &e {
        E::Io { path, .. } => ("io", Some(path.clone()), None),
        E::BadInput { path, line, .. } => ("bad_input", Some(path.clone()), Some(*line)),
        E::Model { path, .. } => ("model", Some(path.clone()), None),
        E::Store { path, .. } => ("store", Some(path.clone()), None),
        E::Candle(_) => ("tensor", None, None),
        E::Parquet { path, .. } => ("parquet", Some(path.clone()), None),
        E::NotLearned { .. } => ("not_learned", None, None),
        E::Msg(_) => ("other", None, None),
    };
    let err = Error::new_err(e.to_string());
    Python::attach(|py| {
        let v = err.value(py);
        // Attributes on a fresh exception instance cannot fail short of memory exhaustion;
        // the message already says everything they do.
        let _ = v.setattr("kind", kind);
        let _ = v.setattr("path", path);
        let _ = v.setattr("line", line);
    });
    err
}

/// An `inflow.Error` for a wrong argument found before the library is called.
pub fn argument(msg: impl Into<String>) -> PyErr {
    to_py(inflow::Error::Msg(msg.into()))
}
