//! The writer lock of a store folder (`writer.lock`): one writing process per store or part.
//!
//! The lock is an advisory `flock(2)` held on `writer.lock` for as long as the writer lives
//! ([`std::fs::File::try_lock`]). The kernel drops it when the holder exits, however it exits,
//! so a lock left by a killed process is stale by construction and the next writer simply
//! takes it over. The file's text names the holder (pid, host, start time) so that a second
//! writer can say who holds it. Readers take no lock: a store lists only whole shards.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::{Error, Result};

/// The lock file's name inside a store folder.
pub const LOCK_FILE: &str = "writer.lock";

/// A held writer lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
    /// The text of a lock file left by an earlier holder that no longer runs, if any.
    taken_over: Option<String>,
}

impl WriterLock {
    /// Takes the writer lock of `dir` (created if missing), or fails at once naming the
    /// process that holds it.
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut before = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut before);
                let holder = if before.trim().is_empty() {
                    "another process (it has not written its pid yet)".to_string()
                } else {
                    before.trim().to_string()
                };
                return Err(Error::Store {
                    path: dir.to_path_buf(),
                    msg: format!(
                        "is being written by {holder}; two writers would lose each other's \
                         shards. Wait for it to finish, or stop that process and rerun (a \
                         stopped or killed writer's lock is taken over)"
                    ),
                });
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let _ = file.read_to_string(&mut before);
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let me = format!(
            "pid {} on host {host} (since unix time {since})\n",
            std::process::id()
        );
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        Ok(WriterLock {
            _file: file,
            path,
            taken_over: Some(before.trim().to_string()).filter(|s| !s.is_empty()),
        })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who held the lock before this process took it over (a writer that exited or was
    /// killed without finishing), if anyone.
    pub fn taken_over(&self) -> Option<&str> {
        self.taken_over.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    #[test]
    fn a_second_writer_fails_naming_the_holder_and_a_released_lock_is_taken_over() {
        let dir = temp_dir("writer-lock");
        let first = WriterLock::acquire(&dir).unwrap();
        assert!(first.taken_over().is_none());
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process, as it would in another.
        let msg = WriterLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("being written"),
            "{msg}"
        );
        drop(first);
        let second = WriterLock::acquire(&dir).unwrap();
        assert!(
            second
                .taken_over()
                .is_some_and(|t| t.contains(&format!("pid {}", std::process::id()))),
            "{:?}",
            second.taken_over()
        );
    }
}
