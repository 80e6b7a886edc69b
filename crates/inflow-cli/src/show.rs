//! Printing score results: a readable table with the text of the top training samples, or JSON.

use crate::ScoreOutput;

/// One line of at most `n` characters, whitespace collapsed.
pub(crate) fn preview(s: &str, n: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= n {
        flat
    } else {
        let cut: String = flat.chars().take(n.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// Drops chat-template scaffolding so previews show the words people wrote.
fn strip_template(s: &str) -> String {
    let mut t = s.to_string();
    for marker in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"] {
        t = t.replace(marker, " ");
    }
    for role in ["system\n", "user\n", "assistant\n"] {
        t = t.replace(role, "");
    }
    t = t.replace(
        "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
        "",
    );
    t
}

pub(crate) fn table(so: &ScoreOutput, show: usize) {
    for (qi, top) in so.result.topk.iter().enumerate().take(show) {
        println!();
        println!(
            "query {} · {}",
            so.query_ids[qi],
            preview(&strip_template(&so.query_text[qi]), 110)
        );
        println!(
            "  {:>4}  {:>9}  {:<12}  training sample (prompt → response)",
            "rank", so.method, "train id"
        );
        for (rank, (row, score)) in top.iter().enumerate() {
            let t = &so.train[*row];
            let text = format!(
                "{} → {}",
                preview(&strip_template(&t.prompt), 60),
                preview(&strip_template(&t.response), 30)
            );
            println!(
                "  {:>4}  {:>9}  {:<12}  {}",
                rank + 1,
                number(*score as f64),
                t.id,
                text
            );
        }
    }
    if so.result.topk.len() > show {
        println!(
            "\n({} more queries in the output file)",
            so.result.topk.len() - show
        );
    }
}

pub(crate) fn json(so: &ScoreOutput) -> serde_json::Value {
    let queries: Vec<serde_json::Value> = so
        .result
        .topk
        .iter()
        .enumerate()
        .map(|(qi, top)| {
            serde_json::json!({
                "query_id": so.query_ids[qi],
                "top": top.iter().enumerate().map(|(r, (row, score))| serde_json::json!({
                    "rank": r + 1, "train_id": so.train[*row].id, "score": score,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::json!({"method": so.method, "out": so.out, "queries": queries})
}

/// The per-sample listing of a checkpoint method (TracIn, LESS): the best training samples by
/// the written per-sample score (or, for top-k files, the mean over queries).
pub(crate) fn checkpoint_listing(
    so: &ScoreOutput,
    checkpoints: &serde_json::Value,
    k: usize,
    json: bool,
) -> anyhow::Result<()> {
    let nq = so.query_ids.len();
    let (scores, what) = match &so.per_train {
        Some(p) => (p.scores.clone(), p.what.clone()),
        None => (
            inflow::scores::mean_over_queries(so.result.full.as_deref().unwrap_or_default(), nq),
            "mean over queries".to_string(),
        ),
    };
    let ids = &so.train_ids;
    let mut order: Vec<usize> = (0..scores.len().min(ids.len())).collect();
    order.sort_by(|&x, &y| scores[y].total_cmp(&scores[x]).then(x.cmp(&y)));
    let top: Vec<serde_json::Value> = order
        .iter()
        .take(k)
        .map(|&j| serde_json::json!({"train_id": ids[j], "score": scores[j]}))
        .collect();
    let n_ck = checkpoints.as_array().map_or(0, |a| a.len());
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "method": so.method, "out": so.out, "checkpoints": checkpoints, "aggregate": what, "top": top,
            }))?
        );
    } else {
        println!("{} over {n_ck} checkpoints ({what}):", so.method);
        for (r, t) in top.iter().enumerate() {
            println!(
                "  {:>3}  {:>10}  {}",
                r + 1,
                number(t["score"].as_f64().unwrap_or(0.0)),
                t["train_id"].as_str().unwrap_or("")
            );
        }
        println!("wrote {}", so.out.display());
    }
    Ok(())
}

/// A score for a table: 4 decimals, or 3 significant digits when that would print 0.0000
/// (TracIn's η-weighted dots are ~1e-5).
fn number(v: f64) -> String {
    if v != 0.0 && v.abs() < 1e-3 {
        format!("{v:.2e}")
    } else {
        format!("{v:.4}")
    }
}
