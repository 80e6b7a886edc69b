//! Outputs that would destroy what the user has are refused before any work starts: an output
//! path that is one of the command's own inputs (`select --data d.jsonl --out d.jsonl`), or a
//! file a store owns (`score --out STORE/manifest.json`, `--full STORE/features-00000.npy`),
//! which no rerun of `index` could repair. Score files a command writes into a store folder by
//! default (`STORE/scores-METHOD.parquet`) are not store files and stay allowed. An output
//! that exists already (an earlier result) is replaced only when the user says so (`--force`).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store;
use crate::{Error, Result};

/// Refuses `out` (given as `flag`) when it is one of `inputs` (the same file, through any path
/// or hard link), a file of a store's layout, anything under a store's `curvature/`, or an
/// existing folder: outputs that no flag may write. An earlier result is
/// [`check_overwrite`]'s business.
pub fn check_output(flag: &str, out: &Path, inputs: &[&Path]) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::Msg(format!(
            "{flag} {}: {why}; choose another output path",
            out.display()
        )))
    };
    if out.is_dir() {
        return refuse("is a folder, not a file".into());
    }
    for input in inputs {
        if same_file(out, input) {
            return refuse(format!(
                "is also an input of this command ({}): writing it would replace the input",
                input.display()
            ));
        }
    }
    if let Some(store) = owning_store(out) {
        return refuse(format!(
            "belongs to the store {} (writing it would break the store)",
            store.display()
        ));
    }
    Ok(())
}

/// Refuses an `out` (given as `flag`) that exists already (an earlier result), unless `force`.
pub fn check_overwrite(flag: &str, out: &Path, force: bool) -> Result<()> {
    if !force && fs::symlink_metadata(out).is_ok() {
        return Err(Error::Msg(format!(
            "{flag} {}: exists already; pass --force to replace it, or choose another output path",
            out.display()
        )));
    }
    Ok(())
}

/// [`check_output`] and [`check_overwrite`] together, for commands with no slow step between.
pub fn check_new_output(flag: &str, out: &Path, inputs: &[&Path], force: bool) -> Result<()> {
    check_output(flag, out, inputs)?;
    check_overwrite(flag, out, force)
}

/// Refuses an output folder `dir` (given as `flag`) that a command fills with files of fixed
/// names (an exported model) when it exists and is not empty, unless `force`; and a file.
pub fn check_output_dir(flag: &str, dir: &Path, force: bool) -> Result<()> {
    if dir.is_file() {
        return Err(Error::Msg(format!(
            "{flag} {}: is a file, not a folder; choose another output path",
            dir.display()
        )));
    }
    let full = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some());
    if full && !force {
        return Err(Error::Msg(format!(
            "{flag} {}: exists and is not empty; pass --force to write over its files, or \
             choose another output folder",
            dir.display()
        )));
    }
    Ok(())
}

/// Whether `a` and `b` name one file: the same device and inode when both exist, else the
/// same canonical folder and file name.
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The path with its folder canonicalized (the file itself may not exist yet).
fn canonical(p: &Path) -> Option<PathBuf> {
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(parent).ok()?.join(p.file_name()?))
}

/// The store folder whose layout `out` is part of, if any: a store file beside a
/// `manifest.json`, or a file under a store's `curvature/`.
fn owning_store(out: &Path) -> Option<PathBuf> {
    let path = canonical(out)?;
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy();
    if dir.join("manifest.json").exists() && store::is_layout_file(&name) {
        return Some(dir.to_path_buf());
    }
    dir.ancestors()
        .find(|d| {
            d.file_name().is_some_and(|n| n == "curvature")
                && d.parent().is_some_and(|s| s.join("manifest.json").exists())
        })
        .and_then(|d| d.parent().map(Path::to_path_buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    #[test]
    fn inputs_and_store_files_are_refused_and_other_outputs_pass() {
        let dir = temp_dir("output-guard");
        let data = dir.join("d.jsonl");
        fs::write(&data, "{}\n").unwrap();
        fs::hard_link(&data, dir.join("link.jsonl")).unwrap();
        let store = dir.join("store");
        fs::create_dir_all(store.join("curvature")).unwrap();
        fs::write(store.join("manifest.json"), "{}").unwrap();
        let e = check_output("--out", &data, &[&data])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--out") && e.contains("also an input"), "{e}");
        // Another spelling of the same file, and a hard link to it.
        let dotted = dir.join(".").join("d.jsonl");
        assert!(check_output("--out", &dotted, &[&data]).is_err());
        assert!(check_output("--out", &dir.join("link.jsonl"), &[&data]).is_err());
        for owned in [
            "manifest.json",
            "features-00000.npy",
            "samples.parquet",
            "run.json",
            "curvature/kfac.safetensors",
        ] {
            let e = check_output("--full", &store.join(owned), &[&data])
                .unwrap_err()
                .to_string();
            assert!(e.contains("belongs to the store"), "{owned}: {e}");
        }
        assert!(check_output("--out", &store, &[]).is_err(), "a folder");
        check_new_output(
            "--out",
            &store.join("scores-cosine.parquet"),
            &[&data],
            false,
        )
        .unwrap();
        check_new_output("--out", &dir.join("new.jsonl"), &[&data], false).unwrap();
        // An earlier result is replaced only with --force.
        let old = dir.join("old.parquet");
        fs::write(&old, "x").unwrap();
        let e = check_new_output("--out", &old, &[&data], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force") && e.contains("old.parquet"), "{e}");
        check_new_output("--out", &old, &[&data], true).unwrap();
        // Folders of fixed file names: empty or new pass, full ones need --force.
        check_output_dir("--out", &dir.join("fresh"), false).unwrap();
        let e = check_output_dir("--out", &store, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not empty") && e.contains("--force"), "{e}");
        check_output_dir("--out", &store, true).unwrap();
        assert!(check_output_dir("--out", &old, true).is_err(), "a file");
    }
}
