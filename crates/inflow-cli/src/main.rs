//! The `inflow` command line: argument parsing, progress bars and printing around the
//! inflow library.

mod args;
mod bench;
mod bounds;
mod demo;
mod encoder;
mod generate;
mod lds;
mod output;
mod planted;
mod probe;
mod progress;
mod scores_cmd;
mod select;
mod selection_eval;
mod serve;
mod show;
mod store_cmd;
mod train;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Parser, Subcommand};
use inflow::data::Format;
use inflow::model::LoadedModel;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// inflow: which training data taught a language model a behaviour, and which data is worth
/// training on.
///
/// Typical use: `index` a training set (per-sample gradient features into a store), then
/// `score` queries against it (which training samples most resemble, in gradient space,
/// what the model does on the query). `demo` runs both on the bundled data.
#[derive(Parser)]
#[command(name = "inflow", version, about, long_about)]
struct Cli {
    /// Worker threads (default: all cores). Each worker runs the model single-threaded on its
    /// own samples, which is faster on CPU than splitting one matrix product.
    #[arg(long, value_parser = crate::bounds::count, global = true)]
    threads: Option<usize>,
    /// Print a machine-readable JSON result on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Describe a model: architecture, size, tokenizer, chat template.
    Inspect {
        /// A .gguf file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
    },
    /// Per-token log-probabilities of a text under the model, and its perplexity.
    Logprob {
        #[arg(long)]
        model: PathBuf,
        /// The text to score (tokens are predicted left to right; the first is context).
        #[arg(long)]
        text: String,
    },
    /// The model's answers (optionally at an adapter or checkpoint) to one --prompt, printed,
    /// or to a file of --prompts, written as a query file for `score`: batched greedy or
    /// seeded sampled decoding through the key/value cache; resumable.
    Generate(generate::GenerateArgs),
    /// Write a GGUF model as a Hugging Face folder (f32 safetensors, tokenizer.json, config.json).
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Write over the files of an existing, non-empty OUT.
        #[arg(long)]
        force: bool,
    },
    /// Compute per-sample gradient features of a training set into a store (resumable).
    Index(IndexArgs),
    /// Score queries against a store: which training samples are most similar in gradient space.
    Score(ScoreArgs),
    /// Value training samples against probe tasks without gradients: in-context probing (ICP)
    /// or one-step fine-tuning. Resumable; writes scores.parquet and scores_by_task.parquet.
    Probe(probe::ProbeArgs),
    /// Rank agreement of two score files (Spearman, Kendall, top-k overlap) and a scatter plot.
    Compare(probe::CompareArgs),
    /// Fit K-FAC and EK-FAC curvature for a store, on the empirical Fisher of its gradients or
    /// on the true Fisher (Gauss–Newton) from sampled labels (at the store's adapter or
    /// checkpoint, if any), for `score --method influence`.
    Fit(FitArgs),
    /// List every scoring method: its name, what it needs, what it computes.
    Methods,
    /// Index the bundled Natural Instructions sample and score the bundled probes.
    Demo(demo::DemoArgs),
    /// Select training samples: top-k / top-p% by score (LESS per-task max from a full
    /// matrix), G-DIG (seed-set quality + k-means diversity) or an ICP threshold; writes them
    /// in the input's format plus a manifest.
    Select(select::SelectArgs),
    /// Fine-tune with LoRA (default) or fully; checkpoints resume bit for bit (--resume).
    Train(train::TrainArgs),
    /// Mean response-token loss of a data file, optionally with --adapter.
    EvalLoss(train::EvalLossArgs),
    /// Merge an adapter or checkpoint into the model and write a Hugging Face folder.
    Export(train::ExportArgs),
    /// Operations on a store: `compress` makes a compact copy (seeded projection, int8 or
    /// 1-bit signs) that scores in a fraction of the time and disk; `merge` joins part stores.
    Store {
        #[command(subcommand)]
        what: StoreWhat,
    },
    /// Operations on score files: `merge` joins the partial files of `score --part I/N`.
    Scores {
        #[command(subcommand)]
        what: ScoresWhat,
    },
    /// The amortized encoder (Influcoder): distil a gradient store into a forward-only
    /// encoder (`encoder train`), then `encode` data with it.
    Encoder {
        #[command(subcommand)]
        what: encoder::EncoderWhat,
    },
    /// Encode data with a trained encoder into an ordinary store (forward only, resumable):
    /// `score`, `select` and `compare` use it like an index store.
    Encode(encoder::EncodeArgs),
    /// A local web page to explore a store's attributions: overview, each query's top
    /// training samples per method side by side, each sample's reverse lookup, live queries
    /// (with --model) and selections downloaded in the input's format. Loopback only unless
    /// --host is given; every asset is embedded (no network needed).
    Serve(serve::ServeArgs),
    /// Throughput benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Evaluations that check attribution and selection against ground truth.
    Eval {
        #[command(subcommand)]
        what: EvalWhat,
    },
}

#[derive(Subcommand)]
enum StoreWhat {
    /// A compact copy of a store: each row projected to --dim with a seeded Rademacher matrix
    /// (Johnson–Lindenstrauss), then cast to --dtype. Streamed and resumable; `score` maps the
    /// queries the same way, and `score --rerank K` rescores candidates on this parent.
    Compress(store_cmd::CompressArgs),
    /// Join the part stores of `index --shard I/N` (or `encode --shard`) into one store: checks
    /// that the parts share one spec and cover every row once, then hard-links their shards
    /// (copies across filesystems) under one manifest. Equal, row for row, to one process's
    /// store; K-FAC token statistics and RepSim sub-stores are merged too.
    Merge(store_cmd::MergeArgs),
}

#[derive(Subcommand)]
enum ScoresWhat {
    /// Join partial score files of `score --part I/N` (all top-k or per-sample .parquet, or all
    /// --full .npy) into the file one `score` over the whole store writes: exact, with checks
    /// that the parts come from one run and cover every row once.
    Merge(scores_cmd::MergeArgs),
}

#[derive(Subcommand)]
enum EvalWhat {
    /// Plant a backdoor, abusive responses or flipped labels, fine-tune on the mix, and report
    /// how well each method retrieves the planted samples (Acc, Cover, AUC).
    Planted(planted::PlantedArgs),
    /// Fine-tune on each method's selection, on random subsets of the same size and on the
    /// full pool; compare held-out loss, exact match and ROUGE-L on the target tasks.
    Selection(selection_eval::SelectionEvalArgs),
    /// Linear datamodeling score (Park et al. 2023): retrain LoRA on M random subsets and
    /// correlate, per query, Σ_{z∈S} score(z, q) with the negated query loss.
    Lds(lds::LdsArgs),
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Training steps on the reference model (LoRA and full fine-tuning): tokens/s and
    /// GFLOP/s beside this machine's measured GEMM GFLOP/s.
    Train(train::BenchTrainArgs),
    /// Influence at scale: fit EK-FAC and score queries against a store of synthetic LoGra
    /// features shaped like SmolLM2's (210 layers × rank²), beside this machine's GEMM rate.
    Influence {
        /// Training rows in the store.
        #[arg(long, value_parser = crate::bounds::count, default_value_t = 10_000)]
        samples: usize,
        /// Queries scored.
        #[arg(long, value_parser = crate::bounds::count, default_value_t = 1_000)]
        queries: usize,
        /// LoGra rank per side (dim = 210 · rank²).
        #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
        rank: usize,
        /// Scratch folder for the store (removed afterwards).
        #[arg(long, default_value = "runs/bench-influence")]
        out: PathBuf,
    },
    /// Per-sample gradient features on the reference model: tokens/s, samples/s, GFLOP/s
    /// beside this machine's measured GEMM GFLOP/s, peak RSS, bytes per sample.
    Features(bench::FeaturesArgs),
    /// Exact top-k scoring at scale on a synthetic store (seeded, written once, streamed):
    /// rows/s, GB/s, GOP/s and peak RSS beside this machine's file read, memory bandwidth,
    /// f32 GEMM and int8 peak, all measured in the same run.
    Score(bench::ScoreArgs),
    /// `encode` against `index` on the same samples in the same run, interleaved: samples/s,
    /// tokens/s, wall and CPU seconds, bytes per sample and the speed-up.
    Encode(encoder::BenchArgs),
}

#[derive(Args)]
struct IndexArgs {
    #[command(flatten)]
    model: crate::args::ModelArgs,
    #[command(flatten)]
    input: crate::args::DataArgs,
    /// Store folder; rerunning the same command resumes it.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    features: crate::args::FeatureArgs,
    #[command(flatten)]
    store: crate::args::StoreArgs,
    /// Features of the LoRA parameters (A and B of every adapter) instead of the base Linears.
    #[arg(long)]
    lora_grads: bool,
    /// With --lora-grads: LESS's Adam-update features Γ = m'/(√v'+ε) from the checkpoint's
    /// optimizer moments (use --projection dense).
    #[arg(long)]
    adam: bool,
    /// One store per checkpoint (--out/{checkpoint}), each recording its step and learning rate.
    #[arg(long, num_args = 1..)]
    checkpoints: Vec<PathBuf>,
    /// Index only part I of N (counted from 0: contiguous whole shards, so row ids do not
    /// change) into a part store; `inflow store merge` joins the parts. One task's share
    /// under Ray, a Slurm array or a Kubernetes Indexed Job.
    #[arg(long, value_name = "I/N", value_parser = crate::args::part)]
    shard: Option<inflow::store::Part>,
}

#[derive(Args)]
struct ScoreArgs {
    /// Store made by `inflow index`.
    #[arg(long)]
    store: PathBuf,
    /// Query samples (.jsonl/.parquet), whose features are computed with the store's settings;
    /// or a store `inflow index` made of them (same model and settings), computed once.
    #[arg(long)]
    queries: PathBuf,
    /// Query data format.
    #[arg(long, default_value = "auto")]
    format: String,
    /// Method (default cosine): any name of `inflow methods`.
    #[arg(long, default_value = "cosine", long_help = method_help())]
    method: String,
    /// Training samples kept per query.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 10)]
    top_k: usize,
    /// Parquet output (query_id, train_id, score, rank, method); default: STORE/scores-METHOD.parquet.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the dense queries × train score matrix as .npy here.
    #[arg(long)]
    full: Option<PathBuf>,
    /// Replace --out / --full (and their sidecars) if they exist.
    #[arg(long)]
    force: bool,
    /// Model override (default: the one the store was built with, from run.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Score only the first N queries.
    #[arg(long, value_parser = crate::bounds::count)]
    limit: Option<usize>,
    /// Inverse-Hessian approximation for --method influence: identity, kfac, ekfac (both need
    /// `inflow fit` first), datainf, lissa, exact (small feature dims only).
    #[arg(long, default_value = "ekfac")]
    preconditioner: String,
    /// Damping, relative: λ_l = damping × the mean eigenvalue of layer l's (approximate) Fisher.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 0.1)]
    damping: f64,
    /// LiSSA's maximum iterations per query.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 300)]
    lissa_iters: usize,
    /// LiSSA's tolerance: a query stops once its relative change guarantees (full batch) a
    /// relative error ≤ tol, and counts as converged if also ‖(H+λI)x−g‖/‖g‖ ≤ tol.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 1e-2)]
    lissa_tol: f64,
    /// LiSSA mini-batch (training rows per Hessian-vector product).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 64)]
    lissa_batch: usize,
    /// Write one score per training sample instead of top-k lists: `mean` over the queries
    /// (e.g. gradient similarity to a whole probe set, to compare with ICP); `none` keeps
    /// top-k per query also for LESS (whose default is its per-task max).
    #[arg(long)]
    aggregate: Option<String>,
    /// Queries shown in the printed table.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 5)]
    show: usize,
    /// On a compact store (`inflow store compress`): take each query's best K candidates
    /// from it, then rescore them exactly on the full-precision parent store.
    #[arg(long, value_parser = crate::bounds::count)]
    rerank: Option<usize>,
    /// Score only part I of N of the store's shards (as `index --shard` splits them) and write
    /// a partial result (top-k with `train_row`, or --aggregate/--full over the part's rows);
    /// `inflow scores merge` joins the parts exactly.
    #[arg(long, value_name = "I/N", value_parser = crate::args::part)]
    part: Option<inflow::store::Part>,
}

/// `score --method`'s long help, from the registry.
fn method_help() -> String {
    format!(
        "Scoring method. Each line: name [what it needs] what it computes.\n{}",
        inflow::methods::describe()
    )
}

fn main() {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // rayon's pool (score blocks) gets every thread; candle's CPU ops run single-threaded
    // (it reads RAYON_NUM_THREADS at each matmul) because its pool spins at barriers and slows
    // down badly on shared cores (STACK.md): instead, index workers split the samples.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    std::env::set_var("RAYON_NUM_THREADS", "1");
    if let Err(e) = run(cli, threads) {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

/// The error chain as one line (multi-line library messages joined with "; "). A cause whose
/// text the message already ends with (the OS error of an I/O error that names its file) is
/// not said twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for c in e.chain() {
        let text = c
            .to_string()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli, threads: usize) -> Result<()> {
    let json = cli.json;
    match cli.cmd {
        Cmd::Inspect { model } => inspect(&model, json),
        Cmd::Logprob { model, text } => logprob(&model, &text, json),
        Cmd::Generate(a) => generate::run(a, threads, json),
        Cmd::Convert { model, out, force } => {
            inflow::output_guard::check_output_dir("--out", &out, force)?;
            let m = load_model(&model)?;
            inflow::model::hf::save_dir(&m, &out)?;
            if json {
                println!("{}", serde_json::json!({"out": out, "model": model}));
            } else {
                println!("wrote {} (config.json, model.safetensors, tokenizer.json, tokenizer_config.json)", out.display());
            }
            Ok(())
        }
        Cmd::Index(a)
            if a.model.adapter.is_some() || a.lora_grads || a.adam || !a.checkpoints.is_empty() =>
        {
            train::index_checkpoints(a, threads, json)
        }
        Cmd::Index(a) => index(a, threads, json).map(|_| ()),
        Cmd::Score(a) => score(a, threads, json).map(|_| ()),
        Cmd::Fit(a) => fit(a, threads, json),
        Cmd::Probe(a) => probe::probe(a, threads, json),
        Cmd::Compare(a) => probe::compare_cmd(a, json),
        Cmd::Methods => {
            if json {
                let v: Vec<serde_json::Value> = inflow::methods::names()
                    .iter()
                    .filter_map(|n| inflow::methods::by_name(n).ok())
                    .map(|m| serde_json::json!({"name": m.name(), "needs": m.needs(), "about": m.about()}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", inflow::methods::describe());
            }
            Ok(())
        }
        Cmd::Demo(a) => demo::run(a, threads, json),
        Cmd::Serve(a) => serve::run(a, threads),
        Cmd::Select(a) => select::select(a, threads, json),
        Cmd::Train(a) => train::train(a, threads, json),
        Cmd::EvalLoss(a) => train::eval_loss(a, threads, json),
        Cmd::Export(a) => train::export(a, json),
        Cmd::Eval { what } => match what {
            EvalWhat::Planted(a) => planted::run(a, threads, json),
            EvalWhat::Selection(a) => selection_eval::run(a, threads, json),
            EvalWhat::Lds(a) => lds::run(a, threads, json),
        },
        Cmd::Encoder { what } => encoder::run(what, threads, json),
        Cmd::Encode(a) => encoder::encode(a, threads, json),
        Cmd::Scores { what } => match what {
            ScoresWhat::Merge(a) => scores_cmd::merge(a, json),
        },
        Cmd::Store { what } => match what {
            StoreWhat::Compress(a) => store_cmd::compress(a, json),
            StoreWhat::Merge(a) => store_cmd::merge(a, json),
        },
        Cmd::Bench { what } => match what {
            BenchWhat::Features(a) => bench::features(a, threads, json),
            BenchWhat::Score(a) => bench::score(a, threads, json),
            BenchWhat::Train(a) => train::bench(a, threads, json),
            BenchWhat::Encode(a) => encoder::bench(a, threads, json),
            BenchWhat::Influence {
                samples,
                queries,
                rank,
                out,
            } => bench::influence(samples, queries, rank, &out, threads, json),
        },
    }
}

pub(crate) fn load_model(path: &Path) -> Result<LoadedModel> {
    Ok(inflow::pipeline::score::load_model(
        path,
        &progress::Bars::default(),
    )?)
}

fn inspect(path: &Path, json: bool) -> Result<()> {
    let m = load_model(path)?;
    let c = &m.llama.config;
    let layers = m.llama.linears();
    let out = serde_json::json!({
        "path": path,
        "kind": m.source.kind,
        "sha256": m.source.sha256,
        "architecture": "llama",
        "config": c,
        "n_params": m.llama.n_params(),
        "tracked_linears": layers.len(),
        "linear_params": layers.iter().map(|l| l.d_in * l.d_out).sum::<usize>(),
        "vocab_size_tokenizer": m.tokenizer.get_vocab_size(true),
        "chat_template": m.chat_template.is_some(),
        "bos_token": m.bos_token,
        "eos_token": m.eos_token,
    });
    crate::output::pretty(json, &out, || {
        println!("model        {} ({})", path.display(), m.source.kind);
        println!("sha256       {}", m.source.sha256);
        println!(
            "architecture llama: {} layers, hidden {}, {} query / {} key-value heads (head dim {}), MLP {}, vocab {}",
            c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim(), c.intermediate_size, c.vocab_size
        );
        println!(
            "             RoPE base {}, RMSNorm eps {:e}, tied embeddings: {}",
            c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings
        );
        println!(
            "parameters   {:.1} M ({} block Linears with {:.1} M weights: the gradient features' source)",
            m.llama.n_params() as f64 / 1e6,
            layers.len(),
            layers.iter().map(|l| l.d_in * l.d_out).sum::<usize>() as f64 / 1e6
        );
        println!(
            "tokenizer    {} tokens; chat template: {}; bos {:?}, eos {:?}",
            m.tokenizer.get_vocab_size(true),
            if m.chat_template.is_some() {
                "yes"
            } else {
                "no"
            },
            m.bos_token,
            m.eos_token
        );
        Ok(())
    })
}

fn logprob(path: &Path, text: &str, json: bool) -> Result<()> {
    let m = load_model(path)?;
    let ids = m.encode(text)?;
    if ids.len() < 2 {
        bail!(
            "--text must have at least two tokens (it has {})",
            ids.len()
        );
    }
    let lp = m.llama.token_logprobs(&ids)?;
    let total: f64 = lp.iter().map(|&x| x as f64).sum();
    let ppl = (-total / lp.len() as f64).exp();
    let tokens: Vec<String> = ids
        .iter()
        .map(|&i| m.decode(&[i]).unwrap_or_default())
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tokens": tokens, "ids": ids, "logprobs": lp,
                "sum_logprob": total, "n_predicted": lp.len(), "perplexity": ppl,
            })
        );
    } else {
        println!("{:>4}  {:>10}  token", "pos", "log p");
        println!("{:>4}  {:>10}  {:?}", 0, "(context)", tokens[0]);
        for (i, l) in lp.iter().enumerate() {
            println!("{:>4}  {:>10.4}  {:?}", i + 1, l, tokens[i + 1]);
        }
        println!(
            "{} tokens, sum log p = {:.4}, perplexity = {:.4}",
            ids.len(),
            total,
            ppl
        );
    }
    Ok(())
}

// `inflow fit`'s arguments (its help is the `Fit` variant's).
#[derive(Args)]
struct FitArgs {
    /// Store made by `inflow index` (LoGra or full projection).
    #[arg(long)]
    store: PathBuf,
    /// Kronecker factors from `samples` (the marginals E[GᵀG], E[GGᵀ] of the per-sample
    /// gradients, from the store; default: in every cell of the tiny-model grid their
    /// EK-FAC ranks closer to the exact inverse) or `tokens` (the textbook K-FAC
    /// covariances E[x xᵀ], E[δ δᵀ] summed by index in its model pass).
    #[arg(long, default_value = "samples")]
    factors: String,
    /// Which Fisher to approximate: `empirical` (the stored training gradients; no model
    /// pass) or `true` (labels sampled from the model, = the Gauss–Newton matrix; one more
    /// model pass per --draws, indexed under STORE/fisher/ and resumable). Every
    /// preconditioner of the store (kfac, ekfac, datainf, lissa, exact) then uses it.
    #[arg(long, default_value = "empirical")]
    fisher: String,
    /// Sampled-label passes for --fisher true.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    draws: usize,
    /// Model for --fisher true (default: the one in the store's run.json).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Samples per model pass for --fisher true (1 avoids padding; on SmolLM2, batch 4 took
    /// 1.9x the time and 3.5x the memory of batch 1).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    batch_size: usize,
}

/// `inflow fit`: K-FAC/EK-FAC factors on the empirical or the true Fisher.
fn fit(a: FitArgs, threads: usize, json: bool) -> Result<()> {
    let t = Instant::now();
    let o = inflow::pipeline::fit::FitOptions {
        store: a.store,
        factors: a.factors.parse()?,
        fisher: a.fisher.parse()?,
        draws: a.draws,
        model: a.model,
        batch_size: a.batch_size,
        threads,
    };
    let f = inflow::pipeline::fit::fit(&o, &progress::Bars::default())?;
    let secs = t.elapsed().as_secs_f64();
    crate::output::line(
        json,
        &serde_json::json!({"out": f.out, "fisher": f.fisher, "seconds": secs}),
        || {
            println!(
                "fitted K-FAC and EK-FAC on the {} Fisher of {} samples in {secs:.2} s: {}",
                f.fisher,
                f.n_samples,
                f.out.display()
            );
            Ok(())
        },
    )
}

pub(crate) fn index(
    a: IndexArgs,
    threads: usize,
    json: bool,
) -> Result<inflow::index::IndexSummary> {
    let model = load_model(&a.model.path)?;
    let mut opts = a.store.index_options(&a.input, &a.features, threads)?;
    opts.part = a.shard;
    let index = || {
        let bars = progress::Bars::default();
        Ok(inflow::pipeline::index::index(
            &model, &opts, &a.out, "index", &bars,
        )?)
    };
    crate::output::store_written(json, &a.out, index, |summary, secs| {
        let head = crate::output::stored("indexed", &a.out, summary, secs);
        println!("{head}, {} bad records skipped", summary.n_skipped_bad);
        println!(
            "  {}{}",
            summary.cuts.describe(
                summary.n_written,
                a.features.tokens.max_tokens,
                summary.truncate
            ),
            if summary.shards_reused > 0 {
                " (in the shards written now)"
            } else {
                ""
            }
        );
        Ok(())
    })
}

pub(crate) use inflow::pipeline::score::ScoreOutput;

pub(crate) fn score(a: ScoreArgs, threads: usize, json: bool) -> Result<ScoreOutput> {
    let o = inflow::pipeline::score::ScoreOptions {
        store: a.store.clone(),
        queries: a.queries.clone(),
        format: a.format.parse::<Format>()?,
        limit: a.limit,
        method: a.method.clone(),
        options: inflow::methods::Options {
            preconditioner: a.preconditioner.clone(),
            curvature: inflow::curvature::Options {
                damping: a.damping,
                lissa_iters: a.lissa_iters,
                lissa_batch: a.lissa_batch,
                lissa_tol: a.lissa_tol,
                seed: 0,
            },
            rerank: a.rerank,
            part: a.part,
            ..Default::default()
        },
        top_k: a.top_k,
        out: a.out.clone(),
        force: a.force,
        full: a.full.clone(),
        model: a.model.clone(),
        aggregate: a.aggregate.as_deref().map(str::parse).transpose()?,
        threads,
    };
    let so = inflow::pipeline::score::score(&o, &progress::Bars::default())?;
    match (
        &so.per_train,
        so.report.as_ref().and_then(|r| r.get("checkpoints")),
    ) {
        // One score per training sample (LESS's per-task max, --aggregate mean).
        (Some(_), Some(c)) => show::checkpoint_listing(&so, c, a.top_k, json)?,
        _ if json => println!("{}", serde_json::to_string_pretty(&show::json(&so))?),
        _ => {
            show::table(&so, a.show);
            println!(
                "wrote {} ({} queries × top {}; sign: {})",
                so.out.display(),
                so.query_ids.len(),
                a.top_k,
                &so.sign_convention
            );
        }
    }
    if let Some(full) = &so.full {
        if !json {
            println!(
                "wrote {} ({} × {} float32; query ids in {})",
                full.display(),
                so.query_ids.len(),
                so.train_ids.len(),
                full.with_extension("json").display()
            );
        }
    }
    Ok(so)
}

/// The repository's bundled assets folder, found from the working directory or the source tree.
pub(crate) fn assets_dir() -> Result<PathBuf> {
    for base in [
        PathBuf::from("."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    ] {
        let p = base.join("assets/data");
        if p.join("train.jsonl").exists() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "assets/data/train.jsonl not found: run inflow from the repository root"
    ))
}

/// `model`, or the default reference model when none is given.
pub(crate) fn model_or_default(model: Option<PathBuf>) -> Result<PathBuf> {
    model.map_or_else(default_model, Ok)
}

/// The default reference model path.
pub(crate) fn default_model() -> Result<PathBuf> {
    for base in [
        PathBuf::from("."),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    ] {
        let p = base.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf not found: run ./scripts/fetch-model.sh first"
    ))
}
