//! Output safety: an output that is an input of the same command, or a file a store owns, is
//! refused before any work, and the files present before are left unchanged.

mod common;

use std::path::Path;

use common::*;

fn bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A scratch folder with a tiny model (seeded) and a copy of the bundled training data, the
/// user's own file that no command may replace.
fn scratch_with_data(
    name: &str,
    seed: u64,
) -> (inflow_testkit::Scratch, String, std::path::PathBuf) {
    let (dir, model) = tiny_scratch(name, 32, 2, seed);
    let data = dir.join("d.jsonl");
    std::fs::copy(inflow_testkit::asset("train.jsonl"), &data).unwrap();
    (dir, model, data)
}

#[test]
fn outputs_over_inputs_or_store_files_are_refused_and_nothing_changes() {
    let (dir, model, data) = scratch_with_data("outputs", 3);
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

/// The bytes of every file under `dir` (recursively), by path: to show a refused command
/// changed nothing.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push((p.clone(), bytes(&p)));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn earlier_results_need_force_partial_scores_and_bad_rows_are_refused() {
    let (dir, model, data) = scratch_with_data("outputs-force", 4);
    let (d, store, q) = (arg(&data), dir.arg("store"), asset("probe.jsonl"));
    let index = "index --model {} --data {} --limit 6 --out {} --shard-size 4 --rank 2 --dtype f32 --threads 1";
    run_ok(&argv(index, &[&model, &d, &store]));
    let (mean, top, m2) = (
        dir.arg("mean.parquet"),
        dir.arg("top.jsonl"),
        dir.arg("m.parquet"),
    );
    let score_mean = "score --store {} --queries {} --limit 2 --aggregate mean --out {}";
    run_ok(&argv(score_mean, &[&store, &q, &mean]));
    let select = "select --scores {} --size 2 --data {} --out {}";
    run_ok(&argv(select, &[&mean, &d, &top]));
    let part = dir.arg("part.parquet");
    let mut one_part = argv(score_mean, &[&store, &q, &part]);
    one_part.extend(["--part", "0/1"]);
    run_ok(&one_part);
    let merge = "scores merge {} --out {}";
    run_ok(&argv(merge, &[&part, &m2]));
    let plot = dir.arg("plot.png");
    let compare = "compare {} {} --plot {}";
    run_ok(&argv(compare, &[&mean, &m2, &plot]));
    let hf = dir.arg("hf");
    run_ok(&argv("convert --model {} --out {}", &[&model, &hf]));
    let answers = dir.arg("answers.jsonl");
    let generate = "generate --model {} --prompts {} --limit 1 --max-new 2 --out {}";
    run_ok(&argv(generate, &[&model, &q, &answers]));

    // A per-train score file of rows 0, 1 and 3 only (row 2 missing): a part of the data.
    let partial = dir.join("partial.parquet");
    let ids = store_ids(&dir.join("store"));
    let some = [ids[0].clone(), ids[1].clone(), ids[3].clone()];
    inflow::scores::write_per_train_parquet(
        &partial,
        &some,
        &[1.0, 2.0, 3.0],
        1,
        "cosine",
        "x",
        "mean",
        None,
    )
    .unwrap();
    let partial = arg(&partial);
    let new_out = dir.arg("new.jsonl");

    // Each refused command line, and what its message must name.
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            argv(score_mean, &[&store, &q, &mean]),
            &["--out", "mean.parquet", "--force"],
        ),
        (
            argv(select, &[&mean, &d, &top]),
            &["--out", "top.jsonl", "--force"],
        ),
        (
            argv(merge, &[&part, &m2]),
            &["--out", "m.parquet", "--force"],
        ),
        (
            argv(compare, &[&mean, &m2, &plot]),
            &["--plot", "plot.png", "--force"],
        ),
        (
            argv("convert --model {} --out {}", &[&model, &hf]),
            &["--out", "not empty", "--force"],
        ),
        (
            argv(generate, &[&model, &q, &answers]),
            &["--out", "answers.jsonl", "--force", "--resume"],
        ),
        (
            argv(
                "select --scores {} --size 1 --data {} --out {}",
                &[&partial, &d, &new_out],
            ),
            &["partial.parquet", "only part", "row 2"],
        ),
    ];
    let before = snapshot(&dir);
    for (args, want) in &cases {
        let e = fails(args);
        // One line says it all (progress lines may come before).
        let said: Vec<&str> = e.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(
            said.len() == 1 && e.ends_with(&format!("{}\n", said[0])),
            "{args:?}: {e}"
        );
        assert!(want.iter().all(|w| said[0].contains(w)), "{args:?}: {e}");
    }
    assert!(snapshot(&dir) == before, "a refused command changed a file");

    // With --force the earlier result is replaced.
    let again = argv(
        "select --scores {} --size 3 --data {} --out {} --force",
        &[&mean, &d, &top],
    );
    run_ok(&again);
    assert_eq!(std::fs::read_to_string(&top).unwrap().lines().count(), 3);
    let mut again = argv(merge, &[&part, &m2]);
    again.push("--force");
    run_ok(&again);

    // Another tool's damage: a NaN in row 1 of the f32 store is refused at score time,
    // naming the row, not dropped from the ranking.
    let f0 = dir.join("store").join("features-00000.npy");
    let original = bytes(&f0);
    let mut raw = original.clone();
    let dim = (raw.len() - 128) / 4 / 4;
    let at = 128 + (dim + 3) * 4;
    raw[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&f0, &raw).unwrap();
    let nan_out = dir.arg("nan.parquet");
    let e = fails(&argv(
        "score --store {} --queries {} --limit 2 --out {}",
        &[&store, &q, &nan_out],
    ));
    assert!(
        e.contains("row 1 (sample") && e.contains("not finite"),
        "{e}"
    );
    assert!(!dir.join("nan.parquet").exists());

    // A shard whose header disagrees with the manifest (same size) is written again on resume.
    let text = bytes(&f0);
    let want = format!("({}, {})", 4, dim);
    let pos = text
        .windows(want.len())
        .position(|w| w == want.as_bytes())
        .unwrap();
    let mut bad = text.clone();
    bad[pos..pos + want.len()].copy_from_slice(format!("(1, {dim})").as_bytes());
    std::fs::write(&f0, &bad).unwrap();
    run_ok(&argv(index, &[&model, &d, &store]));
    assert!(
        bytes(&f0) == original,
        "the bad shard was not written again"
    );
    let fixed = dir.arg("fixed.parquet");
    run_ok(&argv(
        "score --store {} --queries {} --limit 2 --out {}",
        &[&store, &q, &fixed],
    ));
}
