//! Retrieval metrics for planted data (METHODS.md §5, after Li et al. 2024).
//!
//! - **Acc**: the fraction of queries whose top-1 training sample is of the query's class.
//! - **Cover**: the fraction of a query's top-k that is of its class, k = the number of training
//!   samples of that class (n_train / n_classes for balanced classes; the planted count here).
//! - **AUC**: the probability that a random positive outranks a random negative (ties count
//!   one half), the Mann–Whitney statistic.

/// Acc and Cover of a dense nq × n score matrix (query-major, larger = more attributed) for
/// queries that all belong to the class `positive` marks. Ties are broken by training index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccCover {
    pub acc: f64,
    pub cover: f64,
    pub k: usize,
    /// Per query: (top-1 is positive, fraction of the top-k that is positive).
    pub per_query: Vec<(bool, f64)>,
}

pub fn acc_cover(full: &[f32], nq: usize, positive: &[bool]) -> AccCover {
    let n = positive.len();
    let k = positive.iter().filter(|p| **p).count().max(1);
    let per_query = (0..nq)
        .map(|q| top_hits(&full[q * n..(q + 1) * n], k, |i| positive[i]))
        .collect();
    summarise(per_query, k)
}

/// Acc and Cover of class attribution: query q's positives are the training samples of its
/// class (`mix_class[i] == query_class[q]`), k = their number (n / n_classes when balanced).
pub fn acc_cover_classes(full: &[f32], mix_class: &[usize], query_class: &[usize]) -> AccCover {
    let n = mix_class.len();
    let mut ks = Vec::with_capacity(query_class.len());
    let per_query = query_class
        .iter()
        .enumerate()
        .map(|(q, &c)| {
            let k = mix_class.iter().filter(|&&x| x == c).count().max(1);
            ks.push(k);
            top_hits(&full[q * n..(q + 1) * n], k, |i| mix_class[i] == c)
        })
        .collect();
    let k = ks.iter().sum::<usize>() / ks.len().max(1);
    summarise(per_query, k)
}

/// Mean over queries of the AUC of each query's scores for its class against the others.
pub fn auc_classes(full: &[f32], mix_class: &[usize], query_class: &[usize]) -> f64 {
    let n = mix_class.len();
    let aucs: Vec<f64> = query_class
        .iter()
        .enumerate()
        .map(|(q, &c)| {
            let positive: Vec<bool> = mix_class.iter().map(|&x| x == c).collect();
            auc(&full[q * n..(q + 1) * n], &positive)
        })
        .collect();
    aucs.iter().sum::<f64>() / aucs.len().max(1) as f64
}

/// (top-1 is positive, fraction of the top-k that is positive) of one query's score row; ties
/// broken by training index.
fn top_hits(row: &[f32], k: usize, positive: impl Fn(usize) -> bool) -> (bool, f64) {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
    let top1 = order.first().is_some_and(|&i| positive(i));
    let hit = order.iter().take(k).filter(|&&i| positive(i)).count();
    (top1, hit as f64 / k as f64)
}

fn summarise(per_query: Vec<(bool, f64)>, k: usize) -> AccCover {
    let m = per_query.len().max(1) as f64;
    AccCover {
        acc: per_query.iter().filter(|p| p.0).count() as f64 / m,
        cover: per_query.iter().map(|p| p.1).sum::<f64>() / m,
        k,
        per_query,
    }
}

/// Mann–Whitney AUC of `score` for separating `positive` from the rest; NaN when either class
/// is empty.
pub fn auc(score: &[f32], positive: &[bool]) -> f64 {
    let score: Vec<f64> = score.iter().map(|&s| s as f64).collect();
    let rank = super::rank::average_ranks(&score);
    let np = positive.iter().filter(|p| **p).count() as f64;
    let nn = score.len() as f64 - np;
    if np == 0.0 || nn == 0.0 {
        return f64::NAN;
    }
    let sum: f64 = rank
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    (sum - np * (np + 1.0) / 2.0) / (np * nn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acc_cover_on_a_known_ranking() {
        let positive = [true, false, true, false, false];
        // Query 0 ranks both positives first; query 1 ranks a negative first, one positive in top 2.
        let full = [
            0.9, 0.1, 0.8, 0.0, 0.2, //
            0.5, 0.9, 0.1, 0.4, 0.45,
        ];
        let r = acc_cover(&full, 2, &positive);
        assert_eq!(r.k, 2);
        assert_eq!(r.per_query, vec![(true, 1.0), (false, 0.5)]);
        assert!((r.acc - 0.5).abs() < 1e-12 && (r.cover - 0.75).abs() < 1e-12);
    }

    #[test]
    fn class_acc_cover_uses_each_querys_own_class() {
        // Classes of 4 training samples: 0, 1, 0, 1. Query 0 (class 0) ranks 0 then 2 first;
        // query 1 (class 1) ranks 0 first, then 3.
        let (mix, qs) = ([0, 1, 0, 1], [0, 1]);
        let full = [
            0.9, 0.1, 0.8, 0.0, //
            0.9, 0.1, 0.2, 0.5,
        ];
        let r = acc_cover_classes(&full, &mix, &qs);
        assert_eq!(r.k, 2);
        assert_eq!(r.per_query, vec![(true, 1.0), (false, 0.5)]);
        // Query 0 separates perfectly (1); query 1 ranks 3 > 2 > 1 > 0 … its positives 1, 3
        // against 0, 2: pairs (3,0) no, (3,2) yes, (1,0) no, (1,2) no → 0.25.
        assert!((auc_classes(&full, &mix, &qs) - (1.0 + 0.25) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn auc_matches_pair_counting() {
        let s = [0.3f32, 0.9, 0.1, 0.9, 0.5, 0.2];
        let p = [false, true, false, false, true, true];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..6 {
            for j in 0..6 {
                if p[i] && !p[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auc(&s, &p) - wins / pairs).abs() < 1e-12);
        assert_eq!(auc(&[1.0, 2.0], &[false, true]), 1.0);
        assert!(auc(&[1.0, 2.0], &[false, false]).is_nan());
    }
}
