//! From samples to tokens: render a sample as prompt and response text (through the
//! model's own chat template, or a plain template), tokenize, and mark the response tokens
//! as the ones the loss is on. Truncation to `max_tokens` is counted, never silent.

use super::{Body, Message, Sample};
use crate::model::{LoadedModel, TokenSeq};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// How conversations are turned into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The model's chat template when it has one, else `plain`.
    Auto,
    /// The model's Jinja chat template (ChatML for SmolLM2); an error if it has none.
    Chat,
    /// `### Instruction:` / `### Response:` (Alpaca) for one user turn, `role: text` lines otherwise.
    Plain,
}

impl std::str::FromStr for Template {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Template::Auto),
            "chat" => Ok(Template::Chat),
            "plain" => Ok(Template::Plain),
            _ => Err(Error::Msg(format!(
                "unknown template `{s}`; expected auto, chat or plain"
            ))),
        }
    }
}

/// A tokenized sample.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub seq: TokenSeq,
    /// Whether `max_tokens` cut the sample.
    pub truncated: bool,
}

/// Renders and tokenizes samples for one model.
pub struct Renderer<'a> {
    model: &'a LoadedModel,
    template: Template,
    max_tokens: usize,
    env: minijinja::Environment<'static>,
}

impl<'a> Renderer<'a> {
    pub fn new(model: &'a LoadedModel, template: Template, max_tokens: usize) -> Result<Self> {
        let template = match (template, &model.chat_template) {
            (Template::Auto, Some(_)) => Template::Chat,
            (Template::Auto, None) => Template::Plain,
            (Template::Chat, None) => {
                return Err(Error::Msg(
                    "--template chat: the model has no chat template; use --template plain".into(),
                ))
            }
            (t, _) => t,
        };
        if max_tokens < 2 {
            return Err(Error::Msg("--max-tokens must be at least 2".into()));
        }
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        Ok(Self {
            model,
            template,
            max_tokens,
            env,
        })
    }

    /// The template actually used (never `Auto`).
    pub fn template(&self) -> Template {
        self.template
    }

    /// Renders `messages` with the model's chat template.
    pub fn chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.model.chat_template.as_deref().unwrap_or_default();
        self.env
            .render_str(
                tmpl,
                minijinja::context! {
                    messages => messages,
                    add_generation_prompt => add_generation_prompt,
                    bos_token => self.model.bos_token.clone().unwrap_or_default(),
                    eos_token => self.model.eos_token.clone().unwrap_or_default(),
                },
            )
            .map_err(|e| Error::Msg(format!("chat template: {e}")))
    }

    /// (prompt text, response text) of a body.
    pub fn render(&self, body: &Body) -> Result<(String, String)> {
        match (body, self.template) {
            (Body::Plain { prompt, response }, _) => Ok((prompt.clone(), response.clone())),
            (Body::Chat { messages, response }, Template::Chat) => {
                let prompt = self.chat(messages, true)?;
                let mut all = messages.clone();
                all.push(Message {
                    role: "assistant".into(),
                    content: response.clone(),
                });
                let full = self.chat(&all, false)?;
                match full.strip_prefix(&prompt) {
                    Some(resp) => Ok((prompt, resp.to_string())),
                    // Templates that render the answer differently from the generation prompt:
                    // fall back to the answer plus the end-of-turn token.
                    None => Ok((
                        prompt,
                        format!(
                            "{response}{}",
                            self.model.eos_token.clone().unwrap_or_default()
                        ),
                    )),
                }
            }
            (Body::Chat { messages, response }, _) => {
                let prompt = match messages.as_slice() {
                    [m] if m.role == "user" => {
                        format!("### Instruction:\n{}\n\n### Response:\n", m.content)
                    }
                    _ => {
                        let mut s: String = messages
                            .iter()
                            .map(|m| format!("{}: {}\n", m.role, m.content))
                            .collect();
                        s.push_str("assistant: ");
                        s
                    }
                };
                Ok((prompt, response.clone()))
            }
        }
    }

    /// Token ids with the loss mask on the response. Over `max_tokens`, the response keeps at
    /// least half the budget (cut at its end) and the prompt keeps its last tokens (the part
    /// nearest the answer).
    /// Token sequences of `samples` and how many were cut to the limit.
    pub fn tokenize_all(&self, samples: &[Sample]) -> Result<(Vec<crate::model::TokenSeq>, usize)> {
        let mut seqs = Vec::with_capacity(samples.len());
        let mut cut = 0;
        for s in samples {
            let t = self.tokenize(s)?;
            cut += t.truncated as usize;
            seqs.push(t.seq);
        }
        Ok((seqs, cut))
    }

    pub fn tokenize(&self, sample: &Sample) -> Result<Tokenized> {
        let (prompt, response) = self.render(&sample.body)?;
        let mut p = self.model.encode(&prompt)?;
        let mut r = self.model.encode(&response)?;
        let budget = self.max_tokens;
        let truncated = p.len() + r.len() > budget;
        if truncated {
            let keep_r = r
                .len()
                .min((budget / 2).max(budget.saturating_sub(p.len())));
            r.truncate(keep_r);
            let keep_p = budget - keep_r;
            p.drain(..p.len() - keep_p.min(p.len()));
        }
        let mut loss_mask = vec![false; p.len()];
        loss_mask.extend(std::iter::repeat_n(true, r.len()));
        p.extend(r);
        Ok(Tokenized {
            seq: TokenSeq { ids: p, loss_mask },
            truncated,
        })
    }
}
