//! Sharded runs from the CLI: `index --shard I/N` part stores, `store merge`, the writer lock,
//! `score --part` and `scores merge`, each checked against one process doing the whole job.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use inflow_testkit::{scratch, smollm2};

/// Index flags shared by the whole-store and part runs: 6 samples in 3 shards of 2.
const INDEX: &str = "index --model {} --data {} --limit 6 --max-tokens 48 --rank 2 --shard-size 2";

fn index_line(model: &str, data: &str, extra: &str, out: &str) -> Vec<String> {
    argv(
        &format!("--threads 2 {INDEX} {extra} --out {{}}"),
        &[model, data, out],
    )
    .into_iter()
    .map(String::from)
    .collect()
}

fn run_strings(args: &[String]) -> std::process::Output {
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn fails_strings(args: &[String]) -> String {
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Every file of store `a` (shards, samples table, K-FAC statistics, sub-stores) is byte-equal
/// in `b`, and the manifests agree but for the version string.
fn assert_same_store(a: &Path, b: &Path) {
    let mut n = 0;
    for rel in [".", "repsim-last", "repsim-mean", "curvature"] {
        for e in std::fs::read_dir(a.join(rel)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if p.is_dir() || ["manifest.json", "run.json", "writer.lock"].contains(&name.as_str()) {
                continue;
            }
            let other = b.join(rel).join(&name);
            assert!(
                std::fs::read(&p).unwrap() == std::fs::read(&other).unwrap_or_default(),
                "{} differs from {}",
                p.display(),
                other.display()
            );
            n += 1;
        }
        if rel != "curvature" {
            let strip = |d: &Path| {
                let mut m = manifest(&d.join(rel)).unwrap();
                m.as_object_mut().unwrap().remove("inflow_version");
                m
            };
            assert_eq!(strip(a), strip(b), "{rel}/manifest.json");
        }
    }
    assert!(n > 3 * 3 * 3 + 3, "only {n} files compared");
}

#[test]
fn parts_merge_into_the_single_process_store_and_score_in_parts_exactly() {
    let dir = scratch("parts");
    let model = arg(&smollm2());
    let data = asset("train.jsonl");
    run_strings(&index_line(&model, &data, "", &dir.arg("whole")));
    for i in 0..3 {
        let out = run_strings(&index_line(
            &model,
            &data,
            &format!("--shard {i}/3 --json"),
            &dir.arg(&format!("part-{i}")),
        ));
        assert_eq!(
            json(&out)["summary"]["n_samples"],
            2,
            "part {i} holds 2 rows"
        );
        let m = manifest(&dir.join(format!("part-{i}"))).unwrap();
        assert_eq!(m["part"]["rows"], serde_json::json!([2 * i, 2 * i + 2]));
        assert_eq!(m["n_samples"], 6);
        assert_eq!(m["status"], "complete");
    }
    // A part store resumes like any store: rerunning writes nothing.
    let again = run_strings(&index_line(
        &model,
        &data,
        "--shard 1/3 --json",
        &dir.arg("part-1"),
    ));
    assert_eq!(json(&again)["summary"]["shards_written"], 0);

    // Parts in any order; every file equals the single-process store's.
    let (p0, p1, p2) = (dir.arg("part-0"), dir.arg("part-1"), dir.arg("part-2"));
    let merged = dir.arg("merged");
    let out = run_ok(&argv(
        "store merge {} {} {} --out {} --json",
        &[&p2, &p0, &p1, &merged],
    ));
    let s = &json(&out)["summary"];
    assert_eq!(
        (s["parts"].as_u64(), s["n_samples"].as_u64()),
        (Some(3), Some(6))
    );
    assert_eq!(
        s["sub_stores"],
        serde_json::json!(["repsim-last", "repsim-mean"])
    );
    assert_same_store(&dir.join("whole"), &dir.join("merged"));

    // Bad parts: each named with what is wrong.
    let e = fails(&argv(
        "store merge {} {} --out {}",
        &[&p0, &p2, &dir.arg("bad")],
    ));
    assert!(e.contains("missing part 1/3 (rows 2..4)"), "{e}");
    let e = fails(&argv(
        "store merge {} {} {} {} --out {}",
        &[&p0, &p1, &p1, &p2, &dir.arg("bad")],
    ));
    assert!(e.contains("part-1") && e.contains("again"), "{e}");
    let e = fails(&argv(
        "store merge {} {} --out {}",
        &[&p0, &dir.arg("whole"), &dir.arg("bad")],
    ));
    assert!(e.contains("whole") && e.contains("not a part store"), "{e}");
    let seeded = dir.arg("part-1-seed");
    run_strings(&index_line(&model, &data, "--shard 1/3 --seed 7", &seeded));
    let e = fails(&argv(
        "store merge {} {} {} --out {}",
        &[&p0, &seeded, &p2, &dir.arg("bad")],
    ));
    assert!(e.contains("part-1-seed") && e.contains("seed"), "{e}");
    let e = fails_strings(&index_line(&model, &data, "--shard 3/4", &dir.arg("four")));
    assert!(e.contains("only 3 shards"), "{e}");
    let e = fails_strings(&index_line(&model, &data, "--shard 3/3", &dir.arg("three")));
    assert!(
        e.contains("3/3") && e.contains("below the number of parts"),
        "{e}"
    );

    // A part store is not scored or fitted as if whole.
    let q = asset("probe.jsonl");
    let e = fails(&argv("score --store {} --queries {} --limit 2", &[&p0, &q]));
    assert!(
        e.contains("is part 0/3") && e.contains("store merge"),
        "{e}"
    );
    let e = fails(&argv("fit --store {}", &[&p0]));
    assert!(e.contains("is part 0/3"), "{e}");

    // Scoring in parts, merged, equals one run over the whole store: top-k, dense, mean.
    for (method, extra, ext) in [
        ("cosine", "--top-k 3", "parquet"),
        ("repsim", "--top-k 4", "parquet"),
        ("cosine", "--aggregate mean", "parquet"),
    ] {
        let line = format!("score --store {{}} --queries {{}} --limit 3 --method {method} {extra} --out {{}} --full {{}} --force");
        let whole = (dir.arg(&format!("w.{ext}")), dir.arg("w.npy"));
        run_ok(&argv(&line, &[&merged, &q, &whole.0, &whole.1]));
        let mut parts = Vec::new();
        for i in [2, 0, 1] {
            let p = (
                dir.arg(&format!("s{i}.{ext}")),
                dir.arg(&format!("s{i}.npy")),
            );
            let mut args = argv(&line, &[&merged, &q, &p.0, &p.1]);
            let part = format!("{i}/3");
            args.extend(["--part", part.as_str()]);
            run_ok(&args);
            parts.push(p);
        }
        let m = (dir.arg(&format!("m.{ext}")), dir.arg("m.npy"));
        for (files, out) in [
            (parts.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(), &m.0),
            (parts.iter().map(|p| p.1.as_str()).collect(), &m.1),
        ] {
            let mut args = vec!["scores", "merge"];
            args.extend(files);
            args.extend(["--out", out.as_str(), "--force"]);
            run_ok(&args);
        }
        for (a, b) in [
            (&whole.0, &m.0),
            (&whole.1, &m.1),
            (
                &whole.1.replace(".npy", ".json"),
                &m.1.replace(".npy", ".json"),
            ),
        ] {
            assert!(
                std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
                "{method} {extra}: {b} differs from {a}"
            );
        }
        let e = fails(&argv(
            "scores merge {} {} --out {}",
            &[&parts[0].0, &parts[1].0, &dir.arg("x.parquet")],
        ));
        assert!(e.contains("rows 2..4 are in no file"), "{e}");
    }
    let e = fails(&argv(
        "scores merge {} --out {}",
        &[&dir.arg("w.parquet"), &dir.arg("x.parquet")],
    ));
    assert!(e.contains("not a partial score file"), "{e}");
}

#[test]
fn a_second_writer_is_refused_by_pid_and_a_killed_writers_lock_is_taken_over() {
    let dir = scratch("lock");
    let model = arg(&smollm2());
    let data = asset("train.jsonl");
    let out = dir.arg("store");
    let line = |extra: &str| -> Vec<String> {
        argv(
            &format!("--threads 1 index --model {{}} --data {{}} --limit 12 --max-tokens 64 --rank 2 --shard-size 1 {extra} --out {{}}"),
            &[&model, &data, &out],
        )
        .into_iter()
        .map(String::from)
        .collect()
    };
    let mut first = bin()
        .args(line(""))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its first shard, so it holds the lock and has work left.
    let t = Instant::now();
    while manifest(Path::new(&out))
        .is_none_or(|m| m["shards"].as_array().is_none_or(|s| s.is_empty()))
    {
        assert!(t.elapsed() < Duration::from_secs(120), "no shard written");
        std::thread::sleep(Duration::from_millis(50));
    }
    let e = fails_strings(&line(""));
    let _ = Command::new("kill")
        .args(["-9", &first.id().to_string()])
        .status();
    let _ = first.wait();
    assert!(
        e.contains(&format!("pid {}", first.id())) && e.contains("being written"),
        "{e}"
    );
    // The killed writer's lock is stale: the rerun takes it over and finishes the store.
    let done = run_strings(&line("--json"));
    let s = &json(&done)["summary"];
    assert!(s["shards_reused"].as_u64().unwrap() >= 1, "{s}");
    let m = manifest(Path::new(&out)).unwrap();
    assert_eq!(m["status"], "complete");
    assert_eq!(m["shards"].as_array().unwrap().len(), 12);
}
