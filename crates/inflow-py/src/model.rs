//! `inflow.Model`: a loaded causal LM (GGUF file or Hugging Face folder) that `index`
//! featurizes the training set with; and the tiny random model the tests use.

use std::path::PathBuf;

use inflow::model::LoadedModel;
use pyo3::prelude::*;

use crate::reporter::PyReporter;

/// A Llama-family causal LM loaded once (f32 weights; GGUF tensors dequantized).
#[pyclass(module = "inflow._native", frozen)]
pub struct Model {
    pub inner: LoadedModel,
}

#[pymethods]
impl Model {
    /// Loads `path` (a `.gguf` file or a Hugging Face folder), with the GIL released.
    #[new]
    #[pyo3(signature = (path, progress = None))]
    fn new(py: Python<'_>, path: PathBuf, progress: Option<Py<PyAny>>) -> PyResult<Self> {
        crate::threads::workers(None)?;
        let reporter = PyReporter::new(progress);
        let inner = reporter.run(py, || inflow::pipeline::score::load_model(&path, &reporter))?;
        Ok(Self { inner })
    }

    /// The file or folder the model was loaded from.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.source.path.clone()
    }

    /// `gguf` or `hf`.
    #[getter]
    fn kind(&self) -> String {
        self.inner.source.kind.clone()
    }

    /// sha256 of the weights (what a store records as `spec.model.sha256`).
    #[getter]
    fn sha256(&self) -> String {
        self.inner.source.sha256.clone()
    }

    /// Number of parameters.
    #[getter]
    fn n_params(&self) -> usize {
        self.inner.llama.n_params()
    }

    fn __repr__(&self) -> String {
        format!(
            "Model({:?}, {} parameters, {})",
            self.inner.source.path.display().to_string(),
            self.inner.llama.n_params(),
            self.inner.source.kind
        )
    }
}

/// Writes a tiny random Llama (byte tokenizer, tied embeddings) as a Hugging Face folder at
/// `path`: the library's test model, for fast tests and examples without a download.
#[pyfunction]
#[pyo3(signature = (path, hidden = 16, layers = 2, seed = 0))]
pub fn write_tiny_model(
    py: Python<'_>,
    path: PathBuf,
    hidden: usize,
    layers: usize,
    seed: u64,
) -> PyResult<()> {
    PyReporter::new(None).run(py, || {
        inflow::model::tiny::write_random(&path, hidden, layers, seed)
    })
}
