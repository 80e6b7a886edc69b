//! The user's path to "my fine-tuned model does X: which training samples made it do that?",
//! through the CLI only: `train` a LoRA adapter, `generate` the adapted model's own answers,
//! `index --adapter`, `fit`, `score`. At the adapter, every method must give the scores of the
//! same weights merged (`export`) and indexed as a plain model; a `--lora-grads` store must
//! score its own training samples as their own nearest neighbours. On the tiny random model
//! and on SmolLM2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "inflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "inflow {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
    let dir = std::env::temp_dir().join(format!("inflow-adapter-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = |n: &str| dir.join(n).display().to_string();
    let data = root().join("assets/data/train.jsonl").display().to_string();
    let probes = root().join("assets/data/probe.jsonl").display().to_string();

    // 1. Fine-tune a LoRA adapter.
    run(&[
        "train",
        "--model",
        model,
        "--data",
        &data,
        "--limit",
        z.train,
        "--max-tokens",
        z.max_tokens,
        "--lora-rank",
        z.lora_rank,
        "--lr",
        "5e-3",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--threads",
        "2",
        "--out",
        &p("run"),
    ]);
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
    run(&[
        "generate",
        "--model",
        model,
        "--adapter",
        &ck,
        "--prompts",
        &probes,
        "--limit",
        z.queries,
        "--max-new",
        "8",
        "--out",
        &answers,
    ]);
    let n_answers = std::fs::read_to_string(&answers).unwrap().lines().count();
    assert_eq!(n_answers.to_string(), z.queries);

    // 3. The same training set indexed at the adapter, and on the merged weights.
    let merged = p("merged");
    run(&[
        "export",
        "--model",
        model,
        "--adapter",
        &ck,
        "--out",
        &merged,
    ]);
    let index = |out: &str, m: &str, extra: &[&str]| {
        let mut a = vec![
            "index",
            "--model",
            m,
            "--data",
            &data,
            "--limit",
            z.train,
            "--max-tokens",
            z.max_tokens,
            "--rank",
            z.rank,
            "--threads",
            "2",
            "--out",
            out,
        ];
        a.extend_from_slice(extra);
        run(&a);
    };
    let at_adapter = p("store-adapter");
    let at_merged = p("store-merged");
    index(&at_adapter, model, &["--adapter", &ck]);
    index(&at_merged, &merged, &[]);
    let at_base = p("store-base");
    index(&at_base, model, &[]);
    for s in [&at_adapter, &at_merged] {
        run(&["fit", "--store", s]);
    }

    // 4. Every method scores the adapted model's answers at the adapter exactly as on the
    //    merged weights.
    for method in ["cosine", "ekfac", "repsim"] {
        let score = |store: &str| {
            let full = format!("{store}/{method}.npy");
            run(&[
                "score",
                "--store",
                store,
                "--queries",
                &answers,
                "--method",
                method,
                "--full",
                &full,
                "--threads",
                "2",
            ]);
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
    let err = fails(&[
        "score",
        "--store",
        &at_adapter,
        "--queries",
        &answers,
        "--model",
        &merged,
    ]);
    assert!(err.contains("adapter") && err.contains("run.json"), "{err}");

    // 5. LoRA-parameter features: each training sample's nearest neighbour is itself.
    let lora = p("store-lora");
    index(&lora, model, &["--adapter", &ck, "--lora-grads"]);
    let full = format!("{lora}/self.npy");
    run(&[
        "score",
        "--store",
        &lora,
        "--queries",
        &data,
        "--limit",
        z.train,
        "--method",
        "cosine",
        "--full",
        &full,
        "--threads",
        "2",
    ]);
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
    run(&[
        "score",
        "--store",
        &lora,
        "--queries",
        &answers,
        "--method",
        "cosine",
    ]);
    // RepSim needs hidden states, which a LoRA-gradient store lacks: the error says what to do.
    let err = fails(&[
        "score",
        "--store",
        &lora,
        "--queries",
        &answers,
        "--method",
        "repsim",
    ]);
    assert!(err.contains("without --lora-grads"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tiny_model_adapter_scores_equal_merged_scores() {
    let dir = std::env::temp_dir().join(format!("inflow-adapter-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn smollm2_adapter_scores_equal_merged_scores() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        model.exists(),
        "{} missing: run ./scripts/fetch-model.sh",
        model.display()
    );
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
