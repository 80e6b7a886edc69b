//! Argument groups shared by several verbs (`#[command(flatten)]`), so a flag means the same
//! everywhere and is written once.

use anyhow::{bail, Result};
use clap::Args;
use inflow::data::tokens::{Template, Truncate};
use inflow::data::{Format, ReadOptions};
use inflow::features::Projection;
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
    #[arg(long, value_parser = crate::bounds::count)]
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

/// How samples become token sequences (for features, training, evaluation): rendering, the
/// length limit and what goes over it.
#[derive(Args, Clone)]
pub(crate) struct TokenArgs {
    /// Conversation rendering: `auto` (the model's chat template if it has one), `chat`, `plain`.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Longest sample in tokens; longer ones are cut (counted and reported, never silently).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 512)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub truncate: TruncateArgs,
}

/// How an index pass writes its store: element type, shard size, micro-batch size.
#[derive(Args, Clone)]
pub(crate) struct StoreArgs {
    /// Stored element type: f16 (default, half the bytes), f32, int8 (a quarter, one scale per
    /// row) or bit (1-bit sign sketches, 1/32; scored by popcount, ranks only)
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Samples per shard (the unit of atomic writes and of resumption).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 64)]
    pub shard_size: usize,
    /// Samples per forward/backward micro-batch (1 avoids padding; CPU gains little from more).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    pub batch_size: usize,
}

impl StoreArgs {
    /// The library's options for indexing `input` with `features` on `threads` workers.
    pub fn index_options(
        &self,
        input: &DataArgs,
        features: &FeatureArgs,
        threads: usize,
    ) -> Result<IndexOptions> {
        let dtype: Dtype = self.dtype.parse()?;
        if self.shard_size == 0 || self.batch_size == 0 {
            bail!("--shard-size and --batch-size must be positive");
        }
        Ok(IndexOptions {
            data: input.data.clone(),
            read: input.read_options()?,
            features: features.options()?,
            dtype,
            shard_size: self.shard_size,
            batch_size: self.batch_size,
            threads,
            part: None,
        })
    }
}

/// Options that define a feature vector; a store remembers them.
#[derive(Args, Clone)]
pub(crate) struct FeatureArgs {
    /// Projection: `logra` (factorized, default: P_outᵀ G P_in per layer), `dense` (Rademacher
    /// JL over the whole gradient; slow beyond small models) or `full` (exact; tiny models).
    #[arg(long, default_value = "logra")]
    pub projection: String,
    /// LoGra rank per side: each tracked layer gives rank² features.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    pub rank: usize,
    /// Output dimension of the dense projection.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8192)]
    pub dim: usize,
    /// Seed of the projection matrices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tracked Linear layers: comma-separated short names (q,k,v,o,gate,up,down) or parts of
    /// layer names (`layers.29.`, `mlp`); `all` for every block Linear.
    #[arg(long, default_value = "all")]
    pub modules: String,
    #[command(flatten)]
    pub tokens: TokenArgs,
}

impl FeatureArgs {
    /// The library's feature options.
    pub fn options(&self) -> Result<FeatureOptions> {
        let projection = match self.projection.as_str() {
            "logra" => Projection::Logra {
                rank_in: self.rank,
                rank_out: self.rank,
            },
            "dense" => Projection::Dense { dim: self.dim },
            "full" => Projection::Full,
            p => bail!("unknown --projection `{p}`; expected logra, dense or full"),
        };
        if self.rank == 0 || self.dim == 0 {
            bail!("--rank and --dim must be positive");
        }
        Ok(FeatureOptions {
            projection,
            seed: self.seed,
            modules: self.modules.clone(),
            template: self.tokens.template.parse::<Template>()?,
            max_tokens: self.tokens.max_tokens,
            truncate: self.tokens.truncate.policy()?,
            labels: Default::default(),
        })
    }
}

/// `--shard I/N` / `--part I/N`: part I (from 0) of N, for clap.
pub(crate) fn part(text: &str) -> std::result::Result<inflow::store::Part, String> {
    inflow::store::Part::parse(text, "I/N")
}
