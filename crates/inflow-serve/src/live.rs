//! Live queries: a prompt and response typed in the page (or a pasted record), featurized at
//! the store's weights and scored with a registry method. One worker thread owns the model
//! and runs the jobs one after another, so the model never runs twice at once and a burst of
//! requests queues instead of multiplying memory.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use inflow::data::Format;
use inflow::index::Progress;
use inflow::methods::{self, Context, Need, Options, TrainSet};
use inflow::pipeline::report::{watch, Reporter, Silent};
use serde::Serialize;
use serde_json::Value;

use crate::{Error, Result};

/// The longest live query, in characters of prompt + response (or of the pasted record).
pub const MAX_LIVE_CHARS: usize = 16_000;
/// Jobs waiting at most; a request beyond is refused (busy) rather than queued forever.
pub const MAX_QUEUED: usize = 16;
/// Finished jobs kept for their pages to read.
const KEEP_FINISHED: usize = 64;

/// What a live query asks.
#[derive(Debug, Clone)]
pub struct LiveRequest {
    /// One record in any data format the readers know (alpaca, chat, prompt/completion, text).
    pub record: Value,
    pub method: String,
    pub top_k: usize,
}

/// Where a job is.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running {
        stage: String,
        done: usize,
        total: usize,
    },
    Done {
        method: String,
        sign_convention: String,
        /// The query as featurized (prompt then response).
        query_text: String,
        /// (training sample id, score), best first.
        hits: Vec<(String, f32)>,
    },
    Failed {
        error: String,
    },
}

/// A job and the order in which it started and ended (events of one counter, so the jobs'
/// run intervals can be checked not to overlap).
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: u64,
    pub method: String,
    #[serde(flatten)]
    pub state: JobState,
    pub started_event: Option<u64>,
    pub finished_event: Option<u64>,
}

#[derive(Default)]
struct Jobs {
    all: BTreeMap<u64, Job>,
    waiting: VecDeque<u64>,
    finished: VecDeque<u64>,
}

/// The live-query worker and its job table.
pub struct LiveQueue {
    jobs: Arc<Mutex<Jobs>>,
    tx: Mutex<mpsc::Sender<(u64, LiveRequest)>>,
    next: AtomicU64,
    /// The methods a live query may use on this store.
    pub methods: Vec<String>,
}

/// The registry methods that can score one new query against `store` here: not the
/// checkpoint methods, curvature ones only once `fit` has run, RepSim only where the store
/// kept hidden states.
pub fn usable_methods(store: &Path) -> Vec<String> {
    let fitted = store.join("curvature").join("kfac.safetensors").is_file();
    let hidden = store.join("repsim-last").join("manifest.json").is_file();
    methods::names()
        .into_iter()
        .filter(|name| {
            let Ok(m) = methods::by_name(name) else {
                return false;
            };
            let needs = m.needs();
            name != "influence"
                && !needs.contains(&Need::Checkpoints)
                && (fitted || !needs.contains(&Need::Curvature))
                && (hidden || !name.starts_with("repsim"))
                && (name != "encoder" || !hidden)
        })
        .collect()
}

fn lock(jobs: &Mutex<Jobs>) -> std::sync::MutexGuard<'_, Jobs> {
    // A panic inside a job is caught below; the table itself stays consistent.
    jobs.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports a job's progress into its table entry.
struct JobReporter<'a> {
    jobs: &'a Mutex<Jobs>,
    id: u64,
}

impl JobReporter<'_> {
    fn set(&self, stage: &str, done: usize, total: usize) {
        if let Some(j) = lock(self.jobs).all.get_mut(&self.id) {
            j.state = JobState::Running {
                stage: stage.to_string(),
                done,
                total,
            };
        }
    }
}

impl Reporter for JobReporter<'_> {
    fn start(&self, stage: &str, total: usize) {
        self.set(stage, 0, total);
    }
    fn update(&self, stage: &str, done: usize, total: usize, _note: &str) {
        self.set(stage, done, total);
    }
    fn finish(&self, _stage: &str) {}
    fn note(&self, _line: &str) {}
}

impl LiveQueue {
    /// Loads the store's model (at its adapter or checkpoint, hash-checked) on a worker
    /// thread and returns once it is ready, or with the load's error.
    pub fn start(
        store: &Path,
        model: &Path,
        threads: usize,
        scratch: PathBuf,
    ) -> Result<LiveQueue> {
        let (tx, rx) = mpsc::channel::<(u64, LiveRequest)>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
        let jobs: Arc<Mutex<Jobs>> = Arc::default();
        let worker_jobs = Arc::clone(&jobs);
        let store = store.to_path_buf();
        let model = model.to_path_buf();
        std::thread::Builder::new()
            .name("inflow-live".into())
            .spawn(move || {
                // The model, the training set's settings and its row count are read once;
                // every job reuses them.
                let start = || -> Result<_> {
                    let loaded = inflow::pipeline::store_model::load(&store, Some(&model), &Silent)
                        .map_err(|e| Error::Start(format!("--model: {e}")))?;
                    let train = inflow::pipeline::score::train_set(&store)?;
                    let n_rows = inflow::store::Store::open(&store)?.n_samples();
                    Ok((loaded.model, train, n_rows))
                };
                let (loaded, train, n_rows) = match start() {
                    Ok(m) => {
                        let _ = ready_tx.send(Ok(()));
                        m
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let events = AtomicU64::new(0);
                for (id, req) in rx {
                    let started = events.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut j = lock(&worker_jobs);
                        j.waiting.retain(|&w| w != id);
                        if let Some(job) = j.all.get_mut(&id) {
                            job.started_event = Some(started);
                            job.state = JobState::Running {
                                stage: "featurizing the query".into(),
                                done: 0,
                                total: 1,
                            };
                        }
                    }
                    let reporter = JobReporter {
                        jobs: &worker_jobs,
                        id,
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_job(
                            &train, n_rows, &loaded, &req, threads, &scratch, id, &reporter,
                        )
                    }));
                    let state = match run {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => JobState::Failed {
                            error: e.to_string(),
                        },
                        Err(_) => JobState::Failed {
                            error: "the live query stopped on an internal error".into(),
                        },
                    };
                    let finished = events.fetch_add(1, Ordering::SeqCst);
                    let mut j = lock(&worker_jobs);
                    if let Some(job) = j.all.get_mut(&id) {
                        job.state = state;
                        job.finished_event = Some(finished);
                    }
                    j.finished.push_back(id);
                    while j.finished.len() > KEEP_FINISHED {
                        if let Some(old) = j.finished.pop_front() {
                            j.all.remove(&old);
                        }
                    }
                }
            })
            .map_err(|e| Error::Start(format!("starting the live-query worker: {e}")))?;
        ready_rx
            .recv()
            .map_err(|_| Error::Start("the live-query worker stopped while loading".into()))??;
        Ok(LiveQueue {
            jobs,
            tx: Mutex::new(tx),
            next: AtomicU64::new(1),
            methods: Vec::new(),
        })
    }

    /// Queues a request; its job id, or an error when the queue is full.
    pub fn submit(&self, req: LiveRequest) -> Result<u64> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        {
            let mut j = lock(&self.jobs);
            if j.waiting.len() >= MAX_QUEUED {
                return Err(Error::Busy(format!(
                    "{} live queries are already waiting; try again when they are done",
                    j.waiting.len()
                )));
            }
            j.waiting.push_back(id);
            j.all.insert(
                id,
                Job {
                    id,
                    method: req.method.clone(),
                    state: JobState::Queued,
                    started_event: None,
                    finished_event: None,
                },
            );
        }
        let sent = self
            .tx
            .lock()
            .map_err(|_| Error::Busy("live queue unavailable".into()))?
            .send((id, req));
        if sent.is_err() {
            let mut j = lock(&self.jobs);
            j.all.remove(&id);
            j.waiting.retain(|&w| w != id);
            return Err(Error::Busy("the live-query worker has stopped".into()));
        }
        Ok(id)
    }

    /// A job's state and, while it waits, how many jobs are ahead of it.
    pub fn job(&self, id: u64) -> Option<(Job, usize)> {
        let j = lock(&self.jobs);
        let job = j.all.get(&id)?.clone();
        let ahead = j.waiting.iter().position(|&w| w == id).unwrap_or(0);
        Some((job, ahead))
    }
}

/// Featurizes and scores one live query (written to a scratch file outside the store, read
/// back by the ordinary query reader, so a pasted record gets the usual `field … expected`
/// errors).
#[allow(clippy::too_many_arguments)]
fn run_job(
    train: &TrainSet,
    n_rows: usize,
    model: &inflow::model::LoadedModel,
    req: &LiveRequest,
    threads: usize,
    scratch: &Path,
    id: u64,
    reporter: &dyn Reporter,
) -> Result<JobState> {
    let method = methods::by_name(&req.method).map_err(|e| Error::Request(e.to_string()))?;
    let path = scratch.join(format!("live-{id}.jsonl"));
    let line = serde_json::to_string(&req.record).map_err(|e| Error::Request(e.to_string()))?;
    std::fs::write(&path, format!("{line}\n")).map_err(|e| Error::Io(path.clone(), e))?;
    let queries = inflow::pipeline::score::read_queries(&path, Format::Auto, None).map_err(|e| {
        Error::Request(
            e.to_string()
                .replace(&path.display().to_string(), "live query"),
        )
    });
    let _ = std::fs::remove_file(&path);
    let queries = queries?;
    let options = Options::default();
    let progress = Progress::default();
    let on_rows = |d: usize| reporter.update("scoring the training rows", d, n_rows, "");
    let ctx = Context {
        train: TrainSet {
            store: train.store,
            data: train.data.clone(),
            read: train.read.clone(),
            features: train.features.clone(),
        },
        model: Some(model),
        model_path: None,
        queries: &queries,
        queries_path: &path,
        query_features: None,
        options: &options,
        top_k: req.top_k,
        full: false,
        threads,
        scratch: scratch.join(format!("work-{id}")),
        progress: &progress,
        on_rows: &on_rows,
    };
    let scored = watch(reporter, "featurizing the query", &progress, || {
        method.score(&ctx)
    });
    let _ = std::fs::remove_dir_all(scratch.join(format!("work-{id}")));
    let scored = scored?;
    let query_text = scored
        .query_rows
        .first()
        .map(|r| format!("{}{}", r.prompt, r.response))
        .unwrap_or_default();
    Ok(JobState::Done {
        method: scored.method,
        sign_convention: scored.sign_convention,
        query_text,
        hits: scored
            .result
            .topk
            .first()
            .map(|list| {
                list.iter()
                    .filter_map(|&(row, s)| scored.train_ids.get(row).map(|id| (id.clone(), s)))
                    .collect()
            })
            .unwrap_or_default(),
    })
}
