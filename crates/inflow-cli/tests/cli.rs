//! End-to-end tests of the `inflow` binary: resumption after a kill, refusal of mismatched
//! stores, bad input, and (on the reference model) self-retrieval by gradient cosine.

mod common;

use common::{arg, argv, asset, bin, json, manifest, read_json, run_ok, tiny_model, tiny_scratch};
use inflow_testkit::{python, python_has, scratch, smollm2};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// `inflow index` of the first `limit` samples: shards of 4, LoGra rank 4 (word 12), 256
/// tokens, one thread.
fn index_args<'a>(model: &'a str, out: &'a str, data: &'a str, limit: &'a str) -> Vec<&'a str> {
    argv(
        "index --model {} --data {} --limit {} --out {} --shard-size 4 --rank 4 \
         --max-tokens 256 --threads 1",
        &[model, data, limit, out],
    )
}

#[test]
fn killed_index_resumes_to_the_same_store_as_an_uninterrupted_run() {
    let (dir, model) = tiny_scratch("resume", 128, 4, 1);
    let data = asset("train.jsonl");

    // Reference: one uninterrupted run.
    let full = dir.arg("full");
    run_ok(&index_args(&model, &full, &data, "80"));

    // Kill the run several times at different points, then let it finish.
    let out = dir.arg("killed");
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
}

#[test]
fn store_refuses_other_model_or_projection() {
    let dir = scratch("refuse");
    let m1 = tiny_model(&dir.join("m1"), 32, 1, 1);
    let m2 = tiny_model(&dir.join("m2"), 32, 1, 2);
    let out = dir.arg("store");
    let data = asset("train.jsonl");
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

    let probe = asset("probe.jsonl");
    let o = bin()
        .args(argv(
            "score --store {} --queries {} --model {}",
            &[&out, &probe, &m2],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("model.sha256"), "{err}");
}

/// `--truncate`: a middle store records its policy (manifest and run.json) and reports what it
/// cut; a store without the field (made before the option) is `left`: it scores, and it resumes
/// with `--truncate left` but not with the new default.
#[test]
fn truncation_policy_is_recorded_reported_and_old_stores_still_score() {
    let (dir, model) = tiny_scratch("truncate", 32, 1, 1);
    let data = asset("train.jsonl");
    let probe = asset("probe.jsonl");
    let mid = dir.arg("middle");
    let out = run_ok(&index_args(&model, &mid, &data, "8"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One token per byte: every bundled NI sample is over 256 tokens.
    let rows = inflow::store::read_samples(&Path::new(&mid).join("samples.parquet")).unwrap();
    let cut: u32 = rows.iter().map(|r| r.prompt_tokens_cut).sum();
    assert!(rows.iter().all(|r| r.truncated && r.n_tokens == 256));
    assert!(
        stdout.contains(&format!(
            "8 of 8 samples over --max-tokens 256: {} prompt tokens cut from the middle (--truncate middle), 0 response tokens",
            inflow::data::tokens::thousands(cut as usize)
        )),
        "{stdout}"
    );
    let m = manifest(Path::new(&mid)).unwrap();
    assert_eq!(m["spec"]["data"]["truncate"], "middle");
    let run_path = Path::new(&mid).join("run.json");
    let mut run = read_json(&run_path);
    assert_eq!(run["features"]["truncate"], "middle");
    let score = |store: &str| {
        run_ok(&argv(
            "score --store {} --queries {} --top-k 2 --threads 1 --force",
            &[store, &probe],
        ))
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
        .args(argv(
            "index --model {} --data {} --out {} --truncate start",
            &[&model, &data, &arg(&dir.join("x"))],
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("unknown truncation `start`"),
        "{err}"
    );

    // `left` writes no field: its specs are those of stores made before the option.
    let left = dir.arg("left");
    let mut args = index_args(&model, &left, &data, "8");
    args.extend(["--truncate", "left"]);
    let out = run_ok(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("cut from the start (--truncate left)"));
    let m = manifest(Path::new(&left)).unwrap();
    assert!(m["spec"]["data"].get("truncate").is_none(), "{m}");
    let lrun = read_json(&Path::new(&left).join("run.json"));
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
}

#[test]
fn malformed_line_is_named_and_skip_bad_counts_it() {
    let (dir, model) = tiny_scratch("bad", 32, 1, 1);
    let data = dir.join("d.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"a\", \"input\": \"\", \"output\": \"b\"}\n{\"instruction\": \"a\", \"input\": \"\"}\n{\"instruction\": \"c\", \"input\": \"\", \"output\": \"d\"}\n",
    )
    .unwrap();
    let data = data.display().to_string();
    let out = dir.arg("s");
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
    let v = json(&run_ok(&args));
    assert_eq!(v["summary"]["n_samples"], 2);
    assert_eq!(v["summary"]["n_skipped_bad"], 1);
}

/// The end-to-end check, on the reference model: 200 training samples indexed, 20 of
/// them used as queries; cosine top-1 must be the sample itself for at least 19 of 20.
#[test]
fn reference_model_cosine_finds_each_sample_itself() {
    let model = arg(&smollm2());
    let dir = scratch("selfret");
    let lines: Vec<String> = std::fs::read_to_string(asset("train.jsonl"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let queries: Vec<&str> = (0..20).map(|i| lines[i * 10 + 3].as_str()).collect();
    let qpath = dir.join("queries.jsonl");
    std::fs::write(&qpath, queries.join("\n") + "\n").unwrap();
    let out = dir.arg("store");
    run_ok(&argv(
        "index --model {} --data {} --limit 200 --out {} --rank 8 --max-tokens 128 \
         --shard-size 50",
        &[&model, &asset("train.jsonl"), &out],
    ));
    let scores = dir.arg("top.parquet");
    let v = json(&run_ok(&argv(
        "score --store {} --queries {} --method cosine --top-k 5 --out {} --json",
        &[&out, &arg(&qpath), &scores],
    )));
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
        python(&script, &[]);
    } else {
        eprintln!("numpy/pyarrow absent: skipped the Python read check");
    }
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
    let (dir, model) = tiny_scratch("probe", 32, 2, 4);
    let probes = asset("probe-tasks.jsonl");
    let data = asset("train.jsonl");
    let icp = dir.arg("icp");
    let one = dir.arg("one");
    let probe = |method: &str, out: &str| {
        run_ok(&argv(
            "probe --model {} --data {} --limit 6 --probes {} --probe-tasks 2 --method {} \
             --out {} --shard-size 4 --max-tokens 128 --json",
            &[&model, &data, &probes, method, out],
        ))
    };
    let v = json(&probe("icp", &icp));
    assert_eq!(v["n_probes"], 8);
    let first = std::fs::read(Path::new(&icp).join("features-00000.npy")).unwrap();
    // Rerunning the finished command changes nothing.
    probe("icp", &icp);
    assert_eq!(
        first,
        std::fs::read(Path::new(&icp).join("features-00000.npy")).unwrap()
    );
    probe("one-step", &one);

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
    let v = json(&run_ok(&argv(
        "compare {} {} --plot {} --k 3 --json",
        &[
            &format!("{icp}/scores.parquet"),
            &format!("{one}/scores.parquet"),
            &arg(&plot),
        ],
    )));
    assert_eq!(v["n_common"], 6);
    assert_eq!(v["keys"], "train_id");
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // RepSim: identical text has identical hidden states, so each sample retrieves itself.
    let store = dir.arg("store");
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
        let v = json(&run_ok(&argv(
            "score --store {} --queries {} --method {} --top-k 1 --json --out {}",
            &[
                &store,
                &arg(&q),
                method,
                &arg(&dir.join(format!("{method}.parquet"))),
            ],
        )));
        for qv in v["queries"].as_array().unwrap() {
            assert_eq!(qv["query_id"], qv["top"][0]["train_id"], "{method}");
            assert!((qv["top"][0]["score"].as_f64().unwrap() - 1.0).abs() < 1e-3);
        }
    }
}

/// `fit --fisher true` indexes sampled-label draws beside the store, records them, and every
/// preconditioner then uses them: exact influence changes from the empirical Fisher's, the
/// output says which Fisher it used, and a rerun reuses the draws.
#[test]
fn fit_true_fisher_indexes_draws_that_the_preconditioners_use() {
    let (dir, model) = tiny_scratch("fisher", 16, 2, 4);
    let store = dir.join("s");
    let s = store.display().to_string();
    let data = asset("train.jsonl");
    let probes = asset("probe-tasks.jsonl");
    run_ok(&argv(
        "index --model {} --data {} --limit 40 --out {} --projection full \
         --modules layers.1.mlp.down_proj --shard-size 16 --max-tokens 96 --dtype f32",
        &[&model, &data, &s],
    ));
    let score = |name: &str| -> (Vec<f32>, String) {
        let npy = dir.join(format!("{name}.npy"));
        let out = dir.join(format!("{name}.parquet"));
        run_ok(&argv(
            "score --store {} --queries {} --limit 3 --method influence --preconditioner exact \
             --full {} --out {} --json",
            &[&s, &probes, &arg(&npy), &arg(&out)],
        ));
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
        json(&run_ok(&a))
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
}
