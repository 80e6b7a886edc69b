//! `inflow eval planted` end to end on a tiny random model: the planted set, fine-tuning,
//! features, every method's scores and the report, for a backdoor and for flipped labels;
//! and the amortized encoder distilled from the mix's store inside the experiment.

mod common;

use common::{arg, argv, dense, json, jsonl, manifest, read_json, run, run_ok, tiny_scratch};
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
         --max-tokens 48 --generate 1 --threads 1 --json --until epochs --force-retrieval \
         --lora-rank 8 --lora-modules q,v",
        &[&model, &data],
    );
    let r = planted(
        "--kind backdoor --methods dot,cosine,less,kfac,ekfac,datainf,repsim",
        &out,
        &shared,
    );
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
    // A rerun reuses the fine-tuning run and the store and gives the same metrics; with
    // --trajectory it also indexes and scores at the epoch-1 checkpoint, and its last entry is
    // the run's own retrieval.
    let again = planted(
        "--kind backdoor --methods dot,cosine,less,kfac,ekfac,datainf,repsim --trajectory",
        &out,
        &shared,
    );
    assert_eq!(r["metrics"], again["metrics"]);
    let along = again["along_training"].as_array().unwrap();
    assert_eq!(along.len(), 2, "{again}");
    assert_eq!(along[0]["epoch"], 1);
    assert_eq!(along[1]["metrics"], r["metrics"]);
    assert!(
        along[0]["metrics"]["less"].is_null(),
        "less is not rescored per checkpoint"
    );
    let at1 = &along[0]["metrics"]["ekfac"]["cover"];
    assert!((0.0..=1.0).contains(&at1.as_f64().unwrap()), "{at1}");
    let steps: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("store-step-"))
        .collect();
    assert_eq!(steps.len(), 1);
    assert!(out.join("along-cover.png").exists());
    // Its checkpoints are not reused for other fine-tuning settings.
    let other: Vec<&str> = shared
        .iter()
        .map(|a| if *a == "1e-2" { "2e-2" } else { a })
        .collect();
    let o = run(&[
        &["eval", "planted", "--kind", "backdoor", "--out", &arg(&out)][..],
        &other,
    ]
    .concat());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot resume") && err.contains("lr"), "{err}");

    let out = dir.join("mislabel");
    let r = planted("--kind mislabel --methods dot,ekfac", &out, &shared);
    assert_eq!(r["n_planted"], 4);
    for m in ["dot", "ekfac", "loss"] {
        let v = r["metrics"][m]["self_score_auc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{m}: {v}");
    }
}

#[test]
fn planted_backdoor_with_the_encoder_scores_an_encoder_distilled_from_the_mix() {
    let (dir, model) = tiny_scratch("planted-encoder", 32, 2, 3);
    let data = arg(&pool(&dir));
    let out = dir.join("backdoor");
    let shared = argv(
        "--model {} --data {} --n-train 40 --queries 4 --epochs 1 --lr 1e-2 --rank 2 \
         --max-tokens 48 --generate 1 --threads 1 --json --force-retrieval --encoder-layers 1 \
         --encoder-hidden 16 --encoder-dim 8 --encoder-steps 20",
        &[&model, &data],
    );
    let r = planted("--kind backdoor --methods cosine,encoder", &out, &shared);
    let x = &r["metrics"]["encoder"];
    for k in ["acc", "cover", "auc"] {
        let v = x[k].as_f64().unwrap_or_else(|| panic!("encoder.{k}: {x}"));
        assert!((0.0..=1.0).contains(&v), "encoder.{k} = {v}");
    }
    // The encoder was trained (all its steps) on the mix's gradient store, and the store it
    // scored is an encoder store naming that teacher.
    let e = &r["encoder"];
    assert_eq!(e["training"]["steps"], 20, "{e}");
    assert_eq!(e["training"]["finished"], true);
    assert!(e["training"]["metrics"]["held_out_samples"]["encoder"]["spearman"].is_number());
    let man = manifest(&out.join("distil/store")).unwrap();
    assert_eq!(man["spec"]["features"]["kind"], "encoder");
    assert_eq!(man["spec"]["dim"], 8);
    let teacher = std::fs::canonicalize(out.join("store")).unwrap();
    assert_eq!(
        man["spec"]["features"]["encoder"]["teacher"],
        arg(&teacher),
        "{man}"
    );
    // The report's encoder row is the `encoder` method's own scores on that store: `score`
    // on the encoded mix gives the same top-1 and top-k hits per query.
    let full = dir.join("enc-full.npy");
    run_ok(&argv(
        "score --store {} --queries {} --method encoder --top-k 1 --full {} --threads 1 --json",
        &[
            &arg(&out.join("distil/store")),
            &arg(&out.join("queries.jsonl")),
            &arg(&full),
        ],
    ));
    let scores = dense(&full);
    let planted: Vec<bool> = jsonl(&out.join("mix.jsonl"))
        .iter()
        .map(|v| v["planted"] == true)
        .collect();
    let (n, k) = (planted.len(), 4);
    let per_query = x["per_query"].as_array().unwrap();
    assert_eq!(per_query.len(), 4);
    for (q, want) in per_query.iter().enumerate() {
        let row = &scores[q * n..(q + 1) * n];
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let cover = order[..k].iter().filter(|&&i| planted[i]).count() as f64 / k as f64;
        assert_eq!(want[0], planted[order[0]], "query {q}");
        assert!(
            (want[1].as_f64().unwrap() - cover).abs() < 1e-12,
            "query {q}"
        );
    }
}

/// The paper's setting on a model that cannot learn the behaviour (a tiny random one): the run
/// trains epoch by epoch, answers the held-out queries at every checkpoint, and refuses to
/// report retrieval at an attack success under the threshold, naming it and what to do.
#[test]
fn planted_refuses_retrieval_on_a_model_that_does_not_show_the_behaviour() {
    let (dir, model) = tiny_scratch("planted-gate", 32, 2, 3);
    let data = arg(&pool(&dir));
    let out = dir.join("gate");
    let out_arg = arg(&out);
    let a = argv(
        "eval planted --kind backdoor --model {} --data {} --n-train 40 --queries 4 --epochs 2 \
         --lr 1e-2 --lora-rank 4 --rank 2 --max-tokens 48 --generate 3 --threads 1 --methods dot \
         --out {}",
        &[&model, &data, &out_arg],
    );
    let o = run(&a);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("shows the planted backdoor behaviour in 0%")
            && err.contains("--min-attack-success 80%")
            && err.contains("--force-retrieval"),
        "{err}"
    );
    // Both epochs ran (it never fired), each answered the 3 held-out queries; no report.
    let f = read_json(&out.join("fine-tune.json"));
    let per = f["fine_tune"]["attack_success_per_checkpoint"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(per.len(), 2, "{f}");
    assert_eq!(per[1]["epoch"], 2);
    assert_eq!(f["trajectory"][0]["answers"].as_array().unwrap().len(), 3);
    assert!(!out.join("report.json").exists());
    // Over seeds, a seed whose model did not learn is left out of the means; with none left
    // the run fails, saying so.
    let out2 = arg(&dir.join("gate-seeds"));
    let mut seeds = a.clone();
    let at = seeds.iter().position(|x| *x == "--out").unwrap();
    seeds.splice(at..at + 2, ["--seeds", "1,2", "--out", &out2]);
    let o = run(&seeds);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("no seed of [1, 2] gave a model that shows the planted backdoor"),
        "{err}"
    );
    assert!(err.contains("seed 2 left out"), "{err}");
}

/// Class attribution: queries labelled by task, Acc / Cover against the query's own task with
/// k = n / n_tasks, against the reference responses and the model's own answers; two seeds
/// aggregate into mean ± sd.
#[test]
fn planted_class_attribution_over_two_seeds() {
    let (dir, model) = tiny_scratch("planted-class", 32, 2, 3);
    let data = arg(&pool(&dir));
    let out = dir.join("class");
    let r = planted(
        "--kind class --tasks 3 --seeds 1,2 --methods dot,repsim,icp",
        &out,
        &argv(
            "--model {} --data {} --n-train 30 --queries 6 --epochs 1 --lr 1e-2 --lora-rank 4 \
             --rank 2 --max-tokens 48 --threads 1 --json",
            &[&model, &data],
        ),
    );
    assert_eq!(r["seeds"], serde_json::json!([1, 2]));
    // Each seed's own report: 3 tasks, k = 30 / 3, and every non-empty answer used as a query.
    let mut answered = Vec::new();
    for seed in [1, 2] {
        let s = read_json(&out.join(format!("seed-{seed}/report.json")));
        assert_eq!(s["tasks"].as_array().unwrap().len(), 3);
        assert_eq!(s["metrics"]["dot"]["k"], 10, "{s}");
        let gens = s["generations"].as_array().unwrap();
        assert_eq!(gens.len(), 6, "class answers every query");
        let non_empty = gens
            .iter()
            .filter(|g| !g["answer"].as_str().unwrap().trim().is_empty())
            .count();
        assert_eq!(s["n_generated"], non_empty);
        assert_eq!(
            jsonl(&out.join(format!("seed-{seed}/queries-generated.jsonl"))).len(),
            non_empty
        );
        if non_empty > 0 {
            assert!(s["metrics_generated"]["dot"]["cover"].is_number(), "{s}");
        }
        answered.push(non_empty > 0);
        assert_eq!(jsonl(&out.join(format!("seed-{seed}/mix.jsonl"))).len(), 30);
    }
    // dot, repsim and ICP (its resumable work one folder per query set) against the reference
    // responses, and against the answers when the first seed had any; mean and sample sd of
    // the seeds' values.
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), if answered[0] { 6 } else { 3 }, "{r}");
    for row in rows {
        for k in ["acc", "cover", "auc"] {
            let xs: Vec<f64> = row[k]["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                .collect();
            assert_eq!(xs.len(), 2, "{row}");
            if xs.iter().all(|x| x.is_finite()) {
                let (m, sd) = (
                    row[k]["mean"].as_f64().unwrap(),
                    row[k]["sd"].as_f64().unwrap(),
                );
                assert!((m - (xs[0] + xs[1]) / 2.0).abs() < 1e-12);
                assert!(
                    (sd - (xs[0] - xs[1]).abs() / 2f64.sqrt()).abs() < 1e-9,
                    "{row}"
                );
            }
        }
    }
    let a = jsonl(&out.join("seed-1/mix.jsonl"));
    let b = jsonl(&out.join("seed-2/mix.jsonl"));
    assert_ne!(a, b, "seeds draw different records");
}
