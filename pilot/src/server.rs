//! Pilot's runtime: the galley subscription, per-proxy snapshots behind the ADS server, and
//! the debug endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use hyper_util::rt::TokioIo;
use keel_config::kind::KINDS;
use keel_config::store::{ParsedDocuments, Snapshot};
use keel_xds::XdsSnapshot;
use keel_xds::client::{self, ClientConfig, ClientState};
use keel_xds::server::{AdsServer, SnapshotSource};
use keel_xds::status::SyncRegistry;
use serde_json::json;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::registry::ServiceRegistry;
use crate::snapshot::{Mesh, proxy_snapshot};

pub const DEFAULT_GALLEY: &str = "http://127.0.0.1:9901";
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:15010";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "keel-pilot",
    version,
    about = "Keel's pilot: Envoy xDS from Istio configuration"
)]
pub struct Args {
    /// Galley's ADS address, where configuration comes from.
    #[arg(long, default_value = DEFAULT_GALLEY)]
    pub galley: String,
    /// Where proxies connect for ADS.
    #[arg(long, default_value = DEFAULT_GRPC_ADDR)]
    pub grpc_addr: SocketAddr,
    /// Debug endpoints and readiness.
    #[arg(long, default_value = DEFAULT_HTTP_ADDR)]
    pub http_addr: SocketAddr,
    /// How long to wait after a change for more changes before pushing, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// Mixer's report service, `HOST:PORT` (e.g. 127.0.0.1:9091): proxies send it their
    /// access logs for telemetry. Unset: no reports.
    #[arg(long, value_parser = parse_host_port)]
    pub mixer_telemetry: Option<(String, u16)>,
    /// Mixer's check service, `HOST:PORT`: sidecars check every inbound request there
    /// (Envoy's ext_authz; denied requests get mixer's answer, 503 when it cannot be asked).
    /// Unset: no policy checks (Istio's `disablePolicyChecks: true`).
    #[arg(long, value_parser = parse_host_port)]
    pub mixer_policy: Option<(String, u16)>,
}

/// `HOST:PORT`, with a reason when it is not.
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("\"{port}\" in \"{s}\" is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        return Err(format!("\"{s}\" needs a host and a non-zero port"));
    }
    Ok((host.to_owned(), port))
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Galley's resources as a configuration snapshot, parsing only the documents that changed
/// since the last call with `parsed` (a subscriber keeps one `parsed` for its life).
pub fn config_from_galley_reusing(state: &ClientState, parsed: &mut ParsedDocuments) -> Snapshot {
    Snapshot::from_json_documents_reusing(state.snapshot_version(), state.payloads(), parsed)
}

/// Computes each connected proxy's snapshot from the mesh, debounced.
#[derive(Debug, Clone)]
pub struct ProxySnapshots {
    mesh: watch::Receiver<Arc<Mesh>>,
    debounce: Duration,
    metrics: Arc<Metrics>,
}

impl SnapshotSource for ProxySnapshots {
    fn snapshots(&self, node: &Node) -> watch::Receiver<Arc<XdsSnapshot>> {
        let proxy = match Proxy::parse(&node.id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "proxy with an unusable node id gets no configuration");
                return watch::channel(Arc::new(XdsSnapshot::default())).1;
            }
        };
        let mut mesh = self.mesh.clone();
        let metrics = self.metrics.clone();
        let started = std::time::Instant::now();
        let first = proxy_snapshot(&mesh.borrow_and_update(), &proxy);
        metrics.push_time.observe(started.elapsed().as_secs_f64());
        let (tx, rx) = watch::channel(Arc::new(first));
        let debounce = self.debounce;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    changed = mesh.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
                let changed_at = std::time::Instant::now();
                // Let a burst of changes settle into one push.
                tokio::time::sleep(debounce).await;
                let current = mesh.borrow_and_update().clone();
                let started = std::time::Instant::now();
                let snap = proxy_snapshot(&current, &proxy);
                metrics.push_time.observe(started.elapsed().as_secs_f64());
                metrics
                    .convergence
                    .observe(changed_at.elapsed().as_secs_f64());
                tx.send_if_modified(|old| {
                    // Versions are hashes of the resources: equal versions, equal content.
                    if old.same_versions(&snap) {
                        false
                    } else {
                        *old = Arc::new(snap);
                        true
                    }
                });
            }
        });
        rx
    }
}

/// A running pilot.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub syncs: Arc<SyncRegistry>,
    pub mesh: watch::Receiver<Arc<Mesh>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// The kinds pilot subscribes to.
pub fn subscribed_types() -> Vec<String> {
    use keel_config::Kind;
    KINDS
        .iter()
        .map(|k| k.kind)
        .filter(|k| {
            matches!(
                k,
                Kind::VirtualService
                    | Kind::DestinationRule
                    | Kind::Gateway
                    | Kind::ServiceEntry
                    | Kind::WorkloadEntry
                    | Kind::Service
                    | Kind::Pod
                    | Kind::ConfigMap
            )
        })
        .map(Kind::type_url)
        .collect()
}

pub async fn start(args: &Args) -> Result<Running, StartError> {
    let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.grpc_addr,
            what: "ADS",
            source,
        })?;
    let http = tokio::net::TcpListener::bind(args.http_addr)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.http_addr,
            what: "debug HTTP",
            source,
        })?;
    let grpc_addr = grpc.local_addr().unwrap_or(args.grpc_addr);
    let http_addr = http.local_addr().unwrap_or(args.http_addr);

    let mut config = ClientConfig::new(
        args.galley.clone(),
        "pilot~0.0.0.0~keel-pilot.istio-system~istio-system.svc.cluster.local",
        subscribed_types(),
    );
    config.consistent = true;
    let (mut galley, galley_task) = client::spawn(config, client::AcceptAll);
    let telemetry = args.mixer_telemetry.clone();
    let policy = args.mixer_policy.clone();
    let (mesh_tx, mesh_rx) = watch::channel(Arc::new(Mesh::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let follow = tokio::spawn(async move {
        let mut parsed = ParsedDocuments::default();
        loop {
            let state = galley.borrow_and_update().clone();
            if state.synced {
                let config = config_from_galley_reusing(&state, &mut parsed);
                tracing::info!(
                    version = config.version,
                    resources = config.resources.len(),
                    "configuration from galley"
                );
                let previous = mesh_tx.borrow().clone();
                let (mesh, problem) = Mesh::new(config)
                    .reusing(&previous)
                    .with_telemetry(telemetry.clone())
                    .with_policy(policy.clone())
                    .with_mesh_config();
                if let Some(p) = problem {
                    tracing::warn!(problem = %p, "mesh config ignored");
                }
                mesh_tx.send_replace(Arc::new(mesh));
                ready_tx.send_replace(true);
            }
            if galley.changed().await.is_err() {
                return;
            }
        }
    });

    let metrics = Arc::new(Metrics::new());
    let source = ProxySnapshots {
        mesh: mesh_rx.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
        metrics: metrics.clone(),
    };
    let ads = AdsServer::new(source)
        .with_observer(Arc::new(crate::metrics::MetricsObserver(metrics.clone())));
    let syncs = ads.registry();
    let serve = tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(ads.into_service())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await
        {
            tracing::error!(error = %e, "ADS server stopped");
        }
    });
    let debug = tokio::spawn(debug_server(
        http,
        syncs.clone(),
        mesh_rx.clone(),
        ready_rx,
        metrics,
    ));
    tracing::info!(%grpc_addr, %http_addr, galley = %args.galley, "pilot started");
    Ok(Running {
        grpc_addr,
        http_addr,
        syncs,
        mesh: mesh_rx,
        tasks: vec![galley_task, follow, serve, debug],
    })
}

async fn debug_server(
    listener: tokio::net::TcpListener,
    syncs: Arc<SyncRegistry>,
    mesh: watch::Receiver<Arc<Mesh>>,
    ready: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    serve_http(listener, move |path| {
        if path == "/metrics" {
            (200, metrics.encode())
        } else {
            debug_response(path, &syncs, &mesh.borrow(), *ready.borrow())
        }
    })
    .await
}

/// A small HTTP/1 server for debug and metrics endpoints: `route` maps a path to a status
/// and a body. Shared by pilot and mixer.
pub async fn serve_http<F>(listener: tokio::net::TcpListener, route: F)
where
    F: Fn(&str) -> (u16, String) + Send + Sync + 'static,
{
    let route = Arc::new(route);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let route = route.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, body) = route(req.uri().path());
                    let mut r =
                        hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() =
                        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn debug_response(path: &str, syncs: &SyncRegistry, mesh: &Mesh, ready: bool) -> (u16, String) {
    match path {
        "/ready" => {
            if ready {
                (200, "ok\n".into())
            } else {
                (503, "waiting for galley\n".into())
            }
        }
        "/debug/syncz" => {
            let proxies: Vec<_> = syncs
                .streams()
                .iter()
                .map(|s| {
                    let types: serde_json::Map<String, serde_json::Value> = s
                        .types
                        .iter()
                        .map(|(t, st)| {
                            (
                                t.clone(),
                                json!({
                                    "sent": st.sent_version,
                                    "acked": st.acked_version,
                                    "nacked": st.nacked.as_ref().map(|(v, r)| json!({"version": v, "reason": r})),
                                }),
                            )
                        })
                        .collect();
                    json!({ "proxy": s.node_id, "types": types })
                })
                .collect();
            (
                200,
                serde_json::to_string_pretty(&proxies).unwrap_or_default(),
            )
        }
        "/debug/registryz" => {
            let services: Vec<_> = mesh
                .registry
                .services()
                .map(|s| {
                    json!({
                        "hostname": s.hostname,
                        "address": s.address.map(|a| a.to_string()),
                        "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": p.protocol})).collect::<Vec<_>>(),
                        "endpoints": s.ports.iter().map(|p| json!({
                            "port": p.port,
                            "endpoints": mesh.registry.endpoints(&s.hostname, p.port).iter().map(|e| format!("{}:{}", e.address, e.port)).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            (
                200,
                serde_json::to_string_pretty(&services).unwrap_or_default(),
            )
        }
        "/debug/adsz" => {
            let proxies: Vec<_> = syncs
                .streams()
                .iter()
                .map(|s| {
                    json!({
                        "proxy": s.node_id,
                        "stream": s.id,
                        "connectedSeconds": s.connected_at.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                        "pushes": s.types.values().map(|t| t.pushes).sum::<u64>(),
                    })
                })
                .collect();
            (
                200,
                serde_json::to_string_pretty(
                    &json!({ "totalClients": proxies.len(), "clients": proxies }),
                )
                .unwrap_or_default(),
            )
        }
        "/debug/configz" => {
            let keys: Vec<String> = mesh
                .config
                .resources
                .keys()
                .map(ToString::to_string)
                .collect();
            (
                200,
                serde_json::to_string_pretty(
                    &json!({"version": mesh.config.version, "resources": keys}),
                )
                .unwrap_or_default(),
            )
        }
        _ => (404, "not found\n".into()),
    }
}

/// Runs pilot until SIGTERM or Ctrl-C.
pub async fn run(args: Args) -> Result<(), StartError> {
    let running = start(&args).await?;
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown();
    Ok(())
}
