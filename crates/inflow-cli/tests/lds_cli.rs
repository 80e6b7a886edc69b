//! End-to-end test of `inflow eval lds` on a tiny random model: the report is complete (every
//! method, every query, M × nq measured losses, plots), a rerun reuses the finished retrains
//! and score matrices and reproduces the report, and unknown methods are refused by name.

mod common;

use common::{argv, asset, read_json, run, tiny_scratch};

#[test]
fn lds_report_is_complete_and_a_rerun_reuses_finished_work() {
    let (dir, model) = tiny_scratch("lds", 16, 2, 1);
    let data = asset("train.jsonl");
    let queries = asset("probe.jsonl");
    let out = dir.join("lds");
    let out_s = out.display().to_string();
    let args = |methods: &'static str| {
        argv(
            "--threads 1 --json eval lds --model {} --data {} --queries {} --limit 8 --subsets 4 \
             --ratio 0.5 --methods {} --max-tokens 48 --rank 2 --lora-rank 2 --lr 1e-2 --out {}",
            &[&model, &data, &queries, methods, &out_s],
        )
    };

    let bad = run(&args("cosine,nope"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("unknown LDS method `nope`") && err.contains("ekfac"),
        "{err}"
    );

    let methods = "cosine,dot,ekfac,datainf,repsim,icp";
    let first = run(&args(methods));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let report = read_json(&out.join("lds.json"));
    assert_eq!(report["m"], 4);
    assert_eq!(report["n_train"], 8);
    assert_eq!(report["subset_size"], 4);
    let nq = report["n_queries"].as_u64().unwrap() as usize;
    assert!(nq > 1);
    assert_eq!(report["losses"].as_array().unwrap().len(), 4);
    assert!(report["losses"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r.as_array().unwrap().len() == nq));
    assert!(report["statistic"].as_str().unwrap().contains("-loss"));
    let names: Vec<&str> = report["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, methods.split(',').collect::<Vec<_>>());
    for m in report["methods"].as_array().unwrap() {
        assert_eq!(m["per_query"].as_array().unwrap().len(), nq, "{m}");
        assert!(!m["sign_convention"].as_str().unwrap().is_empty());
        if m["n_queries"].as_u64().unwrap() > 0 {
            let v = m["mean"].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&v), "{m}");
        }
    }
    for f in ["subsets.json", "lds.png", "scatter.png", "scores/ekfac.npy"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let subsets = read_json(&out.join("subsets.json"));
    assert_eq!(subsets["subsets"].as_array().unwrap().len(), 4);
    let run0 = out.join("runs/subset-000/result.json");
    let before = std::fs::metadata(&run0).unwrap().modified().unwrap();

    // A rerun: retrains and scores are reused, the report is the same.
    let second = run(&args(methods));
    assert!(second.status.success());
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(!log.contains("computed"), "{log}");
    assert_eq!(
        std::fs::metadata(&run0).unwrap().modified().unwrap(),
        before
    );
    assert_eq!(read_json(&out.join("lds.json")), report);

    // Another seed gives other subsets: the folder is refused, not mixed.
    let mut other = args(methods);
    other.extend(["--seed", "5"]);
    assert!(!run(&other).status.success());
}
