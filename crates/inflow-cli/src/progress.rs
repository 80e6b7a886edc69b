//! The library's [`Reporter`] as indicatif progress bars on stderr.

use indicatif::{ProgressBar, ProgressStyle};
use inflow::pipeline::Reporter;
use std::collections::HashMap;
use std::sync::Mutex;

/// One progress bar per running stage.
#[derive(Default)]
pub(crate) struct Bars {
    bars: Mutex<HashMap<String, ProgressBar>>,
}

/// A bar for `what` with `total` units (resized later when 0).
pub(crate) fn bar(total: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}}  {{per_sec}}  ETA {{eta}}  {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

impl Reporter for Bars {
    fn start(&self, stage: &str, total: usize) {
        if let Ok(mut b) = self.bars.lock() {
            b.insert(stage.to_string(), bar(total, stage));
        }
    }
    fn update(&self, stage: &str, done: usize, total: usize, note: &str) {
        if let Ok(b) = self.bars.lock() {
            if let Some(pb) = b.get(stage) {
                if total > 0 && pb.length() != Some(total as u64) {
                    pb.set_length(total as u64);
                }
                pb.set_position(done as u64);
                if !note.is_empty() {
                    pb.set_message(note.to_string());
                }
            }
        }
    }
    fn finish(&self, stage: &str) {
        if let Ok(mut b) = self.bars.lock() {
            if let Some(pb) = b.remove(stage) {
                pb.finish_and_clear();
            }
        }
    }
    fn note(&self, line: &str) {
        match self.bars.lock() {
            Ok(b) if !b.is_empty() => {
                if let Some(pb) = b.values().next() {
                    pb.println(line);
                }
            }
            _ => eprintln!("{line}"),
        }
    }
}
