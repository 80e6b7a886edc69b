//! `inflow serve`: arguments and the start-up lines; the server is the `inflow-serve` crate.

use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

/// Flags of `inflow serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// The store to explore (made by `index`, `encode` or `store compress`).
    #[arg(long)]
    store: PathBuf,
    /// Score files of this store: top-k lists of `score` (compared side by side) and
    /// per-sample files (`score --aggregate`, LESS, ICP).
    #[arg(long, num_args = 1..)]
    scores: Vec<PathBuf>,
    /// The query file the score files were made from: the queries' text and task in the pages.
    #[arg(long)]
    queries: Option<PathBuf>,
    /// The store's base model: turns on live queries (featurized at the store's weights).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Address to listen on. Anything but loopback makes the page reachable from other
    /// machines, with no authentication: a warning is printed.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: a free one, printed).
    #[arg(long, default_value_t = 8765)]
    port: u16,
}

/// Serves until Ctrl-C.
pub fn run(a: ServeArgs, threads: usize) -> Result<()> {
    let o = inflow_serve::ServeOptions {
        store: a.store,
        scores: a.scores,
        queries: a.queries,
        model: a.model,
        host: a.host,
        port: a.port,
        threads,
    };
    let store = o.store.display().to_string();
    inflow_serve::serve(&o, |l| {
        let url = match l.addr {
            std::net::SocketAddr::V6(a) => format!("http://[{}]:{}", a.ip(), a.port()),
            std::net::SocketAddr::V4(a) => format!("http://{a}"),
        };
        if l.loopback {
            println!("serving {store} on {url} (loopback only)");
        } else {
            println!("serving {store} on {url}");
            eprintln!(
                "warning: --host {} is not a loopback address: anyone who can reach this machine can read the store's samples and scores (no authentication)",
                l.addr.ip()
            );
        }
        println!(
            "{} training samples, {} queries, methods: {}; live queries: {}",
            l.n_samples,
            l.n_queries,
            if l.methods.is_empty() {
                "none (give --scores)".to_string()
            } else {
                l.methods.join(", ")
            },
            if l.live_methods.is_empty() {
                "off (give --model)".to_string()
            } else {
                l.live_methods.join(", ")
            }
        );
        // Tests and scripts read the address from this line as soon as it is printed.
        use std::io::Write;
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
