//! `inflow probe` (in-context probing or one-step fine-tuning against a probe set) and
//! `inflow compare` (rank agreement of two score files, with a scatter plot).

use anyhow::{bail, Result};
use clap::Args;
use inflow::eval::compare::{compare, ScoreFile};
use inflow::pipeline::probe::{ProbeKind, ProbeOptions};
use inflow::probe::icp::DemoTemplate;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ProbeArgs {
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    input: crate::args::DataArgs,
    /// Probe tasks: samples (q_j, a_j) with an optional `task` field.
    #[arg(long)]
    probes: PathBuf,
    /// Keep the first N probes of each task.
    #[arg(long, value_parser = crate::bounds::count)]
    probes_per_task: Option<usize>,
    /// Keep the first N probe tasks.
    #[arg(long, value_parser = crate::bounds::count)]
    probe_tasks: Option<usize>,
    /// `icp`: Δ_j = log p(a_j | z ⊕ q_j) − log p(a_j | q_j), z as a one-shot demonstration.
    /// `one-step`: Δ_j = ℓ_j(θ) − ℓ_j(θ − lr·∇ℓ(z)), one SGD step on z.
    #[arg(long, default_value = "icp")]
    method: String,
    /// How z and q_j are joined for ICP: `chat` (the model's template) or `plain`.
    #[arg(long, default_value = "chat")]
    demo_template: String,
    /// Learning rate of the one-step method.
    #[arg(long, value_parser = crate::bounds::positive, default_value_t = 1e-4)]
    lr: f64,
    /// Linears updated by the one-step method (same syntax as index --modules).
    #[arg(long, default_value = "all")]
    modules: String,
    /// Longest demonstration (ICP) or sample (one-step) in tokens.
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 512)]
    max_tokens: usize,
    /// Probes per batch (on CPU, 1 is fastest: no padding; STACK.md).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 1)]
    probe_batch: usize,
    /// Training samples per shard (the unit of resumption).
    #[arg(long, value_parser = crate::bounds::count, default_value_t = 16)]
    shard_size: usize,
    /// Output folder; rerunning the same command resumes it.
    #[arg(long)]
    out: PathBuf,
    /// Also time the naive ICP (each probe's full prompt, no cache) on the first N samples
    /// and check the scores are equal.
    #[arg(long, default_value_t = 0)]
    bench_naive: usize,
}

pub(crate) fn probe(a: ProbeArgs, threads: usize, json: bool) -> Result<()> {
    let kind = match a.method.as_str() {
        "icp" => ProbeKind::Icp(a.demo_template.parse::<DemoTemplate>()?),
        "one-step" => ProbeKind::OneStep {
            lr: a.lr,
            modules: a.modules,
        },
        m => bail!("unknown --method `{m}`; expected icp or one-step"),
    };
    let o = ProbeOptions {
        model: a.model,
        data: a.input.data.clone(),
        read: a.input.read_options()?,
        probes: a.probes,
        probes_per_task: a.probes_per_task,
        probe_tasks: a.probe_tasks,
        kind,
        max_tokens: a.max_tokens,
        probe_batch: a.probe_batch,
        shard_size: a.shard_size,
        out: a.out,
        bench_naive: a.bench_naive,
        threads,
    };
    let out = inflow::pipeline::probe::run(&o, &crate::progress::Bars::default())?;
    crate::output::pretty(json, &out, || {
        println!(
            "{} scores for the training samples in {:.1} s ({} probes): {}",
            out.method,
            out.seconds,
            out.n_probes,
            out.scores.display()
        );
        if let Some(n) = &out.naive_check {
            println!("naive vs cached ICP: {}", serde_json::to_string(n)?);
        }
        Ok(())
    })
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// First score file (Parquet with train_id, score and optionally query_id).
    a: PathBuf,
    /// Second score file.
    b: PathBuf,
    /// Scatter plot PNG (default: A's folder, A_vs_B.png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Replace the plot if it exists.
    #[arg(long)]
    force: bool,
    /// k values for top-k overlap.
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    k: Vec<usize>,
}

pub(crate) fn compare_cmd(a: CompareArgs, json: bool) -> Result<()> {
    let plot = a.plot.clone().unwrap_or_else(|| {
        let stem = |p: &PathBuf| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        a.a.with_file_name(format!("{}_vs_{}.png", stem(&a.a), stem(&a.b)))
    });
    inflow::output_guard::check_new_output("--plot", &plot, &[&a.a, &a.b], a.force)?;
    let fa = ScoreFile::read(&a.a)?;
    let fb = ScoreFile::read(&a.b)?;
    let (c, xs, ys) = compare(&fa, &fb, &a.k)?;
    inflow::eval::plot::scatter(
        &plot,
        &xs,
        &ys,
        &format!("{} ({})", c.method_a, a.a.display()),
        &format!("{} ({})", c.method_b, a.b.display()),
        &format!(
            "Spearman ρ = {:.3}, Kendall τ = {:.3} (n = {})",
            c.spearman, c.kendall_tau_b, c.n_common
        ),
    )?;
    let mut v = serde_json::to_value(&c)?;
    v["plot"] = serde_json::json!(plot);
    crate::output::pretty(json, &v, || {
        println!(
            "{} vs {} on {} common {} keys",
            c.method_a, c.method_b, c.n_common, c.keys
        );
        println!("  Spearman ρ     {:.4}", c.spearman);
        println!("  Kendall τ-b    {:.4}", c.kendall_tau_b);
        for (k, o) in &c.topk_overlap {
            println!("  top-{k:<4} overlap {:.3}", o);
        }
        println!("  plot           {}", plot.display());
        Ok(())
    })
}
