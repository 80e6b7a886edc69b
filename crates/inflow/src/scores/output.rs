//! Score files: top-k as Parquet, the full matrix as `.npy` with a JSON sidecar. Each file
//! records the method and its sign convention, so a score never travels without its meaning.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::json;

use super::{PartScope, ScoreResult};
use crate::atomic_write::write_atomic;
use crate::store::npy;
use crate::{Error, Result};

/// Rows per Parquet record batch (bounds the memory of the write).
const BATCH_ROWS: usize = 1 << 16;

/// Writes the top-k lists as Parquet: columns `query_id`, `train_id` (utf8), `score` (f32),
/// `rank` (u32, 1 = best), `method` (utf8); file key-value metadata `inflow.method`,
/// `inflow.sign_convention`, `inflow.version`. `train_ids[row]` names global train row `row`.
/// A partial result (`score --part`) also has the column `train_row` (u64, the global row, which
/// breaks ties when `scores merge` joins parts) and the metadata of [`part_metadata`].
pub fn write_topk_parquet(
    path: &Path,
    query_ids: &[String],
    train_ids: &[String],
    result: &ScoreResult,
    method: &str,
    sign_convention: &str,
) -> Result<()> {
    let pq = |e: &dyn std::fmt::Display| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let n_rows = result.part.as_ref().map_or(result.n_train, |p| p.n_rows);
    if query_ids.len() != result.topk.len() || train_ids.len() != n_rows {
        return Err(Error::Msg(format!(
            "{}: {} query ids for {} queries, {} train ids for {} training rows",
            path.display(),
            query_ids.len(),
            result.topk.len(),
            train_ids.len(),
            n_rows
        )));
    }
    let mut meta: Vec<(String, String)> = [
        ("inflow.method", method),
        ("inflow.sign_convention", sign_convention),
        ("inflow.version", crate::version()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    meta.extend(result.part.as_ref().map(part_metadata).unwrap_or_default());
    let mut fields = vec![
        Field::new("query_id", DataType::Utf8, false),
        Field::new("train_id", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("method", DataType::Utf8, false),
    ];
    if result.part.is_some() {
        fields.push(Field::new("train_row", DataType::UInt64, false));
    }
    // In the Arrow schema too: pyarrow's `schema.metadata` (and pandas) read it from there,
    // while Parquet-level readers see the file key-value metadata.
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        meta.iter().cloned().collect(),
    ));
    let kv = meta
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .build();
    // (query, rank, train row, score), flattened so batches can cut across queries.
    let rows = query_ids.iter().zip(&result.topk).flat_map(|(q, list)| {
        list.iter()
            .enumerate()
            .map(move |(rank, &(row, score))| (q, rank as u32 + 1, row, score))
    });
    let rows: Vec<_> = rows.collect();
    if let Some(&(_, _, row, _)) = rows.iter().find(|r| r.2 >= train_ids.len()) {
        return Err(Error::Msg(format!(
            "{}: train row {row} is out of range ({} train ids)",
            path.display(),
            train_ids.len()
        )));
    }
    write_atomic(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pq(&e))?;
        for part in rows.chunks(BATCH_ROWS) {
            let mut columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(part.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(
                    part.iter().map(|r| &train_ids[r.2]),
                )),
                Arc::new(Float32Array::from_iter_values(part.iter().map(|r| r.3))),
                Arc::new(UInt32Array::from_iter_values(part.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    method,
                    part.len(),
                ))),
            ];
            if result.part.is_some() {
                columns.push(Arc::new(UInt64Array::from_iter_values(
                    part.iter().map(|r| r.2 as u64),
                )));
            }
            let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| pq(&e))?;
            w.write(&batch).map_err(|e| pq(&e))?;
        }
        w.close().map_err(|e| pq(&e))?;
        Ok(())
    })?;
    Ok(())
}

/// Writes the dense nq × n score matrix (f32, query-major) as `.npy`, and beside it a JSON
/// sidecar (same stem, `.json`) with the method, sign convention, shape, query ids in row
/// order, and how columns map to training rows.
pub fn write_full_npy(
    path: &Path,
    result: &ScoreResult,
    query_ids: &[String],
    method: &str,
    sign_convention: &str,
) -> Result<()> {
    let nq = query_ids.len();
    let n = result.n_train;
    let full = result.full.as_ref().ok_or_else(|| {
        Error::Msg(format!(
            "{}: the full score matrix was not kept (score with full = true)",
            path.display()
        ))
    })?;
    if nq.checked_mul(n) != Some(full.len()) {
        return Err(Error::Msg(format!(
            "{}: {nq} query ids × {n} training rows does not match {} scores",
            path.display(),
            full.len()
        )));
    }
    npy::write_file(path, &[nq, n], full)?;
    let sidecar = path.with_extension("json");
    let mut side = json!({
        "method": method,
        "sign_convention": sign_convention,
        "inflow_version": crate::version(),
        "dtype": "f32",
        "shape": [nq, n],
        "rows": "queries, in the order of query_ids",
        "columns": "training samples: column j is global row j of the store \
                    (row j of its samples.parquet)",
        "query_ids": query_ids,
    });
    if let Some(p) = &result.part {
        side["columns"] = json!(format!(
            "training samples: column j is global row {} + j of the store (part {} of its \
             rows: {}..{} of {}); `inflow scores merge` joins the parts",
            p.rows.start, p.part, p.rows.start, p.rows.end, p.n_rows
        ));
        side["part"] = json!({"part": p.part.to_string(), "rows": [p.rows.start, p.rows.end], "n_rows": p.n_rows});
    }
    let text = serde_json::to_string_pretty(&side).map_err(|e| Error::Msg(e.to_string()))?;
    write_atomic(&sidecar, |file| {
        file.write_all(text.as_bytes())
            .and_then(|_| file.write_all(b"\n"))
            .map_err(|e| Error::io(&sidecar, e))
    })?;
    Ok(())
}

/// Writes one score per training sample as Parquet: `train_id`, `score`, `rank` (1 = best),
/// `n_queries` (queries combined), `method`; metadata `inflow.method`, `inflow.sign_convention` and `inflow.aggregate` (how the
/// per-query scores were combined).
/// A partial result (`part`) covers the part's rows only and carries [`part_metadata`].
#[allow(clippy::too_many_arguments)]
pub fn write_per_train_parquet(
    path: &Path,
    train_ids: &[String],
    scores: &[f32],
    n_queries: usize,
    method: &str,
    sign_convention: &str,
    aggregate: &str,
    part: Option<&PartScope>,
) -> Result<()> {
    use super::table::{write_table, Column};
    let n = train_ids.len();
    let extra = part.map(part_metadata).unwrap_or_default();
    let mut meta = vec![
        ("inflow.method", method),
        ("inflow.sign_convention", sign_convention),
        ("inflow.aggregate", aggregate),
    ];
    meta.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    write_table(
        path,
        vec![
            ("train_id", Column::Str(train_ids.to_vec())),
            ("score", Column::F32(scores.to_vec())),
            ("rank", Column::U32(super::ranks(scores))),
            ("n_queries", Column::U32(vec![n_queries as u32; n])),
            ("method", Column::Str(vec![method.to_string(); n])),
        ],
        &meta,
    )
}

/// File metadata of a partial score file: `inflow.part` (I/N), `inflow.rows` (`start..end`,
/// global rows scored), `inflow.n_rows` (rows of the whole store), `inflow.top_k`.
pub fn part_metadata(p: &PartScope) -> Vec<(String, String)> {
    vec![
        ("inflow.part".into(), p.part.to_string()),
        (
            "inflow.rows".into(),
            format!("{}..{}", p.rows.start, p.rows.end),
        ),
        ("inflow.n_rows".into(), p.n_rows.to_string()),
        ("inflow.top_k".into(), p.top_k.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;
    use arrow_array::Array;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn result() -> ScoreResult {
        ScoreResult {
            topk: vec![vec![(2, 0.9), (0, 0.5)], vec![(1, 0.7), (2, -0.1)]],
            full: Some(vec![0.5, 0.2, 0.9, 0.0, 0.7, -0.1]),
            n_train: 3,
            part: None,
        }
    }

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn topk_parquet_reads_back_with_columns_and_metadata() {
        let dir = temp_dir("topk_pq");
        let path = dir.join("top.parquet");
        write_topk_parquet(
            &path,
            &ids("q", 2),
            &ids("t", 3),
            &result(),
            "cosine",
            "higher helps",
        )
        .unwrap();
        let reader =
            ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let kv: Vec<(String, Option<String>)> = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|k| (k.key.clone(), k.value.clone()))
            .collect();
        for (key, value) in [
            ("inflow.method", "cosine"),
            ("inflow.sign_convention", "higher helps"),
            ("inflow.version", crate::version()),
        ] {
            assert!(
                kv.contains(&(key.to_string(), Some(value.to_string()))),
                "{key}: {kv:?}"
            );
        }
        let arrow_meta = reader.schema().metadata();
        assert_eq!(
            arrow_meta.get("inflow.method").map(String::as_str),
            Some("cosine")
        );
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["query_id", "train_id", "score", "rank", "method"]);
        let col = |name: &str| b.column_by_name(name).unwrap().clone();
        let strings = |name: &str| -> Vec<String> {
            let c = col(name);
            let s = c.as_any().downcast_ref::<StringArray>().unwrap();
            (0..s.len()).map(|i| s.value(i).to_string()).collect()
        };
        assert_eq!(strings("query_id"), ["q0", "q0", "q1", "q1"]);
        assert_eq!(strings("train_id"), ["t2", "t0", "t1", "t2"]);
        assert_eq!(strings("method"), ["cosine"; 4]);
        let score = col("score");
        let score = score.as_any().downcast_ref::<Float32Array>().unwrap();
        assert_eq!(score.values().to_vec(), [0.9, 0.5, 0.7, -0.1]);
        let rank = col("rank");
        let rank = rank.as_any().downcast_ref::<UInt32Array>().unwrap();
        assert_eq!(rank.values().to_vec(), [1, 2, 1, 2]);

        let err = write_topk_parquet(&path, &ids("q", 1), &ids("t", 3), &result(), "m", "s");
        assert!(err.is_err(), "query id count must match");
    }

    #[test]
    fn full_npy_has_matrix_and_sidecar() {
        let dir = temp_dir("full_npy");
        let path = dir.join("scores.npy");
        write_full_npy(&path, &result(), &ids("q", 2), "dot", "positive helps").unwrap();
        let f = npy::NpyFile::open(&path).unwrap();
        assert_eq!(f.shape(), [2, 3]);
        assert_eq!(f.to_f32_vec(), result().full.unwrap());
        let side: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(side["method"], "dot");
        assert_eq!(side["sign_convention"], "positive helps");
        assert_eq!(side["query_ids"], json!(["q0", "q1"]));
        assert_eq!(side["shape"], json!([2, 3]));
        let mut no_full = result();
        no_full.full = None;
        assert!(write_full_npy(&path, &no_full, &ids("q", 2), "dot", "s").is_err());
    }
}
