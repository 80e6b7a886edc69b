//! G-DIG (Pan et al. 2024, "G-DIG: Towards Gradient-based DIverse and hiGh-quality
//! Instruction Data Selection for Machine Translation").
//!
//! 1. Quality: with a small high-quality seed set S, the score of a training sample z is its
//!    influence on S averaged over the seed samples, s(z) = (1/|S|) Σ_{q∈S} score(q, z)
//!    (helpfulness sign: positive = training on z lowers the seed loss). Keep the samples
//!    with s(z) > threshold (0 by default: beneficial), or the top fraction by s(z).
//! 2. Diversity: cluster the kept samples' gradient features with k-means (k-means++
//!    seeding, [`super::kmeans`]); features are L2-normalised first by default (cosine
//!    geometry: the gradient norm mostly measures loss size, not direction), then resample
//!    evenly across clusters to the target size: round r takes the r-th best sample (by
//!    s(z), ties by id) of every cluster that still has one, best first within the round, so
//!    clusters smaller than their share give the remainder to the others.

use serde::{Deserialize, Serialize};

use super::kmeans::kmeans;
use super::ranked::Size;
use super::{Reason, Scored, Selection};
use crate::{Error, Result};

/// G-DIG's quality filter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Keep s(z) > this value (0: beneficial on average over the seed set).
    Above(f32),
    /// Keep the best fraction in (0, 1] by s(z) (rounded like [`Size::Percent`]).
    TopFraction(f64),
}

/// Settings of a G-DIG selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GdigOptions {
    pub quality: Quality,
    /// k of k-means (lowered to the number of kept samples when larger).
    pub clusters: usize,
    /// Target size; a percentage is of all candidates, not of the kept ones.
    pub size: Size,
    /// Seed of k-means++.
    pub seed: u64,
    pub max_iter: usize,
    /// L2-normalise the features before clustering (cosine geometry).
    pub normalize: bool,
}

impl GdigOptions {
    /// Defaults: keep s(z) > 0, 32 clusters, seed 0, 100 iterations, normalised features.
    pub fn new(size: Size) -> Self {
        Self {
            quality: Quality::Above(0.0),
            clusters: 32,
            size,
            seed: 0,
            max_iter: 100,
            normalize: true,
        }
    }
}

/// Candidates passing the quality filter, best first (score descending, ties by id).
pub fn quality_filter(scored: &Scored, quality: Quality) -> Vec<usize> {
    let order = scored.order();
    match quality {
        Quality::Above(t) => order
            .into_iter()
            .take_while(|&i| scored.scores[i] > t)
            .collect(),
        Quality::TopFraction(f) => {
            let k = Size::Percent(f * 100.0).resolve(scored.len());
            order.into_iter().take(k).collect()
        }
    }
}

/// Runs G-DIG's diversity step on the candidates `kept` (from [`quality_filter`]), whose
/// gradient features are `features` (kept.len() × dim, in the order of `kept`).
/// Errors when fewer samples pass the filter than the target size.
pub fn select(
    scored: &Scored,
    kept: &[usize],
    mut features: Vec<f32>,
    dim: usize,
    opts: &GdigOptions,
) -> Result<Selection> {
    let m = opts.size.resolve(scored.len());
    if kept.len() < m {
        return Err(Error::Msg(format!(
            "G-DIG: only {} of {} samples pass the quality filter ({:?}), fewer than the target size {m}; \
             lower the threshold, keep a larger top fraction, or select fewer",
            kept.len(),
            scored.len(),
            opts.quality
        )));
    }
    if features.len() != kept.len() * dim {
        return Err(Error::Msg(format!(
            "G-DIG: {} feature values for {} kept samples of dim {dim}",
            features.len(),
            kept.len()
        )));
    }
    if opts.clusters == 0 {
        return Err(Error::Msg("G-DIG: --clusters must be at least 1".into()));
    }
    let k = opts.clusters.min(kept.len());
    // Normalised in place: the features are the largest allocation of a selection.
    if opts.normalize {
        for r in features.chunks_mut(dim) {
            let norm = r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            if norm > 0.0 {
                r.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
            }
        }
    }
    let km = kmeans(&features, dim, k, opts.seed, opts.max_iter)?;
    let ranks = scored.ranks();

    // Within-cluster rank of every kept sample (by score, ties by id).
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (pos, &c) in km.assign.iter().enumerate() {
        members[c].push(pos);
    }
    let mut turn = vec![0usize; kept.len()];
    for list in members.iter_mut() {
        list.sort_by(|&a, &b| scored.cmp_desc(kept[a], kept[b]));
        for (r, &pos) in list.iter().enumerate() {
            turn[pos] = r;
        }
    }
    let mut order: Vec<usize> = (0..kept.len()).collect();
    order.sort_by(|&a, &b| {
        turn[a]
            .cmp(&turn[b])
            .then_with(|| scored.cmp_desc(kept[a], kept[b]))
    });
    let mut per_cluster = vec![0usize; k];
    let picks = order
        .into_iter()
        .take(m)
        .map(|pos| {
            let i = kept[pos];
            let c = km.assign[pos];
            per_cluster[c] += 1;
            let mut p = scored.pick(i, ranks[i], Reason::ClusterQuota);
            p.cluster = Some(c);
            p
        })
        .collect();
    Ok(Selection {
        method: "gdig".into(),
        picks,
        n_candidates: scored.len(),
        details: serde_json::json!({
            "quality": opts.quality,
            "kept": kept.len(),
            "clusters": k,
            "normalized_features": opts.normalize,
            "cluster_sizes": members.iter().map(Vec::len).collect::<Vec<_>>(),
            "picks_per_cluster": per_cluster,
            "kmeans_iterations": km.iterations,
            "kmeans_inertia": km.inertia,
            "seed": opts.seed,
            "target_size": m,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::kmeans::tests::{centres, planted};
    use super::*;

    /// Candidates in `k` planted clusters (candidate i in cluster i % k) with scores from `score`.
    fn setup(k: usize, per: usize, score: impl Fn(usize) -> f32) -> (Scored, Vec<f32>) {
        let dim = 8;
        let feats = planted(&centres(k, dim), per, 0.3, 11);
        let n = k * per;
        let ids = (0..n).map(|i| format!("{i}-x")).collect();
        let scored = Scored::new(ids, (0..n).map(score).collect()).unwrap();
        (scored, feats)
    }

    fn rows(feats: &[f32], dim: usize, idx: &[usize]) -> Vec<f32> {
        idx.iter()
            .flat_map(|&i| feats[i * dim..(i + 1) * dim].to_vec())
            .collect()
    }

    /// G-DIG over the `kept` candidates (of `feats`, one row per candidate) with `k` clusters,
    /// picking `size`.
    fn gdig(s: &Scored, kept: &[usize], feats: &[f32], k: usize, size: usize) -> Result<Selection> {
        let dim = feats.len() / s.len();
        let mut opts = GdigOptions::new(Size::Count(size));
        opts.clusters = k;
        select(s, kept, rows(feats, dim, kept), dim, &opts)
    }

    /// How many picks come from each of the `k` planted clusters.
    fn per_planted(sel: &Selection, k: usize) -> Vec<usize> {
        let mut per = vec![0; k];
        for p in &sel.picks {
            per[p.index % k] += 1;
        }
        per
    }

    #[test]
    fn exact_size_spread_evenly_over_clusters() {
        let (k, per) = (4, 25);
        let (scored, feats) = setup(k, per, |i| 1.0 + (i * 37 % 101) as f32);
        let kept = quality_filter(&scored, Quality::Above(0.0));
        assert_eq!(kept.len(), k * per);
        let sel = gdig(&scored, &kept, &feats, k, 20).unwrap();
        assert_eq!(sel.picks.len(), 20);
        // 5 from each planted cluster, and each found cluster is one planted cluster.
        assert_eq!(per_planted(&sel, k), vec![5; k]);
        assert_eq!(
            sel.details["picks_per_cluster"],
            serde_json::json!([5, 5, 5, 5])
        );
        // Within a planted cluster the best scores are taken.
        for c in 0..k {
            let mut want: Vec<usize> = (0..k * per).filter(|i| i % k == c).collect();
            want.sort_by(|&a, &b| scored.cmp_desc(a, b));
            let mut got: Vec<usize> = sel
                .picks
                .iter()
                .map(|p| p.index)
                .filter(|i| i % k == c)
                .collect();
            got.sort_by(|&a, &b| scored.cmp_desc(a, b));
            assert_eq!(got, want[..5]);
        }
        // Same seed, same selection; a top-k by score alone would not be spread evenly.
        let again = gdig(&scored, &kept, &feats, k, 20).unwrap();
        assert_eq!(sel, again);
    }

    #[test]
    fn small_clusters_give_their_remainder_to_the_others() {
        // Planted cluster 0 keeps only 2 samples after the quality filter.
        let (k, per) = (4, 20);
        let (scored, feats) = setup(k, per, |i| {
            if i % 4 == 0 && i >= 8 {
                -1.0
            } else {
                (i + 1) as f32
            }
        });
        let kept = quality_filter(&scored, Quality::Above(0.0));
        assert_eq!(kept.len(), 2 + 3 * per);
        let sel = gdig(&scored, &kept, &feats, k, 23).unwrap();
        assert_eq!(sel.picks.len(), 23);
        // 2 from the small cluster; the other 21 split 7/7/7.
        assert_eq!(per_planted(&sel, k), vec![2, 7, 7, 7]);
    }

    #[test]
    fn quality_filter_excludes_harmful_samples() {
        let (k, per) = (3, 20);
        // Every other sample harms the seed set (negative mean score).
        let (scored, feats) = setup(k, per, |i| if i % 2 == 0 { 0.5 } else { -0.5 });
        let kept = quality_filter(&scored, Quality::Above(0.0));
        assert_eq!(kept.len(), k * per / 2);
        assert!(kept.iter().all(|&i| scored.scores[i] > 0.0));
        let sel = gdig(&scored, &kept, &feats, k, 30).unwrap();
        assert_eq!(sel.picks.len(), 30);
        assert!(sel.picks.iter().all(|p| p.score > 0.0 && p.index % 2 == 0));
        // Asking for more than pass the filter is an error, not a silent shortfall.
        let err = gdig(&scored, &kept, &feats, k, 31).unwrap_err();
        assert!(err.to_string().contains("only 30"), "{err}");
        // A top fraction keeps exactly that share.
        assert_eq!(
            quality_filter(&scored, Quality::TopFraction(0.25)).len(),
            15
        );
    }
}
