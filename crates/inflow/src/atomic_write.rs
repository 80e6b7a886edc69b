//! Crash-safe file replacement: write to a temporary name, fsync, rename.
//!
//! A reader (or a resumed run) therefore sees either the old file or the whole new one,
//! never a prefix.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name used while `path` is being written: hidden, in the same directory
/// (rename is only atomic within one file system), unique per process so two writers never
/// interleave bytes in one temp file, and ending in `path`'s extension for writers that pick
/// the format by it (a plot's `.png`): `.NAME.tmp.PID.EXT`.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}{ext}", std::process::id()))
}

/// Writes `v` as pretty-printed JSON (and a final newline) to `path`, atomically.
pub fn write_json(path: &Path, v: &impl serde::Serialize) -> Result<u64> {
    let mut text = serde_json::to_vec_pretty(v).map_err(|e| Error::Msg(e.to_string()))?;
    text.push(b'\n');
    write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(&text).map_err(|e| Error::io(path, e))
    })
}

/// Writes `path` atomically: `write` fills a fresh temporary file, which is then flushed to
/// disk and renamed over `path`; the directory is synced so the rename itself survives a crash.
/// Returns the size of the written file in bytes. On any error the temporary file is removed,
/// and the error names `path` (what the user asked for), never the temporary name.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<u64> {
    write_atomic_at(path, |tmp| {
        let mut file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        write(&mut file)
    })
}

/// [`write_atomic`] for writers that take a path rather than a file (safetensors, a
/// tokenizer): `write` creates and fills the temporary path it is given.
pub fn write_atomic_at(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<u64> {
    let tmp = temp_path(path);
    let result = (|| {
        write(&tmp).map_err(|e| match e {
            Error::Io { path: p, source } if p == tmp => Error::io(path, source),
            e => e,
        })?;
        let file = File::open(&tmp).map_err(|e| Error::io(path, e))?;
        file.sync_all().map_err(|e| Error::io(path, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
        drop(file);
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        Ok(bytes)
    })();
    match result {
        Ok(bytes) => {
            sync_dir(path);
            Ok(bytes)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Best effort: some file systems refuse to open or fsync a directory, and the data itself is
/// already durable by then, so a failure here is not worth failing the write for.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp_on_error() {
        let dir = std::env::temp_dir().join(format!("inflow-atomic-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.txt");
        let n = write_atomic(&path, |f| {
            f.write_all(b"hello").map_err(|e| Error::io("a", e))
        })
        .unwrap();
        assert_eq!(n, 5);
        let err = write_atomic(&path, |f| {
            f.write_all(b"partial").map_err(|e| Error::io("a", e))?;
            Err(Error::Msg("boom".into()))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"hello");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "temp file left behind: {names:?}");
    }
}
