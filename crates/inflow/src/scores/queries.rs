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

use super::{score_store_part, ScoreResult};

/// Which method scores the queries.
#[derive(Debug, Clone)]
pub struct MethodSpec {
    /// An estimator name (`dot`, `cosine`, `repsim`, `repsim-mean`) or `influence`.
    pub method: String,
    /// For `influence`: identity, kfac, ekfac, datainf, lissa, exact.
    pub preconditioner: String,
    pub curvature: curvature::Options,
    /// On a compact store: rescore each query's best `rerank` candidates exactly on the
    /// parent store (`score --rerank`).
    pub rerank: Option<usize>,
    /// Score only this part of the store's shards (`score --part`).
    pub part: Option<crate::store::Part>,
}

impl MethodSpec {
    /// A plain estimator (`dot`, `cosine`, `repsim`, …).
    pub fn plain(method: &str) -> Self {
        Self {
            method: method.into(),
            preconditioner: "identity".into(),
            curvature: curvature::Options::default(),
            rerank: None,
            part: None,
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
            rerank: None,
            part: None,
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

/// Queries given as a store that `index` wrote from the query file (so their features are
/// computed once for many scoring runs): the samples as recorded (rendered prompt and
/// response) and every feature set it holds, checked to come from the same model and feature
/// settings as the training store `train`. `limit` keeps the first N.
pub fn read_query_store(
    dir: &Path,
    train: &Store,
    limit: Option<usize>,
) -> Result<(Vec<Sample>, Featurized)> {
    let q = Store::open(dir)?;
    if !q.is_complete() {
        return Err(Error::Store {
            path: dir.into(),
            msg: "is a query store that is not complete: finish its index run first".into(),
        });
    }
    let mut features = q.spec().features.clone();
    take_store_own_fields(&mut features, train);
    train
        .check_compatible(&serde_json::json!({"model": q.spec().model, "features": features}))
        .map_err(|e| Error::Msg(format!("query store {}: {e}", dir.display())))?;
    let want_dim = train
        .spec()
        .compact
        .as_ref()
        .map_or(train.dim(), |c| c.parent_dim);
    if q.dim() != want_dim {
        return Err(Error::Store {
            path: dir.into(),
            msg: format!(
                "holds query features of dim {}, the training store scores dim {want_dim}",
                q.dim()
            ),
        });
    }
    let n = limit.map_or(q.n_samples(), |l| l.min(q.n_samples()));
    let read = |s: &Store| -> Result<Vec<f32>> {
        let mut v = Vec::with_capacity(n * s.dim());
        for sh in 0..s.n_shards() {
            if s.shard_range(sh).start >= n {
                break;
            }
            v.extend(s.shard_features(sh)?.0);
        }
        v.truncate(n * s.dim());
        Ok(v)
    };
    let mut rows = q.samples()?;
    rows.truncate(n);
    let sub = |name: &str| -> Result<Vec<f32>> {
        let d = dir.join(name);
        if d.join("manifest.json").exists() {
            read(&Store::open(&d)?)
        } else {
            Ok(Vec::new())
        }
    };
    let feats = Featurized {
        grads: read(&q)?,
        repsim_last: sub(index::REPSIM_LAST)?,
        repsim_mean: sub(index::REPSIM_MEAN)?,
        rows: rows.clone(),
    };
    let samples = rows
        .into_iter()
        .map(|r| Sample {
            id: r.id,
            row: r.row as usize,
            body: crate::data::Body::Plain {
                prompt: r.prompt,
                response: r.response,
            },
            meta: Default::default(),
            input_len: 0,
        })
        .collect();
    Ok((samples, feats))
}

/// Featurizes `queries` with `model` the way the store at `dir` was indexed (or takes the
/// `given` features of a query store) and scores them against it, keeping the top `k` per query and, if `full`, the dense nq × n matrix.
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
    given: Option<&Featurized>,
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
    let compact = store.spec().compact.clone();
    let refuse_compact = |needs: &str| {
        Error::Store {
        path: dir.into(),
        msg: format!(
            "is a compact store (gradient features, projected and quantized by `store compress`); `{}` needs {needs} of the parent store {}: score that one",
            spec.method,
            compact.as_ref().map_or("", |c| c.parent.as_str())
        ),
    }
    };
    // Influence on a compact store: the parent's curvature preconditions the query in the
    // parent's space, q' = (H + λI)⁻¹ q, then q' is projected: z_c · Pᵀq' ≈ z · q'.
    let parent = match &compact {
        Some(_) if spec.method == "influence" || spec.rerank.is_some() => {
            let purpose = if spec.method == "influence" {
                "influence (the curvature fitted on the parent)"
            } else {
                "--rerank"
            };
            Some(super::rerank::open_parent(&store, purpose)?)
        }
        _ => None,
    };
    let est = estimator(
        spec,
        parent
            .as_ref()
            .filter(|_| spec.method == "influence")
            .unwrap_or(&store),
    )?;
    if compact.is_some() && est.features() != "gradients" {
        return Err(refuse_compact("the hidden-state representations"));
    }
    if recorded.lora_grads && est.features() != "gradients" {
        return Err(Error::Store {
            path: dir.into(),
            msg: format!(
                "`{}` scores hidden-state representations, which an `index --lora-grads` store does not hold (it has LoRA-parameter gradients only): index the same data with --adapter but without --lora-grads for `{}`",
                spec.method, spec.method
            ),
        });
    }
    if spec.rerank.is_some() && compact.is_none() {
        return Err(Error::Store {
            path: dir.into(),
            msg: "--rerank rescores a compact store's candidates on its parent; this store is not compact (it is already exact)".into(),
        });
    }
    let computed;
    let feats = match given {
        Some(f) => f,
        None => {
            computed = featurize_queries(model, &store, &recorded, queries, threads, progress)?;
            &computed
        }
    };
    let (qf, query_rows) = (feats.set(est.features())?, feats.rows.clone());
    if qf.is_empty() {
        return Err(Error::Msg(format!(
            "the query store holds no `{}` features (index the queries without --lora-grads, like the training store)",
            est.features()
        )));
    }
    let nq = queries.len();
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
    let result = match crate::store::compress::Projection::of(&store) {
        None => score_store_part(scored, spec.part, qf, nq, est.as_ref(), k, full, on_shard)?,
        Some(proj) => {
            // Queries at full precision, mapped by the store's own projection and seed.
            let kk = spec.rerank.map_or(k, |r| r.max(k));
            let influence = spec.method == "influence";
            let prepared = if influence || spec.rerank.is_some() {
                Some(est.prepare_queries(qf.to_vec(), proj.from_dim())?)
            } else {
                None
            };
            let mut r = match &prepared {
                // Preconditioned already: the compact rows meet it by a plain dot product
                // (influence's training scale is 1).
                Some(p) if influence => score_store_part(
                    &store,
                    spec.part,
                    &proj.apply(p, nq)?,
                    nq,
                    &estimators::Dot,
                    kk,
                    full,
                    on_shard,
                )?,
                _ => score_store_part(
                    &store,
                    spec.part,
                    &proj.apply(qf, nq)?,
                    nq,
                    est.as_ref(),
                    kk,
                    full,
                    on_shard,
                )?,
            };
            if let (Some(parent), Some(p), Some(_)) = (&parent, &prepared, spec.rerank) {
                r.topk = super::rerank::rerank(parent, p, est.as_ref(), &r.topk, k)?;
            }
            r
        }
    };
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
    // A store `encode` wrote: the queries go through the same encoder.
    if crate::encoder::is_encoder_store(store) {
        return crate::encoder::featurize_queries(model, store, queries, threads, progress);
    }
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
    take_store_own_fields(&mut want, store);
    let mut expected = serde_json::json!({ "features": want });
    // A compact store holds projections of these features: they are checked against its
    // parent's length and mapped afterwards.
    match &store.spec().compact {
        Some(c) if c.parent_dim != fz_spec.dim() => {
            return Err(Error::Store {
                path: store.dir().into(),
                msg: format!(
                    "was compressed from features of dim {}, the query pass gives {}",
                    c.parent_dim,
                    fz_spec.dim()
                ),
            })
        }
        Some(_) => {}
        None => expected["dim"] = fz_spec.dim().into(),
    }
    store.check_compatible(&expected)?;
    Ok(feats)
}

/// Sets the fields of `features` that belong to a store rather than to a feature pass (a
/// checkpoint store's checkpoint, hash-checked with the model, and its gradient kind) to
/// `store`'s, so comparing the two compares only settings of the pass.
fn take_store_own_fields(features: &mut serde_json::Value, store: &Store) {
    if let (Some(w), Some(have)) = (features.as_object_mut(), store.spec().features.as_object()) {
        for key in ["gradient", "checkpoint"] {
            match have.get(key) {
                Some(v) => w.insert(key.into(), v.clone()),
                None => w.remove(key),
            };
        }
    }
}
