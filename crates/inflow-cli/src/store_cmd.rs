//! `inflow store …`: operations on a store.

use anyhow::Result;
use clap::Args;
use inflow::store::compress::CompressOptions;
use std::path::PathBuf;

use crate::progress::Bars;

/// `inflow store compress`' arguments.
#[derive(Args)]
pub(crate) struct CompressArgs {
    /// The store to compress (made by `index`; it stays as it is).
    #[arg(long)]
    store: PathBuf,
    /// The compact store folder; rerunning the same command resumes it.
    #[arg(long)]
    out: PathBuf,
    /// Projected dimension (seeded Rademacher JL); omit to keep every dimension.
    #[arg(long, value_parser = crate::bounds::count)]
    dim: Option<usize>,
    /// Element type: int8 (one scale per row), bit (1-bit signs, scored by popcount), f16 or f32.
    #[arg(long, default_value = "int8")]
    dtype: String,
    /// Seed of the projection.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows per shard of the compact store (default: as many as keep a shard's rows within
    /// 256 MiB as f32, at most 4,096; memory stays bounded whatever the number of rows).
    #[arg(long, value_parser = crate::bounds::count)]
    shard_size: Option<usize>,
}

pub(crate) fn compress(a: CompressArgs, json: bool) -> Result<()> {
    let o = CompressOptions {
        dim: a.dim,
        dtype: a.dtype.parse()?,
        seed: a.seed,
        shard_size: a.shard_size,
    };
    let s = inflow::pipeline::compress::compress(&a.store, &a.out, &o, &Bars::default())?;
    crate::output::pretty(json, &s, || {
        println!(
            "compressed {} rows in {:.1} s: {} × {} ({} B/row) → {} × {} ({} B/row, {:.0}× smaller)\nstore: {}",
            s.rows,
            s.seconds,
            s.parent_dtype,
            s.parent_dim,
            s.parent_bytes_per_row,
            s.dtype,
            s.dim,
            s.bytes_per_row,
            s.parent_bytes_per_row as f64 / s.bytes_per_row as f64,
            s.out.display()
        );
        Ok(())
    })
}

/// `inflow store merge`' arguments.
#[derive(Args)]
pub(crate) struct MergeArgs {
    /// The part stores (`index --shard I/N --out PART`), in any order, e.g. `parts/ni-*`.
    #[arg(required = true, num_args = 1..)]
    parts: Vec<PathBuf>,
    /// The merged store folder (new or empty; rerunning finishes an interrupted merge).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn merge(a: MergeArgs, json: bool) -> Result<()> {
    let merge = || Ok(inflow::store::merge::merge(&a.parts, &a.out)?);
    crate::output::store_written(json, &a.out, merge, |s, secs| {
        println!(
            "merged {} parts into {}: {} rows in {} shards, {} files linked, {} copied{} ({:.1} s)",
            s.parts,
            a.out.display(),
            s.n_samples,
            s.shards,
            s.linked,
            s.copied,
            if s.sub_stores.is_empty() {
                String::new()
            } else {
                format!("; sub-stores {}", s.sub_stores.join(", "))
            },
            secs
        );
        Ok(())
    })?;
    Ok(())
}
