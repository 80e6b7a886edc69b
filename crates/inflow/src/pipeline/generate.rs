//! `generate`: the model's own answers to a file of prompts (or to one prompt), with one
//! model load, optionally at a fine-tuned adapter or checkpoint, decoded in batches through
//! the key/value cache ([`crate::model::generate`]).
//!
//! Prompts are read with [`data::read_prompts`] (any format inflow reads; responses may be
//! missing and are ignored) and rendered exactly as training and scoring render them
//! ([`Renderer::render`]'s prompt part). Each answer is one JSONL line that is itself a query
//! for `score`: a conversation becomes `{"messages": [...the prompt's turns, {"role":
//! "assistant", "content": ANSWER}]}` (chat format), a plain prompt `{"prompt": P,
//! "completion": ANSWER}` (prompt_completion format), so [`data::read_samples`] reads back the
//! same prompt with the answer as the response. Besides these the line keeps the input's other
//! fields and adds `id` (the input sample's id), `generated_by` (model, adapter, sha256,
//! max_new, temperature, top_p, seed, template), `finish_reason` (`stop` or `length`) and
//! `new_tokens`; the readers keep those in `meta`. An answer that is empty (or only
//! whitespace) cannot be a query, so it is not written; the summary lists its id.
//!
//! Lines are appended in input order, each written whole and the file synced after every
//! batch, so an interrupted run leaves its finished lines; with `resume`, ids already in the
//! output are skipped (a partial last line is dropped first).

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::report::{watch, Reporter};
use crate::data::tokens::{Renderer, Template};
use crate::data::{self, Body, Format, Message, ReadOptions, Sample};
use crate::index::Progress;
use crate::model::generate::{generate_batch, DecodeOptions, Generation};
use crate::model::LoadedModel;
use crate::{Error, Result};

/// Where the prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompts {
    /// A data file (`.jsonl`/`.parquet`) in any format [`data::read_prompts`] reads.
    File {
        path: PathBuf,
        format: Format,
        /// Only the first N prompts.
        limit: Option<usize>,
    },
    /// One user message (a one-turn conversation, id `prompt`).
    Text(String),
}

/// What to generate and where to write it.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub model: PathBuf,
    /// A PEFT adapter folder or an `inflow train` checkpoint applied to the model first.
    pub adapter: Option<PathBuf>,
    pub prompts: Prompts,
    /// The answers file (JSONL); `None` returns the answers in the summary instead.
    pub out: Option<PathBuf>,
    /// Continue an existing `out`, skipping the ids already in it (without it an existing
    /// `out` is an error).
    pub resume: bool,
    /// Start `out` afresh when it exists (its answers are replaced).
    pub force: bool,
    /// Most new tokens per answer.
    pub max_new: usize,
    /// 0 for greedy decoding, else the sampling temperature.
    pub temperature: f64,
    /// Nucleus mass for sampling, in (0, 1].
    pub top_p: f64,
    /// Seed of the sampling streams (one per prompt, keyed by its id).
    pub seed: u64,
    /// Prompts decoded together.
    pub batch_size: usize,
    /// How conversations are rendered.
    pub template: Template,
    /// Batches decoded at once, each on its own thread.
    pub threads: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            model: PathBuf::new(),
            adapter: None,
            prompts: Prompts::Text(String::new()),
            out: None,
            resume: false,
            force: false,
            max_new: 128,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            batch_size: 8,
            template: Template::Auto,
            threads: 1,
        }
    }
}

/// One prompt's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// The input sample's id.
    pub id: String,
    /// The decoded answer (special tokens kept; the stop token not included).
    pub text: String,
    pub new_tokens: usize,
    /// Whether a stop token ended it (otherwise `max_new` did).
    pub stopped: bool,
}

/// What a generate run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GenerateSummary {
    /// Prompts read from the input.
    pub prompts: usize,
    /// Prompts skipped because `out` already had their answer (`resume`).
    pub already_done: usize,
    /// Prompts answered in this run.
    pub answered: usize,
    /// Lines written to `out` in this run.
    pub written: usize,
    /// Ids whose answer was empty (not written: an empty response is no query).
    pub empty: Vec<String>,
    /// Answers ended by a stop token (the others reached `max_new`).
    pub stopped: usize,
    /// Tokens generated in this run.
    pub new_tokens: usize,
    /// Wall-clock seconds of the generation (after the model load).
    pub wall_seconds: f64,
    /// CPU seconds of this process over the same span (all threads; Linux only).
    pub cpu_seconds: Option<f64>,
    /// new_tokens / wall_seconds.
    pub tokens_per_second: f64,
    pub out: Option<PathBuf>,
    /// The record every written line carries as `generated_by`.
    pub generated_by: Value,
    /// The answers, when no `out` was given.
    pub answers: Vec<Answer>,
}

/// Keys of the output lines that come from the prompt, the answer or this run; an input field
/// with one of these names is not copied over (it would change the format detected).
const OWN_KEYS: [&str; 11] = [
    "instruction",
    "input",
    "output",
    "messages",
    "prompt",
    "completion",
    "text",
    "id",
    "generated_by",
    "finish_reason",
    "new_tokens",
];

/// Token ids that end an answer: the model's eos, `<|im_end|>` and `<|endoftext|>`.
pub fn stop_tokens(m: &LoadedModel) -> Vec<u32> {
    let mut stop = turn_stops(m);
    stop.extend(m.token_id("<|endoftext|>"));
    stop.sort_unstable();
    stop.dedup();
    stop
}

/// The model's eos and `<|im_end|>` ids, in that order and not deduplicated: the stops of the
/// greedy answers of `eval planted` and `eval selection` (recorded in selection's report).
pub fn turn_stops(m: &LoadedModel) -> Vec<u32> {
    [m.eos_token.as_deref(), Some("<|im_end|>")]
        .into_iter()
        .flatten()
        .filter_map(|t| m.token_id(t))
        .collect()
}

/// Runs a generate job (see the module doc).
pub fn generate(o: &GenerateOptions, reporter: &dyn Reporter) -> Result<GenerateSummary> {
    if o.batch_size == 0 {
        return Err(Error::Msg("--batch-size must be at least 1".into()));
    }
    let decode = DecodeOptions {
        max_new: o.max_new,
        stop: Vec::new(),
        temperature: o.temperature,
        top_p: o.top_p,
        seed: o.seed,
    };
    decode.validate()?;
    // Check the output before the (slow) model load: never the prompts file itself.
    if let Some(out) = &o.out {
        let inputs: Vec<&Path> = match &o.prompts {
            Prompts::File { path, .. } => vec![path],
            Prompts::Text(_) => Vec::new(),
        };
        // An existing file is continued (--resume) or started afresh (--force), never
        // replaced unasked.
        crate::output_guard::check_output("--out", out, &inputs)?;
    }
    let done = match &o.out {
        Some(out) if o.force && !o.resume && out.exists() => {
            std::fs::remove_file(out).map_err(|e| Error::io(out, e))?;
            HashSet::new()
        }
        Some(out) => done_ids(out, o.resume)?,
        None => HashSet::new(),
    };
    let mut model = super::score::load_model(&o.model, reporter)?;
    if let Some(dir) = &o.adapter {
        let info = crate::train::features::attach(&mut model, dir)?;
        reporter.note(&format!(
            "attached {} ({}{})",
            dir.display(),
            info.kind,
            info.step.map(|s| format!(", step {s}")).unwrap_or_default()
        ));
    }
    let decode = DecodeOptions {
        stop: stop_tokens(&model),
        ..decode
    };
    let renderer = Renderer::new(&model, o.template, usize::MAX)?;
    let samples = read(&o.prompts)?;
    let source = match &o.prompts {
        Prompts::File { path, .. } => path.display().to_string(),
        Prompts::Text(_) => "--prompt".to_string(),
    };
    let generated_by = json!({
        "model": o.model,
        "adapter": o.adapter,
        "sha256": model.source.sha256,
        "max_new": o.max_new,
        "temperature": o.temperature,
        "top_p": if o.temperature > 0.0 { json!(o.top_p) } else { Value::Null },
        "seed": if o.temperature > 0.0 { json!(o.seed) } else { Value::Null },
        "template": renderer.template(),
    });
    if let Some(out) = &o.out {
        check_same_run(out, &done, &generated_by)?;
    }
    let n_prompts = samples.len();
    let mut todo: Vec<(Sample, Vec<u32>)> = Vec::new();
    for s in samples {
        if done.contains(&s.id) {
            continue;
        }
        if let Body::Plain { prompt, .. } = &s.body {
            if prompt.is_empty() {
                return Err(Error::Msg(format!(
                    "{source}: sample {} (row {}) has an empty prompt (format text has no prompt side: the whole text is the response); give prompts as messages, instruction or prompt",
                    s.id, s.row
                )));
            }
        }
        let (text, _) = renderer.render(&s.body)?;
        let ids = model.encode(&text)?;
        if ids.is_empty() {
            return Err(Error::Msg(format!(
                "{source}: sample {} (row {}): the prompt has no tokens",
                s.id, s.row
            )));
        }
        todo.push((s, ids));
    }
    let already_done = n_prompts - todo.len();
    if already_done > 0 {
        reporter.note(&format!(
            "{already_done} of {n_prompts} prompts already answered in the output; {} to go",
            todo.len()
        ));
    }

    let t0 = Instant::now();
    let cpu0 = super::machine::process_cpu_seconds();
    let progress = Progress::default();
    progress.total.store(todo.len(), Ordering::Relaxed);
    let mut writer = match &o.out {
        Some(out) => Some(open_out(out)?),
        None => None,
    };
    let mut summary = GenerateSummary {
        prompts: n_prompts,
        already_done,
        answered: 0,
        written: 0,
        empty: Vec::new(),
        stopped: 0,
        new_tokens: 0,
        wall_seconds: 0.0,
        cpu_seconds: None,
        tokens_per_second: 0.0,
        out: o.out.clone(),
        generated_by: generated_by.clone(),
        answers: Vec::new(),
    };
    let batches: Vec<&[(Sample, Vec<u32>)]> = todo.chunks(o.batch_size).collect();
    let workers = o.threads.max(1).min(batches.len().max(1));
    let stop_all = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let model = &model;
    let result: Result<()> = watch(reporter, "generate", &progress, || {
        std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<Vec<Generation>>)>();
            for _ in 0..workers {
                let tx = tx.clone();
                let (batches, decode, progress) = (&batches, &decode, &progress);
                let (stop_all, next) = (&stop_all, &next);
                s.spawn(move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= batches.len() || stop_all.load(Ordering::Relaxed) {
                        break;
                    }
                    let prompts: Vec<&[u32]> =
                        batches[i].iter().map(|(_, ids)| ids.as_slice()).collect();
                    let keys: Vec<&str> = batches[i].iter().map(|(s, _)| s.id.as_str()).collect();
                    let r = generate_batch(
                        &model.llama,
                        &prompts,
                        &keys,
                        decode,
                        Some(&progress.tokens),
                    );
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            // Batches finish in any order; lines are written in input order.
            let mut pending: BTreeMap<usize, Vec<Generation>> = BTreeMap::new();
            let mut want = 0;
            for (i, r) in rx {
                let gens = match r {
                    Ok(g) => g,
                    Err(e) => {
                        stop_all.store(true, Ordering::Relaxed);
                        let first = batches[i].first().map_or("", |(s, _)| s.id.as_str());
                        return Err(Error::Msg(format!(
                            "generating the batch starting at {first}: {e}"
                        )));
                    }
                };
                pending.insert(i, gens);
                while let Some(gens) = pending.remove(&want) {
                    let r = emit(
                        model,
                        batches[want],
                        gens,
                        &generated_by,
                        writer.as_mut(),
                        &mut summary,
                    );
                    if let Err(e) = r {
                        stop_all.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                    progress
                        .samples
                        .fetch_add(batches[want].len(), Ordering::Relaxed);
                    want += 1;
                }
            }
            Ok(())
        })
    });
    result?;
    summary.wall_seconds = t0.elapsed().as_secs_f64();
    summary.cpu_seconds = match (cpu0, super::machine::process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    summary.tokens_per_second = summary.new_tokens as f64 / summary.wall_seconds.max(1e-9);
    if !summary.empty.is_empty() {
        reporter.note(&format!(
            "{} empty answers not written (an empty response is no query): {}",
            summary.empty.len(),
            summary.empty.join(", ")
        ));
    }
    Ok(summary)
}

/// The prompts as samples.
fn read(p: &Prompts) -> Result<Vec<Sample>> {
    match p {
        Prompts::Text(text) => {
            if text.trim().is_empty() {
                return Err(Error::Msg("--prompt is empty".into()));
            }
            Ok(vec![Sample {
                id: "prompt".into(),
                row: 0,
                body: Body::Chat {
                    messages: vec![Message {
                        role: "user".into(),
                        content: text.clone(),
                    }],
                    response: String::new(),
                },
                meta: Map::new(),
                input_len: 0,
            }])
        }
        Prompts::File {
            path,
            format,
            limit,
        } => {
            let r = data::read_prompts(
                path,
                &ReadOptions {
                    format: *format,
                    skip_bad: false,
                    limit: *limit,
                },
            )?;
            let mut seen = HashSet::new();
            for s in &r.samples {
                if !seen.insert(s.id.as_str()) {
                    return Err(Error::Msg(format!(
                        "{}: sample id {} occurs twice",
                        path.display(),
                        s.id
                    )));
                }
            }
            Ok(r.samples)
        }
    }
}

/// Decodes one batch's answers, writes their lines and counts them.
fn emit(
    model: &LoadedModel,
    batch: &[(Sample, Vec<u32>)],
    gens: Vec<Generation>,
    generated_by: &Value,
    writer: Option<&mut std::fs::File>,
    summary: &mut GenerateSummary,
) -> Result<()> {
    let mut lines = String::new();
    for ((sample, _), g) in batch.iter().zip(gens) {
        let text = model.decode(&g.tokens)?;
        summary.answered += 1;
        summary.new_tokens += g.tokens.len();
        summary.stopped += g.stopped as usize;
        let answer = Answer {
            id: sample.id.clone(),
            text,
            new_tokens: g.tokens.len(),
            stopped: g.stopped,
        };
        if writer.is_some() {
            if answer.text.trim().is_empty() {
                summary.empty.push(answer.id);
                continue;
            }
            lines.push_str(
                &serde_json::to_string(&answer_record(sample, &answer, generated_by))
                    .map_err(|e| Error::Msg(format!("internal: answer to JSON: {e}")))?,
            );
            lines.push('\n');
            summary.written += 1;
        } else {
            summary.answers.push(answer);
        }
    }
    if let (Some(f), Some(out)) = (writer, &summary.out) {
        f.write_all(lines.as_bytes())
            .and_then(|_| f.flush())
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(out, e))?;
    }
    Ok(())
}

/// The output line of one answer: the prompt in its own format with the answer as the
/// response, the input's other fields, and this run's.
pub fn answer_record(sample: &Sample, answer: &Answer, generated_by: &Value) -> Value {
    let mut m = Map::new();
    match &sample.body {
        Body::Chat { messages, .. } => {
            let mut all: Vec<Value> = messages
                .iter()
                .map(|t| json!({"role": t.role, "content": t.content}))
                .collect();
            all.push(json!({"role": "assistant", "content": answer.text}));
            m.insert("messages".into(), Value::Array(all));
        }
        Body::Plain { prompt, .. } => {
            m.insert("prompt".into(), json!(prompt));
            m.insert("completion".into(), json!(answer.text));
        }
    }
    for (k, v) in &sample.meta {
        if k == "id" {
            // The input's own `id` field (inflow's id takes the name).
            m.insert("input_record_id".into(), v.clone());
        } else if !OWN_KEYS.contains(&k.as_str()) {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert("id".into(), json!(sample.id));
    m.insert("generated_by".into(), generated_by.clone());
    m.insert(
        "finish_reason".into(),
        json!(if answer.stopped { "stop" } else { "length" }),
    );
    m.insert("new_tokens".into(), json!(answer.new_tokens));
    Value::Object(m)
}

/// Ids already answered in `out` (empty when it does not exist). Without `resume` an existing
/// file is an error. A last line cut short by an interruption is removed.
fn done_ids(out: &Path, resume: bool) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    let text = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(Error::io(out, e)),
    };
    if !resume {
        return Err(Error::Msg(format!(
            "--out {}: exists already; pass --resume to continue it (skipping the prompts it answers) or --force to start it afresh",
            out.display()
        )));
    }
    let whole = match text.rfind('\n') {
        Some(i) => i + 1,
        None => 0,
    };
    if whole < text.len() {
        // An interrupted write: drop the partial line.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| Error::io(out, e))?;
        f.set_len(whole as u64).map_err(|e| Error::io(out, e))?;
    }
    for (i, line) in text[..whole].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| Error::BadInput {
            path: out.into(),
            line: i + 1,
            msg: format!("not a JSON line of a generate run ({e})"),
        })?;
        let id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::BadInput {
                path: out.into(),
                line: i + 1,
                msg: "no string `id`: not a line of a generate run".into(),
            })?;
        ids.insert(id.to_string());
    }
    Ok(ids)
}

/// With `resume`, the lines already in `out` must come from the same settings: the same
/// model and adapter (by sha256; their paths may differ) and decoding options.
fn check_same_run(out: &Path, done: &HashSet<String>, generated_by: &Value) -> Result<()> {
    if done.is_empty() {
        return Ok(());
    }
    let settings = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("model");
            m.remove("adapter");
        }
        v
    };
    let want = settings(generated_by);
    let text = std::fs::read_to_string(out).map_err(|e| Error::io(out, e))?;
    for (i, line) in text.lines().enumerate() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v.get("generated_by").map(settings) != Some(want.clone()) {
            return Err(Error::BadInput {
                path: out.into(),
                line: i + 1,
                msg: format!(
                    "--resume: this line was generated with {}, this run uses {generated_by}; use another --out",
                    v.get("generated_by").unwrap_or(&Value::Null)
                ),
            });
        }
    }
    Ok(())
}

/// Opens `out` for appending, creating its folder.
fn open_out(out: &Path) -> Result<std::fs::File> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(|e| Error::io(out, e))
}
