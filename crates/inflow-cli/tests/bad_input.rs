//! Bad input over every verb (issue 17): generated cases — nonsense values of every bounded
//! numeric flag, files cut at several offsets, corrupt headers, wrong types, non-finite
//! scores, values the model cannot take — each of which must exit non-zero with a message
//! naming the culprit (the flag, the file, the layer) and leave every file that was there
//! before unchanged.

mod common;

use common::{arg, argv, asset, run, run_ok, tiny_scratch};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The bound a flag's value parser enforces (crates/inflow-cli/src/bounds.rs).
#[derive(Clone, Copy, Debug)]
enum Bound {
    Count,
    Positive,
    NonNegative,
    Finite,
    BelowOne,
    Share,
    Fraction,
    Proportion,
}

impl Bound {
    /// Values each bound refuses (given as `--flag=value`, so negatives are values).
    fn bad_values(self) -> &'static [&'static str] {
        match self {
            Bound::Count => &["0", "-2", "1.5", "lots"],
            Bound::Positive => &["0", "-1", "nan", "inf"],
            Bound::NonNegative => &["-0.5", "nan", "inf"],
            Bound::Finite => &["nan", "-inf", "x"],
            Bound::BelowOne => &["1", "-0.1", "nan"],
            Bound::Share => &["0", "1.5", "nan"],
            Bound::Fraction => &["0", "1", "nan"],
            Bound::Proportion => &["-0.1", "1.5", "nan"],
        }
    }
}

use Bound::*;

/// Every bounded numeric flag: the verb's words, the flag, its bound.
const FLAGS: &[(&str, &str, Bound)] = &[
    ("index", "--limit", Count),
    ("index", "--max-tokens", Count),
    ("index", "--shard-size", Count),
    ("index", "--batch-size", Count),
    ("index", "--rank", Count),
    ("index", "--dim", Count),
    ("bench features", "--samples", Count),
    ("bench features", "--max-tokens", Count),
    ("bench features", "--rank", Count),
    ("bench features", "--rounds", Count),
    ("bench score", "--rows", Count),
    ("bench score", "--dim", Count),
    ("bench score", "--queries", Count),
    ("bench score", "--top-k", Count),
    ("bench score", "--repeats", Count),
    ("bench score", "--shard-size", Count),
    ("demo", "--limit", Count),
    ("encoder train", "--layers", Count),
    ("encoder train", "--hidden", Count),
    ("encoder train", "--dim", Count),
    ("encoder train", "--steps", Count),
    ("encoder train", "--batch", Count),
    ("encoder train", "--in-batch", Count),
    ("encoder train", "--lr", Positive),
    ("encoder train", "--weight-decay", NonNegative),
    ("encoder train", "--tau-teacher", Positive),
    ("encoder train", "--pearson-weight", NonNegative),
    ("encoder train", "--val-fraction", Fraction),
    ("encoder train", "--checkpoint-every", Count),
    ("encode", "--shard-size", Count),
    ("encode", "--batch-size", Count),
    ("bench encode", "--limit", Count),
    ("bench encode", "--rounds", Count),
    ("generate", "--limit", Count),
    ("generate", "--max-new", Count),
    ("generate", "--batch-size", Count),
    ("generate", "--temperature", NonNegative),
    ("generate", "--top-p", Share),
    ("eval lds", "--limit", Count),
    ("eval lds", "--subsets", Count),
    ("eval lds", "--ratio", Fraction),
    ("eval lds", "--epochs", Count),
    ("eval lds", "--lr", Positive),
    ("eval lds", "--lora-rank", Count),
    ("eval lds", "--batch-size", Count),
    ("eval lds", "--max-tokens", Count),
    ("eval lds", "--rank", Count),
    ("eval lds", "--damping", Positive),
    ("methods", "--threads", Count),
    ("bench influence", "--samples", Count),
    ("bench influence", "--queries", Count),
    ("bench influence", "--rank", Count),
    ("score", "--top-k", Count),
    ("score", "--limit", Count),
    ("score", "--damping", Positive),
    ("score", "--lissa-iters", Count),
    ("score", "--lissa-tol", Positive),
    ("score", "--lissa-batch", Count),
    ("score", "--show", Count),
    ("score", "--rerank", Count),
    ("fit", "--draws", Count),
    ("fit", "--batch-size", Count),
    ("eval planted", "--n-train", Count),
    ("eval planted", "--fraction", Fraction),
    ("eval planted", "--queries", Count),
    ("eval planted", "--damping", Positive),
    ("eval planted", "--epochs", Count),
    ("eval planted", "--lr", Positive),
    ("eval planted", "--lora-rank", Count),
    ("eval planted", "--rank", Count),
    ("eval planted", "--max-tokens", Count),
    ("eval planted", "--generate", Count),
    ("eval planted", "--min-attack-success", Proportion),
    ("eval planted", "--tasks", Count),
    ("probe", "--probes-per-task", Count),
    ("probe", "--probe-tasks", Count),
    ("probe", "--lr", Positive),
    ("probe", "--max-tokens", Count),
    ("probe", "--probe-batch", Count),
    ("probe", "--shard-size", Count),
    ("select", "--threshold", Finite),
    ("select", "--clusters", Count),
    ("select", "--quality-threshold", Finite),
    ("select", "--quality-top", Share),
    ("eval selection", "--pool-limit", Count),
    ("eval selection", "--encoder-layers", Count),
    ("eval selection", "--encoder-dim", Count),
    ("eval selection", "--encoder-steps", Count),
    ("eval planted", "--encoder-layers", Count),
    ("eval planted", "--encoder-dim", Count),
    ("eval planted", "--encoder-steps", Count),
    ("eval selection", "--test-limit", Count),
    ("eval selection", "--random-seeds", Count),
    ("eval selection", "--clusters", Count),
    ("eval selection", "--gdig-quality-top", Share),
    ("eval selection", "--max-new-tokens", Count),
    ("eval selection", "--lora-rank", Count),
    ("eval selection", "--lora-alpha", Positive),
    ("eval selection", "--lr", Positive),
    ("eval selection", "--epochs", Count),
    ("eval selection", "--batch-size", Count),
    ("eval selection", "--max-tokens", Count),
    ("store compress", "--dim", Count),
    ("store compress", "--shard-size", Count),
    ("train", "--lora-rank", Count),
    ("train", "--lora-alpha", Positive),
    ("train", "--lora-dropout", BelowOne),
    ("train", "--epochs", Count),
    ("train", "--max-steps", Count),
    ("train", "--lr", Positive),
    ("train", "--weight-decay", NonNegative),
    ("train", "--beta1", BelowOne),
    ("train", "--beta2", BelowOne),
    ("train", "--adam-eps", Positive),
    ("train", "--max-grad-norm", NonNegative),
    ("train", "--batch-size", Count),
    ("train", "--grad-accum", Count),
    ("eval-loss", "--batch-size", Count),
    ("bench train", "--batch-size", Count),
    ("bench train", "--steps", Count),
    ("bench train", "--max-tokens", Count),
];

/// Every file under `dir`, for before/after comparison.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Runs a case that must fail naming every one of `culprits` in one line of its stderr,
/// with every file under `watch` unchanged. Returns the line.
/// A store manifest's bytes with `edit` applied to its JSON.
fn edit_manifest(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut m: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    edit(&mut m);
    serde_json::to_vec_pretty(&m).unwrap()
}

fn refused(args: &[&str], culprits: &[&str], watch: &Path) -> String {
    let before = snapshot(watch);
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "inflow {args:?} should fail; stderr: {err}"
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "inflow {args:?} panicked: {err}"
    );
    let line = err
        .lines()
        .find(|l| culprits.iter().all(|c| l.contains(c)))
        .unwrap_or_else(|| panic!("inflow {args:?}: no line names {culprits:?}:\n{err}"))
        .to_string();
    let after = snapshot(watch);
    for (p, b) in &before {
        assert!(
            after.get(p) == Some(b),
            "inflow {args:?} changed or removed {}",
            p.display()
        );
    }
    line
}

#[test]
fn every_bounded_flag_refuses_nonsense_at_parse_time_naming_the_flag() {
    let dir = inflow_testkit::scratch("bad-flags");
    std::fs::write(dir.join("keep.txt"), "unchanged").unwrap();
    let mut n = 0;
    for &(verb, flag, bound) in FLAGS {
        for v in bound.bad_values() {
            let mut args: Vec<String> = verb.split(' ').map(String::from).collect();
            args.push(format!("{flag}={v}"));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let line = refused(&a, &[flag, "expected"], &dir);
            assert!(line.contains(&format!("'{v}'")), "{a:?}: {line}");
            n += 1;
        }
    }
    eprintln!("{n} flag cases refused");
    assert!(n >= 300, "{n}");
}

#[test]
fn corrupt_files_and_impossible_values_are_refused_naming_the_culprit() {
    let (dir, model) = tiny_scratch("bad-files", 32, 2, 8);
    let (train, probes) = (asset("train.jsonl"), asset("probe-tasks.jsonl"));
    let store = dir.arg("store");
    run_ok(&argv(
        "index --model {} --data {} --limit 6 --out {} --rank 2 --max-tokens 64 --threads 1",
        &[&model, &train, &store],
    ));
    let scores = dir.arg("mean.parquet");
    run_ok(&argv(
        "score --store {} --queries {} --limit 2 --aggregate mean --out {}",
        &[&store, &probes, &scores],
    ));
    let topk = dir.arg("top.parquet");
    run_ok(&argv(
        "score --store {} --queries {} --limit 2 --top-k 3 --out {}",
        &[&store, &probes, &topk],
    ));
    let mut n = 0;

    // Values the model cannot take, checked against it before any work.
    let out = dir.arg("never");
    let line = refused(
        &argv(
            "index --model {} --data {} --limit 2 --out {} --rank 100000",
            &[&model, &train, &out],
        ),
        &["--rank 100000", "expected a rank of at most"],
        &dir,
    );
    assert!(line.contains("layer"), "{line}");
    refused(
        &argv(
            "index --model {} --data {} --limit 2 --out {} --max-tokens 20000",
            &[&model, &train, &out],
        ),
        &["--max-tokens 20000", "context is 512"],
        &dir,
    );
    refused(
        &argv(
            "train --model {} --data {} --out {} --max-tokens 4096",
            &[&model, &train, &out],
        ),
        &["--max-tokens 4096", "context"],
        &dir,
    );
    n += 3;

    // Data files cut inside a record: the file and line are named.
    let text = std::fs::read(inflow_testkit::asset("train.jsonl")).unwrap();
    let line_ends: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i)
        .collect();
    for (k, &end) in line_ends.iter().take(12).enumerate() {
        // Cut 7 bytes before the k-th newline: record k+1 is broken JSON.
        let cut = dir.join(format!("cut-{k}.jsonl"));
        std::fs::write(&cut, &text[..end - 7]).unwrap();
        refused(
            &argv(
                "index --model {} --data {} --out {} --rank 2 --max-tokens 64 --format alpaca",
                &[&model, &arg(&cut), &out],
            ),
            &[&format!("cut-{k}.jsonl:{}", k + 1)],
            &dir,
        );
        n += 1;
    }
    // Wrong types in a record.
    for (k, bad) in [
        r#"{"instruction": 3, "output": "x"}"#,
        r#"{"instruction": "x", "output": ["y"]}"#,
        r#"{"messages": "not a list"}"#,
        r#"[1, 2, 3]"#,
    ]
    .iter()
    .enumerate()
    {
        let p = dir.join(format!("types-{k}.jsonl"));
        std::fs::write(&p, format!("{bad}\n")).unwrap();
        refused(
            &argv(
                "index --model {} --data {} --out {} --rank 2 --max-tokens 64",
                &[&model, &arg(&p), &out],
            ),
            &[&format!("types-{k}.jsonl:1")],
            &dir,
        );
        n += 1;
    }

    // Store files cut or with a corrupt header: scoring names the file.
    let shard = dir.join("store").join("features-00000.npy");
    let manifest = dir.join("store").join("manifest.json");
    let (shard_bytes, manifest_bytes) = (
        std::fs::read(&shard).unwrap(),
        std::fs::read(&manifest).unwrap(),
    );
    let score = |out: &str| {
        argv(
            "score --store {} --queries {} --limit 2 --out {}",
            &[&store, &probes, out],
        )
        .into_iter()
        .map(String::from)
        .collect::<Vec<String>>()
    };
    let cases: Vec<(&str, Vec<u8>, PathBuf)> = vec![
        (
            "shard cut in its header",
            shard_bytes[..20].to_vec(),
            shard.clone(),
        ),
        (
            "shard cut in its rows",
            shard_bytes[..shard_bytes.len() / 2].to_vec(),
            shard.clone(),
        ),
        (
            "shard cut by one byte",
            shard_bytes[..shard_bytes.len() - 1].to_vec(),
            shard.clone(),
        ),
        (
            "shard with a corrupt magic",
            [b"XXXXXX".as_slice(), &shard_bytes[6..]].concat(),
            shard.clone(),
        ),
        ("empty shard", Vec::new(), shard.clone()),
        (
            "manifest cut",
            manifest_bytes[..manifest_bytes.len() / 3].to_vec(),
            manifest.clone(),
        ),
        ("manifest not JSON", b"not json".to_vec(), manifest.clone()),
        (
            "manifest of another type",
            b"[1, 2]".to_vec(),
            manifest.clone(),
        ),
        (
            "manifest shard entry with other rows",
            edit_manifest(&manifest_bytes, |m| m["shards"][0]["end_row"] = 99.into()),
            manifest.clone(),
        ),
        (
            "manifest shard entry naming a file elsewhere",
            edit_manifest(&manifest_bytes, |m| {
                m["shards"][0]["features"] = "../features-00000.npy".into()
            }),
            manifest.clone(),
        ),
    ];
    for (what, bytes, path) in cases {
        let original = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        let o = dir.arg("o.parquet");
        let a = score(&o);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let before = snapshot(&dir);
        let r = run(&a);
        let err = String::from_utf8_lossy(&r.stderr).into_owned();
        assert!(!r.status.success(), "{what}: should fail");
        assert_ne!(r.status.code(), Some(101), "{what}: panicked: {err}");
        assert!(err.contains(&name), "{what}: {err}");
        // Said in words, not as a printed Rust struct.
        assert!(!err.contains("ShardInfo {"), "{what}: {err}");
        assert!(snapshot(&dir) == before, "{what}: files changed");
        std::fs::write(&path, original).unwrap();
        n += 1;
    }

    // Score files: cut, without their columns, with non-finite scores. Both readers of a
    // score file (compare, select) must refuse each, naming it.
    let sel = dir.arg("sel.jsonl");
    let both_refuse = |p: &str, culprits: &[&str]| {
        refused(&argv("compare {} {}", &[p, &scores]), culprits, &dir);
        refused(
            &argv(
                "select --scores {} --size 2 --data {} --out {}",
                &[p, &train, &sel],
            ),
            culprits,
            &dir,
        );
    };
    let sbytes = std::fs::read(&scores).unwrap();
    for (k, len) in [8, sbytes.len() / 2, sbytes.len() - 4]
        .into_iter()
        .enumerate()
    {
        let p = dir.join(format!("cut-scores-{k}.parquet"));
        std::fs::write(&p, &sbytes[..len]).unwrap();
        both_refuse(&arg(&p), &[&format!("cut-scores-{k}.parquet")]);
        n += 2;
    }
    use inflow::scores::table::{write_table, Column};
    let rows = inflow::store::Store::open(Path::new(&store))
        .unwrap()
        .samples()
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    for (k, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let p = dir.join(format!("nonfinite-{k}.parquet"));
        let mut s = vec![0.5f32; ids.len()];
        s[1] = bad;
        write_table(
            &p,
            vec![
                ("train_id", Column::Str(ids.clone())),
                ("score", Column::F32(s)),
            ],
            &[],
        )
        .unwrap();
        both_refuse(&arg(&p), &[&format!("nonfinite-{k}.parquet"), "non-finite"]);
        n += 2;
    }
    let p = dir.join("nocols.parquet");
    write_table(&p, vec![("something", Column::F32(vec![1.0]))], &[]).unwrap();
    both_refuse(&arg(&p), &["nocols.parquet", "train_id"]);
    refused(
        &argv(
            "select --scores {} --size 2 --data {} --out {}",
            &[&topk, &train, &sel],
        ),
        &["top.parquet", "top-k file"],
        &dir,
    );
    n += 3;

    // Models: weights cut at several offsets, a missing file, a GGUF with a broken body.
    let copy_model = |name: &str| -> PathBuf {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(dir.join("model")).unwrap().flatten() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let weights = dir.join("model").join("model.safetensors");
    if weights.exists() {
        let w = std::fs::read(&weights).unwrap();
        for (k, len) in [0, 7, w.len() / 2].into_iter().enumerate() {
            let mdir = copy_model(&format!("cut-model-{k}"));
            std::fs::write(mdir.join("model.safetensors"), &w[..len]).unwrap();
            refused(
                &argv("inspect --model {}", &[&arg(&mdir)]),
                &["model.safetensors"],
                &dir,
            );
            n += 1;
        }
    }
    refused(
        &argv("inspect --model {}", &[&dir.arg("nowhere.gguf")]),
        &["nowhere.gguf"],
        &dir,
    );
    let fake = dir.join("fake.gguf");
    std::fs::write(&fake, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    refused(
        &argv("inspect --model {}", &[&arg(&fake)]),
        &["fake.gguf"],
        &dir,
    );
    n += 2;

    // Weights with a NaN, and a config that uses fewer layers than the weights hold.
    let nan_model = copy_model("nan-model");
    let w = nan_model.join("model.safetensors");
    let mut t = candle_core::safetensors::load(&w, &candle_core::Device::Cpu).unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let up = &t[name];
    let mut v = up.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    v[5] = f32::NAN;
    let bad = candle_core::Tensor::from_vec(v, up.dims(), &candle_core::Device::Cpu).unwrap();
    t.insert(name.into(), bad);
    candle_core::safetensors::save(&t, &w).unwrap();
    refused(
        &argv("logprob --model {} --text hello", &[&arg(&nan_model)]),
        &[name, "NaN", "nan-model"],
        &dir,
    );
    let short = copy_model("short-config");
    let cfg = short.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["num_hidden_layers"] = serde_json::json!(1);
    std::fs::write(&cfg, c.to_string()).unwrap();
    refused(
        &argv("logprob --model {} --text hello", &[&arg(&short)]),
        &["model.layers.1.", "num_hidden_layers", "short-config"],
        &dir,
    );
    // A step size that blows the weights up: training stops at the step whose loss is not
    // finite, before the update, instead of writing a NaN adapter.
    let line = refused(
        &argv(
            "train --model {} --data {} --limit 8 --max-steps 4 --batch-size 2 --lr 1e300 \
             --max-grad-norm 0 --full --max-tokens 64 --out {}",
            &[&model, &train, &dir.arg("blown")],
        ),
        &["step", "non-finite"],
        &dir,
    );
    assert!(!line.contains("step 1:"), "{line}");
    n += 3;

    // A sharded checkpoint whose index names a shard that is not there: the shard is named.
    let sharded = copy_model("sharded");
    let index = serde_json::json!({"weight_map": {
        "model.embed_tokens.weight": "model.safetensors",
        "model.layers.1.mlp.up_proj.weight": "model-00002-of-00002.safetensors",
    }});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    refused(
        &argv("inspect --model {}", &[&arg(&sharded)]),
        &["model-00002-of-00002.safetensors", "missing"],
        &dir,
    );
    n += 1;
    // GGUF metadata that disagrees with its weights or itself (head count 7 or 3 for
    // SmolLM2's 9 heads of 64): named by key, with no backtrace.
    let gguf = inflow_testkit::smollm2();
    if gguf.exists() {
        let bytes = std::fs::read(&gguf).unwrap();
        let key = b"llama.attention.head_count\x04\x00\x00\x00";
        let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
        for heads in [7u32, 3] {
            let mut b = bytes.clone();
            b[at..at + 4].copy_from_slice(&heads.to_le_bytes());
            let bad = dir.join(format!("heads-{heads}.gguf"));
            std::fs::write(&bad, &b).unwrap();
            let line = refused(
                &argv("logprob --model {} --text hi", &[&arg(&bad)]),
                &[&format!("heads-{heads}.gguf"), "llama.attention.head_count"],
                &dir,
            );
            assert!(
                !line.contains("backtrace") && !line.contains("candle_core"),
                "{line}"
            );
            std::fs::remove_file(&bad).unwrap();
            n += 1;
        }
    }

    eprintln!("{n} file and model cases refused");
    assert!(n >= 40, "{n}");
}
