//! The selection experiment end to end on the tiny random model: a method's selection, random
//! subsets and the full pool are trained, evaluated, reported, plotted, and resumed.

use candle_core::DType;
use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_samples, ReadOptions};
use inflow::eval::selection::{self, Arm, ArmKind, SelectionEvalOptions, TestItem};
use inflow::model::{tiny, TokenSeq};
use inflow::train::TrainOptions;

use inflow_testkit::{asset as assets, scratch};

#[test]
fn selection_experiment_runs_reports_and_resumes() {
    let dir = scratch("selection-eval");
    let mut model = tiny::random(&tiny::config(16, 2), 3, DType::F32).unwrap();
    model.tokenizer = tiny::byte_tokenizer().unwrap();
    let read = |name: &str, limit| {
        read_samples(
            &assets(name),
            &ReadOptions {
                limit: Some(limit),
                ..ReadOptions::default()
            },
        )
        .unwrap()
        .samples
    };
    let (pool, test) = (read("train.jsonl", 12), read("probe.jsonl", 3));
    let r = Renderer::new(&model, Template::Plain, 48).unwrap();
    let pool_seqs: Vec<TokenSeq> = pool.iter().map(|s| r.tokenize(s).unwrap().seq).collect();
    let test_items: Vec<TestItem> = test
        .iter()
        .map(|s| TestItem {
            seq: r.tokenize(s).unwrap().seq,
            prompt: model.encode(&r.render(&s.body).unwrap().0).unwrap(),
            reference: s.body.response().to_string(),
        })
        .collect();
    drop(r);
    // Cached greedy decoding gives the same tokens as the uncached reference.
    let p = &test_items[0].prompt[test_items[0].prompt.len() - 20..];
    assert_eq!(
        model.llama.generate_greedy_cached(p, 6, &[]).unwrap(),
        model.llama.generate_greedy(p, 6, &[]).unwrap()
    );
    let mut arms = vec![Arm {
        method: "picked".into(),
        kind: ArmKind::Method,
        subset: vec![0, 3, 5],
    }];
    for seed in 0..2 {
        arms.push(Arm {
            method: "random".into(),
            kind: ArmKind::Random { seed },
            subset: selection::random_subset(12, 3, seed),
        });
    }
    arms.push(Arm {
        method: "full".into(),
        kind: ArmKind::Full,
        subset: (0..12).collect(),
    });
    let mut train = TrainOptions::lora(2, 4.0, "q,v");
    train.batch_size = 3;
    train.lr = 1e-2;
    let opts = SelectionEvalOptions {
        train,
        max_new_tokens: 4,
        stop: vec![],
    };
    // The experiment over `arms` with the base model, one thread.
    let mut run_arms = |on_run: &mut dyn FnMut(usize, usize, &str)| {
        selection::run(
            &mut model,
            &pool_seqs,
            &test_items,
            &arms,
            true,
            &opts,
            &dir,
            1,
            on_run,
        )
        .unwrap()
    };
    let mut seen = Vec::new();
    let report = run_arms(&mut |i, n, name| seen.push((i, n, name.to_string())));
    assert_eq!(
        seen.iter().map(|s| s.2.as_str()).collect::<Vec<_>>(),
        ["base", "picked", "random-seed0", "random-seed1", "full"]
    );
    assert_eq!(report.runs.len(), 5);
    assert_eq!(report.n_test, 3);
    let names: Vec<_> = report.summary.iter().map(|s| s.method.as_str()).collect();
    assert_eq!(names, ["base", "picked", "random", "full"]);
    assert_eq!(report.summary[2].n_runs, 2);
    assert_eq!(report.summary[3].n_train, 12);
    for r in &report.runs {
        assert!(r.mean_loss.is_finite() && r.mean_loss > 0.0, "{r:?}");
        assert!((0.0..=1.0).contains(&r.rouge_l) && (0.0..=1.0).contains(&r.exact_match));
    }
    // Training moved the loss away from the base model's.
    assert_ne!(report.runs[0].mean_loss, report.runs[4].mean_loss);
    // The report on disk is well-formed JSON with the same runs.
    let disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(disk["runs"].as_array().unwrap().len(), 5);
    assert_eq!(disk["summary"][2]["method"], "random");
    assert!(disk["summary"][2]["loss"]["std"].as_f64().unwrap() >= 0.0);
    for run in ["base", "picked", "random-seed0", "random-seed1", "full"] {
        assert!(dir.join(run).join("generations.json").exists(), "{run}");
    }
    selection::plot(&report, &dir).unwrap();
    for png in ["loss.png", "rouge_l.png"] {
        let bytes = std::fs::read(dir.join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG");
    }
    // Rerunning reuses every finished run: identical measurements.
    let again = run_arms(&mut |_, _, _| {});
    assert_eq!(again.runs, report.runs);
}
