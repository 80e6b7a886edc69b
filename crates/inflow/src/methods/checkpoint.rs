//! TracIn and LESS: scores summed over the stores of training checkpoints
//! ([`crate::scores::checkpoints`]; METHODS.md §2). The queries are featurized at every
//! checkpoint with that store's settings.

use super::{top_k_of, Context, Method, Need, PerTrain, Scored};
use crate::scores::checkpoints;
pub use crate::scores::checkpoints::CheckpointMethod;
use crate::scores::ScoreResult;
use crate::Result;

impl Method for CheckpointMethod {
    fn name(&self) -> &str {
        CheckpointMethod::name(*self)
    }
    fn about(&self) -> &str {
        match self {
            CheckpointMethod::TracIn => "TracIn: Σ_c η_c g_c(q)·g_c(z) over checkpoint stores",
            CheckpointMethod::Less => {
                "LESS: Σ_c η_c cos(Γ_c(z), g_c(q)) over Adam-update checkpoint stores; per task mean, max over tasks"
            }
        }
    }
    fn needs(&self) -> &[Need] {
        &[Need::Checkpoints]
    }
    fn score(&self, ctx: &Context) -> Result<Scored> {
        let dirs = checkpoints::find(ctx.train.store)?;
        let nq = ctx.queries.len();
        let (full, ids) =
            checkpoints::score(&dirs, ctx.model_path, ctx.queries, *self, ctx.threads)?;
        let per_train = match self {
            CheckpointMethod::Less => {
                let tasks: Vec<String> = ctx
                    .queries
                    .iter()
                    .map(|s| {
                        s.meta
                            .get("task")
                            .and_then(|t| t.as_str())
                            .unwrap_or("all")
                            .to_string()
                    })
                    .collect();
                Some(PerTrain {
                    scores: checkpoints::per_task_max(&full, nq, &tasks),
                    what: "mean per target task, max over tasks".into(),
                })
            }
            CheckpointMethod::TracIn => None,
        };
        (ctx.on_rows)(ids.len());
        Ok(Scored {
            result: ScoreResult {
                topk: top_k_of(&full, nq, ctx.top_k),
                n_train: ids.len(),
                part: None,
                full: Some(full),
            },
            method: CheckpointMethod::name(*self).to_string(),
            sign_convention: self.sign_convention().to_string(),
            report: Some(serde_json::json!({ "checkpoints": dirs })),
            query_rows: Vec::new(),
            train_ids: ids,
            per_train,
        })
    }
}
