//! Compact stores end to end on a tiny model: `store compress` to int8 and bits, scoring with
//! queries mapped by the store's projection, `--rerank` on the parent, queries given as a
//! store, and the refusals (missing parent, another seed, influence on a compact store).

mod common;

use common::{
    arg, argv, asset, dense, fails, index_train_and_probes, json, run_ok, tiny_index, tiny_scratch,
};
use std::path::Path;

/// Per query, (train id, score) in rank order, from a top-k parquet file.
fn topk(path: &Path) -> Vec<Vec<(String, f64)>> {
    let (cols, _) = inflow::scores::table::read_table(path).unwrap();
    let col = |n: &str| cols.iter().find(|c| c.0 == n).unwrap().1.clone();
    let (q, t, s) = (col("query_id"), col("train_id"), col("score"));
    let (q, t) = (q.as_str().unwrap().to_vec(), t.as_str().unwrap().to_vec());
    let s = s.as_f64().unwrap();
    let mut out: Vec<Vec<(String, f64)>> = Vec::new();
    let mut last = None;
    for i in 0..q.len() {
        if last.as_ref() != Some(&q[i]) {
            out.push(Vec::new());
            last = Some(q[i].clone());
        }
        out.last_mut().unwrap().push((t[i].clone(), s[i]));
    }
    out
}

#[test]
fn compact_stores_score_rerank_to_the_exact_top_k_and_refuse_bad_input() {
    let (dir, model) = tiny_scratch("compact", 32, 2, 3);
    let (store, qstore) = (dir.arg("store"), dir.arg("queries"));
    index_train_and_probes(&model, 8, (&store, 40), (&qstore, 6));
    let (index, train, probes) = (
        tiny_index(8),
        asset("train.jsonl"),
        asset("probe-tasks.jsonl"),
    );

    // Queries from their store score exactly as queries computed from the file.
    let score = |s: &str,
                 q: &str,
                 name: &str,
                 extra: &str|
     -> (Vec<Vec<(String, f64)>>, Vec<f32>) {
        let (out, full) = (
            dir.join(format!("{name}.parquet")),
            dir.join(format!("{name}.npy")),
        );
        let line = format!("score --store {{}} --queries {{}} --limit 6 --top-k 5 --out {{}} --full {{}} --json {extra}");
        run_ok(&argv(&line, &[s, q, &arg(&out), &arg(&full)]));
        (topk(&out), dense(&full))
    };
    let (exact, exact_full) = score(&store, &probes, "exact", "");
    let (from_store, from_store_full) = score(&store, &qstore, "from-store", "");
    assert_eq!(from_store, exact);
    assert_eq!(from_store_full, exact_full);
    assert_eq!(exact.len(), 6);

    // Compress: projected int8 and bits, and int8 at full dimension.
    let dim = inflow::store::Store::open(Path::new(&store)).unwrap().dim();
    for (name, extra) in [
        ("c-int8", "--dim 64 --dtype int8"),
        ("c-bit", "--dim 64 --dtype bit"),
        ("c-full", "--dtype int8"),
    ] {
        let out = dir.arg(name);
        let line = format!("store compress --store {{}} --out {{}} --shard-size 16 --json {extra}");
        let v = json(&run_ok(&argv(&line, &[&store, &out])));
        assert_eq!(v["rows"], 40, "{v}");
        let bytes = v["bytes_per_row"].as_u64().unwrap() as usize;
        let want = match name {
            "c-int8" => 64 + 4,
            "c-bit" => 8,
            _ => dim + 4,
        };
        assert_eq!(bytes, want, "{name}: {v}");
    }
    // Scores on the compact stores follow the exact ones: int8 at full dimension closely,
    // the 64-dimensional projection roughly (JL at k = 64).
    let corr = |a: &[f32], b: &[f32]| -> f64 {
        let n = a.len() as f64;
        let (ma, mb) = (
            a.iter().map(|&x| x as f64).sum::<f64>() / n,
            b.iter().map(|&x| x as f64).sum::<f64>() / n,
        );
        let cov: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - ma) * (y as f64 - mb))
            .sum();
        let va: f64 = a.iter().map(|&x| (x as f64 - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|&y| (y as f64 - mb).powi(2)).sum();
        cov / (va * vb).sqrt()
    };
    let (full_int8, f) = score(&dir.arg("c-full"), &qstore, "s-full", "");
    assert!(corr(&f, &exact_full) > 0.999, "{}", corr(&f, &exact_full));
    assert_eq!(full_int8[0][0].0, exact[0][0].0);
    for name in ["c-int8", "c-bit"] {
        let (_, f) = score(&dir.arg(name), &qstore, &format!("s-{name}"), "");
        let r = corr(&f, &exact_full);
        assert!(r > 0.5, "{name}: correlation with exact scores {r}");
        // Rerank over every row: exactly the parent's top-k, ids and scores.
        let (rr, _) = score(
            &dir.arg(name),
            &qstore,
            &format!("rr-{name}"),
            "--rerank 40",
        );
        for (a, b) in rr.iter().zip(&exact) {
            let ids = |v: &[(String, f64)]| v.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
            assert_eq!(ids(a), ids(b), "{name}");
            for (x, y) in a.iter().zip(b) {
                assert!((x.1 - y.1).abs() < 1e-5, "{name}: {} vs {}", x.1, y.1);
            }
        }
    }
    // `index --dtype int8` writes the same element type directly (no projection).
    let direct = dir.arg("index-int8");
    run_ok(&argv(
        &format!("{index} --dtype int8"),
        &[&model, &train, "40", &direct],
    ));
    let (_, f) = score(&direct, &qstore, "index-int8", "");
    assert!(corr(&f, &exact_full) > 0.999, "{}", corr(&f, &exact_full));
    // The query file works on a compact store too (features computed, then projected).
    let (from_file, _) = score(&dir.arg("c-int8"), &probes, "c-int8-file", "");
    let (from_qstore, _) = score(&dir.arg("c-int8"), &qstore, "c-int8-qstore", "");
    assert_eq!(from_file, from_qstore);

    // Refusals, each naming what is wrong.
    let c = dir.arg("c-int8");
    let msg = fails(&argv(
        "store compress --store {} --out {} --dim 64 --seed 9",
        &[&store, &c],
    ));
    assert!(
        msg.contains("projection_seed: store has 0, this run asks for 9"),
        "{msg}"
    );
    let msg = fails(&argv(
        "score --store {} --queries {} --method repsim",
        &[&c, &qstore],
    ));
    assert!(
        msg.contains("compact store") && msg.contains("hidden-state"),
        "{msg}"
    );
    // Influence: the parent's curvature preconditions the query, the compact rows score it,
    // and --rerank gives the parent's exact EK-FAC top-k.
    let msg = fails(&argv(
        "score --store {} --queries {} --method ekfac",
        &[&c, &qstore],
    ));
    assert!(msg.contains("fit"), "{msg}");
    run_ok(&["fit", "--store", &store]);
    let (ekfac, ekfac_full) = score(&store, &qstore, "ekfac", "--method ekfac");
    let (_, f) = score(&c, &qstore, "ekfac-c", "--method ekfac");
    let r = corr(&f, &ekfac_full);
    assert!(r > 0.5, "compact EK-FAC vs exact: {r}");
    let (rr, _) = score(&c, &qstore, "ekfac-rr", "--method ekfac --rerank 40");
    for (a, b) in rr.iter().zip(&ekfac) {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(x.0, y.0);
            assert!(
                (x.1 - y.1).abs() <= 1e-4 * y.1.abs().max(1e-3),
                "{} vs {}",
                x.1,
                y.1
            );
        }
    }
    let msg = fails(&argv(
        "score --store {} --queries {} --rerank 10",
        &[&store, &qstore],
    ));
    assert!(msg.contains("not compact"), "{msg}");
    let other = dir.arg("other-queries");
    run_ok(&argv(
        "index --model {} --data {} --limit 6 --out {} --rank 2 --max-tokens 96 --threads 1",
        &[&model, &probes, &other],
    ));
    let msg = fails(&argv("score --store {} --queries {}", &[&store, &other]));
    assert!(msg.contains("query store") && msg.contains("rank"), "{msg}");
    std::fs::rename(&store, dir.join("moved")).unwrap();
    let msg = fails(&argv(
        "score --store {} --queries {} --rerank 10",
        &[&c, &qstore],
    ));
    assert!(msg.contains("parent") && msg.contains("not there"), "{msg}");
    // Without --rerank the compact store needs no parent.
    score(&c, &qstore, "no-parent", "");
    // A damaged shard is named, with what it should hold.
    let shard = Path::new(&c).join("features-00001.npy");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let msg = fails(&argv("score --store {} --queries {}", &[&c, &qstore]));
    assert!(
        msg.contains("features-00001.npy") && msg.contains("truncated"),
        "{msg}"
    );
}
