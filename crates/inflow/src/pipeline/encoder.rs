//! The amortized encoder's pipelines (Influcoder, METHODS.md §4; [`crate::encoder`]):
//! `encoder train` (distil a teacher store into a head on the first k blocks of its model),
//! `encode` (a data file → an ordinary store of encoder features, forward only, resumable)
//! and `bench encode` (encode and index on the same samples in the same run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::report::{watch, Reporter};
use crate::data::{self, Format, ReadOptions, Sample};
use crate::encoder::agreement::{self, Agreement};
use crate::encoder::distil::{self, DistilConfig, DistilData, Distiller};
use crate::encoder::{
    Encoder, EncoderSpec, Head, HeadShape, Pooling, TeacherRef, TrunkPass, HEAD_FILE, SPEC_FILE,
};
use crate::estimators::Cosine;
use crate::index::{self, IndexOptions, IndexSummary, Progress, StoreExtras};
use crate::model::LoadedModel;
use crate::store::{compress::spec_sha256, npy, Dtype, Store};
use crate::{Error, Result};

/// A teacher store needs at least this many samples to split into training and validation.
pub const MIN_TEACHER_SAMPLES: usize = 32;

/// What `encoder train` distils and how.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Any complete gradient store (the teacher).
    pub teacher: PathBuf,
    /// Query samples (anchors besides the training samples), e.g. probes.
    pub queries: Option<PathBuf>,
    pub query_format: Format,
    /// Their gradient features: a store `index` wrote of `queries` with the teacher's
    /// settings (default: computed here with the teacher's pass).
    pub query_store: Option<PathBuf>,
    /// Model override (default: the teacher's, from its run.json).
    pub model: Option<PathBuf>,
    /// A LoRA adapter or checkpoint attached to the model, so the trunk runs at the weights a
    /// teacher indexed at a fine-tuned model saw.
    pub adapter: Option<PathBuf>,
    /// The encoder folder; rerunning the same command resumes it.
    pub out: PathBuf,
    /// Trunk blocks k.
    pub layers: usize,
    pub pooling: Pooling,
    /// Hidden width of the head's MLP (0: a linear head).
    pub hidden: usize,
    /// Output dimension of φ.
    pub dim: usize,
    pub distil: DistilConfig,
    pub threads: usize,
    /// Stop after this step, as a killed run would (tests of resumption).
    pub stop_after: Option<usize>,
}

/// Agreement figures of every scorer, on held-out training samples and held-out queries.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    /// Anchors: held-out training samples; candidates: the other held-out training samples.
    pub held_out_samples: BTreeMap<String, Agreement>,
    /// Anchors: held-out queries; candidates: the held-out training samples.
    pub held_out_queries: BTreeMap<String, Agreement>,
}

/// What `encoder train` did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub out: PathBuf,
    pub steps: usize,
    /// The checkpoint step this run resumed from.
    pub resumed_from: Option<usize>,
    pub finished: bool,
    pub n_train: usize,
    pub n_val: usize,
    pub nq_train: usize,
    pub nq_val: usize,
    pub d_in: usize,
    pub dim: usize,
    pub seconds_trunk: f64,
    pub seconds_teacher: f64,
    pub seconds_distil: f64,
    pub final_loss: Option<f64>,
    pub metrics: Option<Metrics>,
}

/// All rows of a complete store as f32, in order.
fn read_all(s: &Store) -> Result<Vec<f32>> {
    let mut v = Vec::with_capacity(s.n_samples() * s.dim());
    for sh in 0..s.n_shards() {
        v.extend(s.shard_features(sh)?.0);
    }
    Ok(v)
}

/// A sub-store's rows, if the store has it.
fn read_sub(dir: &Path, name: &str) -> Result<Option<(Vec<f32>, usize)>> {
    let d = dir.join(name);
    if !d.join("manifest.json").exists() {
        return Ok(None);
    }
    let s = Store::open(&d)?;
    Ok(Some((read_all(&s)?, s.dim())))
}

/// The `task` field of each sample ("" where absent).
fn tasks(samples: &[Sample]) -> Vec<String> {
    samples
        .iter()
        .map(|s| {
            s.meta
                .get("task")
                .and_then(|t| t.as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

/// A cached n × m f32 matrix under `dir`, or `make`'s (then cached).
fn cached(
    path: &Path,
    rows: usize,
    cols: usize,
    make: impl FnOnce() -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    if path.exists() {
        let f = npy::NpyFile::open(path)?;
        if f.shape() == [rows, cols] {
            return Ok(f.to_f32_vec());
        }
    }
    let v = make()?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    npy::write_file(&tmp, &[rows, cols], &v)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(v)
}

/// Pooled trunk features of a data file into the resumable store `dir`, checked to hold
/// the samples `ids` in order.
#[allow(clippy::too_many_arguments)]
fn trunk_store(
    model: &LoadedModel,
    spec: &EncoderSpec,
    data: &Path,
    read: &ReadOptions,
    ids: Option<&[String]>,
    dir: &Path,
    stage: &str,
    threads: usize,
    reporter: &dyn Reporter,
) -> Result<Vec<f32>> {
    let opts = IndexOptions {
        part: None,
        data: data.to_path_buf(),
        read: read.clone(),
        features: spec.features.clone(),
        dtype: Dtype::F32,
        shard_size: 256,
        batch_size: 1,
        threads,
    };
    let progress = Progress::default();
    watch(reporter, stage, &progress, || {
        index::index_pass::<TrunkPass, ()>(
            model,
            &opts,
            dir,
            || TrunkPass::new(model, &spec.features, spec.layers, spec.pooling),
            StoreExtras::default(),
            &progress,
            &mut |_, _| {},
        )
    })?;
    let s = Store::open(dir)?;
    if let Some(ids) = ids {
        let got: Vec<String> = s.samples()?.into_iter().map(|r| r.id).collect();
        if got != ids {
            return Err(Error::Msg(format!(
                "{}: its samples are not the teacher's ({} vs {} samples, or another order): the data file changed since the teacher was indexed",
                data.display(),
                got.len(),
                ids.len()
            )));
        }
    }
    read_all(&s)
}

/// Runs (or resumes) `encoder train`.
pub fn train(o: &TrainOptions, reporter: &dyn Reporter) -> Result<TrainSummary> {
    // Every check on the inputs comes before anything is written.
    let teacher = Store::open(&o.teacher)?;
    if !teacher.is_complete() {
        return Err(Error::Msg(format!(
            "teacher store {} is not complete ({} of {} samples): finish its index run first",
            o.teacher.display(),
            teacher.n_done_rows(),
            teacher.n_samples()
        )));
    }
    if teacher.n_samples() < MIN_TEACHER_SAMPLES {
        return Err(Error::Msg(format!(
            "teacher store {} holds {} samples; distilling needs at least {MIN_TEACHER_SAMPLES} (index more with a larger --limit)",
            o.teacher.display(),
            teacher.n_samples()
        )));
    }
    if crate::encoder::is_encoder_store(&teacher) {
        return Err(Error::Msg(format!(
            "teacher store {} holds encoder features, not gradients: distil from a store `inflow index` wrote",
            o.teacher.display()
        )));
    }
    if o.dim == 0 || o.layers == 0 {
        return Err(Error::Msg("--dim and --layers must be at least 1".into()));
    }
    let weights = crate::train::features::store_weights(&o.teacher)?;
    let run = weights.run.clone();
    let model_path = o.model.clone().unwrap_or(run.model_path.clone());
    let mut model = super::score::load_model(&model_path, reporter)?;
    let adapter = match &o.adapter {
        Some(a) => Some(crate::train::features::attach(&mut model, a)?),
        None => None,
    };
    teacher
        .check_compatible(&serde_json::json!({ "model": index::model_spec(&model)? }))
        .map_err(|e| Error::Msg(format!("teacher {}: {e}", o.teacher.display())))?;
    let read = super::score::recorded_read(&teacher, &run)?;
    let train_report = data::read_samples(&run.data_path, &read)?;
    let train_ids: Vec<String> = teacher.samples()?.into_iter().map(|r| r.id).collect();
    let file_ids: Vec<String> = train_report.samples.iter().map(|s| s.id.clone()).collect();
    if file_ids != train_ids {
        return Err(Error::Msg(format!(
            "{}: its samples are not the teacher store's (the data file changed since {} was indexed)",
            run.data_path.display(),
            o.teacher.display()
        )));
    }
    let queries: Vec<Sample> = match &o.queries {
        Some(q) => super::score::read_queries(q, o.query_format, None)?,
        None => Vec::new(),
    };
    let query_given = match (&o.query_store, &o.queries) {
        (Some(qs), Some(qf)) => {
            let (rows, f) = crate::scores::queries::read_query_store(qs, &teacher, None)?;
            let a: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
            let b: Vec<&str> = queries.iter().map(|r| r.id.as_str()).collect();
            if a != b {
                return Err(Error::Msg(format!(
                    "query store {} holds other samples than {} ({} vs {} queries, or other ids): index that file",
                    qs.display(),
                    qf.display(),
                    a.len(),
                    b.len()
                )));
            }
            Some(f)
        }
        (Some(_), None) => {
            return Err(Error::Msg(
                "--query-store needs --queries (the query file it was indexed from)".into(),
            ))
        }
        _ => None,
    };
    if !queries.is_empty()
        && query_given.is_none()
        && (weights.checkpoint.is_some() || adapter.is_some())
    {
        return Err(Error::Msg(format!(
            "teacher {} was indexed at a checkpoint: give the queries' features at the same weights with --query-store",
            o.teacher.display()
        )));
    }
    let hidden_size = model.llama.config.hidden_size;
    let spec = EncoderSpec {
        model: index::model_spec(&model)?,
        model_path: std::fs::canonicalize(&model_path).unwrap_or(model_path.clone()),
        features: run.features.clone(),
        layers: o.layers,
        pooling: o.pooling,
        head: HeadShape {
            d_in: o.pooling.width(hidden_size),
            hidden: o.hidden,
            d_out: o.dim,
        },
        teacher: TeacherRef {
            path: std::fs::canonicalize(&o.teacher).unwrap_or(o.teacher.clone()),
            spec_sha256: spec_sha256(teacher.spec()),
            n_samples: teacher.n_samples(),
            dim: teacher.dim(),
        },
        train: o.distil.clone(),
        adapter,
    };
    if o.layers > model.llama.config.num_hidden_layers {
        return Err(Error::Msg(format!(
            "--layers {}: the model has {} blocks",
            o.layers, model.llama.config.num_hidden_layers
        )));
    }
    if o.out.join(SPEC_FILE).exists() {
        let have = EncoderSpec::read(&o.out)?;
        if have != spec {
            let diffs = crate::store::differences(
                &serde_json::to_value(&have).map_err(|e| Error::Msg(e.to_string()))?,
                &serde_json::to_value(&spec).map_err(|e| Error::Msg(e.to_string()))?,
            );
            return Err(Error::Msg(format!(
                "encoder folder {} was made with other settings ({}); use a new --out or the same settings",
                o.out.display(),
                diffs.join("; ")
            )));
        }
    } else if o.out.exists()
        && std::fs::read_dir(&o.out).is_ok_and(|d| {
            // A folder holding only a `cache/` (copied from an encoder of the same trunk) is
            // taken as a start.
            d.flatten().any(|e| e.file_name() != "cache")
        })
    {
        return Err(Error::Msg(format!(
            "{} exists and is not an encoder folder: nothing written; give a new --out",
            o.out.display()
        )));
    }
    std::fs::create_dir_all(o.out.join("cache")).map_err(|e| Error::io(&o.out, e))?;
    crate::atomic_write::write_json(
        &o.out.join(SPEC_FILE),
        &serde_json::to_value(&spec).map_err(|e| Error::Msg(e.to_string()))?,
    )?;

    // Pooled trunk features, once (resumable stores under cache/).
    let t0 = Instant::now();
    let cache = o.out.join("cache");
    let train_x = trunk_store(
        &model,
        &spec,
        &run.data_path,
        &read,
        Some(&train_ids),
        &cache.join("trunk-train"),
        "trunk",
        o.threads,
        reporter,
    )?;
    let query_x = match &o.queries {
        Some(q) => {
            let ids: Vec<String> = queries.iter().map(|s| s.id.clone()).collect();
            trunk_store(
                &model,
                &spec,
                q,
                &ReadOptions {
                    format: o.query_format,
                    skip_bad: false,
                    limit: None,
                },
                Some(&ids),
                &cache.join("trunk-queries"),
                "trunk (queries)",
                o.threads,
                reporter,
            )?
        }
        None => Vec::new(),
    };
    let seconds_trunk = t0.elapsed().as_secs_f64();

    // Teacher targets: cosines among training samples and of queries with them.
    let t1 = Instant::now();
    let (n, nq) = (teacher.n_samples(), queries.len());
    reporter.note(&format!(
        "teacher targets: {n} × {n} and {nq} × {n} cosines of {}",
        o.teacher.display()
    ));
    let t_tt = cached(&cache.join("teacher-train.npy"), n, n, || {
        let g = read_all(&teacher)?;
        let r = crate::scores::score_store(&teacher, &g, n, &Cosine, 1, true, &mut |_| {})?;
        r.full
            .ok_or_else(|| Error::Msg("internal: no dense scores".into()))
    })?;
    let mut query_feats = query_given;
    let t_qt = if nq > 0 {
        if query_feats.is_none() {
            let progress = Progress::default();
            progress
                .total
                .store(nq, std::sync::atomic::Ordering::Relaxed);
            query_feats = Some(watch(reporter, "teacher (queries)", &progress, || {
                crate::scores::queries::featurize_queries(
                    &model, &teacher, &weights, &queries, o.threads, &progress,
                )
            })?);
        }
        let qf = query_feats
            .as_ref()
            .map(|f| f.grads.clone())
            .unwrap_or_default();
        cached(&cache.join("teacher-queries.npy"), nq, n, || {
            let r = crate::scores::score_store(&teacher, &qf, nq, &Cosine, 1, true, &mut |_| {})?;
            r.full
                .ok_or_else(|| Error::Msg("internal: no dense scores".into()))
        })?
    } else {
        Vec::new()
    };
    let seconds_teacher = t1.elapsed().as_secs_f64();

    // Distillation.
    let t2 = Instant::now();
    let data = DistilData {
        train_x,
        n,
        query_x,
        nq,
        d_in: spec.head.d_in,
        t_tt,
        t_qt,
    };
    let mut d = Distiller::new(o.distil.clone(), o.hidden, o.dim, &data)?;
    let resumed_from = match distil::checkpoints(&o.out).pop() {
        Some((step, dir)) => {
            d.resume(&dir)?;
            reporter.note(&format!("resuming from {} (step {step})", dir.display()));
            Some(step)
        }
        None => None,
    };
    let total = o.distil.steps;
    reporter.start("distil", total);
    let result = d.run(&o.out, o.stop_after, &mut |r| {
        let note = match r.val_spearman {
            Some(v) => format!("loss {:.3} val ρ {v:.3}", r.loss),
            None => format!("loss {:.3}", r.loss),
        };
        reporter.update("distil", r.step, total, &note);
    });
    reporter.finish("distil");
    result?;
    let seconds_distil = t2.elapsed().as_secs_f64();
    let finished = d.step >= total;
    let metrics = if finished {
        d.head.save(&o.out.join(HEAD_FILE))?;
        let m = evaluate(
            &d,
            &data,
            &tasks(&train_report.samples),
            &tasks(&queries),
            &o.teacher,
            query_feats.as_ref(),
        )?;
        crate::atomic_write::write_json(
            &o.out.join("metrics.json"),
            &serde_json::to_value(&m).map_err(|e| Error::Msg(e.to_string()))?,
        )?;
        Some(m)
    } else {
        None
    };
    Ok(TrainSummary {
        out: o.out.clone(),
        steps: d.step,
        resumed_from,
        finished,
        n_train: d.split.train.len(),
        n_val: d.split.val.len(),
        nq_train: d.split.q_train.len(),
        nq_val: d.split.q_val.len(),
        d_in: spec.head.d_in,
        dim: o.dim,
        seconds_trunk,
        seconds_teacher,
        seconds_distil,
        final_loss: d.log.last().map(|r| r.loss),
        metrics,
    })
}

/// Agreement with the teacher of the trained encoder and its baselines (the untrained head,
/// the untrained truncated model with the same pooling, RepSim last and mean where the
/// teacher has them), on held-out samples and held-out queries.
fn evaluate(
    d: &Distiller,
    data: &DistilData,
    train_tasks: &[String],
    query_tasks: &[String],
    teacher: &Path,
    query_feats: Option<&index::Featurized>,
) -> Result<Metrics> {
    let (val, qv) = (&d.split.val, &d.split.q_val);
    let has_tasks = train_tasks.iter().any(|t| !t.is_empty());
    let ct: Vec<String> = val.iter().map(|&i| train_tasks[i].clone()).collect();
    let rt: Vec<String> = ct.clone();
    let qt: Vec<String> = qv
        .iter()
        .map(|&q| query_tasks.get(q).cloned().unwrap_or_default())
        .collect();
    let untrained = Head::init(
        d.head.shape,
        d.head.mean.clone(),
        d.head.std.clone(),
        d.config.seed,
    )?;
    // Per scorer: (features of val samples, features of val queries, width).
    let mut scorers: Vec<(String, Vec<f32>, Vec<f32>, usize)> = vec![
        (
            "encoder".into(),
            d.embed_train(val)?,
            d.embed_queries(qv)?,
            d.head.shape.d_out,
        ),
        (
            "untrained-head".into(),
            untrained.apply(
                &agreement::gather_rows(&data.train_x, data.d_in, val),
                val.len(),
            )?,
            untrained.apply(
                &agreement::gather_rows(&data.query_x, data.d_in, qv),
                qv.len(),
            )?,
            d.head.shape.d_out,
        ),
        (
            "truncated-model".into(),
            agreement::gather_rows(&data.train_x, data.d_in, val),
            agreement::gather_rows(&data.query_x, data.d_in, qv),
            data.d_in,
        ),
    ];
    for (name, set) in [
        (index::REPSIM_LAST, "repsim_last"),
        (index::REPSIM_MEAN, "repsim_mean"),
    ] {
        if let Some((x, w)) = read_sub(teacher, name)? {
            let q = match (query_feats, set) {
                (Some(f), "repsim_last") => f.repsim_last.clone(),
                (Some(f), _) => f.repsim_mean.clone(),
                (None, _) => Vec::new(),
            };
            let q = if q.len() == data.nq * w {
                agreement::gather_rows(&q, w, qv)
            } else {
                Vec::new()
            };
            scorers.push((name.into(), agreement::gather_rows(&x, w, val), q, w));
        }
    }
    let own: Vec<usize> = (0..val.len()).collect();
    let t_s = agreement::submatrix(&data.t_tt, data.n, val, val);
    let t_q = agreement::submatrix(&data.t_qt, data.n, qv, val);
    let mut m = Metrics {
        held_out_samples: BTreeMap::new(),
        held_out_queries: BTreeMap::new(),
    };
    for (name, xs, xq, w) in scorers {
        let s = agreement::cosines(&xs, val.len(), &xs, val.len(), w)?;
        m.held_out_samples.insert(
            name.clone(),
            agreement::agreement(
                &t_s,
                &s,
                val.len(),
                val.len(),
                Some(&own),
                has_tasks.then_some((&rt[..], &ct[..])),
            ),
        );
        if !qv.is_empty() && xq.len() == qv.len() * w {
            let s = agreement::cosines(&xq, qv.len(), &xs, val.len(), w)?;
            m.held_out_queries.insert(
                name,
                agreement::agreement(
                    &t_q,
                    &s,
                    qv.len(),
                    val.len(),
                    None,
                    has_tasks.then_some((&qt[..], &ct[..])),
                ),
            );
        }
    }
    Ok(m)
}

/// The encoder an experiment distils from its own teacher store (`eval planted`, `eval
/// selection` with `encoder` among their methods): trunk, pooling, head and distillation, as
/// `encoder train` takes them.
#[derive(Debug, Clone)]
pub struct EncoderSettings {
    /// Trunk blocks k.
    pub layers: usize,
    pub pooling: Pooling,
    /// Hidden width of the head's MLP (0: a linear head).
    pub hidden: usize,
    /// Output dimension of φ.
    pub dim: usize,
    pub distil: DistilConfig,
}

impl Default for EncoderSettings {
    /// `encoder train`'s defaults.
    fn default() -> Self {
        Self {
            layers: 6,
            pooling: Pooling::LastMean,
            hidden: 1024,
            dim: 256,
            distil: DistilConfig::default(),
        }
    }
}

/// An encoder distilled from a teacher store, and the teacher's training data encoded with it.
pub struct Distilled {
    /// The encoder folder.
    pub encoder: PathBuf,
    /// The teacher's training samples, encoded (an ordinary store of kind `encoder`).
    pub store: PathBuf,
    /// The encoder's model (the trunk's), for encoding queries.
    pub model: LoadedModel,
    /// What distillation did, with agreement on held-out samples and queries.
    pub summary: TrainSummary,
}

/// Distils `teacher` into `dir/encoder` (anchors: its training samples and the `queries`,
/// whose teacher features are `query_store` when given, else computed at the teacher's
/// recorded weights) and encodes the teacher's training data, forward only, into
/// `dir/store`. Both steps resume. The trunk is the model the teacher's run.json names plus
/// `adapter`: give the adapter a teacher was indexed at in-process (its run.json does not
/// record it), so the trunk and the teacher see the same weights.
#[allow(clippy::too_many_arguments)]
pub fn distil_and_encode(
    teacher: &Path,
    adapter: Option<&Path>,
    queries: Option<&Path>,
    query_format: Format,
    query_store: Option<&Path>,
    s: &EncoderSettings,
    dir: &Path,
    threads: usize,
    reporter: &dyn Reporter,
) -> Result<Distilled> {
    let encoder = dir.join("encoder");
    let summary = train(
        &TrainOptions {
            teacher: teacher.to_path_buf(),
            queries: queries.map(Path::to_path_buf),
            query_format,
            query_store: query_store.map(Path::to_path_buf),
            model: None,
            adapter: adapter.map(Path::to_path_buf),
            out: encoder.clone(),
            layers: s.layers,
            pooling: s.pooling,
            hidden: s.hidden,
            dim: s.dim,
            distil: s.distil.clone(),
            threads,
            stop_after: None,
        },
        reporter,
    )?;
    if !summary.finished {
        return Err(Error::Msg(format!(
            "{}: distillation stopped at step {} of {}",
            encoder.display(),
            summary.steps,
            s.distil.steps
        )));
    }
    let t = Store::open(teacher)?;
    let run = crate::train::features::store_weights(teacher)?.run;
    let read = super::score::recorded_read(&t, &run)?;
    let model = encoder_model(&encoder, None, reporter)?;
    let store = dir.join("store");
    encode_with(
        &model,
        &EncodeOptions {
            encoder: encoder.clone(),
            data: run.data_path.clone(),
            read,
            model: None,
            out: store.clone(),
            dtype: Dtype::F32,
            shard_size: 256,
            batch_size: 1,
            threads,
            part: None,
        },
        "encode",
        reporter,
    )?;
    // Scores on the encoder store stand for scores on the teacher: same rows, same order.
    let ids =
        |s: &Store| -> Result<Vec<String>> { Ok(s.samples()?.into_iter().map(|r| r.id).collect()) };
    if ids(&Store::open(&store)?)? != ids(&t)? {
        return Err(Error::Msg(format!(
            "{}: its samples are not the teacher's {} (the data file changed since it was indexed)",
            store.display(),
            teacher.display()
        )));
    }
    Ok(Distilled {
        encoder,
        store,
        model,
        summary,
    })
}

/// What `encode` reads and writes.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    pub encoder: PathBuf,
    pub data: PathBuf,
    pub read: ReadOptions,
    /// Model override (default: the encoder's, from encoder.json).
    pub model: Option<PathBuf>,
    pub out: PathBuf,
    pub dtype: Dtype,
    pub shard_size: usize,
    pub batch_size: usize,
    pub threads: usize,
    /// Encode only this part of the rows into a part store (`encode --shard I/N`).
    pub part: Option<crate::store::Part>,
}

/// Loads the encoder's model (`model` or the one encoder.json names).
pub fn encoder_model(
    encoder: &Path,
    model: Option<&Path>,
    reporter: &dyn Reporter,
) -> Result<LoadedModel> {
    let spec = EncoderSpec::read(encoder)?;
    let path = model.map_or(spec.model_path.clone(), Path::to_path_buf);
    let mut m = super::score::load_model(&path, reporter)?;
    if let Some(a) = &spec.adapter {
        crate::train::features::attach(&mut m, &a.path)?;
    }
    Ok(m)
}

/// Runs (or resumes) `encode` on a loaded model: the encoder's features of `o.data` into
/// the store `o.out` (kind `encoder`, naming the encoder, its head's sha256 and its teacher),
/// with a run.json like `index`'s, so `score` and the other verbs use it unchanged.
pub fn encode_with(
    model: &LoadedModel,
    o: &EncodeOptions,
    stage: &str,
    reporter: &dyn Reporter,
) -> Result<IndexSummary> {
    let enc = Encoder::load(&o.encoder, model)?;
    let fields = enc.store_fields();
    let opts = IndexOptions {
        part: o.part,
        data: o.data.clone(),
        read: o.read.clone(),
        features: enc.spec.features.clone(),
        dtype: o.dtype,
        shard_size: o.shard_size,
        batch_size: o.batch_size,
        threads: o.threads,
    };
    let mut run = vec![("encoder".into(), serde_json::json!(enc.dir))];
    // Recorded like `index --adapter`'s, so `score` loads the trunk's weights for the queries.
    if let Some(a) = &enc.spec.adapter {
        run.push(("checkpoint".into(), serde_json::json!(a)));
    }
    let extras = StoreExtras {
        repsim: false,
        features: fields,
        run,
    };
    let progress = Progress::default();
    watch(reporter, stage, &progress, || {
        index::index_pass::<Encoder, ()>(
            model,
            &opts,
            &o.out,
            || Ok(enc),
            extras,
            &progress,
            &mut |_, _| {},
        )
    })
}

/// `encode`: loads the model, then [`encode_with`].
pub fn encode(o: &EncodeOptions, reporter: &dyn Reporter) -> Result<IndexSummary> {
    let model = encoder_model(&o.encoder, o.model.as_deref(), reporter)?;
    encode_with(&model, o, "encode", reporter)
}

/// `bench encode`'s settings.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub encoder: PathBuf,
    pub data: PathBuf,
    pub limit: usize,
    /// Rounds; each runs index then encode on the same samples.
    pub rounds: usize,
    pub model: Option<PathBuf>,
    pub threads: usize,
    /// Scratch folder (removed afterwards).
    pub scratch: PathBuf,
}

/// One pass's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchPass {
    pub what: String,
    pub round: usize,
    pub samples: usize,
    pub tokens: usize,
    pub wall_s: f64,
    pub cpu_s: Option<f64>,
    pub samples_per_s: f64,
    pub tokens_per_s: f64,
    pub bytes_per_sample: f64,
}

/// `bench encode`'s result: every pass and the medians' ratio.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub passes: Vec<BenchPass>,
    pub index_samples_per_s: f64,
    pub encode_samples_per_s: f64,
    /// Median encode samples/s over median index samples/s.
    pub speedup: f64,
    pub index_bytes_per_sample: f64,
    pub encode_bytes_per_sample: f64,
    pub threads: usize,
}

/// `bench encode`: `index` (the teacher's settings and element type) and `encode` (f16) on
/// the same first `limit` samples, interleaved for `rounds` rounds in this process, each
/// into a fresh scratch store; wall and CPU seconds of each.
pub fn bench(o: &BenchOptions, reporter: &dyn Reporter) -> Result<BenchResult> {
    if o.limit == 0 || o.rounds == 0 {
        return Err(Error::Msg("--limit and --rounds must be at least 1".into()));
    }
    let spec = EncoderSpec::read(&o.encoder)?;
    let model = encoder_model(&o.encoder, o.model.as_deref(), reporter)?;
    let teacher_dtype = Store::open(&spec.teacher.path)
        .map(|s| s.spec().dtype)
        .unwrap_or(Dtype::F16);
    let read = ReadOptions {
        format: Format::Auto,
        skip_bad: false,
        limit: Some(o.limit),
    };
    let mut passes = Vec::new();
    for round in 0..o.rounds {
        for what in ["index", "encode"] {
            let out = o.scratch.join(format!("{what}-{round}"));
            if out.exists() {
                std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
            }
            let cpu0 = super::machine::process_cpu_seconds();
            let t = Instant::now();
            let s = if what == "index" {
                let opts = IndexOptions {
                    part: None,
                    data: o.data.clone(),
                    read: read.clone(),
                    features: spec.features.clone(),
                    dtype: teacher_dtype,
                    shard_size: o.limit,
                    batch_size: 1,
                    threads: o.threads,
                };
                super::index::index(&model, &opts, &out, "bench index", reporter)?
            } else {
                encode_with(
                    &model,
                    &EncodeOptions {
                        part: None,
                        encoder: o.encoder.clone(),
                        data: o.data.clone(),
                        read: read.clone(),
                        model: None,
                        out: out.clone(),
                        dtype: Dtype::F16,
                        shard_size: o.limit,
                        batch_size: 1,
                        threads: o.threads,
                    },
                    "bench encode",
                    reporter,
                )?
            };
            let wall = t.elapsed().as_secs_f64();
            let cpu = match (cpu0, super::machine::process_cpu_seconds()) {
                (Some(a), Some(b)) => Some(b - a),
                _ => None,
            };
            let _ = std::fs::remove_dir_all(&out);
            passes.push(BenchPass {
                what: what.into(),
                round,
                samples: s.n_written,
                tokens: s.tokens,
                wall_s: wall,
                cpu_s: cpu,
                samples_per_s: s.n_written as f64 / wall.max(1e-9),
                tokens_per_s: s.tokens as f64 / wall.max(1e-9),
                bytes_per_sample: s.bytes_per_sample,
            });
        }
    }
    let _ = std::fs::remove_dir(&o.scratch);
    let med = |w: &str, f: fn(&BenchPass) -> f64| {
        super::machine::median(passes.iter().filter(|p| p.what == w).map(f).collect())
    };
    let (i, e) = (
        med("index", |p| p.samples_per_s),
        med("encode", |p| p.samples_per_s),
    );
    Ok(BenchResult {
        index_samples_per_s: i,
        encode_samples_per_s: e,
        speedup: e / i.max(1e-12),
        index_bytes_per_sample: med("index", |p| p.bytes_per_sample),
        encode_bytes_per_sample: med("encode", |p| p.bytes_per_sample),
        passes,
        threads: o.threads,
    })
}
