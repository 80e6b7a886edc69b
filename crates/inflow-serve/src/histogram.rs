//! Equal-width histograms of per-sample values (loss, self-score) for the overview page.

use serde::Serialize;

/// Counts of finite values in `bins` equal-width bins over [min, max].
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Histogram {
    /// bins + 1 edges, ascending.
    pub edges: Vec<f64>,
    pub counts: Vec<usize>,
    /// Finite values counted, and values left out as NaN or infinite.
    pub n: usize,
    pub non_finite: usize,
    pub mean: f64,
}

impl Histogram {
    /// The histogram of `values` in `bins` bins (one bin when every value is equal).
    pub fn of(values: &[f32], bins: usize) -> Histogram {
        let finite: Vec<f64> = values
            .iter()
            .filter(|v| v.is_finite())
            .map(|&v| v as f64)
            .collect();
        let non_finite = values.len() - finite.len();
        if finite.is_empty() {
            return Histogram {
                edges: vec![],
                counts: vec![],
                n: 0,
                non_finite,
                mean: f64::NAN,
            };
        }
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let bins = if hi > lo { bins.max(1) } else { 1 };
        let width = if hi > lo {
            (hi - lo) / bins as f64
        } else {
            1.0
        };
        let mut counts = vec![0usize; bins];
        for &v in &finite {
            let b = (((v - lo) / width) as usize).min(bins - 1);
            counts[b] += 1;
        }
        Histogram {
            edges: (0..=bins).map(|i| lo + width * i as f64).collect(),
            counts,
            n: finite.len(),
            non_finite,
            mean: finite.iter().sum::<f64>() / finite.len() as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_finite_value_once_and_edges_cover_the_range() {
        let h = Histogram::of(&[0.0, 1.0, 1.0, 2.0, 4.0, f32::NAN], 4);
        assert_eq!(h.counts, vec![1, 2, 1, 1]);
        assert_eq!(h.edges, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!((h.n, h.non_finite), (5, 1));
        assert_eq!(h.mean, 8.0 / 5.0);
        let flat = Histogram::of(&[3.0, 3.0], 10);
        assert_eq!(flat.counts, vec![2]);
    }
}
