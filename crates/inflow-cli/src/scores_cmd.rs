//! `inflow scores …`: operations on score files.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// `inflow scores merge`' arguments.
#[derive(Args)]
pub(crate) struct MergeArgs {
    /// The partial files (`score --part I/N --out FILE`), in any order.
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The merged file (.parquet, or .npy for --full matrices).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub(crate) fn merge(a: MergeArgs, json: bool) -> Result<()> {
    let m = inflow::scores::merge::merge(&a.files, &a.out, a.force)?;
    crate::output::line(json, &m, || {
        println!(
            "merged {} partial {} files of `{}` into {}: {} queries × {} training rows",
            m.files,
            m.kind,
            m.method,
            m.out.display(),
            m.n_queries,
            m.n_rows
        );
        Ok(())
    })
}
