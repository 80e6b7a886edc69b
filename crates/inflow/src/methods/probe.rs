//! Forward-only valuation as a scorer (METHODS.md §2): in-context probing and one-step
//! fine-tuning with the queries as probes, score(z, q) = the probe value Δ_q(z). The
//! per-(sample, probe) values are kept in a resumable probe store under the context's scratch
//! folder.

use super::{top_k_of, Context, Method, Need, Scored};
use crate::data::tokens::Template;
use crate::probe::icp::{DemoTemplate, Icp};
use crate::probe::one_step::OneStep;
use crate::probe::{ProbeMethod, ProbeRun, Probes};
use crate::scores::ScoreResult;
use crate::store::Store;
use crate::{Error, Result};

/// ICP or one-step fine-tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeScorer {
    Icp,
    OneStep,
}

impl Method for ProbeScorer {
    fn name(&self) -> &str {
        match self {
            ProbeScorer::Icp => "icp",
            ProbeScorer::OneStep => "one-step",
        }
    }
    fn about(&self) -> &str {
        match self {
            ProbeScorer::Icp => "in-context probing: Δ_q(z) = log p(a_q | z ⊕ q) − log p(a_q | q)",
            ProbeScorer::OneStep => "one-step fine-tuning: ℓ_q(θ) − ℓ_q(θ − η∇ℓ(z))",
        }
    }
    fn needs(&self) -> &[Need] {
        &[Need::Model]
    }
    fn score(&self, ctx: &Context) -> Result<Scored> {
        let model = ctx.model(self.name())?;
        let nq = ctx.queries.len();
        let mut probes = Probes::read(ctx.queries_path, None, None)?;
        probes.samples.truncate(nq);
        probes.tasks.truncate(nq);
        if probes
            .samples
            .iter()
            .zip(ctx.queries)
            .any(|(p, q)| p.id != q.id)
            || probes.samples.len() != nq
        {
            return Err(Error::Msg(format!(
                "{}: the probes read from the file are not the queries being scored",
                ctx.queries_path.display()
            )));
        }
        let max_tokens = ctx.train.features.max_tokens;
        let batch = ctx.options.probe_batch;
        // The model's chat template when it has one (as `--template auto` renders).
        let demo = match (ctx.train.features.template, model.chat_template.is_some()) {
            (Template::Plain, _) | (Template::Auto, false) => DemoTemplate::Plain,
            _ => DemoTemplate::Chat,
        };
        let method: Box<dyn ProbeMethod + '_> = match self {
            ProbeScorer::Icp => Box::new(Icp::new(model, &probes, demo, max_tokens, batch)?),
            ProbeScorer::OneStep => Box::new(OneStep::new(
                model,
                &probes,
                ctx.options.one_step_lr,
                &ctx.train.features.modules,
                max_tokens,
                batch,
            )?),
        };
        let run = ProbeRun {
            model,
            data: ctx.train.data.clone(),
            read: ctx.train.read.clone(),
            probes: &probes,
            shard_size: 16,
            threads: ctx.threads,
        };
        let dir = ctx.scratch.join(self.name());
        crate::probe::run(&run, method.as_ref(), &dir, ctx.progress)?;
        let store = Store::open(&dir)?;
        let n = store.n_samples();
        let mut rows = Vec::with_capacity(n * nq);
        for i in 0..store.n_shards() {
            rows.extend(store.shard_features(i)?.0);
        }
        if rows.len() != n * nq {
            return Err(Error::Store {
                path: dir,
                msg: format!("the probe matrix is not {n} × {nq}"),
            });
        }
        // n × nq (train-major) → nq × n (query-major).
        let mut full = vec![0f32; rows.len()];
        for z in 0..n {
            for q in 0..nq {
                full[q * n + z] = rows[z * nq + q];
            }
        }
        (ctx.on_rows)(n);
        let sign = match self {
            ProbeScorer::Icp => format!(
                "score(z, q) = Δ_q(z) = log p(a_q | z ⊕ q) − log p(a_q | q), the per-probe ICP value \
                 (positive: z as a one-shot demonstration raises the query answer's probability); {}",
                method.sign_convention()
            ),
            ProbeScorer::OneStep => format!(
                "score(z, q) = ℓ_q(θ) − ℓ_q(θ − η∇ℓ(z)), the per-probe one-step value (positive: a step on z lowers the query loss); {}",
                method.sign_convention()
            ),
        };
        Ok(Scored {
            result: ScoreResult {
                topk: top_k_of(&full, nq, ctx.top_k),
                n_train: n,
                part: None,
                full: if ctx.full { Some(full) } else { None },
            },
            method: self.name().to_string(),
            sign_convention: sign,
            report: Some(serde_json::json!({
                "store": dir, "demo_template": format!("{demo:?}"), "max_tokens": max_tokens,
            })),
            query_rows: Vec::new(),
            train_ids: store.samples()?.into_iter().map(|r| r.id).collect(),
            per_train: None,
        })
    }
}
