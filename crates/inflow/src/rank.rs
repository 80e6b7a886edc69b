//! Rank statistics: Spearman's ρ, Kendall's τ-b and top-k overlap.

/// Average ranks (1-based), ties sharing the mean of their positions.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    sxy / (sxx * syy).sqrt()
}

/// Spearman's ρ: Pearson correlation of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's τ-b (ties corrected), O(n²): (C − D) / √((n₀ − n₁)(n₀ − n₂)).
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len();
    let (mut c, mut d, mut tx, mut ty) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let a = (x[i] - x[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            let b = (y[i] - y[j]).partial_cmp(&0.0).map_or(0, |o| o as i64);
            match (a, b) {
                (0, 0) => {}
                (0, _) => tx += 1,
                (_, 0) => ty += 1,
                _ if a == b => c += 1,
                _ => d += 1,
            }
        }
    }
    let denom = (((c + d + tx) as f64) * ((c + d + ty) as f64)).sqrt();
    (c - d) as f64 / denom
}

/// |top-k(x) ∩ top-k(y)| / k, top meaning largest; ties broken by position.
pub fn topk_overlap(x: &[f64], y: &[f64], k: usize) -> f64 {
    let k = k.min(x.len());
    if k == 0 {
        return f64::NAN;
    }
    let top = |v: &[f64]| -> std::collections::HashSet<usize> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
        idx.into_iter().take(k).collect()
    };
    let (a, b) = (top(x), top(y));
    a.intersection(&b).count() as f64 / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [5.0, 6.0, 7.0, 8.0, 7.0];
        // scipy.stats.spearmanr → 0.820782681668123; kendalltau (tau-b) → 0.7378647873726218
        assert!((spearman(&x, &y) - 0.820_782_681_668_123).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &y) - 0.737_864_787_372_621_8).abs() < 1e-12);
        let rev: Vec<f64> = x.iter().rev().copied().collect();
        assert!((spearman(&x, &rev) + 1.0).abs() < 1e-12);
        assert!((kendall_tau_b(&x, &rev) + 1.0).abs() < 1e-12);
        assert_eq!(average_ranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
        assert_eq!(topk_overlap(&x, &y, 2), 0.5);
        assert_eq!(topk_overlap(&x, &x, 3), 1.0);
    }
}
