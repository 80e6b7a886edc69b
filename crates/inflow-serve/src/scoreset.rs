//! One score file as `serve` holds it: a top-k file (`query_id, train_id, score, rank`) as
//! per-query lists and their reverse (per training sample: the queries it ranks for), or a
//! per-sample file (`train_id, score, rank`: `score --aggregate`, LESS, ICP) as one score per
//! training row. Every id must join the store's samples, or the file is refused at start.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inflow::eval::compare::ScoreFile;

use crate::{Error, Result};

/// One entry of a top-k list: training row, score, 1-based rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
    pub rank: u32,
}

/// One entry of a sample's reverse list: query (catalog index), its score and rank there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pull {
    pub query: usize,
    pub score: f32,
    pub rank: u32,
}

/// What a score file holds.
#[derive(Debug, Clone)]
pub enum Scores {
    /// Top-k per query: `lists[q]` for catalog query q (empty where the file has no such
    /// query), best first; `reverse[row]` the queries whose list holds training row `row`.
    TopK {
        lists: Vec<Vec<Hit>>,
        reverse: Vec<Vec<Pull>>,
        k: usize,
    },
    /// One score per training row (`None` where the file has no score for it), its rank
    /// (1 = best) and what the reduction was.
    PerTrain {
        score: Vec<Option<f32>>,
        rank: Vec<Option<u32>>,
        what: String,
    },
}

/// A loaded score file.
#[derive(Debug, Clone)]
pub struct ScoreSet {
    /// The method as the file names it (unique among the loaded files).
    pub name: String,
    pub file: PathBuf,
    /// How to read the sign of a score (the file's `inflow.sign_convention`).
    pub sign_convention: String,
    pub scores: Scores,
}

/// A score file's rows before they are joined to the catalog's queries.
pub struct RawScores {
    pub file: PathBuf,
    pub method: String,
    pub sign_convention: String,
    pub aggregate: Option<String>,
    pub query: Option<Vec<String>>,
    pub train: Vec<String>,
    pub score: Vec<f32>,
    pub rank: Option<Vec<u32>>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Start(format!("{}: {msg}", path.display()))
}

/// Reads a Parquet score file written by `score`, `probe` or `scores merge` (through the
/// library's one score-file reader, which also refuses non-finite scores).
pub fn read(path: &Path) -> Result<RawScores> {
    if !path.is_file() {
        return Err(bad(path, "no such score file"));
    }
    let f = ScoreFile::read(path).map_err(|e| Error::Start(e.to_string()))?;
    if let Some(p) = f.meta.get("inflow.part") {
        return Err(bad(
            path,
            format!(
                "is part {p} of a `score --part` run; join the parts with `inflow scores merge` first"
            ),
        ));
    }
    Ok(RawScores {
        file: f.path,
        method: f.method,
        sign_convention: f
            .meta
            .get("inflow.sign_convention")
            .cloned()
            .unwrap_or_else(|| "higher = more influential".into()),
        aggregate: f.meta.get("inflow.aggregate").cloned(),
        query: f.query,
        train: f.train,
        score: f.score.into_iter().map(|s| s as f32).collect(),
        rank: f.rank,
    })
}

impl RawScores {
    /// Joins the rows to the store's training ids and the catalog's query ids. An id of
    /// either kind that does not join is an error naming the file and the id.
    pub fn join(
        self,
        name: String,
        train_rows: &HashMap<String, usize>,
        n_train: usize,
        query_index: &HashMap<String, usize>,
        n_queries: usize,
        store: &Path,
    ) -> Result<ScoreSet> {
        let row_of = |i: usize| -> Result<usize> {
            train_rows.get(&self.train[i]).copied().ok_or_else(|| {
                let missing = self
                    .train
                    .iter()
                    .filter(|t| !train_rows.contains_key(*t))
                    .count();
                bad(
                    &self.file,
                    format!(
                        "train id {} (file row {i}) is not a sample of the store {} \
                         ({missing} of {} ids do not join): a score file of another store?",
                        self.train[i],
                        store.display(),
                        self.train.len()
                    ),
                )
            })
        };
        let scores = match &self.query {
            Some(query) => {
                let mut lists: Vec<Vec<Hit>> = vec![Vec::new(); n_queries];
                for i in 0..self.train.len() {
                    let q = *query_index.get(&query[i]).ok_or_else(|| {
                        bad(
                            &self.file,
                            format!(
                                "query id {} (file row {i}) is not among the queries given",
                                query[i]
                            ),
                        )
                    })?;
                    let rank = self.rank.as_ref().map_or(0, |r| r[i]);
                    lists[q].push(Hit {
                        row: row_of(i)?,
                        score: self.score[i],
                        rank,
                    });
                }
                let mut k = 0;
                for list in lists.iter_mut() {
                    // Ranks as written; a file without them is ranked by score.
                    if list.iter().any(|h| h.rank == 0) {
                        list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.row.cmp(&b.row)));
                        for (r, h) in list.iter_mut().enumerate() {
                            h.rank = r as u32 + 1;
                        }
                    } else {
                        list.sort_by_key(|h| h.rank);
                    }
                    k = k.max(list.len());
                }
                let mut reverse: Vec<Vec<Pull>> = vec![Vec::new(); n_train];
                for (q, list) in lists.iter().enumerate() {
                    for h in list {
                        reverse[h.row].push(Pull {
                            query: q,
                            score: h.score,
                            rank: h.rank,
                        });
                    }
                }
                for r in reverse.iter_mut() {
                    r.sort_by(|a, b| a.rank.cmp(&b.rank).then(a.query.cmp(&b.query)));
                }
                Scores::TopK { lists, reverse, k }
            }
            None => {
                let mut score = vec![None; n_train];
                let mut rank = vec![None; n_train];
                for i in 0..self.train.len() {
                    let row = row_of(i)?;
                    score[row] = Some(self.score[i]);
                    rank[row] = self.rank.as_ref().map(|r| r[i]);
                }
                if rank
                    .iter()
                    .zip(&score)
                    .any(|(r, s)| s.is_some() && r.is_none())
                {
                    let mut order: Vec<usize> =
                        (0..n_train).filter(|&r| score[r].is_some()).collect();
                    order.sort_by(|&a, &b| {
                        score[b]
                            .unwrap_or(f32::MIN)
                            .total_cmp(&score[a].unwrap_or(f32::MIN))
                            .then(a.cmp(&b))
                    });
                    for (i, r) in order.into_iter().enumerate() {
                        rank[r] = Some(i as u32 + 1);
                    }
                }
                Scores::PerTrain {
                    score,
                    rank,
                    what: self
                        .aggregate
                        .clone()
                        .unwrap_or_else(|| "per sample".into()),
                }
            }
        };
        Ok(ScoreSet {
            name,
            file: self.file,
            sign_convention: self.sign_convention,
            scores,
        })
    }
}

impl ScoreSet {
    /// "top-k" or "per-sample".
    pub fn kind(&self) -> &'static str {
        match self.scores {
            Scores::TopK { .. } => "top-k",
            Scores::PerTrain { .. } => "per-sample",
        }
    }

    /// The value that ranks training rows for a selection: the per-sample score, or for a
    /// top-k file the best score a row reaches in any query's list (rows in no list: none).
    pub fn selection_scores(&self, n_train: usize) -> Vec<Option<f32>> {
        match &self.scores {
            Scores::PerTrain { score, .. } => score.clone(),
            Scores::TopK { reverse, .. } => (0..n_train)
                .map(|r| {
                    reverse[r]
                        .iter()
                        .map(|p| p.score)
                        .max_by(|a, b| a.total_cmp(b))
                })
                .collect(),
        }
    }
}
