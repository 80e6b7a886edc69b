//! `inflow.select`: a subset of the training data by score, G-DIG or an ICP threshold
//! (`inflow select`), written in the input's format with a manifest beside it.

use std::path::PathBuf;

use inflow::pipeline::select::SelectOptions;
use pyo3::prelude::*;

use crate::error::to_py;
use crate::reporter::PyReporter;

/// Selects from `data` into `out`; returns {candidates, details, manifest, out, selected}.
/// The defaults are `inflow select`'s.
#[pyfunction]
#[pyo3(signature = (
    data, out, *, force = false, method = "top", format = "auto", scores = None, size = None,
    threshold = 0.9, store = None, queries = None, seed_set = None, seed_method = None,
    preconditioner = "ekfac", clusters = 32, quality_threshold = 0.0, quality_top = None,
    raw_features = false, seed = 0, model = None, threads = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn select<'py>(
    py: Python<'py>,
    data: PathBuf,
    out: PathBuf,
    force: bool,
    method: &str,
    format: &str,
    scores: Option<PathBuf>,
    size: Option<String>,
    threshold: f32,
    store: Option<PathBuf>,
    queries: Option<PathBuf>,
    seed_set: Option<PathBuf>,
    seed_method: Option<String>,
    preconditioner: &str,
    clusters: usize,
    quality_threshold: f32,
    quality_top: Option<f64>,
    raw_features: bool,
    seed: u64,
    model: Option<PathBuf>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = SelectOptions {
        method: method.to_string(),
        data,
        format: format.parse().map_err(to_py)?,
        out,
        force,
        scores,
        size,
        threshold,
        store,
        queries,
        seed_set,
        seed_method,
        preconditioner: preconditioner.to_string(),
        clusters,
        quality_threshold,
        quality_top,
        raw_features,
        seed,
        model,
        threads: crate::threads::workers(threads)?,
    };
    let reporter = PyReporter::new(progress);
    let r = reporter.run(py, || inflow::pipeline::select::run(&o, &reporter))?;
    crate::json::from_serialize(py, &r)
}
