//! `index` with progress: one featurization pass over a training set into a store, at the
//! base model or at a fine-tuning checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::report::{watch, Reporter};
use crate::curvature::kfac::run_index;
use crate::curvature::kfac_stats::KfacStats;
use crate::index::{IndexOptions, IndexSummary, Progress};
use crate::model::LoadedModel;
use crate::train::adamw::AdamWConfig;
use crate::train::features::{self, CheckpointInfo, FeatureSource, LoraGradient};
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

/// Which checkpoints `index` featurizes and with which features.
#[derive(Debug, Clone)]
pub struct CheckpointsOptions {
    pub model: PathBuf,
    /// One adapter or checkpoint (its store is `out` itself)…
    pub adapter: Option<PathBuf>,
    /// …or several (one store per checkpoint, `out/{checkpoint name}`).
    pub checkpoints: Vec<PathBuf>,
    /// Features of the LoRA parameters instead of the base Linears.
    pub lora_grads: bool,
    /// With `lora_grads`: LESS's Adam-update features from the optimizer moments.
    pub adam: bool,
    pub index: IndexOptions,
    pub out: PathBuf,
}

impl CheckpointsOptions {
    /// The checkpoint folders, or why the combination of settings cannot run.
    pub fn dirs(&self) -> Result<Vec<PathBuf>> {
        check_checkpoints(
            self.adapter.as_deref(),
            &self.checkpoints,
            self.lora_grads,
            self.adam,
        )
    }
}

/// The checkpoint folders of `--adapter` / `--checkpoints`, or why the combination of
/// settings cannot run (checked before anything is loaded).
pub fn check_checkpoints(
    adapter: Option<&Path>,
    checkpoints: &[PathBuf],
    lora_grads: bool,
    adam: bool,
) -> Result<Vec<PathBuf>> {
    let mut dirs = checkpoints.to_vec();
    if let Some(ad) = adapter {
        if !dirs.is_empty() {
            return Err(Error::Msg(
                "give either --adapter or --checkpoints, not both".into(),
            ));
        }
        dirs.push(ad.to_path_buf());
    }
    if dirs.is_empty() {
        return Err(Error::Msg(
            "--lora-grads and --adam need --adapter DIR or --checkpoints DIR…".into(),
        ));
    }
    if adam && !lora_grads {
        return Err(Error::Msg(
            "--adam (LESS's Adam-update features) needs --lora-grads".into(),
        ));
    }
    Ok(dirs)
}

/// One checkpoint's store. Fields in alphabetical order: the JSON the CLI prints.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointIndexed {
    pub checkpoint: CheckpointInfo,
    /// The store.
    pub out: PathBuf,
    pub seconds: f64,
    pub summary: IndexSummary,
    /// The checkpoint folder.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `index` at each checkpoint: one store per checkpoint (`out` itself for one,
/// `out/{checkpoint name}` for several), each by [`at_checkpoint`], reporting stage "index".
pub fn checkpoints(
    o: &CheckpointsOptions,
    reporter: &dyn Reporter,
) -> Result<Vec<CheckpointIndexed>> {
    let dirs = o.dirs()?;
    let source = match (o.lora_grads, o.adam) {
        (false, _) => FeatureSource::Base,
        (true, false) => FeatureSource::Lora(LoraGradient::Sgd),
        (true, true) => FeatureSource::Lora(LoraGradient::Adam(AdamWConfig::default())),
    };
    let mut results = Vec::new();
    for dir in &dirs {
        let out = if dirs.len() == 1 {
            o.out.clone()
        } else {
            let name = dir
                .file_name()
                .ok_or_else(|| Error::Msg(format!("{}: no folder name", dir.display())))?;
            o.out.join(name)
        };
        let t = Instant::now();
        let (checkpoint, summary) =
            at_checkpoint(&o.model, dir, &o.index, &source, &out, "index", reporter)?;
        results.push(CheckpointIndexed {
            checkpoint,
            out,
            seconds: t.elapsed().as_secs_f64(),
            summary,
            dir: dir.clone(),
        });
    }
    Ok(results)
}
