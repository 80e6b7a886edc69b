//! Threads, as the CLI sets them: the model passes split the samples over `threads` workers,
//! each running candle single-threaded (candle reads RAYON_NUM_THREADS at each matrix product,
//! and its own pool spins at barriers on shared cores, STACK.md); rayon's global pool (score
//! blocks, curvature) is built once per process, by the first call, with that call's count.

use std::sync::OnceLock;

use pyo3::prelude::*;

static POOL: OnceLock<usize> = OnceLock::new();

/// The worker count of a call (`requested`, default all cores), building rayon's global pool
/// the first time.
pub fn workers(requested: Option<usize>) -> PyResult<usize> {
    let n = match requested {
        Some(0) => return Err(crate::error::argument("threads must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    POOL.get_or_init(|| {
        // Another extension may have built the global pool already; then it keeps its size.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
        std::env::set_var("RAYON_NUM_THREADS", "1");
        rayon::current_num_threads()
    });
    Ok(n)
}

/// The size of rayon's global pool (score blocks, curvature) in this process: the threads of
/// the first inflow call; None before any call.
#[pyfunction]
pub fn pool_threads() -> Option<usize> {
    POOL.get().copied()
}
