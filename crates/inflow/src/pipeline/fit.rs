//! `fit`: K-FAC and EK-FAC curvature of a store, on the empirical Fisher of its stored
//! gradients or on the true Fisher (Gauss–Newton) from sampled-label model passes.

use std::path::{Path, PathBuf};

use super::report::{watch, Reporter};
use crate::curvature::fisher::{self as fi, Fisher, FisherSamples};
use crate::curvature::kfac::{self, FactorSource};
use crate::index::{IndexOptions, Progress};
use crate::model::LoadedModel;
use crate::store::Store;
use crate::{Error, Result};

/// What to fit.
#[derive(Debug, Clone)]
pub struct FitOptions {
    pub store: PathBuf,
    pub factors: FactorSource,
    pub fisher: Fisher,
    /// Sampled-label passes of the true Fisher (the count inside `fisher` is ignored).
    pub draws: usize,
    /// Model override for the true Fisher (default: the store's, from run.json).
    pub model: Option<PathBuf>,
    /// Samples per model pass of the true Fisher.
    pub batch_size: usize,
    pub threads: usize,
}

/// What a fit wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fitted {
    pub out: PathBuf,
    pub fisher: Fisher,
    pub n_samples: usize,
}

/// Fits the curvature of `o.store`; for the true Fisher, first indexes (or resumes) its
/// sampled-label draws under STORE/fisher/, at the store's adapter or checkpoint if any.
pub fn fit(o: &FitOptions, reporter: &dyn Reporter) -> Result<Fitted> {
    let s = Store::open(&o.store)?;
    s.require_whole("fitting curvature")?;
    let samples = match o.fisher {
        Fisher::Empirical => FisherSamples::empirical(&s)?,
        Fisher::True { .. } => {
            let draws = o.draws;
            if draws == 0 || o.batch_size == 0 {
                return Err(Error::Msg(
                    "--draws and --batch-size must be positive".into(),
                ));
            }
            let (opts, m) = store_run(&s, o.model.as_deref(), o.batch_size, o.threads, reporter)?;
            fisher_draws(&m, &opts, &s, draws, reporter)?
        }
    };
    let out = kfac::fit_with(&s, &samples, o.factors)?;
    Ok(Fitted {
        out,
        fisher: samples.fisher,
        n_samples: s.n_samples(),
    })
}

/// The index options a store was made with (from its run.json and manifest) and its model at
/// the store's weights: base, or with the adapter or checkpoint the store was indexed at
/// (hash-checked, [`super::store_model::load`]).
pub fn store_run(
    s: &Store,
    model: Option<&Path>,
    batch_size: usize,
    threads: usize,
    reporter: &dyn Reporter,
) -> Result<(IndexOptions, LoadedModel)> {
    let w = crate::train::features::store_weights(s.dir())?;
    if w.checkpoint.is_some() && w.lora_grads {
        return Err(Error::Msg(format!(
            "{}: the store holds LoRA-parameter features (--lora-grads); --fisher true supports base-Linear features, with or without --adapter (use the empirical Fisher here)",
            s.dir().display()
        )));
    }
    let m = super::store_model::load(s.dir(), model, reporter)?;
    let opts = IndexOptions {
        part: None,
        data: m.run.data_path.clone(),
        read: super::score::recorded_read(s, &m.run)?,
        features: m.run.features.clone(),
        dtype: s.spec().dtype,
        shard_size: s.spec().shard_size,
        batch_size,
        threads,
    };
    Ok((opts, m.model))
}

/// Indexes (or resumes) `draws` sampled-label passes over `opts`' data beside `store`: the
/// samples of the store's true Fisher.
pub fn fisher_draws(
    m: &LoadedModel,
    opts: &IndexOptions,
    store: &Store,
    draws: usize,
    reporter: &dyn Reporter,
) -> Result<FisherSamples> {
    let mut stores = Vec::with_capacity(draws);
    for k in 0..draws {
        let progress = Progress::default();
        let stage = format!("fisher draw {}/{draws}", k + 1);
        stores.push(watch(reporter, &stage, &progress, || {
            fi::index_draw(m, opts, store.dir(), k, &progress)
        })?);
    }
    FisherSamples::from_stores(store, stores, Fisher::True { draws })
}
