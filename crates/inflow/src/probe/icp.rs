//! In-context probing (Jiao, Gao, Xiong 2024; Nuggets, Li et al. 2023).
//!
//! For a training sample z and probe tasks (q_j, a_j):
//! Δ_j(z) = log p(a_j | z ⊕ q_j) − log p(a_j | q_j), with z rendered as a one-shot
//! demonstration before q_j. The score is the fraction of probes with Δ_j > 0 (the reference
//! implementation's), reported beside the mean Δ.
//!
//! Speed: z is a prefix shared by every probe, so its keys/values are computed once; probes
//! of one task share their instruction, so the common token prefix of a task's probes is
//! appended to the cache once per (z, task); only each probe's own tail is run, in batches.
//! The baselines log p(a_j | q_j) do not depend on z and are computed once.

use super::{ProbeMethod, Probes};
use crate::data::tokens::{Renderer, Template};
use crate::data::{Body, Message, Sample};
use crate::model::{LoadedModel, TokenSeq};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the demonstration z and the probe are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoTemplate {
    /// The model's chat template: [user z, assistant z's answer, user q_j] → answer a_j.
    Chat,
    /// `### Instruction:` / `### Response:` blocks, z's block first.
    Plain,
}

crate::error::names!(DemoTemplate: "demonstration template", Chat = "chat", Plain = "plain");

/// A probe prepared once: its prompt text, answer tokens, and baseline log p(a | q).
struct PreparedProbe {
    messages: Vec<Message>,
    answer: Vec<u32>,
    baseline: f64,
}

/// The ICP estimator over a fixed probe set.
pub struct Icp<'a> {
    model: &'a LoadedModel,
    renderer: Renderer<'a>,
    template: DemoTemplate,
    probes: Vec<PreparedProbe>,
    /// Probe indices grouped by task (groups share a token prefix after z).
    groups: Vec<Vec<usize>>,
    max_tokens: usize,
    batch: usize,
}

fn as_messages(body: &Body) -> (Vec<Message>, String) {
    match body {
        Body::Chat { messages, response } => (messages.clone(), response.clone()),
        Body::Plain { prompt, response } => (
            vec![Message {
                role: "user".into(),
                content: prompt.clone(),
            }],
            response.clone(),
        ),
    }
}

fn plain_block(messages: &[Message]) -> String {
    let user: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
    format!("### Instruction:\n{}\n\n### Response:\n", user.join("\n\n"))
}

impl<'a> Icp<'a> {
    /// Prepares the probes (answer tokens, baselines). `max_tokens` caps the demonstration.
    pub fn new(
        model: &'a LoadedModel,
        probes: &Probes,
        template: DemoTemplate,
        max_tokens: usize,
        batch: usize,
    ) -> Result<Self> {
        let rt = match template {
            DemoTemplate::Chat => Template::Chat,
            DemoTemplate::Plain => Template::Plain,
        };
        let renderer = Renderer::new(model, rt, usize::MAX)?;
        let mut icp = Icp {
            model,
            renderer,
            template,
            probes: Vec::new(),
            groups: probes.groups(),
            max_tokens,
            batch: batch.max(1),
        };
        let mut prepared = Vec::with_capacity(probes.samples.len());
        for s in &probes.samples {
            let (messages, _) = as_messages(&s.body);
            let (prompt, answer_text) = icp.render_single(&s.body)?;
            let p = model.encode(&prompt)?;
            let answer = model.encode(&answer_text)?;
            if answer.is_empty() || p.is_empty() {
                return Err(Error::Msg(format!(
                    "probe {}: empty prompt or answer",
                    s.id
                )));
            }
            prepared.push((messages, p, answer));
        }
        // Baselines log p(a_j | q_j), batched.
        let seqs: Vec<TokenSeq> = prepared.iter().map(|(_, p, a)| seq(p, a)).collect();
        let mut base = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(icp.batch) {
            base.extend(model.llama.response_logprob_sums(None, chunk)?);
        }
        icp.probes = prepared
            .into_iter()
            .zip(base)
            .map(|((messages, _, answer), baseline)| PreparedProbe {
                messages,
                answer,
                baseline,
            })
            .collect();
        Ok(icp)
    }

    /// Baseline log p(a_j | q_j) per probe.
    pub fn baselines(&self) -> Vec<f64> {
        self.probes.iter().map(|p| p.baseline).collect()
    }

    /// (prompt, answer) of one sample on its own (the baseline rendering).
    fn render_single(&self, body: &Body) -> Result<(String, String)> {
        match self.template {
            DemoTemplate::Chat => self.renderer.render(body),
            DemoTemplate::Plain => {
                let (m, r) = as_messages(body);
                Ok((plain_block(&m), r))
            }
        }
    }

    /// Token ids of the demonstration prefix z and, per probe, the tokens between z and the
    /// answer. Over `max_tokens`, the demonstration keeps its last tokens.
    fn demo_and_suffixes(&self, z: &Sample) -> Result<(Vec<u32>, Vec<Vec<u32>>, bool)> {
        let (zm, zr) = as_messages(&z.body);
        let mut demo = zm.clone();
        demo.push(Message {
            role: "assistant".into(),
            content: zr.clone(),
        });
        let (prefix, suffixes): (String, Vec<String>) = match self.template {
            DemoTemplate::Plain => {
                let prefix = format!("{}{}\n\n", plain_block(&zm), zr);
                let s = self
                    .probes
                    .iter()
                    .map(|p| plain_block(&p.messages))
                    .collect();
                (prefix, s)
            }
            DemoTemplate::Chat => {
                let prefix = self.renderer.chat(&demo, false)?;
                let mut s = Vec::with_capacity(self.probes.len());
                for p in &self.probes {
                    let mut all = demo.clone();
                    all.extend(p.messages.iter().cloned());
                    let full = self.renderer.chat(&all, true)?;
                    let rest = full.strip_prefix(&prefix).ok_or_else(|| {
                        Error::Msg(
                            "the chat template renders a conversation differently from its first turns; use --demo-template plain".into(),
                        )
                    })?;
                    s.push(rest.to_string());
                }
                (prefix, s)
            }
        };
        let mut pre = self.model.encode(&prefix)?;
        let truncated = pre.len() > self.max_tokens;
        if truncated {
            pre.drain(..pre.len() - self.max_tokens);
        }
        let mut cache = std::collections::HashMap::new();
        let mut out = Vec::with_capacity(suffixes.len());
        for s in suffixes {
            if let Some(ids) = cache.get(&s) {
                out.push(Vec::clone(ids));
                continue;
            }
            let ids = self.model.encode(&s)?;
            if ids.is_empty() {
                return Err(Error::Msg(
                    "empty probe prompt after the demonstration".into(),
                ));
            }
            cache.insert(s, ids.clone());
            out.push(ids);
        }
        Ok((pre, out, truncated))
    }

    /// log p(a_j | z ⊕ q_j) for every probe, with prefix caching (z once, each task's common
    /// prefix once) and batched probe tails.
    pub fn conditional_logprobs(&self, z: &Sample) -> Result<(Vec<f64>, bool)> {
        let (pre, suffixes, truncated) = self.demo_and_suffixes(z)?;
        let zcache = self.model.llama.prefix_cache(&pre)?;
        let seqs: Vec<TokenSeq> = suffixes
            .iter()
            .zip(&self.probes)
            .map(|(s, p)| seq(s, &p.answer))
            .collect();
        let out = super::grouped_logprob_sums(
            &self.model.llama,
            Some(&zcache),
            &self.groups,
            &seqs,
            self.batch,
        )?;
        Ok((out, truncated))
    }

    /// The same log-probabilities the slow way: every probe as one full sequence, no cache.
    pub fn conditional_logprobs_naive(&self, z: &Sample) -> Result<Vec<f64>> {
        let (pre, suffixes, _) = self.demo_and_suffixes(z)?;
        let mut out = Vec::with_capacity(self.probes.len());
        for (j, s) in suffixes.iter().enumerate() {
            let mut prompt = pre.clone();
            prompt.extend_from_slice(s);
            let full = seq(&prompt, &self.probes[j].answer);
            out.push(self.model.llama.response_logprob_sums(None, &[full])?[0]);
        }
        Ok(out)
    }
}

fn seq(prompt: &[u32], answer: &[u32]) -> TokenSeq {
    TokenSeq::prompt_response(prompt.to_vec(), answer)
}

impl ProbeMethod for Icp<'_> {
    fn name(&self) -> &str {
        "icp"
    }

    fn spec(&self) -> serde_json::Value {
        serde_json::json!({
            "method": "icp",
            "demo_template": self.template,
            "max_tokens": self.max_tokens,
            "row": "delta_j = log p(a_j | z + q_j) - log p(a_j | q_j), summed over answer tokens",
        })
    }

    fn row(&self, z: &Sample) -> Result<(Vec<f32>, f32, bool)> {
        let (lp, truncated) = self.conditional_logprobs(z)?;
        let deltas: Vec<f32> = lp
            .iter()
            .zip(&self.probes)
            .map(|(l, p)| (l - p.baseline) as f32)
            .collect();
        Ok((deltas, 0.0, truncated))
    }

    /// The reference implementation's score: the fraction of probes with Δ_j > 0.
    fn aggregate(&self, row: &[f32]) -> f32 {
        super::aggregate(row).0
    }

    fn sign_convention(&self) -> &str {
        "score = fraction of probes j with delta_j(z) > 0, delta_j = log p(a_j | z + q_j) - log p(a_j | q_j); higher means z as a demonstration helps the probes (ICP, Jiao et al. 2024)"
    }
}
