//! Linear datamodeling score (LDS; Park et al. 2023, "TRAK: Attributing Model Behavior at
//! Scale"; METHODS.md §5).
//!
//! Sample M subsets S_1 … S_M of the n training samples, each of size ⌊α n⌉; retrain on each
//! and measure every query's loss L_q(S_s). An attribution method's linear datamodel predicts
//! the query's outcome from a subset by summing its scores: p_q(S) = Σ_{z∈S} τ(z, q). Then
//!
//! LDS_q = ρ_Spearman( (p_q(S_s))_s , (−L_q(S_s))_s ),   LDS = mean_q LDS_q.
//!
//! **Sign.** inflow's scores are *helpfulness*: τ(z, q) > 0 means training on z lowers the
//! query loss (see each estimator's `sign_convention`). A subset of helpful samples should
//! then leave a *low* loss, so the prediction is correlated with the negated loss, −L_q; a
//! perfect method scores +1, a perfectly inverted one −1, an uninformative one ≈ 0.

use crate::eval::rank::spearman;
use crate::random::Stream;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The subset size for n samples at ratio α: round(α n), at least 1 and at most n.
pub fn subset_size(n: usize, ratio: f64) -> usize {
    ((ratio * n as f64).round() as usize).clamp(1, n.max(1))
}

/// `m` random subsets of {0, …, n−1}, each of exactly [`subset_size`]`(n, ratio)` distinct
/// indices (ascending), drawn without replacement by a partial Fisher–Yates shuffle from a
/// SplitMix64 stream keyed by (`seed`, subset number): the same arguments give the same
/// subsets on every machine.
pub fn sample_subsets(n: usize, m: usize, ratio: f64, seed: u64) -> Result<Vec<Vec<usize>>> {
    if n < 2 {
        return Err(Error::Msg(format!(
            "LDS needs at least 2 training samples (got {n})"
        )));
    }
    if !(ratio > 0.0 && ratio < 1.0) {
        return Err(Error::Msg(format!(
            "the subset ratio must lie strictly between 0 and 1 (got {ratio})"
        )));
    }
    if m < 3 {
        return Err(Error::Msg(format!(
            "LDS needs at least 3 subsets for a rank correlation (got {m})"
        )));
    }
    let k = subset_size(n, ratio);
    Ok((0..m)
        .map(|s| {
            let all: Vec<usize> = (0..n).collect();
            Stream::new(seed, &format!("lds-subset-{s}")).choose(&all, k)
        })
        .collect())
}

/// Predicted outcomes of a linear datamodel: `out[s][q] = Σ_{z∈S_s} scores[q·n + z]`, for a
/// query-major nq × n score matrix (the layout of `inflow score --full`).
pub fn predict(
    scores: &[f32],
    n: usize,
    nq: usize,
    subsets: &[Vec<usize>],
) -> Result<Vec<Vec<f64>>> {
    if scores.len() != n * nq {
        return Err(Error::Msg(format!(
            "score matrix has {} entries, expected {nq} queries × {n} training samples",
            scores.len()
        )));
    }
    subsets
        .iter()
        .map(|sub| {
            (0..nq)
                .map(|q| {
                    let row = &scores[q * n..(q + 1) * n];
                    sub.iter()
                        .map(|&z| {
                            row.get(z).map(|&v| v as f64).ok_or_else(|| {
                                Error::Msg(format!("subset index {z} out of range (n = {n})"))
                            })
                        })
                        .sum()
                })
                .collect()
        })
        .collect()
}

/// LDS of each query: Spearman's ρ over subsets between `predicted[s][q]` and the negated
/// measured loss `−loss[s][q]` (helpfulness scores, see the module doc). `None` where either
/// side is constant over the subsets (ρ undefined).
pub fn per_query(predicted: &[Vec<f64>], loss: &[Vec<f64>]) -> Result<Vec<Option<f64>>> {
    if predicted.len() != loss.len() || predicted.is_empty() {
        return Err(Error::Msg(format!(
            "{} predicted vs {} measured subsets",
            predicted.len(),
            loss.len()
        )));
    }
    let nq = loss[0].len();
    if predicted.iter().chain(loss).any(|r| r.len() != nq) {
        return Err(Error::Msg("ragged prediction or loss matrix".into()));
    }
    Ok((0..nq)
        .map(|q| {
            let p: Vec<f64> = predicted.iter().map(|r| r[q]).collect();
            let y: Vec<f64> = loss.iter().map(|r| -r[q]).collect();
            let rho = spearman(&p, &y);
            rho.is_finite().then_some(rho)
        })
        .collect())
}

/// Mean and (population) standard deviation of the defined values, and how many there were.
pub fn mean_std(values: &[Option<f64>]) -> (f64, f64, usize) {
    let v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, 0);
    }
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt(), v.len())
}

/// LDS of one method.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MethodLds {
    /// The name asked for (`cosine`, `ekfac`, …, or the name given to `--scores`).
    pub name: String,
    /// The estimator as it names itself (e.g. `influence-ekfac`).
    pub estimator: String,
    /// Mean of the per-query LDS over the queries where it is defined.
    pub mean: f64,
    /// Standard deviation of the per-query LDS over queries.
    pub std: f64,
    /// Queries with a defined LDS.
    pub n_queries: usize,
    /// LDS of each query (null where undefined), in query order.
    pub per_query: Vec<Option<f64>>,
    /// The estimator's own sign convention, as it states it.
    pub sign_convention: String,
    /// Where the scores came from and with which settings.
    pub settings: serde_json::Value,
    /// Seconds spent computing the scores (0 when reused from an earlier run).
    pub seconds: f64,
}

/// Measured losses over the subsets, to judge whether retraining moved them at all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LossSpread {
    /// Per query: the loss of the base model (before any retraining).
    pub base: Vec<f64>,
    /// Per query: mean over subsets of the retrained loss.
    pub mean: Vec<f64>,
    /// Per query: standard deviation over subsets of the retrained loss.
    pub std: Vec<f64>,
    /// Per query: max − min over subsets.
    pub range: Vec<f64>,
    /// Mean over queries of `std`.
    pub mean_std: f64,
    /// Mean over queries of `base − mean` (how much retraining lowered the loss).
    pub mean_drop: f64,
}

impl LossSpread {
    /// Spread of `loss[s][q]` over subsets s, beside the base losses.
    pub fn new(base: &[f64], loss: &[Vec<f64>]) -> Self {
        let nq = base.len();
        let m = loss.len().max(1) as f64;
        let (mut mean, mut std, mut range) = (vec![0.0; nq], vec![0.0; nq], vec![0.0; nq]);
        for q in 0..nq {
            let col: Vec<f64> = loss.iter().map(|r| r[q]).collect();
            let mu = col.iter().sum::<f64>() / m;
            mean[q] = mu;
            std[q] = (col.iter().map(|x| (x - mu).powi(2)).sum::<f64>() / m).sqrt();
            let lo = col.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = col.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            range[q] = hi - lo;
        }
        let k = nq.max(1) as f64;
        Self {
            mean_std: std.iter().sum::<f64>() / k,
            mean_drop: base.iter().zip(&mean).map(|(b, m)| b - m).sum::<f64>() / k,
            base: base.to_vec(),
            mean,
            std,
            range,
        }
    }
}

/// The `lds.json` report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LdsReport {
    /// Number of subsets M.
    pub m: usize,
    /// Subset ratio α.
    pub ratio: f64,
    /// Samples per subset, round(α n).
    pub subset_size: usize,
    pub n_train: usize,
    pub n_queries: usize,
    pub seed: u64,
    pub query_ids: Vec<String>,
    /// What LDS_q correlates, and with which sign.
    pub statistic: String,
    /// Retraining, data and feature settings.
    pub settings: serde_json::Value,
    pub measured: LossSpread,
    /// Per subset, the measured per-query losses (M × nq).
    pub losses: Vec<Vec<f64>>,
    /// Seconds of retraining in this invocation (reused runs count their recorded time).
    pub retrain_seconds: f64,
    pub methods: Vec<MethodLds>,
}

/// The statistic as written into reports.
pub const STATISTIC: &str = "LDS_q = Spearman over subsets S_s of (sum_{z in S_s} score(z, q), \
    -loss_q(S_s)); scores are helpfulness (positive = z lowers the query loss), hence the \
    negated loss; LDS = mean over queries";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_reproducible_distinct_and_exact_size() {
        let a = sample_subsets(50, 20, 0.3, 7).unwrap();
        let b = sample_subsets(50, 20, 0.3, 7).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, sample_subsets(50, 20, 0.3, 8).unwrap());
        for s in &a {
            assert_eq!(s.len(), 15);
            assert!(s.windows(2).all(|w| w[0] < w[1]), "not distinct ascending");
            assert!(s.iter().all(|&i| i < 50));
        }
        assert_ne!(a[0], a[1]);
        // Every sample is drawn about α of the time.
        let hits = a.iter().flatten().filter(|&&i| i == 3).count();
        assert!(hits < 20);
        assert_eq!(subset_size(64, 0.5), 32);
        assert!(sample_subsets(1, 10, 0.5, 0).is_err());
        assert!(sample_subsets(10, 10, 1.0, 0).is_err());
        assert!(sample_subsets(10, 2, 0.5, 0).is_err());
    }

    /// A known linear datamodel: loss_q(S) = c_q − Σ_{z∈S} β_{z,q} + noise.
    fn synthetic(n: usize, nq: usize, m: usize) -> (Vec<f32>, Vec<Vec<usize>>, Vec<Vec<f64>>) {
        let mut rng = Stream::new(1, "lds-test");
        let beta: Vec<f32> = (0..n * nq).map(|_| rng.normal() as f32).collect();
        let subsets = sample_subsets(n, m, 0.5, 3).unwrap();
        let loss = subsets
            .iter()
            .map(|s| {
                (0..nq)
                    .map(|q| {
                        let sum: f64 = s.iter().map(|&z| beta[q * n + z] as f64).sum();
                        5.0 + q as f64 - sum + 0.05 * rng.normal()
                    })
                    .collect()
            })
            .collect();
        (beta, subsets, loss)
    }

    #[test]
    fn lds_recovers_a_known_linear_datamodel_with_its_sign() {
        let (n, nq, m) = (40, 6, 60);
        let (beta, subsets, loss) = synthetic(n, nq, m);
        let lds = |scores: &[f32]| {
            let p = predict(scores, n, nq, &subsets).unwrap();
            let v = per_query(&p, &loss).unwrap();
            assert!(v.iter().all(Option::is_some));
            mean_std(&v)
        };
        let (good, _, k) = lds(&beta);
        assert_eq!(k, nq);
        assert!(good > 0.95, "score = β: LDS {good}");
        let neg: Vec<f32> = beta.iter().map(|b| -b).collect();
        let (bad, _, _) = lds(&neg);
        assert!(bad < -0.95, "score = −β: LDS {bad}");
        let mut rng = Stream::new(99, "random-scores");
        let random: Vec<f32> = (0..n * nq).map(|_| rng.normal() as f32).collect();
        let (r, _, _) = lds(&random);
        assert!(r.abs() < 0.2, "random scores: LDS {r}");
    }

    #[test]
    fn constant_sides_give_undefined_lds_and_shapes_are_checked() {
        let subsets = sample_subsets(6, 4, 0.5, 0).unwrap();
        let p = predict(&[1.0; 6], 6, 1, &subsets).unwrap();
        let loss: Vec<Vec<f64>> = (0..4).map(|s| vec![s as f64]).collect();
        assert_eq!(per_query(&p, &loss).unwrap(), vec![None]);
        assert!(predict(&[1.0; 5], 6, 1, &subsets).is_err());
        assert!(per_query(&p, &loss[..3]).is_err());
        let (m, _, k) = mean_std(&[None, Some(0.5), Some(1.0)]);
        assert_eq!((m, k), (0.75, 2));
        let spread = LossSpread::new(&[3.0], &loss);
        assert_eq!(spread.range, vec![3.0]);
        assert!((spread.mean_drop - 1.5).abs() < 1e-12);
    }
}
