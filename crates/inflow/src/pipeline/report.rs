//! How pipelines tell their caller what they are doing: a small trait the CLI implements
//! with progress bars, and [`Silent`] for library callers that want none.

use crate::index::Progress;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Receives a pipeline's progress. Stages are named ("index", "queries", "retrain", …); a
/// stage is started, updated any number of times, then finished.
pub trait Reporter: Sync {
    /// A stage begins; `total` is its number of units (0 while unknown).
    fn start(&self, stage: &str, total: usize);
    /// `done` of `total` units; `rate` is a short throughput note such as "812 tok/s".
    fn update(&self, stage: &str, done: usize, total: usize, note: &str);
    /// The stage ended (successfully or not).
    fn finish(&self, stage: &str);
    /// A line worth showing the user (a loaded model, a skipped step, a convergence report).
    fn note(&self, line: &str);
    /// Whether the caller wants the work stopped (e.g. Ctrl-C seen by a Python caller).
    /// [`watch`] asks at every tick and forwards a yes to [`Progress::stop`], which the
    /// feature loops check between micro-batches; a stopped `index` keeps its whole shards,
    /// so a rerun resumes.
    fn stop_requested(&self) -> bool {
        false
    }
}

/// Reports nothing.
pub struct Silent;

impl Reporter for Silent {
    fn start(&self, _: &str, _: usize) {}
    fn update(&self, _: &str, _: usize, _: usize, _: &str) {}
    fn finish(&self, _: &str) {}
    fn note(&self, _: &str) {}
}

/// Runs `work` while reporting the counters of `progress` as stage `stage` every 200 ms.
/// The library's long loops count into a [`Progress`]; this turns those counts into calls
/// of the reporter from one watching thread, so the loops never wait on a display.
pub fn watch<T: Send>(
    reporter: &dyn Reporter,
    stage: &str,
    progress: &Progress,
    work: impl FnOnce() -> T + Send,
) -> T {
    reporter.start(stage, progress.total.load(Ordering::Relaxed));
    let start = Instant::now();
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        let h = s.spawn(|| {
            let r = work();
            done.store(true, Ordering::Relaxed);
            r
        });
        let tick = |reporter: &dyn Reporter| {
            let n = progress.samples.load(Ordering::Relaxed);
            let total = progress.total.load(Ordering::Relaxed);
            let tok = progress.tokens.load(Ordering::Relaxed);
            let rate = tok as f64 / start.elapsed().as_secs_f64().max(1e-9);
            reporter.update(stage, n, total, &format!("{rate:.0} tok/s"));
        };
        while !done.load(Ordering::Relaxed) {
            tick(reporter);
            if reporter.stop_requested() {
                progress.stop.store(true, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        tick(reporter);
        h.join()
            .unwrap_or_else(|_| std::panic::resume_unwind(Box::new("worker panicked")))
    });
    reporter.finish(stage);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks to stop from the first tick.
    struct StopAtOnce;

    impl Reporter for StopAtOnce {
        fn start(&self, _: &str, _: usize) {}
        fn update(&self, _: &str, _: usize, _: usize, _: &str) {}
        fn finish(&self, _: &str) {}
        fn note(&self, _: &str) {}
        fn stop_requested(&self) -> bool {
            true
        }
    }

    #[test]
    fn a_stop_request_reaches_the_loops_progress() {
        let progress = Progress::default();
        let seen = watch(&StopAtOnce, "work", &progress, || {
            let t = Instant::now();
            while !progress.stop.load(Ordering::Relaxed) && t.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
            progress.stop.load(Ordering::Relaxed)
        });
        assert!(seen);
        assert!(!Progress::default().stop.load(Ordering::Relaxed));
    }
}
