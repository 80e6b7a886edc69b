//! Argument groups shared by several verbs (`#[command(flatten)]`), so a flag means the same
//! everywhere and is written once.

use anyhow::Result;
use clap::Args;
use inflow::data::tokens::Truncate;
use inflow::data::{Format, ReadOptions};
use std::path::PathBuf;

/// The data a verb reads: file, format, how many samples, and what to do with bad records.
#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Training data: .jsonl or .parquet.
    #[arg(long)]
    pub data: PathBuf,
    /// Data format: auto, alpaca, chat, prompt_completion, text.
    #[arg(long, default_value = "auto")]
    pub format: String,
    /// Use only the first N samples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Skip malformed records (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
}

impl DataArgs {
    /// How the library reads the file.
    pub fn read_options(&self) -> Result<ReadOptions> {
        Ok(ReadOptions {
            format: self.format.parse::<Format>()?,
            skip_bad: self.skip_bad,
            limit: self.limit,
        })
    }
}

/// What goes when a sample is over `--max-tokens` (written once for every verb that cuts).
#[derive(Args, Clone)]
pub(crate) struct TruncateArgs {
    /// Over --max-tokens: `middle` keeps the template head and tail, the instruction and the
    /// whole response (unless it alone is over the limit) and cuts the prompt's middle, the
    /// `input` field first; `left` cuts the prompt's start (what stores and runs made before
    /// this option used); `right` keeps the start and cuts the end.
    #[arg(
        long = "truncate",
        default_value = "middle",
        value_name = "left|middle|right"
    )]
    pub truncate: String,
}

impl TruncateArgs {
    /// The library's policy.
    pub fn policy(&self) -> Result<Truncate> {
        Ok(self.truncate.parse::<Truncate>()?)
    }
}

/// The items of a comma-separated flag (`--methods a,b`), trimmed, empty ones dropped.
pub(crate) fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(String::from)
        .collect()
}
