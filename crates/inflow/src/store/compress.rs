//! `store compress`: a compact copy of a store. Each row is projected, z = Pᵀ z_parent with a
//! seeded Rademacher P ∈ {±1/√k}^{D×k} (Johnson–Lindenstrauss: inner products are kept in
//! expectation, with relative error ~1/√k), then cast to the new element type (int8, bits,
//! f16). Streamed: parent rows are read a bounded chunk at a time, P is regenerated block by
//! block from the seed, and output shards are written atomically, so a killed run resumes.

use std::ops::Range;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{Compact, Dtype, SampleRow, Store, StoreSpec};
use crate::random::Stream;
use crate::{Error, Result};

/// Rows of P generated (and applied) at a time.
const BLOCK_ROWS: usize = 2048;
/// f32 values of parent rows held at once (256 MiB).
const CHUNK_FLOATS: usize = 64 << 20;
/// f32 values of P a projection may hold whole (for queries, 256 MiB); larger ones are
/// regenerated block by block.
const HELD_FLOATS: usize = 64 << 20;

/// What `store compress` makes.
#[derive(Debug, Clone)]
pub struct CompressOptions {
    /// Projected dimension k; `None` keeps every dimension (only the element type changes).
    pub dim: Option<usize>,
    pub dtype: Dtype,
    /// Seed of P.
    pub seed: u64,
    /// Rows per output shard; `None`: as many as keep a shard's f32 rows within 256 MiB
    /// (at most 4,096), which bounds the memory of a run whatever the number of rows.
    pub shard_size: Option<usize>,
}

/// The seeded map z ↦ Pᵀ z of a compact store (identity when it has no projection).
#[derive(Debug, Clone)]
pub struct Projection {
    from: usize,
    to: usize,
    seed: Option<u64>,
    /// P whole (from × to), when small enough to keep.
    held: Option<Vec<f32>>,
}

impl Projection {
    /// P for `from` → `to` dimensions from `seed`; `None` is the identity.
    pub fn new(from: usize, to: usize, seed: Option<u64>) -> Self {
        let held = (seed.is_some() && from * to <= HELD_FLOATS).then(|| {
            let mut p = vec![0f32; from * to];
            for (blk, chunk) in p.chunks_mut(BLOCK_ROWS * to).enumerate() {
                fill_block(seed.unwrap_or(0), blk, to, chunk);
            }
            p
        });
        Self {
            from,
            to,
            seed,
            held,
        }
    }

    /// The projection a compact store's rows were made with.
    pub fn of(store: &Store) -> Option<Self> {
        let c = store.spec().compact.as_ref()?;
        Some(Self::new(c.parent_dim, store.dim(), c.projection_seed))
    }

    /// Input length.
    pub fn from_dim(&self) -> usize {
        self.from
    }

    /// Maps `rows` vectors (rows × from, row-major) to rows × to.
    pub fn apply(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        if x.len() != rows * self.from {
            return Err(Error::Msg(format!(
                "projection: expected {rows} × {} values, got {}",
                self.from,
                x.len()
            )));
        }
        let Some(seed) = self.seed else {
            return Ok(x.to_vec());
        };
        let (d, k) = (self.from, self.to);
        let mut out = vec![0f32; rows * k];
        let mut block = Vec::new();
        let threads = rayon::current_num_threads().max(1);
        let per = rows.div_ceil(threads).max(1);
        for (blk, r0) in (0..d).step_by(BLOCK_ROWS).enumerate() {
            let r1 = (r0 + BLOCK_ROWS).min(d);
            let p: &[f32] = match &self.held {
                Some(all) => &all[r0 * k..r1 * k],
                None => {
                    block.resize((r1 - r0) * k, 0.0);
                    fill_block(seed, blk, k, &mut block);
                    &block
                }
            };
            // out[rows, k] += x[rows, r0..r1] · P_blk, the rows split across threads.
            out.par_chunks_mut(per * k).enumerate().for_each(|(t, o)| {
                let n = o.len() / k;
                let xs = &x[t * per * d..];
                // SAFETY: o is n × k (row stride k); x rows t·per.. are read at row stride d,
                // columns r0..r1 (within d); p is (r1 − r0) × k. No buffers overlap.
                unsafe {
                    gemm::gemm(
                        n,
                        k,
                        r1 - r0,
                        o.as_mut_ptr(),
                        1,
                        k as isize,
                        true,
                        xs.as_ptr().add(r0),
                        1,
                        d as isize,
                        p.as_ptr(),
                        1,
                        k as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        }
        Ok(out)
    }
}

/// Rows `blk · BLOCK_ROWS ..` of P (each `k` long) into `out`.
fn fill_block(seed: u64, blk: usize, k: usize, out: &mut [f32]) {
    Stream::new(seed, &format!("compress/{blk}")).rademacher(out, 1.0 / (k as f32).sqrt());
}

/// sha256 of a store spec as JSON: what a compact store records of its parent.
pub fn spec_sha256(spec: &StoreSpec) -> String {
    let text = serde_json::to_string(spec).unwrap_or_default();
    format!("{:x}", Sha256::digest(text.as_bytes()))
}

/// Writes (or resumes) the compact copy of `parent` in `out`; `on_shard(rows_done, n)` after
/// each shard.
pub fn compress(
    parent: &Store,
    out: &Path,
    o: &CompressOptions,
    on_shard: &mut dyn FnMut(usize, usize),
) -> Result<Store> {
    let pdim = parent.dim();
    parent.require_complete("compressing")?;
    if let Some(k) = o.dim {
        if k == 0 || k >= pdim {
            return Err(Error::Msg(format!(
                "--dim {k}: a projection needs 0 < dim < the store's {pdim}; omit --dim to keep every dimension"
            )));
        }
    }
    if o.dim.is_none() && o.dtype == parent.spec().dtype {
        return Err(Error::Msg(format!(
            "the store is already {} at dim {pdim}: give --dim or another --dtype",
            o.dtype
        )));
    }
    if o.shard_size == Some(0) {
        return Err(Error::Msg("--shard-size must be positive".into()));
    }
    let parent_dir = std::fs::canonicalize(parent.dir()).map_err(|e| Error::io(parent.dir(), e))?;
    let seed = o.dim.map(|_| o.seed);
    let k = o.dim.unwrap_or(pdim);
    let pspec = parent.spec();
    let spec = StoreSpec {
        model: pspec.model.clone(),
        data: pspec.data.clone(),
        features: pspec.features.clone(),
        dtype: o.dtype,
        dim: k,
        shard_size: o
            .shard_size
            .unwrap_or((CHUNK_FLOATS / o.dim.unwrap_or(pdim)).clamp(64, 4096)),
        compact: Some(Compact {
            parent: parent_dir.to_string_lossy().into_owned(),
            parent_spec_sha256: spec_sha256(pspec),
            parent_dim: pdim,
            parent_dtype: pspec.dtype,
            projection_seed: seed,
        }),
    };
    let n = parent.n_samples();
    let mut store = Store::create_or_resume(out, spec, n)?;
    // run.json names the model and data the features came from: score featurizes queries by it.
    let run = parent.dir().join("run.json");
    if run.exists() {
        let text = std::fs::read(&run).map_err(|e| Error::io(&run, e))?;
        crate::atomic_write::write_atomic(&out.join("run.json"), |f| {
            use std::io::Write;
            f.write_all(&text).map_err(|e| Error::io(&run, e))
        })?;
    }
    let proj = Projection::new(pdim, k, seed);
    let chunk_rows = (CHUNK_FLOATS / pdim).max(1);
    let mut reader = ParentRows::new(parent);
    for shard in store.pending_shards() {
        let range = store.shard_range(shard);
        let mut feats = Vec::with_capacity(range.len() * k);
        for c0 in range.clone().step_by(chunk_rows) {
            let c1 = (c0 + chunk_rows).min(range.end);
            let x = reader.features(c0..c1)?;
            if seed.is_some() {
                feats.extend(proj.apply(&x, c1 - c0)?);
            } else {
                feats.extend_from_slice(&x);
            }
        }
        let samples = reader.samples(range.clone())?;
        store.write_shard(shard, &feats, &samples)?;
        on_shard(store.n_done_rows(), n);
    }
    store.finish()?;
    Ok(store)
}

/// Reads any range of a store's rows, shard by shard, keeping the last shard's samples.
struct ParentRows<'a> {
    store: &'a Store,
    cached: Option<(usize, Vec<SampleRow>)>,
}

impl<'a> ParentRows<'a> {
    fn new(store: &'a Store) -> Self {
        Self {
            store,
            cached: None,
        }
    }

    fn shards(&self, rows: &Range<usize>) -> Range<usize> {
        let s = self.store.spec().shard_size;
        rows.start / s..rows.end.div_ceil(s)
    }

    fn features(&self, rows: Range<usize>) -> Result<Vec<f32>> {
        let dim = self.store.dim();
        let mut out = vec![0f32; rows.len() * dim];
        for sh in self.shards(&rows) {
            let r = self.store.shard_range(sh);
            let (a, b) = (rows.start.max(r.start), rows.end.min(r.end));
            let f = self.store.shard_rows(sh)?;
            f.copy_rows_f32(
                a - r.start,
                b - r.start,
                &mut out[(a - rows.start) * dim..(b - rows.start) * dim],
            );
        }
        Ok(out)
    }

    fn samples(&mut self, rows: Range<usize>) -> Result<Vec<SampleRow>> {
        let mut out = Vec::with_capacity(rows.len());
        for sh in self.shards(&rows) {
            if self.cached.as_ref().map(|c| c.0) != Some(sh) {
                self.cached = Some((sh, self.store.shard_samples(sh)?));
            }
            let r = self.store.shard_range(sh);
            let (a, b) = (rows.start.max(r.start), rows.end.min(r.end));
            if let Some((_, s)) = &self.cached {
                out.extend_from_slice(&s[a - r.start..b - r.start]);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{filled_store, random, spec, temp_dir};

    #[test]
    fn projection_matches_an_explicit_matrix_held_or_regenerated() {
        let (d, k, rows) = (BLOCK_ROWS + 37, 16, 5);
        let x = random(rows * d, 1);
        let p = Projection::new(d, k, Some(7));
        let mut streamed = p.clone();
        streamed.held = None;
        let full = p.held.clone().unwrap();
        let want: Vec<f32> = (0..rows * k)
            .map(|i| {
                let (r, c) = (i / k, i % k);
                (0..d)
                    .map(|j| x[r * d + j] as f64 * full[j * k + c] as f64)
                    .sum::<f64>() as f32
            })
            .collect();
        for got in [
            p.apply(&x, rows).unwrap(),
            streamed.apply(&x, rows).unwrap(),
        ] {
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
        assert!(full.iter().all(|v| v.abs() == 0.25));
    }

    #[test]
    fn compress_streams_shards_resumes_and_refuses_another_seed() {
        let (n, d) = (23, 40);
        let feats = random(n * d, 2);
        let pdir = temp_dir("compress_parent");
        let parent = filled_store(&pdir, spec(Dtype::F32, d, 4, 8), &feats);
        let out = temp_dir("compress_out");
        let o = CompressOptions {
            dim: Some(8),
            dtype: Dtype::F32,
            seed: 3,
            shard_size: Some(5),
        };
        let mut seen = Vec::new();
        let c = compress(&parent, &out, &o, &mut |d, _| seen.push(d)).unwrap();
        assert_eq!(seen, vec![5, 10, 15, 20, 23]);
        let want = Projection::new(d, 8, Some(3)).apply(&feats, n).unwrap();
        let got: Vec<f32> = (0..c.n_shards())
            .flat_map(|i| c.shard_features(i).unwrap().0)
            .collect();
        assert_eq!(got, want);
        assert_eq!(c.samples().unwrap(), parent.samples().unwrap());
        let again = compress(&parent, &out, &o, &mut |_, _| panic!("nothing left")).unwrap();
        assert!(again.is_complete());
        let msg = compress(
            &parent,
            &out,
            &CompressOptions {
                seed: 4,
                ..o.clone()
            },
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("compact.projection_seed: store has 3, this run asks for 4"),
            "{msg}"
        );
        let msg = compress(
            &parent,
            &temp_dir("c2"),
            &CompressOptions { dim: Some(40), ..o },
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("0 < dim < the store's 40"), "{msg}");
    }
}
