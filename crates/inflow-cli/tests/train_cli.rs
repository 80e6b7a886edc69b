//! End-to-end tests of `inflow train`, `eval-loss`, `export` and the checkpoint modes of
//! `index` on a tiny random model: a run stopped after a few steps and resumed by a new
//! process logs the same losses as an uninterrupted run; checkpoint stores record their
//! step and learning rate.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run_ok(args: &[&str]) -> Output {
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

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The log without wall-clock times.
fn losses(dir: &Path) -> Vec<(u64, String, String)> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["loss"].to_string(),
                v["grad_norm"].to_string(),
            )
        })
        .collect()
}

#[test]
fn train_resume_eval_export_and_checkpoint_features() {
    let dir = std::env::temp_dir().join(format!("inflow-cli-train-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model");
    inflow::model::tiny::write_random(&model, 32, 2, 1).unwrap();
    let model = model.display().to_string();
    let data = root().join("assets/data/train.jsonl").display().to_string();
    let p = |name: &str| dir.join(name).display().to_string();
    let train = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "train",
            "--model",
            &model,
            "--data",
            &data,
            "--limit",
            "24",
            "--max-tokens",
            "64",
            "--lora-rank",
            "4",
            "--modules",
            "q,v,down",
            "--lora-dropout",
            "0.1",
            "--lr",
            "5e-3",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--epochs",
            "2",
            "--save-every",
            "2",
            "--schedule",
            "cosine",
            "--warmup-steps",
            "1",
            "--threads",
            "2",
            "--out",
            out,
            "--json",
        ];
        a.extend_from_slice(extra);
        run_ok(&a)
    };
    let straight = p("straight");
    let s = json(&train(&straight, &[]));
    assert_eq!(s["summary"]["total_steps"], 6);
    // A process that stops after step 3 (checkpoint-2 is the latest), then a new one resumes.
    let killed = p("killed");
    train(&killed, &["--stop-after", "3"]);
    assert_eq!(losses(Path::new(&killed)).len(), 3);
    let r = json(&train(&killed, &["--resume"]));
    assert_eq!(r["summary"]["resumed_from"], 2);
    assert_eq!(losses(Path::new(&straight)), losses(Path::new(&killed)));
    assert!(
        s["cuts"]["samples"].as_u64().unwrap() > 0 && s["truncate"] == "middle",
        "{s}"
    );
    // The truncation policy is part of the run: resuming with another one is refused.
    let out = Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args([
            "train",
            "--model",
            &model,
            "--data",
            &data,
            "--limit",
            "24",
            "--max-tokens",
            "64",
            "--lora-rank",
            "4",
            "--modules",
            "q,v,down",
            "--lora-dropout",
            "0.1",
            "--lr",
            "5e-3",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--epochs",
            "2",
            "--save-every",
            "2",
            "--schedule",
            "cosine",
            "--warmup-steps",
            "1",
            "--threads",
            "2",
            "--out",
            &killed,
            "--resume",
            "--truncate",
            "left",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("truncate"), "{err}");
    // Without --resume an existing run is not overwritten.
    let out = Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args([
            "train", "--model", &model, "--data", &data, "--limit", "24", "--out", &killed,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // eval-loss with the adapter, and with the merged export: the same numbers.
    let ck6 = format!("{straight}/checkpoint-6");
    let eval = |m: &str, adapter: Option<&str>| {
        let mut a = vec![
            "eval-loss",
            "--model",
            m,
            "--data",
            &data,
            "--limit",
            "8",
            "--max-tokens",
            "64",
            "--json",
            "--threads",
            "1",
        ];
        if let Some(ad) = adapter {
            a.extend(["--adapter", ad]);
        }
        json(&run_ok(&a))["mean_loss"].as_f64().unwrap()
    };
    let base = eval(&model, None);
    let tuned = eval(&model, Some(&ck6));
    let merged = p("merged");
    run_ok(&[
        "export",
        "--model",
        &model,
        "--adapter",
        &ck6,
        "--out",
        &merged,
    ]);
    let m = eval(&merged, None);
    assert!((m - tuned).abs() < 1e-4, "merged {m} vs adapter {tuned}");
    // The unmerged PEFT pair: OUT/base + OUT/adapter naming it; the same loss again.
    let pair = p("pair");
    run_ok(&[
        "export",
        "--model",
        &model,
        "--adapter",
        &ck6,
        "--out",
        &pair,
        "--unmerged",
    ]);
    let acfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{pair}/adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    let base_abs = std::fs::canonicalize(format!("{pair}/base")).unwrap();
    assert_eq!(
        acfg["base_model_name_or_path"],
        base_abs.display().to_string()
    );
    assert!(acfg.get("inflow_modules").is_none());
    let side: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{pair}/adapter/inflow_adapter.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(side["modules"], "q,v,down");
    assert_eq!(
        side["base_model"]["path"],
        std::fs::canonicalize(&model).unwrap().display().to_string(),
        "the sidecar names the model it was trained on"
    );
    let u = eval(&format!("{pair}/base"), Some(&format!("{pair}/adapter")));
    assert!(
        (u - tuned).abs() < 1e-5,
        "unmerged pair {u} vs adapter {tuned}"
    );
    assert!(
        tuned < base,
        "training lowered the training-set loss: {base} → {tuned}"
    );

    // LoRA-gradient features of one adapter, and Adam-update features per checkpoint.
    // `index6(out, extra)`: the first 6 samples, 64 tokens, LoGra rank 2, one thread.
    let index6 = |out: &str, extra: &[&str]| {
        let mut a = vec![
            "index",
            "--model",
            &model,
            "--data",
            &data,
            "--limit",
            "6",
            "--max-tokens",
            "64",
            "--rank",
            "2",
            "--out",
            out,
            "--threads",
            "1",
        ];
        a.extend_from_slice(extra);
        run_ok(&a);
    };
    let store = p("lora-store");
    index6(&store, &["--adapter", &ck6, "--lora-grads"]);
    let man: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{store}/manifest.json")).unwrap())
            .unwrap();
    let f = &man["spec"]["features"];
    assert_eq!(
        f["layers"][0]["name"],
        "model.layers.0.self_attn.q_proj.lora_A"
    );
    assert_eq!(f["gradient"]["params"], "lora");
    assert_eq!(f["checkpoint"]["step"], 6);
    assert_eq!(man["spec"]["dim"], 12 * 4);
    // The true Fisher of a store indexed at an adapter is taken at the adapted weights; one of
    // LoRA-parameter features is refused with a reason.
    let out = Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args(["fit", "--store", &store, "--fisher", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lora-grads"));
    let draw = |name: &str, adapter: Option<&str>| -> Vec<u8> {
        let s = p(name);
        match adapter {
            Some(ad) => index6(&s, &["--adapter", ad]),
            None => index6(&s, &[]),
        }
        run_ok(&["fit", "--store", &s, "--fisher", "true"]);
        std::fs::read(format!("{s}/fisher/draw-0/features-00000.npy")).unwrap()
    };
    let at_base = draw("fisher-base", None);
    let at_adapter = draw("fisher-adapter", Some(&ck6));
    assert_eq!(at_base.len(), at_adapter.len());
    assert_ne!(
        at_base, at_adapter,
        "the adapter was not applied to the Fisher pass"
    );
    let per = p("per-checkpoint");
    let ck2 = format!("{straight}/checkpoint-2");
    let ck4 = format!("{straight}/checkpoint-4");
    run_ok(&[
        "index",
        "--model",
        &model,
        "--checkpoints",
        &ck2,
        &ck4,
        "--lora-grads",
        "--adam",
        "--projection",
        "dense",
        "--dim",
        "32",
        "--data",
        &data,
        "--limit",
        "6",
        "--max-tokens",
        "64",
        "--out",
        &per,
        "--threads",
        "1",
    ]);
    let log: Vec<serde_json::Value> =
        std::fs::read_to_string(format!("{straight}/train_log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    for (name, step) in [("checkpoint-2", 2usize), ("checkpoint-4", 4)] {
        let man: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{per}/{name}/manifest.json")).unwrap(),
        )
        .unwrap();
        let f = &man["spec"]["features"];
        assert_eq!(f["gradient"]["kind"], "adam");
        assert_eq!(f["checkpoint"]["step"], step);
        assert_eq!(
            f["checkpoint"]["lr"],
            log[step - 1]["lr"],
            "η of step {step}"
        );
        assert_eq!(man["status"], "complete");
    }

    // LESS over the Adam-update stores, against target tasks.
    let probes = root()
        .join("assets/data/probe-tasks.jsonl")
        .display()
        .to_string();
    let less_out = p("less.parquet");
    let v = json(&run_ok(&[
        "score",
        "--store",
        &per,
        "--method",
        "less",
        "--queries",
        &probes,
        "--limit",
        "8",
        "--out",
        &less_out,
        "--json",
        "--threads",
        "1",
    ]));
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 2);
    let (cols, _) = inflow::scores::table::read_table(Path::new(&less_out)).unwrap();
    assert_eq!(
        cols[0].1.as_str().unwrap().len(),
        6,
        "one LESS score per training sample"
    );

    // TracIn over SGD stores is the η-weighted sum of the per-checkpoint scores.
    let sgd = p("per-checkpoint-sgd");
    run_ok(&[
        "index",
        "--model",
        &model,
        "--checkpoints",
        &ck2,
        &ck4,
        "--lora-grads",
        "--projection",
        "dense",
        "--dim",
        "32",
        "--data",
        &data,
        "--limit",
        "6",
        "--max-tokens",
        "64",
        "--out",
        &sgd,
        "--threads",
        "1",
    ]);
    let mean_scores = |store: &str, out: &str| -> std::collections::HashMap<String, f64> {
        run_ok(&[
            "score",
            "--store",
            store,
            "--method",
            "tracin",
            "--queries",
            &probes,
            "--limit",
            "4",
            "--aggregate",
            "mean",
            "--out",
            out,
            "--threads",
            "1",
        ]);
        let (cols, _) = inflow::scores::table::read_table(Path::new(out)).unwrap();
        let ids = cols[0].1.as_str().unwrap().to_vec();
        let sc = cols[1].1.as_f64().unwrap();
        ids.into_iter().zip(sc).collect()
    };
    let both = mean_scores(&sgd, &p("tracin-both.parquet"));
    let c2 = mean_scores(&format!("{sgd}/checkpoint-2"), &p("tracin-2.parquet"));
    let c4 = mean_scores(&format!("{sgd}/checkpoint-4"), &p("tracin-4.parquet"));
    assert_eq!(both.len(), 6);
    for (id, s) in &both {
        let sum = c2[id] + c4[id];
        assert!(
            (s - sum).abs() <= 1e-4 * sum.abs().max(1e-6),
            "{id}: {s} vs {sum}"
        );
    }
    assert!(both.values().any(|s| s.abs() > 0.0));
    let _ = std::fs::remove_dir_all(&dir);
}
