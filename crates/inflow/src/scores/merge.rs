//! `scores merge`: partial score files of `score --part I/N` joined into the file one
//! `score` over the whole store writes.
//!
//! Exact, not approximate: each part's top-k list holds that part's k best rows for the query,
//! so the k best of the union of the lists are the k best of the whole store (any row of the
//! global top k is in the top k of its own part). Ties go to the smaller global row, the rule
//! of one run ([`super::topk`]). Per-sample files (`--aggregate`) and dense matrices
//! (`--full`) cover disjoint rows, so they are concatenated in row order (and per-sample ranks
//! recomputed over all rows).

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::table::{read_table, Column, Metadata};
use super::topk::TopK;
use super::{write_full_npy, write_per_train_parquet, write_topk_parquet, ScoreResult};
use crate::store::NpyFile;
use crate::{Error, Result};

/// What a merge wrote.
#[derive(Debug, Clone, Serialize)]
pub struct Merged {
    /// `top-k`, `per-train` or `full`.
    pub kind: String,
    pub files: usize,
    pub n_rows: usize,
    pub n_queries: usize,
    pub method: String,
    pub out: PathBuf,
}

/// One partial file: its rows, and what must agree across the files.
struct Partial {
    path: PathBuf,
    rows: Range<usize>,
    n_rows: usize,
    method: String,
    sign: String,
    /// Entries per query (top-k) or the aggregate (per-train); unused for matrices.
    extra: String,
}

impl Partial {
    /// A part whose content (`found`, e.g. "3 rows") is not what its metadata or sidecar
    /// says (`says`, which ends with the rows it claims).
    fn disagrees(&self, found: String, says: &str) -> Error {
        Error::Msg(format!(
            "{}: {found}, its {says} rows {}..{}",
            self.path.display(),
            self.rows.start,
            self.rows.end
        ))
    }
}

/// Merges partial score files (all `.parquet` top-k or per-sample files, or all `.npy`
/// matrices with their JSON sidecars) into `out`, checking that they come from one run
/// (method, sign convention, k, store rows) and cover every row of the store exactly once.
/// `out` must not be an input (or a store's file), and replaces an existing file only if
/// `force`.
pub fn merge(inputs: &[PathBuf], out: &Path, force: bool) -> Result<Merged> {
    if inputs.is_empty() {
        return Err(Error::Msg("scores merge: no files given".into()));
    }
    let given: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    crate::output_guard::check_new_output("--out", out, &given, force)?;
    if out.extension().is_some_and(|e| e == "npy") {
        crate::output_guard::check_new_output("--out", &out.with_extension("json"), &given, force)?;
    }
    let is_npy = |p: &PathBuf| p.extension().is_some_and(|e| e == "npy");
    if inputs.iter().any(is_npy) {
        if let Some(p) = inputs.iter().find(|p| !is_npy(p)) {
            return Err(Error::Msg(format!(
                "{}: scores merge joins either .npy matrices or .parquet files, not both",
                p.display()
            )));
        }
        return merge_full(inputs, out);
    }
    let mut tables = Vec::with_capacity(inputs.len());
    for p in inputs {
        let (cols, meta) = read_table(p)?;
        let aggregate = meta_get(&meta, "inflow.aggregate");
        let part = partial(p, &meta, aggregate.as_deref())?;
        tables.push((part, cols, aggregate));
    }
    tables.sort_by_key(|t| t.0.rows.start);
    let parts: Vec<&Partial> = tables.iter().map(|t| &t.0).collect();
    check_cover(&parts)?;
    let (first, n_rows) = (parts[0], parts[0].n_rows);
    if tables[0].2.is_some() {
        let mut ids = Vec::with_capacity(n_rows);
        let mut scores = Vec::with_capacity(n_rows);
        let mut n_queries = 0;
        for (p, cols, _) in &tables {
            let (id, score) = (strs(p, cols, "train_id")?, nums(p, cols, "score")?);
            if id.len() != p.rows.len() {
                return Err(p.disagrees(format!("{} rows", id.len()), "metadata says"));
            }
            n_queries = nums(p, cols, "n_queries")?
                .first()
                .map_or(0, |&v| v as usize);
            ids.extend(id.iter().cloned());
            scores.extend(score.iter().map(|&v| v as f32));
        }
        write_per_train_parquet(
            out,
            &ids,
            &scores,
            n_queries,
            &first.method,
            &first.sign,
            &first.extra,
            None,
        )?;
        return Ok(Merged {
            kind: "per-train".into(),
            files: tables.len(),
            n_rows,
            n_queries,
            method: first.method.clone(),
            out: out.to_path_buf(),
        });
    }
    let k: usize = first.extra.parse().map_err(|_| {
        Error::Msg(format!(
            "{}: inflow.top_k is not a number",
            first.path.display()
        ))
    })?;
    // Query order: the first file's; every file must hold the same queries.
    let mut query_ids: Vec<String> = Vec::new();
    let mut heaps: Vec<TopK> = Vec::new();
    let mut ids = std::collections::BTreeMap::<usize, String>::new();
    for (i, (p, cols, _)) in tables.iter().enumerate() {
        let (q, t) = (strs(p, cols, "query_id")?, strs(p, cols, "train_id")?);
        let (score, row) = (nums(p, cols, "score")?, nums(p, cols, "train_row")?);
        let mut order: Vec<String> = Vec::new();
        for (j, qid) in q.iter().enumerate() {
            if order.last() != Some(qid) {
                order.push(qid.clone());
            }
            let r = row[j] as usize;
            if !p.rows.contains(&r) {
                return Err(Error::Msg(format!(
                    "{}: train_row {r} is outside its rows {}..{}",
                    p.path.display(),
                    p.rows.start,
                    p.rows.end
                )));
            }
            ids.entry(r).or_insert_with(|| t[j].clone());
        }
        if i == 0 {
            heaps = order.iter().map(|_| TopK::new(k)).collect();
            query_ids = order;
        } else if order != query_ids {
            return Err(Error::Msg(format!(
                "{}: holds other queries than {} ({} against {}); merge the parts of one score run",
                p.path.display(),
                first.path.display(),
                order.len(),
                query_ids.len()
            )));
        }
        let mut at = 0;
        for (j, qid) in q.iter().enumerate() {
            if query_ids[at] != *qid {
                at += 1;
            }
            heaps[at].push(row[j] as usize, score[j] as f32);
        }
    }
    // Global rows → positions in the id list the writer indexes.
    let rows: Vec<usize> = ids.keys().copied().collect();
    let local = |r: usize| rows.binary_search(&r).unwrap_or_default();
    let result = ScoreResult {
        topk: heaps
            .into_iter()
            .map(|h| {
                h.into_sorted()
                    .into_iter()
                    .map(|(r, s)| (local(r), s))
                    .collect()
            })
            .collect(),
        full: None,
        n_train: rows.len(),
        part: None,
    };
    let id_list: Vec<String> = ids.into_values().collect();
    write_topk_parquet(
        out,
        &query_ids,
        &id_list,
        &result,
        &first.method,
        &first.sign,
    )?;
    Ok(Merged {
        kind: "top-k".into(),
        files: tables.len(),
        n_rows,
        n_queries: query_ids.len(),
        method: first.method.clone(),
        out: out.to_path_buf(),
    })
}

/// Dense matrices: columns concatenated in row order; the sidecars must agree on queries.
fn merge_full(inputs: &[PathBuf], out: &Path) -> Result<Merged> {
    let mut parts = Vec::new();
    for p in inputs {
        let side_path = p.with_extension("json");
        let text = std::fs::read_to_string(&side_path).map_err(|e| Error::io(&side_path, e))?;
        let side: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Msg(format!("{}: {e}", side_path.display())))?;
        let part = &side["part"];
        let rows = part["rows"]
            .as_array()
            .and_then(|r| Some(r.first()?.as_u64()? as usize..r.get(1)?.as_u64()? as usize));
        let (Some(rows), Some(n_rows)) = (rows, part["n_rows"].as_u64()) else {
            return Err(not_partial(&side_path));
        };
        let s = |k: &str| side[k].as_str().unwrap_or_default().to_string();
        parts.push((
            Partial {
                path: p.clone(),
                rows,
                n_rows: n_rows as usize,
                method: s("method"),
                sign: s("sign_convention"),
                extra: side["query_ids"].to_string(),
            },
            side,
        ));
    }
    parts.sort_by_key(|p| p.0.rows.start);
    check_cover(&parts.iter().map(|p| &p.0).collect::<Vec<_>>())?;
    let query_ids: Vec<String> = serde_json::from_value(parts[0].1["query_ids"].clone())
        .map_err(|e| Error::Msg(format!("{}: query_ids: {e}", parts[0].0.path.display())))?;
    let (nq, n) = (query_ids.len(), parts[0].0.n_rows);
    let mut full = vec![0f32; nq * n];
    for (p, _) in &parts {
        let f = NpyFile::open(&p.path)?;
        if f.shape() != [nq, p.rows.len()] {
            let says = format!("sidecar says {nq} queries ×");
            return Err(p.disagrees(format!("shape {:?}", f.shape()), &says));
        }
        let v = f.to_f32_vec();
        for q in 0..nq {
            full[q * n + p.rows.start..q * n + p.rows.end]
                .copy_from_slice(&v[q * p.rows.len()..(q + 1) * p.rows.len()]);
        }
    }
    let first = &parts[0].0;
    let result = ScoreResult {
        topk: Vec::new(),
        full: Some(full),
        n_train: n,
        part: None,
    };
    write_full_npy(out, &result, &query_ids, &first.method, &first.sign)?;
    Ok(Merged {
        kind: "full".into(),
        files: parts.len(),
        n_rows: n,
        n_queries: nq,
        method: first.method.clone(),
        out: out.to_path_buf(),
    })
}

/// A Parquet file's part entry, from its metadata.
fn partial(path: &Path, meta: &Metadata, aggregate: Option<&str>) -> Result<Partial> {
    let get = |k: &str| meta_get(meta, k);
    let rows = get("inflow.rows").and_then(|r| {
        let (a, b) = r.split_once("..")?;
        Some(a.parse::<usize>().ok()?..b.parse::<usize>().ok()?)
    });
    let n_rows = get("inflow.n_rows").and_then(|v| v.parse::<usize>().ok());
    let (Some(rows), Some(n_rows)) = (rows, n_rows) else {
        return Err(not_partial(path));
    };
    Ok(Partial {
        path: path.to_path_buf(),
        rows,
        n_rows,
        method: get("inflow.method").unwrap_or_default(),
        sign: get("inflow.sign_convention").unwrap_or_default(),
        extra: match aggregate {
            Some(a) => a.to_string(),
            None => get("inflow.top_k").unwrap_or_default(),
        },
    })
}

fn not_partial(path: &Path) -> Error {
    Error::Msg(format!(
        "{}: not a partial score file (no part rows in its metadata); scores merge joins the \
         outputs of `score --part I/N`",
        path.display()
    ))
}

/// Checks that partial files (sorted by first row) agree on the run and cover rows
/// `0..n_rows` exactly once.
fn check_cover(parts: &[&Partial]) -> Result<()> {
    let first = parts[0];
    for p in parts {
        for (what, a, b) in [
            ("method", &first.method, &p.method),
            ("sign convention", &first.sign, &p.sign),
            ("k or aggregate (or queries)", &first.extra, &p.extra),
        ] {
            if a != b {
                return Err(Error::Msg(format!(
                    "{}: {what} {b} differs from {}'s {a}; merge the parts of one score run",
                    p.path.display(),
                    first.path.display()
                )));
            }
        }
        if p.n_rows != first.n_rows {
            return Err(Error::Msg(format!(
                "{}: scored a store of {} rows, {} one of {}",
                p.path.display(),
                p.n_rows,
                first.path.display(),
                first.n_rows
            )));
        }
    }
    let mut next = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.rows.start < next {
            return Err(Error::Msg(format!(
                "{}: rows {}..{} overlap {} (rows up to {next}): give each part once",
                p.path.display(),
                p.rows.start,
                p.rows.end,
                parts[i - 1].path.display()
            )));
        }
        if p.rows.start > next {
            return Err(Error::Msg(format!(
                "rows {next}..{} are in no file given (a part is missing; the next file, {}, starts at row {})",
                p.rows.start,
                p.path.display(),
                p.rows.start
            )));
        }
        next = p.rows.end;
    }
    if next != first.n_rows {
        return Err(Error::Msg(format!(
            "rows {next}..{} are in no file given (the last part is missing)",
            first.n_rows
        )));
    }
    Ok(())
}

fn meta_get(meta: &Metadata, key: &str) -> Option<String> {
    meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

fn column<'a>(p: &Partial, cols: &'a [(String, Column)], name: &str) -> Result<&'a Column> {
    cols.iter()
        .find(|(n, _)| n == name)
        .map(|(_, c)| c)
        .ok_or_else(|| Error::Msg(format!("{}: no column {name}", p.path.display())))
}

fn strs<'a>(p: &Partial, cols: &'a [(String, Column)], name: &str) -> Result<&'a [String]> {
    column(p, cols, name)?
        .as_str()
        .ok_or_else(|| Error::Msg(format!("{}: column {name} is not text", p.path.display())))
}

fn nums(p: &Partial, cols: &[(String, Column)], name: &str) -> Result<Vec<f64>> {
    column(p, cols, name)?.as_f64().ok_or_else(|| {
        Error::Msg(format!(
            "{}: column {name} is not numeric",
            p.path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::super::{score_store, score_store_part};
    use super::*;
    use crate::estimators::Dot;
    use crate::store::tests::{filled_store, spec, temp_dir};
    use crate::store::{Dtype, Part};

    #[test]
    fn merged_parts_equal_the_whole_run_ties_included() {
        let dir = temp_dir("scores-merge");
        // Values in {-1, 0, 1}: many equal scores, so ties must go to the smaller row across
        // parts just as within one run.
        let (n, dim, nq, k) = (23, 4, 3, 5);
        let feats: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7 % 5) as f32 - 2.0).signum())
            .collect();
        let queries: Vec<f32> = (0..nq * dim).map(|i| ((i % 3) as f32) - 1.0).collect();
        let store = filled_store(&dir.join("s"), spec(Dtype::F32, dim, 4, 8), &feats);
        let ids: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let qids: Vec<String> = (0..nq).map(|i| format!("q{i}")).collect();
        let whole = score_store(&store, &queries, nq, &Dot, k, true, &mut |_| {}).unwrap();
        let write = |r: &ScoreResult, name: &str| {
            let p = dir.join(name);
            write_topk_parquet(&p, &qids, &ids, r, "dot", "s").unwrap();
            write_full_npy(&p.with_extension("npy"), r, &qids, "dot", "s").unwrap();
            p
        };
        let w = write(&whole, "whole.parquet");
        let mut files = Vec::new();
        for i in [3, 0, 2, 1] {
            let part = Some(Part { index: i, count: 4 });
            let r =
                score_store_part(&store, part, &queries, nq, &Dot, k, true, &mut |_| {}).unwrap();
            files.push(write(&r, &format!("p{i}.parquet")));
        }
        let m = dir.join("m.parquet");
        merge(&files, &m, false).unwrap();
        assert_eq!(std::fs::read(&w).unwrap(), std::fs::read(&m).unwrap());
        let npys: Vec<PathBuf> = files.iter().map(|f| f.with_extension("npy")).collect();
        merge(&npys, &dir.join("m.npy"), false).unwrap();
        assert_eq!(
            std::fs::read(w.with_extension("npy")).unwrap(),
            std::fs::read(dir.join("m.npy")).unwrap()
        );
        let e = merge(&files[..3], &m, true).unwrap_err().to_string();
        assert!(e.contains("are in no file"), "{e}");
        let e = merge(&[files[0].clone(), npys[1].clone()], &m, true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not both"), "{e}");
    }
}
