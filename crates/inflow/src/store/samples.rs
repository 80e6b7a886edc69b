//! The per-sample table (`samples-NNNNN.parquet` per shard, `samples.parquet` when complete):
//! one row per stored feature row, so every score can be joined back to the input file.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One training sample's record, in the same order as the feature rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleRow {
    /// Stable sample id (row number plus content hash, from `data`).
    pub id: String,
    /// Row of this sample in the source input file (0-based).
    pub row: u64,
    /// Tokens fed to the model (prompt + response, after truncation).
    pub n_tokens: u32,
    /// Tokens that carry loss (the response tokens kept).
    pub n_loss_tokens: u32,
    /// Mean loss over the loss tokens at the indexed parameters.
    pub loss: f32,
    /// Whether the sample was cut to the maximum length.
    pub truncated: bool,
    /// Prompt tokens the cut dropped (0 in stores from before this column).
    #[serde(default)]
    pub prompt_tokens_cut: u32,
    /// Response tokens the cut dropped, at the response's end (0 in older stores).
    #[serde(default)]
    pub response_tokens_cut: u32,
    /// The rendered prompt text.
    pub prompt: String,
    /// The response text.
    pub response: String,
}

impl SampleRow {
    /// The record of a synthetic feature row (benchmarks, tests of curvature and scoring): the
    /// row number as id, no tokens and no text.
    pub fn placeholder(row: usize) -> SampleRow {
        SampleRow {
            id: row.to_string(),
            row: row as u64,
            n_tokens: 0,
            n_loss_tokens: 0,
            loss: 0.0,
            truncated: false,
            prompt_tokens_cut: 0,
            response_tokens_cut: 0,
            prompt: String::new(),
            response: String::new(),
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("row", DataType::UInt64, false),
        Field::new("n_tokens", DataType::UInt32, false),
        Field::new("n_loss_tokens", DataType::UInt32, false),
        Field::new("loss", DataType::Float32, false),
        Field::new("truncated", DataType::Boolean, false),
        Field::new("prompt_tokens_cut", DataType::UInt32, false),
        Field::new("response_tokens_cut", DataType::UInt32, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("response", DataType::Utf8, false),
    ]))
}

fn batch(rows: &[SampleRow]) -> std::result::Result<RecordBatch, arrow_schema::ArrowError> {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.id))),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.row))),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.n_tokens),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.n_loss_tokens),
            )),
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.loss))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.truncated)),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.prompt_tokens_cut),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.response_tokens_cut),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.prompt),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| &r.response),
            )),
        ],
    )
}

/// Streams groups of rows into one Parquet file (memory bounded by one group).
pub(crate) struct SamplesWriter<'a> {
    path: &'a Path,
    writer: ArrowWriter<&'a mut File>,
}

impl<'a> SamplesWriter<'a> {
    /// Starts a samples table in `file`; `path` names it in errors.
    pub(crate) fn new(path: &'a Path, file: &'a mut File) -> Result<Self> {
        let writer = ArrowWriter::try_new(file, schema(), None).map_err(|e| pq_err(path, e))?;
        Ok(SamplesWriter { path, writer })
    }

    /// Appends `rows` as one row group.
    pub(crate) fn write(&mut self, rows: &[SampleRow]) -> Result<()> {
        let b = batch(rows).map_err(|e| pq_err(self.path, e))?;
        self.writer.write(&b).map_err(|e| pq_err(self.path, e))
    }

    /// Writes the footer.
    pub(crate) fn close(self) -> Result<()> {
        self.writer.close().map_err(|e| pq_err(self.path, e))?;
        Ok(())
    }
}

fn pq_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Reads a samples table written by [`SamplesWriter`].
pub fn read_samples(path: &Path) -> Result<Vec<SampleRow>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| pq_err(path, e))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| pq_err(path, e))?;
        let id = column::<StringArray>(path, &b, "id")?;
        let row = column::<UInt64Array>(path, &b, "row")?;
        let n_tokens = column::<UInt32Array>(path, &b, "n_tokens")?;
        let n_loss = column::<UInt32Array>(path, &b, "n_loss_tokens")?;
        let loss = column::<Float32Array>(path, &b, "loss")?;
        let truncated = column::<BooleanArray>(path, &b, "truncated")?;
        // Stores written before these columns have none: nothing counted, read as 0.
        let prompt_cut = optional_column::<UInt32Array>(path, &b, "prompt_tokens_cut")?;
        let response_cut = optional_column::<UInt32Array>(path, &b, "response_tokens_cut")?;
        let prompt = column::<StringArray>(path, &b, "prompt")?;
        let response = column::<StringArray>(path, &b, "response")?;
        for i in 0..b.num_rows() {
            out.push(SampleRow {
                id: id.value(i).to_string(),
                row: row.value(i),
                n_tokens: n_tokens.value(i),
                n_loss_tokens: n_loss.value(i),
                loss: loss.value(i),
                truncated: truncated.value(i),
                prompt_tokens_cut: prompt_cut.map_or(0, |c| c.value(i)),
                response_tokens_cut: response_cut.map_or(0, |c| c.value(i)),
                prompt: prompt.value(i).to_string(),
                response: response.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

/// The named column if the table has it (see [`column`]).
fn optional_column<'b, A: Array + 'static>(
    path: &Path,
    b: &'b RecordBatch,
    name: &str,
) -> Result<Option<&'b A>> {
    if b.column_by_name(name).is_none() {
        return Ok(None);
    }
    column(path, b, name).map(Some)
}

/// The named column as a concrete array type, or an error naming the file and column.
fn column<'b, A: Array + 'static>(path: &Path, b: &'b RecordBatch, name: &str) -> Result<&'b A> {
    let col = b
        .column_by_name(name)
        .ok_or_else(|| pq_err(path, format!("samples table has no column '{name}'")))?;
    if col.null_count() > 0 {
        return Err(pq_err(path, format!("column '{name}' has nulls")));
    }
    col.as_any().downcast_ref::<A>().ok_or_else(|| {
        pq_err(
            path,
            format!("column '{name}' has type {}", col.data_type()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A samples table written before the `*_tokens_cut` columns existed reads with zeros.
    #[test]
    fn tables_without_cut_columns_read_as_zero() {
        let dir = std::env::temp_dir().join(format!("inflow-samples-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("samples.parquet");
        let old = Arc::new(Schema::new(
            schema()
                .fields()
                .iter()
                .filter(|f| !f.name().ends_with("_tokens_cut"))
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let row = SampleRow {
            id: "0-abc".into(),
            row: 0,
            n_tokens: 5,
            n_loss_tokens: 2,
            loss: 1.5,
            truncated: true,
            prompt_tokens_cut: 7,
            response_tokens_cut: 1,
            prompt: "p".into(),
            response: "r".into(),
        };
        let full = batch(std::slice::from_ref(&row)).unwrap();
        let cols: Vec<_> = old
            .fields()
            .iter()
            .map(|f| full.column_by_name(f.name()).unwrap().clone())
            .collect();
        let b = RecordBatch::try_new(old.clone(), cols).unwrap();
        let mut file = File::create(&path).unwrap();
        let mut w = ArrowWriter::try_new(&mut file, old, None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        let back = read_samples(&path).unwrap();
        assert_eq!(
            back,
            vec![SampleRow {
                prompt_tokens_cut: 0,
                response_tokens_cut: 0,
                ..row
            }]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
