//! Plain Parquet tables (named columns plus file metadata), written atomically and read back,
//! for score files that are not top-k lists (ICP scores, per-task aggregates, comparisons).

use std::path::Path;
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Float32Array, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use crate::atomic_write::write_atomic;
use crate::{Error, Result};

/// One column of a table.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    Str(Vec<String>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    U32(Vec<u32>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Str(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::U32(v) => v.len(),
        }
    }

    /// Numeric values as f64 (None for strings).
    pub fn as_f64(&self) -> Option<Vec<f64>> {
        match self {
            Column::Str(_) => None,
            Column::F32(v) => Some(v.iter().map(|&x| x as f64).collect()),
            Column::F64(v) => Some(v.clone()),
            Column::U32(v) => Some(v.iter().map(|&x| x as f64).collect()),
        }
    }

    /// String values (None for numbers).
    pub fn as_str(&self) -> Option<&[String]> {
        match self {
            Column::Str(v) => Some(v),
            _ => None,
        }
    }
}

/// Named columns, in file order.
pub type Columns = Vec<(String, Column)>;
/// Key-value metadata pairs.
pub type Metadata = Vec<(String, String)>;

/// Writes `columns` (equal lengths) as one Parquet file with key-value metadata `meta`
/// (also put in the Arrow schema, where pyarrow and pandas read it).
pub fn write_table(path: &Path, columns: Vec<(&str, Column)>, meta: &[(&str, &str)]) -> Result<()> {
    let pq = |e: &dyn std::fmt::Display| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let n = columns.first().map_or(0, |c| c.1.len());
    if columns.iter().any(|c| c.1.len() != n) {
        return Err(Error::Msg(format!(
            "{}: columns of different lengths",
            path.display()
        )));
    }
    let mut meta: Vec<(String, String)> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    meta.push(("inflow.version".into(), crate::version().into()));
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, c)| {
            let dt = match c {
                Column::Str(_) => DataType::Utf8,
                Column::F32(_) => DataType::Float32,
                Column::F64(_) => DataType::Float64,
                Column::U32(_) => DataType::UInt32,
            };
            Field::new(*name, dt, false)
        })
        .collect();
    let schema = Arc::new(Schema::new_with_metadata(
        fields,
        meta.iter().cloned().collect(),
    ));
    let arrays: Vec<ArrayRef> = columns
        .into_iter()
        .map(|(_, c)| -> ArrayRef {
            match c {
                Column::Str(v) => Arc::new(StringArray::from(v)),
                Column::F32(v) => Arc::new(Float32Array::from(v)),
                Column::F64(v) => Arc::new(Float64Array::from(v)),
                Column::U32(v) => Arc::new(UInt32Array::from(v)),
            }
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).map_err(|e| pq(&e))?;
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(
            meta.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect(),
        ))
        .build();
    write_atomic(path, |file| {
        let mut w = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| pq(&e))?;
        w.write(&batch).map_err(|e| pq(&e))?;
        w.close().map_err(|e| pq(&e))?;
        Ok(())
    })?;
    Ok(())
}

/// Reads every column of a Parquet file whose types map to [`Column`] (utf8, float32/64,
/// uint32/64, int64); other columns are skipped. Also returns the file's metadata.
pub fn read_table(path: &Path) -> Result<(Columns, Metadata)> {
    let pq = |e: &dyn std::fmt::Display| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| pq(&e))?;
    let meta: Metadata = builder
        .schema()
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(|e| pq(&e))?;
    let mut cols: Columns = Vec::new();
    for f in schema.fields() {
        let c = match f.data_type() {
            DataType::Utf8 => Column::Str(vec![]),
            DataType::Float32 => Column::F32(vec![]),
            DataType::Float64 | DataType::Int64 | DataType::UInt64 => Column::F64(vec![]),
            DataType::UInt32 => Column::U32(vec![]),
            _ => continue,
        };
        cols.push((f.name().clone(), c));
    }
    for batch in reader {
        let batch = batch.map_err(|e| pq(&e))?;
        for (name, col) in cols.iter_mut() {
            let a = batch
                .column_by_name(name)
                .ok_or_else(|| pq(&format!("column {name} missing in a batch")))?;
            let any = a.as_any();
            match col {
                Column::Str(v) => {
                    let s = any
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| pq(&"utf8"))?;
                    v.extend((0..s.len()).map(|i| s.value(i).to_string()));
                }
                Column::F32(v) => {
                    let s = any
                        .downcast_ref::<Float32Array>()
                        .ok_or_else(|| pq(&"f32"))?;
                    v.extend(s.values().iter().copied());
                }
                Column::U32(v) => {
                    let s = any
                        .downcast_ref::<UInt32Array>()
                        .ok_or_else(|| pq(&"u32"))?;
                    v.extend(s.values().iter().copied());
                }
                Column::F64(v) => {
                    if let Some(s) = any.downcast_ref::<Float64Array>() {
                        v.extend(s.values().iter().copied());
                    } else if let Some(s) = any.downcast_ref::<Int64Array>() {
                        v.extend(s.values().iter().map(|&x| x as f64));
                    } else if let Some(s) = any.downcast_ref::<UInt64Array>() {
                        v.extend(s.values().iter().map(|&x| x as f64));
                    } else {
                        return Err(pq(&format!("column {name}: unexpected type")));
                    }
                }
            }
        }
    }
    Ok((cols, meta))
}
