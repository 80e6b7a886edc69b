//! The feature store: a folder per run (DESIGN.md, "store").
//!
//! ```text
//! manifest.json              spec, status, written shards
//! features-00000.npy         rows × dim: f16, f32 or int8; packed bits rows × ⌈dim/8⌉ (u8)
//! scales-00000.npy           int8 only: rows, f32; a row is scale · q
//! norms-00000.npy            rows, f32 L2 norms of the stored rows
//! samples-00000.parquet      the shard's rows of the samples table
//! samples.parquet            all rows in order, once complete
//! ```
//!
//! Shard `i` covers rows `[i * shard_size, min((i + 1) * shard_size, n_samples))`. Every file
//! is written to a temporary name, fsynced and renamed, and only then is the shard added to the
//! manifest (written the same way): a killed run resumes where it stopped, and a shard listed in
//! the manifest is always whole. Files the manifest does not name are ignored and overwritten.

pub mod compress;
pub mod lock;
mod manifest;
pub mod merge;
pub mod npy;
pub mod quantize;
mod samples;

use std::fs;
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use serde_json::Value;

pub use lock::WriterLock;
pub use manifest::{
    differences, Compact, Dtype, Manifest, Part, PartInfo, ShardInfo, Status, StoreSpec,
    FORMAT_VERSION,
};
pub use npy::NpyFile;
pub use samples::{read_samples, SampleRow};

use crate::{Error, Result};

const MANIFEST: &str = "manifest.json";
const SAMPLES: &str = "samples.parquet";

/// An open store: its folder and manifest. Writable when made by
/// [`Store::create_or_resume`], read-only when made by [`Store::open`].
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
    writable: bool,
    /// Held by a writable store: one writing process per folder.
    lock: Option<WriterLock>,
}

impl Store {
    /// Creates a store in `dir` for `n_samples` rows, or resumes the one already there.
    ///
    /// Resuming requires the same spec and `n_samples`; otherwise the error lists every
    /// differing field with both values. Shards whose files are missing or have another size
    /// than recorded are dropped from the manifest so they get written again.
    pub fn create_or_resume(dir: &Path, spec: StoreSpec, n_samples: usize) -> Result<Store> {
        Store::create_or_resume_part(dir, spec, n_samples, None)
    }

    /// [`Store::create_or_resume`] for part `part` of a sharded run (`None`: the whole store):
    /// the store holds only that part's shards ([`Part::shards`]), with their global shard
    /// numbers and rows, and is complete once they are written. `inflow store merge` joins
    /// the parts ([`merge::merge`]). Takes the folder's writer lock for the store's life.
    pub fn create_or_resume_part(
        dir: &Path,
        spec: StoreSpec,
        n_samples: usize,
        part: Option<Part>,
    ) -> Result<Store> {
        validate_spec(dir, &spec)?;
        let n_shards = n_samples.div_ceil(spec.shard_size);
        let part = match part {
            Some(p) if p.count > n_shards => {
                return Err(store_err(
                    dir,
                    format!(
                        "part {p}: the {n_samples} rows make only {n_shards} shards of {} rows, \
                         fewer than the {} parts asked for; use at most {n_shards} parts or a \
                         smaller --shard-size",
                        spec.shard_size, p.count
                    ),
                ))
            }
            Some(p) => {
                let shards = p.shards(n_shards);
                let rows = {
                    let m = |i: usize| (i * spec.shard_size).min(n_samples);
                    [m(shards.start), m(shards.end)]
                };
                Some(PartInfo {
                    index: p.index,
                    count: p.count,
                    shards: [shards.start, shards.end],
                    rows,
                })
            }
            None => None,
        };
        let manifest_path = dir.join(MANIFEST);
        if manifest_path.exists() {
            let lock = WriterLock::acquire(dir)?;
            let mut store = Store::open(dir)?;
            store.writable = true;
            store.lock = Some(lock);
            let have = part_value(
                spec_value(&store.manifest.spec, store.manifest.n_samples),
                store.manifest.part,
            );
            let want = part_value(spec_value(&spec, n_samples), part);
            store.refuse_differences(
                &have,
                &want,
                "Use another --out directory, or run with the same settings as the store.",
            )?;
            let before = store.manifest.shards.len();
            let spec = store.manifest.spec.clone();
            store
                .manifest
                .shards
                .retain(|s| shard_files_intact(dir, &spec, s));
            if store.manifest.shards.len() != before {
                store.manifest.status = Status::InProgress;
                store.save_manifest()?;
            }
            return Ok(store);
        }
        if let Ok(entries) = fs::read_dir(dir) {
            let mut entries = entries.filter(|e| {
                e.as_ref()
                    .map_or(true, |e| e.file_name() != lock::LOCK_FILE)
            });
            if entries.next().is_some() {
                return Err(store_err(
                    dir,
                    "exists, is not empty and has no manifest.json, so it is not an inflow store; \
                     choose a new or empty --out directory",
                ));
            }
        }
        let lock = WriterLock::acquire(dir)?;
        let store = Store {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                inflow_version: crate::version().to_string(),
                spec,
                status: Status::InProgress,
                n_samples,
                shards: Vec::new(),
                part,
            },
            writable: true,
            lock: Some(lock),
        };
        store.save_manifest()?;
        Ok(store)
    }

    /// Opens an existing store read-only.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| store_err(&path, format!("cannot read manifest: {e}")))?;
        if manifest.format_version > FORMAT_VERSION {
            return Err(store_err(
                &path,
                format!(
                    "format version {} is newer than this inflow ({}) reads; upgrade inflow",
                    manifest.format_version, FORMAT_VERSION
                ),
            ));
        }
        validate_spec(dir, &manifest.spec)?;
        if manifest.shards.windows(2).any(|w| w[0].index >= w[1].index) {
            return Err(store_err(
                &path,
                "shard entries are not in strictly increasing index order",
            ));
        }
        if let Some(p) = &manifest.part {
            let shards = p.part().shards(manifest.n_shards());
            let rows = manifest.rows_of(&shards);
            if p.count == 0
                || [shards.start, shards.end] != p.shards
                || rows != (p.rows[0]..p.rows[1])
            {
                return Err(store_err(
                    &path,
                    format!(
                        "`part` says part {}/{} with shards {}..{} and rows {}..{}, but the spec \
                         ({} rows, shards of {}) makes that part shards {}..{}, rows {}..{}",
                        p.index,
                        p.count,
                        p.shards[0],
                        p.shards[1],
                        p.rows[0],
                        p.rows[1],
                        manifest.n_samples,
                        manifest.spec.shard_size,
                        shards.start,
                        shards.end,
                        rows.start,
                        rows.end
                    ),
                ));
            }
        }
        let own = manifest.own_shards();
        for s in &manifest.shards {
            let expected = manifest.shard_range(s.index);
            let plain = |n: &str| Path::new(n).file_name() == Some(n.as_ref());
            let why = if !own.contains(&s.index) {
                Some(format!(
                    "is not a shard of this store (it holds shards {}..{})",
                    own.start, own.end
                ))
            } else if (s.start_row, s.end_row) != (expected.start, expected.end) {
                Some(format!(
                    "has rows {}..{}, the spec makes them {}..{}",
                    s.start_row, s.end_row, expected.start, expected.end
                ))
            } else {
                [&s.features, &s.norms, &s.samples]
                    .into_iter()
                    .chain(&s.scales)
                    .find(|n| !plain(n))
                    .map(|n| {
                        format!("names the file `{n}`, expected a file name in the store folder")
                    })
            };
            if let Some(why) = why {
                return Err(store_err(&path, format!("shard entry {} {why}", s.index)));
            }
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            manifest,
            writable: false,
            lock: None,
        })
    }

    /// Which part of a sharded run this store holds (`None`: a whole store).
    pub fn part(&self) -> Option<PartInfo> {
        self.manifest.part
    }

    /// The shards this store holds: its part's, or all of them.
    pub fn own_shards(&self) -> Range<usize> {
        self.manifest.own_shards()
    }

    /// Refuses a part store for work that needs every row (`purpose`, e.g. "scoring"),
    /// saying how to get a whole one.
    pub fn require_whole(&self, purpose: &str) -> Result<()> {
        match &self.manifest.part {
            None => Ok(()),
            Some(p) => Err(store_err(
                &self.dir,
                format!(
                    "is part {} of a sharded index (rows {}..{} of {}); {purpose} needs the whole \
                     store: join the parts with `inflow store merge PART... --out DIR` first \
                     (and score in parts with `score --part I/N` on the merged store)",
                    p.part(),
                    p.rows[0],
                    p.rows[1],
                    self.manifest.n_samples
                ),
            )),
        }
    }

    /// Refuses a part store ([`Store::require_whole`]) or one whose index run has not
    /// finished every row, before `purpose` (e.g. "scoring") reads all of it.
    pub fn require_complete(&self, purpose: &str) -> Result<()> {
        self.require_whole(purpose)?;
        if !self.is_complete() {
            let (done, n) = (self.n_done_rows(), self.n_samples());
            let msg = format!(
                "is not complete ({done} of {n} rows indexed); finish indexing before {purpose}"
            );
            return Err(store_err(&self.dir, msg));
        }
        Ok(())
    }

    /// The writer lock, when this store is open for writing.
    pub fn writer_lock(&self) -> Option<&WriterLock> {
        self.lock.as_ref()
    }

    /// Checks that the store was built with the given settings: `expected` is a JSON object
    /// whose keys are a subset of the spec's (`model`, `data`, `features`, `dtype`, `dim`,
    /// `shard_size`); each given key must equal the store's value. A mismatch error names
    /// every differing field with both values.
    pub fn check_compatible(&self, expected: &Value) -> Result<()> {
        let Value::Object(want) = expected else {
            return Err(Error::Msg(
                "check_compatible expects a JSON object of spec fields".into(),
            ));
        };
        let Value::Object(have) = spec_value(&self.manifest.spec, self.manifest.n_samples) else {
            unreachable!("a struct serializes to an object")
        };
        let mut subset = serde_json::Map::new();
        for key in want.keys() {
            let v = have
                .get(key)
                .ok_or_else(|| Error::Msg(format!("'{key}' is not a store spec field")))?;
            subset.insert(key.clone(), v.clone());
        }
        self.refuse_differences(
            &Value::Object(subset),
            expected,
            "Use the model and feature settings the store was built with, or index again.",
        )
    }

    fn refuse_differences(&self, have: &Value, want: &Value, advice: &str) -> Result<()> {
        let diffs = differences(have, want);
        if diffs.is_empty() {
            return Ok(());
        }
        Err(store_err(
            &self.dir,
            format!(
                "was built with different settings:\n  {}\n{advice}",
                diffs.join("\n  ")
            ),
        ))
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest as last written or read.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What the store holds.
    pub fn spec(&self) -> &StoreSpec {
        &self.manifest.spec
    }

    /// Feature vector length.
    pub fn dim(&self) -> usize {
        self.manifest.spec.dim
    }

    /// Writes a complete store of `n` synthetic feature rows into `dir` (benchmarks, tests of
    /// curvature and scoring) and opens it: `rows(range)` gives the rows of each shard in
    /// turn, recorded with [`SampleRow::placeholder`]s.
    pub fn write_synthetic(
        dir: &Path,
        spec: StoreSpec,
        n: usize,
        mut rows: impl FnMut(Range<usize>) -> Vec<f32>,
    ) -> Result<Store> {
        let mut store = Store::create_or_resume(dir, spec, n)?;
        for i in 0..store.n_shards() {
            let range = store.shard_range(i);
            let meta: Vec<SampleRow> = range.clone().map(SampleRow::placeholder).collect();
            store.write_shard(i, &rows(range), &meta)?;
        }
        store.finish()?;
        Store::open(dir)
    }

    /// Total rows planned.
    pub fn n_samples(&self) -> usize {
        self.manifest.n_samples
    }

    /// Number of shards the rows split into.
    pub fn n_shards(&self) -> usize {
        self.manifest.n_shards()
    }

    /// Global rows of shard `index`.
    pub fn shard_range(&self, index: usize) -> Range<usize> {
        self.manifest.shard_range(index)
    }

    /// Whether shard `index` is listed in the manifest (and therefore whole).
    pub fn is_shard_done(&self, index: usize) -> bool {
        self.shard_info(index).is_some()
    }

    /// Shards still to write, in increasing order.
    pub fn pending_shards(&self) -> Vec<usize> {
        self.own_shards()
            .filter(|&i| !self.is_shard_done(i))
            .collect()
    }

    /// Rows in written shards.
    pub fn n_done_rows(&self) -> usize {
        self.manifest
            .shards
            .iter()
            .map(|s| s.end_row - s.start_row)
            .sum()
    }

    /// Whether every shard is written and [`Store::finish`] has run.
    pub fn is_complete(&self) -> bool {
        self.manifest.status == Status::Complete
    }

    fn shard_info(&self, index: usize) -> Option<&ShardInfo> {
        self.manifest.shards.iter().find(|s| s.index == index)
    }

    fn done_shard(&self, index: usize) -> Result<&ShardInfo> {
        self.shard_info(index).ok_or_else(|| {
            store_err(
                &self.dir,
                format!("shard {index} is not written (of {})", self.n_shards()),
            )
        })
    }

    /// Writes shard `index`: `features` is rows × dim row-major (cast to the store dtype),
    /// `samples` one record per row. Refuses a shard that is already written, wrong lengths,
    /// and values that are not finite once stored (f16 overflows above 65504).
    pub fn write_shard(
        &mut self,
        index: usize,
        features: &[f32],
        samples: &[SampleRow],
    ) -> Result<()> {
        if !self.writable {
            return Err(store_err(
                &self.dir,
                "opened read-only; cannot write shards",
            ));
        }
        if index >= self.n_shards() {
            return Err(store_err(
                &self.dir,
                format!(
                    "shard {index} does not exist (store has {} shards)",
                    self.n_shards()
                ),
            ));
        }
        if !self.own_shards().contains(&index) {
            return Err(store_err(
                &self.dir,
                format!(
                    "shard {index} is not in this part store's shards {:?}",
                    self.own_shards()
                ),
            ));
        }
        if self.is_shard_done(index) {
            return Err(store_err(
                &self.dir,
                format!("shard {index} is already written"),
            ));
        }
        let range = self.shard_range(index);
        let (rows, dim) = (range.len(), self.dim());
        if samples.len() != rows || features.len() != rows * dim {
            return Err(store_err(
                &self.dir,
                format!(
                    "shard {index} has {rows} rows of {dim} features; got {} samples and {} values",
                    samples.len(),
                    features.len()
                ),
            ));
        }

        let names = [
            format!("features-{index:05}.npy"),
            format!("norms-{index:05}.npy"),
            format!("samples-{index:05}.parquet"),
        ];
        let [fpath, npath, spath] = names.clone().map(|n| self.dir.join(n));
        check_finite(&self.dir, index, features, dim, "in the input")?;
        let shape = [rows, dim];
        let mut scales_name = None;
        let (mut bytes, norms) = match self.spec().dtype {
            Dtype::F32 => (
                npy::write_file(&fpath, &shape, features)?,
                row_norms(features, dim),
            ),
            Dtype::F16 => {
                // Slice conversions: vectorized (F16C when the CPU has it).
                let mut stored = vec![f16::ZERO; features.len()];
                stored.convert_from_f32_slice(features);
                // Norms of the rounded vectors, so cosine is exact for what is on disk.
                let mut as_f32 = vec![0f32; features.len()];
                stored.convert_to_f32_slice(&mut as_f32);
                check_finite(
                    &self.dir,
                    index,
                    &as_f32,
                    dim,
                    "after the cast to f16 (|x| > 65504?); use dtype f32",
                )?;
                (
                    npy::write_file(&fpath, &shape, &stored)?,
                    row_norms(&as_f32, dim),
                )
            }
            Dtype::I8 => {
                let (codes, scales) = quantize::quantize_i8(features, dim);
                // Norms of the stored rows, s · ‖q‖, so cosine is exact for what is on disk.
                let norms = codes
                    .chunks_exact(dim)
                    .zip(&scales)
                    .map(|(q, &s)| {
                        let sq: i64 = q.iter().map(|&c| c as i64 * c as i64).sum();
                        ((sq as f64).sqrt() * s as f64) as f32
                    })
                    .collect();
                let name = format!("scales-{index:05}.npy");
                let b = npy::write_file(&self.dir.join(&name), &[rows], &scales)?;
                scales_name = Some(name);
                (b + npy::write_file(&fpath, &shape, &codes)?, norms)
            }
            Dtype::Bit => {
                let bits = quantize::pack_signs(features, dim);
                (
                    npy::write_file(&fpath, &[rows, dim.div_ceil(8)], &bits)?,
                    // The sign sketch keeps no length: record the input's.
                    row_norms(features, dim),
                )
            }
        };
        bytes += npy::write_file(&npath, &[rows], &norms)?;
        bytes += crate::atomic_write::write_atomic(&spath, |file| {
            let mut w = samples::SamplesWriter::new(&spath, file)?;
            w.write(samples)?;
            w.close()
        })?;

        let [features, norms, samples] = names;
        self.manifest.shards.push(ShardInfo {
            index,
            start_row: range.start,
            end_row: range.end,
            features,
            norms,
            samples,
            scales: scales_name,
            bytes,
        });
        self.manifest.shards.sort_by_key(|s| s.index);
        self.save_manifest()
    }

    /// Lists shards whose files are already in the folder (linked by [`merge::merge`]) as
    /// written, after checking each against its recorded size and rows; one manifest write.
    fn adopt_shards(&mut self, infos: Vec<ShardInfo>) -> Result<()> {
        for info in infos {
            let expected = self.shard_range(info.index);
            if !self.own_shards().contains(&info.index)
                || (info.start_row, info.end_row) != (expected.start, expected.end)
            {
                return Err(store_err(
                    &self.dir,
                    format!(
                        "shard entry {} (rows {}..{}) does not fit this store (its shards {}..{}, rows {}..{} for this one)",
                        info.index,
                        info.start_row,
                        info.end_row,
                        self.own_shards().start,
                        self.own_shards().end,
                        expected.start,
                        expected.end
                    ),
                ));
            }
            if !shard_files_intact(&self.dir, self.spec(), &info) {
                return Err(store_err(
                    &self.dir,
                    format!(
                        "the files of shard {} are missing, not the size recorded ({} bytes) or \
                         have headers other than the manifest's",
                        info.index, info.bytes
                    ),
                ));
            }
            if !self.is_shard_done(info.index) {
                self.manifest.shards.push(info);
            }
        }
        self.manifest.shards.sort_by_key(|s| s.index);
        self.save_manifest()
    }

    /// Writes `samples.parquet` (every row in order) and marks the store complete once all
    /// shards are written. Calling it again on a complete store does nothing.
    pub fn finish(&mut self) -> Result<()> {
        let all = self.dir.join(SAMPLES);
        if self.is_complete() && all.exists() {
            self.writable = false;
            self.lock = None;
            return Ok(());
        }
        if !self.writable {
            return Err(store_err(&self.dir, "opened read-only; cannot finish"));
        }
        let pending = self.pending_shards();
        if !pending.is_empty() {
            let first: Vec<String> = pending.iter().take(10).map(|i| i.to_string()).collect();
            return Err(store_err(
                &self.dir,
                format!(
                    "{} of {} shards are not written yet (first: {}); index them before finishing",
                    pending.len(),
                    self.n_shards(),
                    first.join(", ")
                ),
            ));
        }
        crate::atomic_write::write_atomic(&all, |file| {
            let mut w = samples::SamplesWriter::new(&all, file)?;
            for i in self.own_shards() {
                w.write(&self.shard_samples(i)?)?;
            }
            w.close()
        })?;
        self.manifest.status = Status::Complete;
        self.save_manifest()?;
        // A complete store takes no more writes: let the next writer (a resume) in.
        self.writable = false;
        self.lock = None;
        Ok(())
    }

    /// The mapped feature file of a written shard, checked to be rows × dim in the store dtype
    /// (rows × ⌈dim/8⌉ bytes for bits).
    pub fn shard_features_npy(&self, index: usize) -> Result<NpyFile> {
        let info = self.done_shard(index)?;
        let f = NpyFile::open(&self.dir.join(&info.features))?;
        let dtype = self.spec().dtype;
        let want = [info.end_row - info.start_row, dtype.file_cols(self.dim())];
        if f.shape() != want || f.dtype() != dtype {
            return Err(store_err(
                f.path(),
                format!(
                    "holds {} {:?}, the manifest expects {dtype} {want:?}",
                    f.dtype(),
                    f.shape(),
                ),
            ));
        }
        Ok(f)
    }

    /// The per-row scales of a written int8 shard.
    pub fn shard_scales(&self, index: usize) -> Result<Vec<f32>> {
        let info = self.done_shard(index)?;
        let name = info.scales.as_ref().ok_or_else(|| {
            store_err(
                &self.dir,
                format!("shard {index} of this int8 store lists no scales file"),
            )
        })?;
        self.row_vector(index, name)
    }

    /// A written shard's features, ready to read as f32 in any store dtype.
    pub fn shard_rows(&self, index: usize) -> Result<ShardRows> {
        let npy = self.shard_features_npy(index)?;
        let side = match self.spec().dtype {
            Dtype::I8 => self.shard_scales(index)?,
            Dtype::Bit => self.shard_norms(index)?,
            Dtype::F16 | Dtype::F32 => Vec::new(),
        };
        Ok(ShardRows {
            npy,
            side,
            dtype: self.spec().dtype,
            dim: self.dim(),
        })
    }

    /// Shard features as f32 (f16 widened, int8 scaled, bits as ±‖z‖/√dim) and the shard's
    /// row count.
    pub fn shard_features(&self, index: usize) -> Result<(Vec<f32>, usize)> {
        let r = self.shard_rows(index)?;
        let rows = r.rows();
        if self.spec().dtype.is_float() {
            return Ok((r.npy.to_f32_vec(), rows));
        }
        let mut out = vec![0f32; rows * self.dim()];
        r.copy_rows_f32(0, rows, &mut out);
        Ok((out, rows))
    }

    /// L2 norms of a written shard's stored rows.
    pub fn shard_norms(&self, index: usize) -> Result<Vec<f32>> {
        let name = self.done_shard(index)?.norms.clone();
        self.row_vector(index, &name)
    }

    /// A shard's f32 file of one value per row (norms, scales), checked.
    fn row_vector(&self, index: usize, name: &str) -> Result<Vec<f32>> {
        let info = self.done_shard(index)?;
        let f = NpyFile::open(&self.dir.join(name))?;
        let rows = info.end_row - info.start_row;
        if f.shape() != [rows] || f.dtype() != Dtype::F32 {
            return Err(store_err(
                f.path(),
                format!("holds {} {:?}, expected f32 [{rows}]", f.dtype(), f.shape()),
            ));
        }
        Ok(f.to_f32_vec())
    }

    /// The sample records of a written shard.
    pub fn shard_samples(&self, index: usize) -> Result<Vec<SampleRow>> {
        let info = self.done_shard(index)?;
        let path = self.dir.join(&info.samples);
        let rows = read_samples(&path)?;
        if rows.len() != info.end_row - info.start_row {
            return Err(store_err(
                &path,
                format!(
                    "has {} rows, the manifest expects {}",
                    rows.len(),
                    info.end_row - info.start_row
                ),
            ));
        }
        Ok(rows)
    }

    /// Sample records of all written shards in row order (`samples.parquet` once complete).
    pub fn samples(&self) -> Result<Vec<SampleRow>> {
        let all = self.dir.join(SAMPLES);
        if self.is_complete() && all.exists() {
            let rows = read_samples(&all)?;
            let want = self.manifest.rows_of(&self.own_shards()).len();
            if rows.len() != want {
                return Err(store_err(
                    &all,
                    format!("has {} rows, the manifest expects {want}", rows.len()),
                ));
            }
            return Ok(rows);
        }
        let mut out = Vec::with_capacity(self.n_done_rows());
        for s in &self.manifest.shards {
            out.extend(self.shard_samples(s.index)?);
        }
        Ok(out)
    }

    fn save_manifest(&self) -> Result<()> {
        let path = self.dir.join(MANIFEST);
        let mut text = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| store_err(&path, format!("cannot serialize manifest: {e}")))?;
        text.push('\n');
        crate::atomic_write::write_atomic(&path, |file| {
            let mut w = BufWriter::new(file);
            w.write_all(text.as_bytes())
                .and_then(|_| w.flush())
                .map_err(|e| Error::io(&path, e))
        })?;
        Ok(())
    }
}

fn store_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn validate_spec(dir: &Path, spec: &StoreSpec) -> Result<()> {
    if spec.dim == 0 || spec.shard_size == 0 {
        return Err(store_err(
            dir,
            format!(
                "dim ({}) and shard_size ({}) must be positive",
                spec.dim, spec.shard_size
            ),
        ));
    }
    Ok(())
}

/// Whether a file named `name` in a store folder is part of the store's own layout (manifest,
/// run.json, shards, samples table, writer lock), which only the store's writers may write.
pub fn is_layout_file(name: &str) -> bool {
    [MANIFEST, SAMPLES, "run.json", lock::LOCK_FILE].contains(&name)
        || ["features-", "norms-", "scales-", "samples-"]
            .iter()
            .any(|p| name.starts_with(p))
}

/// A spec value with the part it holds (`part`: absent for a whole store), to compare both.
fn part_value(mut v: Value, part: Option<PartInfo>) -> Value {
    if let (Value::Object(m), Some(p)) = (&mut v, part) {
        m.insert(
            "part".into(),
            serde_json::to_value(p.part()).unwrap_or(Value::Null),
        );
    }
    v
}

/// The spec plus `n_samples` as one JSON object, so one diff covers everything compared.
fn spec_value(spec: &StoreSpec, n_samples: usize) -> Value {
    let mut v = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("n_samples".into(), n_samples.into());
    }
    v
}

/// Whether a shard's files are there, of the recorded total size, and with `.npy` headers
/// that agree with the manifest (dtype, rows × columns): a shard failing any of this is not
/// trusted on resume but written again.
fn shard_files_intact(dir: &Path, spec: &StoreSpec, s: &ShardInfo) -> bool {
    let size = |n: &str| fs::metadata(dir.join(n)).map(|m| m.len()).ok();
    let scales = match &s.scales {
        Some(n) => size(n),
        None => Some(0),
    };
    let sizes_ok = match (size(&s.features), size(&s.norms), size(&s.samples), scales) {
        (Some(a), Some(b), Some(c), Some(d)) => a + b + c + d == s.bytes,
        _ => false,
    };
    let rows = s.end_row.saturating_sub(s.start_row);
    let header_is = |name: &str, dtype: Dtype, shape: &[usize]| {
        npy::read_header(&dir.join(name)).is_ok_and(|(d, sh)| d == dtype && sh == shape)
    };
    let vector = |name: &str| header_is(name, Dtype::F32, &[rows]);
    sizes_ok
        && header_is(
            &s.features,
            spec.dtype,
            &[rows, spec.dtype.file_cols(spec.dim)],
        )
        && vector(&s.norms)
        && s.scales.as_deref().is_none_or(vector)
}

/// The features of one written shard, memory-mapped, with what its dtype needs to read them
/// as f32 (int8 scales, or the norms a sign sketch stands for).
pub struct ShardRows {
    npy: NpyFile,
    side: Vec<f32>,
    dtype: Dtype,
    dim: usize,
}

impl ShardRows {
    /// Rows in the shard.
    pub fn rows(&self) -> usize {
        self.npy.rows()
    }

    /// The mapped file.
    pub fn npy(&self) -> &NpyFile {
        &self.npy
    }

    /// Per-row scales of an int8 shard (empty for other dtypes).
    pub fn scales(&self) -> &[f32] {
        if self.dtype == Dtype::I8 {
            &self.side
        } else {
            &[]
        }
    }

    /// Rows `r0..r1` as f32 into `out` ((r1 − r0) × dim), dequantized.
    pub fn copy_rows_f32(&self, r0: usize, r1: usize, out: &mut [f32]) {
        match self.dtype {
            Dtype::F16 | Dtype::F32 => self.npy.copy_rows_f32(r0, r1, out),
            Dtype::I8 => {
                let codes = self.npy.row_bytes(r0, r1);
                // SAFETY: i8 and u8 have the same size and alignment; every bit pattern is valid.
                let codes: &[i8] =
                    unsafe { std::slice::from_raw_parts(codes.as_ptr().cast(), codes.len()) };
                quantize::dequantize_i8(codes, &self.side[r0..r1], self.dim, out)
            }
            Dtype::Bit => quantize::unpack_signs(
                self.npy.row_bytes(r0, r1),
                &self.side[r0..r1],
                self.dim,
                out,
            ),
        }
    }
}

/// L2 norm of each row, accumulated in f64 so long rows do not lose precision.
fn row_norms(values: &[f32], dim: usize) -> Vec<f32> {
    values
        .chunks_exact(dim)
        .map(|r| {
            r.iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        })
        .collect()
}

fn check_finite(dir: &Path, index: usize, values: &[f32], dim: usize, hint: &str) -> Result<()> {
    match values.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(p) => Err(store_err(
            dir,
            format!(
                "shard {index}, row {} of the shard, column {}: value {} is not finite {hint}",
                p / dim,
                p % dim,
                values[p]
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The unit tests' scratch folders, and whether numpy is there for interop checks.
    pub(crate) use inflow_testkit::{python, python_has, scratch as temp_dir};

    /// The list of numbers a Python `script` prints (`repr(list)`), run on the store `dir`.
    fn python_floats(script: &str, dir: &Path) -> Vec<f32> {
        python(script, &[dir.to_str().unwrap()])
            .trim()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|x| x.trim().parse::<f64>().unwrap() as f32)
            .collect()
    }

    pub(crate) fn spec(dtype: Dtype, dim: usize, shard_size: usize, rank: u32) -> StoreSpec {
        StoreSpec {
            model: json!({"name": "tiny", "sha256": "abc"}),
            data: json!({"path": "train.jsonl"}),
            features: json!({"kind": "logra", "rank": rank, "seed": 0}),
            dtype,
            dim,
            shard_size,
            compact: None,
        }
    }

    pub(crate) fn sample(row: usize) -> SampleRow {
        SampleRow {
            id: format!("{row}-h{:x}", row * 7919),
            row: row as u64 + 100,
            n_tokens: 10 + row as u32,
            n_loss_tokens: 3 + row as u32 % 4,
            loss: 0.5 + row as f32,
            truncated: row.is_multiple_of(3),
            prompt_tokens_cut: if row.is_multiple_of(3) { row as u32 } else { 0 },
            response_tokens_cut: 0,
            prompt: format!("prompt ünïcode {row}"),
            response: format!("response {row}"),
        }
    }

    /// Deterministic pseudo-random values in [-1, 1) (xorshift), to avoid a rand dependency.
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Writes every shard of `features` (n × dim) into a new store; returns it finished.
    pub(crate) fn filled_store(dir: &Path, spec: StoreSpec, features: &[f32]) -> Store {
        let n = features.len() / spec.dim;
        let dim = spec.dim;
        let mut store = Store::create_or_resume(dir, spec, n).unwrap();
        for i in store.pending_shards() {
            let r = store.shard_range(i);
            let rows: Vec<_> = r.clone().map(sample).collect();
            store
                .write_shard(i, &features[r.start * dim..r.end * dim], &rows)
                .unwrap();
        }
        store.finish().unwrap();
        store
    }

    #[test]
    fn shards_out_of_order_resume_and_read_back() {
        let dir = temp_dir("store_rw");
        let (dim, n) = (6, 11);
        let feats = random(n * dim, 1);
        let mut s = Store::create_or_resume(&dir, spec(Dtype::F16, dim, 4, 16), n).unwrap();
        assert_eq!((s.n_shards(), s.pending_shards()), (3, vec![0, 1, 2]));
        let write = |s: &mut Store, i: usize| {
            let r = s.shard_range(i);
            let rows: Vec<_> = r.clone().map(sample).collect();
            s.write_shard(i, &feats[r.start * dim..r.end * dim], &rows)
        };
        write(&mut s, 2).unwrap();
        write(&mut s, 0).unwrap();
        assert!(
            write(&mut s, 0).is_err(),
            "a written shard is not rewritten"
        );
        assert!(
            s.finish().is_err(),
            "finish must refuse while shard 1 is missing"
        );
        drop(s);

        let mut s = Store::create_or_resume(&dir, spec(Dtype::F16, dim, 4, 16), n).unwrap();
        assert_eq!(s.pending_shards(), vec![1]);
        assert!(s.is_shard_done(2) && !s.is_shard_done(1));
        assert_eq!(s.n_done_rows(), 4 + 3);
        let got: Vec<_> = s.samples().unwrap().iter().map(|r| r.row).collect();
        assert_eq!(got, vec![100, 101, 102, 103, 108, 109, 110]);
        write(&mut s, 1).unwrap();
        s.finish().unwrap();
        s.finish().unwrap();

        let s = Store::open(&dir).unwrap();
        assert!(s.is_complete());
        assert_eq!(s.samples().unwrap(), (0..n).map(sample).collect::<Vec<_>>());
        assert_eq!(read_samples(&dir.join(SAMPLES)).unwrap().len(), n);
        for i in 0..3 {
            let r = s.shard_range(i);
            let (f, rows) = s.shard_features(i).unwrap();
            assert_eq!(rows, r.len());
            let want = &feats[r.start * dim..r.end * dim];
            for (a, b) in f.iter().zip(want) {
                assert_eq!(*a, f16::from_f32(*b).to_f32());
                assert!((a - b).abs() <= 1e-3);
            }
            let norms = s.shard_norms(i).unwrap();
            for (k, row) in f.chunks(dim).enumerate() {
                let exact = row.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
                assert!((norms[k] as f64 - exact).abs() < 1e-6, "norm of stored row");
            }
        }
        let m: Value =
            serde_json::from_str(&fs::read_to_string(dir.join(MANIFEST)).unwrap()).unwrap();
        assert_eq!(m["status"], "complete");
        assert_eq!(m["spec"]["dtype"], "f16");
        assert_eq!(m["shards"][2]["features"], "features-00002.npy");
    }

    #[test]
    fn f32_store_is_exact_and_numpy_reads_it() {
        let dir = temp_dir("store_f32");
        let feats = random(5 * 3, 2);
        let s = filled_store(&dir, spec(Dtype::F32, 3, 2, 8), &feats);
        let all: Vec<f32> = (0..s.n_shards())
            .flat_map(|i| s.shard_features(i).unwrap().0)
            .collect();
        assert_eq!(all, feats);
        if !python_has("numpy") {
            eprintln!(
                "f32_store_is_exact_and_numpy_reads_it: numpy not found, Python check skipped"
            );
            return;
        }
        let script = "import sys,numpy as np\n\
            a=np.concatenate([np.load(sys.argv[1]+f'/features-{i:05d}.npy',mmap_mode='r') for i in range(3)])\n\
            n=np.concatenate([np.load(sys.argv[1]+f'/norms-{i:05d}.npy',mmap_mode='r') for i in range(3)])\n\
            assert a.shape==(5,3) and np.allclose(np.linalg.norm(a,axis=1),n,rtol=1e-6)\n\
            print(repr(a.astype(float).ravel().tolist()))";
        let back = python_floats(script, &dir);
        assert_eq!(back, feats);
    }

    /// int8 and bit stores read back dequantized, resume intact, and numpy reads them with the
    /// recipe README gives (scale · q; unpackbits → ±norm/√dim).
    #[test]
    fn compact_stores_dequantize_in_rust_and_numpy_alike() {
        let (n, dim) = (5, 11);
        let feats = random(n * dim, 3);
        for dtype in [Dtype::I8, Dtype::Bit] {
            let dir = temp_dir(&format!("store_{dtype}"));
            let s = filled_store(&dir, spec(dtype, dim, 2, 8), &feats);
            assert_eq!(s.manifest().shards[0].scales.is_some(), dtype == Dtype::I8);
            let all: Vec<f32> = (0..s.n_shards())
                .flat_map(|i| s.shard_features(i).unwrap().0)
                .collect();
            let norms: Vec<f32> = (0..s.n_shards())
                .flat_map(|i| s.shard_norms(i).unwrap())
                .collect();
            for (r, (row, orig)) in all.chunks(dim).zip(feats.chunks(dim)).enumerate() {
                let max = orig.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in row.iter().zip(orig) {
                    match dtype {
                        Dtype::I8 => assert!((a - b).abs() <= max / 254.0 + 1e-6, "{a} {b}"),
                        _ => assert_eq!(a.signum(), if *b > 0.0 { 1.0 } else { -1.0 }),
                    }
                }
                let nrm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((nrm - norms[r]).abs() < 1e-5 * norms[r].max(1.0), "row {r}");
            }
            // A resumed store keeps its intact shards (the scales file counts in their size).
            let again = Store::create_or_resume(&dir, spec(dtype, dim, 2, 8), n).unwrap();
            assert!(again.pending_shards().is_empty(), "{dtype}");
            if !python_has("numpy") {
                continue;
            }
            let script = "import sys,json,numpy as np\n\
                d=sys.argv[1]; m=json.load(open(d+'/manifest.json')); dim=m['spec']['dim']\n\
                rows=[]\n\
                for sh in m['shards']:\n\
                \x20   a=np.load(d+'/'+sh['features'],mmap_mode='r')\n\
                \x20   if m['spec']['dtype']=='int8':\n\
                \x20       x=a*np.load(d+'/'+sh['scales'])[:,None]\n\
                \x20   else:\n\
                \x20       s=np.unpackbits(a,axis=1,count=dim).astype(np.float32)*2-1\n\
                \x20       x=s*(np.load(d+'/'+sh['norms'])/np.sqrt(dim))[:,None]\n\
                \x20   rows.append(x)\n\
                print(repr(np.concatenate(rows).astype(float).ravel().tolist()))";
            let back = python_floats(script, &dir);
            for (a, b) in back.iter().zip(&all) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{dtype}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn spec_mismatch_is_refused_naming_fields() {
        let dir = temp_dir("store_spec");
        Store::create_or_resume(&dir, spec(Dtype::F16, 4, 2, 16), 5).unwrap();
        let msg = Store::create_or_resume(&dir, spec(Dtype::F32, 4, 2, 32), 6)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("features.rank: store has 16, this run asks for 32"),
            "{msg}"
        );
        assert!(
            msg.contains("dtype: store has \"f16\", this run asks for \"f32\""),
            "{msg}"
        );
        assert!(
            msg.contains("n_samples: store has 5, this run asks for 6"),
            "{msg}"
        );
        assert!(msg.contains("--out"), "{msg}");
        assert!(!msg.contains("model"), "equal fields are not listed: {msg}");

        let s = Store::open(&dir).unwrap();
        s.check_compatible(
            &json!({"dim": 4, "features": {"kind": "logra", "rank": 16, "seed": 0}}),
        )
        .unwrap();
        let msg = s
            .check_compatible(&json!({"model": {"name": "other", "sha256": "abc"}}))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("model.name: store has \"tiny\", this run asks for \"other\""),
            "{msg}"
        );
        assert!(s.check_compatible(&json!({"colour": 1})).is_err());

        let other = temp_dir("store_foreign");
        fs::write(other.join("notes.txt"), "mine").unwrap();
        let msg = Store::create_or_resume(&other, spec(Dtype::F16, 4, 2, 16), 5)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not an inflow store"), "{msg}");
    }

    #[test]
    fn stray_and_damaged_files_do_not_count_as_done() {
        let dir = temp_dir("store_stray");
        let (dim, n) = (2, 6);
        let sp = spec(Dtype::F32, dim, 2, 16);
        let mut s = Store::create_or_resume(&dir, sp.clone(), n).unwrap();
        s.write_shard(0, &random(4, 3), &[sample(0), sample(1)])
            .unwrap();
        // A killed run can leave a temp file and shard files the manifest never got to name.
        fs::write(dir.join(".features-00001.npy.tmp.999"), b"partial").unwrap();
        npy::write_file(&dir.join("features-00001.npy"), &[2, 2], &[1f32; 4]).unwrap();
        npy::write_file(&dir.join("norms-00001.npy"), &[2], &[1f32; 2]).unwrap();
        drop(s);
        let mut s = Store::create_or_resume(&dir, sp.clone(), n).unwrap();
        assert_eq!(s.pending_shards(), vec![1, 2]);
        assert!(s.shard_features(1).is_err());
        let feats = random(4, 4);
        s.write_shard(1, &feats, &[sample(2), sample(3)]).unwrap();
        assert_eq!(s.shard_features(1).unwrap(), (feats, 2));

        // A listed shard whose file was cut short is dropped on resume and rewritten.
        let f0 = dir.join("features-00000.npy");
        let bytes = fs::read(&f0).unwrap();
        fs::write(&f0, &bytes[..bytes.len() - 4]).unwrap();
        let msg = Store::open(&dir)
            .unwrap()
            .shard_features(0)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("truncated") && msg.contains("features-00000.npy"),
            "{msg}"
        );
        drop(s);
        let s = Store::create_or_resume(&dir, sp.clone(), n).unwrap();
        assert_eq!(s.pending_shards(), vec![0, 2]);

        // A listed shard of the recorded size whose header disagrees with the manifest (here
        // shape (1, 4) for the entry's 2 × 2) is not trusted on resume either.
        let f1 = dir.join("features-00001.npy");
        let text = fs::read(&f1).unwrap();
        let mut bytes = text.clone();
        let at = text.windows(6).position(|w| w == b"(2, 2)").unwrap();
        bytes[at..at + 6].copy_from_slice(b"(1, 4)");
        fs::write(&f1, &bytes).unwrap();
        assert!(Store::open(&dir).unwrap().shard_features(1).is_err());
        drop(s);
        let s = Store::create_or_resume(&dir, sp, n).unwrap();
        assert_eq!(s.pending_shards(), vec![0, 1, 2]);
    }

    #[test]
    fn write_shard_validates_input() {
        let dir = temp_dir("store_validate");
        let mut s = Store::create_or_resume(&dir, spec(Dtype::F16, 2, 2, 16), 3).unwrap();
        let rows = [sample(0), sample(1)];
        assert!(
            s.write_shard(0, &[1.0; 3], &rows).is_err(),
            "wrong feature count"
        );
        assert!(
            s.write_shard(0, &[1.0; 4], &rows[..1]).is_err(),
            "wrong sample count"
        );
        assert!(s.write_shard(5, &[1.0; 4], &rows).is_err(), "no such shard");
        let msg = s
            .write_shard(0, &[1.0, 1e6, 0.0, 0.0], &rows)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("f16") && msg.contains("column 1"), "{msg}");
        assert_eq!(s.pending_shards(), vec![0, 1]);
        s.write_shard(1, &[0.0, 0.0], &[sample(2)]).unwrap();
        assert_eq!(s.shard_norms(1).unwrap(), vec![0.0]);
        assert!(
            Store::open(&dir)
                .unwrap()
                .write_shard(0, &[1.0; 4], &rows)
                .is_err(),
            "read-only"
        );
    }
}
