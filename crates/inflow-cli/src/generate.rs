//! `inflow generate`: the model's own answers (optionally at an adapter or checkpoint) to one
//! prompt, printed, or to a file of prompts, written as a query file for `inflow score`.

use crate::progress::Bars;
use anyhow::{bail, Context, Result};
use clap::Args;
use inflow::data::tokens::Template;
use inflow::data::Format;
use inflow::pipeline::generate::{self, GenerateOptions, GenerateSummary, Prompts};
use std::path::PathBuf;

/// `inflow generate`'s arguments (its help is the `Generate` variant's).
#[derive(Args)]
pub(crate) struct GenerateArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    /// One user message: its answer goes to stdout (statistics to stderr).
    #[arg(long, conflicts_with = "prompts", required_unless_present = "prompts")]
    prompt: Option<String>,
    /// A file of prompts (.jsonl/.parquet) in any format inflow reads (chat `messages`,
    /// alpaca instruction/input, prompt/completion, or just `{"prompt": ...}`); an existing
    /// response is ignored. Needs --out.
    #[arg(long, requires = "out")]
    prompts: Option<PathBuf>,
    /// Format of --prompts: auto, alpaca, chat, prompt_completion.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Answers, one JSONL line per prompt, readable as queries by `inflow score`: the prompt's
    /// messages with the answer as the final assistant message (or prompt + completion), plus
    /// the input's id, `generated_by`, `finish_reason` and `new_tokens`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue an existing --out, skipping the prompts it already answers.
    #[arg(long, conflicts_with = "force")]
    resume: bool,
    /// Start an existing --out afresh (its answers are replaced).
    #[arg(long)]
    force: bool,
    /// Answer only the first N prompts.
    #[arg(long, value_parser = crate::bounds::count)]
    limit: Option<usize>,
    /// Most new tokens per answer (an answer also ends at eos, <|im_end|> or <|endoftext|>).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 128)]
    max_new: usize,
    /// Prompts decoded together (left-padded, through the key/value cache). The answers do
    /// not depend on it.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 8)]
    batch_size: usize,
    /// 0: greedy (argmax). Above 0: sample from softmax(logits / T).
    #[arg(long, value_parser = crate::bounds::non_negative, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling: draw from the most likely tokens holding this much probability.
    #[arg(long, value_parser = crate::bounds::share, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampling (each prompt has its own stream, keyed by its id, so a prompt's
    /// answer does not depend on the batch it is in).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Conversation rendering: auto (the model's chat template if it has one), chat, plain.
    #[arg(long, default_value = "auto")]
    template: String,
}

/// Runs `inflow generate` and prints its result.
pub(crate) fn run(a: GenerateArgs, threads: usize, json: bool) -> Result<()> {
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), None) => Prompts::Text(p.clone()),
        (None, Some(path)) => Prompts::File {
            path: path.clone(),
            format: a.format.parse::<Format>()?,
            limit: a.limit,
        },
        _ => bail!("give --prompt TEXT or --prompts FILE (with --out)"),
    };
    let single = matches!(prompts, Prompts::Text(_));
    let o = GenerateOptions {
        model: a.model.path.clone(),
        adapter: a.model.adapter.clone(),
        prompts,
        out: a.out.clone(),
        resume: a.resume,
        force: a.force,
        max_new: a.max_new,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        batch_size: a.batch_size,
        template: a.template.parse::<Template>()?,
        threads,
    };
    let s = generate::generate(&o, &Bars::default()).with_context(|| match &a.prompts {
        Some(p) => format!("generate from {}", p.display()),
        None => "generate".to_string(),
    })?;
    if single && s.out.is_none() {
        let answer = s
            .answers
            .first()
            .map(|x| x.text.clone())
            .unwrap_or_default();
        if json {
            println!(
                "{}",
                serde_json::json!({
                    "prompt": a.prompt, "answer": answer,
                    "new_tokens": s.new_tokens, "stopped": s.stopped == 1,
                    "seconds": s.wall_seconds, "cpu_seconds": s.cpu_seconds,
                    "generated_by": s.generated_by,
                })
            );
        } else {
            println!("{answer}");
            eprintln!("{}", stats(&s));
        }
        return Ok(());
    }
    crate::output::pretty(json, &s, || {
        let out = s
            .out
            .as_ref()
            .map_or(String::new(), |p| p.display().to_string());
        println!("{}; wrote {out}", stats(&s));
        if s.already_done > 0 {
            println!(
                "  {} prompts were already answered there (--resume)",
                s.already_done
            );
        }
        if !s.empty.is_empty() {
            println!(
                "  {} empty answers not written (an empty response is no query): {}",
                s.empty.len(),
                s.empty.join(", ")
            );
        }
        Ok(())
    })
}

/// "answered 16 prompts: 1024 tokens in 12.3 s wall, 24.1 s CPU, 83.2 tok/s (3 ended at a stop token)".
fn stats(s: &GenerateSummary) -> String {
    format!(
        "answered {} prompts: {} tokens in {:.2} s wall, {} CPU, {:.1} tok/s ({} ended at a stop token, {} at --max-new)",
        s.answered,
        s.new_tokens,
        s.wall_seconds,
        s.cpu_seconds.map_or("?".into(), |c| format!("{c:.2} s")),
        s.tokens_per_second,
        s.stopped,
        s.answered - s.stopped
    )
}
