//! k-means (Lloyd's algorithm) with k-means++ seeding (Arthur & Vassilvitskii 2007):
//! the first centre is a uniformly drawn point, each next one a point drawn with probability
//! D(x)² / Σ D² (D = distance to the nearest centre chosen so far). Iterations alternate
//! "assign each point to its nearest centre" and "move each centre to its points' mean"
//! until no assignment changes. Deterministic for a seed: one SplitMix64 stream, sequential
//! sums in f64, ties to the lower cluster index.

use crate::random::Stream;
use crate::{Error, Result};

/// A clustering of n points.
#[derive(Debug, Clone, PartialEq)]
pub struct KMeans {
    /// Cluster of each point, in 0..k.
    pub assign: Vec<usize>,
    /// k × dim centres, row-major.
    pub centroids: Vec<f64>,
    /// Σ squared distance of each point to its centre.
    pub inertia: f64,
    /// Lloyd iterations run.
    pub iterations: usize,
}

fn dist2(a: &[f32], c: &[f64]) -> f64 {
    a.iter()
        .zip(c)
        .map(|(&x, &y)| {
            let d = x as f64 - y;
            d * d
        })
        .sum()
}

/// Clusters `n` points (`data`: n × dim row-major) into `k` clusters (k ≤ n), seeded with
/// k-means++ from `seed`, running at most `max_iter` Lloyd iterations. A cluster left empty
/// takes the point farthest from its centre.
pub fn kmeans(data: &[f32], dim: usize, k: usize, seed: u64, max_iter: usize) -> Result<KMeans> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(Error::Msg(format!(
            "k-means: {} values are not rows of dim {dim}",
            data.len()
        )));
    }
    let n = data.len() / dim;
    if k == 0 || k > n {
        return Err(Error::Msg(format!(
            "k-means: {k} clusters for {n} points (need 1 ≤ k ≤ n)"
        )));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(Error::Msg(format!(
            "k-means: point {} has a non-finite value",
            i / dim
        )));
    }
    let row = |i: usize| &data[i * dim..(i + 1) * dim];
    let mut rng = Stream::new(seed, "kmeans++");
    let mut centroids = Vec::with_capacity(k * dim);
    let first = (rng.next_u64() % n as u64) as usize;
    centroids.extend(row(first).iter().map(|&x| x as f64));
    let mut d2: Vec<f64> = (0..n).map(|i| dist2(row(i), &centroids[..dim])).collect();
    for _ in 1..k {
        let total: f64 = d2.iter().sum();
        let next = if total > 0.0 {
            let mut u = rng.uniform() * total;
            let mut pick = n - 1;
            for (i, &d) in d2.iter().enumerate() {
                if d > 0.0 && u < d {
                    pick = i;
                    break;
                }
                u -= d;
            }
            // Rounding can run past the end: take the last point with positive weight.
            if d2[pick] == 0.0 {
                pick = d2.iter().rposition(|&d| d > 0.0).unwrap_or(pick);
            }
            pick
        } else {
            // Every point sits on a centre (duplicates): any point will do.
            (rng.next_u64() % n as u64) as usize
        };
        let c0 = centroids.len();
        centroids.extend(row(next).iter().map(|&x| x as f64));
        for (i, d) in d2.iter_mut().enumerate() {
            *d = d.min(dist2(row(i), &centroids[c0..]));
        }
    }

    let nearest = |centroids: &[f64], i: usize| -> (usize, f64) {
        let mut best = (0, f64::INFINITY);
        for c in 0..k {
            let d = dist2(row(i), &centroids[c * dim..(c + 1) * dim]);
            if d < best.1 {
                best = (c, d);
            }
        }
        best
    };
    let mut assign = vec![usize::MAX; n];
    let mut iterations = 0;
    // Reused across iterations (every entry is rewritten each time).
    let mut dists = vec![0.0; n];
    let mut sums = vec![0.0f64; k * dim];
    while iterations < max_iter.max(1) {
        iterations += 1;
        let mut changed = false;
        for i in 0..n {
            let (c, d) = nearest(&centroids, i);
            dists[i] = d;
            if assign[i] != c {
                assign[i] = c;
                changed = true;
            }
        }
        // Empty clusters take the point farthest from its centre (from a cluster of ≥ 2).
        let mut counts = vec![0usize; k];
        assign.iter().for_each(|&c| counts[c] += 1);
        for c in 0..k {
            if counts[c] == 0 {
                let far = (0..n)
                    .filter(|&i| counts[assign[i]] > 1)
                    .max_by(|&a, &b| dists[a].total_cmp(&dists[b]).then(b.cmp(&a)));
                if let Some(i) = far {
                    counts[assign[i]] -= 1;
                    assign[i] = c;
                    counts[c] = 1;
                    dists[i] = 0.0;
                    changed = true;
                }
            }
        }
        sums.iter_mut().for_each(|s| *s = 0.0);
        for (i, &c) in assign.iter().enumerate() {
            for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(row(i)) {
                *s += x as f64;
            }
        }
        for c in 0..k {
            if counts[c] > 0 {
                for j in 0..dim {
                    centroids[c * dim + j] = sums[c * dim + j] / counts[c] as f64;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let inertia = (0..n)
        .map(|i| dist2(row(i), &centroids[assign[i] * dim..(assign[i] + 1) * dim]))
        .sum();
    Ok(KMeans {
        assign,
        centroids,
        inertia,
        iterations,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `per` points around each of `centres.len()` centres with N(0, sd²) noise, interleaved
    /// (point i belongs to planted cluster i % n_centres).
    pub(crate) fn planted(centres: &[Vec<f32>], per: usize, sd: f64, seed: u64) -> Vec<f32> {
        let mut rng = Stream::new(seed, "planted");
        let mut out = Vec::new();
        for _ in 0..per {
            for c in centres {
                out.extend(c.iter().map(|&m| m + (sd * rng.normal()) as f32));
            }
        }
        out
    }

    pub(crate) fn centres(k: usize, dim: usize) -> Vec<Vec<f32>> {
        (0..k)
            .map(|c| {
                (0..dim)
                    .map(|j| if j % k == c { 10.0 } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    /// Fraction of points whose found cluster is the majority cluster of their planted one,
    /// with the planted → found map required to be one to one.
    fn purity(found: &[usize], truth: &[usize], k: usize) -> f64 {
        let mut counts = vec![vec![0usize; k]; k];
        for (&f, &t) in found.iter().zip(truth) {
            counts[t][f] += 1;
        }
        let majority: Vec<usize> = counts
            .iter()
            .map(|r| (0..k).max_by_key(|&j| r[j]).unwrap())
            .collect();
        let mut m = majority.clone();
        m.sort();
        m.dedup();
        if m.len() < k {
            return 0.0;
        }
        let hits: usize = (0..k).map(|t| counts[t][majority[t]]).sum();
        hits as f64 / found.len() as f64
    }

    #[test]
    fn recovers_planted_gaussian_clusters_and_is_deterministic() {
        let (k, dim, per) = (5, 12, 30);
        let data = planted(&centres(k, dim), per, 0.5, 3);
        let truth: Vec<usize> = (0..k * per).map(|i| i % k).collect();
        for seed in 0..5 {
            let a = kmeans(&data, dim, k, seed, 100).unwrap();
            assert_eq!(purity(&a.assign, &truth, k), 1.0, "seed {seed}");
            let b = kmeans(&data, dim, k, seed, 100).unwrap();
            assert_eq!(a, b, "same seed, same clustering");
            // Centres land on the planted means (noise sd 0.5 / sqrt(30) per coordinate).
            for c in 0..k {
                let t = truth[a.assign.iter().position(|&x| x == c).unwrap()];
                let want = &centres(k, dim)[t];
                for (got, w) in a.centroids[c * dim..(c + 1) * dim].iter().zip(want) {
                    assert!((got - *w as f64).abs() < 0.5);
                }
            }
        }
    }

    #[test]
    fn handles_duplicates_and_rejects_bad_k() {
        let data = vec![1.0f32; 6 * 2];
        let r = kmeans(&data, 2, 3, 0, 10).unwrap();
        let mut seen = r.assign.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "no cluster left empty: {:?}", r.assign);
        assert_eq!(r.inertia, 0.0);
        assert!(kmeans(&data, 2, 7, 0, 10).is_err());
        assert!(kmeans(&data, 2, 0, 0, 10).is_err());
        assert!(kmeans(&[1.0, f32::NAN], 2, 1, 0, 10).is_err());
    }
}
