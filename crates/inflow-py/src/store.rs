//! Reading a store: its manifest as the library checks it (a store made by `index`, whole or
//! a part), for Python to find its shard files and samples.

use std::path::PathBuf;

use inflow::store::Store;
use pyo3::prelude::*;
use serde_json::json;

use crate::reporter::PyReporter;

/// Opens the store at `path`; returns {dir, manifest, n_samples, dim, complete, whole}. An
/// unreadable or foreign folder raises `inflow.Error` naming it.
#[pyfunction]
pub fn open_store(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let v = PyReporter::new(None).run(py, || {
        let s = Store::open(&path)?;
        Ok(json!({
            "dir": s.dir(),
            "manifest": s.manifest(),
            "n_samples": s.n_samples(),
            "dim": s.dim(),
            "complete": s.is_complete(),
            "whole": s.part().is_none(),
        }))
    })?;
    crate::json::to_py(py, &v)
}

/// The checkpoint stores of `path` (made by `index` with `checkpoints`), ordered by training
/// step: `path` itself when it is one, else its subfolders that are. A folder with none raises
/// `inflow.Error` naming it.
#[pyfunction]
pub fn checkpoint_stores(py: Python<'_>, path: PathBuf) -> PyResult<Vec<PathBuf>> {
    // The library's own lookup, the one `score` uses for tracin and less, so Python opens
    // exactly the folders that will be scored.
    PyReporter::new(None).run(py, || inflow::scores::checkpoints::find(&path))
}
