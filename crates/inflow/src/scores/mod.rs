//! Scoring queries against a store, and the score files (DESIGN.md, "estimators" and "scores").
//!
//! Scores are one blocked matrix product streamed over the shards: for each block of
//! training rows Z, S = Z · Q'ᵀ (Q' the prepared queries), each row scaled by
//! `train_scale(‖z‖)`, then fed to a per-query top-k heap. Training rows are split across
//! threads with a single-threaded sgemm per block (the fastest split measured, STACK.md).
//! Compact stores use their own products: int8 × int8 with i32 sums ([`int8`]) and popcount
//! of sign bits ([`bits`]); the queries are quantized the same way once per run.

pub mod bits;
pub mod checkpoints;
pub mod int8;
pub mod merge;
mod output;
pub mod queries;
pub mod rerank;
pub mod table;
mod topk;

pub use output::{write_full_npy, write_per_train_parquet, write_topk_parquet};

use rayon::prelude::*;

use crate::estimators::Estimator;
use crate::store::{Dtype, Part, ShardRows, Store};
use crate::{Error, Result};
use topk::TopK;

/// 1-based ranks, best (largest) first, ties by position.
pub fn ranks(score: &[f32]) -> Vec<u32> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut r = vec![0u32; score.len()];
    for (k, &i) in idx.iter().enumerate() {
        r[i] = k as u32 + 1;
    }
    r
}

/// One score per training sample from a dense nq × n matrix: the mean over queries.
pub fn mean_over_queries(full: &[f32], nq: usize) -> Vec<f32> {
    let n = full.len() / nq.max(1);
    (0..n)
        .map(|j| (0..nq).map(|q| full[q * n + j]).sum::<f32>() / nq.max(1) as f32)
        .collect()
}

/// The outcome of scoring nq queries against n training rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreResult {
    /// Per query, up to k `(global train row, score)` pairs, best first; equal scores are
    /// ordered by smaller row.
    pub topk: Vec<Vec<(usize, f32)>>,
    /// The dense nq × n score matrix (query-major), when asked for.
    pub full: Option<Vec<f32>>,
    /// Number of training rows scored.
    pub n_train: usize,
    /// For a run over one part of a store's shards (`score --part`): which rows it scored.
    /// Columns of `full` are then rows `part.rows`; `scores merge` joins the parts.
    pub part: Option<PartScope>,
}

/// The share of a store one partial score run covered.
#[derive(Debug, Clone, PartialEq)]
pub struct PartScope {
    pub part: Part,
    /// Global rows scored, `[start, end)`.
    pub rows: std::ops::Range<usize>,
    /// Rows of the whole store.
    pub n_rows: usize,
    /// Entries kept per query (the run's k; a part with fewer rows keeps fewer).
    pub top_k: usize,
}

/// f32 values of training features per block (bounds per-thread memory: 128 MiB). Large
/// blocks matter: every block's sgemm repacks all the queries (nq × dim), so small blocks
/// spend as long packing as multiplying when nq is large.
const BLOCK_FLOATS: usize = 32 << 20;
/// f32 values of one block's scores (block × nq), read by the heaps while still in cache.
const CHUNK_FLOATS: usize = 1 << 20;

/// Scores `nq` queries (`queries`: nq × dim row-major, raw features) against every row of a
/// complete store with `est`, keeping the best `k` per query and, if `full`, the dense matrix.
/// Memory is bounded by one shard's map plus fixed buffers; `on_shard` is called with the
/// number of training rows done after each shard.
pub fn score_store(
    store: &Store,
    queries: &[f32],
    nq: usize,
    est: &dyn Estimator,
    k: usize,
    full: bool,
    on_shard: &mut dyn FnMut(usize),
) -> Result<ScoreResult> {
    score_store_part(store, None, queries, nq, est, k, full, on_shard)
}

/// [`score_store`] over part `part` of the store's shards only ([`Part::shards`]): the
/// result's top-k lists hold global rows of that part, `full` its columns, and
/// [`ScoreResult::part`] says which. `None` scores every row, as [`score_store`].
#[allow(clippy::too_many_arguments)]
pub fn score_store_part(
    store: &Store,
    part: Option<Part>,
    queries: &[f32],
    nq: usize,
    est: &dyn Estimator,
    k: usize,
    full: bool,
    on_shard: &mut dyn FnMut(usize),
) -> Result<ScoreResult> {
    let dim = store.dim();
    // A block's scores (block × nq) stay in cache between the product and the heaps.
    let block = (BLOCK_FLOATS / dim)
        .min(CHUNK_FLOATS / nq.max(1))
        .clamp(16, 1024);
    if let Some(p) = part {
        if p.count > store.n_shards() {
            return Err(Error::Store {
                path: store.dir().to_path_buf(),
                msg: format!(
                    "--part {p}: the store has only {} shards; ask for at most {} parts",
                    store.n_shards(),
                    store.n_shards()
                ),
            });
        }
    }
    Scoring {
        store,
        queries,
        nq,
        est,
        k,
        full,
        part,
    }
    .run(on_shard, block)
}

/// Self-scores s(z, z) of every stored sample under `est` (the self-influence of Koh & Liang
/// 2017 for `influence`, ‖φ(z)‖² for `dot`, 1 for `cosine`), in store order. Mislabelled
/// samples tend to have large self-influence (METHODS.md §5, noise detection).
pub fn self_scores(store: &Store, est: &dyn Estimator) -> Result<Vec<f32>> {
    let dim = store.dim();
    let mut out = Vec::with_capacity(store.n_samples());
    for sh in 0..store.n_shards() {
        let (f, rows) = store.shard_features(sh)?;
        let raw = f[..rows * dim].to_vec();
        let prepared = est.prepare_queries(raw.clone(), dim)?;
        for r in 0..rows {
            let z = &raw[r * dim..(r + 1) * dim];
            let p = &prepared[r * dim..(r + 1) * dim];
            let norm = z.iter().map(|x| x * x).sum::<f32>().sqrt();
            let dot: f32 = z.iter().zip(p).map(|(a, b)| a * b).sum();
            out.push(dot * est.train_scale(norm));
        }
    }
    Ok(out)
}

/// What [`score_store`] computes: the best `k` of the store's rows for each of the `nq`
/// queries under `est`, and the dense matrix if `full`.
#[derive(Clone, Copy)]
struct Scoring<'a> {
    store: &'a Store,
    queries: &'a [f32],
    nq: usize,
    est: &'a dyn Estimator,
    k: usize,
    full: bool,
    part: Option<Part>,
}

impl Scoring<'_> {
    /// [`score_store`] with an explicit block size (training rows per product), so tests can
    /// exercise many blocks on small data.
    fn run(self, on_shard: &mut dyn FnMut(usize), block: usize) -> Result<ScoreResult> {
        let Scoring {
            store,
            queries,
            nq,
            est,
            k,
            full,
            part,
        } = self;
        store.require_complete("scoring")?;
        let shards = part.map_or(0..store.n_shards(), |p| p.shards(store.n_shards()));
        let rows_scored = store.manifest().rows_of(&shards);
        let (dim, n, first_row) = (store.dim(), rows_scored.len(), rows_scored.start);
        if nq.checked_mul(dim) != Some(queries.len()) {
            return Err(Error::Msg(format!(
                "query features: expected {nq} × {dim} = {} values (the store's dim), got {}",
                nq.saturating_mul(dim),
                queries.len()
            )));
        }
        if let Some(p) = queries.iter().position(|x| !x.is_finite()) {
            return Err(Error::Msg(format!(
                "query features: query {}, column {}: value {} is not finite",
                p / dim.max(1),
                p % dim.max(1),
                queries[p]
            )));
        }
        let q = est.prepare_queries(queries.to_vec(), dim)?;
        if q.iter().any(|x| !x.is_finite()) {
            return Err(Error::Msg(format!(
                "estimator {}: the prepared query features are not finite (is its fitted \
                 curvature damaged? fit again)",
                est.name()
            )));
        }
        if q.len() != queries.len() {
            return Err(Error::Msg(format!(
                "estimator {} changed the query shape",
                est.name()
            )));
        }
        let side = QuerySide::new(store.spec().dtype, q, nq, dim);
        let mut dense = if full { Some(alloc_full(nq, n)?) } else { None };
        let dense_at = DenseOut(
            dense
                .as_mut()
                .map_or(std::ptr::null_mut(), |d| d.as_mut_ptr()),
        );
        let mut heaps: Vec<TopK> = (0..nq).map(|_| TopK::new(k)).collect();
        let mut done = 0;

        // The next shard is opened (mapped and populated) while this one is scored.
        let open = |i: usize| -> Result<Option<(ShardRows, Vec<f32>)>> {
            if i >= shards.end {
                return Ok(None);
            }
            Ok(Some((store.shard_rows(i)?, store.shard_norms(i)?)))
        };
        let mut next = open(shards.start)?;
        for shard in shards.clone() {
            let start = store.shard_range(shard).start;
            let Some((shard_rows, norms)) = next.take() else {
                break;
            };
            let feats = shard_rows.npy();
            let scales: Vec<f32> = norms.iter().map(|&nrm| est.train_scale(nrm)).collect();
            let rows = feats.rows();
            let direct = feats.as_f32_slice();
            // int8 rows: the code scale and the estimator's row scale in one factor.
            let int8_scales: Vec<f32> = shard_rows
                .scales()
                .iter()
                .zip(&scales)
                .map(|(a, b)| a * b)
                .collect();
            let blocks: Vec<usize> = (0..rows).step_by(block).collect();
            // Earlier shards' rows are smaller: a score under the global floor cannot enter.
            let above: Vec<f32> = heaps.iter().map(TopK::floor).collect();
            // Each job scores its blocks into a buffer that stays in cache and feeds its own
            // heaps; the heaps are merged afterwards (ties still go to the smaller row).
            let work = || -> Vec<(Vec<TopK>, Option<NonFinite>)> {
                blocks
                    .par_iter()
                    .fold(
                        || (Vec::new(), Vec::new(), Vec::<TopK>::new(), Vec::new(), None),
                        |(mut buf, mut out, mut local, mut floors, mut bad): BlockState, &r0| {
                            if local.is_empty() {
                                local = above.iter().map(|&f| TopK::above(k, f)).collect();
                            }
                            let r1 = (r0 + block).min(rows);
                            out.resize((r1 - r0) * nq, 0.0);
                            match &side {
                                QuerySide::Float(q) => {
                                    let z = match direct {
                                        Some(all) => &all[r0 * dim..r1 * dim],
                                        None => {
                                            buf.resize((r1 - r0) * dim, 0.0);
                                            shard_rows.copy_rows_f32(r0, r1, &mut buf);
                                            &buf[..]
                                        }
                                    };
                                    block_product(z, q, r1 - r0, nq, dim, &mut out);
                                }
                                QuerySide::I8(q) => int8::scores(
                                    feats.row_bytes(r0, r1),
                                    &int8_scales[r0..r1],
                                    r1 - r0,
                                    q,
                                    &mut out,
                                ),
                                QuerySide::Bit(q) => bits::scores(
                                    feats.row_bytes(r0, r1),
                                    &norms[r0..r1],
                                    r1 - r0,
                                    q,
                                    &mut out,
                                ),
                            }
                            if !matches!(side, QuerySide::I8(_)) {
                                for (row, s) in out.chunks_exact_mut(nq.max(1)).zip(&scales[r0..r1])
                                {
                                    row.iter_mut().for_each(|x| *x *= s);
                                }
                            }
                            // Rows in increasing order; a score under its query's floor (almost
                            // all of them once the heaps fill) costs one comparison.
                            floors.clear();
                            floors.extend(local.iter().map(TopK::floor));
                            for (i, row) in out.chunks_exact(nq.max(1)).enumerate() {
                                let g = start + r0 + i;
                                // One branch-free pass over the row first (vectorized): most rows
                                // enter no heap once they are full.
                                let enters = row
                                    .iter()
                                    .zip(&floors)
                                    .fold(false, |a, (&x, &f)| a | (x >= f) | !x.is_finite());
                                if !enters && !full {
                                    continue;
                                }
                                // The queries are finite, so a non-finite score comes from this
                                // row (a store written by another tool, or damaged): dropping it
                                // from the ranking silently would be a wrong answer.
                                if let Some(j) = row.iter().position(|x| !x.is_finite()) {
                                    bad.get_or_insert(NonFinite {
                                        shard,
                                        row: r0 + i,
                                        query: j,
                                        value: row[j],
                                    });
                                    continue;
                                }
                                for (j, &x) in row.iter().enumerate() {
                                    if x >= floors[j] {
                                        local[j].push(g, x);
                                        floors[j] = local[j].floor();
                                    }
                                }
                                if full {
                                    for (j, &x) in row.iter().enumerate() {
                                        // SAFETY: dense is nq × n and (j, g) is in range; each
                                        // global row g belongs to exactly one block, so no two jobs
                                        // write the same element.
                                        unsafe { dense_at.write(j * n + g - first_row, x) };
                                    }
                                }
                            }
                            (buf, out, local, floors, bad)
                        },
                    )
                    .map(|(_, _, local, _, bad)| (local, bad))
                    .collect::<Vec<_>>()
            };
            let (partial, opened) = rayon::join(work, || open(shard + 1));
            // The smallest bad row, so the message does not depend on the thread count.
            if let Some(bad) = partial.iter().filter_map(|(_, b)| *b).min_by_key(|b| b.row) {
                return Err(bad.error(store));
            }
            next = opened?;
            // The shard's map is released here, before the next one is scored.
            drop(shard_rows);
            for (local, _) in partial {
                for (h, l) in heaps.iter_mut().zip(local) {
                    h.absorb(l);
                }
            }
            done += rows;
            on_shard(done);
        }
        Ok(ScoreResult {
            topk: heaps.into_iter().map(TopK::into_sorted).collect(),
            full: dense,
            n_train: n,
            part: part.map(|part| PartScope {
                part,
                rows: rows_scored,
                n_rows: store.n_samples(),
                top_k: k,
            }),
        })
    }
}

/// A scoring job's state across its blocks: the row buffer, the block's scores, its heaps,
/// their floors, and the first non-finite score met.
type BlockState = (Vec<f32>, Vec<f32>, Vec<TopK>, Vec<f32>, Option<NonFinite>);

/// The first training row whose score came out NaN or infinite against finite queries.
#[derive(Clone, Copy)]
struct NonFinite {
    shard: usize,
    /// Row within the shard.
    row: usize,
    query: usize,
    value: f32,
}

impl NonFinite {
    /// The error naming the shard file, the row and its sample id.
    fn error(self, store: &Store) -> Error {
        let global = store.shard_range(self.shard).start + self.row;
        let id = store
            .shard_samples(self.shard)
            .ok()
            .and_then(|s| s.get(self.row).map(|r| format!(" (sample `{}`)", r.id)))
            .unwrap_or_default();
        Error::Store {
            path: store.dir().to_path_buf(),
            msg: format!(
                "row {global}{id}, row {} of shard {}, scores {} against query {}: its stored \
                 features, norm or scale are not finite (or overflow); the store was damaged or \
                 written by another tool: index that sample again",
                self.row, self.shard, self.value, self.query
            ),
        }
    }
}

/// Where blocks write the dense score matrix, if it is kept (null otherwise).
#[derive(Clone, Copy)]
struct DenseOut(*mut f32);

// SAFETY: jobs write disjoint elements (see the write site); the matrix outlives them.
unsafe impl Send for DenseOut {}
unsafe impl Sync for DenseOut {}

impl DenseOut {
    /// Writes `v` at `at` unless no matrix is kept. Callers keep `at` in bounds and never
    /// write one element from two jobs.
    unsafe fn write(self, at: usize, v: f32) {
        if !self.0.is_null() {
            *self.0.add(at) = v;
        }
    }
}

/// The prepared queries in the form the store's element type is scored with.
enum QuerySide {
    Float(Vec<f32>),
    I8(int8::Queries),
    Bit(bits::Queries),
}

impl QuerySide {
    fn new(dtype: Dtype, q: Vec<f32>, nq: usize, dim: usize) -> Self {
        match dtype {
            Dtype::F16 | Dtype::F32 => QuerySide::Float(q),
            Dtype::I8 => QuerySide::I8(int8::Queries::new(&q, nq, dim)),
            Dtype::Bit => QuerySide::Bit(bits::Queries::new(&q, nq, dim)),
        }
    }
}

/// out (rows × nq, row-major) = z (rows × dim) · qᵀ, with q nq × dim row-major.
fn block_product(z: &[f32], q: &[f32], rows: usize, nq: usize, dim: usize, out: &mut [f32]) {
    if rows == 0 || nq == 0 {
        return;
    }
    assert!(z.len() == rows * dim && q.len() == nq * dim && out.len() == rows * nq);
    // SAFETY: the lengths asserted above cover every element addressed by these strides:
    // dst rows×nq (row stride nq), lhs rows×dim (row stride dim), rhs dim×nq read from q
    // transposed (column stride dim). The buffers do not overlap (out is &mut).
    unsafe {
        gemm::gemm(
            rows,
            nq,
            dim,
            out.as_mut_ptr(),
            1,
            nq as isize,
            false,
            z.as_ptr(),
            1,
            dim as isize,
            q.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            // One thread per block: parallelism comes from splitting rows (STACK.md).
            gemm::Parallelism::None,
        );
    }
}

fn alloc_full(nq: usize, n: usize) -> Result<Vec<f32>> {
    let too_big = || {
        Error::Msg(format!(
            "the full {nq} × {n} score matrix ({:.1} GB) does not fit in memory; \
             drop the full matrix or score fewer queries at a time",
            nq as f64 * n as f64 * 4e-9
        ))
    };
    let len = nq.checked_mul(n).ok_or_else(too_big)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| too_big())?;
    v.resize(len, 0.0);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimators::{by_name, Cosine, Dot};
    use crate::store::tests::{filled_store, random, spec, temp_dir};
    use crate::store::Dtype;

    /// Integer-valued features: every dot product is exact in f32 whatever the summation
    /// order, so the blocked product must match the reference bit for bit, ties included.
    fn integer_data(n: usize, dim: usize, seed: u64) -> Vec<f32> {
        random(n * dim, seed)
            .iter()
            .map(|x| (x * 3.0).round())
            .collect()
    }

    /// Reference: every score in f64 from the stored features, ranked by the same rule.
    fn brute_force(store: &Store, q: &[f32], nq: usize, est: &dyn Estimator) -> Vec<Vec<f32>> {
        let dim = store.dim();
        let qp = est.prepare_queries(q.to_vec(), dim).unwrap();
        let mut train = Vec::new();
        let mut norms = Vec::new();
        for i in 0..store.n_shards() {
            train.extend(store.shard_features(i).unwrap().0);
            norms.extend(store.shard_norms(i).unwrap());
        }
        (0..nq)
            .map(|j| {
                train
                    .chunks(dim)
                    .zip(&norms)
                    .map(|(z, &nrm)| {
                        let d: f64 = z
                            .iter()
                            .zip(&qp[j * dim..])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum();
                        (d as f32) * est.train_scale(nrm)
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn dot_matches_brute_force_with_ties_over_uneven_shards() {
        let (n, dim, nq) = (23, 7, 4);
        let mut feats = integer_data(n, dim, 5);
        // Duplicate rows so several training rows tie for each query.
        for dup in [8, 17, 22] {
            let src: Vec<f32> = feats[3 * dim..4 * dim].to_vec();
            feats[dup * dim..(dup + 1) * dim].copy_from_slice(&src);
        }
        let mut queries = integer_data(nq, dim, 6);
        queries[dim..2 * dim].copy_from_slice(&feats[3 * dim..4 * dim]);
        let dir = temp_dir("score_dot");
        let store = filled_store(&dir, spec(Dtype::F16, dim, 5, 8), &feats);
        assert_eq!(store.n_shards(), 5);
        let reference = brute_force(&store, &queries, nq, &Dot);

        for block in [1, 2, 3, 1024] {
            for k in [1, 6, 30] {
                let mut seen = Vec::new();
                let scoring = Scoring {
                    store: &store,
                    queries: &queries,
                    nq,
                    est: &Dot,
                    k,
                    full: true,
                    part: None,
                };
                let r = scoring.run(&mut |d| seen.push(d), block).unwrap();
                assert_eq!(seen, vec![5, 10, 15, 20, 23]);
                assert_eq!(r.n_train, n);
                let full = r.full.as_ref().unwrap();
                for j in 0..nq {
                    assert_eq!(&full[j * n..(j + 1) * n], &reference[j][..], "query {j}");
                    let mut want = topk::rank_all(&reference[j]);
                    want.truncate(k);
                    assert_eq!(r.topk[j], want, "query {j}, k {k}, block {block}");
                }
                let tied: Vec<usize> = r.topk[1].iter().take(4).map(|p| p.0).collect();
                if k >= 4 {
                    assert_eq!(
                        tied,
                        vec![3, 8, 17, 22],
                        "self-match ties, smaller row first"
                    );
                }
            }
        }
        let plain = score_store(&store, &queries, nq, &Dot, 6, false, &mut |_| {}).unwrap();
        assert!(plain.full.is_none());
        let mut want = topk::rank_all(&reference[2]);
        want.truncate(6);
        assert_eq!(plain.topk[2], want);
    }

    #[test]
    fn cosine_matches_brute_force_and_self_ranks_first() {
        let (n, dim, nq) = (37, 16, 3);
        let mut feats = random(n * dim, 9);
        feats[20 * dim..21 * dim].iter_mut().for_each(|x| *x = 0.0);
        let mut queries = random(nq * dim, 10);
        queries[..dim].copy_from_slice(&feats[13 * dim..14 * dim]);
        queries[2 * dim..].iter_mut().for_each(|x| *x *= 1000.0);
        let dir = temp_dir("score_cos");
        let store = filled_store(&dir, spec(Dtype::F32, dim, 8, 8), &feats);
        let est = by_name("cosine").unwrap();
        let reference = brute_force(&store, &queries, nq, &Cosine);
        let k = 5;
        let scoring = Scoring {
            store: &store,
            queries: &queries,
            nq,
            est: est.as_ref(),
            k,
            full: true,
            part: None,
        };
        let r = scoring.run(&mut |_| {}, 3).unwrap();
        let full = r.full.as_ref().unwrap();
        for j in 0..nq {
            for (got, want) in full[j * n..(j + 1) * n].iter().zip(&reference[j]) {
                assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                assert!(got.abs() <= 1.0 + 1e-5);
            }
            assert_eq!(full[j * n + 20], 0.0, "a zero training vector scores 0");
            let mut want = topk::rank_all(&reference[j]);
            want.truncate(k);
            let rows = |v: &[(usize, f32)]| v.iter().map(|p| p.0).collect::<Vec<_>>();
            assert_eq!(rows(&r.topk[j]), rows(&want), "query {j}");
        }
        assert_eq!(r.topk[0][0].0, 13);
        assert!((r.topk[0][0].1 - 1.0).abs() < 1e-6, "{}", r.topk[0][0].1);
    }

    /// int8 and bit stores score through their own products: close to the float scores of
    /// the same rows (int8 within its rounding, bits within SimHash's error at this dim), and a
    /// query equal to a stored row finds it first.
    #[test]
    fn compact_stores_score_close_to_float_and_find_self() {
        let (n, dim, nq) = (40, 512, 3);
        let mut s = crate::random::Stream::new(8, "compact");
        let feats: Vec<f32> = (0..n * dim).map(|_| s.normal() as f32).collect();
        let mut queries: Vec<f32> = (0..nq * dim).map(|_| s.normal() as f32).collect();
        queries[..dim].copy_from_slice(&feats[17 * dim..18 * dim]);
        let reference = {
            let dir = temp_dir("score_compact_f32");
            let store = filled_store(&dir, spec(Dtype::F32, dim, 16, 8), &feats);
            score_store(&store, &queries, nq, &Cosine, 5, true, &mut |_| {})
                .unwrap()
                .full
                .unwrap()
        };
        // SimHash at dim 512: σ(θ̂) ≈ π·0.5/√512 ≈ 0.07, so the worst of 120 pairs stays under 0.25.
        for (dtype, tol) in [(Dtype::I8, 0.01), (Dtype::Bit, 0.25)] {
            let dir = temp_dir(&format!("score_compact_{dtype}"));
            let store = filled_store(&dir, spec(dtype, dim, 16, 8), &feats);
            let r = score_store(&store, &queries, nq, &Cosine, 5, true, &mut |_| {}).unwrap();
            let full = r.full.unwrap();
            let worst = full
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < tol, "{dtype}: largest cosine error {worst}");
            assert_eq!(r.topk[0][0].0, 17, "{dtype}");
            assert!(
                (r.topk[0][0].1 - 1.0).abs() < 0.01,
                "{dtype}: {}",
                r.topk[0][0].1
            );
        }
    }

    #[test]
    fn non_finite_rows_and_queries_are_refused_naming_them() {
        let dir = temp_dir("score_nan");
        let store = filled_store(&dir, spec(Dtype::F32, 4, 2, 8), &random(5 * 4, 3));
        // Another tool's store: row 3 (row 1 of shard 1) column 2 is NaN on disk; the f32 data
        // ends the file, two rows of four.
        let file = dir.join("features-00001.npy");
        let mut bytes = std::fs::read(&file).unwrap();
        let at = bytes.len() - 2 * 4 * 4 + (4 + 2) * 4;
        bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        std::fs::write(&file, bytes).unwrap();
        for est in [&Dot as &dyn Estimator, &Cosine] {
            for full in [false, true] {
                let msg = score_store(&store, &[1.0; 8], 2, est, 2, full, &mut |_| {})
                    .unwrap_err()
                    .to_string();
                assert!(
                    msg.contains("row 3 (sample") && msg.contains("shard 1"),
                    "{msg}"
                );
            }
        }
        let mut q = [1.0f32; 8];
        q[5] = f32::INFINITY;
        let good = filled_store(
            &temp_dir("score_nan_q"),
            spec(Dtype::F32, 4, 2, 8),
            &random(20, 1),
        );
        let msg = score_store(&good, &q, 2, &Dot, 2, false, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(msg.contains("query 1, column 1"), "{msg}");
    }

    #[test]
    fn refuses_incomplete_store_and_bad_query_shape() {
        let dir = temp_dir("score_bad");
        let store = filled_store(&dir, spec(Dtype::F16, 4, 3, 8), &random(20, 1));
        let err = score_store(&store, &[1.0; 7], 2, &Dot, 3, false, &mut |_| {});
        assert!(err.unwrap_err().to_string().contains("dim"));
        let part_dir = temp_dir("score_part");
        let partial =
            crate::store::Store::create_or_resume(&part_dir, spec(Dtype::F16, 4, 3, 8), 5).unwrap();
        let msg = score_store(&partial, &[1.0; 4], 1, &Dot, 3, false, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not complete"), "{msg}");
        let none = score_store(&store, &[], 0, &Dot, 3, true, &mut |_| {}).unwrap();
        assert!(none.topk.is_empty() && none.full.unwrap().is_empty());
    }
}
