//! Scoring query samples against an indexed store with one named method: the library half of
//! `inflow score`, shared by the evaluations (LDS, planted data, selection) that score
//! in-process.

use std::path::Path;

use crate::curvature;
use crate::data::tokens::Renderer;
use crate::data::Sample;
use crate::estimators::{self, Estimator};
use crate::features::FeatureSpec;
use crate::index::{self, FeaturePass, Featurized, Featurizer, Progress};
use crate::model::LoadedModel;
use crate::store::SampleRow;
use crate::store::Store;
use crate::train::{
    self,
    features::{LoraFeaturizer, LoraGradient},
};
use crate::{Error, Result};

use super::{score_store, ScoreResult};

/// Which method scores the queries.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    /// An estimator name (`dot`, `cosine`, `repsim`, `repsim-mean`) or `influence`.
    pub method: String,
    /// For `influence`: identity, kfac, ekfac, datainf, lissa, exact.
    pub preconditioner: String,
    pub curvature: curvature::Options,
}

impl MethodSpec {
    /// A plain estimator (`dot`, `cosine`, `repsim`, …).
    pub fn plain(method: &str) -> Self {
        Self {
            method: method.into(),
            preconditioner: "identity".into(),
            curvature: curvature::Options::default(),
        }
    }

    /// `influence` with a preconditioner and relative damping.
    pub fn influence(preconditioner: &str, damping: f64) -> Self {
        Self {
            method: "influence".into(),
            preconditioner: preconditioner.into(),
            curvature: curvature::Options {
                damping,
                ..curvature::Options::default()
            },
        }
    }
}

/// Scores of queries against a store.
pub struct Scored {
    pub result: ScoreResult,
    /// The estimator's name (for `influence`, including its preconditioner).
    pub method: String,
    pub sign_convention: String,
    /// Convergence or other notes of the estimator (LiSSA).
    pub report: Option<serde_json::Value>,
    /// The queries as tokenized (prompt and response text after templating).
    pub query_rows: Vec<SampleRow>,
}

/// Builds the estimator a spec names, with its curvature loaded from the store.
pub fn estimator<'a>(spec: &MethodSpec, store: &'a Store) -> Result<Box<dyn Estimator + 'a>> {
    if spec.method == "influence" {
        Ok(Box::new(estimators::influence::Influence::with_fisher(
            curvature::load(&spec.preconditioner, store, &spec.curvature)?,
            curvature::fisher::recorded(store)?,
        )))
    } else {
        estimators::by_name(&spec.method)
    }
}

/// Featurizes `queries` with `model` the way the store at `dir` was indexed and scores them
/// against it, keeping the top `k` per query and, if `full`, the dense nq × n matrix.
/// Representation methods score the sub-store `index` wrote beside the gradients.
#[allow(clippy::too_many_arguments)]
pub fn score_samples(
    dir: &Path,
    model: &LoadedModel,
    queries: &[Sample],
    spec: &MethodSpec,
    k: usize,
    full: bool,
    threads: usize,
    progress: &Progress,
    on_shard: &mut dyn FnMut(usize),
) -> Result<Scored> {
    let store = Store::open(dir)?;
    if !store.is_complete() {
        return Err(Error::Msg(format!(
            "store {} is not complete ({} of {} samples): rerun the index command to finish it",
            dir.display(),
            store.n_done_rows(),
            store.n_samples()
        )));
    }
    if queries.is_empty() {
        return Err(Error::Msg("no queries to score".into()));
    }
    let recorded = train::features::store_weights(dir)?;
    store.check_compatible(&serde_json::json!({ "model": index::model_spec(model)? }))?;
    let est = estimator(spec, &store)?;
    if recorded.lora_grads && est.features() != "gradients" {
        return Err(Error::Store {
            path: dir.into(),
            msg: format!(
                "`{}` scores hidden-state representations, which an `index --lora-grads` store does not hold (it has LoRA-parameter gradients only): index the same data with --adapter but without --lora-grads for `{}`",
                spec.method, spec.method
            ),
        });
    }
    let feats = featurize_queries(model, &store, &recorded, queries, threads, progress)?;
    let (qf, query_rows) = (feats.set(est.features())?, feats.rows.clone());
    let sub;
    let scored: &Store = if est.features() == "gradients" {
        &store
    } else {
        let sdir = dir.join(est.features());
        if !sdir.join("manifest.json").exists() {
            return Err(Error::Msg(format!(
                "{} has no `{}` representations (stores from older versions lack them): index again",
                dir.display(),
                est.features()
            )));
        }
        sub = Store::open(&sdir)?;
        &sub
    };
    let result = score_store(scored, qf, queries.len(), est.as_ref(), k, full, on_shard)?;
    Ok(Scored {
        result,
        method: est.name().to_string(),
        sign_convention: est.sign_convention().to_string(),
        report: est.report(),
        query_rows,
    })
}

/// Features of `queries` by the pass `store` was indexed with, checked against its spec: the
/// plain LoRA gradient of the same layers and projection for a `--lora-grads` store (also
/// against Adam-update training features: LESS's pairing), else the base-Linear pass with its
/// RepSim sets. `model` must be at the store's weights.
pub fn featurize_queries(
    model: &LoadedModel,
    store: &Store,
    recorded: &train::features::StoreWeights,
    queries: &[Sample],
    threads: usize,
    progress: &Progress,
) -> Result<Featurized> {
    let run = &recorded.run;
    let (feats, fz_spec) = if recorded.lora_grads {
        let stored: FeatureSpec =
            serde_json::from_value(store.spec().features.clone()).map_err(|e| Error::Store {
                path: store.dir().into(),
                msg: format!("features: {e}"),
            })?;
        let fz = LoraFeaturizer::new(
            model,
            stored.projection.clone(),
            stored.seed,
            Renderer::new(model, run.features.template, run.features.max_tokens)?
                .with_truncate(run.features.truncate),
            &LoraGradient::Sgd,
            None,
        )?;
        (
            fz.featurize(queries, 1, threads, progress)?,
            fz.spec().clone(),
        )
    } else {
        let fz = Featurizer::new(model, &run.features)?;
        (
            fz.featurize(queries, 1, threads, progress)?,
            fz.spec().clone(),
        )
    };
    let mut want = serde_json::to_value(&fz_spec).map_err(|e| Error::Msg(e.to_string()))?;
    // A checkpoint store's own fields (its checkpoint, hash-checked with the model, and its
    // gradient kind) are not settings of the query pass.
    if let (Some(w), Some(have)) = (want.as_object_mut(), store.spec().features.as_object()) {
        for key in ["gradient", "checkpoint"] {
            if let Some(v) = have.get(key) {
                w.insert(key.into(), v.clone());
            }
        }
    }
    store.check_compatible(&serde_json::json!({
        "features": want,
        "dim": fz_spec.dim(),
    }))?;
    Ok(feats)
}
