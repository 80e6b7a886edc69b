//! The user's path to "my fine-tuned model does X: which training samples made it do that?",
//! through the CLI only: `train` a LoRA adapter, `generate` the adapted model's own answers,
//! `index --adapter`, `fit`, `score`. At the adapter, every method must give the scores of the
//! same weights merged (`export`) and indexed as a plain model; a `--lora-grads` store must
//! score its own training samples as their own nearest neighbours. On the tiny random model
//! and on SmolLM2.

mod common;

use common::{argv, asset, fails, run_ok};
use inflow_testkit::{scratch, smollm2};
use std::path::Path;

fn matrix(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let f = inflow::store::npy::NpyFile::open(path).unwrap();
    (f.shape().to_vec(), f.to_f32_vec())
}

/// ‖a − b‖ / ‖b‖ (Frobenius, over the whole score matrix).
fn rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let norm = |v: &mut dyn Iterator<Item = f64>| v.map(|x| x * x).sum::<f64>().sqrt();
    let diff = norm(&mut a.iter().zip(b).map(|(x, y)| *x as f64 - *y as f64));
    diff / norm(&mut b.iter().map(|y| *y as f64)).max(1e-30)
}

struct Sizes {
    train: &'static str,
    max_tokens: &'static str,
    rank: &'static str,
    lora_rank: &'static str,
    queries: &'static str,
}

fn user_path(name: &str, model: &str, z: Sizes) {
    let dir = scratch(&format!("adapter-{name}"));
    let p = |n: &str| dir.arg(n);
    let data = asset("train.jsonl");
    let probes = asset("probe.jsonl");

    // 1. Fine-tune a LoRA adapter.
    run_ok(&argv(
        "train --model {} --data {} --limit {} --max-tokens {} --lora-rank {} --lr 5e-3 \
         --batch-size 4 --epochs 1 --threads 2 --out {}",
        &[model, &data, z.train, z.max_tokens, z.lora_rank, &p("run")],
    ));
    let ck = std::fs::read_dir(p("run"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.join("adapter_config.json").exists())
        .max()
        .expect("train wrote a checkpoint")
        .display()
        .to_string();

    // 2. The adapted model's own answers to the probes: the queries of attribution.
    let answers = p("answers.jsonl");
    run_ok(&argv(
        "generate --model {} --adapter {} --prompts {} --limit {} --max-new 8 --out {}",
        &[model, &ck, &probes, z.queries, &answers],
    ));
    let n_answers = std::fs::read_to_string(&answers).unwrap().lines().count();
    assert_eq!(n_answers.to_string(), z.queries);

    // 3. The same training set indexed at the adapter, and on the merged weights.
    let merged = p("merged");
    run_ok(&argv(
        "export --model {} --adapter {} --out {}",
        &[model, &ck, &merged],
    ));
    let index = |out: &str, m: &str, extra: &[&str]| {
        let mut a = argv(
            "index --model {} --data {} --limit {} --max-tokens {} --rank {} --threads 2 --out {}",
            &[m, &data, z.train, z.max_tokens, z.rank, out],
        );
        a.extend_from_slice(extra);
        run_ok(&a);
    };
    let at_adapter = p("store-adapter");
    let at_merged = p("store-merged");
    index(&at_adapter, model, &["--adapter", &ck]);
    index(&at_merged, &merged, &[]);
    let at_base = p("store-base");
    index(&at_base, model, &[]);
    for s in [&at_adapter, &at_merged] {
        run_ok(&["fit", "--store", s]);
    }

    // 4. Every method scores the adapted model's answers at the adapter exactly as on the
    //    merged weights.
    for method in ["cosine", "ekfac", "repsim"] {
        let score = |store: &str| {
            let full = format!("{store}/{method}.npy");
            run_ok(&argv(
                "score --store {} --queries {} --method {} --full {} --threads 2",
                &[store, &answers, method, &full],
            ));
            matrix(Path::new(&full))
        };
        let (sa, a) = score(&at_adapter);
        let (sm, m) = score(&at_merged);
        assert_eq!(sa, sm);
        assert_eq!(sa[0].to_string(), z.queries);
        assert!(m.iter().any(|v| *v != 0.0), "{method}: all scores zero");
        let d = rel_diff(&a, &m);
        eprintln!("{name}: {method} at adapter vs merged: relative difference {d:.2e}");
        assert!(d <= 1e-4, "{method}: adapter vs merged differ by {d:.2e}");
        // …and the adapter matters: the base model's scores are not those.
        if method == "cosine" {
            let (_, b) = score(&at_base);
            let moved = rel_diff(&b, &m);
            eprintln!("{name}: cosine at base vs adapter differ by {moved:.2e}, adapter vs merged by {d:.2e}");
            assert!(
                moved > 100.0 * d.max(1e-6),
                "the adapter changed no score ({moved:.2e})"
            );
        }
    }
    // Both stores record what they were indexed at: scoring one with the other's weights is
    // refused, with the way out.
    let err = fails(&argv(
        "score --store {} --queries {} --model {}",
        &[&at_adapter, &answers, &merged],
    ));
    assert!(err.contains("adapter") && err.contains("run.json"), "{err}");

    // 5. LoRA-parameter features: each training sample's nearest neighbour is itself.
    let lora = p("store-lora");
    index(&lora, model, &["--adapter", &ck, "--lora-grads"]);
    let full = format!("{lora}/self.npy");
    run_ok(&argv(
        "score --store {} --queries {} --limit {} --method cosine --full {} --threads 2",
        &[&lora, &data, z.train, &full],
    ));
    let (shape, s) = matrix(Path::new(&full));
    let n = shape[1];
    assert_eq!(shape[0], n);
    for i in 0..n {
        assert!(
            (s[i * n + i] - 1.0).abs() < 1e-4,
            "self-cosine {}",
            s[i * n + i]
        );
    }
    let score_answers = "score --store {} --queries {} --method {} --force";
    run_ok(&argv(score_answers, &[&lora, &answers, "cosine"]));
    // RepSim needs hidden states, which a LoRA-gradient store lacks: the error says what to do.
    let err = fails(&argv(score_answers, &[&lora, &answers, "repsim"]));
    assert!(err.contains("without --lora-grads"), "{err}");
}

#[test]
fn tiny_model_adapter_scores_equal_merged_scores() {
    let dir = scratch("adapter-model");
    // Untied head: a tied random model answers every prompt with the same (often empty) text.
    inflow::model::tiny::write_random_untied(&dir, 32, 2, 1).unwrap();
    user_path(
        "tiny",
        &dir.display().to_string(),
        Sizes {
            train: "8",
            max_tokens: "64",
            rank: "2",
            lora_rank: "4",
            queries: "3",
        },
    );
}

#[test]
fn smollm2_adapter_scores_equal_merged_scores() {
    let model = smollm2();
    user_path(
        "smollm2",
        &model.display().to_string(),
        Sizes {
            train: "4",
            max_tokens: "48",
            rank: "4",
            lora_rank: "4",
            queries: "2",
        },
    );
}
