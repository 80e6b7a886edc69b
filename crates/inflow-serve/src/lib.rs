//! `inflow serve`: a local web page to explore a store's attributions — the store's overview,
//! each query's top training samples under every loaded method side by side with their
//! agreement, each training sample's reverse lookup (which queries it ranks for), live queries
//! scored with the store's own settings, and selections downloaded in the input's format.
//!
//! Layering: this crate sits above the `inflow` library (it reads stores and score files and
//! calls the registry's methods); the library never imports it. The server reads only what it
//! loaded at start (the store, the given score files and query file), never a path taken from
//! a request, and writes nothing into the store.

pub mod agreement;
pub mod assets;
pub mod catalog;
pub mod histogram;
pub mod live;
pub mod routes;
pub mod scoreset;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong when serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Refused at start: a store, score file, query file, model or address that does not fit.
    #[error("{0}")]
    Start(String),
    /// A request that cannot be answered as asked (HTTP 400).
    #[error("{0}")]
    Request(String),
    /// The live queue is full (HTTP 503).
    #[error("{0}")]
    Busy(String),
    #[error("{}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Inflow(#[from] inflow::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to serve and where.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub store: PathBuf,
    /// Score files of this store (`score` top-k lists, per-sample files).
    pub scores: Vec<PathBuf>,
    /// The query file the score files were made from (their text and task in the pages).
    pub queries: Option<PathBuf>,
    /// A model enables live queries (the store's base model; its adapter comes from run.json).
    pub model: Option<PathBuf>,
    /// Address to bind: 127.0.0.1 unless given.
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    pub threads: usize,
}

/// Everything the handlers share.
pub struct App {
    pub catalog: catalog::Catalog,
    pub live: Option<live::LiveQueue>,
    /// Scratch folder outside the store (live query files, selection files), removed at exit.
    pub scratch: Scratch,
    /// The overview's JSON, built on first request (everything it shows is fixed at start).
    pub overview: std::sync::OnceLock<serde_json::Value>,
}

/// A temporary folder removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let p = std::env::temp_dir().join(format!("inflow-serve-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|e| Error::Io(p.clone(), e))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where the server listens, told to the caller before it serves.
pub struct Listening {
    pub addr: SocketAddr,
    /// Whether the address is a loopback one (reachable from this machine only).
    pub loopback: bool,
    pub n_samples: usize,
    pub n_queries: usize,
    pub methods: Vec<String>,
    pub live_methods: Vec<String>,
}

/// Binds `host:port`, with the error naming the address (a port in use says so).
fn bind(host: &str, port: u16) -> Result<TcpListener> {
    let ip: IpAddr = host.parse().map_err(|_| {
        Error::Start(format!(
            "--host {host}: not an IP address (use 127.0.0.1, ::1 or 0.0.0.0)"
        ))
    })?;
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr).map_err(|e| {
        Error::Start(match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("--port {port}: {addr} is already in use (another server?); pick another --port, or 0 for a free one")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!("--port {port}: not allowed to listen on {addr} (ports below 1024 need root)")
            }
            _ => format!("cannot listen on {addr}: {}", e.kind()),
        })
    })
}

/// Loads everything, binds, tells `ready` where it listens, then serves until Ctrl-C.
pub fn serve(o: &ServeOptions, ready: impl FnOnce(&Listening)) -> Result<()> {
    let catalog = catalog::Catalog::load(&o.store, &o.scores, o.queries.as_deref())?;
    let scratch = Scratch::new()?;
    let live = match &o.model {
        Some(m) => {
            let mut q = live::LiveQueue::start(&o.store, m, o.threads, scratch.0.clone())?;
            q.methods = live::usable_methods(&o.store);
            Some(q)
        }
        None => None,
    };
    let listener = bind(&o.host, o.port)?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Start(format!("listening address: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Start(format!("listening socket: {e}")))?;
    ready(&Listening {
        addr,
        loopback: addr.ip().is_loopback(),
        n_samples: catalog.samples.len(),
        n_queries: catalog.queries.len(),
        methods: catalog.methods.iter().map(|m| m.name.clone()).collect(),
        live_methods: live.as_ref().map(|l| l.methods.clone()).unwrap_or_default(),
    });
    let app = Arc::new(App {
        catalog,
        live,
        scratch,
        overview: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads.clamp(2, 8))
        .enable_all()
        .build()
        .map_err(|e| Error::Start(format!("starting the server runtime: {e}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::Start(format!("listening socket: {e}")))?;
        axum::serve(listener, routes::router(app))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .map_err(|e| Error::Start(format!("server stopped: {e}")))
    })
}
