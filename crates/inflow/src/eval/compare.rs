//! Agreement between two score files (the ICP paper's main comparison): Spearman, Kendall and
//! top-k overlap on their common (query_id, train_id) or train_id keys.

use super::rank::{kendall_tau_b, spearman, topk_overlap};
use crate::scores::table::read_table;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Scores read from a Parquet score file (`train_id`, `score`, optional `query_id` and
/// `rank`), with the file's key-value metadata (`inflow.sign_convention`, …).
pub struct ScoreFile {
    pub path: PathBuf,
    pub method: String,
    pub query: Option<Vec<String>>,
    pub train: Vec<String>,
    pub score: Vec<f64>,
    /// 1-based ranks as written (top-k files and per-sample files have them).
    pub rank: Option<Vec<u32>>,
    pub meta: HashMap<String, String>,
}

impl ScoreFile {
    /// Reads any inflow score file; refuses one without `train_id`/`score` or with a
    /// non-finite score, naming the file and row.
    pub fn read(path: &Path) -> Result<Self> {
        let (cols, meta) = read_table(path)?;
        let get = |n: &str| cols.iter().find(|(c, _)| c == n).map(|(_, v)| v);
        let bad = |msg: &str| Error::BadInput {
            path: path.into(),
            line: 0,
            msg: msg.into(),
        };
        let train = get("train_id")
            .and_then(|c| c.as_str())
            .ok_or_else(|| bad("expected a utf8 column `train_id` (an inflow score file)"))?
            .to_vec();
        let score = get("score")
            .and_then(|c| c.as_f64())
            .ok_or_else(|| bad("expected a numeric column `score`"))?;
        // A NaN would sort anywhere and turn every correlation into noise: refuse it here.
        if let Some(i) = score.iter().position(|s| !s.is_finite()) {
            return Err(bad(&format!(
                "row {i} (train id {}) has a non-finite score {}; expected finite scores",
                train[i], score[i]
            )));
        }
        let query = get("query_id").and_then(|c| c.as_str()).map(|v| v.to_vec());
        let rank = get("rank")
            .and_then(|c| c.as_f64())
            .map(|v| v.into_iter().map(|r| r as u32).collect());
        let meta: HashMap<String, String> = meta.into_iter().collect();
        let method = meta
            .get("inflow.method")
            .cloned()
            .or_else(|| {
                get("method")
                    .and_then(|c| c.as_str())
                    .and_then(|v| v.first().cloned())
            })
            .unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
        Ok(Self {
            path: path.into(),
            method,
            query,
            train,
            score,
            rank,
            meta,
        })
    }

    /// Scores keyed by train_id, averaged over queries when the file has several.
    fn by_train(&self) -> HashMap<String, f64> {
        let mut acc: HashMap<String, (f64, usize)> = HashMap::new();
        for (t, s) in self.train.iter().zip(&self.score) {
            let e = acc.entry(t.clone()).or_default();
            e.0 += s;
            e.1 += 1;
        }
        acc.into_iter()
            .map(|(k, (s, n))| (k, s / n as f64))
            .collect()
    }

    fn by_pair(&self) -> Option<HashMap<(String, String), f64>> {
        let q = self.query.as_ref()?;
        Some(
            q.iter()
                .zip(&self.train)
                .zip(&self.score)
                .map(|((q, t), s)| ((q.clone(), t.clone()), *s))
                .collect(),
        )
    }
}

/// The agreement of two score files.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    pub method_a: String,
    pub method_b: String,
    /// `query_id,train_id` or `train_id` (a per-query file averaged over its queries).
    pub keys: String,
    pub n_common: usize,
    pub spearman: f64,
    pub kendall_tau_b: f64,
    /// (k, |top-k(a) ∩ top-k(b)| / k) over the common keys.
    pub topk_overlap: Vec<(usize, f64)>,
}

/// Compares two score files on their common keys; returns the paired scores too (for plots).
pub fn compare(
    a: &ScoreFile,
    b: &ScoreFile,
    ks: &[usize],
) -> Result<(Comparison, Vec<f64>, Vec<f64>)> {
    let (keys, xs, ys) = match (a.by_pair(), b.by_pair()) {
        (Some(pa), Some(pb)) => {
            let mut common: Vec<_> = pa.keys().filter(|k| pb.contains_key(*k)).cloned().collect();
            common.sort();
            let xs = common.iter().map(|k| pa[k]).collect::<Vec<_>>();
            let ys = common.iter().map(|k| pb[k]).collect::<Vec<_>>();
            ("query_id,train_id", xs, ys)
        }
        _ => {
            let (ta, tb) = (a.by_train(), b.by_train());
            let mut common: Vec<_> = ta.keys().filter(|k| tb.contains_key(*k)).cloned().collect();
            common.sort();
            let xs = common.iter().map(|k| ta[k]).collect::<Vec<_>>();
            let ys = common.iter().map(|k| tb[k]).collect::<Vec<_>>();
            ("train_id", xs, ys)
        }
    };
    if xs.len() < 3 {
        return Err(Error::Msg(format!(
            "{} and {} share {} keys ({keys}); need at least 3 to compare",
            a.path.display(),
            b.path.display(),
            xs.len()
        )));
    }
    let c = Comparison {
        a: a.path.display().to_string(),
        b: b.path.display().to_string(),
        method_a: a.method.clone(),
        method_b: b.method.clone(),
        keys: keys.into(),
        n_common: xs.len(),
        spearman: spearman(&xs, &ys),
        kendall_tau_b: kendall_tau_b(&xs, &ys),
        topk_overlap: ks
            .iter()
            .filter(|&&k| k <= xs.len())
            .map(|&k| (k, topk_overlap(&xs, &ys, k)))
            .collect(),
    };
    Ok((c, xs, ys))
}
