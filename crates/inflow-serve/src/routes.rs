//! The HTTP surface: the page's embedded files and a small JSON API over the catalog. Routes
//! are exact; anything else is a 404, so no request can name a file. Bodies are capped at
//! [`MAX_BODY`] bytes and live queries at [`crate::live::MAX_LIVE_CHARS`] characters.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agreement::agreement;
use crate::live::{JobState, LiveRequest, MAX_LIVE_CHARS};
use crate::scoreset::Scores;
use crate::{App, Error};

/// The largest request body accepted (live queries, selections).
pub const MAX_BODY: usize = 64 * 1024;
/// The most rows a list endpoint returns at once.
const MAX_LIST: usize = 500;

/// An error as the API answers it: a status and `{"error": "…"}`.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match e {
            Error::Request(_) => StatusCode::BAD_REQUEST,
            Error::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

type ApiResult = std::result::Result<Json<Value>, ApiError>;

fn not_found(what: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no {what}"))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Every route of the server.
pub fn router(app: Arc<App>) -> Router {
    let mut r = Router::new();
    for (path, _, _) in crate::assets::ASSETS {
        r = r.route(path, get(asset));
    }
    r.route("/api/overview", get(overview))
        .route("/api/queries", get(queries))
        .route("/api/query/{index}", get(query))
        .route("/api/samples", get(samples))
        .route("/api/sample/{index}", get(sample))
        .route("/api/live", post(live_submit))
        .route("/api/live/{job}", get(live_status))
        .route("/api/selection", post(selection_post).get(selection_get))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn asset(uri: Uri) -> Response {
    match crate::assets::asset(uri.path()) {
        Some((ctype, body)) => (
            [
                (header::CONTENT_TYPE, ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => not_found("such page").into_response(),
    }
}

async fn fallback(uri: Uri) -> ApiError {
    not_found(format_args!("page or API at {}", uri.path()))
}

/// `?q=…&limit=…&offset=…` of the list endpoints.
#[derive(Deserialize)]
struct ListParams {
    #[serde(default)]
    q: String,
    limit: Option<usize>,
    #[serde(default)]
    offset: usize,
}

fn snippet(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

/// The overview never changes while serving (the catalog is read-only): built once, on the
/// first request.
async fn overview(State(app): State<Arc<App>>) -> ApiResult {
    Ok(Json(
        app.overview.get_or_init(|| overview_json(&app)).clone(),
    ))
}

fn overview_json(app: &App) -> Value {
    let c = &app.catalog;
    let topk: Vec<(&str, &Vec<Vec<crate::scoreset::Hit>>)> = c
        .methods
        .iter()
        .filter_map(|m| match &m.scores {
            Scores::TopK { lists, .. } => Some((m.name.as_str(), lists)),
            _ => None,
        })
        .collect();
    // Mean agreement over the queries both files list.
    let mut pairs = Vec::new();
    for i in 0..topk.len() {
        for j in i + 1..topk.len() {
            let (mut n, mut ov, mut sp, mut n_sp) = (0usize, 0.0, 0.0, 0usize);
            for q in 0..c.queries.len() {
                let (a, b) = (&topk[i].1[q], &topk[j].1[q]);
                if a.is_empty() || b.is_empty() {
                    continue;
                }
                let g = agreement(topk[i].0, a, topk[j].0, b);
                n += 1;
                ov += g.overlap;
                if let Some(s) = g.spearman {
                    sp += s;
                    n_sp += 1;
                }
            }
            pairs.push(json!({
                "a": topk[i].0, "b": topk[j].0, "n_queries": n,
                "mean_overlap": (n > 0).then(|| ov / n as f64),
                "mean_spearman": (n_sp > 0).then(|| sp / n_sp as f64),
            }));
        }
    }
    let methods: Vec<Value> = c
        .methods
        .iter()
        .map(|m| {
            let mut v = json!({
                "name": m.name,
                "file": m.file.display().to_string(),
                "kind": m.kind(),
                "sign_convention": m.sign_convention,
            });
            match &m.scores {
                Scores::TopK { lists, reverse, k } => {
                    v["k"] = json!(k);
                    v["n_queries"] = json!(lists.iter().filter(|l| !l.is_empty()).count());
                    // The samples that keep showing up in the top-k lists.
                    let mut freq: Vec<(usize, usize)> = reverse
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| !r.is_empty())
                        .map(|(row, r)| (row, r.len()))
                        .collect();
                    freq.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                    v["frequent"] = freq
                        .iter()
                        .take(10)
                        .map(|&(row, n)| {
                            json!({"index": row, "id": c.samples[row].id, "task": c.tasks[row],
                                   "prompt": snippet(&c.texts[row].0, 120), "count": n})
                        })
                        .collect();
                }
                Scores::PerTrain { score, what, .. } => {
                    v["what"] = json!(what);
                    v["n_scored"] = json!(score.iter().filter(|s| s.is_some()).count());
                }
            }
            v
        })
        .collect();
    json!({
        "facts": c.facts,
        "loss_hist": c.loss_hist,
        "self_hist": c.self_hist,
        "self_score_what": "squared feature norm ‖g‖², the dot-product self-score",
        "methods": methods,
        "agreement": pairs,
        "n_queries": c.queries.len(),
        "queries_have_text": c.queries.iter().any(|q| q.prompt.is_some()),
        "live": {
            "enabled": app.live.is_some(),
            "methods": app.live.as_ref().map(|l| l.methods.clone()).unwrap_or_default(),
            "max_chars": MAX_LIVE_CHARS,
        },
        "selection": { "enabled": c.data.is_some() },
    })
}

/// One page of a list endpoint: `total` matches, then `limit` rows from `offset`, each drawn
/// by `row`, under `key`.
fn page(
    p: &ListParams,
    default_limit: usize,
    key: &str,
    all: &[usize],
    row: impl Fn(usize) -> Value,
) -> Value {
    let limit = p.limit.unwrap_or(default_limit).min(MAX_LIST);
    let shown: Vec<Value> = all
        .iter()
        .skip(p.offset)
        .take(limit)
        .map(|&i| row(i))
        .collect();
    json!({"total": all.len(), "offset": p.offset, key: shown})
}

async fn queries(State(app): State<Arc<App>>, Query(p): Query<ListParams>) -> ApiResult {
    let c = &app.catalog;
    Ok(Json(page(
        &p,
        200,
        "queries",
        &c.search_queries(&p.q),
        |q| {
            let x = &c.queries[q];
            json!({"index": q, "id": x.id, "task": x.task,
               "snippet": x.prompt.as_deref().map(|t| snippet(t, 160))})
        },
    )))
}

async fn samples(State(app): State<Arc<App>>, Query(p): Query<ListParams>) -> ApiResult {
    let c = &app.catalog;
    Ok(Json(page(
        &p,
        100,
        "samples",
        &c.search_samples(&p.q),
        |r| {
            json!({"index": r, "id": c.samples[r].id, "task": c.tasks[r],
               "loss": c.samples[r].loss, "snippet": snippet(&c.texts[r].0, 160)})
        },
    )))
}

async fn query(State(app): State<Arc<App>>, Path(index): Path<usize>) -> ApiResult {
    let c = &app.catalog;
    if index >= c.queries.len() {
        return Err(not_found(format_args!(
            "query {index} (there are {})",
            c.queries.len()
        )));
    }
    let mut lists = Vec::new();
    let mut methods = Vec::new();
    for m in &c.methods {
        if let Scores::TopK { lists: l, .. } = &m.scores {
            let list = &l[index];
            lists.push((m.name.as_str(), list));
            methods.push(json!({
                "name": m.name,
                "sign_convention": m.sign_convention,
                "rows": list.iter().map(|h| json!({
                    "rank": h.rank, "score": h.score, "sample": c.sample_json(h.row),
                })).collect::<Vec<_>>(),
            }));
        }
    }
    let mut pairs = Vec::new();
    for i in 0..lists.len() {
        for j in i + 1..lists.len() {
            pairs.push(agreement(lists[i].0, lists[i].1, lists[j].0, lists[j].1));
        }
    }
    Ok(Json(json!({
        "query": c.query_json(index),
        "methods": methods,
        "agreement": pairs,
    })))
}

async fn sample(State(app): State<Arc<App>>, Path(index): Path<usize>) -> ApiResult {
    let c = &app.catalog;
    if index >= c.samples.len() {
        return Err(not_found(format_args!(
            "training sample {index} (there are {})",
            c.samples.len()
        )));
    }
    let methods: Vec<Value> = c
        .methods
        .iter()
        .map(|m| match &m.scores {
            Scores::TopK { reverse, k, .. } => json!({
                "name": m.name, "kind": m.kind(), "k": k,
                "pulls": reverse[index].iter().map(|p| json!({
                    "query": c.query_json(p.query), "rank": p.rank, "score": p.score,
                })).collect::<Vec<_>>(),
            }),
            Scores::PerTrain {
                score, rank, what, ..
            } => json!({
                "name": m.name, "kind": m.kind(), "what": what,
                "score": score[index], "rank": rank[index],
                "n": score.iter().filter(|s| s.is_some()).count(),
            }),
        })
        .collect();
    Ok(Json(json!({
        "sample": c.sample_json(index),
        "methods": methods,
    })))
}

/// A live query: a prompt and response, or one record as a JSON line.
#[derive(Deserialize)]
struct LiveBody {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    response: String,
    /// A whole record in any supported format, as JSON text (one JSONL line).
    record: Option<String>,
    method: String,
    top_k: Option<usize>,
}

async fn live_submit(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<LiveBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult {
    let Json(b) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let live = app.live.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "live queries need a model: start `inflow serve` with --model".into(),
        )
    })?;
    if !live.methods.contains(&b.method) {
        return Err(bad(format!(
            "method `{}` cannot score a live query on this store; one of: {}",
            b.method,
            live.methods.join(", ")
        )));
    }
    let top_k = b.top_k.unwrap_or(10);
    if !(1..=100).contains(&top_k) {
        return Err(bad(format!("top_k {top_k}: expected 1 to 100")));
    }
    let record = match &b.record {
        Some(text) if !text.trim().is_empty() => {
            let n = text.chars().count();
            if n > MAX_LIVE_CHARS {
                return Err(bad(format!(
                    "the record has {n} characters; a live query holds at most {MAX_LIVE_CHARS}"
                )));
            }
            let v: Value = serde_json::from_str(text.trim())
                .map_err(|e| bad(format!("the record is not one JSON object: {e}")))?;
            if !v.is_object() {
                return Err(bad("the record is not one JSON object (one JSONL line)"));
            }
            v
        }
        _ => {
            let n = b.prompt.chars().count() + b.response.chars().count();
            if n > MAX_LIVE_CHARS {
                return Err(bad(format!(
                    "prompt and response have {n} characters; a live query holds at most {MAX_LIVE_CHARS}"
                )));
            }
            if b.prompt.trim().is_empty() || b.response.trim().is_empty() {
                return Err(bad("give a prompt and a response (or paste a record)"));
            }
            json!({"instruction": b.prompt, "input": "", "output": b.response})
        }
    };
    let id = live.submit(LiveRequest {
        record,
        method: b.method,
        top_k,
    })?;
    let ahead = live.job(id).map_or(0, |(_, a)| a);
    Ok(Json(json!({"job": id, "ahead": ahead})))
}

async fn live_status(State(app): State<Arc<App>>, Path(job): Path<u64>) -> ApiResult {
    let c = &app.catalog;
    let live = app
        .live
        .as_ref()
        .ok_or_else(|| not_found("live queries (start with --model)"))?;
    let (j, ahead) = live
        .job(job)
        .ok_or_else(|| not_found(format_args!("live job {job}")))?;
    let mut v = serde_json::to_value(&j).map_err(|e| bad(e.to_string()))?;
    v["ahead"] = json!(ahead);
    if let JobState::Done { hits, .. } = &j.state {
        v["rows"] = hits
            .iter()
            .enumerate()
            .map(|(i, (id, s))| {
                json!({"rank": i + 1, "score": s,
                       "sample": c.row_of.get(id).map(|&r| c.sample_json(r))})
            })
            .collect();
        v.as_object_mut().map(|o| o.remove("hits"));
    }
    Ok(Json(v))
}

/// What to select: ticked training rows, or a method's top percent.
#[derive(Deserialize)]
struct SelectionBody {
    #[serde(default)]
    rows: Vec<usize>,
    method: Option<String>,
    percent: Option<f64>,
}

fn selection(app: &App, b: SelectionBody) -> std::result::Result<Response, ApiError> {
    let c = &app.catalog;
    let data = c.data.as_ref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "the training data file named in the store's run.json is not there; selections are cut from it".into(),
        )
    })?;
    let n = c.samples.len();
    let (rows, name): (Vec<usize>, String) = match (&b.method, b.percent) {
        (Some(m), Some(p)) => {
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad(format!(
                    "percent {p}: expected more than 0, at most 100"
                )));
            }
            let set = c
                .methods
                .iter()
                .find(|s| &s.name == m)
                .ok_or_else(|| bad(format!("no loaded method `{m}`")))?;
            let scores = set.selection_scores(n);
            let mut order: Vec<usize> = (0..n).filter(|&r| scores[r].is_some()).collect();
            order.sort_by(|&a, &b| {
                scores[b]
                    .unwrap_or(f32::MIN)
                    .total_cmp(&scores[a].unwrap_or(f32::MIN))
                    .then(a.cmp(&b))
            });
            let take = ((p / 100.0) * n as f64).ceil() as usize;
            order.truncate(take);
            (order, format!("{m}-top{p}pct"))
        }
        (None, None) => {
            if b.rows.is_empty() {
                return Err(bad(
                    "tick at least one sample, or give a method and a percent",
                ));
            }
            if let Some(&r) = b.rows.iter().find(|&&r| r >= n) {
                return Err(bad(format!("row {r}: the store has {n} samples")));
            }
            (b.rows.clone(), format!("{}-samples", b.rows.len()))
        }
        _ => return Err(bad("give both a method and a percent")),
    };
    // Store rows map to the data file's rows (the store keeps each sample's source row).
    let data_rows: Vec<usize> = rows.iter().map(|&r| c.samples[r].row as usize).collect();
    let ext = data
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("jsonl")
        .to_ascii_lowercase();
    let out = app.scratch.0.join(format!(
        "selection-{}.{ext}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let written = inflow::select::write::write_rows(data, &data_rows, &out)
        .map_err(|e| ApiError::from(Error::from(e)))?;
    let bytes = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    let bytes = bytes.map_err(|e| ApiError::from(Error::Io(out.clone(), e)))?;
    let ctype = if ext == "parquet" {
        "application/vnd.apache.parquet"
    } else {
        "application/x-ndjson"
    };
    let safe: String = name
        .chars()
        .map(|ch| {
            if ch.is_ascii_alphanumeric() || ch == '-' {
                ch
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"selection-{safe}.{ext}\""),
            ),
            (
                header::HeaderName::from_static("x-inflow-selected"),
                written.to_string(),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn selection_post(
    State(app): State<Arc<App>>,
    body: std::result::Result<Json<SelectionBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    match body {
        Ok(Json(b)) => selection(&app, b).unwrap_or_else(IntoResponse::into_response),
        Err(e) => ApiError(e.status(), e.body_text()).into_response(),
    }
}

async fn selection_get(
    State(app): State<Arc<App>>,
    Query(p): Query<HashMap<String, String>>,
) -> Response {
    let percent = match p.get("percent").map(|s| s.parse::<f64>()) {
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return bad("percent: expected a number").into_response(),
        None => None,
    };
    let b = SelectionBody {
        rows: Vec::new(),
        method: p.get("method").cloned(),
        percent,
    };
    selection(&app, b).unwrap_or_else(IntoResponse::into_response)
}
