//! `store merge`: the part stores of a sharded run (`index --shard I/N`) joined into one
//! store, equal row for row to the store one process writes.
//!
//! Parts hold whole shards under their global numbers, so merging writes no feature: it
//! checks the parts (same spec, each part once, all parts present, rows contiguous), links
//! every shard file into the merged folder (a hard link; a copy where the filesystem cannot
//! link), writes one manifest over them and the combined samples table. Per-shard files that
//! higher layers keep beside the shards (K-FAC token statistics under `curvature/`) are linked
//! the same way, and sub-stores (RepSim's) are merged as stores.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{differences, spec_value, store_err, PartInfo, Store, MANIFEST};
use crate::{Error, Result};

/// Folders a store may hold that are not merged: scratch space of scoring runs.
const SCRATCH: &str = "work";

/// What a merge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MergeSummary {
    pub parts: usize,
    pub n_samples: usize,
    pub shards: usize,
    /// Files hard-linked and files copied (across filesystems) into the merged folder.
    pub linked: usize,
    pub copied: usize,
    /// Sub-stores merged beside the main one (e.g. `repsim-last`).
    pub sub_stores: Vec<String>,
}

/// Merges the part stores `parts` (any order) into a new store at `out`, or finishes a merge
/// into `out` that was interrupted. Errors name the part and the field at fault.
pub fn merge(parts: &[PathBuf], out: &Path) -> Result<MergeSummary> {
    let mut summary = MergeSummary::default();
    merge_into(parts, out, &mut summary)?;
    Ok(summary)
}

fn merge_into(parts: &[PathBuf], out: &Path, summary: &mut MergeSummary) -> Result<()> {
    let stores = check_parts(parts)?;
    let first = &stores[0];
    let spec = first.spec().clone();
    let n = first.n_samples();
    for s in &stores {
        if same_place(s.dir(), out) {
            return Err(store_err(
                out,
                "is one of the parts; merge into a new folder (--out)",
            ));
        }
    }
    let mut merged = Store::create_or_resume(out, spec, n)?;
    let mut adopted = Vec::new();
    for part in &stores {
        for info in &part.manifest.shards {
            if merged.is_shard_done(info.index) {
                continue;
            }
            let mut names = vec![&info.features, &info.norms, &info.samples];
            names.extend(info.scales.as_ref());
            for name in names {
                transfer(&part.dir.join(name), &out.join(name), summary)?;
            }
            adopted.push(info.clone());
        }
        side_files(part.dir(), part.dir(), out, summary)?;
    }
    merged.adopt_shards(adopted)?;
    merged.finish()?;
    summary.parts = stores.len();
    summary.n_samples = n;
    summary.shards = merged.n_shards();
    // Sub-stores (folders with a manifest), present in every part.
    for name in sub_stores(first.dir())? {
        let subs: Vec<PathBuf> = stores.iter().map(|s| s.dir().join(&name)).collect();
        if let Some(missing) = subs.iter().find(|p| !p.join(MANIFEST).exists()) {
            return Err(store_err(
                missing,
                format!(
                    "is missing: the first part ({}) has the sub-store {name}, this part does not",
                    first.dir().display()
                ),
            ));
        }
        let mut inner = MergeSummary::default();
        merge_into(&subs, &out.join(&name), &mut inner)?;
        summary.linked += inner.linked;
        summary.copied += inner.copied;
        summary.sub_stores.push(name);
    }
    Ok(())
}

/// Opens the parts and checks they form one run: each a complete part store, all with the
/// spec, row count and number of parts of the first, each part exactly once, rows
/// contiguous. Returns them in part order.
fn check_parts(parts: &[PathBuf]) -> Result<Vec<Store>> {
    if parts.is_empty() {
        return Err(Error::Msg("store merge: no parts given".into()));
    }
    let mut stores = Vec::with_capacity(parts.len());
    for p in parts {
        let s = Store::open(p)?;
        let Some(info) = s.part() else {
            return Err(store_err(
                p,
                "is not a part store (its manifest.json has no `part`); store merge joins the \
                 outputs of `index --shard I/N`",
            ));
        };
        if !s.is_complete() {
            return Err(store_err(
                p,
                format!(
                    "part {} is not complete ({} of {} rows); rerun its index command to finish it",
                    info.part(),
                    s.n_done_rows(),
                    info.rows[1] - info.rows[0]
                ),
            ));
        }
        stores.push(s);
    }
    stores.sort_by_key(|s| s.part().map(|p| p.index));
    let first = &stores[0];
    let want = spec_value(first.spec(), first.n_samples());
    let count = first.part().map_or(0, |p| p.count);
    for s in &stores[1..] {
        let diffs = differences(&want, &spec_value(s.spec(), s.n_samples()));
        if !diffs.is_empty() {
            return Err(store_err(
                s.dir(),
                format!(
                    "does not belong with {}: its spec differs:\n  {}",
                    first.dir().display(),
                    diffs
                        .iter()
                        .map(|d| d
                            .replace("store has", "first part has")
                            .replace("this run asks for", "this part has"))
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ),
            ));
        }
        let c = s.part().map_or(0, |p| p.count);
        if c != count {
            return Err(store_err(
                s.dir(),
                format!(
                    "is a part of {c} parts, {} a part of {count}: parts of different splits \
                     overlap; index every part with the same N",
                    first.dir().display()
                ),
            ));
        }
    }
    let infos: Vec<PartInfo> = stores.iter().filter_map(Store::part).collect();
    for (i, w) in infos.windows(2).enumerate() {
        let (a, b, dir_a, dir_b) = (w[0], w[1], stores[i].dir(), stores[i + 1].dir());
        if a.index == b.index {
            return Err(store_err(
                dir_b,
                format!(
                    "is part {} again ({} is too): give each part once",
                    b.part(),
                    dir_a.display()
                ),
            ));
        }
        if a.index + 1 == b.index && a.rows[1] != b.rows[0] {
            return Err(store_err(
                dir_b,
                format!(
                    "starts at row {}, but the part before it ({}) ends at row {}",
                    b.rows[0],
                    dir_a.display(),
                    a.rows[1]
                ),
            ));
        }
    }
    let have: Vec<usize> = infos.iter().map(|p| p.index).collect();
    let missing: Vec<String> = (0..count)
        .filter(|i| !have.contains(i))
        .map(|i| {
            let m = &first.manifest;
            let rows = m.rows_of(&super::Part { index: i, count }.shards(m.n_shards()));
            format!("{i}/{count} (rows {}..{})", rows.start, rows.end)
        })
        .collect();
    if !missing.is_empty() {
        return Err(Error::Msg(format!(
            "store merge: {} of {count} parts given; missing part{} {}",
            stores.len(),
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        )));
    }
    Ok(stores)
}

/// The sub-store folders of a store (folders holding a manifest.json).
fn sub_stores(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.path().join(MANIFEST).exists() {
            out.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// Links the files a part holds beside its own store files (run.json, per-shard statistics
/// under subfolders) into the same place under `out`. A file two parts both hold must be
/// equal, except `run.json` (its paths may differ between machines; the first part's wins).
fn side_files(root: &Path, dir: &Path, out: &Path, summary: &mut MergeSummary) -> Result<()> {
    let mut entries: BTreeMap<String, PathBuf> = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        entries.insert(e.file_name().to_string_lossy().into_owned(), e.path());
    }
    let top = dir == root;
    for (name, path) in entries {
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let dst = out.join(rel);
        let meta = fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            if path.join(MANIFEST).exists() || (top && name == SCRATCH) {
                continue;
            }
            fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
            side_files(root, &path, out, summary)?;
            continue;
        }
        // The layout's own files are written or linked by the manifest; run.json is copied.
        if (top && super::is_layout_file(&name) && name != "run.json") || is_temporary(&name) {
            continue;
        }
        if dst.exists() {
            if name == "run.json" && top {
                continue;
            }
            let same = fs::read(&path).ok() == fs::read(&dst).ok();
            if !same {
                return Err(store_err(
                    &path,
                    format!(
                        "differs from {} that another part holds; parts of one run hold equal \
                         side files",
                        dst.display()
                    ),
                ));
            }
            continue;
        }
        transfer(&path, &dst, summary)?;
    }
    Ok(())
}

/// A file being written by [`crate::atomic_write`] (`.NAME.tmp.PID.EXT`), not yet in place.
fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp.")
}

/// Puts `src` at `dst`: a hard link, or a copy where the filesystem cannot link.
fn transfer(src: &Path, dst: &Path, summary: &mut MergeSummary) -> Result<()> {
    if dst.exists() {
        fs::remove_file(dst).map_err(|e| Error::io(dst, e))?;
    }
    if fs::hard_link(src, dst).is_ok() {
        summary.linked += 1;
        return Ok(());
    }
    fs::copy(src, dst).map_err(|e| Error::io(dst, e))?;
    summary.copied += 1;
    Ok(())
}

fn same_place(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
