//! keel-proxy: the sidecar and gateway written in Rust, fed by the same xDS pilot sends to
//! Envoy.
//!
//! - [`model`]: xDS resources -> immutable config values (pure; refusals become NACKs).
//! - [`xds`]: the ADS subscription; each accepted state becomes one [`model::Config`],
//!   published whole on a watch channel.
//! - [`listen`]: binds the bound listeners, hands captured connections to the listener of
//!   their original destination, proxies TCP.
//! - [`http`]: the HTTP connection manager: virtual hosts, routes, faults, retries,
//!   timeouts, load balancing, upstream pools.
//! - [`als`]: access logs to the gRPC access log service (mixer).
//! - [`authz`]: the ext_authz filter (mixer's policy checks).
//! - [`capture`]: `keel-proxy init`, the pod's iptables capture.
//! - [`admin`]: `/ready`, `/config_dump`, `/stats/prometheus`, `/clusters`.

pub mod admin;
pub mod als;
pub mod authz;
pub mod body;
pub mod bootstrap;
pub mod breaker;
pub mod capture;
pub mod connect;
pub mod dns;
pub mod fuzzing;
pub mod h1;
pub mod http;
pub mod inspect;
pub mod listen;
pub mod model;
pub mod outlier;
pub mod ring;
pub mod stats;
pub mod tls;
pub mod xds;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

/// keel-proxy's command line.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "keel-proxy", about = "Keel's sidecar and gateway")]
pub struct Args {
    /// The Envoy-style bootstrap (JSON) to start from.
    #[arg(long, short = 'c')]
    pub bootstrap: PathBuf,
    /// Worker threads (Envoy's --concurrency).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// On SIGTERM, how long requests in flight may take to finish (seconds).
    #[arg(long, default_value_t = 5)]
    pub drain_time_s: u64,
    /// The readiness port (`/healthz/ready`, 200 once the first configuration is applied);
    /// 0 turns it off.
    #[arg(long, default_value_t = 15021)]
    pub readiness_port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What every part of the running proxy shares.
#[derive(Debug)]
pub struct Shared {
    pub bootstrap: bootstrap::Bootstrap,
    pub config: watch::Receiver<Arc<model::Config>>,
    /// The raw accepted xDS state, for `/config_dump`.
    pub xds: watch::Receiver<Arc<keel_xds::client::ClientState>>,
    pub upstreams: http::Upstreams,
    pub acceptors: tls::Acceptors,
    pub stats: stats::Stats,
    pub access_logs: als::AccessLogs,
    /// Channels to authorization services (ext_authz).
    pub authz: authz::Authz,
    /// Set on SIGTERM: listeners close, requests in flight finish.
    pub draining: watch::Receiver<bool>,
    /// Requests being handled now.
    pub active: std::sync::atomic::AtomicUsize,
}

/// Runs the proxy until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), ProxyError> {
    let boot = bootstrap::Bootstrap::load(&args.bootstrap)?;
    let (xds_state, config) = xds::subscribe(&boot);
    let (drain_tx, draining) = watch::channel(false);
    let shared = Arc::new(Shared {
        draining,
        active: std::sync::atomic::AtomicUsize::new(0),
        access_logs: als::AccessLogs::new(boot.node_id.clone(), config.clone()),
        authz: authz::Authz::default(),
        bootstrap: boot,
        config,
        xds: xds_state,
        upstreams: http::Upstreams::default(),
        acceptors: tls::Acceptors::default(),
        stats: stats::Stats::default(),
    });
    let readiness = (args.readiness_port != 0)
        .then(|| std::net::SocketAddr::from(([0, 0, 0, 0], args.readiness_port)));
    let admin = admin::start(shared.clone(), readiness).await?;
    let listeners = tokio::spawn(listen::manage(shared.clone()));
    let dns = tokio::spawn(dns::run(shared.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ProxyError::Bind {
            addr: shared.bootstrap.admin,
            what: "SIGTERM handler",
            source,
        })?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Drain: stop accepting, let requests in flight finish (up to the drain time).
    tracing::info!("draining");
    drain_tx.send_replace(true);
    listeners.abort();
    dns.abort();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(args.drain_time_s);
    while shared.active.load(std::sync::atomic::Ordering::SeqCst) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The last responses' bodies are being written.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for a in admin {
        a.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// A cheap random number (fault percentages, weights, request ids): std's per-instance
/// random hash keys, no dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish()
}
