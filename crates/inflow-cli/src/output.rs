//! A verb's result on stdout: its JSON with `--json` (for scripts), else lines for a person.
//! One place decides, so every verb answers `--json` the same way.

use anyhow::Result;
use inflow::index::IndexSummary;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// Prints `value` as indented JSON with `--json`; otherwise `text` prints the lines for a
/// person.
pub(crate) fn pretty(
    json: bool,
    value: &impl Serialize,
    text: impl FnOnce() -> Result<()>,
) -> Result<()> {
    answer(json.then(|| serde_json::to_string_pretty(value)), text)
}

/// [`pretty`] with the JSON on one line: the verbs whose output scripts read line by line.
pub(crate) fn line(
    json: bool,
    value: &impl Serialize,
    text: impl FnOnce() -> Result<()>,
) -> Result<()> {
    answer(json.then(|| serde_json::to_string(value)), text)
}

/// Prints the JSON text if there is one, else runs `text`.
fn answer(
    json: Option<serde_json::Result<String>>,
    text: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let Some(j) = json else {
        return text();
    };
    println!("{}", j?);
    Ok(())
}

/// Runs `write`, the work of a verb that writes a store at `out` (`index`, `encode`,
/// `store merge`), and answers: with `--json` one line `{"out", "summary", "seconds"}`, else
/// `text` with the summary and the seconds `write` took.
pub(crate) fn store_written<S: Serialize>(
    json: bool,
    out: &Path,
    write: impl FnOnce() -> Result<S>,
    text: impl FnOnce(&S, f64) -> Result<()>,
) -> Result<S> {
    let t = Instant::now();
    let summary = write()?;
    let secs = t.elapsed().as_secs_f64();
    let v = serde_json::json!({"out": out, "summary": summary, "seconds": secs});
    line(json, &v, || text(&summary, secs))?;
    Ok(summary)
}

/// What `index` and `encode` print first, `verb` ("indexed", "encoded") leading: "indexed 300
/// samples into OUT (5 shards written, 0 already done) in 1.2 s: dim 64, 256 bytes/sample".
pub(crate) fn stored(verb: &str, out: &Path, s: &IndexSummary, secs: f64) -> String {
    format!(
        "{verb} {} samples into {} ({} shards written, {} already done) in {secs:.1} s: dim {}, {:.0} bytes/sample",
        s.n_samples,
        out.display(),
        s.shards_written,
        s.shards_reused,
        s.dim,
        s.bytes_per_sample
    )
}
