//! Top-k and top-p% selection by score, ties broken by sample id.

use super::{Reason, Scored, Selection};
use crate::{Error, Result};

/// How many samples to select: a count or a percentage of the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    /// Exactly this many (at most the number of candidates).
    Count(usize),
    /// This percentage of the candidates, in (0, 100].
    Percent(f64),
}

use serde::{Deserialize, Serialize};

impl Size {
    /// The number of samples out of `n`: `Count(k)` gives min(k, n); `Percent(p)` gives
    /// p·n/100 rounded to the nearest integer, halves up (5% of 30 = 1.5 → 2), and at least 1
    /// when n > 0 (1% of 10 → 1), at most n.
    pub fn resolve(self, n: usize) -> usize {
        match self {
            Size::Count(k) => k.min(n),
            Size::Percent(p) => {
                if n == 0 {
                    return 0;
                }
                let x = p * n as f64 / 100.0;
                ((x + 0.5).floor() as usize).clamp(1, n)
            }
        }
    }
}

impl std::str::FromStr for Size {
    type Err = Error;
    /// `500` (a count) or `5%` (a percentage in (0, 100]).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || {
            Error::Msg(format!(
                "--size `{s}`: expected a count (500) or a percentage in (0, 100] (5%)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            Ok(Size::Percent(p))
        } else {
            let k: usize = s.parse().map_err(|_| bad())?;
            if k == 0 {
                return Err(bad());
            }
            Ok(Size::Count(k))
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Size::Count(k) => write!(f, "{k}"),
            Size::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// The `size` best candidates: score descending, equal scores by sample id ascending, so the
/// selection is the same whatever order the scores were listed in.
pub fn top(scored: &Scored, size: Size) -> Selection {
    let k = size.resolve(scored.len());
    let picks = scored
        .order()
        .into_iter()
        .take(k)
        .enumerate()
        .map(|(r, i)| scored.pick(i, r + 1, Reason::TopScore))
        .collect();
    Selection {
        method: "top".into(),
        picks,
        n_candidates: scored.len(),
        details: serde_json::json!({ "size": size.to_string(), "k": k }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(pairs: &[(&str, f32)]) -> Scored {
        Scored::new(
            pairs.iter().map(|p| p.0.to_string()).collect(),
            pairs.iter().map(|p| p.1).collect(),
        )
        .unwrap()
    }

    #[test]
    fn ties_are_broken_by_id_whatever_the_input_order() {
        let a = scored(&[
            ("3-c", 0.5),
            ("1-a", 0.9),
            ("2-b", 0.5),
            ("0-z", 0.5),
            ("4-d", 0.1),
        ]);
        let b = scored(&[
            ("4-d", 0.1),
            ("0-z", 0.5),
            ("2-b", 0.5),
            ("1-a", 0.9),
            ("3-c", 0.5),
        ]);
        let ids = |s: &Selection| s.picks.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
        let sa = top(&a, Size::Count(3));
        let sb = top(&b, Size::Count(3));
        assert_eq!(ids(&sa), ["1-a", "0-z", "2-b"]);
        assert_eq!(ids(&sa), ids(&sb));
        assert_eq!(
            sa.picks.iter().map(|p| p.rank).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert!(sa.picks.iter().all(|p| p.reason == Reason::TopScore));
        // Indices point back at the candidates.
        assert_eq!(sb.picks[0].index, 3);
        assert_eq!(top(&a, Size::Count(99)).picks.len(), 5);
    }

    #[test]
    fn percent_sizes_round_to_nearest_halves_up_at_least_one() {
        assert_eq!(Size::Percent(5.0).resolve(120), 6);
        assert_eq!(Size::Percent(5.0).resolve(30), 2); // 1.5 → 2
        assert_eq!(Size::Percent(12.5).resolve(10), 1); // 1.25 → 1
        assert_eq!(Size::Percent(1.0).resolve(10), 1); // 0.1 → at least 1
        assert_eq!(Size::Percent(100.0).resolve(7), 7);
        assert_eq!(Size::Percent(20.0).resolve(0), 0);
        assert_eq!(Size::Count(4).resolve(3), 3);
        assert_eq!("5%".parse::<Size>().unwrap(), Size::Percent(5.0));
        assert_eq!("500".parse::<Size>().unwrap(), Size::Count(500));
        for bad in ["0", "0%", "101%", "-3", "x", "5.5"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
        let s = scored(&[("a", 1.0), ("b", 2.0), ("c", 3.0), ("d", 4.0)]);
        assert_eq!(top(&s, Size::Percent(50.0)).picks.len(), 2);
        assert_eq!(top(&s, Size::Percent(50.0)).picks[0].id, "d");
    }

    #[test]
    fn scored_rejects_nan_and_duplicates() {
        assert!(Scored::new(vec!["a".into()], vec![f32::NAN]).is_err());
        assert!(Scored::new(vec!["a".into(), "a".into()], vec![1.0, 2.0]).is_err());
        assert!(Scored::new(vec!["a".into()], vec![]).is_err());
    }
}
