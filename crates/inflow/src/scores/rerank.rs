//! `score --rerank K`: the K best candidates of each query on a compact store, rescored
//! exactly on the full-precision parent store the compact one was made from, then cut to k.

use std::collections::BTreeMap;
use std::path::Path;

use crate::estimators::Estimator;
use crate::store::compress::spec_sha256;
use crate::store::Store;
use crate::{Error, Result};

/// The parent a compact store names, checked to be the store it was made from; `purpose`
/// says what needs it (e.g. "--rerank"), for the messages.
pub fn open_parent(compact: &Store, purpose: &str) -> Result<Store> {
    let c = compact.spec().compact.as_ref().ok_or_else(|| Error::Store {
        path: compact.dir().into(),
        msg: format!("is not a compact store (made by `store compress`): {purpose} has no parent to read"),
    })?;
    let dir = Path::new(&c.parent);
    if !dir.join("manifest.json").exists() {
        return Err(Error::Store {
            path: compact.dir().into(),
            msg: format!(
                "names {} as its parent, which {purpose} needs, and that store is not there (moved or deleted?): restore it",
                dir.display()
            ),
        });
    }
    let parent = Store::open(dir)?;
    if spec_sha256(parent.spec()) != c.parent_spec_sha256 || parent.dim() != c.parent_dim {
        return Err(Error::Store {
            path: dir.into(),
            msg: format!(
                "is not the store {} was compressed from (its settings changed since: indexed again?); compress it again",
                compact.dir().display()
            ),
        });
    }
    if !parent.is_complete() {
        return Err(Error::Store {
            path: dir.into(),
            msg: "is not complete; finish indexing it before --rerank".into(),
        });
    }
    Ok(parent)
}

/// Rescores each query's `candidates` (global rows) on `parent` with `est`, given the
/// queries as prepared by `est` in the parent's space (nq × parent dim), and keeps the best `k`
/// by the exact score (ties by smaller row). Reads only the candidate rows.
pub fn rerank(
    parent: &Store,
    prepared: &[f32],
    est: &dyn Estimator,
    candidates: &[Vec<(usize, f32)>],
    k: usize,
) -> Result<Vec<Vec<(usize, f32)>>> {
    let dim = parent.dim();
    // Row → the queries that have it as a candidate, so each row is read once.
    let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (j, c) in candidates.iter().enumerate() {
        for &(row, _) in c {
            wanted.entry(row).or_default().push(j);
        }
    }
    let mut exact: Vec<Vec<(usize, f32)>> = candidates
        .iter()
        .map(|c| Vec::with_capacity(c.len()))
        .collect();
    let mut z = vec![0f32; dim];
    let mut rows = wanted.into_iter().peekable();
    for shard in 0..parent.n_shards() {
        let range = parent.shard_range(shard);
        if rows.peek().is_none_or(|(r, _)| *r >= range.end) {
            continue;
        }
        let f = parent.shard_rows(shard)?;
        let norms = parent.shard_norms(shard)?;
        while let Some((row, qs)) = rows.next_if(|(r, _)| *r < range.end) {
            let local = row - range.start;
            f.copy_rows_f32(local, local + 1, &mut z);
            let scale = est.train_scale(norms[local]);
            for j in qs {
                let q = &prepared[j * dim..(j + 1) * dim];
                let dot: f64 = z.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum();
                exact[j].push((row, dot as f32 * scale));
            }
        }
    }
    for e in &mut exact {
        e.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        e.truncate(k);
    }
    Ok(exact)
}
