//! Mixer's runtime: the galley subscription (Mixer config plus the registry kinds), report
//! intake over gRPC ALS, one dispatch task, adapter outputs, and the HTTP endpoints.
//!
//! Proxies are never blocked: intake turns entries into bags and `try_send`s them to a
//! bounded queue (a full queue drops and counts). The dispatcher runs the plan; the
//! prometheus adapter records in memory, stdio lines go to their own bounded writer, so a
//! stalled output cannot stall the metrics.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use keel_attributes::Manifest;
use keel_config::kind::KINDS;
use keel_config::mixer::{Adapter, LogStream};
use keel_config::{Kind, Spec};
use keel_pilot::registry::Registry;
use keel_pilot::server::serve_http;
use keel_xds::client::{self, ClientConfig};
use tokio::sync::{mpsc, watch};

use crate::adapter::{fluentd, prometheus::Exporter, stdio};
use crate::check;
use crate::metrics::{CheckLabels, HandlerLabels, Metrics, ProtocolLabels};
use crate::names::Resolver;
use crate::plan::Plan;
use crate::policy::{self, MemQuota, Verdict};
use crate::report::{Attributes, Reporter, http_attributes, tcp_attributes};

pub const DEFAULT_GALLEY: &str = "http://127.0.0.1:9901";

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "keel-mixer",
    version,
    about = "Keel's mixer: telemetry from the proxies' access logs, through Istio's rules and adapters"
)]
pub struct Args {
    /// Galley's ADS address, where configuration comes from.
    #[arg(long, default_value = DEFAULT_GALLEY)]
    pub galley: String,
    /// Where proxies send access logs (gRPC ALS).
    #[arg(long, default_value = "127.0.0.1:9091")]
    pub grpc_addr: SocketAddr,
    /// The prometheus adapter's /metrics.
    #[arg(long, default_value = "127.0.0.1:42422")]
    pub prometheus_addr: SocketAddr,
    /// Mixer's own /metrics, /ready and /debug/configz.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring_addr: SocketAddr,
    /// Rules in this namespace apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub config_namespace: String,
    /// Reports waiting for dispatch before new ones are dropped.
    #[arg(long, default_value_t = 10_000)]
    pub queue: usize,
    #[arg(long, default_value = "text")]
    pub log_format: String,
    /// A hosts file (`/etc/hosts` format) consulted first when adapters resolve backend names
    /// such as `fluentd-es.logging`; re-read on each lookup. The local mesh passes its view of
    /// the cluster's service names.
    #[arg(long)]
    pub hosts_file: Option<std::path::PathBuf>,
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

/// The kinds mixer subscribes to: its own config and what the registry is built from.
pub fn subscribed_types() -> Vec<String> {
    KINDS
        .iter()
        .filter(|k| {
            k.group == "config.istio.io"
                || matches!(
                    k.kind,
                    Kind::Service | Kind::Pod | Kind::ServiceEntry | Kind::WorkloadEntry
                )
        })
        .map(|k| k.kind.type_url())
        .collect()
}

/// What the tasks share.
#[derive(Debug)]
pub struct Shared {
    plan: RwLock<Arc<Plan>>,
    registry: RwLock<Arc<Registry>>,
    exporter: Mutex<Exporter>,
    /// Running fluentd handlers by full name.
    fluentd: Mutex<std::collections::HashMap<String, fluentd::Sink>>,
    /// How adapters find their backends.
    names: Resolver,
    /// QuotaSpecs and QuotaSpecBindings: which quotas a checked request asks for.
    quota_config: RwLock<Arc<Vec<Arc<keel_config::Resource>>>>,
    memquota: MemQuota,
    pub metrics: Metrics,
}

impl Shared {
    fn plan(&self) -> Arc<Plan> {
        self.plan.read().map(|p| p.clone()).unwrap_or_default()
    }

    fn registry(&self) -> Arc<Registry> {
        self.registry.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// The prometheus adapter's exposition.
    pub fn render_prometheus(&self) -> String {
        self.exporter.lock().map(|e| e.render()).unwrap_or_default()
    }

    /// Installs a new configuration: plan, registry, and the exporter's metric set.
    pub fn install(&self, config: &keel_config::store::Snapshot, config_namespace: &str) {
        let plan = Plan::build(
            config.resources.values().map(Arc::as_ref),
            config_namespace,
            &Manifest::istio(),
        );
        let mut problems = plan.problems.clone();
        if let Ok(mut e) = self.exporter.lock() {
            problems.extend(e.configure(&plan.handlers));
        }
        if let Ok(mut sinks) = self.fluentd.lock() {
            let mut keep = std::collections::HashMap::new();
            for h in &plan.handlers {
                if let Adapter::Fluentd(params) = &h.adapter {
                    let sink = match sinks.remove(&*h.name) {
                        Some(s) if s.params == *params => s,
                        _ => fluentd::Sink::start(params.clone(), self.names.clone()),
                    };
                    keep.insert(h.name.to_string(), sink);
                }
            }
            // Sinks of removed or changed handlers stop here (their tasks are aborted).
            *sinks = keep;
        }
        problems.extend(policy::problems(&plan));
        for h in &plan.handlers {
            if !matches!(
                h.adapter,
                Adapter::Prometheus(_)
                    | Adapter::Stdio(_)
                    | Adapter::Fluentd(_)
                    | Adapter::Denier(_)
                    | Adapter::ListChecker(_)
                    | Adapter::MemQuota(_)
            ) {
                problems.push(crate::plan::Problem {
                    resource: h.name.to_string(),
                    message: format!(
                        "the {} adapter does not run in this mixer yet; its instances are dropped",
                        h.adapter.name()
                    ),
                });
            }
        }
        for p in &problems {
            tracing::warn!(problem = %p, "configuration problem");
        }
        self.metrics
            .config_problems
            .set(i64::try_from(problems.len()).unwrap_or(i64::MAX));
        self.metrics
            .rules
            .set(i64::try_from(plan.rule_count()).unwrap_or(i64::MAX));
        tracing::info!(
            version = config.version,
            rules = plan.rule_count(),
            handlers = plan.handlers.len(),
            problems = problems.len(),
            "configuration installed"
        );
        if let Ok(mut p) = self.plan.write() {
            *p = Arc::new(plan);
        }
        if let Ok(mut r) = self.registry.write() {
            *r = Arc::new(Registry::from_config(config));
        }
        let quota_config: Vec<Arc<keel_config::Resource>> = config
            .resources
            .values()
            .filter(|r| matches!(r.spec, Spec::QuotaSpec(_) | Spec::QuotaSpecBinding(_)))
            .cloned()
            .collect();
        if let Ok(mut q) = self.quota_config.write() {
            *q = Arc::new(quota_config);
        }
    }

    /// Answers one check: the request's attributes through the rules, checks, then quotas.
    pub fn check(&self, req: &CheckRequest) -> (Verdict, Attributes) {
        let registry = self.registry();
        let bag = check::check_attributes(req, registry.as_ref());
        let plan = self.plan();
        let quota_config = self
            .quota_config
            .read()
            .map(|q| q.clone())
            .unwrap_or_default();
        let quotas = policy::requested_quotas(quota_config.iter().map(Arc::as_ref), &bag);
        let (verdict, outcome) = policy::check(
            &plan,
            &bag,
            &quotas,
            &self.memquota,
            std::time::Instant::now(),
        );
        for e in &outcome.errors {
            tracing::debug!(error = %e, "check instance not built");
        }
        self.metrics
            .checks
            .get_or_create(&CheckLabels {
                code: policy::code_name(verdict.code).to_owned(),
            })
            .inc();
        (verdict, bag)
    }

    /// Runs one bag through the plan and into the adapters.
    fn dispatch(&self, bag: &Attributes, lines: &mpsc::Sender<stdio::Line>) {
        let plan = self.plan();
        let outcome = plan.dispatch(bag);
        for e in &outcome.errors {
            tracing::debug!(error = %e, "instance not built");
        }
        self.metrics
            .instance_errors
            .inc_by(outcome.errors.len() as u64);
        for d in outcome.dispatches {
            let handler = &plan.handlers[d.handler];
            self.metrics
                .instances
                .get_or_create(&HandlerLabels {
                    handler: handler.name.to_string(),
                })
                .inc_by(d.instances.len() as u64);
            match &handler.adapter {
                Adapter::Prometheus(_) => {
                    if let Ok(mut e) = self.exporter.lock() {
                        for err in e.record(&handler.name, &d.instances) {
                            tracing::debug!(error = %err, "metric not recorded");
                        }
                    }
                }
                Adapter::Stdio(params) => {
                    for i in &d.instances {
                        if let Some(line) = stdio::format(params, i)
                            && lines.try_send(line).is_err()
                        {
                            self.metrics
                                .adapter_dropped
                                .get_or_create(&HandlerLabels {
                                    handler: handler.name.to_string(),
                                })
                                .inc();
                        }
                    }
                }
                Adapter::Fluentd(params) => {
                    let Ok(sinks) = self.fluentd.lock() else {
                        continue;
                    };
                    let Some(sink) = sinks.get(&*handler.name) else {
                        continue;
                    };
                    for i in &d.instances {
                        if let Some(e) = fluentd::entry(params, i)
                            && !sink.offer(e)
                        {
                            self.metrics
                                .adapter_dropped
                                .get_or_create(&HandlerLabels {
                                    handler: handler.name.to_string(),
                                })
                                .inc();
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Report intake: one task per proxy stream.
#[derive(Debug, Clone)]
struct Intake {
    shared: Arc<Shared>,
    queue: mpsc::Sender<Attributes>,
}

impl Intake {
    fn enqueue(&self, bag: Attributes, protocol: &str) {
        self.shared
            .metrics
            .reports
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_owned(),
            })
            .inc();
        if self.queue.try_send(bag).is_err() {
            self.shared.metrics.reports_dropped.inc();
        }
    }
}

/// The check service (Envoy's ext_authz): answers from the rules, never waits on reports.
#[derive(Debug)]
struct Checker {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Authorization for Checker {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = request.into_inner();
        let (verdict, bag) = self.shared.check(&req);
        if !verdict.is_ok() {
            tracing::debug!(
                code = policy::code_name(verdict.code),
                message = %verdict.message,
                source = ?bag.get("source.workload.name"),
                destination = ?bag.get("destination.workload.name"),
                "check denied"
            );
        }
        Ok(tonic::Response::new(check::response(&verdict)))
    }
}

#[tonic::async_trait]
impl AccessLogService for Intake {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let mut reporter: Option<Reporter> = None;
        self.shared.metrics.streams.inc();
        let _open = StreamGuard(&self.shared);
        while let Some(msg) = stream.message().await? {
            if let Some(id) = msg.identifier {
                let node = id.node.map(|n| n.id).unwrap_or_default();
                match Reporter::from_identifier(&node, &id.log_name) {
                    Ok(r) => reporter = Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "access log stream refused: bad identifier");
                        return Err(tonic::Status::invalid_argument(format!(
                            "access log stream identifier: {e}"
                        )));
                    }
                }
            }
            let Some(rep) = &reporter else {
                return Err(tonic::Status::invalid_argument(
                    "access log stream did not start with an identifier",
                ));
            };
            let registry = self.shared.registry();
            match msg.log_entries {
                Some(LogEntries::HttpLogs(logs)) => {
                    for e in &logs.log_entry {
                        self.enqueue(http_attributes(rep, e, registry.as_ref()), "http");
                    }
                }
                Some(LogEntries::TcpLogs(logs)) => {
                    for e in &logs.log_entry {
                        self.enqueue(tcp_attributes(rep, e, registry.as_ref()), "tcp");
                    }
                }
                None => {}
            }
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}

/// Decrements the open-stream gauge however the stream ends.
struct StreamGuard<'a>(&'a Shared);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.metrics.streams.dec();
    }
}

/// A running mixer.
#[derive(Debug)]
pub struct Running {
    pub grpc_addr: SocketAddr,
    pub prometheus_addr: SocketAddr,
    pub monitoring_addr: SocketAddr,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn shutdown(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, what, source })
}

pub async fn start(args: &Args) -> Result<Running, StartError> {
    let grpc = bind(args.grpc_addr, "report gRPC").await?;
    let prom = bind(args.prometheus_addr, "prometheus adapter").await?;
    let mon = bind(args.monitoring_addr, "monitoring").await?;
    let grpc_addr = grpc.local_addr().unwrap_or(args.grpc_addr);
    let prometheus_addr = prom.local_addr().unwrap_or(args.prometheus_addr);
    let monitoring_addr = mon.local_addr().unwrap_or(args.monitoring_addr);

    let shared = Arc::new(Shared {
        plan: RwLock::new(Arc::new(Plan::default())),
        registry: RwLock::new(Arc::new(Registry::default())),
        exporter: Mutex::new(Exporter::new()),
        fluentd: Mutex::new(std::collections::HashMap::new()),
        names: Resolver::new(args.hosts_file.clone()),
        quota_config: RwLock::default(),
        memquota: MemQuota::default(),
        metrics: Metrics::new(),
    });

    let mut config = ClientConfig::new(
        args.galley.clone(),
        "mixer~0.0.0.0~keel-mixer.istio-system~istio-system.svc.cluster.local",
        subscribed_types(),
    );
    config.consistent = true;
    let (mut galley, galley_task) = client::spawn(config, client::AcceptAll);
    let (ready_tx, ready_rx) = watch::channel(false);
    let follow = {
        let shared = shared.clone();
        let ns = args.config_namespace.clone();
        tokio::spawn(async move {
            // Documents parsed before are not parsed again: a change reads what changed.
            let mut parsed = keel_config::store::ParsedDocuments::default();
            loop {
                let state = galley.borrow_and_update().clone();
                if state.synced {
                    let config =
                        keel_pilot::server::config_from_galley_reusing(&state, &mut parsed);
                    shared.install(&config, &ns);
                    ready_tx.send_replace(true);
                }
                if galley.changed().await.is_err() {
                    return;
                }
            }
        })
    };

    let (queue_tx, mut queue_rx) = mpsc::channel::<Attributes>(args.queue.max(1));
    let (lines_tx, lines_rx) = mpsc::channel::<stdio::Line>(args.queue.max(1));
    let dispatcher = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(bag) = queue_rx.recv().await {
                shared.dispatch(&bag, &lines_tx);
            }
        })
    };
    let writer = tokio::task::spawn_blocking(move || write_lines(lines_rx));
    let writer = tokio::spawn(async move {
        let _ = writer.await;
    });

    let intake = Intake {
        shared: shared.clone(),
        queue: queue_tx,
    };
    let checker_shared = shared.clone();
    let serve = tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(AccessLogServiceServer::new(intake))
            .add_service(AuthorizationServer::new(Checker {
                shared: checker_shared,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(grpc))
            .await
        {
            tracing::error!(error = %e, "report server stopped");
        }
    });
    let prom_task = {
        let shared = shared.clone();
        tokio::spawn(serve_http(prom, move |path| match path {
            "/metrics" => (200, shared.render_prometheus()),
            _ => (404, "not found\n".to_owned()),
        }))
    };
    let mon_task = {
        let shared = shared.clone();
        tokio::spawn(serve_http(mon, move |path| match path {
            "/metrics" => (200, shared.metrics.encode()),
            "/ready" => {
                if *ready_rx.borrow() {
                    (200, "ok\n".to_owned())
                } else {
                    (503, "waiting for galley\n".to_owned())
                }
            }
            "/debug/configz" => {
                let plan = shared.plan();
                let handlers: Vec<String> =
                    plan.handlers.iter().map(|h| h.name.to_string()).collect();
                let problems: Vec<String> = plan.problems.iter().map(|p| p.to_string()).collect();
                (
                    200,
                    serde_json::to_string_pretty(&serde_json::json!({
                        "rules": plan.rule_count(),
                        "handlers": handlers,
                        "problems": problems,
                    }))
                    .unwrap_or_default(),
                )
            }
            _ => (404, "not found\n".to_owned()),
        }))
    };
    tracing::info!(%grpc_addr, %prometheus_addr, %monitoring_addr, galley = %args.galley, "mixer started");
    Ok(Running {
        grpc_addr,
        prometheus_addr,
        monitoring_addr,
        shared,
        tasks: vec![
            galley_task,
            follow,
            dispatcher,
            writer,
            serve,
            prom_task,
            mon_task,
        ],
    })
}

/// Writes stdio adapter lines; a blocked output holds up only this thread. FILE appends to
/// `outputPath`, ROTATED_FILE also rotates it ([`crate::adapter::rotate`]); without a path
/// they go to stdout.
fn write_lines(mut rx: mpsc::Receiver<stdio::Line>) {
    use crate::adapter::rotate::RotatingFile;
    let mut files: std::collections::HashMap<String, RotatingFile> =
        std::collections::HashMap::new();
    let mut warned = false;
    while let Some(line) = rx.blocking_recv() {
        let text = &line.text;
        let result = match (line.stream, &line.path) {
            (LogStream::Stderr, _) => writeln!(std::io::stderr().lock(), "{text}"),
            (LogStream::File | LogStream::RotatedFile, Some(path)) => {
                // A plain FILE never rotates: its limit is out of reach.
                let rotation = line.rotation.unwrap_or(crate::adapter::rotate::Rotation {
                    max_bytes: u64::MAX,
                    max_age: std::time::Duration::MAX,
                    max_files: usize::MAX,
                });
                if files.get(path).is_some_and(|f| f.rotation() != rotation) {
                    files.remove(path);
                }
                let file = match files.entry(path.clone()) {
                    std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        RotatingFile::open(std::path::Path::new(path), rotation)
                            .map(|f| v.insert(f))
                    }
                };
                match file {
                    Ok(f) => f.write_line(text, std::time::SystemTime::now()),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot open the stdio adapter's outputPath; line written to stdout");
                        writeln!(std::io::stdout().lock(), "{text}")
                    }
                }
            }
            _ => writeln!(std::io::stdout().lock(), "{text}"),
        };
        if let Err(e) = result
            && !warned
        {
            warned = true;
            tracing::warn!(error = %e, "stdio adapter output failed (said once)");
        }
    }
}

/// Runs mixer until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> Result<(), StartError> {
    let running = start(&args).await?;
    let _ = tokio::signal::ctrl_c().await;
    running.shutdown();
    Ok(())
}
