//! Everything `serve` shows, loaded once at start and read-only afterwards: the store's
//! facts and samples, the training data's tasks, the loaded score files and their queries.
//! Nothing here is ever looked up by a path taken from a request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use inflow::data::{self, Format, ReadOptions, Sample};
use inflow::store::{SampleRow, Store};
use serde_json::{json, Value};

use crate::histogram::Histogram;
use crate::scoreset::{self, ScoreSet};
use crate::{Error, Result};

/// A query of the loaded score files, with its text where `--queries` gave it.
#[derive(Debug, Clone)]
pub struct Query {
    pub id: String,
    pub task: Option<String>,
    pub prompt: Option<String>,
    pub response: Option<String>,
}

/// The read-only state of a `serve` run.
pub struct Catalog {
    pub store_dir: PathBuf,
    /// The store's facts for the overview (model, data, projection, dim, dtype, bytes, …).
    pub facts: Value,
    pub samples: Vec<SampleRow>,
    /// Per training row: its `task` field in the training data, when the data file is there.
    pub tasks: Vec<Option<String>>,
    /// Per training row: prompt and response as the data file has them (falls back to the
    /// store's rendered prompt).
    pub texts: Vec<(String, String)>,
    pub row_of: HashMap<String, usize>,
    /// The training data file and its format (for downloading a selection in its format).
    pub data: Option<PathBuf>,
    /// Squared feature norms ‖g‖², the `dot` self-score, per row (stores with norms).
    pub self_score: Option<Vec<f32>>,
    pub loss_hist: Histogram,
    pub self_hist: Option<Histogram>,
    pub queries: Vec<Query>,
    pub methods: Vec<ScoreSet>,
}

fn start(msg: impl Into<String>) -> Error {
    Error::Start(msg.into())
}

/// Bytes of the regular files under `dir` (links are not followed).
fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.path().symlink_metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn task_of(s: &Sample) -> Option<String> {
    s.meta
        .get("task")
        .and_then(|t| t.as_str())
        .map(String::from)
}

/// The feature map in words: "logra 16×16", "dense → 8192", "encoder", …
fn projection_text(features: &Value) -> String {
    let p = &features["projection"];
    let kind = p["kind"]
        .as_str()
        .or_else(|| features["kind"].as_str())
        .unwrap_or("?");
    match (
        p["rank_in"].as_u64(),
        p["rank_out"].as_u64(),
        p["dim"].as_u64(),
    ) {
        (Some(i), Some(o), _) => format!("{kind} rank {o}×{i}"),
        (_, _, Some(d)) => format!("{kind} → {d}"),
        _ => kind.to_string(),
    }
}

impl Catalog {
    /// Opens the store, reads its samples (and training data when it is still where run.json
    /// says), and joins every score file to them; `queries` names the query file the score
    /// files were made from (for the queries' text and task).
    pub fn load(store: &Path, score_files: &[PathBuf], queries: Option<&Path>) -> Result<Catalog> {
        if !store.join("manifest.json").is_file() {
            return Err(start(format!(
                "{}: not a store (no manifest.json); make one with `inflow index`",
                store.display()
            )));
        }
        let s = Store::open(store).map_err(|e| start(e.to_string()))?;
        if !s.is_complete() {
            return Err(start(format!(
                "{}: the store is not complete ({} of {} rows); finish it with the same `inflow index` command",
                store.display(),
                s.n_done_rows(),
                s.n_samples()
            )));
        }
        let samples = s.samples().map_err(|e| start(e.to_string()))?;
        let row_of: HashMap<String, usize> = samples
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let n = samples.len();

        // The training data: tasks and plain text, and the file a selection is cut from.
        let run = inflow::index::read_run_info(store).ok();
        let mut tasks = vec![None; n];
        let mut texts: Vec<(String, String)> = samples
            .iter()
            .map(|r| (r.prompt.clone(), r.response.clone()))
            .collect();
        let mut data = None;
        if let Some(run) = &run {
            let read = inflow::pipeline::score::recorded_read(&s, run).ok();
            if let (true, Some(read)) = (run.data_path.is_file(), read) {
                if let Ok(rep) = data::read_samples(&run.data_path, &read) {
                    for smp in &rep.samples {
                        if let Some(&r) = row_of.get(&smp.id) {
                            tasks[r] = task_of(smp);
                            texts[r] = (smp.body.prompt_text(), smp.body.response().to_string());
                        }
                    }
                    data = Some(run.data_path.clone());
                }
            }
        }

        let mut norms = Vec::with_capacity(n);
        for i in 0..s.n_shards() {
            match s.shard_norms(i) {
                Ok(v) => norms.extend(v),
                Err(_) => break,
            }
        }
        let self_score =
            (norms.len() == n && n > 0).then(|| norms.iter().map(|x| x * x).collect::<Vec<f32>>());
        let loss: Vec<f32> = samples.iter().map(|r| r.loss).collect();

        let queries_file = queries;
        let queries_given = match queries_file {
            Some(p) => {
                let rep = data::read_samples(
                    p,
                    &ReadOptions {
                        format: Format::Auto,
                        skip_bad: false,
                        limit: None,
                    },
                )
                .map_err(|e| start(format!("--queries: {e}")))?;
                rep.samples
                    .iter()
                    .map(|q| Query {
                        id: q.id.clone(),
                        task: task_of(q),
                        prompt: Some(q.body.prompt_text()),
                        response: Some(q.body.response().to_string()),
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        let raws = score_files
            .iter()
            .map(|f| scoreset::read(f))
            .collect::<Result<Vec<_>>>()?;
        let mut queries: Vec<Query> = queries_given;
        let mut query_index: HashMap<String, usize> = queries
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.clone(), i))
            .collect();
        let given = queries.len();
        for raw in &raws {
            for q in raw.query.iter().flatten() {
                if !query_index.contains_key(q) {
                    if given > 0 {
                        return Err(start(format!(
                            "{}: query id {q} is not in --queries {}: the score file was made from other queries",
                            raw.file.display(),
                            queries_file.map_or(String::new(), |p| p.display().to_string())
                        )));
                    }
                    query_index.insert(q.clone(), queries.len());
                    queries.push(Query {
                        id: q.clone(),
                        task: None,
                        prompt: None,
                        response: None,
                    });
                }
            }
        }
        let mut methods: Vec<ScoreSet> = Vec::new();
        for raw in raws {
            // Two files of one method keep both, told apart by their file names.
            let mut name = raw.method.clone();
            if methods.iter().any(|m| m.name == name) {
                let stem = raw
                    .file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                name = format!("{name} ({stem})");
            }
            let set = raw.join(name, &row_of, n, &query_index, queries.len(), store)?;
            methods.push(set);
        }

        let spec = s.spec();
        let mut tasks_count: HashMap<&str, usize> = HashMap::new();
        for t in tasks.iter().flatten() {
            *tasks_count.entry(t).or_default() += 1;
        }
        let mut task_list: Vec<(&str, usize)> = tasks_count.into_iter().collect();
        task_list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        // The per-layer list can run to hundreds of entries: the page gets its count.
        let mut features = spec.features.clone();
        let n_layers = features
            .as_object_mut()
            .and_then(|f| f.remove("layers"))
            .and_then(|l| l.as_array().map(Vec::len));
        let facts = json!({
            "store": store.display().to_string(),
            "model": spec.model,
            "data": spec.data,
            "features": features,
            "projection": projection_text(&spec.features),
            "n_layers": n_layers,
            "dtype": format!("{:?}", spec.dtype).to_lowercase(),
            "dim": spec.dim,
            "compact": spec.compact,
            "n_samples": n,
            "n_shards": s.n_shards(),
            "bytes": folder_bytes(store),
            "run": run.as_ref().map(|r| json!({
                "model_path": r.model_path, "data_path": r.data_path, "format": r.format,
            })),
            "data_found": data.is_some(),
            "tasks": task_list.iter().map(|(t, c)| json!({"task": t, "n": c})).collect::<Vec<_>>(),
        });
        Ok(Catalog {
            store_dir: store.to_path_buf(),
            facts,
            loss_hist: Histogram::of(&loss, 30),
            self_hist: self_score.as_deref().map(|v| Histogram::of(v, 30)),
            samples,
            tasks,
            texts,
            row_of,
            data,
            self_score,
            queries,
            methods,
        })
    }

    /// Query indices whose id, task or text holds `needle` (case-insensitive).
    pub fn search_queries(&self, needle: &str) -> Vec<usize> {
        let n = needle.to_lowercase();
        (0..self.queries.len())
            .filter(|&i| {
                let q = &self.queries[i];
                n.is_empty()
                    || [
                        Some(&q.id),
                        q.task.as_ref(),
                        q.prompt.as_ref(),
                        q.response.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .any(|s| s.to_lowercase().contains(&n))
            })
            .collect()
    }

    /// Training rows whose id, task or text holds `needle` (case-insensitive).
    pub fn search_samples(&self, needle: &str) -> Vec<usize> {
        let n = needle.to_lowercase();
        (0..self.samples.len())
            .filter(|&r| {
                n.is_empty()
                    || self.samples[r].id.to_lowercase().contains(&n)
                    || self.tasks[r]
                        .as_ref()
                        .is_some_and(|t| t.to_lowercase().contains(&n))
                    || self.texts[r].0.to_lowercase().contains(&n)
                    || self.texts[r].1.to_lowercase().contains(&n)
            })
            .collect()
    }

    /// A training row as the pages show it.
    pub fn sample_json(&self, row: usize) -> Value {
        let s = &self.samples[row];
        json!({
            "index": row,
            "id": s.id,
            "row": s.row,
            "task": self.tasks[row],
            "prompt": self.texts[row].0,
            "response": self.texts[row].1,
            "loss": s.loss,
            "n_tokens": s.n_tokens,
            "n_loss_tokens": s.n_loss_tokens,
            "truncated": s.truncated,
            "self_score": self.self_score.as_ref().map(|v| v[row]),
        })
    }

    /// A query as the pages show it.
    pub fn query_json(&self, q: usize) -> Value {
        let x = &self.queries[q];
        json!({
            "index": q,
            "id": x.id,
            "task": x.task,
            "prompt": x.prompt,
            "response": x.response,
        })
    }
}
