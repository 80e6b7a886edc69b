//! The library's [`Reporter`] for Python callers: stages, counts and notes go to a Python
//! object (`inflow.progress`: a tqdm bar, or plain lines), and Ctrl-C stops the work.
//!
//! Pipelines run with the GIL released; the reporter takes it back for each call. `watch`
//! asks [`Reporter::stop_requested`] every 200 ms from the calling thread (Python's main
//! thread, the only one that runs signal handlers), so a Ctrl-C is seen within a tick: the
//! handler's KeyboardInterrupt is kept, the feature loops stop at the next micro-batch
//! (an index keeps its whole shards and resumes), and the kept exception is raised.

use std::sync::Mutex;

use inflow::pipeline::Reporter;
use pyo3::prelude::*;

/// Forwards progress to `sink` (None: reports nothing) and keeps the first Python exception
/// raised meanwhile (a Ctrl-C, or an error of the sink itself).
pub struct PyReporter {
    sink: Option<Py<PyAny>>,
    raised: Mutex<Option<PyErr>>,
}

impl PyReporter {
    /// A reporter calling `sink.start(stage, total)`, `sink.update(stage, done, total, note)`,
    /// `sink.finish(stage)` and `sink.note(line)`.
    pub fn new(sink: Option<Py<PyAny>>) -> Self {
        Self {
            sink,
            raised: Mutex::new(None),
        }
    }

    /// Runs `work` (a library call) with the GIL released and returns its result, or the
    /// Python exception raised while it ran (KeyboardInterrupt first: the work stopped
    /// because of it), or the library's error as `inflow.Error`.
    pub fn run<T: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce() -> inflow::Result<T> + Send,
    ) -> PyResult<T> {
        let result = py.detach(work);
        if let Some(e) = self.take_raised() {
            return Err(e);
        }
        result.map_err(crate::error::to_py)
    }

    fn take_raised(&self) -> Option<PyErr> {
        match self.raised.lock() {
            Ok(mut r) => r.take(),
            Err(p) => p.into_inner().take(),
        }
    }

    fn keep(&self, e: PyErr) {
        if let Ok(mut r) = self.raised.lock() {
            r.get_or_insert(e);
        }
    }

    fn has_raised(&self) -> bool {
        self.raised.lock().map_or(true, |r| r.is_some())
    }

    /// Calls `sink.method(*args)` with the GIL, checking for signals first.
    fn call<A>(&self, method: &str, args: A)
    where
        A: for<'py> pyo3::call::PyCallArgs<'py>,
    {
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                self.keep(e);
            }
            if let Some(sink) = &self.sink {
                if let Err(e) = sink.bind(py).call_method1(method, args) {
                    self.keep(e);
                }
            }
        })
    }
}

impl Reporter for PyReporter {
    fn start(&self, stage: &str, total: usize) {
        self.call("start", (stage, total));
    }
    fn update(&self, stage: &str, done: usize, total: usize, note: &str) {
        self.call("update", (stage, done, total, note));
    }
    fn finish(&self, stage: &str) {
        self.call("finish", (stage,));
    }
    fn note(&self, line: &str) {
        self.call("note", (line,));
    }
    fn stop_requested(&self) -> bool {
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                self.keep(e);
            }
        });
        self.has_raised()
    }
}
