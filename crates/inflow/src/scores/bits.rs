//! Scoring 1-bit sign sketches by popcount (SimHash, Charikar 2002): for sign vectors of a
//! Gaussian-like projection, the angle between z and q is θ ≈ π · hamming(z, q) / dim, so
//! z · q ≈ ‖z‖ ‖q‖ cos(π h / dim). The norms come from the store (recorded before the sign
//! was taken) and from the full-precision query.
//!
//! With AVX-512 VPOPCNTDQ (detected at run time) 64 bytes are compared per instruction;
//! elsewhere `u64::count_ones` gives the same counts.

use crate::store::quantize::pack_signs;

/// Queries as sign bits, with their norms.
pub struct Queries {
    nq: usize,
    dim: usize,
    row_bytes: usize,
    bits: Vec<u8>,
    norms: Vec<f32>,
}

impl Queries {
    /// The sign sketches of `q` (nq × dim, row-major) and their L2 norms.
    pub fn new(q: &[f32], nq: usize, dim: usize) -> Self {
        let norms = q
            .chunks_exact(dim.max(1))
            .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
            .collect();
        Self {
            nq,
            dim,
            row_bytes: dim.div_ceil(8),
            bits: pack_signs(q, dim),
            norms,
        }
    }
}

/// Whether this CPU runs the AVX-512 popcount kernel.
pub fn has_vpopcnt() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// out (rows × nq) = ‖z_r‖ ‖q_j‖ cos(π h_rj / dim) for packed training rows `z`
/// (rows × ⌈dim/8⌉ bytes) with recorded norms `row_norms`.
pub fn scores(z: &[u8], row_norms: &[f32], rows: usize, q: &Queries, out: &mut [f32]) {
    let mut h = vec![0u32; rows * q.nq];
    distances(z, rows, q, &mut h, has_vpopcnt());
    let angle = std::f32::consts::PI / q.dim.max(1) as f32;
    for ((o, h), &nz) in out
        .chunks_exact_mut(q.nq.max(1))
        .zip(h.chunks_exact(q.nq.max(1)))
        .zip(row_norms)
    {
        for ((o, &h), &nq) in o.iter_mut().zip(h).zip(&q.norms) {
            *o = nz * nq * (angle * h as f32).cos();
        }
    }
}

/// Hamming distances between every training row and query into `out` (rows × nq).
pub fn distances(z: &[u8], rows: usize, q: &Queries, out: &mut [u32], fast: bool) {
    let (nq, rb) = (q.nq, q.row_bytes);
    assert!(z.len() == rows * rb && out.len() == rows * nq);
    #[cfg(target_arch = "x86_64")]
    if fast && has_vpopcnt() && rb >= 64 {
        for r in 0..rows {
            let zr = &z[r * rb..(r + 1) * rb];
            for j in 0..nq {
                // SAFETY: the CPU features are checked above; both slices are rb long.
                out[r * nq + j] = unsafe { avx512::hamming(zr, &q.bits[j * rb..(j + 1) * rb]) };
            }
        }
        return;
    }
    let _ = fast;
    for r in 0..rows {
        let zr = &z[r * rb..(r + 1) * rb];
        for j in 0..nq {
            out[r * nq + j] = hamming(zr, &q.bits[j * rb..(j + 1) * rb]);
        }
    }
}

fn hamming(a: &[u8], b: &[u8]) -> u32 {
    let mut n = 0;
    let (a8, at) = a.split_at(a.len() / 8 * 8);
    let (b8, bt) = b.split_at(a8.len());
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        let x = u64::from_le_bytes(x.try_into().unwrap_or_default());
        let y = u64::from_le_bytes(y.try_into().unwrap_or_default());
        n += (x ^ y).count_ones();
    }
    n + at
        .iter()
        .zip(bt)
        .map(|(x, y)| (x ^ y).count_ones())
        .sum::<u32>()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512vpopcntdq")]
    pub(super) unsafe fn hamming(a: &[u8], b: &[u8]) -> u32 {
        let body = a.len() / 64 * 64;
        let mut acc = _mm512_setzero_si512();
        let mut i = 0;
        while i < body {
            let x = _mm512_loadu_si512(a.as_ptr().add(i).cast());
            let y = _mm512_loadu_si512(b.as_ptr().add(i).cast());
            acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, y)));
            i += 64;
        }
        _mm512_reduce_add_epi64(acc) as u32 + super::hamming(&a[body..], &b[body..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_paths_count_the_same_bits() {
        let mut s = crate::random::Stream::new(1, "bits");
        for (rows, nq, dim) in [(3, 2, 10), (4, 5, 512), (2, 3, 1030)] {
            let z: Vec<f32> = (0..rows * dim).map(|_| s.normal() as f32).collect();
            let q: Vec<f32> = (0..nq * dim).map(|_| s.normal() as f32).collect();
            let zb = pack_signs(&z, dim);
            let qs = Queries::new(&q, nq, dim);
            let want: Vec<u32> = (0..rows * nq)
                .map(|k| {
                    let (r, j) = (k / nq, k % nq);
                    (0..dim)
                        .filter(|&i| (z[r * dim + i] > 0.0) != (q[j * dim + i] > 0.0))
                        .count() as u32
                })
                .collect();
            for fast in [false, true] {
                let mut got = vec![0u32; rows * nq];
                distances(&zb, rows, &qs, &mut got, fast);
                assert_eq!(got, want, "dim {dim} fast {fast}");
            }
        }
    }

    #[test]
    fn identical_and_opposite_signs_give_plus_and_minus_the_norm_product() {
        let q = [1.0f32, -2.0, 3.0, 0.5];
        let qs = Queries::new(&q, 1, 4);
        let z = pack_signs(&[2.0, -1.0, 1.0, 1.0, -2.0, 1.0, -1.0, -1.0], 4);
        let mut out = [0f32; 2];
        scores(&z, &[3.0, 3.0], 2, &qs, &mut out);
        let nq = q.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((out[0] - 3.0 * nq).abs() < 1e-4 && (out[1] + 3.0 * nq).abs() < 1e-4);
    }
}
