//! `manifest.json`: what a store holds (its spec) and which shards are whole.

use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The manifest layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Element type of stored feature vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// IEEE half precision: half the disk and bandwidth, ~3 significant digits.
    F16,
    /// IEEE single precision.
    F32,
    #[serde(rename = "int8")]
    /// Signed 8-bit integers with one f32 scale per row (`scales-*.npy`): x ≈ scale · q,
    /// scale = max|x| / 127. A quarter of f32's bytes; scored by int8 products.
    I8,
    /// 1-bit sign sketches: bit i of a row is x_i > 0, packed eight to a byte, most
    /// significant bit first (`np.unpackbits(a, axis=1, count=dim)`). Scored by popcount
    /// (SimHash: cos θ ≈ cos(π · hamming / dim), Charikar 2002).
    Bit,
}

impl Dtype {
    /// Bytes one row of `dim` values takes on disk.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            Dtype::F16 => 2 * dim,
            Dtype::F32 => 4 * dim,
            Dtype::I8 => dim,
            Dtype::Bit => dim.div_ceil(8),
        }
    }

    /// Bytes one row's features take on disk with the row's scale (int8); the norm is extra.
    pub fn stored_row_bytes(self, dim: usize) -> usize {
        self.row_bytes(dim) + if self == Dtype::I8 { 4 } else { 0 }
    }

    /// Columns of the `.npy` feature matrix for rows of `dim` values (packed bytes for bits).
    pub fn file_cols(self, dim: usize) -> usize {
        match self {
            Dtype::Bit => dim.div_ceil(8),
            _ => dim,
        }
    }

    /// Whether rows are stored as floating-point values (f16, f32).
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32)
    }

    /// Bytes of one element of the `.npy` file.
    pub fn file_size(self) -> usize {
        match self {
            Dtype::F16 => 2,
            Dtype::F32 => 4,
            Dtype::I8 | Dtype::Bit => 1,
        }
    }
}

crate::error::names!(Dtype: "--dtype", F16 = "f16", F32 = "f32", I8 = "int8", Bit = "bit");

/// Everything that defines a store's content. Two runs with equal specs produce
/// interchangeable shards; the store compares `model`, `data` and `features` without
/// interpreting them (their meaning belongs to the modules that fill them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// The model: path, hashes of weights and tokenizer, and so on.
    pub model: Value,
    /// The training data: file, format, hash, template, truncation.
    pub data: Value,
    /// The feature map: tracked modules, projection kind, ranks, seed.
    pub features: Value,
    /// Element type on disk.
    pub dtype: Dtype,
    /// Length of one feature vector.
    pub dim: usize,
    /// Rows per shard (the last shard may be shorter).
    pub shard_size: usize,
    /// For a store made by `store compress`: its parent and the map from the parent's
    /// features to these. Absent for stores of features as computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compact: Option<Compact>,
}

/// How a compact store's rows derive from its parent's: z = Pᵀ z_parent, then cast to the
/// store dtype. P ∈ {±1/√dim}^{parent_dim × dim} is Rademacher, regenerated from `seed`
/// (absent: no projection, dim = parent_dim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compact {
    /// The parent store folder (absolute), read again by `score --rerank`.
    pub parent: String,
    /// sha256 of the parent's spec (its manifest's `spec`, as JSON): a parent indexed again
    /// with other settings is noticed.
    pub parent_spec_sha256: String,
    /// The parent's feature length.
    pub parent_dim: usize,
    /// The parent's element type.
    pub parent_dtype: Dtype,
    /// Seed of the projection, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projection_seed: Option<u64>,
}

impl StoreSpec {
    /// The spec of a store of synthetic features (benchmarks, tests of curvature and scoring):
    /// no model and no data behind them, only the feature map.
    pub fn synthetic(features: Value, dtype: Dtype, dim: usize, shard_size: usize) -> StoreSpec {
        StoreSpec {
            model: serde_json::json!({"synthetic": true}),
            data: serde_json::json!({"synthetic": true}),
            features,
            dtype,
            dim,
            shard_size,
            compact: None,
        }
    }
}

/// Whether every shard has been written and the combined samples table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Some shards may still be missing.
    InProgress,
    /// All shards are written and `samples.parquet` holds every row.
    Complete,
}

/// One written shard. A shard listed in the manifest is whole: its files were renamed into
/// place before the manifest naming them was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// Shard number: rows `[index * shard_size, min((index + 1) * shard_size, n_samples))`.
    pub index: usize,
    /// First global row.
    pub start_row: usize,
    /// One past the last global row.
    pub end_row: usize,
    /// Feature matrix file (rows × dim, store dtype).
    pub features: String,
    /// Row L2 norms file (rows, f32), computed from the stored (rounded) vectors; for a bit
    /// store, of the vectors before the sign was taken (their length, which signs lose).
    pub norms: String,
    /// Per-sample table for the shard's rows.
    pub samples: String,
    /// Per-row scales file (rows, f32) of an int8 shard: x ≈ scale · q.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<String>,
    /// Total size of the three files, to notice a damaged shard on resume.
    pub bytes: u64,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// inflow version that created the store.
    pub inflow_version: String,
    /// What the store holds.
    pub spec: StoreSpec,
    /// In progress or complete.
    pub status: Status,
    /// Total rows planned.
    pub n_samples: usize,
    /// Written shards, sorted by index.
    pub shards: Vec<ShardInfo>,
    /// For a part store (`index --shard I/N`): which part of the rows it holds. Absent for a
    /// whole store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartInfo>,
}

/// Part `index` of `count` of a sharded run: a contiguous range of whole shards, so that
/// row ids and order do not depend on how the work was split. Part i holds shards
/// `[⌊i·S/N⌋, ⌊(i+1)·S/N⌋)` of the S shards (sizes differ by at most one shard).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 0-based part number.
    pub index: usize,
    /// Number of parts.
    pub count: usize,
}

impl Part {
    /// Parses `I/N` (0 ≤ I < N), naming `flag` in the error.
    pub fn parse(text: &str, flag: &str) -> std::result::Result<Part, String> {
        let bad = || {
            format!("{flag} {text}: expected I/N, part I (counted from 0) of N parts, e.g. 3/64")
        };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(format!(
                "{flag} {text}: the part number must be below the number of parts (0 ≤ I < N)"
            ));
        }
        Ok(Part { index, count })
    }

    /// The shards of this part among `n_shards`.
    pub fn shards(&self, n_shards: usize) -> Range<usize> {
        (self.index * n_shards / self.count)..((self.index + 1) * n_shards / self.count)
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What a part store's manifest records of its part: the part, and its shards and global
/// rows as half-open ranges `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    pub index: usize,
    pub count: usize,
    pub shards: [usize; 2],
    pub rows: [usize; 2],
}

impl PartInfo {
    /// The part.
    pub fn part(&self) -> Part {
        Part {
            index: self.index,
            count: self.count,
        }
    }
}

impl Manifest {
    /// Number of shards the planned rows split into.
    pub fn n_shards(&self) -> usize {
        self.n_samples.div_ceil(self.spec.shard_size)
    }

    /// Global rows of shard `index`.
    pub fn shard_range(&self, index: usize) -> Range<usize> {
        let start = (index * self.spec.shard_size).min(self.n_samples);
        start..((index + 1) * self.spec.shard_size).min(self.n_samples)
    }

    /// The shards this store holds: its part's, or all.
    pub fn own_shards(&self) -> Range<usize> {
        match &self.part {
            Some(p) => p.shards[0]..p.shards[1],
            None => 0..self.n_shards(),
        }
    }

    /// Global rows of shards `shards` (a range of this store's shards).
    pub fn rows_of(&self, shards: &Range<usize>) -> Range<usize> {
        if shards.is_empty() {
            return 0..0;
        }
        self.shard_range(shards.start).start..self.shard_range(shards.end - 1).end
    }
}

/// Field-by-field differences between two JSON values, as lines
/// `path: store has A, this run asks for B` (paths like `features.rank`, `modules[2]`).
pub fn differences(have: &Value, want: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into("", have, want, &mut out);
    out
}

fn diff_into(path: &str, have: &Value, want: &Value, out: &mut Vec<String>) {
    let join = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (have, want) {
        (Value::Object(a), Value::Object(b)) => {
            let extra = b.keys().filter(|k| !a.contains_key(*k));
            for key in a.keys().chain(extra) {
                match (a.get(key), b.get(key)) {
                    (Some(x), Some(y)) => diff_into(&join(key), x, y, out),
                    (x, y) => out.push(line(&join(key), x, y)),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff_into(&format!("{path}[{i}]"), x, y, out);
            }
        }
        _ if have != want => out.push(line(path, Some(have), Some(want))),
        _ => {}
    }
}

fn line(path: &str, have: Option<&Value>, want: Option<&Value>) -> String {
    let show = |v: Option<&Value>| v.map_or_else(|| "(absent)".to_string(), |v| v.to_string());
    format!(
        "{path}: store has {}, this run asks for {}",
        show(have),
        show(want)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_name_nested_paths_and_both_values() {
        let a = json!({"features": {"rank": 16, "modules": ["q", "k"], "seed": 0}, "dim": 8});
        let b = json!({"features": {"rank": 32, "modules": ["q", "v"], "kind": "logra"}, "dim": 8});
        // Sorted: key order depends on serde_json's map (sorted, or insertion order).
        let mut d = differences(&a, &b);
        d.sort();
        assert_eq!(
            d,
            vec![
                "features.kind: store has (absent), this run asks for \"logra\"",
                "features.modules[1]: store has \"k\", this run asks for \"v\"",
                "features.rank: store has 16, this run asks for 32",
                "features.seed: store has 0, this run asks for (absent)",
            ]
        );
        assert!(differences(&a, &a).is_empty());
    }

    #[test]
    fn shard_ranges_cover_rows_with_short_last_shard() {
        let m = Manifest {
            format_version: FORMAT_VERSION,
            inflow_version: "t".into(),
            spec: StoreSpec {
                model: Value::Null,
                data: Value::Null,
                features: Value::Null,
                dtype: Dtype::F16,
                dim: 4,
                shard_size: 4,
                compact: None,
            },
            status: Status::InProgress,
            n_samples: 10,
            shards: vec![],
            part: None,
        };
        assert_eq!(m.n_shards(), 3);
        assert_eq!(
            (0..3).map(|i| m.shard_range(i)).collect::<Vec<_>>(),
            vec![0..4, 4..8, 8..10]
        );
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.contains("\"dtype\":\"f16\"") && s.contains("\"status\":\"in_progress\""));
        assert!(
            !s.contains("part"),
            "a whole store's manifest is unchanged: {s}"
        );
    }

    #[test]
    fn parts_split_shards_contiguously_and_cover_them_once() {
        for (n_shards, count) in [(10, 3), (7, 7), (64, 5), (3, 1)] {
            let mut next = 0;
            for index in 0..count {
                let r = Part { index, count }.shards(n_shards);
                assert_eq!(r.start, next, "{n_shards} shards, part {index}/{count}");
                assert!(r.len() >= n_shards / count && r.len() <= n_shards.div_ceil(count));
                next = r.end;
            }
            assert_eq!(next, n_shards);
        }
        assert_eq!(
            Part::parse("3/64", "--shard"),
            Ok(Part {
                index: 3,
                count: 64
            })
        );
        for bad in ["64/64", "3", "a/4", "1/0", "-1/4"] {
            let e = Part::parse(bad, "--shard").unwrap_err();
            assert!(e.contains("--shard") && e.contains(bad), "{e}");
        }
    }
}
