//! The JSONL training log: one line per optimizer step, appended and flushed as the run goes,
//! cut back to the resumed step when a run continues from a checkpoint.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the log inside the run folder.
pub const LOG_FILE: &str = "train_log.jsonl";

/// What one optimizer step did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based number of the step just taken.
    pub step: usize,
    /// Fractional epoch reached after the step.
    pub epoch: f64,
    /// Mean over the step's samples of their mean response-token cross-entropy, before the update.
    pub loss: f64,
    /// Learning rate the step used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples and (unpadded) tokens in the step.
    pub samples: usize,
    pub tokens: usize,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

/// An open log.
pub struct TrainLog {
    path: PathBuf,
    file: File,
}

impl TrainLog {
    /// Opens `dir/train_log.jsonl`, keeping the lines of steps ≤ `keep_through` (0: none).
    pub fn open(dir: &Path, keep_through: usize) -> Result<Self> {
        let path = dir.join(LOG_FILE);
        let mut kept = String::new();
        if keep_through > 0 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                for line in text.lines() {
                    let step = serde_json::from_str::<serde_json::Value>(line)
                        .ok()
                        .and_then(|v| v.get("step")?.as_u64());
                    if matches!(step, Some(s) if s as usize <= keep_through) {
                        kept.push_str(line);
                        kept.push('\n');
                    }
                }
            }
        }
        crate::atomic_write::write_atomic(&path, |f| {
            f.write_all(kept.as_bytes())
                .map_err(|e| Error::io(&path, e))
        })?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Appends one step.
    pub fn append(&mut self, r: &StepRecord) -> Result<()> {
        let line = serde_json::to_string(r).map_err(|e| Error::Msg(e.to_string()))?;
        writeln!(self.file, "{line}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Reads a log back.
pub fn read_log(dir: &Path) -> Result<Vec<StepRecord>> {
    let path = dir.join(LOG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::BadInput {
                path: path.clone(),
                line: i + 1,
                msg: format!("not a training-log record: {e}"),
            })
        })
        .collect()
}
