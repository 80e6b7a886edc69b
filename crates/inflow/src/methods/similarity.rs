//! Feature-space similarity methods over one store: the estimators of
//! [`crate::estimators`] (dot, cosine, RepSim), scored as one streamed matrix product.

use super::{Context, Method, Need, Options, Scored};
use crate::scores::queries::{score_samples, MethodSpec};
use crate::store::Store;
use crate::Result;

/// A plain estimator of [`crate::estimators`], by its name.
pub struct Similarity {
    name: &'static str,
}

impl Similarity {
    /// The estimator called `name` (dot, cosine, repsim, repsim-mean).
    pub fn named(name: &'static str) -> Self {
        Self { name }
    }
}

impl Method for Similarity {
    fn name(&self) -> &str {
        self.name
    }
    fn about(&self) -> &str {
        match self.name {
            "cosine" => "gradient cosine similarity cos(g_q, g_z)",
            "dot" => "gradient inner product g_q · g_z",
            "repsim" => "cosine of final hidden states at the last prompt token",
            _ => "cosine of final hidden states averaged over the response tokens",
        }
    }
    fn needs(&self) -> &[Need] {
        &[Need::Store, Need::Model]
    }
    fn score(&self, ctx: &Context) -> Result<Scored> {
        let spec = MethodSpec {
            rerank: ctx.options.rerank,
            part: ctx.options.part,
            ..MethodSpec::plain(self.name)
        };
        score_spec(&spec, ctx)
    }
    fn self_scores(&self, store: &Store, _options: &Options) -> Result<Option<Vec<f32>>> {
        // Cosine's self-score is 1 by definition, RepSim's lives in another feature set.
        if self.name != "dot" {
            return Ok(None);
        }
        let est = crate::scores::queries::estimator(&MethodSpec::plain(self.name), store)?;
        crate::scores::self_scores(store, est.as_ref()).map(Some)
    }
}

/// Scores the context's queries against its store with a [`MethodSpec`].
pub(super) fn score_spec(spec: &MethodSpec, ctx: &Context) -> Result<Scored> {
    let model = ctx.model(&spec.method)?;
    let s = score_samples(
        ctx.train.store,
        model,
        ctx.queries,
        spec,
        ctx.top_k,
        ctx.full,
        ctx.threads,
        ctx.progress,
        ctx.query_features,
        &mut |d| (ctx.on_rows)(d),
    )?;
    let train_ids = Store::open(ctx.train.store)?
        .samples()?
        .into_iter()
        .map(|r| r.id)
        .collect();
    Ok(Scored {
        result: s.result,
        method: s.method,
        sign_convention: s.sign_convention,
        report: s.report,
        query_rows: s.query_rows,
        train_ids,
        per_train: None,
    })
}
