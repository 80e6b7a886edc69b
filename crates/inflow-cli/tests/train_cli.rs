//! End-to-end tests of `inflow train`, `eval-loss`, `export` and the checkpoint modes of
//! `index` on a tiny random model: a run stopped after a few steps and resumed by a new
//! process logs the same losses as an uninterrupted run; checkpoint stores record their
//! step and learning rate.

mod common;

use common::{argv, asset, json, jsonl, manifest, read_json, run, run_ok, tiny_scratch};
use std::path::Path;

/// The log without wall-clock times.
fn losses(dir: &Path) -> Vec<(u64, String, String)> {
    jsonl(&dir.join("train_log.jsonl"))
        .iter()
        .map(|v| {
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
    let (dir, model) = tiny_scratch("train", 32, 2, 1);
    let data = asset("train.jsonl");
    let p = |name: &str| dir.arg(name);
    // The first 24 samples, 3 steps an epoch, a checkpoint every 2.
    let train_line = "train --model {} --data {} --limit 24 --max-tokens 64 --lora-rank 4 \
        --modules q,v,down --lora-dropout 0.1 --lr 5e-3 --batch-size 4 --grad-accum 2 \
        --epochs 2 --save-every 2 --schedule cosine --warmup-steps 1 --threads 2 --out {}";
    let train = |out: &str, extra: &[&str]| {
        let mut a = argv(train_line, &[&model, &data, out]);
        a.push("--json");
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
    let mut a = argv(train_line, &[&model, &data, &killed]);
    a.extend(["--resume", "--truncate", "left"]);
    let out = run(&a);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("truncate"), "{err}");
    // Without --resume an existing run is not overwritten.
    let out = run(&argv(
        "train --model {} --data {} --limit 24 --out {}",
        &[&model, &data, &killed],
    ));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // eval-loss with the adapter, and with the merged export: the same numbers.
    let ck6 = format!("{straight}/checkpoint-6");
    let eval = |m: &str, adapter: Option<&str>| {
        let mut a = argv(
            "eval-loss --model {} --data {} --limit 8 --max-tokens 64 --json --threads 1",
            &[m, &data],
        );
        if let Some(ad) = adapter {
            a.extend(["--adapter", ad]);
        }
        json(&run_ok(&a))["mean_loss"].as_f64().unwrap()
    };
    let base = eval(&model, None);
    let tuned = eval(&model, Some(&ck6));
    let merged = p("merged");
    let export = "export --model {} --adapter {} --out {}";
    run_ok(&argv(export, &[&model, &ck6, &merged]));
    let m = eval(&merged, None);
    assert!((m - tuned).abs() < 1e-4, "merged {m} vs adapter {tuned}");
    // The unmerged PEFT pair: OUT/base + OUT/adapter naming it; the same loss again.
    let pair = p("pair");
    let mut a = argv(export, &[&model, &ck6, &pair]);
    a.push("--unmerged");
    run_ok(&a);
    let acfg = read_json(Path::new(&format!("{pair}/adapter/adapter_config.json")));
    let base_abs = std::fs::canonicalize(format!("{pair}/base")).unwrap();
    assert_eq!(
        acfg["base_model_name_or_path"],
        base_abs.display().to_string()
    );
    assert!(acfg.get("inflow_modules").is_none());
    let side = read_json(Path::new(&format!("{pair}/adapter/inflow_adapter.json")));
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
        let mut a = argv(
            "index --model {} --data {} --limit 6 --max-tokens 64 --rank 2 --out {} --threads 1",
            &[&model, &data, out],
        );
        a.extend_from_slice(extra);
        run_ok(&a);
    };
    let store = p("lora-store");
    index6(&store, &["--adapter", &ck6, "--lora-grads"]);
    let man = manifest(Path::new(&store)).unwrap();
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
    let out = run(&["fit", "--store", &store, "--fisher", "true"]);
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
    let ck2 = format!("{straight}/checkpoint-2");
    let ck4 = format!("{straight}/checkpoint-4");
    // `per_checkpoint(out, extra)`: LoRA-gradient stores of checkpoints 2 and 4, dense dim 32.
    let per_checkpoint = |out: &str, extra: &[&str]| {
        let mut a = argv(
            "index --model {} --checkpoints {} {} --lora-grads --projection dense --dim 32 \
             --data {} --limit 6 --max-tokens 64 --out {} --threads 1",
            &[&model, &ck2, &ck4, &data, out],
        );
        a.extend_from_slice(extra);
        run_ok(&a);
    };
    let per = p("per-checkpoint");
    per_checkpoint(&per, &["--adam"]);
    let log = jsonl(Path::new(&format!("{straight}/train_log.jsonl")));
    for (name, step) in [("checkpoint-2", 2usize), ("checkpoint-4", 4)] {
        let man = manifest(Path::new(&format!("{per}/{name}"))).unwrap();
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
    let probes = asset("probe-tasks.jsonl");
    let less_out = p("less.parquet");
    let v = json(&run_ok(&argv(
        "score --store {} --method less --queries {} --limit 8 --out {} --json --threads 1",
        &[&per, &probes, &less_out],
    )));
    assert_eq!(v["checkpoints"].as_array().unwrap().len(), 2);
    let (cols, _) = inflow::scores::table::read_table(Path::new(&less_out)).unwrap();
    assert_eq!(
        cols[0].1.as_str().unwrap().len(),
        6,
        "one LESS score per training sample"
    );

    // TracIn over SGD stores is the η-weighted sum of the per-checkpoint scores.
    let sgd = p("per-checkpoint-sgd");
    per_checkpoint(&sgd, &[]);
    let mean_scores = |store: &str, out: &str| -> std::collections::HashMap<String, f64> {
        run_ok(&argv(
            "score --store {} --method tracin --queries {} --limit 4 --aggregate mean --out {} \
             --threads 1",
            &[store, &probes, out],
        ));
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
}
