//! `inflow.index`: per-sample gradient features of a training file into a store, the same
//! store (byte for byte) as `inflow index` writes with the same settings; resumable.

use std::path::PathBuf;

use inflow::data::{Format, ReadOptions};
use inflow::features::Projection;
use inflow::index::{FeatureOptions, IndexOptions};
use inflow::pipeline::index::CheckpointsOptions;
use inflow::store::Dtype;
use pyo3::prelude::*;

use crate::error::{argument, to_py};
use crate::model::Model;
use crate::reporter::PyReporter;

/// The feature options of a projection name, as `inflow index --projection` reads them.
fn projection(name: &str, rank: usize, dim: usize) -> PyResult<Projection> {
    if rank == 0 || dim == 0 {
        return Err(argument("rank and dim must be positive"));
    }
    match name {
        "logra" => Ok(Projection::Logra {
            rank_in: rank,
            rank_out: rank,
        }),
        "dense" => Ok(Projection::Dense { dim }),
        "full" => Ok(Projection::Full),
        p => Err(argument(format!(
            "unknown projection `{p}`; expected logra, dense or full"
        ))),
    }
}

/// The library's index options from `inflow index`'s settings (shared by [`index`] and
/// [`index_checkpoints`], so both build exactly what the CLI builds).
#[allow(clippy::too_many_arguments)]
fn index_options(
    data: PathBuf,
    format: &str,
    limit: Option<usize>,
    skip_bad: bool,
    projection: &str,
    rank: usize,
    dim: usize,
    seed: u64,
    modules: &str,
    template: &str,
    max_tokens: usize,
    truncate: &str,
    dtype: &str,
    shard_size: usize,
    batch_size: usize,
    threads: Option<usize>,
) -> PyResult<IndexOptions> {
    let threads = crate::threads::workers(threads)?;
    if shard_size == 0 || batch_size == 0 {
        return Err(argument("shard_size and batch_size must be positive"));
    }
    Ok(IndexOptions {
        data,
        read: ReadOptions {
            format: format.parse::<Format>().map_err(to_py)?,
            skip_bad,
            limit,
        },
        features: FeatureOptions {
            projection: self::projection(projection, rank, dim)?,
            seed,
            modules: modules.to_string(),
            template: template.parse().map_err(to_py)?,
            max_tokens,
            truncate: truncate.parse().map_err(to_py)?,
            labels: Default::default(),
        },
        dtype: dtype.parse::<Dtype>().map_err(to_py)?,
        shard_size,
        batch_size,
        threads,
        part: None,
    })
}

/// Indexes (or resumes) `data` into the store `out` with `model`; returns the summary
/// (n_samples, n_written, shards_written, shards_reused, dim, tokens, cuts, …). The
/// defaults are `inflow index`'s.
#[pyfunction]
#[pyo3(signature = (
    model, data, out, *, format = "auto", limit = None, skip_bad = false,
    projection = "logra", rank = 16, dim = 8192, seed = 0, modules = "all",
    template = "auto", max_tokens = 512, truncate = "middle",
    dtype = "f16", shard_size = 64, batch_size = 1, threads = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn index<'py>(
    py: Python<'py>,
    model: &Bound<'py, Model>,
    data: PathBuf,
    out: PathBuf,
    format: &str,
    limit: Option<usize>,
    skip_bad: bool,
    projection: &str,
    rank: usize,
    dim: usize,
    seed: u64,
    modules: &str,
    template: &str,
    max_tokens: usize,
    truncate: &str,
    dtype: &str,
    shard_size: usize,
    batch_size: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let opts = index_options(
        data, format, limit, skip_bad, projection, rank, dim, seed, modules, template, max_tokens,
        truncate, dtype, shard_size, batch_size, threads,
    )?;
    let model = &model.get().inner;
    let reporter = PyReporter::new(progress);
    let summary = reporter.run(py, || {
        inflow::pipeline::index::index(model, &opts, &out, "index", &reporter)
    })?;
    crate::json::from_serialize(py, &summary)
}

/// Indexes (or resumes) `data` at training checkpoints, as `inflow index --adapter CK` or
/// `--checkpoints CK1 CK2 …` does: one store at `out` for one checkpoint, else one store per
/// checkpoint at `out/{checkpoint folder name}` (the folder `tracin` and `less` score from).
/// `lora_grads`: features of the LoRA parameters instead of the base Linears; `adam` (with
/// `lora_grads`): LESS's Adam-update features. Returns one {checkpoint, out, seconds, summary}
/// per checkpoint. The model is loaded from `model` (a path) at each checkpoint.
#[pyfunction]
#[pyo3(signature = (
    model, data, out, *, adapter = None, checkpoints = Vec::new(), lora_grads = false,
    adam = false, format = "auto", limit = None, skip_bad = false,
    projection = "logra", rank = 16, dim = 8192, seed = 0, modules = "all",
    template = "auto", max_tokens = 512, truncate = "middle",
    dtype = "f16", shard_size = 64, batch_size = 1, threads = None, progress = None
))]
#[allow(clippy::too_many_arguments)]
pub fn index_checkpoints<'py>(
    py: Python<'py>,
    model: PathBuf,
    data: PathBuf,
    out: PathBuf,
    adapter: Option<PathBuf>,
    checkpoints: Vec<PathBuf>,
    lora_grads: bool,
    adam: bool,
    format: &str,
    limit: Option<usize>,
    skip_bad: bool,
    projection: &str,
    rank: usize,
    dim: usize,
    seed: u64,
    modules: &str,
    template: &str,
    max_tokens: usize,
    truncate: &str,
    dtype: &str,
    shard_size: usize,
    batch_size: usize,
    threads: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    // Checked before the options are built, so a bad combination is named as the CLI names it.
    inflow::pipeline::index::check_checkpoints(adapter.as_deref(), &checkpoints, lora_grads, adam)
        .map_err(to_py)?;
    let o = CheckpointsOptions {
        index: index_options(
            data, format, limit, skip_bad, projection, rank, dim, seed, modules, template,
            max_tokens, truncate, dtype, shard_size, batch_size, threads,
        )?,
        model,
        adapter,
        checkpoints,
        lora_grads,
        adam,
        out,
    };
    let reporter = PyReporter::new(progress);
    let results = reporter.run(py, || inflow::pipeline::index::checkpoints(&o, &reporter))?;
    crate::json::from_serialize(py, &results)
}
