//! int8 × int8 scoring with i32 accumulation: S[r, j] = s_r · t_j · Σ_i z_ri q_ji, for
//! training rows z (int8 codes, row scale s_r) and queries quantized the same way (scale t_j).
//!
//! With AVX-512 VNNI (detected at run time) the product uses `vpdpbusd`, which multiplies
//! unsigned by signed bytes: the queries are stored shifted, q + 128, and the excess
//! 128 · Σ_i z_ri is subtracted per row. Queries are packed in panels of 16 ([k/4][16][4]
//! bytes) so one broadcast of four bytes of a training row meets 16 queries per instruction,
//! the layout of int8 GEMM kernels (oneDNN, FBGEMM). Elsewhere a portable loop gives the same
//! integers.

use crate::store::quantize::quantize_i8;

/// Queries per panel: one 512-bit register of i32 sums.
const PANEL: usize = 16;

/// Queries quantized to int8 and packed for [`scores`].
pub struct Queries {
    nq: usize,
    dim: usize,
    /// Row-major int8 codes (the portable path and the tail of each row).
    codes: Vec<i8>,
    /// Per-query scales t_j.
    scales: Vec<f32>,
    /// (q + 128) as bytes, panel-major: panel p, group g of 4 columns, query, byte.
    packed: Vec<u8>,
}

impl Queries {
    /// Quantizes `q` (nq × dim, row-major) with one scale per query.
    pub fn new(q: &[f32], nq: usize, dim: usize) -> Self {
        let (codes, scales) = quantize_i8(q, dim);
        let groups = dim / 4;
        let panels = nq.div_ceil(PANEL);
        // Padding queries are code 0, i.e. byte 128: their sums are discarded.
        let mut packed = vec![128u8; panels * groups * PANEL * 4];
        for j in 0..nq {
            let (p, lane) = (j / PANEL, j % PANEL);
            for g in 0..groups {
                for b in 0..4 {
                    let at = ((p * groups + g) * PANEL + lane) * 4 + b;
                    packed[at] = (codes[j * dim + 4 * g + b] as i16 + 128) as u8;
                }
            }
        }
        Self {
            nq,
            dim,
            codes,
            scales,
            packed,
        }
    }
}

/// Whether this CPU runs the VNNI kernel.
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// out (rows × nq, row-major) = s_r · t_j · (z_r · q_j) for `rows` int8 training rows
/// `z` (bytes of i8 codes, rows × dim) with scales `row_scales` (which may fold in any other
/// per-row factor, such as cosine's 1/‖z‖).
pub fn scores(z: &[u8], row_scales: &[f32], rows: usize, q: &Queries, out: &mut [f32]) {
    scores_by(z, row_scales, rows, q, out, has_vnni())
}

/// [`scores`] by the VNNI kernel when `vnni` (and the CPU has it), else by the portable loop;
/// both sum the same integers exactly.
fn scores_by(z: &[u8], row_scales: &[f32], rows: usize, q: &Queries, out: &mut [f32], vnni: bool) {
    let (nq, dim) = (q.nq, q.dim);
    assert!(z.len() == rows * dim && out.len() == rows * nq && row_scales.len() == rows);
    if rows == 0 || nq == 0 {
        return;
    }
    // SAFETY: i8 and u8 have the same layout; every byte is a valid i8.
    let zi: &[i8] = unsafe { std::slice::from_raw_parts(z.as_ptr().cast(), z.len()) };
    let body = dim / 4 * 4;
    #[cfg(target_arch = "x86_64")]
    if vnni && has_vnni() && body > 0 {
        // SAFETY: the CPU features are checked just above; lengths are asserted.
        unsafe { vnni::scores(z, rows, q, row_scales, out) };
        // The kernel covers the whole groups of four columns; add the rest.
        if body < dim {
            for r in 0..rows {
                for j in 0..nq {
                    let tail = dot(
                        &zi[r * dim + body..(r + 1) * dim],
                        &q.codes[j * dim + body..(j + 1) * dim],
                    );
                    out[r * nq + j] += tail as f32 * row_scales[r] * q.scales[j];
                }
            }
        }
        return;
    }
    let _ = vnni;
    for r in 0..rows {
        let zr = &zi[r * dim..(r + 1) * dim];
        for j in 0..nq {
            let d = dot(zr, &q.codes[j * dim..(j + 1) * dim]);
            out[r * nq + j] = d as f32 * row_scales[r] * q.scales[j];
        }
    }
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| x as i32 * y as i32).sum()
}

/// Measured peak of `vpdpbusd` on one core: multiply-accumulates of int8 pairs per second,
/// from a loop of independent accumulators that never touches memory (the ceiling the
/// scoring kernel is compared with). `None` without VNNI.
pub fn peak_macs_per_s(iters: usize) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        let t = std::time::Instant::now();
        // SAFETY: the CPU features are checked just above.
        let sink = unsafe { vnni::peak(iters) };
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        return Some((iters * vnni::PEAK_ACCS * 64) as f64 / secs);
    }
    let _ = iters;
    None
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    use super::{Queries, PANEL};
    use std::arch::x86_64::*;

    /// Training rows per micro-kernel call.
    const MR: usize = 6;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn scores(
        z: &[u8],
        rows: usize,
        q: &Queries,
        row_scales: &[f32],
        out: &mut [f32],
    ) {
        let (nq, dim) = (q.nq, q.dim);
        let groups = dim / 4;
        let panels = nq.div_ceil(PANEL);
        // Query scales padded to whole panels (padding queries are never written out).
        let mut t = vec![0f32; panels * PANEL];
        t[..nq].copy_from_slice(&q.scales);
        let mut tile = [0i32; MR * 2 * PANEL];
        let mut r0 = 0;
        while r0 < rows {
            let mr = MR.min(rows - r0);
            // 128 · Σ_i z_ri over the columns the kernel covers (the shift of the queries).
            let mut excess = [0i32; MR];
            for (r, e) in excess.iter_mut().enumerate().take(mr) {
                *e = 128 * row_sum(&z[(r0 + r) * dim..(r0 + r) * dim + groups * 4]);
            }
            let mut p = 0;
            while p < panels {
                let np = if p + 1 < panels { 2 } else { 1 };
                let panel = q.packed.as_ptr().add(p * groups * PANEL * 4);
                let zp = z.as_ptr().add(r0 * dim);
                match (mr, np) {
                    (6, 2) => micro::<6, 2>(zp, dim, panel, groups, &mut tile),
                    (6, _) => micro::<6, 1>(zp, dim, panel, groups, &mut tile),
                    (5, 2) => micro::<5, 2>(zp, dim, panel, groups, &mut tile),
                    (5, _) => micro::<5, 1>(zp, dim, panel, groups, &mut tile),
                    (4, 2) => micro::<4, 2>(zp, dim, panel, groups, &mut tile),
                    (4, _) => micro::<4, 1>(zp, dim, panel, groups, &mut tile),
                    (3, 2) => micro::<3, 2>(zp, dim, panel, groups, &mut tile),
                    (3, _) => micro::<3, 1>(zp, dim, panel, groups, &mut tile),
                    (2, 2) => micro::<2, 2>(zp, dim, panel, groups, &mut tile),
                    (2, _) => micro::<2, 1>(zp, dim, panel, groups, &mut tile),
                    (_, 2) => micro::<1, 2>(zp, dim, panel, groups, &mut tile),
                    _ => micro::<1, 1>(zp, dim, panel, groups, &mut tile),
                }
                let j0 = p * PANEL;
                let width = (np * PANEL).min(nq - j0);
                for r in 0..mr {
                    let (e, sr) = (excess[r], row_scales[r0 + r]);
                    let sums = &tile[r * 2 * PANEL..r * 2 * PANEL + width];
                    let o = &mut out[(r0 + r) * nq + j0..(r0 + r) * nq + j0 + width];
                    for ((o, &s), &t) in o.iter_mut().zip(sums).zip(&t[j0..j0 + width]) {
                        *o = (s - e) as f32 * sr * t;
                    }
                }
                p += np;
            }
            r0 += mr;
        }
    }

    /// Σ_i z_i of int8 codes, 64 at a time by `vpdpbusd` against ones.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn row_sum(z: &[u8]) -> i32 {
        let ones = _mm512_set1_epi8(1);
        let mut acc = _mm512_setzero_si512();
        let body = z.len() / 64 * 64;
        let mut i = 0;
        while i < body {
            let b = _mm512_loadu_si512(z.as_ptr().add(i).cast());
            acc = _mm512_dpbusd_epi32(acc, ones, b);
            i += 64;
        }
        _mm512_reduce_add_epi32(acc) + z[body..].iter().map(|&b| b as i8 as i32).sum::<i32>()
    }

    /// Sums of MR training rows (from `z`, row stride `dim`) against NP panels of 16 queries
    /// (consecutive in `panel`, each `groups` × 64 bytes) into `tile` (MR × 32 i32).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn micro<const MR: usize, const NP: usize>(
        z: *const u8,
        dim: usize,
        panel: *const u8,
        groups: usize,
        tile: &mut [i32; 6 * 2 * PANEL],
    ) {
        let mut acc = [[_mm512_setzero_si512(); NP]; MR];
        let stride = groups * PANEL * 4;
        for g in 0..groups {
            let mut a = [_mm512_setzero_si512(); NP];
            for (n, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_si512(panel.add(n * stride + g * 64).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let four = (z.add(r * dim + 4 * g) as *const i32).read_unaligned();
                let b = _mm512_set1_epi32(four);
                for n in 0..NP {
                    acc[n] = _mm512_dpbusd_epi32(acc[n], a[n], b);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (n, v) in acc.iter().enumerate() {
                _mm512_storeu_si512(tile.as_mut_ptr().add(r * 2 * PANEL + n * PANEL).cast(), *v);
            }
        }
    }

    /// Independent accumulators of the peak loop (enough to cover the instruction latency).
    pub(super) const PEAK_ACCS: usize = 12;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn peak(iters: usize) -> i32 {
        let a = _mm512_set1_epi32(0x0102_0304);
        let b = _mm512_set1_epi32(0x0101_0101);
        let mut acc = [_mm512_setzero_si512(); PEAK_ACCS];
        for _ in 0..iters {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for v in acc {
            s = _mm512_add_epi32(s, v);
        }
        _mm512_reduce_add_epi32(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = crate::random::Stream::new(seed, "int8-test");
        (0..n).map(|_| s.next_u64() as u8).collect()
    }

    /// Both paths give the exact integer products, for every shape of row and query tails
    /// (rows not a multiple of 6, queries of 16, columns of 4), extreme codes included: with
    /// unit scales every sum is an integer well inside f32's exact range.
    #[test]
    fn vnni_and_portable_products_are_exact() {
        for (rows, nq, dim) in [(1, 1, 4), (7, 17, 9), (13, 33, 64), (6, 32, 130), (2, 5, 3)] {
            let mut z = codes(rows * dim, rows as u64);
            z[0] = 0x80; // -128: the one code quantization never makes, still exact here
            let q: Vec<f32> = codes(nq * dim, 99)
                .iter()
                .map(|&b| b as i8 as f32)
                .collect();
            let mut qs = Queries::new(&q, nq, dim);
            qs.scales.iter_mut().for_each(|t| *t = 1.0);
            let mut want = vec![0f32; rows * nq];
            for r in 0..rows {
                for j in 0..nq {
                    want[r * nq + j] = (0..dim)
                        .map(|i| z[r * dim + i] as i8 as i32 * qs.codes[j * dim + i] as i32)
                        .sum::<i32>() as f32;
                }
            }
            for vnni in [false, true] {
                let mut got = vec![0f32; rows * nq];
                scores_by(&z, &vec![1.0; rows], rows, &qs, &mut got, vnni);
                assert_eq!(got, want, "rows {rows} nq {nq} dim {dim} vnni {vnni}");
            }
        }
    }

    #[test]
    fn scores_approximate_the_float_products() {
        let (rows, nq, dim) = (5, 3, 256);
        let mut s = crate::random::Stream::new(4, "x");
        let z: Vec<f32> = (0..rows * dim).map(|_| s.normal() as f32).collect();
        let q: Vec<f32> = (0..nq * dim).map(|_| s.normal() as f32).collect();
        let (zc, zs) = quantize_i8(&z, dim);
        let zb: Vec<u8> = zc.iter().map(|&c| c as u8).collect();
        let mut out = vec![0f32; rows * nq];
        scores(&zb, &zs, rows, &Queries::new(&q, nq, dim), &mut out);
        for r in 0..rows {
            for j in 0..nq {
                let exact: f32 = (0..dim).map(|i| z[r * dim + i] * q[j * dim + i]).sum();
                // Two int8 roundings on 256 terms of N(0,1): well under 1 in 16 units.
                assert!(
                    (out[r * nq + j] - exact).abs() < 1.0,
                    "{} vs {exact}",
                    out[r * nq + j]
                );
            }
        }
    }
}
