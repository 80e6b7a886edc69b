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
        use std::io::Write;
        let reach = if l.loopback { " (loopback only)" } else { "" };
        let list = |v: &[String], none: &str| {
            if v.is_empty() {
                none.to_string()
            } else {
                v.join(", ")
            }
        };
        // Written once, errors ignored: a reader that closed the pipe after the address line
        // (a script, a test) must not stop the server.
        let _ = write!(
            std::io::stdout(),
            "serving {store} on {url}{reach}\n{} training samples, {} queries, methods: {}; live queries: {}\n",
            l.n_samples,
            l.n_queries,
            list(&l.methods, "none (give --scores)"),
            list(&l.live_methods, "off (give --model)")
        );
        let _ = std::io::stdout().flush();
        if !l.loopback {
            let _ = writeln!(
                std::io::stderr(),
                "warning: --host {} is not a loopback address: anyone who can reach this machine can read the store's samples and scores (no authentication)",
                l.addr.ip()
            );
        }
    })?;
    Ok(())
}
