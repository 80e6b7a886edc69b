//! LoRA fine-tuning of the reference model (SmolLM2-135M-Instruct) on bundled Natural
//! Instructions samples lowers the held-out loss on other samples of the same tasks.
//! Fetch the model first with ./scripts/fetch-model.sh.

use candle_core::DType;
use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_samples, Sample};
use inflow::model::LoadedModel;
use inflow::train::{self, TrainData, TrainOptions};
use std::collections::BTreeMap;

mod common;

use common::alpaca;
use inflow_testkit::{asset, scratch, smollm2};

#[test]
fn lora_epoch_lowers_held_out_loss_on_the_same_tasks() {
    let model_path = smollm2();
    let mut m = LoadedModel::load(&model_path, DType::F32).unwrap();
    let report = read_samples(&asset("train.jsonl"), &alpaca(None)).unwrap();
    // Per task: the last sample is held out, the others are training data.
    let mut by_task: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in &report.samples {
        let task = s.meta.get("task").and_then(|t| t.as_str()).unwrap_or("");
        by_task.entry(task.to_string()).or_default().push(s);
    }
    let (mut train_s, mut test_s) = (Vec::new(), Vec::new());
    for group in by_task.values().filter(|g| g.len() >= 3) {
        let (last, rest) = group.split_last().unwrap();
        test_s.push(*last);
        train_s.extend(rest.iter().copied());
    }
    // Interleave tasks, then keep the test small enough for CI (2 cores, a few minutes).
    train_s.sort_by_key(|s| s.row % 7);
    train_s.truncate(48);
    test_s.truncate(16);
    let r = Renderer::new(&m, Template::Auto, 96).unwrap();
    let tok = |v: &[&Sample]| -> Vec<_> { v.iter().map(|s| r.tokenize(s).unwrap().seq).collect() };
    let (train_seqs, test_seqs) = (tok(&train_s), tok(&test_s));
    drop(r);
    let before = train::eval_loss(&m, &test_seqs, 4, 1).unwrap().mean_loss;
    let out = scratch("smollm2-lora");
    let opts = TrainOptions {
        lr: 1e-3,
        // 8 samples per step in passes of 2: a pass of 8 would hold several GB of activations.
        batch_size: 2,
        grad_accum: 4,
        warmup_steps: 1,
        ..TrainOptions::lora(8, 16.0, "q,v")
    };
    let data = TrainData {
        seqs: train_seqs,
        identity: serde_json::json!("bundled"),
    };
    let t = std::time::Instant::now();
    let s = train::train(&mut m, &data, &opts, &out, false, &mut |r, total| {
        eprintln!("step {}/{total}: loss {:.4}", r.step, r.loss)
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let after = train::eval_loss(&m, &test_seqs, 4, 1).unwrap().mean_loss;
    eprintln!(
        "SmolLM2 LoRA r=8 q,v: {} train samples, {} steps, {:.0} tokens/s; held-out loss on {} samples of the same tasks: {before:.4} → {after:.4}",
        data.seqs.len(),
        s.total_steps,
        s.tokens as f64 / secs,
        test_seqs.len()
    );
    assert_eq!(s.total_steps, 6);
    assert!(
        after < before - 0.02,
        "held-out loss did not drop: {before} → {after}"
    );
    // The checkpoint reproduces the trained model.
    let mut fresh = LoadedModel::load(&model_path, DType::F32).unwrap();
    inflow::train::features::attach(&mut fresh, &out.join("checkpoint-6")).unwrap();
    let again = train::eval_loss(&fresh, &test_seqs[..4], 4, 1)
        .unwrap()
        .mean_loss;
    let direct = train::eval_loss(&m, &test_seqs[..4], 4, 1)
        .unwrap()
        .mean_loss;
    assert!((again - direct).abs() < 1e-6, "{again} vs {direct}");
}
