//! `Store.fit`: K-FAC and EK-FAC curvature of a store on the empirical or the true Fisher
//! (`inflow fit`).

use std::path::PathBuf;

use inflow::pipeline::fit::FitOptions;
use pyo3::prelude::*;

use crate::error::to_py;
use crate::reporter::PyReporter;

/// Fits the curvature of `store`; returns {out, fisher, n_samples}. The defaults are
/// `inflow fit`'s.
#[pyfunction]
#[pyo3(signature = (
    store, *, fisher = "empirical", factors = "samples", draws = 1, model = None,
    batch_size = 1, threads = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn fit<'py>(
    py: Python<'py>,
    store: PathBuf,
    fisher: &str,
    factors: &str,
    draws: usize,
    model: Option<PathBuf>,
    batch_size: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = FitOptions {
        store,
        factors: factors.parse().map_err(to_py)?,
        fisher: fisher.parse().map_err(to_py)?,
        draws,
        model,
        batch_size,
        threads: crate::threads::workers(threads)?,
    };
    let reporter = PyReporter::new(progress);
    let fitted = reporter.run(py, || inflow::pipeline::fit::fit(&o, &reporter))?;
    crate::json::from_serialize(py, &fitted)
}
