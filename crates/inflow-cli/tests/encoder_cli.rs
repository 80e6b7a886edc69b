//! The amortized encoder end to end on a tiny model: `encoder train` (resumed bit for bit),
//! `encode` into an ordinary store that `score` uses unchanged (queries through the same
//! encoder, equal to cosines of the encoded features), the `encoder` method, and the
//! refusals (a teacher too small, a query store of other settings, another model, a store
//! of another encoder), none of which writes anything; and the encoder as a method of
//! `eval selection`.

mod common;

use common::{
    arg, argv, asset, dense, fails, index_train_and_probes, json, run_ok, store_ids, tiny_index,
    tiny_model, tiny_scratch,
};

/// Every row of a complete store as f32.
fn rows(dir: &std::path::Path) -> (Vec<f32>, usize) {
    let s = inflow::store::Store::open(dir).unwrap();
    let mut v = Vec::new();
    for i in 0..s.n_shards() {
        v.extend(s.shard_features(i).unwrap().0);
    }
    (v, s.dim())
}

#[test]
fn encoder_train_encode_and_score_end_to_end_with_refusals() {
    let (dir, model) = tiny_scratch("encoder-cli", 32, 3, 5);
    let (teacher, qstore) = (dir.arg("teacher"), dir.arg("qstore"));
    index_train_and_probes(&model, 16, (&teacher, 64), (&qstore, 32));
    let (train, probes) = (asset("train.jsonl"), asset("probe-tasks.jsonl"));

    let enc = dir.arg("enc");
    let line = "encoder train --teacher {} --queries {} --query-store {} --out {} --layers 2 \
                --hidden 32 --dim 16 --steps 30 --batch 16 --in-batch 16 --hard 8 --lr 0.01 \
                --checkpoint-every 10 --seed {} --threads 1 --json";
    let s = json(&run_ok(&argv(
        line,
        &[&teacher, &probes, &qstore, &enc, "1"],
    )));
    assert_eq!(s["steps"], 30);
    assert_eq!(s["finished"], true);
    let m = &s["metrics"];
    for k in [
        "encoder",
        "untrained-head",
        "truncated-model",
        "repsim-last",
        "repsim-mean",
    ] {
        assert!(m["held_out_samples"][k]["spearman"].is_number(), "{k}: {m}");
        assert!(m["held_out_queries"][k]["top10"].is_number(), "{k}: {m}");
    }
    let head = std::fs::read(dir.join("enc/head.safetensors")).unwrap();
    // The same command again resumes at the last checkpoint and ends with the same head.
    let again = json(&run_ok(&argv(
        line,
        &[&teacher, &probes, &qstore, &enc, "1"],
    )));
    assert_eq!(again["resumed_from"], 30);
    assert_eq!(
        std::fs::read(dir.join("enc/head.safetensors")).unwrap(),
        head
    );
    // Other settings into the same folder are refused, naming the field.
    let err = fails(&argv(line, &[&teacher, &probes, &qstore, &enc, "2"]));
    assert!(
        err.contains("other settings") && err.contains("seed"),
        "{err}"
    );

    // encode: an ordinary store whose manifest names the encoder.
    let (store, qenc) = (dir.arg("store"), dir.arg("qenc"));
    let encode = "encode --encoder {} --data {} --limit {} --out {} --dtype f32 --shard-size 16 \
                  --threads 1";
    run_ok(&argv(encode, &[&enc, &train, "64", &store]));
    run_ok(&argv(encode, &[&enc, &probes, "6", &qenc]));
    let man = common::manifest(&dir.join("store")).unwrap();
    assert_eq!(man["spec"]["features"]["kind"], "encoder");
    assert_eq!(man["spec"]["dim"], 16);
    assert!(man["spec"]["features"]["encoder"]["head_sha256"].is_string());
    // encode --shard: two part stores that merge into the same store, file for file.
    let (p0, p1, merged) = (dir.arg("enc-p0"), dir.arg("enc-p1"), dir.arg("enc-merged"));
    for (i, p) in [(0, &p0), (1, &p1)] {
        let mut a = argv(encode, &[&enc, &train, "64", p]);
        let part = format!("{i}/2");
        a.extend(["--shard", part.as_str()]);
        run_ok(&a);
    }
    run_ok(&argv("store merge {} {} --out {}", &[&p1, &p0, &merged]));
    for f in [
        "features-00000.npy",
        "features-00003.npy",
        "norms-00002.npy",
        "samples.parquet",
    ] {
        assert!(
            std::fs::read(dir.join("store").join(f)).unwrap()
                == std::fs::read(dir.join("enc-merged").join(f)).unwrap(),
            "{f}: merged encode parts differ from one encode"
        );
    }

    // score: queries through the same encoder, equal to the cosines of encoded features.
    let full = dir.join("full.npy");
    let score = "score --store {} --queries {} --limit 6 --top-k 5 --full {} --json --method {}";
    run_ok(&argv(score, &[&store, &probes, &arg(&full), "cosine"]));
    let got = dense(&full);
    let (t, d) = rows(&dir.join("store"));
    let (q, _) = rows(&dir.join("qenc"));
    let n = t.len() / d;
    let cos = |a: &[f32], b: &[f32]| {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    };
    for i in 0..6 {
        for j in 0..n {
            let want = cos(&q[i * d..(i + 1) * d], &t[j * d..(j + 1) * d]);
            assert!(
                (got[i * n + j] - want).abs() < 1e-4,
                "{i},{j}: {} vs {want}",
                got[i * n + j]
            );
        }
    }
    // The `encoder` method and a query store of encoder features give the same scores.
    let full2 = dir.join("full2.npy");
    run_ok(&argv(score, &[&store, &qenc, &arg(&full2), "encoder"]));
    let got2 = dense(&full2);
    assert!(got.iter().zip(&got2).all(|(a, b)| (a - b).abs() < 1e-5));
    let full3 = dir.join("full3.npy");
    let err = fails(&argv(score, &[&teacher, &probes, &arg(&full3), "encoder"]));
    assert!(err.contains("inflow encode"), "{err}");

    // A store of another encoder's queries (other seed and pooling) is refused, naming the
    // difference.
    let enc2 = dir.arg("enc2");
    run_ok(&argv(
        &format!("{line} --pooling all"),
        &[&teacher, &probes, &qstore, &enc2, "3"],
    ));
    let qenc2 = dir.arg("qenc2");
    run_ok(&argv(encode, &[&enc2, &probes, "6", &qenc2]));
    let err = fails(&argv(score, &[&store, &qenc2, &arg(&full2), "cosine"]));
    assert!(err.contains("head_sha256"), "{err}");

    // bench encode: index and encode on the same samples, each pass reported.
    let b = json(&run_ok(&argv(
        "bench encode --encoder {} --data {} --limit 4 --rounds 1 --scratch {} --threads 1 --json",
        &[&enc, &train, &dir.arg("bench")],
    )));
    let passes = b["passes"].as_array().unwrap();
    assert_eq!(passes.len(), 2);
    assert!(passes
        .iter()
        .all(|p| p["samples"] == 4 && p["tokens"].as_u64().unwrap() > 0));
    assert_eq!(b["encode_bytes_per_sample"], 16.0 * 2.0 + 4.0);
    assert!(b["speedup"].as_f64().unwrap() > 0.0);
    assert!(!dir.join("bench").exists());

    // Bad input: one line, nothing written.
    let small = dir.arg("small");
    run_ok(&argv(&tiny_index(16), &[&model, &train, "8", &small]));
    let err = fails(&argv(
        line,
        &[&small, &probes, &qstore, &dir.arg("enc-small"), "1"],
    ));
    assert!(
        err.contains("at least 32") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert!(!dir.join("enc-small").exists());
    let other_q = dir.arg("qother");
    run_ok(&argv(
        "index --model {} --data {} --limit 32 --out {} --rank 2 --max-tokens 96 --threads 1",
        &[&model, &probes, &other_q],
    ));
    let err = fails(&argv(
        line,
        &[&teacher, &probes, &other_q, &dir.arg("enc-q"), "1"],
    ));
    assert!(
        err.contains("rank_in") || err.contains("projection"),
        "{err}"
    );
    assert!(!dir.join("enc-q").exists());
    let other = tiny_model(&dir.join("other-model"), 32, 3, 99);
    let err = fails(&argv(
        "encode --encoder {} --model {} --data {} --limit 8 --out {}",
        &[&enc, &other, &train, &dir.arg("enc-other")],
    ));
    assert!(err.contains("was trained on model"), "{err}");
    assert!(!dir.join("enc-other").exists());
}

#[test]
fn eval_selection_selects_by_an_encoder_distilled_from_the_pool_store() {
    let (dir, model) = tiny_scratch("encoder-selection", 32, 2, 5);
    let (pool, targets, test) = (
        asset("train.jsonl"),
        asset("probe.jsonl"),
        asset("probe-tasks.jsonl"),
    );
    let store = dir.arg("pool-store");
    run_ok(&argv(&tiny_index(16), &[&model, &pool, "40", &store]));
    let out = dir.join("sel");
    let r = json(&run_ok(&argv(
        "eval selection --model {} --pool {} --pool-limit 40 --targets {} --test {} \
         --test-limit 4 --size 8 --methods cosine,encoder --store {} --out {} --no-base \
         --max-new-tokens 2 --max-tokens 96 --batch-size 4 --lr 1e-2 --encoder-layers 1 \
         --encoder-hidden 16 --encoder-dim 8 --encoder-steps 20 --threads 1 --json",
        &[&model, &pool, &targets, &test, &store, &arg(&out)],
    )));
    let summary = r["summary"].as_array().unwrap();
    for m in ["cosine", "encoder"] {
        let s = summary.iter().find(|s| s["method"] == m).unwrap();
        assert_eq!(s["n_train"], 8, "{s}");
        assert!(s["loss"]["mean"].as_f64().unwrap().is_finite(), "{s}");
    }
    // The encoder was distilled from the pool's store, all its steps.
    let notes: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("methods.json")).unwrap()).unwrap();
    let d = &notes["encoder_distillation"];
    assert_eq!(d["training"]["steps"], 20, "{d}");
    assert_eq!(d["teacher"], store.as_str());
    // Its selection is the top 8 by the mean `encoder` score against the targets on the
    // encoded pool, as `score` computes it.
    let full = dir.join("enc-full.npy");
    run_ok(&argv(
        "score --store {} --queries {} --method encoder --top-k 1 --full {} --threads 1 --json",
        &[&arg(&out.join("distil/store")), &targets, &arg(&full)],
    ));
    let scores = dense(&full);
    let (n, nq) = (40, scores.len() / 40);
    let mean: Vec<f64> = (0..n)
        .map(|j| (0..nq).map(|q| scores[q * n + j] as f64).sum::<f64>() / nq as f64)
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| mean[b].total_cmp(&mean[a]));
    let ids = store_ids(&out.join("distil/store"));
    let mut want: Vec<&str> = order[..8].iter().map(|&i| ids[i].as_str()).collect();
    let mut got: Vec<&str> = notes["selected"]["encoder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    want.sort_unstable();
    got.sort_unstable();
    assert!(mean[order[7]] - mean[order[8]] > 1e-6, "a tie at the cut");
    assert_eq!(got, want);
}
