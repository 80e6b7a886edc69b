//! Per-query top-k selection with a bounded min-heap.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A scored training row, ordered so that "greater" means "ranks better":
/// higher score first, ties broken by the smaller global row, NaN ranked last.
#[derive(Debug, Clone, Copy)]
struct Entry {
    score: f32,
    row: usize,
}

impl Entry {
    fn key(&self) -> f32 {
        if self.score.is_nan() {
            f32::NEG_INFINITY
        } else {
            self.score
        }
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // partial_cmp is total once NaN is mapped away; it also treats -0.0 == 0.0.
        let by_score = self
            .key()
            .partial_cmp(&other.key())
            .unwrap_or(Ordering::Equal);
        by_score.then_with(|| other.row.cmp(&self.row))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

/// The k best (row, score) pairs seen so far; the heap's top is the worst kept one, so a
/// new candidate costs one comparison unless it enters.
#[derive(Debug, Clone)]
pub(crate) struct TopK {
    k: usize,
    heap: BinaryHeap<Reverse<Entry>>,
    /// The worst kept score once k are kept (−∞ before): a score below it cannot enter, which
    /// settles almost every candidate with one comparison.
    floor: f32,
}

impl TopK {
    pub(crate) fn new(k: usize) -> Self {
        TopK {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 20) + 1),
            floor: f32::NEG_INFINITY,
        }
    }

    /// A heap that only takes scores of at least `floor`: the floor of a heap that already
    /// holds the best k of earlier (smaller) rows, which a later row must reach to matter.
    pub(crate) fn above(k: usize, floor: f32) -> Self {
        TopK {
            floor,
            ..TopK::new(k)
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, row: usize, score: f32) {
        // NaN compares false here and takes the full path, where it ranks last.
        if score < self.floor {
            return;
        }
        let e = Entry { score, row };
        if self.heap.len() < self.k {
            self.heap.push(Reverse(e));
        } else if let Some(mut worst) = self.heap.peek_mut() {
            if e > worst.0 {
                *worst = Reverse(e);
            }
        }
        if self.heap.len() == self.k {
            self.floor = self.heap.peek().map_or(f32::NEG_INFINITY, |w| w.0.key());
        }
    }

    /// The score a candidate must reach to enter (−∞ until k are kept).
    #[inline]
    pub(crate) fn floor(&self) -> f32 {
        self.floor
    }

    /// Adds every pair `other` kept (the merge of heaps filled on separate threads).
    pub(crate) fn absorb(&mut self, other: TopK) {
        for Reverse(e) in other.heap {
            self.push(e.row, e.score);
        }
    }

    /// The kept pairs, best first.
    pub(crate) fn into_sorted(self) -> Vec<(usize, f32)> {
        // Ascending in Reverse<Entry> is descending in Entry: best first.
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|Reverse(e)| (e.row, e.score))
            .collect()
    }
}

/// Ranks all `(row, score)` pairs the way [`TopK`] does (the reference in tests).
#[cfg(test)]
pub(crate) fn rank_all(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut v: Vec<Entry> = scores
        .iter()
        .enumerate()
        .map(|(row, &score)| Entry { score, row })
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v.into_iter().map(|e| (e.row, e.score)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_best_with_ties_to_smaller_row_and_nan_last() {
        let scores = [1.0, 3.0, f32::NAN, 3.0, -1.0, 2.0, 3.0, 0.0, -0.0];
        let mut t = TopK::new(4);
        // Pushed in reverse so tie-breaking cannot come from arrival order.
        for (row, &s) in scores.iter().enumerate().rev() {
            t.push(row, s);
        }
        assert_eq!(
            t.into_sorted(),
            vec![(1, 3.0), (3, 3.0), (6, 3.0), (5, 2.0)]
        );
        let all: Vec<usize> = rank_all(&scores).iter().map(|p| p.0).collect();
        assert_eq!(all, vec![1, 3, 6, 5, 0, 7, 8, 4, 2]);
        let mut none = TopK::new(0);
        none.push(0, 1.0);
        assert!(none.into_sorted().is_empty());
    }
}
