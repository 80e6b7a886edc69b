//! Distilling the teacher's gradient cosines into the encoder's head (the trunk is frozen,
//! so the pooled trunk features are computed once and only the head trains).
//!
//! Each step draws B anchors (training samples and training queries of the train split);
//! anchor a's candidate list L_a is the step's in-batch set (C random training samples,
//! shared) plus its hard negatives (its teacher's top H), itself left out. With teacher
//! cosines t_ac and student cosines s_ac = cos(φ(a), φ(c)):
//!
//! ```text
//! p_ac = softmax_{c∈L_a}(z(t_a·)_c / τ_t)       z: standardized over L_a
//! q_ac = softmax_{c∈L_a}(s_ac / τ_s)            1/τ_s = exp(log_scale), trained
//! loss = 1/B Σ_a [ KL(p_a ‖ q_a) + λ (1 − Pearson_{c∈L_a}(s_a·, t_a·)) ]
//! ```
//!
//! (Influcoder's listwise KL plus Pearson term). AdamW with linear warm-up and cosine decay.
//! A checkpoint holds the head, the Adam moments, the step and the sampler's RNG state, so
//! a resumed run continues bit for bit; runs are deterministic for a seed and thread count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::{agreement, l2_normalize, Head, HeadShape, HEAD_FILE};
use crate::random::Stream;
use crate::train::adamw::{AdamW, AdamWConfig};
use crate::train::checkpoint;
use crate::{Error, Result};

/// The distillation settings (recorded in `encoder.json`; a resumed run must have the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DistilConfig {
    pub steps: usize,
    /// Anchors per step (B).
    pub batch: usize,
    /// Random training samples shared by every anchor's candidate list (C).
    pub in_batch: usize,
    /// Hard negatives: each anchor's teacher top H among the train split.
    pub hard: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// τ_t on standardized teacher cosines.
    pub tau_teacher: f64,
    /// λ of the Pearson term.
    pub pearson_weight: f64,
    /// Share of training samples (and of queries) held out for validation.
    pub val_fraction: f64,
    pub seed: u64,
    /// Steps between checkpoints (and validation figures).
    pub checkpoint_every: usize,
}

impl Default for DistilConfig {
    fn default() -> Self {
        Self {
            steps: 600,
            batch: 64,
            in_batch: 256,
            hard: 32,
            lr: 1e-3,
            weight_decay: 0.0,
            tau_teacher: 0.5,
            pearson_weight: 1.0,
            val_fraction: 0.2,
            seed: 0,
            checkpoint_every: 100,
        }
    }
}

/// What the head is distilled from: pooled trunk features and teacher cosines.
pub struct DistilData {
    /// Pooled trunk features of the n training samples (n × d_in).
    pub train_x: Vec<f32>,
    pub n: usize,
    /// Pooled trunk features of the nq queries (nq × d_in).
    pub query_x: Vec<f32>,
    pub nq: usize,
    pub d_in: usize,
    /// Teacher cosines, training × training (n × n) and queries × training (nq × n).
    pub t_tt: Vec<f32>,
    pub t_qt: Vec<f32>,
}

/// Which samples and queries train and which validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub q_train: Vec<usize>,
    pub q_val: Vec<usize>,
}

impl Split {
    /// A seeded split of n samples and nq queries, `frac` of each held out (sorted indices).
    pub fn new(n: usize, nq: usize, frac: f64, seed: u64) -> Split {
        let cut = |m: usize, label: &str| {
            let all: Vec<usize> = (0..m).collect();
            let n_val = ((m as f64) * frac).round() as usize;
            let mut s = Stream::new(seed, label);
            let val = s.choose(&all, n_val.min(m));
            let train = all.into_iter().filter(|i| !val.contains(i)).collect();
            (train, val)
        };
        let (train, val) = cut(n, "encoder.split.train");
        let (q_train, q_val) = cut(nq, "encoder.split.queries");
        Split {
            train,
            val,
            q_train,
            q_val,
        }
    }
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f64,
    pub kl: f64,
    pub pearson: f64,
    pub lr: f64,
    /// Mean Spearman with the teacher on the validation anchors (at checkpoint steps).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_spearman: Option<f64>,
}

/// `state.json` of a head checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistilState {
    pub step: usize,
    pub rng_state: u64,
    pub config: DistilConfig,
    pub log: Vec<StepLog>,
}

const STATE: &str = "state.json";
const OPT: &str = "optimizer.safetensors";

/// An anchor: a training sample or a query.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Anchor {
    Train(usize),
    Query(usize),
}

/// The trainer: head, optimizer, sampler, data.
pub struct Distiller<'a> {
    pub config: DistilConfig,
    pub head: Head,
    opt: AdamW,
    rng: Stream,
    pub step: usize,
    pub log: Vec<StepLog>,
    data: &'a DistilData,
    pub split: Split,
    anchors: Vec<Anchor>,
    /// Per anchor (same order as `anchors`), its hard negatives among `split.train`.
    hard: Vec<Vec<usize>>,
}

/// μ and σ (floored at 1e-6) per column of the rows `rows` of an n × d matrix.
fn standardization(x: &[f32], d: usize, rows: &[usize]) -> Result<(Tensor, Tensor)> {
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for &r in rows {
        for (j, &v) in x[r * d..(r + 1) * d].iter().enumerate() {
            mean[j] += v as f64;
            sq[j] += (v as f64) * (v as f64);
        }
    }
    let m = rows.len().max(1) as f64;
    let mu: Vec<f32> = mean.iter().map(|s| (s / m) as f32).collect();
    let sd: Vec<f32> = mean
        .iter()
        .zip(&sq)
        .map(|(s, q)| ((q / m - (s / m) * (s / m)).max(0.0).sqrt().max(1e-6)) as f32)
        .collect();
    Ok((
        Tensor::from_vec(mu, d, &Device::Cpu)?,
        Tensor::from_vec(sd, d, &Device::Cpu)?,
    ))
}

impl<'a> Distiller<'a> {
    /// A fresh trainer: the head initialized from the seed, standardized on the train split.
    pub fn new(
        config: DistilConfig,
        hidden: usize,
        d_out: usize,
        data: &'a DistilData,
    ) -> Result<Self> {
        if config.batch == 0 || config.steps == 0 {
            return Err(Error::Msg("--steps and --batch must be at least 1".into()));
        }
        let split = Split::new(data.n, data.nq, config.val_fraction, config.seed);
        if split.train.len() < 8 || split.val.len() < 4 {
            return Err(Error::Msg(format!(
                "{} training samples split into {} to train and {} to validate: too few (need 8 and 4; index more samples or change --val-fraction)",
                data.n,
                split.train.len(),
                split.val.len()
            )));
        }
        let (mean, std) = standardization(&data.train_x, data.d_in, &split.train)?;
        let shape = HeadShape {
            d_in: data.d_in,
            hidden,
            d_out,
        };
        let head = Head::init(shape, mean, std, config.seed)?;
        let opt = AdamW::new(
            AdamWConfig {
                weight_decay: config.weight_decay,
                ..AdamWConfig::default()
            },
            &head.params,
        )?;
        let mut anchors: Vec<Anchor> = split.train.iter().map(|&i| Anchor::Train(i)).collect();
        anchors.extend(split.q_train.iter().map(|&q| Anchor::Query(q)));
        let hard = anchors
            .iter()
            .map(|&a| {
                let row = teacher_row(data, a);
                let mut c: Vec<usize> = split
                    .train
                    .iter()
                    .copied()
                    .filter(|&c| a != Anchor::Train(c))
                    .collect();
                c.sort_by(|&x, &y| row[y].total_cmp(&row[x]).then(x.cmp(&y)));
                c.truncate(config.hard);
                c
            })
            .collect();
        Ok(Self {
            rng: Stream::new(config.seed, "encoder.sampler"),
            config,
            head,
            opt,
            step: 0,
            log: Vec::new(),
            data,
            split,
            anchors,
            hard,
        })
    }

    /// Continues from the checkpoint folder `dir` ([`Distiller::save`]): head, moments,
    /// step, RNG and log. The checkpoint's settings must be this run's.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let p = dir.join(STATE);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let st: DistilState = serde_json::from_str(&text).map_err(|e| Error::Store {
            path: dir.into(),
            msg: format!("{STATE}: {e}"),
        })?;
        if st.config != self.config {
            return Err(Error::Msg(format!(
                "checkpoint {} was written with other distillation settings; use a new --out or the same settings",
                dir.display()
            )));
        }
        self.head = Head::load(self.head.shape, &dir.join(HEAD_FILE))?;
        let op = dir.join(OPT);
        let mut t =
            candle_core::safetensors::load(&op, &Device::Cpu).map_err(|e| Error::Model {
                path: op.clone(),
                msg: format!("cannot read optimizer state: {e}"),
            })?;
        let mut moments = Vec::new();
        for (n, _) in &self.head.params {
            let mut take = |k: String| {
                t.remove(&k).ok_or_else(|| Error::Model {
                    path: op.clone(),
                    msg: format!("missing `{k}`"),
                })
            };
            moments.push((
                take(format!("{n}.exp_avg"))?,
                take(format!("{n}.exp_avg_sq"))?,
            ));
        }
        self.opt.moments = moments;
        self.opt.step = st.step;
        self.step = st.step;
        self.rng = Stream::from_state(st.rng_state);
        self.log = st.log;
        Ok(())
    }

    /// Writes `out/checkpoint-{step}` atomically (temporary folder, rename) and removes older
    /// ones.
    pub fn save(&self, out: &Path) -> Result<PathBuf> {
        let (tmp, dest) = checkpoint::staging(out, self.step)?;
        self.head.save(&tmp.join(HEAD_FILE))?;
        checkpoint::save_moments(
            &tmp.join(OPT),
            self.head.params.iter().map(|(n, _)| n.as_str()),
            &self.opt.moments,
        )?;
        let st = DistilState {
            step: self.step,
            rng_state: self.rng.state(),
            config: self.config.clone(),
            log: self.log.clone(),
        };
        crate::atomic_write::write_json(
            &tmp.join(STATE),
            &serde_json::to_value(&st).map_err(|e| Error::Msg(e.to_string()))?,
        )?;
        checkpoint::publish(&tmp, &dest)?;
        for (s, d) in checkpoints(out) {
            if s != self.step {
                let _ = std::fs::remove_dir_all(d);
            }
        }
        Ok(dest)
    }

    /// The learning rate of step t (0-based): linear warm-up over the first 5% of steps, then
    /// cosine decay to 10% of `lr`.
    pub fn lr_at(&self, t: usize) -> f64 {
        let c = &self.config;
        let warm = (c.steps / 20).max(1);
        if t < warm {
            return c.lr * (t + 1) as f64 / warm as f64;
        }
        let p = (t - warm) as f64 / (c.steps - warm).max(1) as f64;
        c.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
    }

    fn anchor_x(&self, a: Anchor) -> &[f32] {
        let d = self.data.d_in;
        match a {
            Anchor::Train(i) => &self.data.train_x[i * d..(i + 1) * d],
            Anchor::Query(q) => &self.data.query_x[q * d..(q + 1) * d],
        }
    }

    /// The loss of anchors `batch` (indices into the anchor list) against candidates drawn
    /// `shared`, as (loss tensor, KL, mean Pearson).
    fn loss(&self, batch: &[usize], shared: &[usize]) -> Result<(Tensor, f64, f64)> {
        let d = self.data.d_in;
        let mut union: Vec<usize> = shared.to_vec();
        for &b in batch {
            union.extend(&self.hard[b]);
        }
        union.sort_unstable();
        union.dedup();
        let pos: HashMap<usize, usize> = union.iter().enumerate().map(|(j, &c)| (c, j)).collect();
        let (nb, nu) = (batch.len(), union.len());
        let mut w = vec![0f32; nb * nu];
        let mut tm = vec![0f32; nb * nu];
        let mut p = vec![0f32; nb * nu];
        for (r, &b) in batch.iter().enumerate() {
            let a = self.anchors[b];
            let row = teacher_row(self.data, a);
            for &c in shared.iter().chain(&self.hard[b]) {
                if a != Anchor::Train(c) {
                    w[r * nu + pos[&c]] = 1.0;
                }
            }
            let idx: Vec<usize> = (0..nu).filter(|&j| w[r * nu + j] > 0.0).collect();
            for &j in &idx {
                tm[r * nu + j] = row[union[j]];
            }
            let vals: Vec<f64> = idx.iter().map(|&j| tm[r * nu + j] as f64).collect();
            let m = vals.iter().sum::<f64>() / vals.len().max(1) as f64;
            let sd = (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>()
                / vals.len().max(1) as f64)
                .sqrt()
                .max(1e-12);
            let logits: Vec<f64> = vals
                .iter()
                .map(|v| (v - m) / sd / self.config.tau_teacher)
                .collect();
            let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = logits.iter().map(|l| (l - mx).exp()).sum();
            for (&j, l) in idx.iter().zip(&logits) {
                p[r * nu + j] = ((l - mx).exp() / z) as f32;
            }
        }
        let dev = Device::Cpu;
        let xa: Vec<f32> = batch
            .iter()
            .flat_map(|&b| self.anchor_x(self.anchors[b]).iter().copied())
            .collect();
        let xu = agreement::gather_rows(&self.data.train_x, d, &union);
        let fa = l2_normalize(&self.head.forward(&Tensor::from_vec(xa, (nb, d), &dev)?)?)?;
        let fu = l2_normalize(&self.head.forward(&Tensor::from_vec(xu, (nu, d), &dev)?)?)?;
        let s = fa.matmul(&fu.t()?)?;
        let w = Tensor::from_vec(w, (nb, nu), &dev)?;
        let tm = Tensor::from_vec(tm, (nb, nu), &dev)?;
        let p = Tensor::from_vec(p, (nb, nu), &dev)?;
        // Masked log-softmax of the student's logits (masked entries pushed to −1e4).
        let logits = (s.broadcast_mul(&self.head.scale()?)? + ((&w - 1.0)? * 1e4)?)?;
        let mx = logits.max_keepdim(1)?.detach();
        let shifted = logits.broadcast_sub(&mx)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let logq = shifted.broadcast_sub(&lse)?;
        let plogp = p
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .filter(|&&v| v > 0.0)
            .map(|&v| (v as f64) * (v as f64).ln())
            .sum::<f64>();
        let cross = (&p * &logq)?.sum_all()?;
        let kl = ((cross.neg()? + plogp)? / nb as f64)?;
        // Pearson over each anchor's list.
        let cnt = w.sum_keepdim(1)?;
        let centred = |x: &Tensor| -> Result<Tensor> {
            let m = (x * &w)?.sum_keepdim(1)?.broadcast_div(&cnt)?;
            Ok((x.broadcast_sub(&m)? * &w)?)
        };
        let (sc, tc) = (centred(&s)?, centred(&tm)?);
        let num = (&sc * &tc)?.sum_keepdim(1)?;
        let den = ((sc.sqr()?.sum_keepdim(1)? * tc.sqr()?.sum_keepdim(1)?)? + 1e-12)?.sqrt()?;
        let corr = (num / den)?.mean_all()?;
        let loss = (&kl + ((1.0 - &corr)? * self.config.pearson_weight)?)?;
        Ok((
            loss,
            kl.to_scalar::<f32>()? as f64,
            corr.to_scalar::<f32>()? as f64,
        ))
    }

    /// One optimizer step; returns its record.
    pub fn step_once(&mut self) -> Result<StepLog> {
        let pool: Vec<usize> = (0..self.anchors.len()).collect();
        let batch = self.rng.choose(&pool, self.config.batch);
        let shared = self.rng.choose(&self.split.train, self.config.in_batch);
        let (loss, kl, pearson) = self.loss(&batch, &shared)?;
        let grads = loss.backward()?;
        let g: Vec<Tensor> = self
            .head
            .params
            .iter()
            .map(|(_, v)| match grads.get(v.as_tensor()) {
                Some(g) => Ok(g.clone()),
                None => Ok(v.as_tensor().zeros_like()?),
            })
            .collect::<Result<_>>()?;
        let lr = self.lr_at(self.step);
        self.opt.step(&self.head.params, &g, lr)?;
        self.step += 1;
        let rec = StepLog {
            step: self.step,
            loss: loss.to_scalar::<f32>()? as f64,
            kl,
            pearson,
            lr,
            val_spearman: None,
        };
        self.log.push(rec.clone());
        Ok(rec)
    }

    /// φ of the training samples `rows` (|rows| × d_out).
    pub fn embed_train(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let x = agreement::gather_rows(&self.data.train_x, self.data.d_in, rows);
        self.head.apply(&x, rows.len())
    }

    /// φ of the queries `rows`.
    pub fn embed_queries(&self, rows: &[usize]) -> Result<Vec<f32>> {
        let x = agreement::gather_rows(&self.data.query_x, self.data.d_in, rows);
        self.head.apply(&x, rows.len())
    }

    /// Mean Spearman of the student with the teacher, validation samples against
    /// validation samples (themselves left out).
    pub fn val_spearman(&self) -> Result<f64> {
        let v = &self.split.val;
        let e = self.embed_train(v)?;
        let s = agreement::cosines(&e, v.len(), &e, v.len(), self.head.shape.d_out)?;
        let t = agreement::submatrix(&self.data.t_tt, self.data.n, v, v);
        let own: Vec<usize> = (0..v.len()).collect();
        Ok(agreement::agreement(&t, &s, v.len(), v.len(), Some(&own), None).spearman)
    }

    /// Trains up to `config.steps` (or stops after step `until`, as a killed run would),
    /// checkpointing into `out` every `checkpoint_every` steps (with the validation ρ in the
    /// log); `on_step` sees every step's record.
    pub fn run(
        &mut self,
        out: &Path,
        until: Option<usize>,
        on_step: &mut dyn FnMut(&StepLog),
    ) -> Result<()> {
        let end = until.map_or(self.config.steps, |u| u.min(self.config.steps));
        while self.step < end {
            let mut rec = self.step_once()?;
            let every = self.config.checkpoint_every.max(1);
            if self.step.is_multiple_of(every) || self.step == self.config.steps {
                let v = self.val_spearman()?;
                rec.val_spearman = Some(v);
                if let Some(last) = self.log.last_mut() {
                    last.val_spearman = Some(v);
                }
                self.save(out)?;
            }
            on_step(&rec);
        }
        Ok(())
    }
}

/// The teacher's cosines of anchor `a` with every training sample.
fn teacher_row(data: &DistilData, a: Anchor) -> &[f32] {
    let n = data.n;
    match a {
        Anchor::Train(i) => &data.t_tt[i * n..(i + 1) * n],
        Anchor::Query(q) => &data.t_qt[q * n..(q + 1) * n],
    }
}

/// Complete head checkpoints under `out`, by step.
pub fn checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    checkpoint::list_marked(out, STATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synthetic data where the teacher's cosine is a fixed random linear map of the inputs.
    fn data(n: usize, nq: usize, d: usize) -> DistilData {
        let mut s = Stream::new(7, "test");
        let mut gen = |m: usize| -> Vec<f32> { (0..m * d).map(|_| s.normal() as f32).collect() };
        let train_x = gen(n);
        let query_x = gen(nq);
        let mut s2 = Stream::new(8, "map");
        let k = 6;
        let map: Vec<f32> = (0..d * k).map(|_| s2.normal() as f32).collect();
        let proj = |x: &[f32], m: usize| -> Vec<f32> {
            let mut o = vec![0f32; m * k];
            for r in 0..m {
                for j in 0..k {
                    o[r * k + j] = (0..d).map(|i| x[r * d + i] * map[i * k + j]).sum();
                }
            }
            o
        };
        let (gt, gq) = (proj(&train_x, n), proj(&query_x, nq));
        DistilData {
            t_tt: agreement::cosines(&gt, n, &gt, n, k).unwrap(),
            t_qt: agreement::cosines(&gq, nq, &gt, n, k).unwrap(),
            train_x,
            query_x,
            n,
            nq,
            d_in: d,
        }
    }

    fn config(steps: usize) -> DistilConfig {
        DistilConfig {
            steps,
            batch: 16,
            in_batch: 32,
            hard: 8,
            lr: 1e-2,
            checkpoint_every: 10,
            ..DistilConfig::default()
        }
    }

    #[test]
    fn distillation_lowers_the_loss_and_beats_the_untrained_head_on_held_out_samples() {
        let d = data(120, 20, 24);
        let mut t = Distiller::new(config(60), 32, 16, &d).unwrap();
        let before = t.val_spearman().unwrap();
        let dir = inflow_testkit::scratch("encoder-distil-loss");
        t.run(&dir, None, &mut |_| {}).unwrap();
        let first: f64 = t.log[..5].iter().map(|r| r.loss).sum::<f64>() / 5.0;
        let last: f64 = t.log[55..].iter().map(|r| r.loss).sum::<f64>() / 5.0;
        let after = t.val_spearman().unwrap();
        assert!(last < first - 0.1, "loss {first} → {last}");
        assert!(
            after > before + 0.1 && after > 0.5,
            "val ρ {before} → {after}"
        );
    }

    #[test]
    fn a_resumed_run_ends_with_bit_identical_head_weights() {
        let d = data(60, 10, 12);
        let straight_dir = inflow_testkit::scratch("encoder-distil-straight");
        let mut a = Distiller::new(config(30), 16, 8, &d).unwrap();
        a.run(&straight_dir, None, &mut |_| {}).unwrap();
        // Stop after 20 steps (a checkpoint at 20), then resume in a fresh trainer.
        let dir = inflow_testkit::scratch("encoder-distil-resume");
        let mut b = Distiller::new(config(30), 16, 8, &d).unwrap();
        b.run(&dir, Some(20), &mut |_| {}).unwrap();
        let mut c = Distiller::new(config(30), 16, 8, &d).unwrap();
        let (step, ck) = checkpoints(&dir).pop().unwrap();
        assert_eq!(step, 20);
        c.resume(&ck).unwrap();
        c.run(&dir, None, &mut |_| {}).unwrap();
        for ((n, x), (_, y)) in a.head.params.iter().zip(&c.head.params) {
            let (x, y): (Vec<f32>, Vec<f32>) = (
                x.flatten_all().unwrap().to_vec1().unwrap(),
                y.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert!(
                x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{n}"
            );
        }
        // The logs agree up to the JSON round trip of the checkpoint's copy.
        assert_eq!(a.log.len(), c.log.len());
        for (x, y) in a.log.iter().zip(&c.log) {
            assert!(
                x.step == y.step && (x.loss - y.loss).abs() < 1e-9,
                "{x:?} {y:?}"
            );
        }
    }
}
