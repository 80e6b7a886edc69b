//! Writing a selection: the selected samples in the input's own format (JSONL lines copied
//! byte for byte, Parquet rows with the input's schema), in input file order, plus a manifest
//! beside the output (`<out>.selection.parquet`: id, row, score, rank, cluster (G-DIG only),
//! reason; `<out>.selection.json`: the command's settings, the method's details, the picks).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;

use super::Selection;
use crate::atomic_write::write_atomic;
use crate::scores::table::{write_table, Column};
use crate::{Error, Result};

fn ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default()
}

fn is_jsonl(path: &Path) -> bool {
    matches!(ext(path).as_str(), "jsonl" | "json")
}

/// Copies the records at 0-based `rows` of `data` (JSONL or Parquet) to `out`, which must
/// have the same kind of extension. Returns the number of records written (in file order).
/// JSONL: the records' lines byte for byte (blank lines are not records; a UTF-8 BOM on the
/// first line is dropped; a last line without a newline gets one). Parquet: the rows with
/// the input's Arrow schema and metadata.
pub fn write_rows(data: &Path, rows: &[usize], out: &Path) -> Result<usize> {
    let want: BTreeSet<usize> = rows.iter().copied().collect();
    let (src_jsonl, dst_jsonl) = (is_jsonl(data), is_jsonl(out));
    if src_jsonl != dst_jsonl || (!src_jsonl && ext(out) != "parquet") {
        return Err(Error::Msg(format!(
            "{}: the output keeps the input's format; give it a .{} extension like {}",
            out.display(),
            if src_jsonl { "jsonl" } else { "parquet" },
            data.display()
        )));
    }
    let written = if src_jsonl {
        write_jsonl(data, &want, out)?
    } else {
        write_parquet(data, &want, out)?
    };
    if written != want.len() {
        let last = want.iter().next_back().copied().unwrap_or_default();
        return Err(Error::Msg(format!(
            "{}: has no record at row {last} (0-based; {written} of {} selected rows found)",
            data.display(),
            want.len()
        )));
    }
    Ok(written)
}

fn write_jsonl(data: &Path, want: &BTreeSet<usize>, out: &Path) -> Result<usize> {
    let file = File::open(data).map_err(|e| Error::io(data, e))?;
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let (mut row, mut line, mut written) = (0usize, 0usize, 0usize);
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| Error::io(data, e))?;
        if n == 0 {
            break;
        }
        line += 1;
        let mut bytes: &[u8] = &buf;
        if line == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        if want.contains(&row) {
            kept.extend_from_slice(bytes);
            if !bytes.ends_with(b"\n") {
                kept.push(b'\n');
            }
            written += 1;
        }
        row += 1;
    }
    write_atomic(out, |f| f.write_all(&kept).map_err(|e| Error::io(out, e)))?;
    Ok(written)
}

fn write_parquet(data: &Path, want: &BTreeSet<usize>, out: &Path) -> Result<usize> {
    let pq = |p: &Path, e: &dyn std::fmt::Display| Error::Parquet {
        path: p.to_path_buf(),
        msg: e.to_string(),
    };
    let file = File::open(data).map_err(|e| Error::io(data, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq(data, &e))?;
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| pq(data, &e))?;
    let mut written = 0;
    write_atomic(out, |f| {
        let mut w = ArrowWriter::try_new(f, schema.clone(), None).map_err(|e| pq(out, &e))?;
        let mut start = 0usize;
        for batch in reader {
            let batch = batch.map_err(|e| pq(data, &e))?;
            let end = start + batch.num_rows();
            // Contiguous runs of selected rows become one slice each.
            let mut run: Option<(usize, usize)> = None;
            let mut flush = |r: (usize, usize)| -> Result<()> {
                w.write(&batch.slice(r.0 - start, r.1 - r.0))
                    .map_err(|e| pq(out, &e))
            };
            for &r in want.range(start..end) {
                run = match run {
                    Some((a, b)) if b == r => Some((a, r + 1)),
                    Some(prev) => {
                        flush(prev)?;
                        Some((r, r + 1))
                    }
                    None => Some((r, r + 1)),
                };
                written += 1;
            }
            if let Some(r) = run {
                flush(r)?;
            }
            start = end;
        }
        w.close().map_err(|e| pq(out, &e))?;
        Ok(())
    })?;
    Ok(written)
}

/// The manifest paths beside an output: `<out>.selection.parquet` and `<out>.selection.json`.
pub fn manifest_paths(out: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut s = out.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    (with(".selection.parquet"), with(".selection.json"))
}

/// Writes the manifest of `sel` beside `out`. `rows[k]` is the input row of pick k;
/// `settings` records the command (method, files, sizes, seeds).
pub fn write_manifest(
    out: &Path,
    sel: &Selection,
    rows: &[usize],
    settings: &serde_json::Value,
) -> Result<(PathBuf, PathBuf)> {
    let (pq_path, json_path) = manifest_paths(out);
    if rows.len() != sel.picks.len() {
        return Err(Error::Msg(format!(
            "{} rows for {} picks",
            rows.len(),
            sel.picks.len()
        )));
    }
    let p = &sel.picks;
    let mut cols = vec![
        ("id", Column::Str(p.iter().map(|x| x.id.clone()).collect())),
        ("row", Column::U32(rows.iter().map(|&r| r as u32).collect())),
        ("score", Column::F32(p.iter().map(|x| x.score).collect())),
        (
            "rank",
            Column::U32(p.iter().map(|x| x.rank as u32).collect()),
        ),
    ];
    if p.iter().any(|x| x.cluster.is_some()) {
        cols.push((
            "cluster",
            Column::U32(p.iter().map(|x| x.cluster.unwrap_or(0) as u32).collect()),
        ));
    }
    cols.push((
        "reason",
        Column::Str(p.iter().map(|x| x.reason.as_str().to_string()).collect()),
    ));
    let settings_text = settings.to_string();
    write_table(
        &pq_path,
        cols,
        &[
            ("inflow.selection_method", sel.method.as_str()),
            ("inflow.selection_settings", settings_text.as_str()),
        ],
    )?;
    let picks: Vec<serde_json::Value> = p
        .iter()
        .zip(rows)
        .map(|(x, r)| {
            serde_json::json!({
                "id": x.id, "row": r, "score": x.score, "rank": x.rank,
                "cluster": x.cluster, "reason": x.reason.as_str(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "method": sel.method,
        "settings": settings,
        "n_candidates": sel.n_candidates,
        "n_selected": sel.picks.len(),
        "details": sel.details,
        "inflow_version": crate::version(),
        "picks": picks,
    });
    crate::atomic_write::write_json(&json_path, &doc)?;
    Ok((pq_path, json_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{read_samples, ReadOptions};
    use crate::select::ranked::{top, Size};
    use crate::select::Scored;
    use crate::store::tests::temp_dir;
    use arrow_array::{Array, Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn jsonl_lines_are_copied_byte_for_byte() {
        let dir = temp_dir("select_jsonl");
        let data = dir.join("in.jsonl");
        let lines = [
            "{\"text\": \"a\",   \"k\": 1}\n",
            "\n",
            "  \n",
            "{\"text\":\"b \\u00e9\"}\r\n",
            "{\"text\": \"c\"}\n",
            "{\"text\": \"d\"}",
        ];
        std::fs::write(&data, lines.concat()).unwrap();
        let samples = read_samples(&data, &ReadOptions::default())
            .unwrap()
            .samples;
        assert_eq!(
            samples.iter().map(|s| s.row).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        let out = dir.join("out.jsonl");
        // Rows 3 and 1 (the CRLF line and the unterminated last line), given out of order.
        assert_eq!(write_rows(&data, &[3, 1], &out).unwrap(), 2);
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got, [lines[3], lines[5], "\n"].concat().as_bytes());
        // The output reads back as the same samples (same ids, rows renumbered).
        let back = read_samples(&out, &ReadOptions::default()).unwrap().samples;
        assert_eq!(back[0].body, samples[1].body);
        assert_eq!(back[1].body, samples[3].body);
        assert!(
            write_rows(&data, &[9], &out).is_err(),
            "row 9 does not exist"
        );
        assert!(write_rows(&data, &[0], &dir.join("out.parquet")).is_err());
    }

    #[test]
    fn parquet_round_trip_keeps_schema_and_rows() {
        let dir = temp_dir("select_parquet");
        let data = dir.join("in.parquet");
        let mut meta = std::collections::HashMap::new();
        meta.insert("origin".to_string(), "test".to_string());
        let schema = Arc::new(Schema::new_with_metadata(
            vec![
                Field::new("text", DataType::Utf8, false),
                Field::new("n", DataType::Int64, true),
            ],
            meta,
        ));
        let f = File::create(&data).unwrap();
        let mut w = ArrowWriter::try_new(f, schema.clone(), None).unwrap();
        // Two batches, so the selection crosses a batch boundary.
        for part in [0..5i64, 5..9] {
            let texts: Vec<String> = part.clone().map(|i| format!("t{i}")).collect();
            let ns: Vec<Option<i64>> = part.map(|i| (i % 3 != 0).then_some(i)).collect();
            let b = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(texts)),
                    Arc::new(Int64Array::from(ns)),
                ],
            )
            .unwrap();
            w.write(&b).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
        let out = dir.join("out.parquet");
        assert_eq!(write_rows(&data, &[8, 2, 3, 4, 5, 0], &out).unwrap(), 6);
        let r = ParquetRecordBatchReaderBuilder::try_new(File::open(&out).unwrap()).unwrap();
        assert_eq!(r.schema().fields(), schema.fields());
        assert_eq!(
            r.schema().metadata().get("origin").map(String::as_str),
            Some("test")
        );
        let mut texts = Vec::new();
        let mut ns = Vec::new();
        for b in r.build().unwrap() {
            let b = b.unwrap();
            let t = b.column(0).as_any().downcast_ref::<StringArray>().unwrap();
            let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
            for i in 0..b.num_rows() {
                texts.push(t.value(i).to_string());
                ns.push((!n.is_null(i)).then(|| n.value(i)));
            }
        }
        assert_eq!(texts, ["t0", "t2", "t3", "t4", "t5", "t8"]);
        assert_eq!(ns, [None, Some(2), None, Some(4), Some(5), Some(8)]);
        // Reading it as samples gives the same ids as the input's selected rows, re-rowed.
        let before = read_samples(&data, &ReadOptions::default())
            .unwrap()
            .samples;
        let after = read_samples(&out, &ReadOptions::default()).unwrap().samples;
        assert_eq!(after[5].body, before[8].body);
    }

    #[test]
    fn manifest_lists_picks_with_reasons() {
        let dir = temp_dir("select_manifest");
        let out = dir.join("sel.jsonl");
        let s = Scored::new(vec!["0-a".into(), "1-b".into()], vec![0.1, 0.7]).unwrap();
        let sel = top(&s, Size::Count(1));
        let (pq, js) = write_manifest(&out, &sel, &[1], &serde_json::json!({"seed": 3})).unwrap();
        assert!(pq.ends_with("sel.jsonl.selection.parquet"));
        let (cols, meta) = crate::scores::table::read_table(&pq).unwrap();
        let names: Vec<_> = cols.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["id", "row", "score", "rank", "reason"]);
        assert_eq!(cols[0].1.as_str().unwrap(), ["1-b"]);
        assert!(meta
            .iter()
            .any(|(k, v)| k == "inflow.selection_settings" && v.contains("seed")));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(js).unwrap()).unwrap();
        assert_eq!(doc["picks"][0]["reason"], "top_score");
        assert_eq!(doc["settings"]["seed"], 3);
    }
}
