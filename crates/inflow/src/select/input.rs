//! Score inputs of a selection: per-train score files, full query × train matrices reduced
//! per task (LESS), gradient features of chosen rows from a store, and the join of scores
//! back to the data file they were computed on.

use std::collections::HashMap;
use std::path::Path;

use super::Scored;
use crate::data::Sample;
use crate::scores::table::read_table;
use crate::store::npy::NpyFile;
use crate::store::Store;
use crate::{Error, Result};

/// A per-train score file as read: scores by sample id and the file's method metadata.
#[derive(Debug, Clone)]
pub struct ScoreFile {
    pub scored: Scored,
    /// `inflow.method` metadata (or the `method` column), if any.
    pub method: Option<String>,
    pub sign_convention: Option<String>,
}

fn bad(path: &Path, msg: impl Into<String>) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        line: 0,
        msg: msg.into(),
    }
}

/// Reads one score per training sample from a Parquet file with columns `train_id` (utf8)
/// and `score` (numeric): `inflow score --aggregate mean` output, ICP/one-step
/// `scores.parquet`, or any table with those two columns. Top-k files (with `query_id`) and
/// per-task tables (with `task`) hold several scores per sample and are refused with a hint.
pub fn read_per_train(path: &Path) -> Result<ScoreFile> {
    let (cols, meta) = read_table(path)?;
    let get = |n: &str| cols.iter().find(|(c, _)| c == n).map(|(_, v)| v);
    if get("query_id").is_some() {
        return Err(bad(
            path,
            "is a top-k file (one row per query and training sample); select from one score per \
             sample: `inflow score --aggregate mean`, or a full matrix (`score --full`, .npy)",
        ));
    }
    if get("task").is_some() {
        return Err(bad(
            path,
            "has a `task` column (several scores per sample); use the per-sample scores.parquet",
        ));
    }
    let ids = get("train_id")
        .and_then(|c| c.as_str())
        .ok_or_else(|| {
            bad(
                path,
                "expected a utf8 column `train_id` (an inflow score file)",
            )
        })?
        .to_vec();
    let scores: Vec<f32> = get("score")
        .and_then(|c| c.as_f64())
        .ok_or_else(|| bad(path, "expected a numeric column `score`"))?
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let m = |key: &str| meta.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    let method = m("inflow.method").or_else(|| {
        get("method")
            .and_then(|c| c.as_str())
            .and_then(|v| v.first().cloned())
    });
    let scored = Scored::new(ids, scores).map_err(|e| bad(path, e.to_string()))?;
    Ok(ScoreFile {
        scored,
        method,
        sign_convention: m("inflow.sign_convention"),
    })
}

/// LESS's per-task score from a full nq × n matrix (`inflow score --full`, with its JSON
/// sidecar naming the query ids): for each target task T, the mean over T's queries, then
/// the max over tasks, s(z) = max_T (1/|T|) Σ_{q∈T} score(q, z) (Xia et al. 2024).
/// `train_ids[j]` names column j (the store's row j); `query_tasks` maps query id → task.
pub fn read_full_per_task(
    path: &Path,
    train_ids: &[String],
    query_tasks: &HashMap<String, String>,
) -> Result<Scored> {
    let f = NpyFile::open(path)?;
    let (nq, n) = match f.shape() {
        [a, b] => (*a, *b),
        s => return Err(bad(path, format!("expected a 2-d matrix, shape is {s:?}"))),
    };
    if n != train_ids.len() {
        return Err(bad(
            path,
            format!(
                "has {n} columns but the store has {} training samples",
                train_ids.len()
            ),
        ));
    }
    let side = path.with_extension("json");
    let text = std::fs::read_to_string(&side).map_err(|e| Error::io(&side, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&side, format!("not JSON: {e}")))?;
    let qids: Vec<String> = v
        .get("query_ids")
        .and_then(|q| q.as_array())
        .ok_or_else(|| bad(&side, "expected a `query_ids` array"))?
        .iter()
        .map(|q| q.as_str().map(String::from))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(&side, "`query_ids` must be strings"))?;
    if qids.len() != nq {
        return Err(bad(
            &side,
            format!("{} query ids for {nq} matrix rows", qids.len()),
        ));
    }
    let tasks = qids
        .iter()
        .map(|q| {
            query_tasks.get(q).cloned().ok_or_else(|| {
                bad(
                    &side,
                    format!("query {q} is not in the queries file, or has no `task` field"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let full = f.to_f32_vec();
    let scores = crate::scores::checkpoints::per_task_max(&full, nq, &tasks);
    Scored::new(train_ids.to_vec(), scores).map_err(|e| bad(path, e.to_string()))
}

/// Task of each query sample (its `task` field), by sample id.
pub fn query_tasks(queries: &[Sample]) -> HashMap<String, String> {
    queries
        .iter()
        .filter_map(|q| {
            q.meta
                .get("task")
                .and_then(|t| t.as_str())
                .map(|t| (q.id.clone(), t.to_string()))
        })
        .collect()
}

/// Gradient features of the store rows whose ids are `ids` (rows × dim, in the order of
/// `ids`), read shard by shard. Errors naming the first id the store does not hold.
pub fn store_features(store: &Store, ids: &[&str]) -> Result<Vec<f32>> {
    let rows = store.samples()?;
    let pos: HashMap<&str, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let dim = store.dim();
    let mut want: Vec<(usize, usize)> = Vec::with_capacity(ids.len());
    for (k, id) in ids.iter().enumerate() {
        let r = pos.get(id).ok_or_else(|| Error::Store {
            path: store.dir().to_path_buf(),
            msg: format!(
                "holds no sample {id} (the scores and the store come from different data)"
            ),
        })?;
        want.push((*r, k));
    }
    want.sort();
    let mut out = vec![0.0f32; ids.len() * dim];
    let mut next = 0;
    for shard in 0..store.n_shards() {
        let range = store.shard_range(shard);
        if next >= want.len() || want[next].0 >= range.end {
            continue;
        }
        let f = store.shard_rows(shard)?;
        while next < want.len() && want[next].0 < range.end {
            let (r, k) = want[next];
            let local = r - range.start;
            f.copy_rows_f32(local, local + 1, &mut out[k * dim..(k + 1) * dim]);
            next += 1;
        }
    }
    Ok(out)
}

/// For each scored id, the position of its sample in `samples` (read from `data`). A score
/// file computed on other data (or another version of it) is an error naming the first id
/// that does not match and what that row holds now.
pub fn join_data(ids: &[String], samples: &[Sample], data: &Path) -> Result<Vec<usize>> {
    let by_id: HashMap<&str, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    ids.iter()
        .map(|id| {
            by_id.get(id.as_str()).copied().ok_or_else(|| {
                let row = id.split('-').next().and_then(|r| r.parse::<usize>().ok());
                // Built only for the error message.
                let by_row: HashMap<usize, &str> =
                    samples.iter().map(|s| (s.row, s.id.as_str())).collect();
                let now = match row.and_then(|r| by_row.get(&r)) {
                    Some(have) => format!("row {} there is {have}", row.unwrap_or_default()),
                    None => "no such row there".to_string(),
                };
                Error::BadInput {
                    path: data.to_path_buf(),
                    line: 0,
                    msg: format!(
                        "the scores name sample {id} but {now}: the scores were computed on \
                         other data (or another version of this file)"
                    ),
                }
            })
        })
        .collect()
}

/// Checks scores against the data file both ways before anything is selected: every scored id
/// must be a sample of the data (else the scores belong to other data), and the scored samples
/// must be the data's first n (a store indexed with `--limit n`); scores that skip a sample in
/// between cover only part of the data, and selecting "5%" of them would silently select from
/// that part. Returns how many of the data's samples are scored.
pub fn check_coverage(
    ids: &[String],
    samples: &[Sample],
    scores: &Path,
    data: &Path,
) -> Result<usize> {
    join_data(ids, samples, data)?;
    let scored: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
    let n = scored.len();
    if let Some(gap) = samples[..n.min(samples.len())]
        .iter()
        .find(|s| !scored.contains(s.id.as_str()))
    {
        return Err(bad(
            scores,
            format!(
                "scores {n} of the {} samples of {}, but not sample {} (row {}) among the first \
                 {n}: the scores cover only part of this data; score every sample (or the same \
                 first N as the store's --limit) and select again",
                samples.len(),
                data.display(),
                gap.id,
                gap.row
            ),
        ));
    }
    Ok(n)
}

/// The seed-set scoring used when none is named: the influence function with EK-FAC when
/// the store has fitted curvature (`inflow fit`), else gradient cosine (no curvature needed,
/// and insensitive to the gradient norm that long or badly fit samples inflate).
pub fn default_seed_method(store_dir: &Path) -> crate::scores::queries::MethodSpec {
    use crate::scores::queries::MethodSpec;
    if crate::curvature::kfac::fit_path(store_dir).exists() {
        MethodSpec::influence("ekfac", 0.1)
    } else {
        MethodSpec::plain("cosine")
    }
}

/// G-DIG's quality score of every store row against a seed set: the seed queries' scores
/// averaged, s(z) = (1/|S|) Σ_{q∈S} score(q, z), with the store's sample ids. Also returns
/// the method's name and sign convention.
pub fn seed_set_scores(
    store_dir: &Path,
    model: &crate::model::LoadedModel,
    seed_set: &[Sample],
    spec: &crate::scores::queries::MethodSpec,
    threads: usize,
    progress: &crate::index::Progress,
    on_shard: &mut dyn FnMut(usize),
) -> Result<(Scored, String, String)> {
    let s = crate::scores::queries::score_samples(
        store_dir, model, seed_set, spec, 1, true, threads, progress, None, on_shard,
    )?;
    let full = s
        .result
        .full
        .ok_or_else(|| Error::Msg("internal: the full score matrix was not kept".into()))?;
    let mean = crate::scores::mean_over_queries(&full, seed_set.len());
    let ids = Store::open(store_dir)?
        .samples()?
        .into_iter()
        .map(|r| r.id)
        .collect();
    Ok((Scored::new(ids, mean)?, s.method, s.sign_convention))
}
