//! Deterministic random streams from a seed and a label (SplitMix64), so every projection
//! matrix can be regenerated block by block instead of stored.

/// A SplitMix64 stream keyed by (seed, label).
#[derive(Debug, Clone)]
pub struct Stream {
    state: u64,
    spare: Option<f64>,
}

fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl Stream {
    /// A stream for `label` (e.g. a layer name and side) under `seed`.
    pub fn new(seed: u64, label: &str) -> Self {
        let mut s = Stream {
            state: seed ^ fnv1a(label).rotate_left(17),
            spare: None,
        };
        s.next_u64();
        s
    }

    /// The generator's position, to save in a checkpoint and continue with [`Stream::from_state`].
    /// A Box–Muller deviate cached by [`Stream::normal`] is not part of it: save only streams
    /// that draw bits or uniforms (or an even number of normals).
    pub fn state(&self) -> u64 {
        self.state
    }

    /// A stream continuing exactly where the one that reported `state` was.
    pub fn from_state(state: u64) -> Self {
        Stream { state, spare: None }
    }

    /// Next 64 random bits (SplitMix64, Steele et al. 2014).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `k` distinct entries of `from` drawn uniformly (partial Fisher–Yates), returned sorted;
    /// all of them when `k` ≥ `from.len()`.
    pub fn choose(&mut self, from: &[usize], k: usize) -> Vec<usize> {
        let mut v = from.to_vec();
        for i in 0..k.min(v.len()) {
            let j = i + (self.next_u64() % (v.len() - i) as u64) as usize;
            v.swap(i, j);
        }
        v.truncate(k);
        v.sort_unstable();
        v
    }

    /// Shuffles `v` in place (Fisher–Yates from the end).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }

    /// Uniform in (0, 1).
    pub fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u1, u2) = (self.uniform(), self.uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }

    /// Fills `out` with ±`scale` Rademacher entries, 64 signs per draw.
    pub fn rademacher(&mut self, out: &mut [f32], scale: f32) {
        for chunk in out.chunks_mut(64) {
            let bits = self.next_u64();
            for (i, v) in chunk.iter_mut().enumerate() {
                *v = if (bits >> i) & 1 == 1 { scale } else { -scale };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Stream::new(1, "x").next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(
            Stream::new(1, "x").next_u64(),
            Stream::new(1, "y").next_u64()
        );
        assert_ne!(
            Stream::new(1, "x").next_u64(),
            Stream::new(2, "x").next_u64()
        );
    }

    #[test]
    fn saved_state_continues_the_stream() {
        let mut a = Stream::new(3, "train");
        a.next_u64();
        let mut b = Stream::from_state(a.state());
        assert_eq!(
            (0..5).map(|_| a.next_u64()).collect::<Vec<_>>(),
            (0..5).map(|_| b.next_u64()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut s = Stream::new(7, "n");
        let xs: Vec<f64> = (0..200_000).map(|_| s.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "var {var}");
    }
}
