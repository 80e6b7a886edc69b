//! `inflow._native`: the inflow library as a Python extension module. Each function calls a
//! library pipeline (never the `inflow` binary) with the GIL released, reports progress to a
//! Python object and raises the library's errors as `inflow.Error`. The pure-Python package
//! `python/inflow` wraps it in the notebook API (DataFrames, numpy memmaps, in-memory data).

mod error;
mod fit;
mod index;
mod json;
mod model;
mod reporter;
mod score;
mod select;
mod store;
mod threads;

use pyo3::prelude::*;

/// The module: its classes, functions and the `Error` exception.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("Error", m.py().get_type::<error::Error>())?;
    m.add("__version__", inflow::version())?;
    m.add_class::<model::Model>()?;
    m.add_function(wrap_pyfunction!(index::index, m)?)?;
    m.add_function(wrap_pyfunction!(index::index_checkpoints, m)?)?;
    m.add_function(wrap_pyfunction!(fit::fit, m)?)?;
    m.add_function(wrap_pyfunction!(score::score, m)?)?;
    m.add_function(wrap_pyfunction!(score::methods, m)?)?;
    m.add_function(wrap_pyfunction!(select::select, m)?)?;
    m.add_function(wrap_pyfunction!(store::open_store, m)?)?;
    m.add_function(wrap_pyfunction!(store::checkpoint_stores, m)?)?;
    m.add_function(wrap_pyfunction!(model::write_tiny_model, m)?)?;
    m.add_function(wrap_pyfunction!(threads::pool_threads, m)?)?;
    Ok(())
}
