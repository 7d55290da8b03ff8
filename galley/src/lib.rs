//! keel-galley: the one door for configuration.
//!
//! Configuration enters only here: through the HTTP API keelctl speaks (validated, all or
//! nothing, with resourceVersion conflicts), or as files put into the configuration
//! directory by hand (validated; an invalid file is reported and its last good version stays
//! in force). The directory is the source of truth and survives restarts; writes are atomic
//! even across a crash. Pilot and mixer subscribe over ADS ([`distribute`]) and receive whole
//! snapshots.
//!
//! Layers: [`core`] (apply/delete/get/list, no I/O but the store) -> [`http`] and
//! [`distribute`] (wire) -> [`run`] (sockets, tasks).

pub mod client;
pub mod core;
pub mod distribute;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use keel_config::store::{ConfigStore, DirectoryStore};
use keel_xds::server::AdsServer;

use crate::http::HttpState;
use crate::metrics::Metrics;

/// Galley's default ports: ADS (gRPC) and HTTP (API, readiness, metrics).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:9901";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:9093";

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "keel-galley",
    version,
    about = "Keel's configuration door: validates, stores and serves Istio configuration"
)]
pub struct Args {
    /// The configuration directory (created if missing). It is the source of truth.
    #[arg(long, env = "KEEL_GALLEY_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Where subscribers (pilot, mixer) connect for ADS.
    #[arg(long, default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,
    /// The HTTP API (keelctl), /ready and /metrics.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// Namespace for documents that name none.
    #[arg(long, default_value = "default")]
    pub default_namespace: String,
    /// How often the directory is rescanned for hand edits, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub rescan_ms: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
}

/// Why galley could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration directory {path}: {source}")]
    ConfigDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running galley: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub state: Arc<HttpState>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Opens the store, binds both listeners and starts serving; returns once ready.
pub async fn start(args: &Args) -> Result<Running, StartError> {
    let dir_err = |source| StartError::ConfigDir {
        path: args.config_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&args.config_dir).map_err(dir_err)?;
    let store =
        Arc::new(DirectoryStore::open(&args.config_dir, &args.default_namespace).map_err(dir_err)?);
    let metrics = Arc::new(Metrics::new());
    let snap = store.snapshot();
    tracing::info!(dir = %args.config_dir.display(), resources = snap.resources.len(), version = snap.version, "configuration loaded");
    for f in store.file_states().iter().filter(|f| !f.errors.is_empty()) {
        for e in &f.errors {
            tracing::warn!(error = %e, "invalid configuration file ignored");
        }
    }

    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.grpc_addr,
            what: "ADS",
            source,
        })?;
    let http_listener = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.http_addr,
            what: "HTTP API",
            source,
        })?;
    let grpc_addr = grpc.local_addr().unwrap_or(args.grpc_addr);
    let http_addr = http_listener.local_addr().unwrap_or(args.http_addr);

    let mut tasks = Vec::new();
    tasks.push(
        store
            .clone()
            .watch(Duration::from_millis(args.rescan_ms.max(10))),
    );
    let (xds_rx, follow) = distribute::follow(store.subscribe(), metrics.clone());
    tasks.push(follow);
    let ads = AdsServer::new(xds_rx)
        .with_observer(Arc::new(distribute::MetricsObserver(metrics.clone())));
    let syncs = ads.registry();
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream_listener(grpc);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "ADS server stopped");
        }
    }));

    let state = Arc::new(HttpState {
        galley: core::Galley::new(store, metrics),
        ready: AtomicBool::new(false),
        syncs,
    });
    let http_state = state.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            let (stream, peer) = match http_listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let st = http_state.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| http::handle(st.clone(), req));
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
            });
        }
    }));
    state.ready.store(true, Ordering::Release);
    tracing::info!(%grpc_addr, %http_addr, "galley ready");
    Ok(Running {
        grpc_addr,
        http_addr,
        state,
        tasks,
    })
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream_compat::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream_compat::TcpListenerStream::new(listener)
}

mod tokio_stream_compat {
    pub use tokio_stream::Stream;
    pub use tokio_stream::wrappers::TcpListenerStream;
}

/// Runs galley until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<(), StartError> {
    let running = start(&args).await?;
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Sets up logging: `text` for people, `json` for machines; level from `RUST_LOG`.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
