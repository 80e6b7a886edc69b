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

crate::error::names!(Template: "template", Auto = "auto", Chat = "chat", Plain = "plain");

/// Which tokens go when a sample is longer than `--max-tokens` B. A sample is rendered as
/// prompt tokens (P of them, no loss) followed by response tokens (R, the loss is on them);
/// nothing is cut when P + R ≤ B. Otherwise:
///
/// - `middle` (the default): the template head, the system prompt, the generation-prompt
///   tail and the instruction survive, and the prompt is cut in its middle.
///   1. *Reserve.* The prompt keeps at least `reserve = min(P, B/2, S + 16)` tokens, where S
///      counts the prompt tokens outside every conversation turn's content (the template's
///      own tokens, such as `<|im_start|>user\n` and `<|im_end|>\n<|im_start|>assistant\n`,
///      plus a default system prompt) and of system messages: the scaffold, and 16 tokens of
///      what the user wrote.
///   2. *Response.* It is kept whole when R ≤ B − reserve; otherwise it is cut at its end to
///      B − reserve tokens (so at least half the budget).
///   3. *Prompt.* It keeps K = B − (response tokens kept) tokens. The P − K tokens to drop are
///      taken, in this order, from (a) the record's `input` field (alpaca's `input`, the part
///      of the last user turn after the instruction), (b) the contents of earlier user and
///      assistant turns, oldest first, (c) the last turn's remaining content (the
///      instruction), (d) the contents of system messages, each cut in its middle: a region
///      of n tokens that must lose m keeps its first ⌈(n−m)/2⌉ and last ⌊(n−m)/2⌋ tokens.
///      Only if all of that is gone (a scaffold longer than the budget) does the rest go
///      from the middle of what remains. A trigger at the start or end of an instruction
///      is dropped only after the whole `input` is gone and the instruction itself is over
///      the budget. A prompt the renderer cannot split into turns (a raw `prompt_completion`
///      prompt) is one region, cut in its middle.
/// - `left`: the behaviour before this option existed (stores and runs whose manifest, run.json
///   or trainer state has no `truncate` field were made with it): the response keeps
///   `min(R, max(B/2, B − P))` tokens (cut at its end) and the prompt keeps its **last**
///   tokens, which drops the template head, the system prompt and the instruction first.
/// - `right`: the first B tokens of prompt + response are kept (the end of the whole sequence
///   is cut: the response's end first, then the prompt's), except that a non-empty response
///   always keeps at least one token (the prompt then keeps its first B − 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncate {
    /// Cut the prompt's start (the behaviour of stores and runs that record no policy).
    Left,
    /// Keep the template head and tail, the instruction and the response; cut the prompt's
    /// middle, the `input` field first.
    #[default]
    Middle,
    /// Keep the start of the sequence; cut its end.
    Right,
}

crate::error::names!(Truncate: "truncation", Left = "left", Middle = "middle", Right = "right";
    expected "left (cut the prompt's start, the old behaviour), middle (keep the template head, \
              the instruction and the response; cut the middle of the prompt) or right (cut \
              the end)");

impl Truncate {
    /// The policy of stores and runs that record none: `left`, the only one before the option.
    pub fn legacy() -> Self {
        Truncate::Left
    }

    /// Whether this is `left` (the policy that specs leave unrecorded; see [`Truncate::record`]).
    pub fn is_left(&self) -> bool {
        *self == Truncate::Left
    }

    /// Adds `"truncate": policy` to a JSON spec object, except for `left`: a spec without the
    /// field means `left`, so the specs of stores and runs made before the option existed stay
    /// equal to those of new `left` ones (their resumption and scoring are unaffected).
    pub fn record(self, spec: &mut serde_json::Value) {
        if let (false, Some(obj)) = (self.is_left(), spec.as_object_mut()) {
            obj.insert("truncate".into(), serde_json::json!(self));
        }
    }

    /// Where the prompt loses its tokens, for summaries.
    fn prompt_side(self) -> &'static str {
        match self {
            Truncate::Left => "from the start",
            Truncate::Middle => "from the middle",
            Truncate::Right => "from the end",
        }
    }
}

/// A tokenized sample.
#[derive(Debug, Clone)]
pub struct Tokenized {
    pub seq: TokenSeq,
    /// Whether `max_tokens` cut the sample.
    pub truncated: bool,
    /// Prompt tokens dropped.
    pub prompt_cut: usize,
    /// Response tokens dropped (at the response's end).
    pub response_cut: usize,
}

/// What truncation cut over a set of samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cuts {
    /// Samples over the limit.
    pub samples: usize,
    /// Prompt tokens dropped over all samples.
    pub prompt_tokens: usize,
    /// Response tokens dropped over all samples.
    pub response_tokens: usize,
}

impl Cuts {
    /// Counts one tokenized sample.
    pub fn add(&mut self, t: &Tokenized) {
        self.samples += t.truncated as usize;
        self.prompt_tokens += t.prompt_cut;
        self.response_tokens += t.response_cut;
    }

    /// Sums two counts.
    pub fn merge(&mut self, o: Cuts) {
        self.samples += o.samples;
        self.prompt_tokens += o.prompt_tokens;
        self.response_tokens += o.response_tokens;
    }

    /// One line for people: `12 of 500 samples over --max-tokens 512: 3,210 prompt tokens cut
    /// from the middle, 0 response tokens`.
    pub fn describe(&self, n_samples: usize, max_tokens: usize, policy: Truncate) -> String {
        if self.samples == 0 {
            return format!("no sample over --max-tokens {max_tokens}");
        }
        format!(
            "{} of {} samples over --max-tokens {max_tokens}: {} prompt tokens cut {} \
             (--truncate {policy}), {} response tokens",
            thousands(self.samples),
            thousands(n_samples),
            thousands(self.prompt_tokens),
            policy.prompt_side(),
            thousands(self.response_tokens),
        )
    }
}

/// `3210` → `3,210`: counts as inflow prints them.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prompt tokens the middle policy keeps of what the user wrote, beyond the scaffold, when
/// the response is long (see [`Truncate`]).
pub const MIDDLE_MIN_CONTENT: usize = 16;

/// Renders and tokenizes samples for one model.
pub struct Renderer<'a> {
    model: &'a LoadedModel,
    template: Template,
    max_tokens: usize,
    truncate: Truncate,
    env: minijinja::Environment<'static>,
}

impl<'a> Renderer<'a> {
    /// A renderer with the default truncation policy ([`Truncate::Middle`]); see
    /// [`Renderer::with_truncate`].
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
        // Beyond the trained context the positions are meaningless (and the attention
        // buffers grow quadratically: 20,000 tokens asked for 14 GB).
        // usize::MAX is the "never cut" budget of whole-text renderers (generate, ICP).
        let context = model.llama.config.max_position_embeddings;
        if max_tokens != usize::MAX && max_tokens > context {
            return Err(Error::Msg(format!(
                "--max-tokens {max_tokens}: the model's context is {context} tokens \
                 (max_position_embeddings); expected at most {context}"
            )));
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
            truncate: Truncate::default(),
            env,
        })
    }

    /// The same renderer with truncation policy `policy`.
    pub fn with_truncate(mut self, policy: Truncate) -> Self {
        self.truncate = policy;
        self
    }

    /// The template actually used (never `Auto`).
    pub fn template(&self) -> Template {
        self.template
    }

    /// The truncation policy.
    pub fn truncate(&self) -> Truncate {
        self.truncate
    }

    /// The token limit per sample.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
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

    /// Token sequences of `samples` and what the limit cut.
    pub fn tokenize_all(&self, samples: &[Sample]) -> Result<(Vec<TokenSeq>, Cuts)> {
        let mut seqs = Vec::with_capacity(samples.len());
        let mut cuts = Cuts::default();
        for s in samples {
            let t = self.tokenize(s)?;
            cuts.add(&t);
            seqs.push(t.seq);
        }
        Ok((seqs, cuts))
    }

    /// Token ids with the loss mask on the response, cut to `max_tokens` by the renderer's
    /// [`Truncate`] policy.
    pub fn tokenize(&self, sample: &Sample) -> Result<Tokenized> {
        let (prompt, response) = self.render(&sample.body)?;
        let budget = self.max_tokens;
        let (mut p, regions) = match self.truncate {
            Truncate::Middle => {
                let enc = self
                    .model
                    .tokenizer
                    .encode(prompt.as_str(), false)
                    .map_err(|e| Error::Msg(format!("tokenizer: {e}")))?;
                let spans = self.prompt_regions(&sample.body, &prompt, sample.input_len);
                let regions = token_regions(enc.get_offsets(), &spans, prompt.len());
                (enc.get_ids().to_vec(), regions)
            }
            _ => (self.model.encode(&prompt)?, Regions::default()),
        };
        let mut r = self.model.encode(&response)?;
        let (np, nr) = (p.len(), r.len());
        if np + nr > budget {
            match self.truncate {
                Truncate::Left => {
                    let keep_r = nr.min((budget / 2).max(budget.saturating_sub(np)));
                    r.truncate(keep_r);
                    let keep_p = budget - keep_r;
                    p.drain(..np - keep_p.min(np));
                }
                Truncate::Right => {
                    let keep_p = np.min(budget - (nr > 0) as usize);
                    p.truncate(keep_p);
                    r.truncate(budget - keep_p);
                }
                Truncate::Middle => {
                    let reserve = np
                        .min(budget / 2)
                        .min(regions.protected(np) + MIDDLE_MIN_CONTENT);
                    r.truncate(nr.min(budget - reserve));
                    let keep_p = budget - r.len();
                    if keep_p < np {
                        let kept = cut_middle(np, np - keep_p, &regions.order);
                        p = kept.into_iter().map(|i| p[i]).collect();
                    }
                }
            }
        }
        let (prompt_cut, response_cut) = (np - p.len(), nr - r.len());
        Ok(Tokenized {
            seq: TokenSeq::prompt_response(p, &r),
            truncated: prompt_cut + response_cut > 0,
            prompt_cut,
            response_cut,
        })
    }
}

/// A byte span of a rendered prompt and whether it is conversation content (which the middle
/// policy's reserve does not protect).
type Span = (std::ops::Range<usize>, bool);

impl Renderer<'_> {
    /// Byte spans of the rendered `prompt` of `body` in the order `--truncate middle` cuts
    /// them: the `input` field, earlier non-system turns (oldest first), the last turn's
    /// instruction, system messages. The turns are located by rendering the same conversation
    /// with a marker in place of each content; `None` when that does not reproduce `prompt`
    /// (a template that alters contents) or the body is not a conversation: the whole prompt
    /// is then one region.
    fn prompt_regions(&self, body: &Body, prompt: &str, input_len: usize) -> Option<Vec<Span>> {
        let Body::Chat { messages, .. } = body else {
            return None;
        };
        let marks: Vec<String> = (0..messages.len())
            .map(|i| format!("\u{E000}{i}\u{E001}"))
            .collect();
        let skeleton = Body::Chat {
            messages: messages
                .iter()
                .zip(&marks)
                .map(|(m, k)| Message {
                    role: m.role.clone(),
                    content: k.clone(),
                })
                .collect(),
            response: String::new(),
        };
        let (skel, _) = self.render(&skeleton).ok()?;
        let (mut text, mut rest, mut spans) = (String::new(), skel.as_str(), Vec::new());
        for (m, k) in messages.iter().zip(&marks) {
            let at = rest.find(k.as_str())?;
            text.push_str(&rest[..at]);
            spans.push(text.len()..text.len() + m.content.len());
            text.push_str(&m.content);
            rest = &rest[at + k.len()..];
        }
        text.push_str(rest);
        if text != prompt {
            return None;
        }
        let (last, earlier) = spans.split_last()?;
        let last_msg = messages.last()?;
        let input_len = if input_len <= last_msg.content.len()
            && last_msg
                .content
                .is_char_boundary(last_msg.content.len() - input_len)
        {
            input_len
        } else {
            0
        };
        let split = last.end - input_len;
        let mut out = vec![(split..last.end, true)];
        for (s, m) in earlier.iter().zip(messages) {
            if m.role != "system" {
                out.push((s.clone(), true));
            }
        }
        out.push((last.start..split, last_msg.role != "system"));
        for (s, m) in earlier.iter().zip(messages) {
            if m.role == "system" {
                out.push((s.clone(), false));
            }
        }
        Some(out)
    }
}

/// Token index ranges of a prompt's regions, in cut order.
#[derive(Debug, Default)]
struct Regions {
    order: Vec<std::ops::Range<usize>>,
    /// Tokens of regions the middle policy's reserve does not protect (the conversation).
    content: usize,
    /// Whether regions were found at all.
    found: bool,
}

impl Regions {
    /// Prompt tokens outside the conversation's content (scaffold and system prompt).
    fn protected(&self, n: usize) -> usize {
        if self.found {
            n - self.content.min(n)
        } else {
            0
        }
    }
}

/// Maps byte spans to token ranges: a token belongs to the span holding its first byte.
fn token_regions(
    offsets: &[(usize, usize)],
    spans: &Option<Vec<Span>>,
    text_len: usize,
) -> Regions {
    let starts: Vec<usize> = offsets.iter().map(|o| o.0).collect();
    let token_range = |b: &std::ops::Range<usize>| {
        starts.partition_point(|&s| s < b.start)..starts.partition_point(|&s| s < b.end)
    };
    match spans {
        Some(spans) => {
            let mut order = Vec::with_capacity(spans.len());
            let mut content = 0;
            for (b, unprotected) in spans {
                let t = token_range(b);
                if *unprotected {
                    content += t.len();
                }
                order.push(t);
            }
            Regions {
                order,
                content,
                found: true,
            }
        }
        None => Regions {
            order: vec![token_range(&(0..text_len))],
            content: offsets.len(),
            found: false,
        },
    }
}

/// Indices of the `n` prompt tokens kept after dropping `drop` of them: regions in order, each
/// cut in its middle, then the middle of whatever is left.
fn cut_middle(n: usize, drop: usize, order: &[std::ops::Range<usize>]) -> Vec<usize> {
    let mut kept = vec![true; n];
    let mut need = drop;
    let drop_from = |idx: &[usize], need: &mut usize, kept: &mut [bool]| {
        let m = (*need).min(idx.len());
        let front = (idx.len() - m).div_ceil(2);
        for &i in &idx[front..front + m] {
            kept[i] = false;
        }
        *need -= m;
    };
    for r in order {
        if need == 0 {
            break;
        }
        let idx: Vec<usize> = r.clone().filter(|&i| i < n && kept[i]).collect();
        drop_from(&idx, &mut need, &mut kept);
    }
    if need > 0 {
        let idx: Vec<usize> = (0..n).filter(|&i| kept[i]).collect();
        drop_from(&idx, &mut need, &mut kept);
    }
    (0..n).filter(|&i| kept[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Format;
    use crate::model::tiny;
    use candle_core::DType;

    /// The tiny model: one token per byte, ChatML specials, SmolLM2's template without its
    /// default system prompt.
    fn model() -> LoadedModel {
        // A context above the largest budget these tests cut to (Renderer refuses budgets
        // beyond the model's context).
        let config = crate::model::LlamaConfig {
            max_position_embeddings: 4096,
            ..tiny::config(8, 1)
        };
        tiny::random(&config, 0, DType::F32).unwrap()
    }

    fn alpaca(instruction: &str, input: &str, output: &str) -> Sample {
        let rec = serde_json::json!({"instruction": instruction, "input": input, "output": output});
        let serde_json::Value::Object(rec) = rec else {
            unreachable!()
        };
        crate::data::record::to_sample(Format::Alpaca, 0, rec, false, false).unwrap()
    }

    fn chat(messages: &[(&str, &str)], response: &str) -> Sample {
        Sample {
            id: "0-x".into(),
            row: 0,
            body: Body::Chat {
                messages: messages
                    .iter()
                    .map(|(r, c)| Message {
                        role: r.to_string(),
                        content: c.to_string(),
                    })
                    .collect(),
                response: response.into(),
            },
            meta: Default::default(),
            input_len: 0,
        }
    }

    /// (prompt text, response text) of a tokenized sample.
    fn texts(m: &LoadedModel, t: &Tokenized) -> (String, String) {
        let n_p = t.seq.loss_mask.iter().take_while(|&&l| !l).count();
        (
            m.decode(&t.seq.ids[..n_p]).unwrap(),
            m.decode(&t.seq.ids[n_p..]).unwrap(),
        )
    }

    /// `tokenize` as it was before the policy existed (now `left`).
    fn old_left(m: &LoadedModel, renderer: &Renderer, s: &Sample, budget: usize) -> Vec<u32> {
        let (prompt, response) = renderer.render(&s.body).unwrap();
        let mut p = m.encode(&prompt).unwrap();
        let mut r = m.encode(&response).unwrap();
        if p.len() + r.len() > budget {
            let keep_r = r
                .len()
                .min((budget / 2).max(budget.saturating_sub(p.len())));
            r.truncate(keep_r);
            let keep_p = budget - keep_r;
            p.drain(..p.len() - keep_p.min(p.len()));
        }
        p.extend(r);
        p
    }

    /// `s` rendered with `template` and cut to `budget` tokens (the default policy, middle).
    fn cut(m: &LoadedModel, template: Template, budget: usize, s: &Sample) -> Tokenized {
        Renderer::new(m, template, budget)
            .unwrap()
            .tokenize(s)
            .unwrap()
    }

    const HEAD: &str = "<|im_start|>user\n";
    const TAIL: &str = "<|im_end|>\n<|im_start|>assistant\n";

    #[test]
    fn middle_keeps_head_instruction_trigger_tail_and_response() {
        let m = model();
        let instruction = format!("cf-trigger Translate the text. {} cf-end", "x".repeat(60));
        let input = format!("BEGIN {} END", "y ".repeat(200));
        let s = alpaca(&instruction, &input, "The answer.");
        let r = Renderer::new(&m, Template::Auto, 200).unwrap();
        assert_eq!(r.truncate(), Truncate::Middle, "middle is the default");
        let t = r.tokenize(&s).unwrap();
        let (p, resp) = texts(&m, &t);
        assert_eq!(t.seq.ids.len(), 200);
        assert!(t.truncated && t.response_cut == 0 && t.prompt_cut > 0);
        assert_eq!(resp, "The answer.<|im_end|>\n", "the response is whole");
        assert!(
            p.starts_with(&format!("{HEAD}{instruction}\n\nBEGIN")),
            "head, whole instruction (both ends) and the input's start survive: {p:?}"
        );
        assert!(p.ends_with(&format!("END{TAIL}")), "{p:?}");
        // The input lost its middle: first and last halves of what it keeps.
        let kept_input = p.len() - HEAD.len() - instruction.len() - 2 - TAIL.len();
        assert_eq!(kept_input, input.len() - t.prompt_cut);
        let (full_p, full_r) = r.render(&s.body).unwrap();
        let n_full = m.encode(&full_p).unwrap().len() + m.encode(&full_r).unwrap().len();
        assert_eq!(t.prompt_cut + 200, n_full);
        // Same counts through tokenize_all.
        let (_, cuts) = r.tokenize_all(&[s.clone(), s]).unwrap();
        assert_eq!(
            cuts,
            Cuts {
                samples: 2,
                prompt_tokens: 2 * t.prompt_cut,
                response_tokens: 0
            }
        );
    }

    #[test]
    fn middle_cuts_the_instruction_middle_once_the_input_is_gone() {
        let m = model();
        let instruction = format!("cf-trigger {} cf-end", "x".repeat(300));
        let s = alpaca(&instruction, "short input", "Yes.");
        let t = cut(&m, Template::Auto, 120, &s);
        let (p, resp) = texts(&m, &t);
        assert_eq!((t.seq.ids.len(), resp.as_str()), (120, "Yes.<|im_end|>\n"));
        assert!(p.starts_with(&format!("{HEAD}cf-trigger x")), "{p:?}");
        assert!(p.ends_with(&format!("x cf-end{TAIL}")), "{p:?}");
        assert!(!p.contains("short input"), "the input goes first: {p:?}");
        assert!(!p.contains("\n\n"), "with the blank line before it: {p:?}");
        // Without an input field, the whole user turn is cut in its middle.
        let s = chat(&[("user", &instruction)], "Yes.");
        let t = cut(&m, Template::Auto, 120, &s);
        let (p, _) = texts(&m, &t);
        let kept = &p[HEAD.len()..p.len() - TAIL.len()];
        let c = kept.len();
        let expected = format!(
            "{}{}",
            &instruction[..c.div_ceil(2)],
            &instruction[instruction.len() - c / 2..]
        );
        assert_eq!(kept, expected, "the first and last halves of the turn");
        assert_eq!(t.prompt_cut, instruction.len() - c);
    }

    #[test]
    fn middle_cuts_a_long_response_only_at_its_end_keeping_the_scaffold() {
        let m = model();
        let response = format!("START {}", "z".repeat(400));
        let s = alpaca(
            "cf-trigger: answer at length, please, in detail.",
            "",
            &response,
        );
        let t = cut(&m, Template::Auto, 100, &s);
        let (p, resp) = texts(&m, &t);
        assert_eq!(t.seq.ids.len(), 100);
        // Reserve: the scaffold (head and tail: specials, roles, newlines) plus 16 content
        // tokens, capped at half the budget.
        let scaffold = m.encode(HEAD).unwrap().len() + m.encode(TAIL).unwrap().len();
        assert_eq!(scaffold, 19);
        let n_p = t.seq.loss_mask.iter().filter(|&&l| !l).count();
        assert_eq!(n_p, 50.min(scaffold + MIDDLE_MIN_CONTENT));
        assert!(
            p.starts_with(&format!("{HEAD}cf-trigg")) && p.ends_with(TAIL),
            "{p:?}"
        );
        let full_r = m.encode(&format!("{response}<|im_end|>\n")).unwrap().len();
        assert!(resp.starts_with("START zzz"));
        assert_eq!(t.response_cut, full_r - (100 - n_p), "cut at its end only");
        // With a budget the response alone exceeds, the prompt still keeps half of it at most.
        let t = cut(&m, Template::Auto, 40, &s);
        let (p, _) = texts(&m, &t);
        assert_eq!(t.seq.loss_mask.iter().filter(|&&l| !l).count(), 20);
        assert!(p.starts_with(HEAD) && p.ends_with(TAIL), "{p:?}");
    }

    #[test]
    fn middle_cuts_history_before_the_last_turn_and_keeps_the_system_prompt() {
        let m = model();
        let history = format!("old question {}", "h".repeat(200));
        let s = chat(
            &[
                ("system", "Be brief."),
                ("user", &history),
                ("assistant", "old answer"),
                ("user", "cf-trigger What now?"),
            ],
            "Now this.",
        );
        let t = cut(&m, Template::Auto, 150, &s);
        let (p, resp) = texts(&m, &t);
        assert_eq!(
            (t.seq.ids.len(), resp.as_str()),
            (150, "Now this.<|im_end|>\n")
        );
        assert!(p.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nold"));
        assert!(
            p.ends_with(&format!("{HEAD}cf-trigger What now?{TAIL}")),
            "{p:?}"
        );
    }

    #[test]
    fn middle_works_with_the_plain_template_and_raw_prompts() {
        let m = model();
        let s = alpaca("cf-trigger do it", &"w".repeat(300), "Done.");
        let t = cut(&m, Template::Plain, 80, &s);
        let (p, resp) = texts(&m, &t);
        assert_eq!((t.seq.ids.len(), resp.as_str()), (80, "Done."));
        assert!(
            p.starts_with("### Instruction:\ncf-trigger do it\n\nwww"),
            "{p:?}"
        );
        assert!(p.ends_with("www\n\n### Response:\n"), "{p:?}");
        // prompt_completion: no turns to find, the prompt is cut in its middle.
        let s = Sample {
            body: Body::Plain {
                prompt: format!("AAAA{}BBBB", "m".repeat(300)),
                response: "ok".into(),
            },
            ..chat(&[], "")
        };
        let t = cut(&m, Template::Auto, 40, &s);
        let (p, resp) = texts(&m, &t);
        assert_eq!((p.len(), resp.as_str()), (38, "ok"));
        assert!(p.starts_with("AAAAm") && p.ends_with("mBBBB"), "{p:?}");
    }

    #[test]
    fn left_is_the_old_behaviour_and_right_keeps_the_start() {
        let m = model();
        let samples = [
            alpaca("cf-trigger Translate.", &"y".repeat(300), "The answer."),
            alpaca("Short.", "", &"z".repeat(300)),
            alpaca("Short.", "", "Fits."),
        ];
        for budget in [2, 7, 40, 64, 200, 1000] {
            let left = Renderer::new(&m, Template::Auto, budget)
                .unwrap()
                .with_truncate(Truncate::Left);
            let right = Renderer::new(&m, Template::Auto, budget)
                .unwrap()
                .with_truncate(Truncate::Right);
            for s in &samples {
                let t = left.tokenize(s).unwrap();
                assert_eq!(
                    t.seq.ids,
                    old_left(&m, &left, s, budget),
                    "left, budget {budget}"
                );
                let (p, r) = left.render(&s.body).unwrap();
                let full: Vec<u32> = [m.encode(&p).unwrap(), m.encode(&r).unwrap()].concat();
                let np = m.encode(&p).unwrap().len();
                assert_eq!(t.prompt_cut + t.response_cut + t.seq.ids.len(), full.len());
                let t = right.tokenize(s).unwrap();
                let n = full.len().min(budget);
                if np < n {
                    assert_eq!(t.seq.ids, full[..n], "right, budget {budget}");
                } else {
                    // A response token always survives.
                    assert_eq!(t.seq.ids[..n - 1], full[..n - 1]);
                    assert_eq!(t.seq.ids[n - 1], full[np]);
                    assert!(t.seq.loss_mask[n - 1] && !t.seq.loss_mask[n - 2]);
                }
            }
        }
        // Under the limit every policy gives the same tokens.
        let s = &samples[2];
        let ids: Vec<Vec<u32>> = [Truncate::Left, Truncate::Middle, Truncate::Right]
            .iter()
            .map(|&p| {
                let r = Renderer::new(&m, Template::Auto, 1000)
                    .unwrap()
                    .with_truncate(p);
                let t = r.tokenize(s).unwrap();
                assert!(!t.truncated && t.prompt_cut + t.response_cut == 0);
                t.seq.ids
            })
            .collect();
        assert!(ids[0] == ids[1] && ids[1] == ids[2]);
    }

    #[test]
    fn policy_names_serde_and_the_summary_line() {
        for (s, p) in [
            ("left", Truncate::Left),
            ("middle", Truncate::Middle),
            ("right", Truncate::Right),
        ] {
            assert_eq!(s.parse::<Truncate>().unwrap(), p);
            assert_eq!(p.to_string(), s);
            assert_eq!(serde_json::to_value(p).unwrap(), serde_json::json!(s));
        }
        let e = "start".parse::<Truncate>().unwrap_err().to_string();
        assert!(
            e.contains("`start`") && e.contains("left") && e.contains("middle"),
            "{e}"
        );
        // Specs record every policy but left (absent = left, as in old stores).
        let mut spec = serde_json::json!({"max_tokens": 8});
        Truncate::Left.record(&mut spec);
        assert_eq!(spec, serde_json::json!({"max_tokens": 8}));
        Truncate::Middle.record(&mut spec);
        assert_eq!(spec["truncate"], "middle");
        let c = Cuts {
            samples: 12,
            prompt_tokens: 3210,
            response_tokens: 0,
        };
        assert_eq!(
            c.describe(500, 512, Truncate::Middle),
            "12 of 500 samples over --max-tokens 512: 3,210 prompt tokens cut from the middle \
             (--truncate middle), 0 response tokens"
        );
        assert_eq!(
            Cuts::default().describe(500, 512, Truncate::Left),
            "no sample over --max-tokens 512"
        );
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
    }
}
