//! `inflow bench features` counts the work it does and times an external baseline command
//! in the same run, interleaved with its own passes (issue 20). Nothing here is timed: the
//! test checks what is counted and in which order the passes ran.

mod common;

use common::*;

#[test]
fn bench_features_counts_parts_and_interleaves_the_baseline() {
    let (dir, model) = tiny_scratch("bench-features", 32, 2, 5);
    let data = asset("train.jsonl");
    let marks = dir.join("baseline-ran");
    let cmd = format!("echo x >> {}", marks.display());
    let out = run_ok(&argv(
        "bench features --model {} --data {} --limit 3 --max-tokens 48 --rank 2 --rounds 2 \
         --autograd-samples 1 --baseline-cmd {} --json --threads 1",
        &[&model, &data, &cmd],
    ));
    let v = json(&out);
    assert_eq!(v["samples"], 3);
    let order: Vec<&str> = v["passes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["what"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["inflow", "baseline", "inflow", "baseline"]);
    // The command really ran, once per round.
    assert_eq!(std::fs::read_to_string(&marks).unwrap().lines().count(), 2);
    // The parts are counted for the tokens measured (forward and input-gradient backward do
    // the same GEMMs, the backward's attention twice the forward's), and add up.
    let f = &v["flops"];
    let (fw, bw, pr) = (
        f["forward"].as_f64().unwrap(),
        f["input_backward"].as_f64().unwrap(),
        f["projection"].as_f64().unwrap(),
    );
    assert!(fw > 0.0 && bw > fw && pr > 0.0, "{f}");
    assert!(v["tokens"].as_u64().unwrap() > 0);
    let gflops = v["gflops"].as_f64().unwrap() * v["ours"]["wall_s"].as_f64().unwrap() * 1e9;
    assert!((gflops - (fw + bw + pr)).abs() < 1e-6 * gflops, "{v}");
    let b = &v["baseline"];
    assert!(b["speedup_wall"].as_f64().is_some() && b["theirs"]["wall_s"].as_f64().is_some());
    assert!(v["autograd"]["theirs"]["wall_s"].as_f64().is_some());

    // A failing baseline stops the benchmark, naming the command.
    let e = fails(&argv(
        "bench features --model {} --data {} --limit 1 --max-tokens 48 --rank 2 --autograd-samples 0 --baseline-cmd false",
        &[&model, &data],
    ));
    assert!(e.contains("--baseline-cmd `false`"), "{e}");
}
