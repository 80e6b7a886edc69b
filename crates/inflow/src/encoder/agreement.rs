//! Rank agreement of a student's scores with the teacher's, per query (row) over a shared
//! list of candidates (columns): Spearman's ρ over all candidates and over the candidates of
//! the query's own task, and top-k overlap |top_k(teacher) ∩ top_k(student)| / k.

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::Result;

/// Mean per-query agreement of one scorer with the teacher.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Agreement {
    /// Mean Spearman ρ over all candidates.
    pub spearman: f64,
    /// Mean Spearman ρ over the candidates of the query's own task (queries with at least
    /// 5 such candidates), when tasks are known.
    pub spearman_within_task: Option<f64>,
    /// Queries that entered the within-task mean.
    pub n_within_task: usize,
    pub top10: f64,
    pub top50: f64,
    pub n_queries: usize,
    pub n_candidates: usize,
}

/// Spearman's ρ ([`crate::rank::spearman`]), 0 when either side is constant (a scorer that
/// ties every candidate agrees with nothing).
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let r = crate::rank::spearman(a, b);
    if r.is_nan() {
        0.0
    } else {
        r
    }
}

/// Indices of the `k` largest values, best first, ties by smaller index.
fn top(v: &[f64], idx: &[usize], k: usize) -> Vec<usize> {
    let mut o: Vec<usize> = idx.to_vec();
    o.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
    o.truncate(k);
    o
}

/// Agreement of `student` with `teacher`, both nq × nc row-major over the same candidates.
/// `own[q]` is a column to leave out of row q (the query itself, for training anchors);
/// `tasks` gives (row tasks, column tasks) for the within-task ρ.
pub fn agreement(
    teacher: &[f32],
    student: &[f32],
    nq: usize,
    nc: usize,
    own: Option<&[usize]>,
    tasks: Option<(&[String], &[String])>,
) -> Agreement {
    let (mut rho, mut rho_t, mut n_t, mut t10, mut t50) = (0.0, 0.0, 0, 0.0, 0.0);
    for q in 0..nq {
        let cols: Vec<usize> = (0..nc).filter(|&c| own.is_none_or(|o| o[q] != c)).collect();
        let t: Vec<f64> = (0..nc).map(|c| teacher[q * nc + c] as f64).collect();
        let s: Vec<f64> = (0..nc).map(|c| student[q * nc + c] as f64).collect();
        let pick = |v: &[f64], cs: &[usize]| cs.iter().map(|&c| v[c]).collect::<Vec<f64>>();
        rho += spearman(&pick(&t, &cols), &pick(&s, &cols));
        for (k, acc) in [(10usize, &mut t10), (50, &mut t50)] {
            let k = k.min(cols.len()).max(1);
            let tt = top(&t, &cols, k);
            let ss = top(&s, &cols, k);
            *acc += tt.iter().filter(|c| ss.contains(c)).count() as f64 / k as f64;
        }
        if let Some((qt, ct)) = tasks {
            let same: Vec<usize> = cols.iter().copied().filter(|&c| ct[c] == qt[q]).collect();
            if same.len() >= 5 {
                rho_t += spearman(&pick(&t, &same), &pick(&s, &same));
                n_t += 1;
            }
        }
    }
    let m = nq.max(1) as f64;
    Agreement {
        spearman: rho / m,
        spearman_within_task: (n_t > 0).then(|| rho_t / n_t as f64),
        n_within_task: n_t,
        top10: t10 / m,
        top50: t50 / m,
        n_queries: nq,
        n_candidates: nc,
    }
}

/// Cosine similarities (na × nb, row-major) between the rows of `a` (na × d) and of `b`.
pub fn cosines(a: &[f32], na: usize, b: &[f32], nb: usize, d: usize) -> Result<Vec<f32>> {
    if na == 0 || nb == 0 {
        return Ok(Vec::new());
    }
    let ta = super::l2_normalize(&Tensor::from_slice(a, (na, d), &Device::Cpu)?)?;
    let tb = super::l2_normalize(&Tensor::from_slice(b, (nb, d), &Device::Cpu)?)?;
    Ok(ta.matmul(&tb.t()?)?.flatten_all()?.to_vec1()?)
}

/// Rows `rows` and columns `cols` of an r × n row-major matrix.
pub fn submatrix(m: &[f32], n: usize, rows: &[usize], cols: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for &r in rows {
        out.extend(cols.iter().map(|&c| m[r * n + c]));
    }
    out
}

/// Rows `rows` of an n × d row-major matrix.
pub fn gather_rows(m: &[f32], d: usize, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * d);
    for &r in rows {
        out.extend_from_slice(&m[r * d..(r + 1) * d]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_is_one_for_monotone_and_minus_one_for_reversed() {
        let a = [1.0, 2.0, 3.0, 10.0];
        assert!((spearman(&a, &[0.1, 0.2, 0.5, 0.6]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(
            crate::rank::average_ranks(&[3.0, 1.0, 3.0]),
            vec![2.5, 1.0, 2.5]
        );
    }

    #[test]
    fn agreement_leaves_out_the_own_column_and_counts_overlap() {
        // Row 0 against 3 columns, its own column 0 ranked best by the student only.
        let t = [0.0, 0.9, 0.1];
        let s = [5.0, 0.8, 0.2];
        let a = agreement(&t, &s, 1, 3, Some(&[0]), None);
        assert!((a.spearman - 1.0).abs() < 1e-12 && (a.top10 - 1.0).abs() < 1e-12);
        let b = agreement(&t, &s, 1, 3, None, None);
        assert!(b.spearman < 1.0);
    }
}
