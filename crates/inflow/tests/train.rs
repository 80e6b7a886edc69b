//! The fine-tuning engine against ground truth: LoRA gradients vs finite differences and
//! autograd, overfitting a handful of samples, bit-identical resumption, PEFT files, merged
//! export, and LoRA / Adam-update features.

use candle_core::{DType, Device, Tensor};
use inflow::features::{per_sample_gradient, FeatureSpec, Projection, Projector};
use inflow::model::lora::{AdapterBase, AdapterSidecar, Adapters, LoraConfig};
use inflow::model::{tiny, LoadedModel, TokenSeq};
use inflow::train::adamw::AdamWConfig;
use inflow::train::features::{LoraFeaturizer, LoraGradient};
use inflow::train::{self, checkpoint, log, Method, TrainData, TrainOptions};
use std::sync::Arc;

mod common;

use common::{to_f64, token_seqs};
use inflow_testkit::scratch;

fn seqs(m: &LoadedModel) -> Vec<TokenSeq> {
    token_seqs(
        m,
        &[
            ("Question: 2+2?", " Answer: four."),
            ("Translate 'chat' to English.", " cat"),
            ("Say hello", " Hello there, friend!"),
            ("Name a colour", " Blue."),
            ("Count", " one two three"),
            ("x", " y"),
        ],
    )
}

fn lora_cfg(rank: usize, modules: &str, dropout: f64) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout,
        modules: modules.into(),
    }
}

/// LoRA with `lora`, and full fine-tuning of `full_modules`: what the engine tests run twice.
fn lora_and_full(lora: LoraConfig, full_modules: &str) -> [Method; 2] {
    [
        Method::Lora(lora),
        Method::Full {
            modules: full_modules.into(),
        },
    ]
}

/// Adapters with B ≠ 0 (at initialization B = 0 and A's gradient vanishes).
fn adapters_with_random_b(m: &LoadedModel, modules: &str, seed: u64) -> Arc<Adapters> {
    let a = Adapters::init(&m.llama, lora_cfg(3, modules, 0.0), seed).unwrap();
    for l in a.layers() {
        let b = Tensor::randn(0f64, 0.3, l.b.dims(), &Device::Cpu)
            .unwrap()
            .to_dtype(m.llama.dtype())
            .unwrap();
        l.b.set(&b).unwrap();
    }
    Arc::new(a)
}

#[test]
fn lora_gradients_match_finite_differences_and_autograd() {
    let mut m = tiny::random(&tiny::config(16, 2), 5, DType::F64).unwrap();
    let ad = adapters_with_random_b(&m, "q,v,down", 1);
    m.llama.set_adapters(Some(ad.clone()));
    let all = seqs(&m);
    let batch = &all[..3];
    let cap = ad.loss_and_capture(&m.llama, batch).unwrap();
    assert_eq!(cap.layers.len(), 12, "A and B of 3 modules × 2 layers");
    // Per-sample gradients from the capture sum to the autograd gradient of Σ_b ℓ_b.
    let (_, grads) = m.llama.loss_and_grads(batch).unwrap();
    let grads = grads.unwrap();
    for (layer, (name, var)) in cap.layers.iter().zip(ad.params()) {
        assert_eq!(format!("{}.weight", layer.info.name), name);
        let g = per_sample_gradient(&layer.x, &layer.delta)
            .unwrap()
            .sum(0)
            .unwrap();
        let want = to_f64(
            grads
                .get(var.as_tensor())
                .expect("every factor gets a gradient"),
        );
        let got = to_f64(&g);
        let err: f64 = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
        assert!(scale > 0.0, "{name}: zero gradient");
        assert!(err < 1e-10 * scale.max(1.0), "{name}: max error {err}");
    }
    // Central finite differences of sample 1's loss for entries of every factor.
    let one = &all[1..2];
    let cap1 = ad.loss_and_capture(&m.llama, one).unwrap();
    let mut checked = 0;
    for (li, (layer, (name, var))) in cap1.layers.iter().zip(ad.params()).enumerate() {
        let g = to_f64(&per_sample_gradient(&layer.x, &layer.delta).unwrap());
        let base = var.as_tensor().copy().unwrap();
        for k in 0..3 {
            let idx = (k * 37 + li * 11) % g.len();
            let h = 1e-5;
            let loss_at = |d: f64| {
                let mut v = to_f64(&base);
                v[idx] += d;
                var.set(&Tensor::from_vec(v, base.dims(), &Device::Cpu).unwrap())
                    .unwrap();
                m.llama.losses_f64(one).unwrap()[0]
            };
            let fd = (loss_at(h) - loss_at(-h)) / (2.0 * h);
            var.set(&base).unwrap();
            let err = (fd - g[idx]).abs() / g[idx].abs().max(1e-6);
            assert!(err < 1e-5, "{name}[{idx}]: fd {fd} vs captured {}", g[idx]);
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn short_module_names_select_only_their_layers() {
    let m = tiny::random(&tiny::config(16, 2), 1, DType::F32).unwrap();
    let all = m.llama.linears();
    let sel = inflow::features::select_modules(&all, "o").unwrap();
    assert_eq!(
        sel.len(),
        2,
        "`o` is o_proj, not every name containing an o"
    );
    assert!(sel.iter().all(|&i| all[i].name.ends_with("o_proj")));
    assert_eq!(
        inflow::features::select_modules(&all, "o,down")
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn lora_branch_equals_merged_weights() {
    let mut m = tiny::random(&tiny::config(16, 2), 2, DType::F64).unwrap();
    let ad = adapters_with_random_b(&m, "q,k,v,o,gate,up,down", 3);
    m.llama.set_adapters(Some(ad.clone()));
    let merged = ad.merge(&m).unwrap();
    assert!(merged.llama.adapters().is_none());
    let batch = &seqs(&m)[..4];
    let a = m.llama.losses_f64(batch).unwrap();
    let b = merged.llama.losses_f64(batch).unwrap();
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() < 1e-10, "adapter {x} vs merged {y}");
    }
    // And the adapters change the model (B ≠ 0).
    m.llama.set_adapters(None);
    let c = m.llama.losses_f64(batch).unwrap();
    assert!((a[0] - c[0]).abs() > 1e-6);
}

#[test]
fn peft_files_round_trip() {
    let m = tiny::random(&tiny::config(16, 2), 4, DType::F32).unwrap();
    let ad = adapters_with_random_b(&m, "q,v", 5);
    let dir = scratch("peft");
    let base = AdapterBase {
        name_or_path: "org/tiny-base".into(),
        ..AdapterBase::of(&m)
    };
    ad.save(&dir, &base).unwrap();
    let cfg_path = dir.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    // Only fields of PEFT's LoraConfig (peft/tuners/lora/config.py and PeftConfig), so PEFT
    // loads the file without "Unexpected keyword arguments".
    let peft_fields = [
        "peft_type",
        "task_type",
        "base_model_name_or_path",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "layers_to_transform",
        "bias",
        "fan_in_fan_out",
        "inference_mode",
        "init_lora_weights",
        "use_rslora",
        "modules_to_save",
    ];
    let mut keys: Vec<&str> = cfg
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    let mut want = peft_fields.to_vec();
    want.sort_unstable();
    assert_eq!(
        keys, want,
        "adapter_config.json holds exactly these PEFT fields"
    );
    assert_eq!(
        inflow::model::lora::PEFT_CONFIG_KEYS.len(),
        peft_fields.len()
    );
    // The sidecar carries what PEFT has no field for.
    let side = AdapterSidecar::read(&dir)
        .unwrap()
        .expect("inflow_adapter.json");
    assert_eq!(side.modules, "q,v");
    assert_eq!(side.base_model.sha256, m.source.sha256);
    assert_eq!(side.base_model.kind, "tiny");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["r"], 3);
    assert_eq!(cfg["lora_alpha"], 6.0);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    assert_eq!(cfg["base_model_name_or_path"], "org/tiny-base");
    assert!(
        cfg["layers_to_transform"].is_null(),
        "every layer is adapted"
    );
    let st = candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let mut keys: Vec<&String> = st.keys().collect();
    keys.sort();
    assert_eq!(keys.len(), 8);
    assert_eq!(
        keys[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    assert_eq!(st[keys[0]].dims(), &[3, 16]);
    // v_proj: d_out = 2 key/value heads × head dim 4.
    assert_eq!(
        st["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"].dims(),
        &[8, 3]
    );
    let back = Adapters::load(&dir, &m.llama).unwrap();
    assert_eq!(back.config().modules, "q,v", "from the sidecar");
    for ((n, a), (_, b)) in ad.params().iter().zip(back.params()) {
        assert_eq!(
            to_f64(a.as_tensor()),
            to_f64(b.as_tensor()),
            "{n} differs after loading"
        );
    }
    // An adapter written before the sidecar (`inflow_modules` in the config) still loads with
    // its pattern; one made by PEFT (neither) loads with the adapted Linears' names.
    std::fs::remove_file(dir.join("inflow_adapter.json")).unwrap();
    cfg["inflow_modules"] = "q,v".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let old = Adapters::load(&dir, &m.llama).unwrap();
    assert_eq!(old.config().modules, "q,v");
    cfg.as_object_mut().unwrap().remove("inflow_modules");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let peft = Adapters::load(&dir, &m.llama).unwrap();
    assert!(
        peft.config()
            .modules
            .starts_with("model.layers.0.self_attn.q_proj,"),
        "{}",
        peft.config().modules
    );
    for x in [&old, &peft] {
        for ((_, a), (_, b)) in x.params().iter().zip(back.params()) {
            assert_eq!(to_f64(a.as_tensor()), to_f64(b.as_tensor()));
        }
    }
    // A wrong shape is refused naming the tensor.
    let other = tiny::random(&tiny::config(32, 2), 4, DType::F32).unwrap();
    let err = Adapters::load(&dir, &other.llama)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains(".weight` has shape") && err.contains("expected"),
        "{err}"
    );
}

fn data(m: &LoadedModel, n: usize) -> TrainData {
    TrainData {
        seqs: seqs(m).into_iter().cycle().take(n).collect(),
        identity: serde_json::json!({"test": n}),
    }
}

#[test]
fn tiny_model_overfits_a_handful_of_samples() {
    for method in lora_and_full(lora_cfg(8, "all", 0.0), "all") {
        let mut m = tiny::random(&tiny::config(32, 2), 7, DType::F32).unwrap();
        let d = data(&m, 4);
        let opts = TrainOptions {
            method: method.clone(),
            epochs: 150,
            lr: 1e-2,
            decay: train::schedule::Decay::Constant,
            batch_size: 4,
            ..TrainOptions::lora(8, 16.0, "all")
        };
        let out = scratch("overfit");
        let s = train::train(&mut m, &d, &opts, &out, false, &mut |_, _| {}).unwrap();
        let (first, last) = (s.first_loss.unwrap(), s.last_loss.unwrap());
        let eval = train::eval_loss(&m, &d.seqs, 2, 1).unwrap();
        eprintln!(
            "{method:?}: loss {first:.3} → {last:.4}, eval {:.4}",
            eval.mean_loss
        );
        assert!(first > 3.0, "a random model starts far above 0: {first}");
        assert!(
            eval.mean_loss < 0.05,
            "{method:?}: final loss {}",
            eval.mean_loss
        );
    }
}

/// A run stopped after step 5 (checkpoints every 3 steps, so steps 4–5 are lost as in a kill)
/// and resumed from checkpoint-3 logs the same losses, bit for bit, as an uninterrupted run,
/// and ends with the same weights and moments.
#[test]
fn resumed_run_is_bit_identical() {
    for method in lora_and_full(lora_cfg(4, "q,v,up", 0.2), "o,down") {
        let opts = TrainOptions {
            method: method.clone(),
            epochs: 3,
            lr: 5e-3,
            warmup_steps: 2,
            decay: train::schedule::Decay::Cosine,
            batch_size: 2,
            grad_accum: 2,
            save_every: 3,
            max_grad_norm: Some(0.5),
            adam: AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            },
            seed: 9,
            threads: 2,
            ..TrainOptions::lora(4, 8.0, "q")
        };
        let run = |name: &str, stop: Option<usize>| {
            let mut m = tiny::random(&tiny::config(16, 2), 3, DType::F32).unwrap();
            let d = data(&m, 10);
            let out = scratch(name);
            let o = TrainOptions {
                stop_after: stop,
                ..opts.clone()
            };
            let s = train::train(&mut m, &d, &o, &out, false, &mut |_, _| {}).unwrap();
            (m, d, out, s)
        };
        let (_, _, out_a, sa) = run("straight", None);
        assert_eq!(sa.total_steps, 9, "10 samples, 4 per step, 3 epochs");
        let (_, _, out_b, sb) = run("killed", Some(5));
        assert_eq!(sb.steps_run, 5);
        assert_eq!(checkpoint::latest(&out_b).unwrap().0, 3);
        // Resume in a fresh model, as a new process would.
        let mut m = tiny::random(&tiny::config(16, 2), 3, DType::F32).unwrap();
        let d = data(&m, 10);
        let err = train::train(&mut m, &d, &opts, &out_b, false, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--resume"), "{err}");
        let mut m = tiny::random(&tiny::config(16, 2), 3, DType::F32).unwrap();
        let sr = train::train(&mut m, &d, &opts, &out_b, true, &mut |_, _| {}).unwrap();
        assert_eq!((sr.resumed_from, sr.steps_run), (3, 6));
        let la = log::read_log(&out_a).unwrap();
        let lb = log::read_log(&out_b).unwrap();
        assert_eq!(la.len(), 9);
        assert_eq!(
            lb.len(),
            9,
            "the log is cut back to the checkpoint, then continued"
        );
        for (a, b) in la.iter().zip(&lb) {
            assert_eq!(a.step, b.step);
            assert_eq!(
                a.loss.to_bits(),
                b.loss.to_bits(),
                "{method:?} step {}: {} vs {}",
                a.step,
                a.loss,
                b.loss
            );
            assert_eq!(a.grad_norm.to_bits(), b.grad_norm.to_bits());
            assert_eq!(a.lr.to_bits(), b.lr.to_bits());
        }
        // Loss changes between steps (the test would be vacuous on a frozen model).
        assert!(la[0].loss != la[8].loss);
        assert_eq!(
            std::fs::read(out_a.join("checkpoint-9/optimizer.safetensors")).unwrap(),
            std::fs::read(out_b.join("checkpoint-9/optimizer.safetensors")).unwrap()
        );
        let w = match method {
            Method::Lora(_) => "adapter_model.safetensors",
            Method::Full { .. } => "weights.safetensors",
        };
        assert_eq!(
            std::fs::read(out_a.join("checkpoint-9").join(w)).unwrap(),
            std::fs::read(out_b.join("checkpoint-9").join(w)).unwrap()
        );
        let st = checkpoint::read_state(&out_b.join("checkpoint-9")).unwrap();
        assert_eq!((st.step, st.log_history.len()), (9, 9));
        // Resuming with other settings is refused, naming the field.
        let mut m = tiny::random(&tiny::config(16, 2), 3, DType::F32).unwrap();
        let other = TrainOptions {
            lr: 1e-3,
            ..opts.clone()
        };
        let err = train::train(&mut m, &d, &other, &out_b, true, &mut |_, _| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("options.lr"), "{err}");
    }
}

/// LESS's Γ = m'/(√v' + ε) from a checkpoint's moments, projected densely, equals the
/// formula applied to the exact per-sample LoRA gradient and then projected.
#[test]
fn adam_update_features_follow_their_definition() {
    let mut m = tiny::random(&tiny::config(16, 1), 8, DType::F32).unwrap();
    let d = data(&m, 6);
    let out = scratch("adamfeat");
    let opts = TrainOptions {
        epochs: 2,
        batch_size: 3,
        lr: 1e-2,
        ..TrainOptions::lora(2, 4.0, "q,v")
    };
    train::train(&mut m, &d, &opts, &out, false, &mut |_, _| {}).unwrap();
    let ck = checkpoint::latest(&out).unwrap().1;
    let mut fresh = tiny::random(&tiny::config(16, 1), 8, DType::F32).unwrap();
    let info = inflow::train::features::attach(&mut fresh, &ck).unwrap();
    assert_eq!((info.step, info.kind.as_str()), (Some(4), "lora"));
    assert!(info.lr.unwrap() > 0.0);
    let batch = &d.seqs[..2];
    let renderer = || {
        inflow::data::tokens::Renderer::new(&fresh, inflow::data::tokens::Template::Auto, 64)
            .unwrap()
    };
    let adam = AdamWConfig::default();
    let dim = 64;
    let gamma_fz = LoraFeaturizer::new(
        &fresh,
        Projection::Dense { dim },
        3,
        renderer(),
        &LoraGradient::Adam(adam.clone()),
        Some(&ck),
    )
    .unwrap();
    let (gamma, _) = gamma_fz.features(batch).unwrap();
    assert_eq!(gamma.len(), 2 * dim);
    // By hand: exact gradient (full projection), moments from the file, formula, projection.
    let ad = fresh.llama.adapters().unwrap().clone();
    let full = Projector::new(
        FeatureSpec {
            projection: Projection::Full,
            seed: 0,
            loss: String::new(),
            layers: ad.infos(),
        },
        DType::F32,
    )
    .unwrap();
    let cap = ad.loss_and_capture(&fresh.llama, batch).unwrap();
    let g = full.project(&cap).unwrap();
    let mv = checkpoint::read_moments(&ck, &ad.params()).unwrap();
    let flat = |t: &Tensor| to_f64(t);
    let m_all: Vec<f64> = mv.iter().flat_map(|(a, _)| flat(a)).collect();
    let v_all: Vec<f64> = mv.iter().flat_map(|(_, b)| flat(b)).collect();
    let dd = m_all.len();
    assert_eq!(g.len(), 2 * dd);
    assert!(
        v_all.iter().any(|&x| x > 0.0),
        "the checkpoint has second moments"
    );
    let mut hand = vec![0f32; 2 * dd];
    for i in 0..2 * dd {
        let gi = g[i] as f64;
        let m1 = 0.9 * m_all[i % dd] + 0.1 * gi;
        let v1 = 0.999 * v_all[i % dd] + 0.001 * gi * gi;
        hand[i] = (m1 / (v1.sqrt() + 1e-8)) as f32;
    }
    let ht = Tensor::from_vec(hand, (2, dd), &Device::Cpu).unwrap();
    let mut blocks = Vec::new();
    let mut off = 0;
    let infos = ad.infos();
    for l in &infos {
        blocks.push((
            l.name.as_str(),
            ht.narrow(1, off, l.d_in * l.d_out).unwrap(),
        ));
        off += l.d_in * l.d_out;
    }
    let want = inflow::features::dense::project_rows(&blocks, 2, dim, 3).unwrap();
    for (a, b) in gamma.iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
    // Plain LoRA gradients with the same dense projection land in the same space: projecting
    // g directly equals dense::project of the capture.
    let sgd = LoraFeaturizer::new(
        &fresh,
        Projection::Dense { dim },
        3,
        renderer(),
        &LoraGradient::Sgd,
        None,
    )
    .unwrap();
    let (phi, _) = sgd.features(batch).unwrap();
    let direct = inflow::features::dense::project(&cap, dim, 3).unwrap();
    for (a, b) in phi.iter().zip(&direct) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
    }
}

/// After full fine-tuning in this process the weights are autograd `Var`s; capturing δ must
/// still work there: the captured per-sample gradient of every tracked Linear equals
/// autograd's dW for that sample (it was silently zero before).
#[test]
fn features_after_in_process_full_fine_tuning_equal_autograd() {
    let mut m = tiny::random(&tiny::config(16, 2), 9, DType::F64).unwrap();
    let d = data(&m, 4);
    let opts = TrainOptions {
        method: Method::Full {
            modules: "all".into(),
        },
        epochs: 2,
        lr: 1e-2,
        batch_size: 2,
        ..TrainOptions::lora(8, 16.0, "all")
    };
    let out = scratch("full-then-capture");
    train::train(&mut m, &d, &opts, &out, false, &mut |_, _| {}).unwrap();
    let one = &d.seqs[1..2];
    let tracked: Vec<usize> = (0..m.llama.linears().len()).collect();
    let cap = m.llama.loss_and_capture(one, &tracked).unwrap();
    let vars = m.llama.make_trainable().unwrap();
    let (_, grads) = m.llama.loss_and_grads(one).unwrap();
    let grads = grads.unwrap();
    for (layer, (name, var)) in cap.layers.iter().zip(&vars) {
        let got = to_f64(&per_sample_gradient(&layer.x, &layer.delta).unwrap());
        let want = to_f64(grads.get(var.as_tensor()).unwrap());
        let scale = want.iter().map(|x| x.abs()).fold(0.0, f64::max);
        let err = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(scale > 0.0, "{name}: zero gradient");
        assert!(err < 1e-10 * scale.max(1.0), "{name}: max error {err}");
    }
}
