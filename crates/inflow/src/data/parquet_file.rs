//! Parquet input: batches are decoded with the arrow reader and each row becomes the same
//! JSON object a JSONL line would give, so one set of record checks serves both.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    ArrowPrimitiveType, Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type,
    Int8Type, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, GenericListArray, OffsetSizeTrait};
use arrow_schema::{DataType, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::jsonl::hex;
use super::{Format, RawRecord};
use crate::{Error, Result};

/// Rows decoded per batch: bounds memory to a batch of JSON values.
const BATCH_ROWS: usize = 1024;

/// A Parquet file being read row by row.
pub(crate) struct ParquetRecords {
    path: PathBuf,
    schema: SchemaRef,
    reader: ParquetRecordBatchReader,
    /// The current batch, column by column (only columns of a type that maps to JSON).
    columns: Vec<(String, Vec<Value>)>,
    batch_rows: usize,
    pos: usize,
    rows: usize,
}

impl ParquetRecords {
    /// Opens `path`; returns the reader and the file's sha256 in hex.
    pub(crate) fn open(path: &Path) -> Result<(Self, String)> {
        let sha256 = file_sha256(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
        let schema = builder.schema().clone();
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| parquet_error(path, e))?;
        let records = ParquetRecords {
            path: path.to_path_buf(),
            schema,
            reader,
            columns: Vec::new(),
            batch_rows: 0,
            pos: 0,
            rows: 0,
        };
        Ok((records, sha256))
    }

    /// Checks that the columns `format` uses exist and have a usable type: a file-level
    /// problem is reported once, not as every row being bad.
    pub(crate) fn check_columns(&self, format: Format, prompt_only: bool) -> Result<()> {
        let required = if prompt_only {
            format.required_prompt_fields()
        } else {
            format.required_fields()
        };
        for field in format.fields() {
            let found = self.schema.fields().iter().find(|f| f.name() == field);
            let Some(column) = found else {
                if required.contains(field) {
                    let names: Vec<&str> = self
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect();
                    return Err(Error::Parquet {
                        path: self.path.clone(),
                        msg: format!(
                            "no column `{field}`; {}; the file has columns [{}]",
                            format.expectation(),
                            names.join(", ")
                        ),
                    });
                }
                continue;
            };
            let dt = column.data_type();
            let usable = if *field == "messages" {
                is_text(dt) || is_message_list(dt)
            } else {
                is_text(dt)
            };
            if !usable {
                let wanted = if *field == "messages" {
                    "list<struct<role: utf8, content: utf8>> or a utf8 column holding the JSON array"
                } else {
                    "a string (utf8) column"
                };
                return Err(Error::Parquet {
                    path: self.path.clone(),
                    msg: format!(
                        "column `{field}` has type {dt}; {} ({field}: {wanted})",
                        format.expectation()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The next row as a record; `None` after the last row.
    pub(crate) fn next_record(&mut self) -> Result<Option<RawRecord>> {
        while self.pos >= self.batch_rows {
            let Some(batch) = self.reader.next() else {
                return Ok(None);
            };
            let batch = batch.map_err(|e| Error::Parquet {
                path: self.path.clone(),
                msg: e.to_string(),
            })?;
            self.columns = self
                .schema
                .fields()
                .iter()
                .zip(batch.columns())
                .filter_map(|(field, array)| {
                    column_values(array.as_ref()).map(|v| (field.name().clone(), v))
                })
                .collect();
            self.batch_rows = batch.num_rows();
            self.pos = 0;
        }
        let mut fields = Map::new();
        for (name, values) in &mut self.columns {
            if let Some(v) = values.get_mut(self.pos) {
                fields.insert(name.clone(), std::mem::take(v));
            }
        }
        let row = self.rows;
        self.pos += 1;
        self.rows += 1;
        Ok(Some(RawRecord {
            line: row + 1,
            row,
            fields: Ok(fields),
        }))
    }
}

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// sha256 of a file's bytes, streamed.
fn file_sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// A string-like column type (binary is read as UTF-8 text).
fn is_text(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Utf8View
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView => true,
        DataType::Dictionary(_, values) => is_text(values),
        _ => false,
    }
}

/// `list<struct<...>>` (or large list) whose struct has `role` and `content` text fields.
fn is_message_list(dt: &DataType) -> bool {
    let item = match dt {
        DataType::List(item) | DataType::LargeList(item) => item,
        _ => return false,
    };
    let DataType::Struct(fields) = item.data_type() else {
        return false;
    };
    ["role", "content"].iter().all(|name| {
        fields
            .iter()
            .any(|f| f.name() == name && is_text(f.data_type()))
    })
}

/// Every value of a column as JSON (null where the column is null); `None` for a type
/// that has no JSON mapping here (temporal, decimal, maps, unions...), whose column is
/// then left out of the record.
fn column_values(array: &dyn Array) -> Option<Vec<Value>> {
    let n = array.len();
    let mut values: Vec<Value> = match array.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => array
            .as_boolean_opt()?
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Int8 => primitive::<Int8Type>(array, Value::from)?,
        DataType::Int16 => primitive::<Int16Type>(array, Value::from)?,
        DataType::Int32 => primitive::<Int32Type>(array, Value::from)?,
        DataType::Int64 => primitive::<Int64Type>(array, Value::from)?,
        DataType::UInt8 => primitive::<UInt8Type>(array, Value::from)?,
        DataType::UInt16 => primitive::<UInt16Type>(array, Value::from)?,
        DataType::UInt32 => primitive::<UInt32Type>(array, Value::from)?,
        DataType::UInt64 => primitive::<UInt64Type>(array, Value::from)?,
        DataType::Float16 => primitive::<Float16Type>(array, |v| float(v.to_f64()))?,
        DataType::Float32 => primitive::<Float32Type>(array, |v| float(f64::from(v)))?,
        DataType::Float64 => primitive::<Float64Type>(array, float)?,
        DataType::Utf8 => texts(array.as_string_opt::<i32>()?.iter()),
        DataType::LargeUtf8 => texts(array.as_string_opt::<i64>()?.iter()),
        DataType::Utf8View => texts(array.as_string_view_opt()?.iter()),
        DataType::Binary => blobs(array.as_binary_opt::<i32>()?.iter()),
        DataType::LargeBinary => blobs(array.as_binary_opt::<i64>()?.iter()),
        DataType::BinaryView => blobs(array.as_binary_view_opt()?.iter()),
        DataType::List(_) => list(array.as_list_opt::<i32>()?)?,
        DataType::LargeList(_) => list(array.as_list_opt::<i64>()?)?,
        DataType::Struct(fields) => {
            let s = array.as_struct_opt()?;
            let children: Vec<(String, Vec<Value>)> = fields
                .iter()
                .zip(s.columns())
                .filter_map(|(f, c)| column_values(c.as_ref()).map(|v| (f.name().clone(), v)))
                .collect();
            (0..n)
                .map(|i| {
                    let obj: Map<String, Value> = children
                        .iter()
                        .map(|(k, v)| (k.clone(), v.get(i).cloned().unwrap_or(Value::Null)))
                        .collect();
                    Value::Object(obj)
                })
                .collect()
        }
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary_opt()?;
            let distinct = column_values(dict.values().as_ref())?;
            dict.normalized_keys()
                .into_iter()
                .map(|k| distinct.get(k).cloned().unwrap_or(Value::Null))
                .collect()
        }
        _ => return None,
    };
    if let Some(nulls) = array.logical_nulls() {
        for (i, v) in values.iter_mut().enumerate() {
            if nulls.is_null(i) {
                *v = Value::Null;
            }
        }
    }
    Some(values)
}

fn primitive<T: ArrowPrimitiveType>(
    array: &dyn Array,
    f: impl Fn(T::Native) -> Value,
) -> Option<Vec<Value>> {
    Some(
        array
            .as_primitive_opt::<T>()?
            .values()
            .iter()
            .map(|v| f(*v))
            .collect(),
    )
}

/// A finite float as a JSON number; NaN and infinities become null (JSON has no such numbers).
fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

fn texts<'a>(items: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    items
        .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_string())))
        .collect()
}

/// Binary values as text when they are UTF-8, null otherwise.
fn blobs<'a>(items: impl Iterator<Item = Option<&'a [u8]>>) -> Vec<Value> {
    items
        .map(|v| match v.map(std::str::from_utf8) {
            Some(Ok(s)) => Value::String(s.to_string()),
            _ => Value::Null,
        })
        .collect()
}

fn list<O: OffsetSizeTrait>(array: &GenericListArray<O>) -> Option<Vec<Value>> {
    let items = column_values(array.values().as_ref())?;
    let offsets = array.value_offsets();
    Some(
        offsets
            .windows(2)
            .map(|w| {
                let (start, end) = (w[0].as_usize(), w[1].as_usize());
                Value::Array(
                    items
                        .get(start..end)
                        .map(<[Value]>::to_vec)
                        .unwrap_or_default(),
                )
            })
            .collect(),
    )
}
