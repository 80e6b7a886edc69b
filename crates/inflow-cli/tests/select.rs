//! `inflow select` end to end on the bundled data with a tiny random model: G-DIG against the
//! bundled probes, top-p% from a `score --aggregate mean` file, and refusal of scores computed
//! on other data.

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inflow-select-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inflow"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap()
}

fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "inflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The non-blank lines of a JSONL file, with their terminators.
fn records(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn select_gdig_top_and_id_check_on_bundled_data() {
    let dir = tmp("flow");
    let model = dir.join("model");
    inflow::model::tiny::write_random(&model, 32, 1, 1).unwrap();
    let (model, store) = (model.display().to_string(), dir.join("store"));
    let store_s = store.display().to_string();
    let data = root().join("assets/data/train.jsonl");
    let data_s = data.display().to_string();
    let probes = root().join("assets/data/probe.jsonl").display().to_string();
    run_ok(&[
        "index",
        "--model",
        &model,
        "--data",
        &data_s,
        "--limit",
        "40",
        "--out",
        &store_s,
        "--rank",
        "4",
        "--max-tokens",
        "128",
        "--threads",
        "1",
    ]);
    let input_lines = records(&std::fs::read_to_string(&data).unwrap());

    // G-DIG: quality = top half by mean cosine to the probes, 4 clusters, 10 samples.
    let out = dir.join("gdig.jsonl");
    let out_s = out.display().to_string();
    let gdig = [
        "select",
        "--method",
        "gdig",
        "--store",
        &store_s,
        "--seed-set",
        &probes,
        "--clusters",
        "4",
        "--size",
        "10",
        "--quality-top",
        "0.5",
        "--data",
        &data_s,
        "--out",
        &out_s,
        "--threads",
        "1",
        "--json",
    ];
    let o = run_ok(&gdig);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["selected"], 10);
    assert_eq!(v["candidates"], 40);
    let got = records(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(got.len(), 10);
    let man: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("gdig.jsonl.selection.json")).unwrap(),
    )
    .unwrap();
    let mut rows: Vec<usize> = man["picks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["row"].as_u64().unwrap() as usize)
        .collect();
    rows.sort();
    // Output lines are the input's lines, byte for byte, in file order.
    for (line, r) in got.iter().zip(&rows) {
        assert_eq!(line, &input_lines[*r]);
    }
    let per: Vec<u64> = man["details"]["picks_per_cluster"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(per.iter().sum::<u64>(), 10);
    let sizes: Vec<u64> = man["details"]["cluster_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    // Even spread: a cluster gets fewer than its share only when it has no more samples.
    let hi = per.iter().max().unwrap();
    for (p, s) in per.iter().zip(&sizes) {
        assert!(
            *p == *s || *p + 1 >= *hi,
            "cluster under its share: {per:?} of {sizes:?}"
        );
    }
    assert_eq!(man["settings"]["gdig"]["seed"], 0);
    // Same command, same selection.
    let first = std::fs::read(&out).unwrap();
    run_ok(&gdig);
    assert_eq!(std::fs::read(&out).unwrap(), first);

    // Top 25% from a per-train score file.
    let scores = dir.join("mean.parquet").display().to_string();
    run_ok(&[
        "score",
        "--store",
        &store_s,
        "--queries",
        &probes,
        "--aggregate",
        "mean",
        "--out",
        &scores,
        "--threads",
        "1",
    ]);
    let top = dir.join("top.jsonl").display().to_string();
    run_ok(&[
        "select", "--scores", &scores, "--size", "25%", "--data", &data_s, "--out", &top,
    ]);
    assert_eq!(records(&std::fs::read_to_string(&top).unwrap()).len(), 10);
    let (cols, _) =
        inflow::scores::table::read_table(&dir.join("top.jsonl.selection.parquet")).unwrap();
    let rank = cols
        .iter()
        .find(|c| c.0 == "rank")
        .unwrap()
        .1
        .as_f64()
        .unwrap();
    assert_eq!(rank, (1..=10).map(|r| r as f64).collect::<Vec<_>>());

    // Scores from another file are refused, naming the data file and a sample.
    let other = root()
        .join("assets/data/probe-tasks.jsonl")
        .display()
        .to_string();
    let o = run(&[
        "select", "--scores", &scores, "--size", "5", "--data", &other, "--out", &top,
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("probe-tasks.jsonl") && err.contains("other data"),
        "{err}"
    );
    // A top-k file is refused with a hint.
    let topk = dir.join("topk.parquet").display().to_string();
    run_ok(&[
        "score",
        "--store",
        &store_s,
        "--queries",
        &probes,
        "--out",
        &topk,
        "--threads",
        "1",
    ]);
    let o = run(&[
        "select", "--scores", &topk, "--size", "5", "--data", &data_s, "--out", &top,
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("top-k file"));
}
