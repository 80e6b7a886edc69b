//! Output safety: an output that is an input of the same command, or a file a store owns, is
//! refused before any work, and the files present before are left unchanged.

mod common;

use std::path::Path;

use common::*;

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn outputs_over_inputs_or_store_files_are_refused_and_nothing_changes() {
    let (dir, model) = tiny_scratch("outputs", 32, 2, 3);
    let data = dir.join("d.jsonl");
    std::fs::copy(inflow_testkit::asset("train.jsonl"), &data).unwrap();
    let (d, store, q) = (arg(&data), dir.arg("store"), asset("probe.jsonl"));
    run_ok(&argv(
        "index --model {} --data {} --limit 6 --out {} --shard-size 4 --rank 2 --threads 1",
        &[&model, &d, &store],
    ));
    let scores = dir.arg("s.parquet");
    run_ok(&argv(
        "score --store {} --queries {} --limit 2 --aggregate mean --out {}",
        &[&store, &q, &scores],
    ));
    let store_dir = dir.join("store");
    let watched = [
        data.clone(),
        store_dir.join("manifest.json"),
        store_dir.join("features-00000.npy"),
        store_dir.join("samples.parquet"),
        dir.join("s.parquet"),
    ];
    let before: Vec<Vec<u8>> = watched.iter().map(|p| bytes(p)).collect();
    let manifest = arg(&store_dir.join("manifest.json"));
    let features = arg(&store_dir.join("features-00000.npy"));
    // Each refused command line and what its error must say.
    let select = "select --scores {} --size 2 --data {} --out {}";
    let score = "score --store {} --queries {} --limit 2 --out {}";
    let score_full = "score --store {} --queries {} --limit 2 --full {}";
    let generate = "generate --model {} --prompts {} --out {}";
    let (input, owned) = ("also an input", "belongs to the store");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (argv(select, &[&scores, &d, &d]), input),
        (argv(select, &[&scores, &d, &scores]), input),
        (argv(score, &[&store, &q, &manifest]), owned),
        (argv(score_full, &[&store, &q, &features]), owned),
        (argv(score, &[&store, &d, &d]), input),
        (argv(score, &[&store, &q, &store]), "is a folder"),
        (argv(generate, &[&model, &d, &d]), input),
    ];
    for (args, want) in &cases {
        let e = fails(args);
        assert!(e.contains(want) && e.contains("--"), "{args:?}: {e}");
    }
    for (p, b) in watched.iter().zip(&before) {
        assert!(&bytes(p) == b, "{} changed", p.display());
    }
    // The default score file inside the store is the command's own, and allowed.
    run_ok(&argv(
        "score --store {} --queries {} --limit 2",
        &[&store, &q],
    ));
}
