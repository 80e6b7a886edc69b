//! Per-sample gradient features against ground truth: autograd, central finite differences,
//! batch-size invariance, and the projections against their definitions.

use candle_core::{DType, Tensor};
use inflow::features::{
    logra, per_sample_gradient, select_modules, FeatureSpec, Projection, Projector,
};
use inflow::model::{tiny, Captured, Llama, LoadedModel, TokenSeq};
use std::collections::HashMap;

mod common;

use common::{to_f64, token_seqs};

fn seqs(m: &LoadedModel) -> Vec<TokenSeq> {
    token_seqs(
        m,
        &[
            ("Question: 2+2?", " Answer: four."),
            ("Translate 'chat' to English.", " cat"),
            ("Say hello", " Hello there, friend! How are you today?"),
            ("x", " y"),
            (
                "A longer prompt about the weather in the mountains",
                " It is cold.",
            ),
            ("Name a colour", " Blue."),
            ("Count", " one two three four five"),
            ("Empty-ish", " ok"),
        ],
    )
}

/// The loss of `batch` and what every block Linear saw of it (inputs, output gradients).
fn capture_all(m: &LoadedModel, batch: &[TokenSeq]) -> Captured {
    let all: Vec<usize> = (0..m.llama.linears().len()).collect();
    m.llama.loss_and_capture(batch, &all).unwrap()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    num / den.max(1e-300)
}

#[test]
fn captured_gradient_equals_autograd_for_batch_of_one() {
    let m = tiny::random(&tiny::config(16, 2), 3, DType::F64).unwrap();
    let batch = &seqs(&m)[..1];
    let cap = capture_all(&m, batch);

    let mut trainable = tiny::random(&tiny::config(16, 2), 3, DType::F64)
        .unwrap()
        .llama;
    let vars = trainable.make_trainable().unwrap();
    let (losses, grads) = trainable.loss_and_grads(batch).unwrap();
    let grads = grads.unwrap();
    assert!((losses[0] - cap.losses[0]).abs() < 1e-6);
    assert_eq!(vars.len(), cap.layers.len());
    for (layer, (name, var)) in cap.layers.iter().zip(&vars) {
        assert_eq!(format!("{}.weight", layer.info.name), *name);
        let g = per_sample_gradient(&layer.x, &layer.delta)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let reference = grads
            .get(var.as_tensor())
            .expect("every weight gets a gradient");
        let e = rel_err(&to_f64(&g), &to_f64(reference));
        assert!(e < 1e-10, "{name}: relative error {e}");
    }
}

#[test]
fn captured_gradient_matches_central_finite_differences() {
    let cfg = tiny::config(16, 2);
    let m = tiny::random(&cfg, 5, DType::F64).unwrap();
    let batch = &seqs(&m)[2..3];
    let cap = capture_all(&m, batch);
    let base: HashMap<String, Tensor> = m.llama.hf_tensors().into_iter().collect();
    let loss64 = |name: &str, idx: usize, delta: f64| -> f64 {
        let mut t = base.clone();
        let w = &t[name];
        let shape = w.dims().to_vec();
        let mut v = to_f64(w);
        v[idx] += delta;
        t.insert(
            name.to_string(),
            Tensor::from_vec(v, shape, &candle_core::Device::Cpu).unwrap(),
        );
        let l = Llama::from_tensors(cfg.clone(), t, "fd".into(), DType::F64).unwrap();
        l.losses_f64(batch).unwrap()[0]
    };
    let mut checked = 0;
    for (li, layer) in cap.layers.iter().enumerate() {
        let g = to_f64(&per_sample_gradient(&layer.x, &layer.delta).unwrap());
        let name = format!("{}.weight", layer.info.name);
        // A few entries per layer, spread over the matrix.
        for k in 0..3 {
            let idx = (k * 7919 + li * 31) % g.len();
            let h = 1e-5;
            let fd = (loss64(&name, idx, h) - loss64(&name, idx, -h)) / (2.0 * h);
            let err = (fd - g[idx]).abs() / (g[idx].abs().max(1e-6));
            assert!(err < 1e-5, "{name}[{idx}]: fd {fd} vs captured {}", g[idx]);
            checked += 1;
        }
    }
    assert_eq!(checked, 42);
}

fn features(m: &LoadedModel, batch: &[TokenSeq], proj: Projection) -> (Vec<f32>, usize) {
    let spec = FeatureSpec {
        projection: proj,
        seed: 11,
        loss: "mean".into(),
        layers: m.llama.linears(),
    };
    let dim = spec.dim();
    let p = Projector::new(spec, m.llama.dtype()).unwrap();
    let cap = capture_all(m, batch);
    (p.project(&cap).unwrap(), dim)
}

#[test]
fn features_do_not_depend_on_batch_size_or_padding() {
    let m = tiny::random(&tiny::config(32, 2), 9, DType::F32).unwrap();
    let all = seqs(&m);
    let proj = Projection::Logra {
        rank_in: 4,
        rank_out: 4,
    };
    let (one, dim) = {
        let mut rows = Vec::new();
        let mut dim = 0;
        for s in &all {
            let (f, d) = features(&m, std::slice::from_ref(s), proj.clone());
            rows.extend(f);
            dim = d;
        }
        (rows, dim)
    };
    for bs in [4usize, 8] {
        let mut rows = Vec::new();
        for chunk in all.chunks(bs) {
            rows.extend(features(&m, chunk, proj.clone()).0);
        }
        for i in 0..all.len() {
            let a: Vec<f64> = one[i * dim..(i + 1) * dim]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let b: Vec<f64> = rows[i * dim..(i + 1) * dim]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let e = rel_err(&b, &a);
            assert!(e < 1e-5, "batch size {bs}, sample {i}: relative error {e}");
        }
    }
}

#[test]
fn logra_equals_projected_explicit_gradient() {
    let m = tiny::random(&tiny::config(16, 1), 2, DType::F64).unwrap();
    let batch = &seqs(&m)[..3];
    let (feats, dim) = features(
        &m,
        batch,
        Projection::Logra {
            rank_in: 3,
            rank_out: 5,
        },
    );
    let (full, fdim) = features(&m, batch, Projection::Full);
    let layers = m.llama.linears();
    let lg = logra::Logra::new(&layers, 3, 5, 11, DType::F64).unwrap();
    for b in 0..batch.len() {
        let mut off = 0;
        let mut foff = 0;
        for (i, l) in layers.iter().enumerate() {
            let g: Vec<f64> = full[b * fdim + foff..b * fdim + foff + l.d_out * l.d_in]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let g = Tensor::from_vec(g, (l.d_out, l.d_in), &candle_core::Device::Cpu).unwrap();
            let (p_in, p_out) = lg.matrices(i).unwrap();
            let expect = p_out.t().unwrap().matmul(&g).unwrap().matmul(p_in).unwrap();
            let got: Vec<f64> = feats[b * dim + off..b * dim + off + 15]
                .iter()
                .map(|&x| x as f64)
                .collect();
            let e = rel_err(&got, &to_f64(&expect));
            assert!(e < 1e-6, "layer {}: relative error {e}", l.name);
            off += 15;
            foff += l.d_out * l.d_in;
        }
    }
}

#[test]
fn dense_projection_preserves_inner_products_within_jl_bounds() {
    let m = tiny::random(&tiny::config(16, 1), 4, DType::F32).unwrap();
    let batch = &seqs(&m)[..4];
    let cap = capture_all(&m, batch);
    let full = {
        let spec = FeatureSpec {
            projection: Projection::Full,
            seed: 0,
            loss: "mean".into(),
            layers: m.llama.linears(),
        };
        Projector::new(spec, DType::F32)
            .unwrap()
            .project(&cap)
            .unwrap()
    };
    let d = full.len() / 4;
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    let k = 256;
    let eps = 0.3;
    let trials = 100;
    let mut norm_violations = 0;
    let mut ip_err_sum = 0.0;
    for seed in 0..trials {
        let p = inflow::features::dense::project(&cap, k, seed).unwrap();
        for i in 0..4 {
            let (a, pa) = (&full[i * d..(i + 1) * d], &p[i * k..(i + 1) * k]);
            let (n, pn) = (dot(a, a), dot(pa, pa));
            if (pn - n).abs() > eps * n {
                norm_violations += 1;
            }
            let j = (i + 1) % 4;
            let (b, pb) = (&full[j * d..(j + 1) * d], &p[j * k..(j + 1) * k]);
            ip_err_sum += (dot(pa, pb) - dot(a, b)) / (n.sqrt() * dot(b, b).sqrt());
        }
    }
    // JL: P(|‖Pa‖² − ‖a‖²| > ε‖a‖²) ≤ 2·exp(−(ε²/2 − ε³/3)·k/2) ≈ 0.02 for k = 256, ε = 0.3.
    let bound = 2.0 * (-(eps * eps / 2.0 - eps.powi(3) / 3.0) * k as f64 / 2.0).exp();
    let rate = norm_violations as f64 / (4 * trials) as f64;
    assert!(
        rate <= bound,
        "norm distortion rate {rate} above the JL bound {bound}"
    );
    // Unbiased: the mean normalized inner-product error shrinks like 1/√(k·trials).
    let mean_err = ip_err_sum / (4 * trials) as f64;
    assert!(
        mean_err.abs() < 3.0 * (2.0f64 / k as f64).sqrt() / (400f64).sqrt(),
        "bias {mean_err}"
    );
    // A different seed gives a different projection; the same seed the same one.
    assert_eq!(
        inflow::features::dense::project(&cap, k, 1).unwrap(),
        inflow::features::dense::project(&cap, k, 1).unwrap()
    );
}

#[test]
fn module_patterns_select_layers() {
    let m = tiny::random(&tiny::config(16, 2), 1, DType::F32).unwrap();
    let all = m.llama.linears();
    assert_eq!(select_modules(&all, "q,v").unwrap().len(), 4);
    assert_eq!(select_modules(&all, "mlp").unwrap().len(), 6);
    assert_eq!(select_modules(&all, "layers.1.").unwrap().len(), 7);
    assert_eq!(select_modules(&all, "").unwrap().len(), 14);
    assert!(select_modules(&all, "nonsense").is_err());
}

/// Sampled-label pseudo-gradients estimate the Gauss–Newton matrix. For one sequence with loss
/// ℓ = 1/n Σ_t ℓ_t over n response positions, GN = 1/n² Σ_t Σ_k p_tk g_tk g_tkᵀ, where g_tk is
/// the gradient of ℓ_t with target k: formed exactly here with one pass per (position, label),
/// over the whole 259-token vocabulary. The mean of (vᵀg)² over sampled-label draws must match
/// vᵀ GN v; with the data's labels (empirical Fisher) it does not.
#[test]
fn sampled_labels_estimate_the_gauss_newton_matrix() {
    use inflow::model::Labels;
    let m = tiny::random(&tiny::config(16, 2), 9, DType::F64).unwrap();
    let seq = seqs(&m)[1].clone();
    let tracked = select_modules(&m.llama.linears(), "layers.1.mlp.down_proj").unwrap();
    let grad = |s: &TokenSeq, labels: Labels| -> Vec<f64> {
        let cap = m
            .llama
            .loss_and_capture_labels(std::slice::from_ref(s), &tracked, labels)
            .unwrap();
        let l = &cap.layers[0];
        to_f64(&per_sample_gradient(&l.x, &l.delta).unwrap())
    };
    let positions: Vec<usize> = (1..seq.ids.len()).filter(|&t| seq.loss_mask[t]).collect();
    let n = positions.len() as f64;
    assert!(n >= 3.0);
    let dim = 16 * 32;
    let mut rng = inflow::features::random::Stream::new(1, "gn-test");
    let probes: Vec<Vec<f64>> = (0..4)
        .map(|_| (0..dim).map(|_| rng.normal()).collect())
        .collect();
    let quad = |g: &[f64], v: &[f64]| g.iter().zip(v).map(|(a, b)| a * b).sum::<f64>().powi(2);
    // Exact: every label at every position, weighted by the model's probability.
    let mut exact = vec![0f64; probes.len()];
    for &t in &positions {
        let mut one = seq.clone();
        one.loss_mask = vec![false; seq.ids.len()];
        one.loss_mask[t] = true;
        let p: Vec<f64> = {
            let lg = m.llama.next_token_logits(&seq.ids[..t]).unwrap();
            let mx = lg.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let e: Vec<f64> = lg.iter().map(|&x| (x as f64 - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|x| x / z).collect()
        };
        for (k, pk) in p.iter().enumerate() {
            one.ids[t] = k as u32;
            let g = grad(&one, Labels::Data);
            for (e, v) in exact.iter_mut().zip(&probes) {
                *e += pk * quad(&g, v) / (n * n);
            }
        }
    }
    let draws = 3000;
    let mut mc = vec![0f64; probes.len()];
    for d in 0..draws {
        let g = grad(&seq, Labels::Sampled { seed: d });
        for (e, v) in mc.iter_mut().zip(&probes) {
            *e += quad(&g, v) / draws as f64;
        }
    }
    let g = grad(&seq, Labels::Data);
    for (i, v) in probes.iter().enumerate() {
        let rel = (mc[i] - exact[i]).abs() / exact[i];
        eprintln!(
            "probe {i}: GN {:.4e}, sampled mean {:.4e} (rel {rel:.3}), data labels {:.4e}",
            exact[i],
            mc[i],
            quad(&g, v)
        );
        assert!(rel < 0.1, "probe {i}: {} vs exact {}", mc[i], exact[i]);
    }
}

/// Tracking only the upper blocks starts the backward there (the blocks below build no graph):
/// the upper Linears' inputs and output gradients are exactly those of a pass tracking all,
/// and the losses are the same.
#[test]
fn tracking_upper_blocks_only_gives_the_same_captures() {
    let m = tiny::random(&tiny::config(16, 3), 7, DType::F32).unwrap();
    let batch = &seqs(&m)[..3];
    let all = capture_all(&m, batch);
    let upper: Vec<usize> = (14..21).collect();
    let part = m.llama.loss_and_capture(batch, &upper).unwrap();
    assert_eq!(part.losses, all.losses);
    assert_eq!(part.layers.len(), 7);
    for got in &part.layers {
        let want = all
            .layers
            .iter()
            .find(|l| l.info.name == got.info.name)
            .unwrap();
        assert!(got.info.name.contains("layers.2."), "{}", got.info.name);
        for (a, b) in [(&got.x, &want.x), (&got.delta, &want.delta)] {
            let (a, b) = (to_f64(a), to_f64(b));
            assert!(a.iter().any(|v| *v != 0.0));
            assert_eq!(a, b, "{}", got.info.name);
        }
    }
}
