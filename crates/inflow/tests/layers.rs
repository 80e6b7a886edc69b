//! The library's modules import each other without circles: between files (`crate::a::b`
//! and `super::x` paths outside tests), and so also between folders. A circle here is what
//! makes a lower layer (model, store) depend on a higher one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `model/lora.rs` → `model::lora`, `model/mod.rs` → `model`, `lib.rs` → ``.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// The module paths a file's code names (outside comments and its `#[cfg(test)]` part), resolved to the longest
/// known module.
fn imports(path: &Path, module: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    // Code only: doc links (`[`crate::x`]`) are no imports.
    let body: String = text
        .split("#[cfg(test)]")
        .next()
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    // `super` of `a/b.rs` (module a::b) is `a`; of `a/mod.rs` (module a), the crate root.
    let sup = module
        .rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_string());
    let mut out = BTreeSet::new();
    for (prefix, base) in [("crate::", String::new()), ("super::", sup)] {
        for (i, _) in body.match_indices(prefix) {
            let rest: String = body[i + prefix.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut path = if base.is_empty() {
                rest.clone()
            } else {
                format!("{base}::{rest}")
            };
            loop {
                path = path.trim_end_matches(':').to_string();
                if known.contains(&path) || path.is_empty() {
                    break;
                }
                path = path
                    .rsplit_once("::")
                    .map_or(String::new(), |(p, _)| p.to_string());
            }
            if !path.is_empty() && path != module {
                out.insert(path);
            }
        }
    }
    out
}

/// A circle in `graph`, if any, as the modules along it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    return Some(stack[at..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if !state.contains_key(n) {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_circle_between_files_or_folders() {
    let mut paths = Vec::new();
    files(&src(), &mut paths);
    let known: BTreeSet<String> = paths.iter().map(|p| module_of(p)).collect();
    let mut by_file = BTreeMap::new();
    let mut by_folder: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_string();
    for p in &paths {
        let m = module_of(p);
        if m.is_empty() || m == "error" {
            continue; // lib.rs declares every module; every module uses the crate's error.
        }
        let deps: BTreeSet<String> = imports(p, &m, &known)
            .into_iter()
            .filter(|d| d != "error" && !m.starts_with(&format!("{d}::")))
            .collect();
        for d in &deps {
            if top(d) != top(&m) {
                by_folder.entry(top(&m)).or_default().insert(top(d));
            }
        }
        by_file.insert(m, deps);
    }
    assert!(by_file.len() > 40, "found only {} modules", by_file.len());
    assert!(
        by_file["train::features"].contains("index"),
        "the parser missed a known import"
    );
    if let Some(c) = circle(&by_file) {
        panic!("import circle between files: {}", c.join(" → "));
    }
    if let Some(c) = circle(&by_folder) {
        panic!("import circle between folders: {}", c.join(" → "));
    }
}
