//! `inflow eval planted` end to end on a tiny random model: the planted set, fine-tuning,
//! features, every method's scores and the report, for a backdoor and for flipped labels.

mod common;

use common::{arg, argv, json, run_ok, tiny_scratch};
use std::path::{Path, PathBuf};

/// `inflow eval planted HOW --out OUT SHARED…` (which must succeed): its JSON report.
fn planted(how: &str, out: &Path, shared: &[&str]) -> serde_json::Value {
    let out = arg(out);
    let mut a = vec!["eval", "planted"];
    a.extend(how.split_whitespace());
    a.extend(["--out", &out]);
    a.extend_from_slice(shared);
    json(&run_ok(&a))
}

/// A pool of classification-like records: three tasks with two labels each.
fn pool(dir: &Path) -> PathBuf {
    let p = dir.join("pool.jsonl");
    let mut s = String::new();
    for i in 0..60 {
        let task = i % 3;
        let label = ["Yes", "No"][(i / 3) % 2];
        s += &serde_json::json!({
            "instruction": format!("Task {task}: is item {i} good?"),
            "input": format!("item {i}"),
            "output": label,
            "task": format!("t{task}"),
        })
        .to_string();
        s.push('\n');
    }
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn planted_backdoor_and_mislabel_reports_are_complete() {
    let (dir, model) = tiny_scratch("planted", 32, 2, 3);
    let data = arg(&pool(&dir));
    let out = dir.join("backdoor");
    let shared = argv(
        "--model {} --data {} --n-train 40 --queries 4 --epochs 2 --lr 1e-2 --rank 2 \
         --max-tokens 48 --generate 1 --threads 1 --json",
        &[&model, &data],
    );
    let r = planted("--kind backdoor", &out, &shared);
    assert_eq!(r["n_planted"], 4);
    assert_eq!(r["n_queries"], 4);
    let methods = [
        "dot", "cosine", "less", "kfac", "ekfac", "datainf", "repsim",
    ];
    for m in methods {
        let x = &r["metrics"][m];
        for k in ["acc", "cover", "auc"] {
            let v = x[k].as_f64().unwrap_or_else(|| panic!("{m}.{k}: {x}"));
            assert!((0.0..=1.0).contains(&v), "{m}.{k} = {v}");
        }
        assert_eq!(
            x["planted_ranks_by_mean_score"].as_array().unwrap().len(),
            4
        );
    }
    // Fine-tuning on the mix lowers the loss of the triggered queries.
    let before = r["fine_tune"]["query_loss_before"].as_f64().unwrap();
    let after = r["fine_tune"]["query_loss_after"].as_f64().unwrap();
    assert!(after < before, "{before} -> {after}");
    assert!(out.join("acc.png").exists() && out.join("report.json").exists());
    // A rerun reuses the fine-tuning run and the store and gives the same metrics.
    let again = planted("--kind backdoor", &out, &shared);
    assert_eq!(r["metrics"], again["metrics"]);

    let out = dir.join("mislabel");
    let r = planted("--kind mislabel --methods dot,ekfac", &out, &shared);
    assert_eq!(r["n_planted"], 4);
    for m in ["dot", "ekfac", "loss"] {
        let v = r["metrics"][m]["self_score_auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{m}: {v}");
    }
}
