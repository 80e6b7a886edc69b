//! Plumbing shared by the end-to-end tests of the `inflow` binary: running it from the
//! repository root, command lines, tiny models and JSON output (paths and scratch folders
//! from `inflow-testkit`).
//! Each test file uses what it needs (`mod common;`), hence `dead_code` is allowed.
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

use inflow_testkit::{root, scratch, Scratch};

/// A bundled data file, `assets/data/{name}`, as an argument.
pub fn asset(name: &str) -> String {
    arg(&inflow_testkit::asset(name))
}

/// A path as an argument.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// Writes a tiny random model (`tiny::write_random`: tied embeddings) at `path`; its path as
/// an argument.
pub fn tiny_model(path: &Path, hidden: usize, layers: usize, seed: u64) -> String {
    inflow::model::tiny::write_random(path, hidden, layers, seed).unwrap();
    arg(path)
}

/// A [`Scratch`] folder holding a tiny random model in `model/` ([`tiny_model`]), and the
/// model as an argument: where most tests start.
pub fn tiny_scratch(name: &str, hidden: usize, layers: usize, seed: u64) -> (Scratch, String) {
    let dir = scratch(name);
    let model = tiny_model(&dir.join("model"), hidden, layers, seed);
    (dir, model)
}

/// A command line's words: `line` split at white space, each `{}` replaced by the next of
/// `values` (paths, which may hold spaces), e.g. `argv("index --model {} --limit 8", &[&m])`.
pub fn argv<'a>(line: &'a str, values: &[&'a str]) -> Vec<&'a str> {
    let mut v = values.iter();
    let words = line
        .split_whitespace()
        .map(|w| match w {
            "{}" => *v
                .next()
                .unwrap_or_else(|| panic!("too few values for `{line}`")),
            w => w,
        })
        .collect();
    assert!(v.next().is_none(), "more values than {{}} in `{line}`");
    words
}

/// The `inflow` binary, to be run from the repository root.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_inflow"));
    c.current_dir(root());
    c
}

/// `inflow args…`, whatever its exit status.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// `inflow args…`, which must succeed (its stdout and stderr are shown if it does not).
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "inflow {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `inflow args…`, which must fail; its stderr.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "inflow {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What a `--json` run printed on stdout.
pub fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A store's `manifest.json`, if it is there and parses.
pub fn manifest(dir: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The lines of a JSONL file, parsed.
pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The column `name` of a score table (`inflow::scores::table`) as f64 values.
pub fn f64_column(path: &Path, name: &str) -> Vec<f64> {
    let (cols, _) = inflow::scores::table::read_table(path).unwrap();
    cols.iter()
        .find(|c| c.0 == name)
        .unwrap_or_else(|| panic!("{}: no column {name}", path.display()))
        .1
        .as_f64()
        .unwrap()
}

/// Every value of a `.npy` file as f32 (a `score --full` matrix).
pub fn dense(path: &Path) -> Vec<f32> {
    inflow::store::npy::NpyFile::open(path)
        .unwrap()
        .to_f32_vec()
}

/// The `index` line of the tiny-model stores (values: model, data, limit, out): LoGra rank 4,
/// ≤ 96 tokens, `shard_size` rows a shard, one thread.
pub fn tiny_index(shard_size: usize) -> String {
    format!(
        "index --model {{}} --data {{}} --limit {{}} --out {{}} --rank 4 --max-tokens 96 \
         --shard-size {shard_size} --threads 1"
    )
}

/// Indexes the first `n_train` bundled training samples into `store` and the first
/// `n_queries` probe tasks into `qstore` ([`tiny_index`]). The queries are stored as f32:
/// then they score bit for bit as queries computed from the file (f16 would round).
pub fn index_train_and_probes(
    model: &str,
    shard_size: usize,
    (store, n_train): (&str, usize),
    (qstore, n_queries): (&str, usize),
) {
    let index = tiny_index(shard_size);
    let (train, probes) = (asset("train.jsonl"), asset("probe-tasks.jsonl"));
    run_ok(&argv(&index, &[model, &train, &n_train.to_string(), store]));
    run_ok(&argv(
        &format!("{index} --dtype f32"),
        &[model, &probes, &n_queries.to_string(), qstore],
    ));
}

/// The sample ids of a store, in row order.
pub fn store_ids(store: &Path) -> Vec<String> {
    inflow::store::Store::open(store)
        .unwrap()
        .samples()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}
