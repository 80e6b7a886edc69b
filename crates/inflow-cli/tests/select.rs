//! `inflow select` end to end on the bundled data with a tiny random model: G-DIG against the
//! bundled probes, top-p% from a `score --aggregate mean` file, and refusal of scores computed
//! on other data.

mod common;

use common::{argv, asset, f64_column, json, read_json, run, run_ok, tiny_scratch};

/// The non-blank lines of a JSONL file, with their terminators.
fn records(text: &str) -> Vec<String> {
    text.split_inclusive('\n')
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn select_gdig_top_and_id_check_on_bundled_data() {
    let (dir, model) = tiny_scratch("select", 32, 1, 1);
    let store = dir.join("store");
    let store_s = store.display().to_string();
    let data = inflow_testkit::asset("train.jsonl");
    let data_s = data.display().to_string();
    let probes = asset("probe.jsonl");
    run_ok(&argv(
        "index --model {} --data {} --limit 40 --out {} --rank 4 --max-tokens 128 --threads 1",
        &[&model, &data_s, &store_s],
    ));
    let input_lines = records(&std::fs::read_to_string(&data).unwrap());

    // G-DIG: quality = top half by mean cosine to the probes, 4 clusters, 10 samples.
    let out = dir.join("gdig.jsonl");
    let out_s = out.display().to_string();
    let gdig = argv(
        "select --method gdig --store {} --seed-set {} --clusters 4 --size 10 --quality-top 0.5 \
         --data {} --out {} --threads 1 --json",
        &[&store_s, &probes, &data_s, &out_s],
    );
    let v = json(&run_ok(&gdig));
    assert_eq!(v["selected"], 10);
    assert_eq!(v["candidates"], 40);
    let got = records(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(got.len(), 10);
    let man = read_json(&dir.join("gdig.jsonl.selection.json"));
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
    let counts = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let per = counts(&man["details"]["picks_per_cluster"]);
    assert_eq!(per.iter().sum::<u64>(), 10);
    let sizes = counts(&man["details"]["cluster_sizes"]);
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
    let again: Vec<&str> = gdig.iter().copied().chain(["--force"]).collect();
    run_ok(&again);
    assert_eq!(std::fs::read(&out).unwrap(), first);

    // Top 25% from a per-train score file.
    let scores = dir.arg("mean.parquet");
    let score = "score --store {} --queries {} --out {} --threads 1";
    let mut a = argv(score, &[&store_s, &probes, &scores]);
    a.extend(["--aggregate", "mean"]);
    run_ok(&a);
    let top = dir.arg("top.jsonl");
    let select = "select --scores {} --size {} --data {} --out {}";
    run_ok(&argv(select, &[&scores, "25%", &data_s, &top]));
    assert_eq!(records(&std::fs::read_to_string(&top).unwrap()).len(), 10);
    let rank = f64_column(&dir.join("top.jsonl.selection.parquet"), "rank");
    assert_eq!(rank, (1..=10).map(|r| r as f64).collect::<Vec<_>>());

    // Scores from another file are refused, naming the data file and a sample.
    let other = asset("probe-tasks.jsonl");
    let o = run(&argv(select, &[&scores, "5", &other, &top]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("probe-tasks.jsonl") && err.contains("other data"),
        "{err}"
    );
    // A top-k file is refused with a hint.
    let topk = dir.arg("topk.parquet");
    run_ok(&argv(score, &[&store_s, &probes, &topk]));
    let o = run(&argv(select, &[&topk, "5", &data_s, &top]));
    assert!(String::from_utf8_lossy(&o.stderr).contains("top-k file"));
}
