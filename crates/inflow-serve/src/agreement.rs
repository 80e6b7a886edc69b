//! How far two methods agree on one query's top-k lists: the overlap of the two lists and
//! the Spearman correlation of their scores on the training samples both lists hold.

use std::collections::HashMap;

use serde::Serialize;

use crate::scoreset::Hit;

/// The agreement of two top-k lists.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Agreement {
    pub a: String,
    pub b: String,
    /// Training samples in both lists.
    pub n_common: usize,
    /// |A ∩ B| / min(|A|, |B|): 1 when the shorter list is inside the longer.
    pub overlap: f64,
    /// Spearman ρ of the two scores over the common samples (None below 3 of them).
    pub spearman: Option<f64>,
}

/// The training rows in both lists, with (score in a, score in b).
pub fn common(a: &[Hit], b: &[Hit]) -> Vec<(usize, f32, f32)> {
    let in_b: HashMap<usize, f32> = b.iter().map(|h| (h.row, h.score)).collect();
    a.iter()
        .filter_map(|h| in_b.get(&h.row).map(|&sb| (h.row, h.score, sb)))
        .collect()
}

/// Overlap and Spearman of lists `a` and `b` (named for the output).
pub fn agreement(name_a: &str, a: &[Hit], name_b: &str, b: &[Hit]) -> Agreement {
    let both = common(a, b);
    let shorter = a.len().min(b.len());
    let spearman = (both.len() >= 3).then(|| {
        let x: Vec<f64> = both.iter().map(|c| c.1 as f64).collect();
        let y: Vec<f64> = both.iter().map(|c| c.2 as f64).collect();
        inflow::rank::spearman(&x, &y)
    });
    Agreement {
        a: name_a.into(),
        b: name_b.into(),
        n_common: both.len(),
        overlap: if shorter == 0 {
            0.0
        } else {
            both.len() as f64 / shorter as f64
        },
        spearman: spearman.filter(|s| s.is_finite()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rows_scores: &[(usize, f32)]) -> Vec<Hit> {
        rows_scores
            .iter()
            .enumerate()
            .map(|(i, &(row, score))| Hit {
                row,
                score,
                rank: i as u32 + 1,
            })
            .collect()
    }

    #[test]
    fn overlap_and_spearman_on_the_common_rows() {
        let a = list(&[(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]);
        let b = list(&[(4, 5.0), (3, 4.0), (2, 3.0), (9, 2.0)]);
        let g = agreement("a", &a, "b", &b);
        assert_eq!(g.n_common, 3);
        assert_eq!(g.overlap, 0.75);
        // Rows 2, 3, 4 are ordered the opposite way by the two methods.
        assert!((g.spearman.unwrap() + 1.0).abs() < 1e-12);
        let same = agreement("a", &a, "a", &a);
        assert_eq!(same.overlap, 1.0);
        assert!((same.spearman.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(agreement("a", &a[..2], "b", &b[..1]).spearman, None);
    }
}
