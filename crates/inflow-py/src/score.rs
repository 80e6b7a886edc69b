//! `Store.score`: queries against a store with any method of the registry (`inflow score`);
//! the library writes the Parquet file (and the dense matrix), Python reads it back.

use std::path::PathBuf;

use inflow::data::Format;
use inflow::pipeline::score::{Aggregate, ScoreOptions};
use pyo3::prelude::*;
use serde_json::json;

use crate::error::to_py;
use crate::reporter::PyReporter;

/// Scores `queries` (a data file or a store of query features) against `store` with
/// `method`; returns {out, full, report_path, method, sign_convention, query_ids, per_train,
/// report}. The defaults are `inflow score`'s (out: STORE/scores-METHOD.parquet).
#[pyfunction]
#[pyo3(signature = (
    store, queries, *, method = "cosine", top_k = 10, format = "auto", limit = None,
    preconditioner = "ekfac", damping = 0.1, lissa_iters = 300, lissa_tol = 1e-2,
    lissa_batch = 64, aggregate = None, rerank = None, out = None, full = None, force = false,
    model = None, threads = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn score<'py>(
    py: Python<'py>,
    store: PathBuf,
    queries: PathBuf,
    method: &str,
    top_k: usize,
    format: &str,
    limit: Option<usize>,
    preconditioner: &str,
    damping: f64,
    lissa_iters: usize,
    lissa_tol: f64,
    lissa_batch: usize,
    aggregate: Option<&str>,
    rerank: Option<usize>,
    out: Option<PathBuf>,
    full: Option<PathBuf>,
    force: bool,
    model: Option<PathBuf>,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let o = ScoreOptions {
        store,
        queries,
        format: format.parse::<Format>().map_err(to_py)?,
        limit,
        method: method.to_string(),
        options: inflow::methods::Options {
            preconditioner: preconditioner.to_string(),
            curvature: inflow::curvature::Options {
                damping,
                lissa_iters,
                lissa_batch,
                lissa_tol,
                seed: 0,
            },
            rerank,
            ..Default::default()
        },
        top_k,
        out,
        force,
        full,
        model,
        aggregate: aggregate
            .map(str::parse::<Aggregate>)
            .transpose()
            .map_err(to_py)?,
        threads: crate::threads::workers(threads)?,
    };
    let reporter = PyReporter::new(progress);
    let so = reporter.run(py, || inflow::pipeline::score::score(&o, &reporter))?;
    let report_path = so
        .report
        .as_ref()
        .map(|_| inflow::pipeline::score::report_path(&so.out));
    crate::json::to_py(
        py,
        &json!({
            "out": so.out,
            "full": so.full,
            "report_path": report_path,
            "method": so.method,
            "sign_convention": so.sign_convention,
            "query_ids": so.query_ids,
            "per_train": so.per_train.is_some(),
            "report": so.report,
        }),
    )
}

/// Every scoring method of the registry: [{name, needs, about}], in the registry's order.
#[pyfunction]
pub fn methods(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let mut list = Vec::new();
    for name in inflow::methods::names() {
        let m = inflow::methods::by_name(&name).map_err(to_py)?;
        let needs: Vec<&str> = m.needs().iter().map(|n| n.name()).collect();
        list.push(json!({"name": name, "needs": needs, "about": m.about()}));
    }
    crate::json::to_py(py, &serde_json::Value::Array(list))
}
