//! End-to-end tests of the `inflow` binary: resumption after a kill, refusal of mismatched
//! stores, bad input, and (on the reference model) self-retrieval by gradient cosine.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflow"));
    c.current_dir(root());
    c
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inflow-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_ok(args: &[&str]) -> Output {
    let out = bin().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "inflow {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn train_jsonl() -> String {
    root().join("assets/data/train.jsonl").display().to_string()
}

fn probe_tasks_jsonl() -> String {
    root()
        .join("assets/data/probe-tasks.jsonl")
        .display()
        .to_string()
}

fn manifest(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

fn index_args<'a>(model: &'a str, out: &'a str, data: &'a str, limit: &'a str) -> Vec<&'a str> {
    vec![
        "index",
        "--model",
        model,
        "--data",
        data,
        "--limit",
        limit,
        "--out",
        out,
        "--shard-size",
        "4",
        "--rank",
        "4",
        "--max-tokens",
        "256",
        "--threads",
        "1",
    ]
}

#[test]
fn killed_index_resumes_to_the_same_store_as_an_uninterrupted_run() {
    let dir = tmp("resume");
    let model = dir.join("model");
    inflow::model::tiny::write_random(&model, 128, 4, 1).unwrap();
    let model = model.display().to_string();
    let data = train_jsonl();

    // Reference: one uninterrupted run.
    let full = dir.join("full").display().to_string();
    run_ok(&index_args(&model, &full, &data, "80"));

    // Kill the run several times at different points, then let it finish.
    let out = dir.join("killed").display().to_string();
    let mut kills = 0;
    for target_shards in [1usize, 6, 12] {
        let mut child = bin()
            .args(index_args(&model, &out, &data, "80"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            let done = manifest(Path::new(&out))
                .and_then(|m| m["shards"].as_array().map(|a| a.len()))
                .unwrap_or(0);
            if done >= target_shards || start.elapsed() > Duration::from_secs(120) {
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "the index finished before it could be killed");
    let m = manifest(Path::new(&out)).unwrap();
    assert_ne!(
        m["status"], "complete",
        "killed runs must leave the store incomplete"
    );
    run_ok(&index_args(&model, &out, &data, "80"));

    let a = manifest(Path::new(&full)).unwrap();
    let b = manifest(Path::new(&out)).unwrap();
    assert_eq!(b["status"], "complete");
    assert_eq!(a["shards"].as_array().unwrap().len(), 20);
    assert_eq!(b["shards"].as_array().unwrap().len(), 20);
    for i in 0..20 {
        let f = format!("features-{i:05}.npy");
        let x = std::fs::read(Path::new(&full).join(&f)).unwrap();
        let y = std::fs::read(Path::new(&out).join(&f)).unwrap();
        assert!(
            x == y,
            "{f} differs between the killed+resumed and the uninterrupted run"
        );
    }
    let rows_a = inflow::store::read_samples(&Path::new(&full).join("samples.parquet")).unwrap();
    let rows_b = inflow::store::read_samples(&Path::new(&out).join("samples.parquet")).unwrap();
    assert_eq!(rows_a.len(), 80);
    assert_eq!(rows_a, rows_b, "no duplicate and no missing row");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn store_refuses_other_model_or_projection() {
    let dir = tmp("refuse");
    let (m1, m2) = (dir.join("m1"), dir.join("m2"));
    inflow::model::tiny::write_random(&m1, 32, 1, 1).unwrap();
    inflow::model::tiny::write_random(&m2, 32, 1, 2).unwrap();
    let (m1, m2) = (m1.display().to_string(), m2.display().to_string());
    let out = dir.join("store").display().to_string();
    let data = train_jsonl();
    run_ok(&index_args(&m1, &out, &data, "8"));

    let mut args = index_args(&m1, &out, &data, "8");
    args[12] = "8"; // --rank 8 instead of 4
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("features") && err.contains("rank"), "{err}");

    let o = bin()
        .args(index_args(&m2, &out, &data, "8"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("model.sha256"), "{err}");

    let probe = root().join("assets/data/probe.jsonl").display().to_string();
    let o = bin()
        .args([
            "score",
            "--store",
            &out,
            "--queries",
            &probe,
            "--model",
            &m2,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("model.sha256"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--truncate`: a middle store records its policy (manifest and run.json) and reports what it
/// cut; a store without the field (made before the option) is `left`: it scores, and it resumes
/// with `--truncate left` but not with the new default.
#[test]
fn truncation_policy_is_recorded_reported_and_old_stores_still_score() {
    let dir = tmp("truncate");
    let model = dir.join("m");
    inflow::model::tiny::write_random(&model, 32, 1, 1).unwrap();
    let model = model.display().to_string();
    let data = train_jsonl();
    let probe = root().join("assets/data/probe.jsonl").display().to_string();
    let mid = dir.join("middle").display().to_string();
    let out = run_ok(&index_args(&model, &mid, &data, "8"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One token per byte: every bundled NI sample is over 256 tokens.
    let rows = inflow::store::read_samples(&Path::new(&mid).join("samples.parquet")).unwrap();
    let cut: u32 = rows.iter().map(|r| r.prompt_tokens_cut).sum();
    assert!(rows.iter().all(|r| r.truncated && r.n_tokens == 256));
    assert!(
        stdout.contains(&format!(
            "8 of 8 samples over --max-tokens 256: {} prompt tokens cut from the middle (--truncate middle), 0 response tokens",
            inflow_thousands(cut as usize)
        )),
        "{stdout}"
    );
    let m = manifest(Path::new(&mid)).unwrap();
    assert_eq!(m["spec"]["data"]["truncate"], "middle");
    let run_path = Path::new(&mid).join("run.json");
    let mut run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&run_path).unwrap()).unwrap();
    assert_eq!(run["features"]["truncate"], "middle");
    let score = |store: &str| {
        run_ok(&[
            "score",
            "--store",
            store,
            "--queries",
            &probe,
            "--top-k",
            "2",
            "--threads",
            "1",
        ])
    };
    score(&mid);
    let mut args = index_args(&model, &mid, &data, "8");
    args.extend(["--truncate", "left"]);
    let o = bin().args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data.truncate"),
        "{err}"
    );
    let o = bin()
        .args([
            "index",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &dir.join("x").display().to_string(),
            "--truncate",
            "start",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown truncation `start`"),
        "{err}"
    );

    // `left` writes no field: its specs are those of stores made before the option.
    let left = dir.join("left").display().to_string();
    let mut args = index_args(&model, &left, &data, "8");
    args.extend(["--truncate", "left"]);
    let out = run_ok(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut from the start (--truncate left)"));
    let m = manifest(Path::new(&left)).unwrap();
    assert!(m["spec"]["data"].get("truncate").is_none(), "{m}");
    let lrun: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&left).join("run.json")).unwrap())
            .unwrap();
    assert!(lrun["features"].get("truncate").is_none(), "{lrun}");
    run_ok(&args); // resumes (nothing to do)
    let o = bin()
        .args(index_args(&model, &left, &data, "8"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data.truncate: store has (absent)"),
        "an old store is not resumed with the new default: {err}"
    );

    // An old store: the middle store with the fields stripped from manifest.json and run.json
    // (it now claims `left`, as every store before the option) still scores.
    let mpath = Path::new(&mid).join("manifest.json");
    let mut m = manifest(Path::new(&mid)).unwrap();
    m["spec"]["data"]
        .as_object_mut()
        .unwrap()
        .remove("truncate");
    std::fs::write(&mpath, serde_json::to_string_pretty(&m).unwrap()).unwrap();
    run["features"].as_object_mut().unwrap().remove("truncate");
    std::fs::write(&run_path, serde_json::to_string_pretty(&run).unwrap()).unwrap();
    score(&mid);
    score(&left);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `3210` → `3,210` (as inflow prints counts).
fn inflow_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn malformed_line_is_named_and_skip_bad_counts_it() {
    let dir = tmp("bad");
    let model = dir.join("m");
    inflow::model::tiny::write_random(&model, 32, 1, 1).unwrap();
    let model = model.display().to_string();
    let data = dir.join("d.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"input\": \"\"}\n{\"instruction\": \"c\", \"input\": \"\", \"output\": \"d\"}\n",
    )
    .unwrap();
    let data = data.display().to_string();
    let out = dir.join("s").display().to_string();
    let o = bin()
        .args(index_args(&model, &out, &data, "10"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("d.jsonl:2") && err.contains("output"), "{err}");
    assert_eq!(
        err.trim()
            .lines()
            .filter(|l| l.starts_with("error:"))
            .count(),
        1
    );

    let mut args = index_args(&model, &out, &data, "10");
    args.push("--skip-bad");
    args.push("--json");
    let o = run_ok(&args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["n_samples"], 2);
    assert_eq!(v["summary"]["n_skipped_bad"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The end-to-end check, on the reference model: 200 training samples indexed, 20 of
/// them used as queries; cosine top-1 must be the sample itself for at least 19 of 20.
#[test]
fn reference_model_cosine_finds_each_sample_itself() {
    let model = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(model.exists(), "run ./scripts/fetch-model.sh first");
    let dir = tmp("selfret");
    let lines: Vec<String> = std::fs::read_to_string(root().join("assets/data/train.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let queries: Vec<&str> = (0..20).map(|i| lines[i * 10 + 3].as_str()).collect();
    let qpath = dir.join("queries.jsonl");
    std::fs::write(&qpath, queries.join("\n") + "\n").unwrap();
    let out = dir.join("store").display().to_string();
    let model = model.display().to_string();
    run_ok(&[
        "index",
        "--model",
        &model,
        "--data",
        &train_jsonl(),
        "--limit",
        "200",
        "--out",
        &out,
        "--rank",
        "8",
        "--max-tokens",
        "128",
        "--shard-size",
        "50",
    ]);
    let scores = dir.join("top.parquet").display().to_string();
    let o = run_ok(&[
        "score",
        "--store",
        &out,
        "--queries",
        &qpath.display().to_string(),
        "--method",
        "cosine",
        "--top-k",
        "5",
        "--out",
        &scores,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let qs = v["queries"].as_array().unwrap();
    assert_eq!(qs.len(), 20);
    // Ids are "{row}-{content hash}": the same content has the same hash.
    let hash = |id: &str| id.split_once('-').map(|(_, h)| h.to_string()).unwrap();
    let hits = qs
        .iter()
        .filter(|q| {
            hash(q["query_id"].as_str().unwrap()) == hash(q["top"][0]["train_id"].as_str().unwrap())
        })
        .count();
    assert!(hits >= 19, "self-retrieval top-1: {hits} of 20");

    if python_has("numpy") && python_has("pyarrow") {
        let script = format!(
            "import numpy as np, pyarrow.parquet as pq\n\
             x = np.load('{out}/features-00000.npy', mmap_mode='r')\n\
             assert x.shape[0] == 50 and x.dtype == np.float16, (x.shape, x.dtype)\n\
             t = pq.read_table('{scores}')\n\
             assert t.column_names == ['query_id', 'train_id', 'score', 'rank', 'method'], t.column_names\n\
             assert t.num_rows == 100\n\
             assert b'inflow.sign_convention' in t.schema.metadata\n\
             s = pq.read_table('{out}/samples.parquet')\n\
             assert s.num_rows == 200\n"
        );
        let o = Command::new("python3")
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "python check failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    } else {
        eprintln!("numpy/pyarrow absent: skipped the Python read check");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_explains_every_verb() {
    let o = run_ok(&["--help"]);
    let text = String::from_utf8_lossy(&o.stdout);
    for verb in [
        "inspect", "logprob", "convert", "index", "score", "demo", "bench",
    ] {
        assert!(text.contains(verb), "--help lacks {verb}");
    }
    let o = run_ok(&["index", "--help"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("--max-tokens"));
}

#[test]
fn probe_compare_and_repsim_on_a_tiny_model() {
    let dir = tmp("probe");
    let model = dir.join("m");
    inflow::model::tiny::write_random(&model, 32, 2, 4).unwrap();
    let model = model.display().to_string();
    let probes = probe_tasks_jsonl();
    let data = train_jsonl();
    let icp = dir.join("icp").display().to_string();
    let one = dir.join("one").display().to_string();
    let args = |method: &str, out: &str| -> Vec<String> {
        [
            "probe",
            "--model",
            &model,
            "--data",
            &data,
            "--limit",
            "6",
            "--probes",
            &probes,
            "--probe-tasks",
            "2",
            "--method",
            method,
            "--out",
            out,
            "--shard-size",
            "4",
            "--max-tokens",
            "128",
            "--json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let a = args("icp", &icp);
    let o = run_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_probes"], 8);
    let first = std::fs::read(Path::new(&icp).join("features-00000.npy")).unwrap();
    // Rerunning the finished command changes nothing.
    run_ok(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert_eq!(
        first,
        std::fs::read(Path::new(&icp).join("features-00000.npy")).unwrap()
    );
    let b = args("one-step", &one);
    run_ok(&b.iter().map(|s| s.as_str()).collect::<Vec<_>>());

    let (cols, meta) =
        inflow::scores::table::read_table(&Path::new(&icp).join("scores.parquet")).unwrap();
    assert!(meta.iter().any(|(k, v)| k == "inflow.method" && v == "icp"));
    let score = cols
        .iter()
        .find(|c| c.0 == "score")
        .unwrap()
        .1
        .as_f64()
        .unwrap();
    assert_eq!(score.len(), 6);
    assert!(
        score.iter().all(|s| (0.0..=1.0).contains(s)),
        "ICP scores are fractions: {score:?}"
    );
    let by_task =
        inflow::scores::table::read_table(&Path::new(&icp).join("scores_by_task.parquet")).unwrap();
    assert_eq!(
        by_task.0[0].1.as_str().unwrap().len(),
        12,
        "6 samples × 2 tasks"
    );

    let plot = dir.join("cmp.png");
    let o = run_ok(&[
        "compare",
        &format!("{icp}/scores.parquet"),
        &format!("{one}/scores.parquet"),
        "--plot",
        &plot.display().to_string(),
        "--k",
        "3",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_common"], 6);
    assert_eq!(v["keys"], "train_id");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // RepSim: identical text has identical hidden states, so each sample retrieves itself.
    let store = dir.join("store").display().to_string();
    run_ok(&index_args(&model, &store, &data, "12"));
    let q = dir.join("q.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .take(12)
        .map(String::from)
        .collect();
    std::fs::write(&q, lines.join("\n") + "\n").unwrap();
    for method in ["repsim", "repsim-mean"] {
        let o = run_ok(&[
            "score",
            "--store",
            &store,
            "--queries",
            &q.display().to_string(),
            "--method",
            method,
            "--top-k",
            "1",
            "--json",
            "--out",
            &dir.join(format!("{method}.parquet")).display().to_string(),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for qv in v["queries"].as_array().unwrap() {
            assert_eq!(qv["query_id"], qv["top"][0]["train_id"], "{method}");
            assert!((qv["top"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-3);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `fit --fisher true` indexes sampled-label draws beside the store, records them, and every
/// preconditioner then uses them: exact influence changes from the empirical Fisher's, the
/// output says which Fisher it used, and a rerun reuses the draws.
#[test]
fn fit_true_fisher_indexes_draws_that_the_preconditioners_use() {
    let dir = tmp("fisher");
    let model = dir.join("m");
    inflow::model::tiny::write_random(&model, 16, 2, 4).unwrap();
    let model = model.display().to_string();
    let store = dir.join("s");
    let s = store.display().to_string();
    let data = train_jsonl();
    let probes = probe_tasks_jsonl();
    run_ok(&[
        "index",
        "--model",
        &model,
        "--data",
        &data,
        "--limit",
        "40",
        "--out",
        &s,
        "--projection",
        "full",
        "--modules",
        "layers.1.mlp.down_proj",
        "--shard-size",
        "16",
        "--max-tokens",
        "96",
        "--dtype",
        "f32",
    ]);
    let score = |name: &str| -> (Vec<f32>, String) {
        let npy = dir.join(format!("{name}.npy"));
        let out = dir.join(format!("{name}.parquet"));
        run_ok(&[
            "score",
            "--store",
            &s,
            "--queries",
            &probes,
            "--limit",
            "3",
            "--method",
            "influence",
            "--preconditioner",
            "exact",
            "--full",
            &npy.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--json",
        ]);
        let f = inflow::store::npy::NpyFile::open(&npy).unwrap();
        let v = f.as_f32_slice().unwrap().to_vec();
        let (_, meta) = inflow::scores::table::read_table(&out).unwrap();
        let conv = meta
            .iter()
            .find(|(k, _)| k == "inflow.sign_convention")
            .unwrap()
            .1
            .clone();
        (v, conv)
    };
    run_ok(&["fit", "--store", &s]);
    let (empirical, conv) = score("empirical");
    assert!(conv.contains("empirical Fisher"), "{conv}");

    let fit = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec!["fit", "--store", &s, "--fisher", "true", "--json"];
        a.extend_from_slice(extra);
        serde_json::from_slice(&run_ok(&a).stdout).unwrap()
    };
    let v = fit(&["--draws", "2"]);
    assert_eq!(v["fisher"]["fisher"], "true", "{v}");
    assert_eq!(v["fisher"]["draws"], 2, "{v}");
    for k in 0..2 {
        let m = manifest(&store.join(format!("fisher/draw-{k}"))).expect("draw store");
        assert!(
            m["spec"]["features"]["loss"]
                .as_str()
                .unwrap()
                .contains(&format!("sampled (seed {k})")),
            "{m}"
        );
    }
    let draw0 = std::fs::read(store.join("fisher/draw-0/features-00000.npy")).unwrap();
    let (truef, conv) = score("true");
    assert!(conv.contains("true Fisher"), "{conv}");
    assert_eq!(truef.len(), empirical.len());
    let diff = truef
        .iter()
        .zip(&empirical)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff > 1e-3, "the true Fisher changed nothing ({diff})");

    // A rerun reuses the draws (bit for bit) and gives the same scores.
    fit(&["--draws", "2"]);
    assert_eq!(
        draw0,
        std::fs::read(store.join("fisher/draw-0/features-00000.npy")).unwrap()
    );
    assert_eq!(score("true-again").0, truef);
    // Back to the empirical Fisher: the record follows the last fit.
    run_ok(&["fit", "--store", &s, "--fisher", "empirical"]);
    assert_eq!(score("empirical-again").0, empirical);
    let _ = std::fs::remove_dir_all(&dir);
}
