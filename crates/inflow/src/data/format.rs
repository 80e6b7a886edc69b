//! The record formats inflow reads, their names, and auto-detection from a record's keys.

use std::fmt;
use std::str::FromStr;

/// The shape of one input record.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Decide from the first record's keys (see [`Format::detect`]).
    #[default]
    Auto,
    /// `{instruction, input, output}`; `input` is optional and may be empty.
    Alpaca,
    /// `{messages: [{role, content}, ...]}` ending with the assistant's answer.
    Chat,
    /// `{prompt, completion}`.
    PromptCompletion,
    /// `{text}`: the whole text is the response (loss on all of it).
    Text,
}

/// The names accepted by [`Format::from_str`], in the order they are listed to users.
const NAMES: &str = "auto, alpaca, chat, prompt_completion, text";

impl Format {
    /// The canonical name: `auto`, `alpaca`, `chat`, `prompt_completion` or `text`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Alpaca => "alpaca",
            Format::Chat => "chat",
            Format::PromptCompletion => "prompt_completion",
            Format::Text => "text",
        }
    }

    /// Decides the format from the keys of a record: `instruction` + `output` → alpaca,
    /// `messages` → chat, `prompt` + `completion` → prompt_completion, `text` → text
    /// (first match wins). `None` when no rule matches.
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Format> {
        let keys: Vec<&str> = keys.into_iter().collect();
        let has = |k: &str| keys.contains(&k);
        if has("instruction") && has("output") {
            Some(Format::Alpaca)
        } else if has("messages") {
            Some(Format::Chat)
        } else if has("prompt") && has("completion") {
            Some(Format::PromptCompletion)
        } else if has("text") {
            Some(Format::Text)
        } else {
            None
        }
    }

    /// [`Format::detect`] for a file of prompts to answer, where responses may be missing:
    /// when no rule matches, `instruction` → alpaca and `prompt` → prompt_completion.
    pub fn detect_prompt<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Format> {
        let keys: Vec<&str> = keys.into_iter().collect();
        Format::detect(keys.iter().copied()).or_else(|| {
            if keys.contains(&"instruction") {
                Some(Format::Alpaca)
            } else if keys.contains(&"prompt") {
                Some(Format::PromptCompletion)
            } else {
                None
            }
        })
    }

    /// The fields a prompt of this format must have (the response is optional).
    pub fn required_prompt_fields(self) -> &'static [&'static str] {
        match self {
            Format::Alpaca => &["instruction"],
            Format::PromptCompletion => &["prompt"],
            other => other.fields(),
        }
    }

    /// The fields a record of this format uses (all others go to `meta`). Empty for `Auto`.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Format::Auto => &[],
            Format::Alpaca => &["instruction", "input", "output"],
            Format::Chat => &["messages"],
            Format::PromptCompletion => &["prompt", "completion"],
            Format::Text => &["text"],
        }
    }

    /// The fields a record of this format must have (`input` of alpaca is optional).
    pub fn required_fields(self) -> &'static [&'static str] {
        match self {
            Format::Alpaca => &["instruction", "output"],
            other => other.fields(),
        }
    }

    /// What a record of this format looks like, for error messages.
    pub fn expectation(self) -> &'static str {
        match self {
            Format::Auto => "format auto expects the keys of one of alpaca {instruction, input, output}, chat {messages}, prompt_completion {prompt, completion} or text {text}",
            Format::Alpaca => "format alpaca expects {instruction, input, output}",
            Format::Chat => "format chat expects {messages: [{role, content}, ...]} ending with an assistant message",
            Format::PromptCompletion => "format prompt_completion expects {prompt, completion}",
            Format::Text => "format text expects {text}",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = crate::Error;

    /// Parses a format name (case-insensitive; `prompt-completion` is accepted too).
    fn from_str(s: &str) -> crate::Result<Format> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Format::Auto),
            "alpaca" => Ok(Format::Alpaca),
            "chat" => Ok(Format::Chat),
            "prompt_completion" | "prompt-completion" => Ok(Format::PromptCompletion),
            "text" => Ok(Format::Text),
            _ => Err(crate::Error::Msg(format!(
                "unknown data format `{s}`; expected one of: {NAMES}"
            ))),
        }
    }
}
