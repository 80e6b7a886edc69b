//! The library's results (serde values) as Python objects, through Python's own `json`
//! module, so dicts, lists, numbers and None come out as `json.loads` gives them.

use pyo3::prelude::*;

/// `value` as a Python object (dict, list, str, int, float, bool or None).
pub fn to_py<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = value.to_string();
    py.import("json")?.call_method1("loads", (text,))
}

/// Any serializable result as a Python object.
pub fn from_serialize<'py>(
    py: Python<'py>,
    value: &impl serde::Serialize,
) -> PyResult<Bound<'py, PyAny>> {
    let v = serde_json::to_value(value)
        .map_err(|e| crate::error::to_py(inflow::Error::Msg(e.to_string())))?;
    to_py(py, &v)
}
