//! End-to-end tests of `inflow generate` on a tiny random model (with its own output head:
//! a tied random model's greedy answers are all its last prompt token repeated): batched cached decoding
//! (left-padded rows) gives the tokens of the uncached one-prompt loop, at the base model and
//! at a LoRA adapter trained in the test; the answers file reads back as queries whose prompt
//! is the input's and whose response is the answer; seeded sampling repeats; resumption.

use inflow::data::tokens::{Renderer, Template};
use inflow::data::{read_prompts, read_samples, Body, Format, ReadOptions, Sample};
use inflow::model::LoadedModel;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

mod common;

use common::{arg, argv, asset, jsonl as lines, run, run_ok};
use inflow_testkit::{scratch, Scratch};

const MAX_NEW: usize = 12;

/// A scratch folder with a tiny random model (with its own output head) in `model/`: the
/// folder, the model's folder and the model as an argument.
fn scratch_with_model(name: &str) -> (Scratch, PathBuf, String) {
    let dir = scratch(&format!("gen-{name}"));
    let model_dir = dir.join("model");
    inflow::model::tiny::write_random_untied(&model_dir, 32, 2, 2).unwrap();
    let model = arg(&model_dir);
    (dir, model_dir, model)
}

/// `inflow generate --model M --prompts P --out O`, then `extra`.
fn generate<'a>(model: &'a str, prompts: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = argv(
        "generate --model {} --prompts {} --out {}",
        &[model, prompts, out],
    );
    a.extend_from_slice(extra);
    a
}

/// [`chat_prompts`] written to `dir/q.jsonl`: the file, and it as an argument.
fn chat_prompts_file(dir: &Path) -> (PathBuf, String) {
    let q = dir.join("q.jsonl");
    write_lines(&q, &chat_prompts());
    let qs = arg(&q);
    (q, qs)
}

fn write_lines(path: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|v| format!("{v}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// Six conversations of quite different lengths (so batches of 3 are padded), one with a
/// system turn and one ending with an existing answer (ignored).
fn chat_prompts() -> Vec<Value> {
    let user = |t: &str| json!({"role": "user", "content": t});
    vec![
        json!({"messages": [user("Hi")], "task": "a"}),
        json!({"messages": [user("Write one sentence about the sea and the sky at night.")], "task": "b"}),
        json!({"messages": [{"role": "system", "content": "Be brief."}, user("Name a colour.")], "task": "a"}),
        json!({"messages": [user("Why?"), {"role": "assistant", "content": "an old answer"}]}),
        json!({"messages": [user("Count: one two three four five six seven eight nine ten eleven twelve")]}),
        json!({"messages": [user("ok")], "id": "user-7"}),
    ]
}

/// The final assistant message of an output line.
fn answer(line: &Value) -> String {
    match line.get("messages") {
        Some(m) => m.as_array().unwrap().last().unwrap()["content"]
            .as_str()
            .unwrap()
            .to_string(),
        None => line["completion"].as_str().unwrap().to_string(),
    }
}

/// Per prompt: the uncached greedy loop's tokens and text (`Llama::generate_greedy`).
fn reference(m: &LoadedModel, prompts: &[Sample]) -> Vec<(Vec<u32>, String)> {
    let r = Renderer::new(m, Template::Auto, usize::MAX).unwrap();
    let stop = inflow::pipeline::generate::stop_tokens(m);
    prompts
        .iter()
        .map(|s| {
            let ids = m.encode(&r.render(&s.body).unwrap().0).unwrap();
            let out = m.llama.generate_greedy(&ids, MAX_NEW, &stop).unwrap();
            let text = m.decode(&out).unwrap();
            (out, text)
        })
        .collect()
}

/// Output lines by the input id (`id`).
fn by_id(rows: &[Value]) -> std::collections::HashMap<String, Value> {
    rows.iter()
        .map(|v| (v["id"].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// Checks an answers file against the reference: one line per prompt with a non-empty
/// answer, the same tokens (count and decoded text) as the one-prompt uncached loop.
fn check_against(out: &Path, inputs: &[Sample], want: &[(Vec<u32>, String)]) {
    let got = by_id(&lines(out));
    for (s, (toks, text)) in inputs.iter().zip(want) {
        if text.trim().is_empty() {
            assert!(
                !got.contains_key(&s.id),
                "{}: an empty answer is not written",
                s.id
            );
            continue;
        }
        let line = &got[&s.id];
        assert_eq!(&answer(line), text, "{}", s.id);
        assert_eq!(line["new_tokens"], toks.len(), "{}", s.id);
        let reason = if toks.len() < MAX_NEW {
            "stop"
        } else {
            "length"
        };
        assert_eq!(line["finish_reason"], reason, "{}", s.id);
    }
}

#[test]
fn batched_greedy_matches_the_uncached_loop_at_base_and_adapter() {
    let (dir, model_dir, model) = scratch_with_model("greedy");
    let (q, qs) = chat_prompts_file(&dir);
    let p = |name: &str| dir.arg(name);
    let max_new = MAX_NEW.to_string();
    let gen = |out: &str, extra: &[&str]| {
        let mut a = generate(&model, &qs, out, &["--max-new", &max_new, "--json"]);
        a.extend(["--batch-size", "3", "--threads", "2"]);
        a.extend_from_slice(extra);
        common::json(&run_ok(&a))
    };
    let inputs = read_prompts(&q, &ReadOptions::default()).unwrap().samples;
    assert_eq!(inputs.len(), 6);
    let lens: std::collections::HashSet<usize> = {
        let m = LoadedModel::load(&model_dir, candle_core::DType::F32).unwrap();
        let r = Renderer::new(&m, Template::Auto, usize::MAX).unwrap();
        inputs
            .iter()
            .map(|s| m.encode(&r.render(&s.body).unwrap().0).unwrap().len())
            .collect()
    };
    assert!(
        lens.len() >= 5,
        "prompt lengths differ, so rows are padded: {lens:?}"
    );

    // Base model.
    let base_out = p("base.jsonl");
    let s = gen(&base_out, &[]);
    let m = LoadedModel::load(&model_dir, candle_core::DType::F32).unwrap();
    let base_ref = reference(&m, &inputs);
    assert!(
        base_ref.iter().any(|(t, _)| t.len() > 3),
        "answers have several tokens"
    );
    check_against(Path::new(&base_out), &inputs, &base_ref);
    assert_eq!(s["prompts"], 6);
    assert_eq!(
        s["new_tokens"],
        base_ref.iter().map(|(t, _)| t.len()).sum::<usize>()
    );

    // A LoRA adapter trained by `inflow train`.
    let data = asset("train.jsonl");
    let ft = p("ft");
    let t = common::json(&run_ok(&argv(
        "train --model {} --data {} --limit 8 --max-tokens 48 --lora-rank 4 --modules q,v,down \
         --lr 5e-2 --batch-size 4 --epochs 2 --threads 2 --out {} --json",
        &[&model, &data, &ft],
    )));
    let ck = t["summary"]["checkpoints"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let tuned_out = p("tuned.jsonl");
    let s = gen(&tuned_out, &["--adapter", &ck]);
    assert_eq!(s["generated_by"]["adapter"], ck);
    let mut mt = LoadedModel::load(&model_dir, candle_core::DType::F32).unwrap();
    let info = inflow::train::features::attach(&mut mt, Path::new(&ck)).unwrap();
    assert_eq!(info.kind, "lora");
    let tuned_ref = reference(&mt, &inputs);
    check_against(Path::new(&tuned_out), &inputs, &tuned_ref);
    // The adapter matters: its answers differ from the base model's.
    assert_ne!(base_ref, tuned_ref, "the adapter changes some answer");
    let base_lines = lines(Path::new(&base_out));
    let tuned_lines = lines(Path::new(&tuned_out));
    assert!(
        base_lines
            .iter()
            .zip(&tuned_lines)
            .any(|(a, b)| answer(a) != answer(b)),
        "the CLI's adapter answers differ from the base answers"
    );

    // One --prompt on stdout goes through the same path and gives the loop's answer.
    let one = common::json(&run_ok(&argv(
        "generate --model {} --prompt Hi --max-new {} --json",
        &[&model, &max_new],
    )));
    assert_eq!(one["answer"].as_str().unwrap(), base_ref[0].1);
}

#[test]
fn answers_read_back_as_queries_with_the_same_prompt() {
    let (dir, model_dir, model) = scratch_with_model("readback");
    let m = LoadedModel::load(&model_dir, candle_core::DType::F32).unwrap();
    let r = Renderer::new(&m, Template::Auto, usize::MAX).unwrap();
    let max_new = MAX_NEW.to_string();
    // Three input shapes: chat, alpaca (with and without output), bare prompts.
    let alpaca = vec![
        json!({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "task": "sum"}),
        json!({"instruction": "Say hello.", "task": "greet"}),
    ];
    let plain = vec![
        json!({"prompt": "The sea is"}),
        json!({"prompt": "Once upon a time", "completion": "x"}),
    ];
    for (name, rows, format) in [
        ("chat", chat_prompts(), Format::Chat),
        ("alpaca", alpaca, Format::Chat),
        ("plain", plain, Format::PromptCompletion),
    ] {
        let q = dir.join(format!("{name}.jsonl"));
        write_lines(&q, &rows);
        let out = dir.join(format!("{name}-answers.jsonl"));
        run_ok(&generate(
            &model,
            &arg(&q),
            &arg(&out),
            &["--max-new", &max_new, "--batch-size", "2"],
        ));
        let inputs = read_prompts(&q, &ReadOptions::default()).unwrap().samples;
        let want = reference(&m, &inputs);
        let back = read_samples(&out, &ReadOptions::default()).unwrap();
        assert_eq!(back.format, format, "{name}");
        let written: Vec<(&Sample, &(Vec<u32>, String))> = inputs
            .iter()
            .zip(&want)
            .filter(|(_, (_, t))| !t.trim().is_empty())
            .collect();
        assert_eq!(back.samples.len(), written.len(), "{name}");
        assert!(!written.is_empty());
        for (got, (input, (_, text))) in back.samples.iter().zip(written) {
            assert_eq!(got.meta["id"], input.id, "{name}: the input's id");
            assert_eq!(
                r.render(&got.body).unwrap().0,
                r.render(&input.body).unwrap().0,
                "{name} {}: the same rendered prompt",
                input.id
            );
            assert_eq!(got.body.response(), text, "{name} {}", input.id);
            for (k, v) in &input.meta {
                if k == "id" {
                    assert_eq!(&got.meta["input_record_id"], v);
                } else {
                    assert_eq!(&got.meta[k], v, "{name}: field {k} kept");
                }
            }
            assert!(matches!(
                (&got.body, &input.body),
                (Body::Chat { .. }, Body::Chat { .. }) | (Body::Plain { .. }, Body::Plain { .. })
            ));
        }
    }

    // Bad input names the file and line; an existing output needs --resume.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"fine\"}\n{\"prompt\": 3}\n").unwrap();
    let o = run(&generate(
        &model,
        &arg(&bad),
        &arg(&dir.join("x.jsonl")),
        &[],
    ));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    let (chat, answers) = (dir.join("chat.jsonl"), dir.join("chat-answers.jsonl"));
    let o = run(&generate(&model, &arg(&chat), &arg(&answers), &[]));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

#[test]
fn seeded_sampling_repeats_and_resume_completes_the_file() {
    let (dir, _, model) = scratch_with_model("sample");
    let (_, qs) = chat_prompts_file(&dir);
    let max_new = MAX_NEW.to_string();
    let sample = |name: &str, temperature: &str, seed: &str, batch: &str| -> String {
        let out = dir.join(name);
        let o = out.display().to_string();
        run_ok(&generate(
            &model,
            &qs,
            &o,
            &[
                "--max-new",
                &max_new,
                "--temperature",
                temperature,
                "--seed",
                seed,
                "--batch-size",
                batch,
            ],
        ));
        std::fs::read_to_string(out).unwrap()
    };
    // Answers by id.
    let answers = |t: &str| -> std::collections::BTreeMap<String, String> {
        t.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["id"].as_str().unwrap().to_string(), answer(&v))
            })
            .collect()
    };
    let a = sample("a.jsonl", "1.5", "7", "3");
    assert!(a.lines().count() >= 5);
    let b = sample("b.jsonl", "1.5", "7", "3");
    assert_eq!(a, b, "the same seed gives the same file");
    let c = sample("c.jsonl", "1.5", "8", "3");
    assert_ne!(answers(&a), answers(&c), "another seed changes some answer");
    // A prompt's stream is its own: the batch size does not change the sample.
    let d = sample("d.jsonl", "1.5", "7", "1");
    assert_eq!(answers(&a), answers(&d));
    // Greedy differs from sampling at T = 1.5.
    let e = sample("e.jsonl", "0", "7", "3");
    assert_ne!(answers(&a), answers(&e));

    // An interrupted run (two lines and half a third) resumed gives the whole file.
    let part = dir.join("part.jsonl");
    let full: Vec<&str> = a.lines().collect();
    std::fs::write(
        &part,
        format!(
            "{}\n{}\n{}",
            full[0],
            full[1],
            &full[2][..full[2].len() / 2]
        ),
    )
    .unwrap();
    let part_s = arg(&part);
    let mut resume = generate(&model, &qs, &part_s, &["--max-new", &max_new, "--resume"]);
    resume.extend(["--temperature", "1.5", "--seed", "7", "--json"]);
    let s = common::json(&run_ok(&resume));
    assert_eq!(s["already_done"], 2);
    assert_eq!(std::fs::read_to_string(&part).unwrap(), a);
    // Resuming with other settings is refused.
    let o = run(&generate(
        &model,
        &qs,
        &part_s,
        &["--max-new", &max_new, "--resume"],
    ));
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("generated with"));
}
