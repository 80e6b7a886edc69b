//! Building a gradient store: samples → tokens → model pass → features → store, shard by
//! shard. A killed run resumes where it stopped (shards are written atomically and the
//! manifest lists only whole ones); a rerun with other settings is refused by the store.

use crate::data::tokens::{Cuts, Renderer, Template, Truncate};
use crate::data::{self, ReadOptions, Sample};
use crate::features::{FeatureSpec, Projection, Projector};
use crate::model::{select_modules, Captured, Labels, LoadedModel, TokenSeq};
use crate::store::{Dtype, Part, SampleRow, Store, StoreSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Sub-store (beside the gradient features) of final hidden states at the last prompt token.
pub const REPSIM_LAST: &str = "repsim-last";
/// Sub-store of final hidden states averaged over the response tokens.
pub const REPSIM_MEAN: &str = "repsim-mean";

/// What one feature pass yields per sample, row-major.
#[derive(Debug, Clone, Default)]
pub struct Featurized {
    /// Gradient features, n × spec dim.
    pub grads: Vec<f32>,
    /// Final hidden state at the last prompt token, n × hidden.
    pub repsim_last: Vec<f32>,
    /// Final hidden state averaged over response tokens, n × hidden.
    pub repsim_mean: Vec<f32>,
    pub rows: Vec<SampleRow>,
}

impl Featurized {
    fn extend(&mut self, o: Featurized) {
        self.grads.extend(o.grads);
        self.repsim_last.extend(o.repsim_last);
        self.repsim_mean.extend(o.repsim_mean);
        self.rows.extend(o.rows);
    }

    /// The rows of feature set `name` (`gradients`, [`REPSIM_LAST`], [`REPSIM_MEAN`]).
    pub fn set(&self, name: &str) -> Result<&[f32]> {
        match name {
            "gradients" => Ok(&self.grads),
            REPSIM_LAST => Ok(&self.repsim_last),
            REPSIM_MEAN => Ok(&self.repsim_mean),
            _ => Err(Error::Msg(format!("unknown feature set `{name}`"))),
        }
    }
}

/// Sees every micro-batch's model pass beside the features, so that statistics of the same
/// pass (K-FAC's token factors, implemented in `curvature::kfac`) need no pass of their own and
/// this module needs no curvature. Each worker part has its own observer; the parts' observers
/// are merged in sample order.
pub trait PassObserver: Default + Send {
    /// One micro-batch: what the pass captured for `seqs`, and the projector of its features.
    fn observe(&mut self, projector: &Projector, cap: &Captured, seqs: &[TokenSeq]) -> Result<()>;
    /// Appends the observations of the samples that follow.
    fn merge(&mut self, later: Self);
    /// Writes the observations of shard `shard` into the store folder `out`. Called before the
    /// shard itself is written, so a shard the manifest lists always has them.
    fn save(&self, out: &Path, shard: usize) -> Result<()>;
}

/// Observes nothing (query features, checkpoint stores).
impl PassObserver for () {
    fn observe(&mut self, _: &Projector, _: &Captured, _: &[TokenSeq]) -> Result<()> {
        Ok(())
    }
    fn merge(&mut self, _: Self) {}
    fn save(&self, _: &Path, _: usize) -> Result<()> {
        Ok(())
    }
}

/// One micro-batch's output of a [`FeaturePass`], row-major.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Feature rows, B × spec dim.
    pub grads: Vec<f32>,
    /// Per-sample losses.
    pub losses: Vec<f32>,
    /// Pooled final hidden states, B × hidden (empty when the pass has none).
    pub repsim_last: Vec<f32>,
    pub repsim_mean: Vec<f32>,
}

/// What turns rendered samples into feature rows: the tracked base Linears' gradients
/// ([`Featurizer`]) or the LoRA factors' (`train::features`). The featurization loop
/// ([`featurize_with`]) and the store loop ([`index_pass`]) are written once over it.
pub trait FeaturePass: Sync {
    fn renderer(&self) -> &Renderer<'_>;
    fn spec(&self) -> &FeatureSpec;
    /// Features and losses of one micro-batch; `observer` sees its model pass.
    fn batch<O: PassObserver>(&self, seqs: &[TokenSeq], observer: &mut O) -> Result<Batch>;

    /// Feature rows and sample records for `samples`, in order: [`featurize_with`], observing
    /// nothing of the pass.
    fn featurize(
        &self,
        samples: &[Sample],
        batch_size: usize,
        threads: usize,
        progress: &Progress,
    ) -> Result<Featurized>
    where
        Self: Sized,
    {
        let (out, ()) = featurize_with(self, samples, batch_size, threads, progress)?;
        Ok(out)
    }
}

/// (last prompt token, mean over response tokens) hidden states of each sample of a batch.
pub fn pooled_hidden(
    hidden: &candle_core::Tensor,
    seqs: &[TokenSeq],
) -> Result<(Vec<f32>, Vec<f32>)> {
    let h = hidden.to_dtype(candle_core::DType::F32)?;
    let (mut last, mut mean) = (Vec::new(), Vec::new());
    for (b, s) in seqs.iter().enumerate() {
        let rows: Vec<Vec<f32>> = h.get(b)?.to_vec2()?;
        let first_resp = s.loss_mask.iter().position(|&m| m).unwrap_or(s.ids.len());
        last.extend_from_slice(&rows[first_resp.saturating_sub(1).min(s.ids.len() - 1)]);
        let resp: Vec<usize> = (0..s.ids.len()).filter(|&t| s.loss_mask[t]).collect();
        let dim = rows[0].len();
        let mut m = vec![0f32; dim];
        for &t in &resp {
            for (a, x) in m.iter_mut().zip(&rows[t]) {
                *a += x;
            }
        }
        let n = resp.len().max(1) as f32;
        mean.extend(m.into_iter().map(|x| x / n));
    }
    Ok((last, mean))
}

/// How features are computed (shared by `index` and by query featurization in `score`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureOptions {
    pub projection: Projection,
    pub seed: u64,
    /// `--modules` pattern (see [`select_modules`]).
    pub modules: String,
    pub template: Template,
    pub max_tokens: usize,
    /// What goes when a sample is over `max_tokens`. Not written when `left`: run.json files
    /// (and LDS keys) without the field are `left`, the policy before the option existed.
    #[serde(
        default = "Truncate::legacy",
        skip_serializing_if = "Truncate::is_left"
    )]
    pub truncate: Truncate,
    /// The targets of the loss: the data's (training gradients) or sampled from the model
    /// (pseudo-gradients, for fitting the true Fisher). Older stores have none: data.
    #[serde(default)]
    pub labels: Labels,
}

/// Options of one `index` run.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    pub data: PathBuf,
    pub read: ReadOptions,
    pub features: FeatureOptions,
    pub dtype: Dtype,
    pub shard_size: usize,
    pub batch_size: usize,
    /// Worker threads; each runs candle single-threaded on its own micro-batches.
    pub threads: usize,
    /// Index only this part of the rows into a part store (`index --shard I/N`), for
    /// `store merge` to join; `None`: every row.
    pub part: Option<Part>,
}

/// Where the inputs of a store live, written beside the manifest as `run.json` so `score`
/// can find the model and data again. Not part of the store's identity (hashes are).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub model_path: PathBuf,
    pub data_path: PathBuf,
    pub features: FeatureOptions,
    pub format: String,
}

/// Counts reported when an index run ends.
#[derive(Debug, Clone, Serialize)]
pub struct IndexSummary {
    pub n_samples: usize,
    pub n_skipped_bad: usize,
    pub n_truncated: usize,
    /// The truncation policy and what it cut in the `n_written` samples of the shards this
    /// run wrote (`n_truncated` = `cuts.samples`).
    pub truncate: Truncate,
    pub cuts: Cuts,
    pub n_written: usize,
    pub shards_written: usize,
    pub shards_reused: usize,
    pub dim: usize,
    pub tokens: usize,
    pub bytes_per_sample: f64,
}

/// Progress of a feature pass: samples and tokens done so far (thread-safe).
#[derive(Default)]
pub struct Progress {
    /// Samples to do in this run (set once the data is read).
    pub total: AtomicUsize,
    pub samples: AtomicUsize,
    pub tokens: AtomicUsize,
    /// Set to stop the pass at the next micro-batch with [`STOPPED`] (shards already written
    /// stay, so a rerun resumes).
    pub stop: AtomicBool,
}

/// The error message of a feature pass stopped through [`Progress::stop`].
pub const STOPPED: &str = "stopped on request before the pass ended; the shards written so far are kept, and running the same index again resumes";

/// A model, its projector and tokenizer settings, ready to featurize samples.
pub struct Featurizer<'a> {
    pub model: &'a LoadedModel,
    renderer: Renderer<'a>,
    projector: Projector,
    tracked: Vec<usize>,
    labels: Labels,
}

impl<'a> Featurizer<'a> {
    pub fn new(model: &'a LoadedModel, opts: &FeatureOptions) -> Result<Self> {
        let all = model.llama.linears();
        let tracked = select_modules(&all, &opts.modules)?;
        let spec = FeatureSpec {
            projection: opts.projection.clone(),
            seed: opts.seed,
            loss: match opts.labels {
                Labels::Data => "mean token cross-entropy over response tokens".into(),
                l => format!(
                    "mean token cross-entropy over response tokens, labels {l} from the model"
                ),
            },
            layers: tracked.iter().map(|&i| all[i].clone()).collect(),
        };
        // A LoGra rank above a layer's size projects onto more directions than the layer has:
        // no information is gained and the work grows without bound (--rank 100000 ran forever).
        if let Projection::Logra { rank_in, rank_out } = spec.projection {
            if let Some(l) = spec
                .layers
                .iter()
                .find(|l| rank_in > l.d_in || rank_out > l.d_out)
            {
                return Err(Error::Msg(format!(
                    "--rank {}: layer {} is {} × {}; expected a rank of at most {}",
                    rank_in.max(rank_out),
                    l.name,
                    l.d_out,
                    l.d_in,
                    l.d_in.min(l.d_out)
                )));
            }
        }
        if let Projection::Full = spec.projection {
            if spec.dim() > 50_000_000 {
                return Err(Error::Msg(format!(
                    "--projection full would store {} values per sample; use logra or dense",
                    spec.dim()
                )));
            }
        }
        Ok(Self {
            model,
            renderer: Renderer::new(model, opts.template, opts.max_tokens)?
                .with_truncate(opts.truncate),
            projector: Projector::new(spec, model.llama.dtype())?,
            tracked,
            labels: opts.labels,
        })
    }

    pub fn spec(&self) -> &FeatureSpec {
        self.projector.spec()
    }

    pub fn renderer(&self) -> &Renderer<'a> {
        &self.renderer
    }
}

impl FeaturePass for Featurizer<'_> {
    fn renderer(&self) -> &Renderer<'_> {
        &self.renderer
    }

    fn spec(&self) -> &FeatureSpec {
        self.projector.spec()
    }

    fn batch<O: PassObserver>(&self, seqs: &[TokenSeq], observer: &mut O) -> Result<Batch> {
        let cap = self
            .model
            .llama
            .loss_and_capture_labels(seqs, &self.tracked, self.labels)?;
        let (last, mean) = pooled_hidden(&cap.hidden, seqs)?;
        observer.observe(&self.projector, &cap, seqs)?;
        Ok(Batch {
            grads: self.projector.project(&cap)?,
            losses: cap.losses,
            repsim_last: last,
            repsim_mean: mean,
        })
    }
}

/// Feature rows and sample records of `samples` from `pass`, in order, and what an `O` observed
/// of the pass: `threads` contiguous parts in parallel, each in micro-batches of `batch_size`.
/// The one featurization loop of every store and of query features.
pub fn featurize_with<P: FeaturePass, O: PassObserver>(
    pass: &P,
    samples: &[Sample],
    batch_size: usize,
    threads: usize,
    progress: &Progress,
) -> Result<(Featurized, O)> {
    let mut out = Featurized::default();
    let mut observed = O::default();
    for (part, o) in in_parallel_parts(samples, threads, |c| {
        featurize_serial(pass, c, batch_size, progress)
    })? {
        out.extend(part);
        observed.merge(o);
    }
    Ok((out, observed))
}

fn featurize_serial<P: FeaturePass, O: PassObserver>(
    pass: &P,
    samples: &[Sample],
    batch_size: usize,
    progress: &Progress,
) -> Result<(Featurized, O)> {
    let mut out = Featurized::default();
    let mut observed = O::default();
    for chunk in samples.chunks(batch_size.max(1)) {
        if progress.stop.load(Ordering::Relaxed) {
            return Err(Error::Msg(STOPPED.into()));
        }
        let mut seqs: Vec<TokenSeq> = Vec::with_capacity(chunk.len());
        let mut rows = Vec::with_capacity(chunk.len());
        for s in chunk {
            let (seq, row) = tokenized_row(pass.renderer(), s)?;
            rows.push(row);
            seqs.push(seq);
        }
        let b = pass.batch(&seqs, &mut observed)?;
        for (r, l) in rows.iter_mut().zip(&b.losses) {
            r.loss = *l;
        }
        out.grads.extend(b.grads);
        out.repsim_last.extend(b.repsim_last);
        out.repsim_mean.extend(b.repsim_mean);
        out.rows.extend(rows);
        progress.samples.fetch_add(chunk.len(), Ordering::Relaxed);
        progress.tokens.fetch_add(
            seqs.iter().map(|s| s.ids.len()).sum::<usize>(),
            Ordering::Relaxed,
        );
    }
    Ok((out, observed))
}

/// Runs `work` on `threads` contiguous parts of `samples` in parallel (each worker runs candle
/// single-threaded on its part) and returns the parts' results in order.
pub fn in_parallel_parts<T: Send>(
    samples: &[Sample],
    threads: usize,
    work: impl Fn(&[Sample]) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.max(1).min(samples.len().max(1));
    let part = samples.len().div_ceil(threads).max(1);
    let parts: Vec<&[Sample]> = samples.chunks(part).collect();
    on_threads(&parts, "feature worker", |_, chunk| work(chunk))
        .into_iter()
        .collect()
}

/// Runs `work(i, part)` for every part on a scoped thread of its own and returns the results
/// in part order; a worker that panics gives an error naming `what`.
pub fn on_threads<P: Sync, T: Send>(
    parts: &[P],
    what: &str,
    work: impl Fn(usize, &P) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| s.spawn(move || work(i, p)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Msg(format!("{what} panicked"))))
            })
            .collect()
    })
}

/// A sample's tokens and its record in the store's samples table (loss filled in later).
pub fn tokenized_row(renderer: &Renderer, s: &Sample) -> Result<(TokenSeq, SampleRow)> {
    let tok = renderer.tokenize(s)?;
    let (prompt, response) = renderer.render(&s.body)?;
    let row = SampleRow {
        id: s.id.clone(),
        row: s.row as u64,
        n_tokens: tok.seq.ids.len() as u32,
        n_loss_tokens: tok.seq.n_loss_tokens() as u32,
        loss: 0.0,
        truncated: tok.truncated,
        prompt_tokens_cut: tok.prompt_cut as u32,
        response_tokens_cut: tok.response_cut as u32,
        prompt,
        response,
    };
    Ok((tok.seq, row))
}

/// The model part of a store spec: what identifies the weights and tokenizer.
pub fn model_spec(model: &LoadedModel) -> Result<serde_json::Value> {
    Ok(serde_json::json!({
        "sha256": model.source.sha256,
        "kind": model.source.kind,
        "tokenizer_sha256": model.tokenizer_sha256()?,
        "dtype": format!("{:?}", model.llama.dtype()).to_lowercase(),
        "n_params": model.llama.n_params(),
    }))
}

/// The data part of a store spec: what identifies the samples and how they were rendered
/// (the truncation policy only when not `left`, see [`Truncate::record`]).
pub fn data_spec(
    report: &data::ReadReport,
    read: &ReadOptions,
    renderer: &Renderer,
) -> serde_json::Value {
    let mut spec = serde_json::json!({
        "sha256": report.sha256,
        "format": report.format.to_string(),
        "limit": read.limit,
        "skip_bad": read.skip_bad,
        "template": renderer.template(),
        "max_tokens": renderer.max_tokens(),
    });
    renderer.truncate().record(&mut spec);
    spec
}

/// The `run.json` of an index run (as JSON, so callers can add fields such as a checkpoint).
pub fn run_info(
    model: &LoadedModel,
    opts: &IndexOptions,
    report: &data::ReadReport,
) -> Result<serde_json::Value> {
    let run = RunInfo {
        model_path: std::fs::canonicalize(&model.source.path)
            .unwrap_or_else(|_| model.source.path.clone()),
        data_path: std::fs::canonicalize(&opts.data).unwrap_or_else(|_| opts.data.clone()),
        features: opts.features.clone(),
        format: report.format.to_string(),
    };
    serde_json::to_value(&run).map_err(|e| Error::Msg(e.to_string()))
}

/// Writes `run.json` into a store folder, atomically.
pub fn write_run_info(out: &Path, run: &serde_json::Value) -> Result<()> {
    crate::atomic_write::write_json(&out.join("run.json"), run)?;
    Ok(())
}

/// Reads the store's `run.json`.
pub fn read_run_info(store_dir: &Path) -> Result<RunInfo> {
    let p = store_dir.join("run.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Store {
        path: store_dir.into(),
        msg: format!("run.json: {e}"),
    })
}

/// What a store records beyond its feature pass's own spec, and which sub-stores it has.
#[derive(Debug, Clone, Default)]
pub struct StoreExtras {
    /// Write the RepSim sub-stores ([`REPSIM_LAST`], [`REPSIM_MEAN`]) beside the gradients.
    pub repsim: bool,
    /// Fields added to the store spec's `features` (a checkpoint store's gradient kind).
    pub features: Vec<(String, serde_json::Value)>,
    /// Fields added to `run.json`.
    pub run: Vec<(String, serde_json::Value)>,
}

/// Runs (or resumes) the feature pass that `make` builds (after the data is read) over
/// `opts.data` into `out`, with `extras`: the one store loop of every store kind. Shards are
/// written atomically and the manifest lists only whole ones, so a killed run resumes.
pub fn index_pass<P: FeaturePass, O: PassObserver>(
    model: &LoadedModel,
    opts: &IndexOptions,
    out: &Path,
    make: impl FnOnce() -> Result<P>,
    extras: StoreExtras,
    progress: &Progress,
    on_shard: &mut dyn FnMut(usize, usize),
) -> Result<IndexSummary> {
    let report = data::read_samples(&opts.data, &opts.read)?;
    if report.samples.is_empty() {
        return Err(Error::Msg(format!(
            "{}: no samples to index",
            opts.data.display()
        )));
    }
    let fz = make()?;
    let n = report.samples.len();
    let mut features = serde_json::to_value(fz.spec()).map_err(|e| Error::Msg(e.to_string()))?;
    if let Some(obj) = features.as_object_mut() {
        obj.extend(extras.features);
    }
    let spec = StoreSpec {
        model: model_spec(model)?,
        data: data_spec(&report, &opts.read, fz.renderer()),
        features,
        dtype: opts.dtype,
        dim: fz.spec().dim(),
        shard_size: opts.shard_size,
        compact: None,
    };
    let hidden = model.llama.config.hidden_size;
    let rep_spec = |pooling: &str| StoreSpec {
        features: serde_json::json!({
            "kind": "repsim",
            "pooling": pooling,
            "representation": "final-norm hidden state",
        }),
        dim: hidden,
        ..spec.clone()
    };
    let mut store = Store::create_or_resume_part(out, spec.clone(), n, opts.part)?;
    let mut subs = Vec::new();
    if extras.repsim {
        subs.push(Store::create_or_resume_part(
            &out.join(REPSIM_LAST),
            rep_spec("last prompt token"),
            n,
            opts.part,
        )?);
        subs.push(Store::create_or_resume_part(
            &out.join(REPSIM_MEAN),
            rep_spec("mean over response tokens"),
            n,
            opts.part,
        )?);
    }
    let mut run = run_info(model, opts, &report)?;
    if let Some(obj) = run.as_object_mut() {
        obj.extend(extras.run);
    }
    write_run_info(out, &run)?;
    // A shard is pending while any of the stores lacks it (a kill between writes).
    let own = store.own_shards();
    let pending: Vec<usize> = own
        .clone()
        .filter(|&i| !store.is_shard_done(i) || subs.iter().any(|s| !s.is_shard_done(i)))
        .collect();
    // A part store's rows: its part's.
    let n = store.manifest().rows_of(&own).len();
    progress.total.store(n, Ordering::Relaxed);
    let reused = own.len() - pending.len();
    progress
        .samples
        .store(store.n_done_rows(), Ordering::Relaxed);
    let mut cuts = Cuts::default();
    let (mut tokens, mut n_written) = (0, 0);
    for &i in &pending {
        let range = store.shard_range(i);
        let (f, observed) = featurize_with::<P, O>(
            &fz,
            &report.samples[range],
            opts.batch_size,
            opts.threads,
            progress,
        )?;
        n_written += f.rows.len();
        for r in &f.rows {
            cuts.samples += r.truncated as usize;
            cuts.prompt_tokens += r.prompt_tokens_cut as usize;
            cuts.response_tokens += r.response_tokens_cut as usize;
        }
        tokens += f.rows.iter().map(|r| r.n_tokens as usize).sum::<usize>();
        for (sub, vals) in subs.iter_mut().zip([&f.repsim_last, &f.repsim_mean]) {
            if !sub.is_shard_done(i) {
                sub.write_shard(i, vals, &f.rows)?;
            }
        }
        if !store.is_shard_done(i) {
            observed.save(out, i)?;
            store.write_shard(i, &f.grads, &f.rows)?;
        }
        on_shard(store.n_done_rows(), n);
    }
    for sub in subs.iter_mut() {
        sub.finish()?;
    }
    store.finish()?;
    let dim = store.dim();
    Ok(IndexSummary {
        n_samples: n,
        n_skipped_bad: report.skipped.len(),
        n_truncated: cuts.samples,
        truncate: fz.renderer().truncate(),
        cuts,
        n_written,
        shards_written: pending.len(),
        shards_reused: reused,
        dim,
        tokens,
        // Features (and int8 scale) plus the f32 norm.
        bytes_per_sample: (opts.dtype.stored_row_bytes(dim) + 4) as f64,
    })
}
