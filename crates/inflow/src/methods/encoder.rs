//! The amortized encoder as a method (Influcoder; METHODS.md §4): cosine of encoder
//! embeddings, cos(φ(q), φ(z)), on a store `inflow encode` wrote; the queries go through the
//! same encoder (`scores::queries::featurize_queries` dispatches on the store's kind).

use super::similarity::score_spec;
use super::{Context, Method, Need, Scored};
use crate::scores::queries::MethodSpec;
use crate::store::Store;
use crate::{Error, Result};

/// Cosine on an encoder store.
pub struct EncoderMethod;

impl Method for EncoderMethod {
    fn name(&self) -> &str {
        "encoder"
    }
    fn about(&self) -> &str {
        "cosine of amortized-encoder embeddings cos(φ_q, φ_z) on a store `inflow encode` wrote (forward only)"
    }
    fn needs(&self) -> &[Need] {
        &[Need::Store, Need::Model]
    }
    fn score(&self, ctx: &Context) -> Result<Scored> {
        let store = Store::open(ctx.train.store)?;
        if !crate::encoder::is_encoder_store(&store) {
            return Err(Error::Msg(format!(
                "method `encoder` scores a store of encoder features; {} holds `{}` features: `inflow encode --encoder DIR --data …` the training set first",
                ctx.train.store.display(),
                store.spec().features.get("kind").and_then(|k| k.as_str()).unwrap_or("gradient")
            )));
        }
        score_spec(&MethodSpec::plain("cosine"), ctx)
    }
}
