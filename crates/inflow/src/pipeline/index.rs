//! `index` with progress: one featurization pass over a training set into a store, at the
//! base model or at a fine-tuning checkpoint.

use std::path::Path;

use super::report::{watch, Reporter};
use crate::curvature::kfac::run_index;
use crate::curvature::kfac_stats::KfacStats;
use crate::index::{IndexOptions, IndexSummary, Progress};
use crate::model::LoadedModel;
use crate::train::features::{self, CheckpointInfo, FeatureSource};
use crate::{Error, Result};

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

/// Loads the model at `model_path`, attaches `checkpoint` (a LoRA adapter or checkpoint of
/// [`crate::train::train`]) and runs (or resumes) the index pass over `opts.data` with its
/// features (`source`) into `out`, reporting stage `stage`.
pub fn at_checkpoint(
    model_path: &Path,
    checkpoint: &Path,
    opts: &IndexOptions,
    source: &FeatureSource,
    out: &Path,
    stage: &str,
    reporter: &dyn Reporter,
) -> Result<(CheckpointInfo, IndexSummary)> {
    let mut m = super::score::load_model(model_path, reporter)?;
    let ck = features::attach(&mut m, checkpoint).map_err(|e| {
        Error::Msg(format!(
            "loading the checkpoint {}: {e}",
            checkpoint.display()
        ))
    })?;
    let progress = Progress::default();
    let summary = watch(reporter, stage, &progress, || {
        features::run_checkpoint_index::<Option<KfacStats>>(
            &m,
            opts,
            Some(&ck),
            source,
            out,
            &progress,
            &mut |_, _| {},
        )
    })?;
    Ok((ck, summary))
}
