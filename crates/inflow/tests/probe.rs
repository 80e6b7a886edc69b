//! Forward-only valuation against ground truth: ICP with prefix caching equals the naive
//! full-sequence computation; one-step fine-tuning agrees to first order with η ∇ℓ(T)·∇ℓ(z).

use candle_core::DType;
use inflow::data::read_samples;
use inflow::features::{FeatureSpec, Projection, Projector};
use inflow::model::tiny;
use inflow::probe::icp::{DemoTemplate, Icp};
use inflow::probe::one_step::OneStep;
use inflow::probe::Probes;
use std::path::PathBuf;

mod common;

use common::alpaca;

/// Tests run in parallel threads: each file gets a unique name.
fn write(name: &str, lines: &[serde_json::Value]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let p = std::env::temp_dir().join(format!(
        "inflow-probe-{}-{k}-{name}.jsonl",
        std::process::id()
    ));
    let text: Vec<String> = lines.iter().map(|v| v.to_string()).collect();
    std::fs::write(&p, text.join("\n") + "\n").unwrap();
    p
}

fn probes_file() -> PathBuf {
    let mut v = Vec::new();
    for (task, instr) in [
        ("add", "Add the numbers."),
        ("rev", "Reverse the word, carefully."),
    ] {
        for (inp, out) in [("2 3", "5"), ("abc", "cba"), ("10 1", "11")] {
            v.push(serde_json::json!({"instruction": instr, "input": inp, "output": out, "task": task}));
        }
    }
    write("probes", &v)
}

fn train_samples() -> Vec<inflow::data::Sample> {
    let p = write(
        "train",
        &[
            serde_json::json!({"instruction": "Add the numbers.", "input": "4 4", "output": "8"}),
            serde_json::json!({"instruction": "Say hi", "input": "", "output": "hi there"}),
        ],
    );
    read_samples(&p, &alpaca(None)).unwrap().samples
}

#[test]
fn icp_with_prefix_cache_equals_naive_full_sequences() {
    let m = tiny::random(&tiny::config(32, 2), 7, DType::F32).unwrap();
    let probes = Probes::read(&probes_file(), None, None).unwrap();
    assert_eq!(probes.groups(), vec![vec![0, 1, 2], vec![3, 4, 5]]);
    for template in [DemoTemplate::Chat, DemoTemplate::Plain] {
        for batch in [1, 4] {
            let icp = Icp::new(&m, &probes, template, 512, batch).unwrap();
            for z in train_samples() {
                let (fast, _) = icp.conditional_logprobs(&z).unwrap();
                let slow = icp.conditional_logprobs_naive(&z).unwrap();
                for (a, b) in fast.iter().zip(&slow) {
                    assert!(
                        (a - b).abs() < 1e-4 * b.abs().max(1.0),
                        "{template:?} batch {batch}: {a} vs {b}"
                    );
                }
                // The demonstration changes the answer's probability.
                let base = icp.baselines();
                assert!(fast.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-6));
            }
        }
    }
}

#[test]
fn per_task_selection_keeps_first_k() {
    let probes = Probes::read(&probes_file(), Some(2), None).unwrap();
    assert_eq!(probes.samples.len(), 4);
    assert_eq!(probes.tasks, vec!["add", "add", "rev", "rev"]);
}

#[test]
fn one_step_matches_first_order_gradient_inner_product() {
    let m = tiny::random(&tiny::config(16, 2), 3, DType::F64).unwrap();
    let probes = Probes::read(&probes_file(), None, None).unwrap();
    let z = &train_samples()[0];
    // η ∇ℓ(T)·∇ℓ(z), with ∇ℓ(T) the mean of the probes' per-sample gradients (exact features).
    let all: Vec<usize> = (0..m.llama.linears().len()).collect();
    let spec = FeatureSpec {
        projection: Projection::Full,
        seed: 0,
        loss: "mean".into(),
        layers: m.llama.linears(),
    };
    let proj = Projector::new(spec, DType::F64).unwrap();
    let r =
        inflow::data::tokens::Renderer::new(&m, inflow::data::tokens::Template::Auto, 512).unwrap();
    let grad = |s: &inflow::data::Sample| -> Vec<f64> {
        let seq = r.tokenize(s).unwrap().seq;
        let cap = m.llama.loss_and_capture(&[seq], &all).unwrap();
        proj.project(&cap)
            .unwrap()
            .into_iter()
            .map(|x| x as f64)
            .collect()
    };
    let gz = grad(z);
    let gp: Vec<Vec<f64>> = probes.samples.iter().map(grad).collect();
    let mut errs = Vec::new();
    for lr in [1e-3, 1e-4] {
        let os = OneStep::new(&m, &probes, lr, "all", 512, 4).unwrap();
        let (d, _, _) = os.deltas(z).unwrap();
        let mut worst: f64 = 0.0;
        for (j, dj) in d.iter().enumerate() {
            let first = lr * gp[j].iter().zip(&gz).map(|(a, b)| a * b).sum::<f64>();
            worst = worst.max((dj - first).abs() / first.abs().max(1e-12));
        }
        errs.push(worst);
    }
    // Second-order remainder: the relative error shrinks about linearly with η.
    assert!(errs[1] < 2e-2, "relative error at lr 1e-4: {}", errs[1]);
    assert!(
        errs[1] < errs[0] / 3.0,
        "errors {errs:?} do not shrink with lr"
    );
}
