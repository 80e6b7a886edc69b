//! Tests of the data readers: every format from JSONL and Parquet, detection, errors,
//! skipping, limits, ids, the real Natural Instructions extract and the bundled assets.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field};
use parquet::arrow::ArrowWriter;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::*;

use inflow_testkit::scratch;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn lines(values: &[serde_json::Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

fn opts(format: Format) -> ReadOptions {
    ReadOptions {
        format,
        ..ReadOptions::default()
    }
}

fn read(path: &Path, format: Format) -> ReadReport {
    read_samples(path, &opts(format)).unwrap()
}

fn plain(prompt: &str, response: &str) -> Body {
    Body::Plain {
        prompt: prompt.into(),
        response: response.into(),
    }
}

fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.into(),
    }
}

/// `dir/name`, a Parquet file of `columns`.
fn write_parquet(dir: &Path, name: &str, columns: Vec<(&str, ArrayRef)>) -> PathBuf {
    let path = dir.join(name);
    let batch =
        RecordBatch::try_from_iter(columns.into_iter().map(|(n, a)| (n.to_string(), a))).unwrap();
    let file = std::fs::File::create(&path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    path
}

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// A list<struct<role: utf8, content: utf8>> column.
fn message_lists(rows: &[Vec<(&str, &str)>]) -> ArrayRef {
    let fields = vec![
        Field::new("role", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
    ];
    let item = StructBuilder::new(
        fields,
        vec![
            Box::new(StringBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    );
    let mut list = ListBuilder::new(item);
    for row in rows {
        for (role, content) in row {
            let s = list.values();
            s.field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(role);
            s.field_builder::<StringBuilder>(1)
                .unwrap()
                .append_value(content);
            s.append(true);
        }
        list.append(true);
    }
    Arc::new(list.finish())
}

fn alpaca_records() -> Vec<serde_json::Value> {
    vec![
        json!({"instruction": "Add the numbers.", "input": "2 3", "output": "5", "task": "sum"}),
        json!({"instruction": "Say hi.", "input": "", "output": "hi", "task": "greet"}),
        json!({"instruction": "Say bye.", "output": "bye", "task": "greet"}),
    ]
}

fn chat_conversation() -> Vec<(&'static str, &'static str)> {
    vec![
        ("system", "Be brief."),
        ("user", "Capital of France?"),
        ("assistant", "Paris."),
    ]
}

/// [`chat_conversation`] as JSON `messages`.
fn chat_messages() -> Vec<serde_json::Value> {
    chat_conversation()
        .iter()
        .map(|(r, c)| json!({"role": r, "content": c}))
        .collect()
}

fn check_alpaca(report: &ReadReport) {
    assert_eq!(report.format, Format::Alpaca);
    assert_eq!(report.samples.len(), 3);
    let s = &report.samples[0];
    assert_eq!(s.row, 0);
    assert_eq!(
        s.body,
        Body::Chat {
            messages: vec![user("Add the numbers.\n\n2 3")],
            response: "5".into()
        }
    );
    assert_eq!(s.meta.get("task"), Some(&json!("sum")));
    assert!(!s.meta.contains_key("instruction") && !s.meta.contains_key("output"));
    // Empty and absent `input`: the instruction alone, no trailing blank line.
    assert_eq!(
        report.samples[1].body,
        Body::Chat {
            messages: vec![user("Say hi.")],
            response: "hi".into()
        }
    );
    assert_eq!(
        report.samples[2].body,
        Body::Chat {
            messages: vec![user("Say bye.")],
            response: "bye".into()
        }
    );
    assert_eq!(report.samples[2].row, 2);
    assert!(report.samples[2].id.starts_with("2-"));
}

fn check_chat(report: &ReadReport) {
    assert_eq!(report.format, Format::Chat);
    let s = &report.samples[0];
    let Body::Chat { messages, response } = &s.body else {
        panic!("expected a chat body, got {:?}", s.body)
    };
    assert_eq!(response, "Paris.");
    assert_eq!(messages.len(), 2);
    assert_eq!(
        messages[0],
        Message {
            role: "system".into(),
            content: "Be brief.".into()
        }
    );
    assert_eq!(messages[1], user("Capital of France?"));
}

#[test]
fn format_names_parse_and_display() {
    for f in [
        Format::Auto,
        Format::Alpaca,
        Format::Chat,
        Format::PromptCompletion,
        Format::Text,
    ] {
        assert_eq!(f.to_string().parse::<Format>().unwrap(), f);
    }
    assert_eq!(
        "prompt-completion".parse::<Format>().unwrap(),
        Format::PromptCompletion
    );
    assert_eq!(Format::PromptCompletion.to_string(), "prompt_completion");
    let err = "sharegpt".parse::<Format>().unwrap_err().to_string();
    assert!(
        err.contains("sharegpt") && err.contains("alpaca") && err.contains("prompt_completion"),
        "{err}"
    );
}

#[test]
fn alpaca_from_jsonl() {
    let dir = scratch("alpaca");
    let path = write(&dir, "a.jsonl", &lines(&alpaca_records()));
    check_alpaca(&read(&path, Format::Alpaca));
}

#[test]
fn chat_from_jsonl() {
    let dir = scratch("chat");
    let msgs = chat_messages();
    let path = write(
        &dir,
        "c.jsonl",
        &lines(&[json!({"messages": msgs, "source": "x"})]),
    );
    let report = read(&path, Format::Chat);
    check_chat(&report);
    assert_eq!(report.samples[0].meta.get("source"), Some(&json!("x")));
}

#[test]
fn prompt_completion_and_text_from_jsonl() {
    let dir = scratch("plain");
    let path = write(
        &dir,
        "p.jsonl",
        &lines(&[json!({"prompt": "1+1=", "completion": "2"})]),
    );
    let report = read(&path, Format::PromptCompletion);
    assert_eq!(report.samples[0].body, plain("1+1=", "2"));
    let path = write(
        &dir,
        "t.json",
        &lines(&[json!({"text": "Once upon a time.", "n": 3})]),
    );
    let report = read(&path, Format::Text);
    assert_eq!(report.samples[0].body, plain("", "Once upon a time."));
    assert_eq!(report.samples[0].meta.get("n"), Some(&json!(3)));
}

#[test]
fn auto_detects_each_format() {
    let dir = scratch("auto");
    let cases = [
        (json!({"instruction": "i", "output": "o"}), Format::Alpaca),
        (
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
            Format::Chat,
        ),
        (
            json!({"prompt": "p", "completion": "c"}),
            Format::PromptCompletion,
        ),
        (json!({"text": "t"}), Format::Text),
        // `text` as a meta field of an alpaca record: alpaca wins.
        (
            json!({"instruction": "i", "output": "o", "text": "t"}),
            Format::Alpaca,
        ),
    ];
    for (i, (record, want)) in cases.iter().enumerate() {
        let path = write(
            &dir,
            &format!("{i}.jsonl"),
            &lines(std::slice::from_ref(record)),
        );
        assert_eq!(read(&path, Format::Auto).format, *want, "{record}");
    }
    let path = write(
        &dir,
        "none.jsonl",
        &lines(&[json!({"question": "q", "answer": "a"})]),
    );
    let err = read_samples(&path, &opts(Format::Auto))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot detect") && err.contains("question"),
        "{err}"
    );
}

#[test]
fn bad_line_in_the_middle_names_file_and_line() {
    let dir = scratch("badline");
    let mut text = lines(&alpaca_records()[..2]);
    text.push('\n'); // blank line 3: ignored, but counted in line numbers
    text.push_str(&lines(&[
        json!({"instruction": "x", "input": "y", "task": "t"}),
    ])); // line 4
    text.push_str(&lines(&alpaca_records()[2..]));
    let path = write(&dir, "bad.jsonl", &text);
    let err = read_samples(&path, &opts(Format::Alpaca)).unwrap_err();
    match &err {
        Error::BadInput { path: p, line, msg } => {
            assert_eq!(p, &path);
            assert_eq!(*line, 4);
            assert_eq!(
                msg,
                "missing string field `output`; format alpaca expects {instruction, input, output}"
            );
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with(&format!("{}:4: ", path.display())),
        "{err}"
    );
}

#[test]
fn each_kind_of_bad_record_is_reported() {
    let dir = scratch("kinds");
    let cases: Vec<(String, Format, &str)> = vec![
        ("{\"instruction\": \"i\", \"output\": }".into(), Format::Alpaca, "bad JSON"),
        ("[1, 2]".into(), Format::Alpaca, "expected a JSON object"),
        (json!({"instruction": "i", "output": 5}).to_string(), Format::Alpaca, "field `output` is a number, expected a string"),
        (json!({"instruction": "i", "output": "  "}).to_string(), Format::Alpaca, "`output` is empty"),
        (json!({"instruction": "", "input": "", "output": "o"}).to_string(), Format::Alpaca, "no prompt"),
        (json!({"prompt": "p", "completion": ""}).to_string(), Format::PromptCompletion, "`completion` is empty"),
        (json!({"text": ""}).to_string(), Format::Text, "`text` is empty"),
        (json!({"messages": [{"role": "user", "content": "q"}]}).to_string(), Format::Chat, "the last message has role `user`"),
        (json!({"messages": [{"role": "assistant", "content": "a"}]}).to_string(), Format::Chat, "at least one message must come before"),
        (json!({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}).to_string(), Format::Chat, "messages[0].role is `bot`"),
        (json!({"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}).to_string(), Format::Chat, "messages[0] is missing string field `content`"),
        (json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}).to_string(), Format::Chat, "final assistant message is empty"),
        (json!({"messages": "hello"}).to_string(), Format::Chat, "field `messages` is a string, expected an array"),
        (json!({"messages": []}).to_string(), Format::Chat, "`messages` is empty"),
    ];
    for (i, (line, format, want)) in cases.iter().enumerate() {
        let path = write(&dir, &format!("{i}.jsonl"), &format!("{line}\n"));
        match read_samples(&path, &opts(*format)) {
            Err(Error::BadInput { line: 1, msg, .. }) => {
                assert!(msg.contains(want), "{line}: {msg}")
            }
            other => panic!("{line}: expected BadInput at line 1, got {other:?}"),
        }
    }
}

#[test]
fn skip_bad_counts_and_keeps_rows() {
    let dir = scratch("skip");
    let good = alpaca_records();
    let text = format!(
        "{}not json\n{}{}\n{}",
        lines(&good[..1]),
        lines(&good[1..2]),
        json!({"instruction": "i", "output": ""}),
        lines(&good[2..])
    );
    let path = write(&dir, "skip.jsonl", &text);
    let report = read_samples(
        &path,
        &ReadOptions {
            format: Format::Auto,
            skip_bad: true,
            limit: None,
        },
    )
    .unwrap();
    assert_eq!(report.samples.len(), 3);
    assert_eq!(
        report.skipped.iter().map(|(l, _)| *l).collect::<Vec<_>>(),
        vec![2, 4]
    );
    assert!(
        report.skipped[0].1.contains("bad JSON"),
        "{:?}",
        report.skipped
    );
    assert!(
        report.skipped[1].1.contains("`output` is empty"),
        "{:?}",
        report.skipped
    );
    // Rows count bad records too, so they are the same with or without skipping.
    assert_eq!(
        report.samples.iter().map(|s| s.row).collect::<Vec<_>>(),
        vec![0, 2, 4]
    );
    // Without skip_bad the first bad line fails the read.
    match read_samples(&path, &opts(Format::Auto)) {
        Err(Error::BadInput { line: 2, .. }) => {}
        other => panic!("expected BadInput at line 2, got {other:?}"),
    }
}

#[test]
fn all_bad_fails_even_with_skip_bad() {
    let dir = scratch("allbad");
    let path = write(&dir, "bad.jsonl", "{\"text\": 1}\n{\"text\": \"\"}\n");
    let opts = ReadOptions {
        format: Format::Text,
        skip_bad: true,
        limit: None,
    };
    match read_samples(&path, &opts) {
        Err(Error::BadInput { line: 1, msg, .. }) => {
            assert!(msg.contains("all 2 were bad"), "{msg}")
        }
        other => panic!("expected BadInput, got {other:?}"),
    }
}

#[test]
fn limit_stops_after_good_samples() {
    let dir = scratch("limit");
    let text = format!(
        "{}bad\n{}",
        lines(&alpaca_records()[..1]),
        lines(&alpaca_records()[1..])
    );
    let path = write(&dir, "l.jsonl", &text);
    let full = std::fs::read(&path).unwrap();
    let report = read_samples(
        &path,
        &ReadOptions {
            format: Format::Auto,
            skip_bad: true,
            limit: Some(2),
        },
    )
    .unwrap();
    assert_eq!(report.samples.len(), 2);
    assert_eq!(report.samples[1].row, 2);
    assert_eq!(report.skipped.len(), 1);
    // The hash still covers the whole file.
    assert_eq!(report.sha256, super::jsonl::hex(&Sha256::digest(&full)));
    let report = read_samples(
        &path,
        &ReadOptions {
            format: Format::Auto,
            skip_bad: true,
            limit: Some(0),
        },
    )
    .unwrap();
    assert!(report.samples.is_empty());
    assert_eq!(report.format, Format::Alpaca);
}

#[test]
fn ids_are_stable_and_follow_content() {
    let dir = scratch("ids");
    let a = json!({"instruction": "Say hi.", "input": "", "output": "hi", "task": "t1"});
    let b = json!({"instruction": "Say hi.", "input": "", "output": "hello", "task": "t1"});
    let same_content_other_meta = json!({"task": "t2", "output": "hi", "instruction": "Say hi."});
    let path = write(
        &dir,
        "ids.jsonl",
        &lines(&[a.clone(), b, same_content_other_meta, a]),
    );
    let first = read(&path, Format::Alpaca);
    let second = read(&path, Format::Alpaca);
    let ids: Vec<&str> = first.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        second
            .samples
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>()
    );
    let hash = |id: &str| id.split_once('-').map(|(_, h)| h.to_string()).unwrap();
    for (row, id) in ids.iter().enumerate() {
        let h = hash(id);
        assert!(
            id.starts_with(&format!("{row}-"))
                && h.len() == 8
                && h.chars().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
    }
    assert_ne!(
        hash(ids[0]),
        hash(ids[1]),
        "different output, different hash"
    );
    // Key order, an absent `input` and meta do not change the hash; the row does change the id.
    assert_eq!(hash(ids[0]), hash(ids[2]));
    assert_eq!(hash(ids[0]), hash(ids[3]));
    assert_ne!(ids[0], ids[3]);
}

#[test]
fn empty_file_and_unknown_extension_are_errors() {
    let dir = scratch("empty");
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n\n")] {
        let err = read_samples(&write(&dir, name, text), &opts(Format::Auto))
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("empty file"), "{err}");
    }
    let err = read_samples(&write(&dir, "data.csv", "a,b\n"), &opts(Format::Auto))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.csv") && err.contains(".jsonl") && err.contains(".parquet"),
        "{err}"
    );
    let err = read_samples(&dir.join("missing.jsonl"), &opts(Format::Auto)).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    let err = read_samples(
        &write(&dir, "fake.parquet", "not parquet"),
        &opts(Format::Auto),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Parquet { .. }), "{err:?}");
}

#[test]
fn alpaca_from_parquet_matches_jsonl() {
    let dir = scratch("pq-alpaca");
    let path = write_parquet(
        &dir,
        "a.parquet",
        vec![
            (
                "instruction",
                strings(&[Some("Add the numbers."), Some("Say hi."), Some("Say bye.")]),
            ),
            ("input", strings(&[Some("2 3"), Some(""), None])),
            ("output", strings(&[Some("5"), Some("hi"), Some("bye")])),
            (
                "task",
                strings(&[Some("sum"), Some("greet"), Some("greet")]),
            ),
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
        ],
    );
    let report = read(&path, Format::Auto);
    check_alpaca(&report);
    assert_eq!(report.samples[1].meta.get("n"), Some(&json!(2)));
    assert_eq!(
        report.sha256,
        super::jsonl::hex(&Sha256::digest(std::fs::read(&path).unwrap()))
    );
    // The same records from JSONL get the same ids.
    let jsonl = read(
        &write(&dir, "a.jsonl", &lines(&alpaca_records())),
        Format::Alpaca,
    );
    let ids = |r: &ReadReport| r.samples.iter().map(|s| s.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&report), ids(&jsonl));
}

#[test]
fn chat_from_parquet_list_of_structs() {
    let dir = scratch("pq-chat");
    let second = vec![("user", "Hi"), ("assistant", "Hello!")];
    let path = write_parquet(
        &dir,
        "c.parquet",
        vec![
            ("messages", message_lists(&[chat_conversation(), second])),
            ("source", strings(&[Some("a"), Some("b")])),
        ],
    );
    let report = read(&path, Format::Auto);
    check_chat(&report);
    assert_eq!(report.samples.len(), 2);
    assert_eq!(
        report.samples[1].body,
        Body::Chat {
            messages: vec![user("Hi")],
            response: "Hello!".into()
        }
    );
    assert_eq!(report.samples[1].meta.get("source"), Some(&json!("b")));
    // Same id as the same conversation from JSONL.
    let msgs = chat_messages();
    let jsonl = read(
        &write(&dir, "c.jsonl", &lines(&[json!({"messages": msgs})])),
        Format::Chat,
    );
    assert_eq!(jsonl.samples[0].id, report.samples[0].id);
}

#[test]
fn chat_from_parquet_json_text_column() {
    let dir = scratch("pq-chat-text");
    let msgs = chat_messages();
    let text = serde_json::Value::Array(msgs).to_string();
    let path = write_parquet(
        &dir,
        "c.parquet",
        vec![("messages", strings(&[Some(&text), Some("not json")]))],
    );
    let report = read_samples(
        &path,
        &ReadOptions {
            format: Format::Chat,
            skip_bad: true,
            limit: None,
        },
    )
    .unwrap();
    check_chat(&report);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, 2, "1-based row");
    assert!(
        report.skipped[0].1.contains("not JSON"),
        "{:?}",
        report.skipped
    );
}

#[test]
fn prompt_completion_and_text_from_parquet() {
    let dir = scratch("pq-plain");
    let path = write_parquet(
        &dir,
        "p.parquet",
        vec![
            ("prompt", strings(&[Some("1+1=")])),
            ("completion", strings(&[Some("2")])),
        ],
    );
    let report = read(&path, Format::Auto);
    assert_eq!(report.format, Format::PromptCompletion);
    assert_eq!(report.samples[0].body, plain("1+1=", "2"));
    let path = write_parquet(
        &dir,
        "t.parquet",
        vec![("text", strings(&[Some("Once."), Some("Twice.")]))],
    );
    let report = read(&path, Format::Text);
    assert_eq!(report.samples.len(), 2);
    assert_eq!(report.samples[1].body, plain("", "Twice."));
}

#[test]
fn parquet_bad_rows_and_columns() {
    let dir = scratch("pq-bad");
    let path = write_parquet(
        &dir,
        "bad.parquet",
        vec![
            ("instruction", strings(&[Some("a"), Some("b"), Some("c")])),
            ("output", strings(&[Some("x"), None, Some("z")])),
        ],
    );
    match read_samples(&path, &opts(Format::Alpaca)) {
        Err(Error::BadInput {
            path: p,
            line: 2,
            msg,
        }) => {
            assert_eq!(p, path);
            assert!(msg.contains("missing string field `output`"), "{msg}");
        }
        other => panic!("expected BadInput at row 2, got {other:?}"),
    }
    // A missing or mistyped column is one file-level error.
    let err = read_samples(&path, &opts(Format::PromptCompletion)).unwrap_err();
    match err {
        Error::Parquet { msg, .. } => assert!(
            msg.contains("no column `prompt`") && msg.contains("instruction"),
            "{msg}"
        ),
        other => panic!("expected a Parquet error, got {other:?}"),
    }
    let path = write_parquet(
        &dir,
        "typed.parquet",
        vec![("text", Arc::new(Int64Array::from(vec![1])) as ArrayRef)],
    );
    match read_samples(&path, &opts(Format::Auto)) {
        Err(Error::Parquet { msg, .. }) => {
            assert!(msg.contains("column `text` has type Int64"), "{msg}")
        }
        other => panic!("expected a Parquet error, got {other:?}"),
    }
    let path = write_parquet(&dir, "empty.parquet", vec![("text", strings(&[]))]);
    let err = read_samples(&path, &opts(Format::Text))
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty file"), "{err}");
}

#[test]
fn real_natural_instructions_probe() {
    let path = Path::new("/work/shared/data/natural-instructions/probe.jsonl");
    if !path.exists() {
        eprintln!(
            "note: {} is absent; skipping the real-data test",
            path.display()
        );
        return;
    }
    let report = read(path, Format::Auto);
    assert_eq!(report.format, Format::Alpaca);
    assert_eq!(report.samples.len(), 848);
    assert!(report.skipped.is_empty());
    assert!(report
        .samples
        .iter()
        .all(|s| matches!(s.meta.get("task"), Some(serde_json::Value::String(_)))));
    let ids: std::collections::HashSet<&str> =
        report.samples.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.len(), 848);
}

#[test]
fn bundled_assets_read() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/data");
    let train = read(&dir.join("train.jsonl"), Format::Auto);
    assert_eq!((train.format, train.samples.len()), (Format::Alpaca, 300));
    let probe = read(&dir.join("probe.jsonl"), Format::Auto);
    assert_eq!((probe.format, probe.samples.len()), (Format::Alpaca, 8));
    let task = |s: &Sample| {
        s.meta
            .get("task")
            .and_then(|t| t.as_str())
            .map(str::to_string)
    };
    let train_tasks: std::collections::HashSet<_> = train.samples.iter().filter_map(task).collect();
    let probe_tasks: std::collections::HashSet<_> = probe.samples.iter().filter_map(task).collect();
    assert_eq!(probe_tasks.len(), 8, "8 distinct probe tasks");
    assert!(
        probe_tasks.is_subset(&train_tasks),
        "every probe task is in the bundled train set"
    );
}

#[test]
fn prompts_may_lack_a_response() {
    let dir = scratch("prompts");
    let read_p = |path: &Path| read_prompts(path, &opts(Format::Auto)).unwrap();
    // Bare prompts, and prompt + completion: prompt_completion, response "" when missing.
    let path = write(
        &dir,
        "p.jsonl",
        &lines(&[
            json!({"prompt": "a"}),
            json!({"prompt": "b", "completion": "c"}),
        ]),
    );
    let r = read_p(&path);
    assert_eq!(r.format, Format::PromptCompletion);
    assert_eq!(r.samples[0].body, plain("a", ""));
    assert_eq!(r.samples[1].body.response(), "c");
    assert!(read_samples(&path, &opts(Format::Auto)).is_err());
    // Instructions without output; conversations ending with a user turn or an answer.
    let path = write(
        &dir,
        "a.jsonl",
        &lines(&[
            json!({"instruction": "Say hi.", "task": "t"}),
            json!({"instruction": "x", "input": "y", "output": ""}),
        ]),
    );
    let r = read_p(&path);
    assert_eq!(r.format, Format::Alpaca);
    assert_eq!(
        r.samples[1].body,
        Body::Chat {
            messages: vec![user("x\n\ny")],
            response: String::new()
        }
    );
    assert_eq!(r.samples[0].meta["task"], "t");
    let path = write(
        &dir,
        "c.jsonl",
        &lines(&[
            json!({"messages": [{"role": "user", "content": "q"}]}),
            json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
        ]),
    );
    let r = read_p(&path);
    assert_eq!(
        r.samples[0].body,
        Body::Chat {
            messages: vec![user("q")],
            response: String::new()
        }
    );
    assert_eq!(r.samples[1].body.response(), "a");
    // A record that read_samples reads gets the same id and body.
    let full = write(&dir, "full.jsonl", &lines(&alpaca_records()));
    assert_eq!(read_p(&full).samples, read(&full, Format::Auto).samples);
    // Bad records still name the file and line; unknown keys are an error for the file.
    let path = write(
        &dir,
        "bad.jsonl",
        &lines(&[json!({"prompt": "a"}), json!({"prompt": 3})]),
    );
    let e = read_prompts(&path, &opts(Format::Auto))
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.jsonl:2"), "{e}");
    let path = write(&dir, "k.jsonl", &lines(&[json!({"question": "a"})]));
    let e = read_prompts(&path, &opts(Format::Auto))
        .unwrap_err()
        .to_string();
    assert!(e.contains("prompt format"), "{e}");
    // Parquet with an instruction column only.
    let pq = write_parquet(
        &dir,
        "i.parquet",
        vec![("instruction", strings(&[Some("Say hi.")]))],
    );
    let r = read_p(&pq);
    assert_eq!(r.format, Format::Alpaca);
    assert_eq!(r.samples[0].body.prompt_text(), "Say hi.");
    assert!(read_samples(&pq, &opts(Format::Alpaca)).is_err());
}

#[test]
fn good_edge_encodings_read_as_the_same_samples() {
    // The same three alpaca records as plain JSONL; with a UTF-8 BOM, CRLF line ends and no
    // final newline; and as Parquet written one record per row group.
    let dir = scratch("edge-encodings");
    let recs = alpaca_records();
    let plain_path = write(&dir, "plain.jsonl", &lines(&recs));
    let crlf: Vec<String> = recs.iter().map(|v| v.to_string()).collect();
    let edgy = write(
        &dir,
        "edgy.jsonl",
        &format!("\u{feff}{}", crlf.join("\r\n")),
    );
    let column = |key: &str| -> Vec<Option<String>> {
        recs.iter()
            .map(|r| r.get(key).and_then(|v| v.as_str()).map(String::from))
            .collect()
    };
    let (ins, inp, out) = (column("instruction"), column("input"), column("output"));
    let arr = |v: &[Option<String>]| -> ArrayRef {
        Arc::new(StringArray::from(
            v.iter().map(|s| s.as_deref()).collect::<Vec<_>>(),
        ))
    };
    let batch = RecordBatch::try_from_iter([
        ("instruction", arr(&ins)),
        ("input", arr(&inp)),
        ("output", arr(&out)),
        ("task", arr(&column("task"))),
    ])
    .unwrap();
    let pq = dir.join("groups.parquet");
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_size(1)
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(&pq).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let meta = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&pq).unwrap())
        .map(|r| parquet::file::reader::FileReader::metadata(&r).num_row_groups())
        .unwrap();
    assert_eq!(meta, recs.len(), "one row group per record");

    let want = read(&plain_path, Format::Alpaca).samples;
    assert_eq!(want.len(), recs.len());
    for path in [&edgy, &pq] {
        let got = read(path, Format::Alpaca).samples;
        let key = |s: &Sample| (s.id.clone(), s.row, format!("{:?}", s.body));
        assert_eq!(
            got.iter().map(key).collect::<Vec<_>>(),
            want.iter().map(key).collect::<Vec<_>>(),
            "{}",
            path.display()
        );
    }
}
