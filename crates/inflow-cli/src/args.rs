//! Argument groups shared by several verbs (`#[command(flatten)]`), so a flag means the same
//! everywhere and is written once.

use anyhow::Result;
use clap::Args;
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
