//! `index` with progress: one featurization pass over a training set into a store.

use std::path::Path;

use super::report::{watch, Reporter};
use crate::curvature::kfac::run_index;
use crate::index::{IndexOptions, IndexSummary, Progress};
use crate::model::LoadedModel;
use crate::Result;

/// Runs (or resumes) [`run_index`] (the index pass with K-FAC token sums) into `out`,
/// reporting stage `stage`.
pub fn index(
    model: &LoadedModel,
    opts: &IndexOptions,
    out: &Path,
    stage: &str,
    reporter: &dyn Reporter,
) -> Result<IndexSummary> {
    let progress = Progress::default();
    watch(reporter, stage, &progress, || {
        run_index(model, opts, out, &progress, &mut |_, _| {})
    })
}
