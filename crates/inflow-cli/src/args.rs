//! Argument groups shared by several verbs (`#[command(flatten)]`), so a flag means the same
//! everywhere and is written once.

use anyhow::{bail, Result};
use clap::Args;
use inflow::data::tokens::Truncate;
use inflow::data::{Format, ReadOptions};
use inflow::index::{FeatureOptions, IndexOptions};
use inflow::store::Dtype;
use std::path::PathBuf;

/// The model a verb runs, and the adapter or checkpoint applied to it first.
#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// A .gguf file or a Hugging Face folder.
    #[arg(long = "model", value_name = "MODEL")]
    pub path: PathBuf,
    /// LoRA adapter folder (PEFT layout) or `inflow train` checkpoint applied to the model first.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

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

/// How samples become token sequences for training and evaluation: rendering, the length
/// limit and what goes over it.
#[derive(Args, Clone)]
pub(crate) struct TokenArgs {
    /// Conversation rendering: auto, chat, plain.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Longest sample in tokens; longer ones are cut (counted).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub truncate: TruncateArgs,
}

/// How an index pass writes its store: element type, shard size, micro-batch size.
#[derive(Args, Clone)]
pub(crate) struct StoreArgs {
    /// Stored element type: f16 (default, half the bytes) or f32.
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Samples per shard (the unit of atomic writes and of resumption).
    #[arg(long, default_value_t = 64)]
    pub shard_size: usize,
    /// Samples per forward/backward micro-batch (1 avoids padding; CPU gains little from more).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
}

impl StoreArgs {
    /// The library's options for indexing `input` with `features` on `threads` workers.
    pub fn index_options(
        &self,
        input: &DataArgs,
        features: FeatureOptions,
        threads: usize,
    ) -> Result<IndexOptions> {
        let dtype = match self.dtype.as_str() {
            "f16" => Dtype::F16,
            "f32" => Dtype::F32,
            d => bail!("unknown --dtype `{d}`; expected f16 or f32"),
        };
        if self.shard_size == 0 || self.batch_size == 0 {
            bail!("--shard-size and --batch-size must be positive");
        }
        Ok(IndexOptions {
            data: input.data.clone(),
            read: input.read_options()?,
            features,
            dtype,
            shard_size: self.shard_size,
            batch_size: self.batch_size,
            threads,
        })
    }
}
