//! Forward-only valuation against a probe set (METHODS.md §2): in-context probing ([`icp`])
//! and one-step fine-tuning ([`one_step`]).
//!
//! Both give, for each training sample z, one value per probe j. Those rows go into a store
//! exactly like gradient features (atomic shards, resumable, `np.load`-able: the
//! n_train × n_probes matrix), and the run ends with `scores.parquet` (one score per training
//! sample) and `scores_by_task.parquet` (the same per probe task).

pub mod icp;
pub mod one_step;

use crate::data::{self, ReadOptions, Sample};
use crate::index::Progress;
use crate::model::LoadedModel;
use crate::scores::table::{write_table, Column};
use crate::store::{Dtype, SampleRow, Store, StoreSpec};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// The probe set: samples with a task label (meta `task`, or `all`).
pub struct Probes {
    pub samples: Vec<Sample>,
    pub tasks: Vec<String>,
    pub sha256: String,
    pub path: PathBuf,
}

impl Probes {
    /// Reads probes, keeping the first `per_task` of each task and the first `max_tasks` tasks
    /// when given (file order).
    pub fn read(path: &Path, per_task: Option<usize>, max_tasks: Option<usize>) -> Result<Self> {
        let report = data::read_samples(
            path,
            &ReadOptions {
                format: data::Format::Auto,
                skip_bad: false,
                limit: None,
            },
        )?;
        let mut counts = std::collections::HashMap::<String, usize>::new();
        let mut samples = Vec::new();
        let mut tasks = Vec::new();
        for s in report.samples {
            let task = s
                .meta
                .get("task")
                .and_then(|t| t.as_str())
                .unwrap_or("all")
                .to_string();
            if !counts.contains_key(&task) && max_tasks.is_some_and(|m| counts.len() >= m) {
                continue;
            }
            let c = counts.entry(task.clone()).or_default();
            if per_task.is_some_and(|k| *c >= k) {
                continue;
            }
            *c += 1;
            tasks.push(task);
            samples.push(s);
        }
        if samples.is_empty() {
            return Err(Error::Msg(format!("{}: no probes", path.display())));
        }
        Ok(Self {
            samples,
            tasks,
            sha256: report.sha256,
            path: path.to_path_buf(),
        })
    }

    /// Probe indices grouped by task, tasks in first-seen order.
    pub fn groups(&self) -> Vec<Vec<usize>> {
        let mut order: Vec<&String> = Vec::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, t) in self.tasks.iter().enumerate() {
            match order.iter().position(|o| *o == t) {
                Some(g) => groups[g].push(i),
                None => {
                    order.push(t);
                    groups.push(vec![i]);
                }
            }
        }
        groups
    }
}

/// Σ log p of each sequence's response tokens, sharing work: every sequence continues `base`
/// (when given), and each group's longest common token prefix (kept short of the first response
/// token) is run once and cached; the group's tails then run in batches of `batch`.
pub fn grouped_logprob_sums(
    llama: &crate::model::Llama,
    base: Option<&crate::model::KvCache>,
    groups: &[Vec<usize>],
    seqs: &[crate::model::TokenSeq],
    batch: usize,
) -> Result<Vec<f64>> {
    let mut out = vec![0f64; seqs.len()];
    for group in groups {
        let Some(&g0) = group.first() else { continue };
        let prompt_len = |j: usize| {
            seqs[j]
                .loss_mask
                .iter()
                .position(|&m| m)
                .unwrap_or(seqs[j].ids.len())
        };
        let min_len = group.iter().map(|&j| prompt_len(j)).min().unwrap_or(0);
        let first = &seqs[g0].ids;
        let mut lcp = 0;
        while lcp + 1 < min_len && group.iter().all(|&j| seqs[j].ids[lcp] == first[lcp]) {
            lcp += 1;
        }
        let cache = match (base, lcp) {
            (Some(b), 0) => Some(b.clone()),
            (Some(b), l) => Some(llama.extend_cache(b, &first[..l])?),
            (None, 0) => None,
            (None, l) => Some(llama.prefix_cache(&first[..l])?),
        };
        let tails: Vec<(usize, crate::model::TokenSeq)> = group
            .iter()
            .map(|&j| {
                (
                    j,
                    crate::model::TokenSeq {
                        ids: seqs[j].ids[lcp..].to_vec(),
                        loss_mask: seqs[j].loss_mask[lcp..].to_vec(),
                    },
                )
            })
            .collect();
        for chunk in tails.chunks(batch.max(1)) {
            let b: Vec<crate::model::TokenSeq> = chunk.iter().map(|(_, s)| s.clone()).collect();
            let lp = llama.response_logprob_sums(cache.as_ref(), &b)?;
            for ((j, _), v) in chunk.iter().zip(lp) {
                out[*j] = v;
            }
        }
    }
    Ok(out)
}

/// A forward-only method that turns a training sample into one value per probe.
pub trait ProbeMethod: Sync {
    fn name(&self) -> &str;
    /// Settings recorded in the store spec (a rerun with other settings is refused).
    fn spec(&self) -> serde_json::Value;
    /// One value per probe, the sample's own loss (0 if not computed), and whether it was cut.
    fn row(&self, z: &Sample) -> Result<(Vec<f32>, f32, bool)>;
    /// What the aggregated score means and which sign is "helpful".
    fn sign_convention(&self) -> &str;
    /// One score from a row of per-probe values (the mean unless the method says otherwise).
    fn aggregate(&self, row: &[f32]) -> f32 {
        aggregate(row).1
    }
}

/// Options of a probe run.
pub struct ProbeRun<'a> {
    pub model: &'a LoadedModel,
    pub data: PathBuf,
    pub read: ReadOptions,
    pub probes: &'a Probes,
    pub shard_size: usize,
    pub threads: usize,
}

/// Per-sample aggregate of a row: ICP's fraction of probes with Δ > 0 and the mean.
pub fn aggregate(row: &[f32]) -> (f32, f32) {
    let n = row.len().max(1) as f32;
    let pos = row.iter().filter(|&&d| d > 0.0).count() as f32 / n;
    let mean = row.iter().sum::<f32>() / n;
    (pos, mean)
}

/// Runs (or resumes) `method` over the training samples into the store at `out`, then writes
/// `scores.parquet`, `scores_by_task.parquet` and `probes.parquet` there.
pub fn run(
    run: &ProbeRun,
    method: &dyn ProbeMethod,
    out: &Path,
    progress: &Progress,
) -> Result<PathBuf> {
    let report = data::read_samples(&run.data, &run.read)?;
    let n = report.samples.len();
    if n == 0 {
        return Err(Error::Msg(format!("{}: no samples", run.data.display())));
    }
    let np = run.probes.samples.len();
    let spec = StoreSpec {
        model: crate::index::model_spec(run.model)?,
        data: serde_json::json!({
            "sha256": report.sha256,
            "format": report.format.to_string(),
            "limit": run.read.limit,
        }),
        features: serde_json::json!({
            "probe": method.spec(),
            "probes_sha256": run.probes.sha256,
            "probe_ids": run.probes.samples.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        }),
        dtype: Dtype::F32,
        dim: np,
        shard_size: run.shard_size,
        compact: None,
    };
    let mut store = Store::create_or_resume(out, spec, n)?;
    progress.total.store(n, Ordering::Relaxed);
    progress
        .samples
        .store(store.n_done_rows(), Ordering::Relaxed);
    for i in store.pending_shards() {
        let range = store.shard_range(i);
        let chunk = &report.samples[range];
        let results = crate::index::in_parallel_parts(chunk, run.threads, |c| {
            let mut rows = Vec::new();
            let mut meta = Vec::new();
            for z in c {
                let (r, loss, truncated) = method.row(z)?;
                rows.extend(r);
                let (prompt, response) = (z.body.prompt_text(), z.body.response().to_string());
                meta.push(SampleRow {
                    id: z.id.clone(),
                    row: z.row as u64,
                    n_tokens: 0,
                    n_loss_tokens: 0,
                    loss,
                    truncated,
                    prompt_tokens_cut: 0,
                    response_tokens_cut: 0,
                    prompt,
                    response,
                });
                progress.samples.fetch_add(1, Ordering::Relaxed);
            }
            Ok((rows, meta))
        })?;
        let mut feats = Vec::new();
        let mut rows = Vec::new();
        for (f, m) in results {
            feats.extend(f);
            rows.extend(m);
        }
        store.write_shard(i, &feats, &rows)?;
    }
    store.finish()?;
    write_outputs(&store, run.probes, method)?;
    Ok(out.join("scores.parquet"))
}

/// Aggregates a finished probe store into its Parquet outputs.
fn write_outputs(store: &Store, probes: &Probes, method: &dyn ProbeMethod) -> Result<()> {
    let np = probes.samples.len();
    let samples = store.samples()?;
    let mut matrix = Vec::with_capacity(samples.len() * np);
    for i in 0..store.n_shards() {
        matrix.extend(store.shard_features(i)?.0);
    }
    let groups = probes.groups();
    let (mut ids, mut score, mut mean) = (Vec::new(), Vec::new(), Vec::new());
    let (mut t_ids, mut t_task, mut t_score, mut t_mean) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (r, s) in samples.iter().enumerate() {
        let row = &matrix[r * np..(r + 1) * np];
        ids.push(s.id.clone());
        score.push(method.aggregate(row));
        mean.push(aggregate(row).1);
        for g in &groups {
            let vals: Vec<f32> = g.iter().map(|&j| row[j]).collect();
            t_ids.push(s.id.clone());
            t_task.push(probes.tasks[g[0]].clone());
            t_score.push(method.aggregate(&vals));
            t_mean.push(aggregate(&vals).1);
        }
    }
    let rank = crate::scores::ranks(&score);
    let meta = [
        ("inflow.method", method.name()),
        ("inflow.sign_convention", method.sign_convention()),
    ];
    let name = method.name().to_string();
    write_table(
        &store.dir().join("scores.parquet"),
        vec![
            ("train_id", Column::Str(ids.clone())),
            ("score", Column::F32(score)),
            ("mean_delta", Column::F32(mean)),
            ("rank", Column::U32(rank)),
            ("n_probes", Column::U32(vec![np as u32; ids.len()])),
            ("method", Column::Str(vec![name.clone(); ids.len()])),
        ],
        &meta,
    )?;
    write_table(
        &store.dir().join("scores_by_task.parquet"),
        vec![
            ("train_id", Column::Str(t_ids.clone())),
            ("task", Column::Str(t_task)),
            ("score", Column::F32(t_score)),
            ("mean_delta", Column::F32(t_mean)),
            ("method", Column::Str(vec![name; t_ids.len()])),
        ],
        &meta,
    )?;
    write_table(
        &store.dir().join("probes.parquet"),
        vec![
            ("column", Column::U32((0..np as u32).collect())),
            (
                "probe_id",
                Column::Str(probes.samples.iter().map(|s| s.id.clone()).collect()),
            ),
            ("task", Column::Str(probes.tasks.clone())),
        ],
        &[("inflow.note", "column j of features-*.npy is probe j")],
    )?;
    Ok(())
}
