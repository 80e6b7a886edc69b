//! The compact element types of a store: int8 with one scale per row, and packed sign bits.
//!
//! int8: q = round(x / s) with s = max|x| / 127 per row, so x ≈ s · q and the largest entry
//! is kept exactly (a zero row has s = 0). Bits: bit i = [x_i > 0], eight to a byte, most
//! significant bit first (numpy's `unpackbits` order).

/// int8 codes and per-row scales of `x` (rows of `dim` values, row-major).
pub fn quantize_i8(x: &[f32], dim: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / dim.max(1));
    for row in x.chunks_exact(dim) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = max / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        codes.extend(
            row.iter()
                .map(|&v| (v * inv).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    (codes, scales)
}

/// Writes s · q for int8 `codes` of rows with the given `scales` into `out`.
pub fn dequantize_i8(codes: &[i8], scales: &[f32], dim: usize, out: &mut [f32]) {
    for ((o, c), &s) in out
        .chunks_exact_mut(dim)
        .zip(codes.chunks_exact(dim))
        .zip(scales)
    {
        for (o, &c) in o.iter_mut().zip(c) {
            *o = s * c as f32;
        }
    }
}

/// Packed sign bits of `x` (rows of `dim` values): ⌈dim/8⌉ bytes per row, padding bits 0.
pub fn pack_signs(x: &[f32], dim: usize) -> Vec<u8> {
    let row_bytes = dim.div_ceil(8);
    let mut out = vec![0u8; x.len() / dim.max(1) * row_bytes];
    for (row, bytes) in x.chunks_exact(dim).zip(out.chunks_exact_mut(row_bytes)) {
        for (i, &v) in row.iter().enumerate() {
            if v > 0.0 {
                bytes[i / 8] |= 0x80 >> (i % 8);
            }
        }
    }
    out
}

/// The vector a sign sketch stands for: ±‖x‖/√dim in each coordinate, so it has the norm
/// recorded for the row (`norms`) and the signs of the original.
pub fn unpack_signs(bits: &[u8], norms: &[f32], dim: usize, out: &mut [f32]) {
    let row_bytes = dim.div_ceil(8);
    for ((o, b), &n) in out
        .chunks_exact_mut(dim)
        .zip(bits.chunks_exact(row_bytes))
        .zip(norms)
    {
        let v = n / (dim as f32).sqrt();
        for (i, o) in o.iter_mut().enumerate() {
            *o = if b[i / 8] & (0x80 >> (i % 8)) != 0 {
                v
            } else {
                -v
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int8_keeps_the_largest_entry_and_is_within_half_a_step() {
        let x = [
            0.5f32, -1.27, 0.01, 0.0, /* zero row */ 0.0, 0.0, 0.0, 0.0,
        ];
        let (q, s) = quantize_i8(&x, 4);
        assert_eq!(q[..4], [50, -127, 1, 0]);
        assert_eq!(q[4..], [0, 0, 0, 0]);
        assert!((s[0] - 0.01).abs() < 1e-7 && s[1] == 0.0);
        let mut back = [0f32; 8];
        dequantize_i8(&q, &s, 4, &mut back);
        assert_eq!(back[1], -1.27);
        for (a, b) in back.iter().zip(&x) {
            assert!((a - b).abs() <= s[0] / 2.0 + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn signs_pack_msb_first_and_unpack_with_the_row_norm() {
        // dim 10: two bytes per row, the last six bits padding.
        let x: Vec<f32> = (0..10)
            .map(|i| if i % 3 == 0 { 1.0 } else { -2.0 })
            .collect();
        let bits = pack_signs(&x, 10);
        assert_eq!(bits, vec![0b1001_0010, 0b0100_0000]);
        let mut back = vec![0f32; 10];
        unpack_signs(&bits, &[10f32.sqrt()], 10, &mut back);
        for (a, b) in back.iter().zip(&x) {
            assert_eq!(*a, b.signum());
        }
    }
}
