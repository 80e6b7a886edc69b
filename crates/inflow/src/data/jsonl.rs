//! JSON Lines input: one JSON object a line, blank lines ignored, streamed (memory is one
//! line) while the file's sha256 is computed from the same bytes.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::record::kind;
use super::RawRecord;
use crate::{Error, Result};

/// A JSONL file being read record by record.
pub(crate) struct JsonlRecords {
    path: PathBuf,
    reader: BufReader<File>,
    hasher: Sha256,
    buf: Vec<u8>,
    /// 1-based number of the last line read.
    line: usize,
    /// Records (non-blank lines) seen so far.
    rows: usize,
}

impl JsonlRecords {
    /// Opens `path` for reading.
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(JsonlRecords {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 16, file),
            hasher: Sha256::new(),
            buf: Vec::new(),
            line: 0,
            rows: 0,
        })
    }

    /// The next non-blank line as a record; `None` at the end of the file.
    pub(crate) fn next_record(&mut self) -> Result<Option<RawRecord>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                return Ok(None);
            }
            self.hasher.update(&self.buf);
            self.line += 1;
            let mut bytes: &[u8] = &self.buf;
            if self.line == 1 {
                bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
            }
            if bytes.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let row = self.rows;
            self.rows += 1;
            return Ok(Some(RawRecord {
                line: self.line,
                row,
                fields: parse_line(bytes),
            }));
        }
    }

    /// Reads the rest of the file into the hash and returns the file's sha256 in hex.
    pub(crate) fn finish(mut self) -> Result<String> {
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = self
                .reader
                .read(&mut chunk)
                .map_err(|e| Error::io(&self.path, e))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&chunk[..n]);
        }
        Ok(hex(&self.hasher.finalize()))
    }
}

/// One line as a JSON object, or why it is not one.
fn parse_line(bytes: &[u8]) -> std::result::Result<serde_json::Map<String, Value>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("line is not valid UTF-8 ({e})"))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the line is {}, expected a JSON object (one record a line)",
            kind(&other)
        )),
        Err(e) => {
            let hint = if text.trim_start().starts_with('[') {
                " (a file holding one JSON array must be rewritten as one object a line)"
            } else {
                ""
            };
            Err(format!(
                "bad JSON: {e}; expected one JSON object a line{hint}"
            ))
        }
    }
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
