//! Which block Linears a run tracks or adapts (`--modules`), shared by features, LoRA and
//! training so that every layer names its modules the same way.

use super::capture::LinearInfo;
use super::llama::BLOCK_LINEARS;
use crate::{Error, Result};

/// Chooses tracked Linears. `pattern` is a comma-separated list; an item matches a layer when
/// it equals its short name (q, k, v, o, gate, up, down) or is a substring of its full name
/// (`layers.29.`, `mlp`). Returns flat indices into `all`.
pub fn select_modules(all: &[LinearInfo], pattern: &str) -> Result<Vec<usize>> {
    let items: Vec<&str> = pattern
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() || items == ["all"] {
        return Ok((0..all.len()).collect());
    }
    let short = |name: &str| -> String {
        let last = name.rsplit('.').next().unwrap_or(name);
        last.trim_end_matches("_proj").to_string()
    };
    let sel: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            // A short name matches only itself: as a substring, `o` would match every
            // `model.layers…` name.
            items.iter().any(|it| {
                if BLOCK_LINEARS.contains(it) {
                    short(&l.name) == *it
                } else {
                    l.name.contains(it)
                }
            })
        })
        .map(|(i, _)| i)
        .collect();
    if sel.is_empty() {
        return Err(Error::Msg(format!(
            "--modules `{pattern}` matches no layer; use short names (q,k,v,o,gate,up,down) or parts of names like `{}`",
            all.first().map(|l| l.name.as_str()).unwrap_or("model.layers.0.self_attn.q_proj")
        )));
    }
    Ok(sel)
}
