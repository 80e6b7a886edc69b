//! Reading training and probe data: JSONL and Parquet files in the `alpaca`, `chat`,
//! `prompt_completion` and `text` formats, turned into [`Sample`]s with stable ids.
//!
//! ```text
//! file (.jsonl/.json/.parquet) ──► records (JSON objects) ──► Sample { id, row, body, meta }
//! ```
//!
//! Every sample keeps its 0-based `row` and an id `"{row}-{hash}"`, where the hash is the
//! first 8 hex characters of the sha256 of the canonical JSON of the fields the format
//! uses, so every output can be joined back to the input. Fields a format does not use
//! (such as Natural Instructions' `task`) are kept in `meta`.

mod format;
mod jsonl;
mod parquet_file;
mod record;
#[cfg(test)]
mod tests;
pub mod tokens;

use std::path::Path;

use serde_json::{Map, Value};

pub use format::Format;

use jsonl::JsonlRecords;
use parquet_file::ParquetRecords;

use crate::{Error, Result};

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

/// What a sample says: the prompt side and the response the loss is on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A conversation: `messages` is the prompt side (system/user/assistant turns before the answer), `response` the final assistant answer (loss is on it).
    Chat {
        /// The turns before the answer (at least one).
        messages: Vec<Message>,
        /// The final assistant answer.
        response: String,
    },
    /// Plain text: loss on `response` only; `prompt` may be empty (format `text`: prompt = "", response = the text).
    Plain {
        /// Text before the response (no loss on it); may be empty.
        prompt: String,
        /// The text the loss is on.
        response: String,
    },
}

impl Body {
    /// The prompt side as plain text: a conversation's messages joined by newlines.
    pub fn prompt_text(&self) -> String {
        match self {
            Body::Chat { messages, .. } => messages
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            Body::Plain { prompt, .. } => prompt.clone(),
        }
    }

    /// The text the loss is on.
    pub fn response(&self) -> &str {
        match self {
            Body::Chat { response, .. } | Body::Plain { response, .. } => response,
        }
    }
}

/// One record of an input file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    /// `"{row}-{h}"`, h = first 8 hex characters of the sha256 of the canonical JSON of the
    /// record's used fields: stable across reads, different for different content.
    pub id: String,
    /// 0-based index of the record in the file (blank JSONL lines are not records; bad
    /// records count, so rows do not move when bad ones are skipped).
    pub row: usize,
    /// The prompt side and the response.
    pub body: Body,
    /// The record's other fields (for example `task`).
    pub meta: Map<String, Value>,
    /// Bytes at the end of the last prompt message that come from the record's `input` field
    /// (alpaca renders `{instruction}\n\n{input}`: the input and the blank line before it); 0
    /// when the format has no such field.
    /// `--truncate middle` cuts this part first (see [`tokens::Truncate`]).
    #[serde(default)]
    pub input_len: usize,
}

/// How to read a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// The records' format; `Auto` decides from the first record's keys.
    pub format: Format,
    /// Skip malformed records (listed in [`ReadReport::skipped`]) instead of failing.
    pub skip_bad: bool,
    /// Stop after this many good samples.
    pub limit: Option<usize>,
}

/// What [`read_samples`] read.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadReport {
    /// The good samples, in file order.
    pub samples: Vec<Sample>,
    /// Skipped records (with `skip_bad`): 1-based line (JSONL) or row (Parquet), and why.
    pub skipped: Vec<(usize, String)>,
    /// The format the records were read as (never `Auto`).
    pub format: Format,
    /// sha256 of the whole file's bytes, lower-case hex.
    pub sha256: String,
}

/// One record as decoded from a file, before the format's checks.
pub(crate) struct RawRecord {
    /// 1-based line (JSONL) or row (Parquet), for messages.
    pub(crate) line: usize,
    /// 0-based record index.
    pub(crate) row: usize,
    /// The record's fields, or why the record could not be decoded.
    pub(crate) fields: std::result::Result<Map<String, Value>, String>,
}

/// The file types `read_samples` reads.
enum Source {
    Jsonl(JsonlRecords),
    Parquet(ParquetRecords),
}

impl Source {
    fn next_record(&mut self) -> Result<Option<RawRecord>> {
        match self {
            Source::Jsonl(r) => r.next_record(),
            Source::Parquet(r) => r.next_record(),
        }
    }
}

/// Reads every sample of a JSONL (`.jsonl`, `.json`: one object a line) or Parquet
/// (`.parquet`) file.
///
/// Errors: a malformed record gives [`Error::BadInput`] naming the file, the 1-based line
/// (or Parquet row) and what was expected, unless `opts.skip_bad` (then it is listed in
/// [`ReadReport::skipped`]; if no record is good the read fails anyway). An empty file,
/// an unknown extension, or records whose format cannot be detected are errors too.
pub fn read_samples(path: &Path, opts: &ReadOptions) -> Result<ReadReport> {
    read_records(path, opts, false)
}

/// Reads prompts to answer (for `generate`): like [`read_samples`], but a record's response
/// may be missing or empty, so the bodies' responses may be "". Besides the four formats'
/// usual keys, a record with only `instruction` reads as alpaca and one with only `prompt`
/// as prompt_completion; a `messages` list may end with a user turn (a final assistant turn
/// is the existing response). A record that [`read_samples`] reads gets the same id here.
pub fn read_prompts(path: &Path, opts: &ReadOptions) -> Result<ReadReport> {
    read_records(path, opts, true)
}

fn read_records(path: &Path, opts: &ReadOptions, prompt_only: bool) -> Result<ReadReport> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let (mut source, parquet_sha) = match ext.as_str() {
        "jsonl" | "json" => (Source::Jsonl(JsonlRecords::open(path)?), None),
        "parquet" => {
            let (records, sha) = ParquetRecords::open(path)?;
            (Source::Parquet(records), Some(sha))
        }
        _ => {
            return Err(Error::Msg(format!(
                "{}: unknown data file extension `{ext}`; expected .jsonl or .json (one JSON object a line) or .parquet",
                path.display()
            )))
        }
    };
    let messages_may_be_text = matches!(source, Source::Parquet(_));

    let mut format = (opts.format != Format::Auto).then_some(opts.format);
    if let (Some(f), Source::Parquet(p)) = (format, &source) {
        p.check_columns(f, prompt_only)?;
    }
    let limit = opts.limit.unwrap_or(usize::MAX);
    let mut samples = Vec::new();
    let mut skipped: Vec<(usize, String)> = Vec::new();
    let mut records = 0usize;
    let mut good = 0usize;
    while good < limit || format.is_none() {
        let Some(raw) = source.next_record()? else {
            break;
        };
        records += 1;
        let outcome = raw.fields.map_err(Fatal::Record).and_then(|fields| {
            let f = match format {
                Some(f) => f,
                None => {
                    let f = detect(path, raw.line, &fields, prompt_only)?;
                    if let Source::Parquet(p) = &source {
                        p.check_columns(f, prompt_only).map_err(Fatal::from)?;
                    }
                    format = Some(f);
                    f
                }
            };
            record::to_sample(f, raw.row, fields, messages_may_be_text, prompt_only)
                .map_err(Fatal::Record)
        });
        match outcome {
            Ok(sample) => {
                if good < limit {
                    samples.push(sample);
                }
                good += 1;
            }
            Err(Fatal::Error(e)) => return Err(e),
            Err(Fatal::Record(reason)) => {
                if !opts.skip_bad {
                    return Err(Error::BadInput {
                        path: path.to_path_buf(),
                        line: raw.line,
                        msg: reason,
                    });
                }
                skipped.push((raw.line, reason));
            }
        }
    }
    if records == 0 {
        return Err(Error::Msg(format!(
            "{}: empty file: no records (expected {})",
            path.display(),
            if messages_may_be_text {
                "at least one row"
            } else {
                "one JSON object a line"
            }
        )));
    }
    if good == 0 && limit > 0 {
        if let Some((line, reason)) = skipped.first() {
            return Err(Error::BadInput {
                path: path.to_path_buf(),
                line: *line,
                msg: format!(
                    "no good record: all {} were bad; the first: {reason}",
                    skipped.len()
                ),
            });
        }
    }
    let sha256 = match (source, parquet_sha) {
        (_, Some(sha)) => sha,
        (Source::Jsonl(r), None) => r.finish()?,
        (Source::Parquet(_), None) => {
            return Err(Error::Msg("internal: parquet hash missing".to_string()))
        }
    };
    let format = format.ok_or_else(|| {
        Error::Msg(format!(
            "{}: could not resolve the data format",
            path.display()
        ))
    })?;
    Ok(ReadReport {
        samples,
        skipped,
        format,
        sha256,
    })
}

/// Why a record failed: its own fault (skippable) or the whole file's.
enum Fatal {
    Record(String),
    Error(Error),
}

impl From<Error> for Fatal {
    fn from(e: Error) -> Self {
        Fatal::Error(e)
    }
}

/// Format auto-detection from a record's keys; failing it is an error for the whole file.
fn detect(
    path: &Path,
    line: usize,
    fields: &Map<String, Value>,
    prompt_only: bool,
) -> std::result::Result<Format, Fatal> {
    let keys = fields.keys().map(String::as_str);
    let found = if prompt_only {
        Format::detect_prompt(keys)
    } else {
        Format::detect(keys)
    };
    found.ok_or_else(|| {
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        if prompt_only {
            return Fatal::Error(Error::BadInput {
                path: path.to_path_buf(),
                line,
                msg: format!(
                    "cannot detect the prompt format from keys [{}]: expected messages (chat), instruction (alpaca; output optional), prompt (completion optional) or text; name the format explicitly",
                    keys.join(", ")
                ),
            });
        }
        Fatal::Error(Error::BadInput {
            path: path.to_path_buf(),
            line,
            msg: format!(
                "cannot detect the data format from keys [{}]: expected instruction+output (alpaca), messages (chat), prompt+completion (prompt_completion) or text (text); name the format explicitly",
                keys.join(", ")
            ),
        })
    })
}
