//! One-step fine-tuning (the bridge the ICP paper uses between ICP and influence functions):
//! Δ_j(z) = ℓ_j(θ) − ℓ_j(θ − η ∇ℓ(z; θ)), the drop of probe j's loss after one SGD step on z.
//! To first order Δ_j(z) = η ∇ℓ_j · ∇ℓ(z), which the tests check against gradient features.

use super::{ProbeMethod, Probes};
use crate::data::tokens::{Renderer, Template};
use crate::data::Sample;
use crate::features::per_sample_gradient;
use crate::model::{select_modules, LoadedModel, TokenSeq};
use crate::Result;

/// One-step fine-tuning over a probe set; the step updates the `modules` Linears.
pub struct OneStep<'a> {
    model: &'a LoadedModel,
    renderer: Renderer<'a>,
    probes: Vec<TokenSeq>,
    base: Vec<f64>,
    tracked: Vec<usize>,
    groups: Vec<Vec<usize>>,
    n_answer: Vec<f64>,
    lr: f64,
    batch: usize,
    modules: String,
}

impl<'a> OneStep<'a> {
    pub fn new(
        model: &'a LoadedModel,
        probes: &Probes,
        lr: f64,
        modules: &str,
        max_tokens: usize,
        batch: usize,
    ) -> Result<Self> {
        let renderer = Renderer::new(model, Template::Auto, max_tokens)?;
        let seqs: Vec<TokenSeq> = probes
            .samples
            .iter()
            .map(|s| renderer.tokenize(s).map(|t| t.seq))
            .collect::<Result<_>>()?;
        let tracked = select_modules(&model.llama.linears(), modules)?;
        let n_answer = seqs
            .iter()
            .map(|s| s.n_loss_tokens().max(1) as f64)
            .collect();
        let mut os = OneStep {
            model,
            renderer,
            groups: probes.groups(),
            n_answer,
            probes: seqs,
            base: Vec::new(),
            tracked,
            lr,
            batch: batch.max(1),
            modules: modules.to_string(),
        };
        os.base = os.probe_losses(&model.llama)?;
        Ok(os)
    }

    /// Mean answer-token loss of each probe; a task's shared instruction is run once.
    fn probe_losses(&self, llama: &crate::model::Llama) -> Result<Vec<f64>> {
        let sums =
            super::grouped_logprob_sums(llama, None, &self.groups, &self.probes, self.batch)?;
        Ok(sums
            .iter()
            .zip(&self.n_answer)
            .map(|(s, n)| -s / n)
            .collect())
    }

    /// Per-probe loss drops ℓ_j(θ) − ℓ_j(θ − η g_z), and ℓ(z; θ).
    pub fn deltas(&self, z: &Sample) -> Result<(Vec<f64>, f32, bool)> {
        let tok = self.renderer.tokenize(z)?;
        let cap = self
            .model
            .llama
            .loss_and_capture(std::slice::from_ref(&tok.seq), &self.tracked)?;
        let mut updates = Vec::with_capacity(cap.layers.len());
        for (l, &flat) in cap.layers.iter().zip(&self.tracked) {
            let g = per_sample_gradient(&l.x, &l.delta)?.squeeze(0)?;
            updates.push((flat, (g * -self.lr)?));
        }
        let stepped = self.model.llama.with_linear_deltas(&updates)?;
        let after = self.probe_losses(&stepped)?;
        let d = self.base.iter().zip(&after).map(|(b, a)| b - a).collect();
        Ok((d, cap.losses[0], tok.truncated))
    }
}

impl ProbeMethod for OneStep<'_> {
    fn name(&self) -> &str {
        "one-step"
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "method": "one-step", "lr": self.lr, "modules": self.modules,
            "row": "delta_j = loss_j(theta) - loss_j(theta - lr * grad loss(z)), mean token CE",
        })
    }

    fn row(&self, z: &Sample) -> Result<(Vec<f32>, f32, bool)> {
        let (d, loss, t) = self.deltas(z)?;
        Ok((d.into_iter().map(|v| v as f32).collect(), loss, t))
    }

    fn sign_convention(&self) -> &str {
        "score = mean over probes of loss(theta) - loss(theta - lr * grad loss(z)); positive means one SGD step on z lowers the probes' loss (helpful)"
    }
}
