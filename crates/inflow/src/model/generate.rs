//! Batched decoding with a key/value cache.
//!
//! [`generate_batch`] answers B prompts at once. Each prompt is first run alone through the
//! model, filling its cache ([`Llama::prefill_left_padded`]: on a CPU one prompt is already a
//! matrix product, and padding it would only add work); the caches are left-padded with zeros
//! to the longest prompt and stacked. Then every step feeds each row's last token through
//! [`Llama::forward_padded`], whose mask hides each row's padding and whose rotary positions
//! count from each row's first real token, so the B weight reads of B single-prompt steps
//! become one. A row stops at a stop token (not included in its answer) or after `max_new`
//! tokens; a stopped row leaves the batch (its cache rows are dropped, and leading columns
//! that only padding used are trimmed); the batch ends when every row has stopped. A padded
//! row gives the tokens of its prompt alone, up to float rounding of the logits.
//!
//! The next token is the argmax of the logits (greedy, `temperature` 0; ties go to the
//! lowest id, as in [`Llama::generate_greedy`]) or a draw from softmax(logits / T), cut to
//! the smallest set of most likely tokens whose probability reaches `top_p` when `top_p` < 1
//! (nucleus sampling, Holtzman et al. 2020). Each prompt draws from its own
//! [`Stream`] keyed by the seed and the prompt's key, one uniform per step, so a prompt's
//! sample does not depend on the batch it was in or on the other prompts.

use super::llama::{argmax, KvCache};
use super::Llama;
use crate::random::Stream;
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How tokens are chosen and when a row stops.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeOptions {
    /// Most new tokens per prompt.
    pub max_new: usize,
    /// Token ids that end an answer (not included in it).
    pub stop: Vec<u32>,
    /// 0 for greedy decoding; otherwise the softmax temperature.
    pub temperature: f64,
    /// Nucleus mass in (0, 1]; 1 samples from the whole distribution. Unused when greedy.
    pub top_p: f64,
    /// Seed of the sampling streams. Unused when greedy.
    pub seed: u64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_new: 128,
            stop: Vec::new(),
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

impl DecodeOptions {
    /// Checks the temperature and top-p.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Msg(format!(
                "temperature must be 0 (greedy) or positive, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Msg(format!(
                "top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// One prompt's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Generation {
    /// The new tokens (without the stop token).
    pub tokens: Vec<u32>,
    /// Whether a stop token ended it (otherwise `max_new` did).
    pub stopped: bool,
}

/// Answers `prompts` as one left-padded batch (see the module doc). `keys[i]` names prompt
/// i's sampling stream (use something stable, such as the sample id); `tokens`, when given,
/// counts every generated token as it is made (for progress displays).
pub fn generate_batch(
    llama: &Llama,
    prompts: &[&[u32]],
    keys: &[&str],
    o: &DecodeOptions,
    tokens: Option<&AtomicUsize>,
) -> Result<Vec<Generation>> {
    o.validate()?;
    if keys.len() != prompts.len() {
        return Err(Error::Msg(format!(
            "generate_batch: {} keys for {} prompts",
            keys.len(),
            prompts.len()
        )));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(Error::Msg(format!(
            "prompt {} ({}) has no tokens",
            i, keys[i]
        )));
    }
    let mut out = vec![Generation::default(); prompts.len()];
    if prompts.is_empty() || o.max_new == 0 {
        return Ok(out);
    }
    let device = candle_core::Device::Cpu;
    let (mut last, mut cache, mut pad) = llama.prefill_left_padded(prompts)?;
    let mut streams: Vec<Stream> = keys
        .iter()
        .map(|k| Stream::new(o.seed, &format!("generate/{k}")))
        .collect();
    // Batch row r holds prompt active[r].
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    loop {
        let logits: Vec<Vec<f32>> = llama
            .head_logits(&last)?
            .squeeze(1)?
            .to_dtype(DType::F32)?
            .to_vec2()?;
        let mut keep = Vec::with_capacity(active.len());
        let mut next = Vec::with_capacity(active.len());
        for (r, &p) in active.iter().enumerate() {
            let tok = choose(&logits[r], &mut streams[p], o);
            if o.stop.contains(&tok) {
                out[p].stopped = true;
                continue;
            }
            out[p].tokens.push(tok);
            if let Some(t) = tokens {
                t.fetch_add(1, Ordering::Relaxed);
            }
            if out[p].tokens.len() < o.max_new {
                keep.push(r);
                next.push(tok);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache = keep_rows(&cache, &keep)?;
            pad = keep.iter().map(|&r| pad[r]).collect();
            active = keep.iter().map(|&r| active[r]).collect();
            let common = pad.iter().copied().min().unwrap_or(0);
            if common > 0 {
                cache = drop_leading(&cache, common)?;
                pad.iter_mut().for_each(|p| *p -= common);
            }
        }
        let x = Tensor::from_vec(next, (active.len(), 1), &device)?;
        let (hs, c) = llama.forward_padded(&x, Some(&cache), &pad)?;
        cache = c;
        last = hs;
    }
    Ok(out)
}

/// The cache rows `rows`, in that order.
fn keep_rows(c: &KvCache, rows: &[usize]) -> Result<KvCache> {
    let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    let idx = Tensor::from_vec(idx, rows.len(), &candle_core::Device::Cpu)?;
    let pick = |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 0)?) };
    Ok(KvCache {
        k: c.k.iter().map(pick).collect::<Result<_>>()?,
        v: c.v.iter().map(pick).collect::<Result<_>>()?,
        len: c.len,
    })
}

/// The cache without its first `n` columns (padding of every remaining row).
fn drop_leading(c: &KvCache, n: usize) -> Result<KvCache> {
    let len = c.len - n;
    let cut = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(2, n, len)?.contiguous()?) };
    Ok(KvCache {
        k: c.k.iter().map(cut).collect::<Result<_>>()?,
        v: c.v.iter().map(cut).collect::<Result<_>>()?,
        len,
    })
}

/// The next token from one row's logits: argmax when greedy, else one draw of `stream`.
fn choose(logits: &[f32], stream: &mut Stream, o: &DecodeOptions) -> u32 {
    if o.temperature <= 0.0 {
        return argmax(logits);
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<f64> = logits
        .iter()
        .map(|&l| ((l as f64 - max) / o.temperature).exp())
        .collect();
    let total: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= total);
    let u = stream.uniform();
    // Candidates in the order the inverse CDF walks them: by id for the whole distribution,
    // most likely first (ties by id) for the nucleus.
    let order: Vec<usize> = if o.top_p < 1.0 {
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut mass = 0.0;
        let mut n = 0;
        for &i in &idx {
            mass += p[i];
            n += 1;
            if mass >= o.top_p {
                break;
            }
        }
        idx.truncate(n);
        idx
    } else {
        (0..p.len()).collect()
    };
    let mass: f64 = order.iter().map(|&i| p[i]).sum();
    let target = u * mass;
    let mut acc = 0.0;
    for &i in &order {
        acc += p[i];
        if target < acc {
            return i as u32;
        }
    }
    // Rounding can leave the sum a hair under the target: the last candidate.
    order.last().map_or(0, |&i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tiny;

    fn model() -> crate::model::LoadedModel {
        tiny::random(&tiny::config_untied(32, 2), 2, DType::F32).unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    /// The logits of a padded row, at the prompt's end and one cached step later, equal those
    /// of the prompt run alone without a cache.
    #[test]
    fn padded_rows_give_the_logits_of_their_prompt_alone() {
        let m = model();
        let prompts: [&[u32]; 3] = [&[5, 9, 40, 41, 42, 7, 100, 3], &[17, 2], &[60, 61, 62, 63]];
        let width = 8;
        let pad: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let mut flat = vec![0u32; 3 * width];
        for (b, p) in prompts.iter().enumerate() {
            flat[b * width + pad[b]..(b + 1) * width].copy_from_slice(p);
        }
        let ids = Tensor::from_vec(flat, (3, width), &candle_core::Device::Cpu).unwrap();
        let (hs, cache) = m.llama.forward_padded(&ids, None, &pad).unwrap();
        let step0: Vec<Vec<f32>> = m
            .llama
            .head_logits(&hs.narrow(1, width - 1, 1).unwrap())
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec2()
            .unwrap();
        let next = [11u32, 12, 13];
        let x = Tensor::from_slice(&next, (3, 1), &candle_core::Device::Cpu).unwrap();
        let (hs1, _) = m.llama.forward_padded(&x, Some(&cache), &pad).unwrap();
        let step1: Vec<Vec<f32>> = m
            .llama
            .head_logits(&hs1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (b, p) in prompts.iter().enumerate() {
            // Rotary positions start at 0 at the row's first real token: the cached keys
            // (after RoPE, so they carry absolute positions) of the row equal the prompt's own.
            // (Logits alone could not tell: RoPE attention depends on position differences.)
            let own = m.llama.prefix_cache(p).unwrap();
            for li in 0..own.k.len() {
                let row = cache.k[li].narrow(0, b, 1).unwrap();
                let row = row.narrow(2, pad[b], p.len()).unwrap();
                let a: Vec<f32> = row.flatten_all().unwrap().to_vec1().unwrap();
                let w: Vec<f32> = own.k[li].flatten_all().unwrap().to_vec1().unwrap();
                assert!(max_diff(&a, &w) < 1e-5, "row {b} layer {li}: keys differ");
            }
            let alone = m.llama.next_token_logits(p).unwrap();
            let d = max_diff(&step0[b], &alone);
            assert!(d < 1e-4, "row {b} (pad {}): step 0 differs by {d}", pad[b]);
            let mut longer = p.to_vec();
            longer.push(next[b]);
            let alone1 = m.llama.next_token_logits(&longer).unwrap();
            let d1 = max_diff(&step1[b], &alone1);
            assert!(
                d1 < 1e-4,
                "row {b} (pad {}): step 1 differs by {d1}",
                pad[b]
            );
            // The check has teeth: a row's logits differ from another prompt's.
            assert!(max_diff(&step0[b], &step0[(b + 1) % 3]) > 1e-3);
        }
    }

    /// The mask is what hides the padding: declared, the padded row gives its prompt's logits;
    /// undeclared, the pad tokens are context and the logits change.
    #[test]
    fn padding_is_masked() {
        let m = model();
        let p: &[u32] = &[17, 2, 30];
        let alone = m.llama.next_token_logits(p).unwrap();
        let mut shifted = vec![0u32; 4];
        shifted.extend_from_slice(p);
        let ids = Tensor::from_vec(shifted, (1, 7), &candle_core::Device::Cpu).unwrap();
        // The last position's logits with `pad` leading pad tokens declared.
        let last = |pad: usize| -> Vec<f32> {
            let (hs, _) = m.llama.forward_padded(&ids, None, &[pad]).unwrap();
            m.llama
                .head_logits(&hs.narrow(1, 6, 1).unwrap())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        // Padding declared.
        let got = last(4);
        assert!(max_diff(&got, &alone) < 1e-4);
        // No padding declared.
        let got = last(0);
        assert!(max_diff(&got, &alone) > 1e-3);
    }

    /// Batched greedy decoding equals the uncached one-prompt loop, and sampling is the same
    /// for a prompt whatever batch it is in.
    #[test]
    fn batches_match_single_prompts() {
        let m = model();
        let prompts: Vec<Vec<u32>> = vec![
            vec![5, 9, 40, 41, 42, 7, 100, 3, 4],
            vec![17, 2],
            vec![60, 61, 62, 63],
            vec![200],
            vec![80, 81, 82, 83, 84, 85],
        ];
        let refs: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
        let keys: Vec<String> = (0..prompts.len()).map(|i| i.to_string()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        // Token 17 is frequent in these answers: as a stop token it ends rows at different
        // steps, so rows leave the batch (and its common padding is trimmed) mid-decode.
        let stop = vec![17, 258];
        let greedy = DecodeOptions {
            max_new: 10,
            stop: stop.clone(),
            ..Default::default()
        };
        let all = generate_batch(&m.llama, &refs, &keys, &greedy, None).unwrap();
        for (i, p) in prompts.iter().enumerate() {
            let want = m.llama.generate_greedy(p, 10, &stop).unwrap();
            assert_eq!(all[i].tokens, want, "prompt {i}");
            assert_eq!(all[i].stopped, want.len() < 10);
        }
        let lens: std::collections::HashSet<usize> = all.iter().map(|g| g.tokens.len()).collect();
        assert!(lens.len() >= 3, "rows stop at different steps: {all:?}");
        let sample = DecodeOptions {
            temperature: 1.5,
            top_p: 0.9,
            seed: 3,
            ..greedy.clone()
        };
        let together = generate_batch(&m.llama, &refs, &keys, &sample, None).unwrap();
        for i in 0..prompts.len() {
            let alone =
                generate_batch(&m.llama, &refs[i..i + 1], &keys[i..i + 1], &sample, None).unwrap();
            assert_eq!(together[i], alone[0], "prompt {i}");
        }
        let other = DecodeOptions { seed: 4, ..sample };
        let reseeded = generate_batch(&m.llama, &refs, &keys, &other, None).unwrap();
        assert_ne!(together, reseeded);
        assert_ne!(together, all);
    }

    #[test]
    fn choose_respects_top_p() {
        // p ∝ exp(logits): token 2 holds ~0.84 of the mass.
        let logits = [0.0f32, 1.0, 3.0, -1.0];
        let o = DecodeOptions {
            temperature: 1.0,
            top_p: 0.5,
            ..Default::default()
        };
        let mut s = Stream::new(1, "t");
        for _ in 0..50 {
            assert_eq!(choose(&logits, &mut s, &o), 2);
        }
        let o = DecodeOptions { top_p: 1.0, ..o };
        let seen: std::collections::HashSet<u32> =
            (0..400).map(|_| choose(&logits, &mut s, &o)).collect();
        assert!(seen.len() >= 3, "{seen:?}");
        assert_eq!(choose(&logits, &mut s, &DecodeOptions::default()), 2);
    }
}
