//! Threshold selection (ICP, "In-Context Probing": keep samples whose ICP score, the fraction
//! of probes whose answer log-probability rises with the sample as a demonstration, exceeds a
//! threshold; the paper fine-tunes on bins such as > 0.9).

use super::{Reason, Scored, Selection};

/// Every candidate with score > `threshold` (strictly), best first, ties by id.
pub fn above(scored: &Scored, threshold: f32) -> Selection {
    let picks: Vec<_> = scored
        .order()
        .into_iter()
        .enumerate()
        .take_while(|&(_, i)| scored.scores[i] > threshold)
        .map(|(r, i)| scored.pick(i, r + 1, Reason::AboveThreshold))
        .collect();
    Selection {
        method: "threshold".into(),
        n_candidates: scored.len(),
        details: serde_json::json!({ "threshold": threshold, "kept": picks.len() }),
        picks,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_strictly_above_in_rank_order() {
        let s = Scored::new(
            ["c", "a", "b", "d"].map(String::from).to_vec(),
            vec![0.95, 0.9, 1.0, 0.95],
        )
        .unwrap();
        let sel = above(&s, 0.9);
        let ids: Vec<_> = sel.picks.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["b", "c", "d"], "0.9 itself is not above 0.9");
        assert_eq!(
            sel.picks.iter().map(|p| p.rank).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(above(&s, 1.0).picks.is_empty());
    }
}
