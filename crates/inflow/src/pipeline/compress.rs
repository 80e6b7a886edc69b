//! `store compress`: a compact copy of a store (seeded projection, then int8, bits or f16),
//! streamed and resumable ([`crate::store::compress`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::report::Reporter;
use crate::store::compress::{compress as compress_store, CompressOptions};
use crate::store::{Dtype, Store};
use crate::Result;

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressSummary {
    pub out: PathBuf,
    pub parent: PathBuf,
    pub rows: usize,
    pub parent_dim: usize,
    pub dim: usize,
    pub parent_dtype: Dtype,
    pub dtype: Dtype,
    /// Feature bytes per row on disk, the parent's and the copy's (int8 counts its scale).
    pub parent_bytes_per_row: usize,
    pub bytes_per_row: usize,
    pub seconds: f64,
}

/// Compresses the store in `parent` into `out` (resuming a run stopped there).
pub fn compress(
    parent: &Path,
    out: &Path,
    o: &CompressOptions,
    reporter: &dyn Reporter,
) -> Result<CompressSummary> {
    let t = Instant::now();
    let p = Store::open(parent)?;
    reporter.start("compress", p.n_samples());
    let r = compress_store(&p, out, o, &mut |d, n| {
        reporter.update("compress", d, n, "")
    });
    reporter.finish("compress");
    let c = r?;
    Ok(CompressSummary {
        out: out.to_path_buf(),
        parent: parent.to_path_buf(),
        rows: c.n_samples(),
        parent_dim: p.dim(),
        dim: c.dim(),
        parent_dtype: p.spec().dtype,
        dtype: c.spec().dtype,
        parent_bytes_per_row: p.spec().dtype.stored_row_bytes(p.dim()),
        bytes_per_row: c.spec().dtype.stored_row_bytes(c.dim()),
        seconds: t.elapsed().as_secs_f64(),
    })
}
