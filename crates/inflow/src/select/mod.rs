//! Data selection (METHODS.md §3, DESIGN.md "select"): which training samples to keep.
//!
//! ```text
//! per-train scores ──► ranked (top-k / top-p%) ──┐
//! full matrix + tasks ──► per-task max (LESS) ───┤
//! ICP scores ──► threshold ──────────────────────┼──► Selection ──► write (input format + manifest)
//! seed-set scores + features ──► G-DIG ──────────┘
//! ```
//!
//! Every method returns a [`Selection`]: the picked samples with their score, rank, cluster
//! (G-DIG) and why they were picked. Order is always deterministic: higher score first,
//! equal scores by smaller sample id (byte order of the id string).

pub mod gdig;
pub mod input;
pub mod kmeans;
pub mod ranked;
pub mod threshold;
pub mod write;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// Why a sample was selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Among the `k` highest scores (top-k / top-p%).
    TopScore,
    /// Score above the threshold (ICP).
    AboveThreshold,
    /// Passed G-DIG's quality filter and was drawn in its cluster's round-robin turn.
    ClusterQuota,
}

impl Reason {
    /// The name written in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TopScore => "top_score",
            Reason::AboveThreshold => "above_threshold",
            Reason::ClusterQuota => "cluster_quota",
        }
    }
}

/// One selected sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    /// Position in the scored candidates (the score file's row order).
    pub index: usize,
    /// Sample id (`"{row}-{hash}"`).
    pub id: String,
    /// The score the selection used.
    pub score: f32,
    /// 1-based rank of the score among all candidates (best first, ties by id).
    pub rank: usize,
    /// G-DIG cluster of the sample (None for other methods).
    pub cluster: Option<usize>,
    pub reason: Reason,
}

/// The outcome of a selection: picks in selection order (best first, or G-DIG's round-robin
/// order), the number of candidates and a method-specific summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub method: String,
    pub picks: Vec<Pick>,
    pub n_candidates: usize,
    /// Method details (G-DIG: samples kept by quality, cluster sizes, picks per cluster).
    pub details: serde_json::Value,
}

/// Scores with their sample ids, one per candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub ids: Vec<String>,
    pub scores: Vec<f32>,
}

impl Scored {
    /// Pairs ids and scores; errors on unequal lengths, non-finite scores (an infinite one
    /// would always be picked first) or duplicate ids.
    pub fn new(ids: Vec<String>, scores: Vec<f32>) -> crate::Result<Self> {
        if ids.len() != scores.len() {
            return Err(crate::Error::Msg(format!(
                "{} sample ids for {} scores",
                ids.len(),
                scores.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(crate::Error::Msg(format!(
                "sample {} has a non-finite score {}; expected finite scores",
                ids[i], scores[i]
            )));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(crate::Error::Msg(format!("sample id {dup} appears twice")));
        }
        Ok(Self { ids, scores })
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Candidate indices best first: score descending, equal scores by id ascending.
    pub fn order(&self) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.len()).collect();
        idx.sort_by(|&a, &b| self.cmp_desc(a, b));
        idx
    }

    /// 1-based ranks under [`Scored::order`].
    pub fn ranks(&self) -> Vec<usize> {
        let mut r = vec![0; self.len()];
        for (k, i) in self.order().into_iter().enumerate() {
            r[i] = k + 1;
        }
        r
    }

    /// Best-first comparison of two candidates (higher score, then smaller id).
    pub fn cmp_desc(&self, a: usize, b: usize) -> Ordering {
        self.scores[b]
            .total_cmp(&self.scores[a])
            .then_with(|| self.ids[a].cmp(&self.ids[b]))
    }

    /// A pick of candidate `i`.
    pub(crate) fn pick(&self, i: usize, rank: usize, reason: Reason) -> Pick {
        Pick {
            index: i,
            id: self.ids[i].clone(),
            score: self.scores[i],
            rank,
            cluster: None,
            reason,
        }
    }
}
