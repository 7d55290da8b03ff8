//! The local mesh's runtime: the one process behind `keelctl up` that plays the parts a
//! Kubernetes cluster would (kubelet, Deployment controller, kube-proxy, the injector) and
//! runs Istio's components.
//!
//! Start-up, in order, each step waiting for the one before to be ready: the pod network,
//! galley (with the mesh's namespaces and default telemetry applied), pilot, mixer,
//! prometheus (when installed), the ingress gateway. Then a reconcile loop, on every galley
//! change and every second:
//! - pods: Deployments give the pods that should run ([`crate::workload`]); missing ones are
//!   started (namespace, hosts file, capture, sidecar, containers), extra ones stopped;
//! - services: each gets a virtual IP (written back as `spec.clusterIP`), every pod's hosts
//!   file names them, and the host's iptables send VIP traffic of sidecar-less pods to the
//!   endpoints;
//! - Pod objects: each pod's address, labels and container states are recorded in galley,
//!   where pilot and mixer find them and `keelctl get pods` shows them;
//! - prometheus' targets follow the proxies.
//!
//! On SIGTERM it stops everything and removes what it made; [`teardown_from_record`] does
//! the same from the files alone after a crash.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_config::store::Snapshot;
use keel_config::{Kind, Spec};
use keel_galley::client::{GalleyClient, Source};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::capture::{self, VirtualPort};
use crate::dns::{self, ServiceName, Vips};
use crate::images::{self, ImageTable};
use crate::net::{NetConfig, NetError, Network, PodNet};
use crate::probe::{http_get, port_in_use};
use crate::status::{ComponentStatus, ContainerStatus, Layout, Phase, PodStatus, Status};
use crate::supervise::{ProcessSpec, Supervised, supervise};
use crate::workload::{self, ContainerState, MANAGED_BY, PodPlan};
use crate::{bootstrap, prometheus};

pub const GATEWAY_NAMESPACE: &str = "istio-system";
pub const GATEWAY_NAME: &str = "istio-ingressgateway";
/// The range service virtual IPs come from; unreachable on the host except through DNAT.
pub const VIP_RANGE: &str = "240.240.0.0/16";
const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Istio 1.0's default telemetry, written for Keel.
const DEFAULT_TELEMETRY: &str = include_str!("../../install/telemetry.yaml");

/// The ports a local mesh takes on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub galley_http: u16,
    pub galley_grpc: u16,
    pub pilot_grpc: u16,
    pub pilot_http: u16,
    pub mixer_grpc: u16,
    pub mixer_prometheus: u16,
    pub mixer_monitoring: u16,
    pub prometheus: u16,
    pub servicegraph: u16,
    pub dashboard: u16,
    pub gateway_http: u16,
    pub gateway_https: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            galley_http: 9093,
            galley_grpc: 9901,
            pilot_grpc: 15010,
            pilot_http: 8080,
            mixer_grpc: 9091,
            mixer_prometheus: 42422,
            mixer_monitoring: 15014,
            prometheus: 9090,
            servicegraph: 8088,
            dashboard: 3000,
            gateway_http: 31380,
            gateway_https: 31390,
        }
    }
}

impl Ports {
    fn all(&self) -> [(u16, &'static str); 12] {
        [
            (self.galley_http, "galley's API"),
            (self.galley_grpc, "galley's ADS"),
            (self.pilot_grpc, "pilot's ADS"),
            (self.pilot_http, "pilot's debug API"),
            (self.mixer_grpc, "mixer's report API"),
            (self.mixer_prometheus, "mixer's prometheus adapter"),
            (self.mixer_monitoring, "mixer's monitoring"),
            (self.prometheus, "prometheus"),
            (self.servicegraph, "servicegraph"),
            (self.dashboard, "the mesh dashboard"),
            (self.gateway_http, "the ingress gateway (HTTP)"),
            (self.gateway_https, "the ingress gateway (HTTPS)"),
        ]
    }
}

/// The data plane the mesh's sidecars and gateway run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlane {
    Envoy,
    Keel,
}

impl DataPlane {
    pub fn name(self) -> &'static str {
        match self {
            DataPlane::Envoy => "envoy",
            DataPlane::Keel => "keel",
        }
    }

    fn image(self) -> &'static str {
        match self {
            DataPlane::Envoy => "envoyproxy/envoy",
            DataPlane::Keel => "keel/proxy",
        }
    }
}

impl std::str::FromStr for DataPlane {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "envoy" => Ok(DataPlane::Envoy),
            "keel" => Ok(DataPlane::Keel),
            other => Err(format!("unknown data plane \"{other}\" (keel or envoy)")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub layout: Layout,
    /// Where Keel's binaries are (keel-galley, keel-pilot, keel-mixer, bookinfo-*).
    pub bin_dir: PathBuf,
    pub data_plane: DataPlane,
    /// The proxy program (Envoy, or keel-proxy).
    pub proxy_binary: PathBuf,
    pub net: NetConfig,
    pub ports: Ports,
    pub images_file: PathBuf,
    /// Whether sidecars check every inbound request with mixer (Istio 1.0's default;
    /// `disablePolicyChecks: true` turns it off).
    pub policy_checks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot start the local mesh:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{what}: {reason}")]
    Start { what: String, reason: String },
}

fn start_err(what: impl Into<String>, reason: impl ToString) -> RuntimeError {
    RuntimeError::Start {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Finds Envoy: `$KEEL_ENVOY`, the venv `cargo xtask test` installs it into (beside
/// `target/`), then `envoy` on `PATH`.
pub fn find_envoy(bin_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KEEL_ENVOY") {
        return Some(PathBuf::from(p));
    }
    let venv = bin_dir.parent().map(|t| t.join("envoy-venv/lib"));
    if let Some(found) = venv.and_then(|lib| {
        std::fs::read_dir(lib)
            .ok()?
            .flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.is_file())
    }) {
        return Some(found);
    }
    images::find_program("envoy", bin_dir)
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

/// Everything that would stop a start, each with what to do about it.
pub fn preflight(opts: &Options) -> Vec<String> {
    let mut problems = Vec::new();
    if !is_root() {
        problems.push(
            "keelctl up needs root: it creates network namespaces, a bridge and iptables rules (run it with sudo)"
                .to_owned(),
        );
    }
    for bin in [
        "keel-galley",
        "keel-pilot",
        "keel-mixer",
        "keel-servicegraph",
        "keel-dashboard",
    ] {
        if !opts.bin_dir.join(bin).is_file() {
            problems.push(format!(
                "{bin} is not in {} (build it with `cargo build --bins`)",
                opts.bin_dir.display()
            ));
        }
    }
    if !opts.proxy_binary.is_file() {
        problems.push(match opts.data_plane {
            DataPlane::Envoy => format!(
                "Envoy is not at {} (`cargo xtask test` installs it; or set KEEL_ENVOY)",
                opts.proxy_binary.display()
            ),
            DataPlane::Keel => format!(
                "keel-proxy is not at {}: the Rust data plane is not built yet; use --proxy envoy",
                opts.proxy_binary.display()
            ),
        });
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
        ("setpriv", "util-linux"),
    ] {
        if images::find_program(program, Path::new("/usr/sbin")).is_none() {
            problems.push(format!(
                "`{program}` is not installed (apt-get install {package})"
            ));
        }
    }
    for (port, what) in opts.ports.all() {
        if port_in_use(port) {
            problems.push(format!(
                "port {port} ({what}) is in use (another mesh running? `keelctl status`)"
            ));
        }
    }
    if Path::new("/sys/class/net").join(&opts.net.bridge).exists()
        && !opts.layout.net_state().exists()
    {
        problems.push(format!(
            "the interface {} exists but no Keel run recorded it; remove it with `ip link del {}`",
            opts.net.bridge, opts.net.bridge
        ));
    }
    problems
}

/// Runs the mesh until SIGTERM or SIGINT, then removes everything it made.
pub async fn run(opts: Options) -> Result<(), RuntimeError> {
    let mut status = Status {
        pid: std::process::id(),
        proxy: opts.data_plane.name().to_owned(),
        policy_checks: opts.policy_checks,
        progress: "checking the machine".into(),
        gateway_url: format!("http://127.0.0.1:{}", opts.ports.gateway_http),
        ..Status::default()
    };
    let layout = opts.layout.clone();
    for dir in [
        layout.home.clone(),
        layout.pids_dir(),
        layout.logs_dir(),
        layout.config_dir(),
    ] {
        std::fs::create_dir_all(&dir).map_err(|e| start_err(dir.display().to_string(), e))?;
    }
    let problems = preflight(&opts);
    if !problems.is_empty() {
        let err = RuntimeError::Preflight(problems);
        status.phase = Phase::Failed;
        status.error = Some(err.to_string());
        let _ = status.write(&layout.status());
        return Err(err);
    }
    std::fs::write(layout.runtime_pid(), format!("{}\n", std::process::id()))
        .map_err(|e| start_err("writing the runtime's pid file", e))?;
    let _ = status.write(&layout.status());
    let net = Network::open(opts.net.clone(), &layout.net_state())?;
    let images = ImageTable::load(&opts.images_file).map_err(|e| start_err("image table", e))?;
    let mut rt = Runtime {
        galley: GalleyClient::new(&format!("127.0.0.1:{}", opts.ports.galley_http)),
        opts,
        status,
        net,
        images,
        components: Vec::new(),
        pods: BTreeMap::new(),
        vips: Vips::default(),
        written: BTreeMap::new(),
        service_rules: None,
        prometheus: None,
        forwarders: Vec::new(),
        synced: BTreeSet::new(),
        problems: Vec::new(),
        started_at: now(),
    };
    let result = rt.start_and_serve().await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "the local mesh failed");
        rt.status.phase = Phase::Failed;
        rt.status.error = Some(e.to_string());
        rt.write_status();
    }
    rt.shutdown().await;
    result
}

struct Component {
    name: &'static str,
    process: Supervised,
    ready: bool,
}

struct RunningContainer {
    name: String,
    image: String,
    process: Option<Supervised>,
    /// Why it could not start.
    error: Option<String>,
}

struct RunningPod {
    plan: PodPlan,
    net: PodNet,
    started_at: String,
    gateway: bool,
    node_id: Option<String>,
    sidecar: Option<Supervised>,
    containers: Vec<RunningContainer>,
}

struct Runtime {
    opts: Options,
    status: Status,
    net: Network,
    galley: GalleyClient,
    images: ImageTable,
    components: Vec<Component>,
    pods: BTreeMap<String, RunningPod>,
    vips: Vips,
    /// The Pod objects last written to galley, by `ns/name`.
    written: BTreeMap<String, Value>,
    service_rules: Option<String>,
    prometheus: Option<Prometheus>,
    forwarders: Vec<tokio::task::JoinHandle<()>>,
    /// Node ids whose listeners pilot has seen acknowledged.
    synced: BTreeSet<String>,
    problems: Vec<String>,
    /// When the mesh started (the component Pods' start time).
    started_at: String,
}

struct Prometheus {
    config: PathBuf,
    proxies: Vec<SocketAddr>,
}

fn now() -> String {
    let t = keel_attributes::value::format_timestamp(SystemTime::now());
    // Seconds are enough for kubectl-style ages.
    match t.split_once('.') {
        Some((secs, _)) => format!("{secs}Z"),
        None => t,
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Runtime {
    fn bridge_ip(&self) -> Ipv4Addr {
        self.opts.net.gateway
    }

    fn set_progress(&mut self, what: &str) {
        tracing::info!("{what}");
        self.status.progress = what.to_owned();
        self.write_status();
    }

    fn write_status(&mut self) {
        self.status.updated = now();
        if let Err(e) = self.status.write(&self.opts.layout.status()) {
            tracing::warn!(error = %e, "cannot write the status file");
        }
    }

    fn component(&mut self, name: &'static str, program: &str, args: Vec<String>) {
        let layout = &self.opts.layout;
        let spec = ProcessSpec {
            name: name.to_owned(),
            program: self.opts.bin_dir.join(program),
            args,
            env: [("RUST_LOG".to_owned(), "info".to_owned())].into(),
            netns: None,
            gid: None,
            log: layout.component_log(name),
            pid_file: layout.pids_dir().join(format!("{name}.pid")),
        };
        self.components.push(Component {
            name,
            process: supervise(spec),
            ready: false,
        });
    }

    /// Waits until `url` on 127.0.0.1 answers 200, failing when the component keeps exiting.
    async fn wait_ready(
        &mut self,
        name: &'static str,
        port: u16,
        path: &str,
    ) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if let Ok((200, _)) = http_get(addr, path).await {
                if let Some(c) = self.components.iter_mut().find(|c| c.name == name) {
                    c.ready = true;
                }
                self.refresh_status();
                return Ok(());
            }
            let state = self
                .components
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.process.state())
                .unwrap_or_default();
            if state.restarts >= 3 || Instant::now() > deadline {
                let log = self.opts.layout.component_log(name);
                return Err(start_err(
                    format!("{name} did not become ready"),
                    format!(
                        "{} (last exit: {}); the end of {}:\n{}",
                        if state.restarts >= 3 {
                            "it keeps exiting"
                        } else {
                            "timed out after 60 s"
                        },
                        state.last_exit.unwrap_or_else(|| "none".into()),
                        log.display(),
                        tail(&log, 15)
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn start_and_serve(&mut self) -> Result<(), RuntimeError> {
        let ports = self.opts.ports.clone();
        let bridge = self.bridge_ip();

        self.set_progress("creating the pod network");
        self.net.up()?;
        enable_forwarding(
            &self.opts.net.bridge,
            network_of(self.opts.net.gateway, self.opts.net.prefix),
        )?;
        reserve_ports(&self.opts.layout, &[self.opts.ports.mixer_prometheus]);

        self.set_progress("starting galley");
        self.component(
            "galley",
            "keel-galley",
            vec![
                "--config-dir".into(),
                self.opts.layout.config_dir().display().to_string(),
                "--grpc-addr".into(),
                format!("127.0.0.1:{}", ports.galley_grpc),
                "--http-addr".into(),
                format!("127.0.0.1:{}", ports.galley_http),
            ],
        );
        self.wait_ready("galley", ports.galley_http, "/ready")
            .await?;

        self.set_progress("applying the mesh's namespaces and default telemetry");
        self.apply_text("mesh namespaces", &mesh_namespaces(), "default")
            .await?;
        self.apply_text(
            "install/telemetry.yaml",
            DEFAULT_TELEMETRY,
            GATEWAY_NAMESPACE,
        )
        .await?;
        self.apply_text(
            "ingress gateway service",
            &gateway_service(&ports),
            GATEWAY_NAMESPACE,
        )
        .await?;

        self.set_progress("starting pilot");
        let galley_ads = format!("http://127.0.0.1:{}", ports.galley_grpc);
        let mut pilot_args: Vec<String> = vec![
            "--galley".into(),
            galley_ads.clone(),
            "--grpc-addr".into(),
            format!("{bridge}:{}", ports.pilot_grpc),
            "--http-addr".into(),
            format!("127.0.0.1:{}", ports.pilot_http),
            "--mixer-telemetry".into(),
            format!("{bridge}:{}", ports.mixer_grpc),
        ];
        if self.opts.policy_checks {
            // Mixer serves checks on the same gRPC port as reports.
            pilot_args.extend([
                "--mixer-policy".into(),
                format!("{bridge}:{}", ports.mixer_grpc),
            ]);
        }
        self.component("pilot", "keel-pilot", pilot_args);
        self.wait_ready("pilot", ports.pilot_http, "/ready").await?;

        self.set_progress("starting mixer");
        let mixer_hosts = self.opts.layout.mixer_hosts();
        self.write_mixer_hosts();
        self.component(
            "mixer",
            "keel-mixer",
            vec![
                "--galley".into(),
                galley_ads,
                "--grpc-addr".into(),
                format!("{bridge}:{}", ports.mixer_grpc),
                "--prometheus-addr".into(),
                format!("127.0.0.1:{}", ports.mixer_prometheus),
                "--monitoring-addr".into(),
                format!("127.0.0.1:{}", ports.mixer_monitoring),
                "--hosts-file".into(),
                mixer_hosts.display().to_string(),
            ],
        );
        self.wait_ready("mixer", ports.mixer_monitoring, "/ready")
            .await?;

        self.set_progress("starting prometheus");
        self.start_prometheus().await?;
        if self.prometheus.is_some() {
            self.set_progress("starting servicegraph and the dashboard");
            let prom = format!("127.0.0.1:{}", ports.prometheus);
            for (name, program, port, ready) in [
                (
                    "servicegraph",
                    "keel-servicegraph",
                    ports.servicegraph,
                    "/healthz",
                ),
                (
                    "dashboard",
                    "keel-dashboard",
                    ports.dashboard,
                    "/api/health",
                ),
            ] {
                self.component(
                    name,
                    program,
                    vec![
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--prometheus".into(),
                        prom.clone(),
                    ],
                );
                self.wait_ready(name, port, ready).await?;
            }
        }
        self.apply_text(
            "the components' services",
            &component_services(&ports, self.prometheus.is_some()),
            GATEWAY_NAMESPACE,
        )
        .await?;
        // Istio's mesh config, which pilot follows: `keelctl -n istio-system edit cm istio`
        // turns policy checks off or on as in Istio.
        self.apply_text(
            "the mesh config",
            &mesh_config_map(
                &bridge.to_string(),
                ports.mixer_grpc,
                self.opts.policy_checks,
            ),
            GATEWAY_NAMESPACE,
        )
        .await?;

        self.status.endpoints = self.endpoints();
        self.set_progress("starting the ingress gateway");
        let (mut galley, _task) = subscribe_galley(ports.galley_grpc);
        let mut snap = Snapshot::default();
        let mut parsed = keel_config::store::ParsedDocuments::default();
        let mut parsed_from: Option<std::sync::Arc<keel_xds::client::ClientState>> = None;
        let gateway_deadline = Instant::now() + Duration::from_secs(60);
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| start_err("installing the SIGTERM handler", e))?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            {
                let state = galley.borrow_and_update().clone();
                // Parsed again only when galley sent a new state; then only the documents
                // not seen before.
                let new = parsed_from
                    .as_ref()
                    .is_none_or(|p| !std::sync::Arc::ptr_eq(p, &state));
                if state.synced && new {
                    snap = Snapshot::from_json_documents_reusing(
                        state.snapshot_version(),
                        state.payloads(),
                        &mut parsed,
                    );
                    parsed_from = Some(state);
                }
            }
            self.reconcile(&snap).await;
            self.refresh_sync().await;
            self.refresh_status();
            if self.status.phase == Phase::Starting {
                let gateway_ready = self.pods.values().any(|p| {
                    p.gateway && p.node_id.as_ref().is_some_and(|n| self.synced.contains(n))
                });
                if gateway_ready {
                    self.start_forwarders()?;
                    self.status.phase = Phase::Ready;
                    self.status.progress.clear();
                    tracing::info!("the local mesh is ready");
                } else if Instant::now() > gateway_deadline {
                    let log = self.pods.values().find(|p| p.gateway).map(|p| {
                        self.opts.layout.container_log(
                            &p.plan.namespace,
                            &p.plan.name,
                            "istio-proxy",
                        )
                    });
                    return Err(start_err(
                        "the ingress gateway did not get its configuration from pilot within 60 s",
                        log.map(|l| format!("the end of {}:\n{}", l.display(), tail(&l, 15)))
                            .unwrap_or_default(),
                    ));
                }
            }
            self.write_status();
            tokio::select! {
                _ = sigterm.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
                changed = galley.changed() => {
                    if changed.is_err() {
                        return Err(start_err("galley subscription", "ended"));
                    }
                    // Let a burst of changes (one apply of many documents) settle.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = tick.tick() => {}
            }
        }
    }

    fn endpoints(&self) -> BTreeMap<String, String> {
        let p = &self.opts.ports;
        let mut e = BTreeMap::from([
            (
                "galley".to_owned(),
                format!("http://127.0.0.1:{}", p.galley_http),
            ),
            (
                "pilot_debug".to_owned(),
                format!("http://127.0.0.1:{}/debug/syncz", p.pilot_http),
            ),
            (
                "mixer_metrics".to_owned(),
                format!("http://127.0.0.1:{}/metrics", p.mixer_prometheus),
            ),
            (
                "mixer_monitoring".to_owned(),
                format!("http://127.0.0.1:{}/debug/configz", p.mixer_monitoring),
            ),
        ]);
        if self.prometheus.is_some() {
            e.insert(
                "prometheus".to_owned(),
                format!("http://127.0.0.1:{}", p.prometheus),
            );
            e.insert(
                "servicegraph".to_owned(),
                format!("http://127.0.0.1:{}/force/forcegraph.html", p.servicegraph),
            );
            e.insert(
                "dashboard".to_owned(),
                format!(
                    "http://127.0.0.1:{}/dashboard/db/istio-mesh-dashboard",
                    p.dashboard
                ),
            );
        }
        e
    }

    async fn apply_text(
        &self,
        name: &str,
        text: &str,
        namespace: &str,
    ) -> Result<(), RuntimeError> {
        self.galley
            .apply(
                &[Source {
                    name: name.to_owned(),
                    text: text.to_owned(),
                }],
                namespace,
                false,
            )
            .await
            .map(|_| ())
            .map_err(|e| start_err(format!("applying {name}"), e))
    }

    async fn start_prometheus(&mut self) -> Result<(), RuntimeError> {
        let Some(binary) = prometheus::binary() else {
            self.problems.push(
                "prometheus is not installed (apt-get install prometheus; `cargo xtask test` does it): metrics are still at mixer's /metrics".into(),
            );
            return Ok(());
        };
        let dir = self.opts.layout.prometheus_dir();
        std::fs::create_dir_all(dir.join("data"))
            .map_err(|e| start_err("prometheus' directory", e))?;
        let config = dir.join("prometheus.yml");
        self.write_prometheus_config(&config, &[])?;
        let listen = SocketAddr::from(([127, 0, 0, 1], self.opts.ports.prometheus));
        let cmd = prometheus::command(&binary, &config, &dir.join("data"), listen);
        let spec = ProcessSpec {
            name: "prometheus".into(),
            program: binary,
            args: cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            env: BTreeMap::new(),
            netns: None,
            gid: None,
            log: self.opts.layout.component_log("prometheus"),
            pid_file: self.opts.layout.pids_dir().join("prometheus.pid"),
        };
        self.components.push(Component {
            name: "prometheus",
            process: supervise(spec),
            ready: false,
        });
        self.prometheus = Some(Prometheus {
            config,
            proxies: Vec::new(),
        });
        self.wait_ready("prometheus", self.opts.ports.prometheus, "/-/ready")
            .await
    }

    fn write_prometheus_config(
        &self,
        path: &Path,
        proxies: &[SocketAddr],
    ) -> Result<(), RuntimeError> {
        let p = &self.opts.ports;
        let local = |port: u16| vec![SocketAddr::from(([127, 0, 0, 1], port))];
        let targets = prometheus::MeshTargets {
            mixer_adapter: local(p.mixer_prometheus),
            mixer_self: local(p.mixer_monitoring),
            pilot: local(p.pilot_http),
            galley: local(p.galley_http),
            proxies: proxies.to_vec(),
        };
        std::fs::write(path, prometheus::scrape_config(&targets.jobs(), 5))
            .map_err(|e| start_err(format!("writing {}", path.display()), e))
    }

    /// Rewrites prometheus' targets when the proxies changed, and has it reload.
    fn sync_prometheus(&mut self) {
        let mut proxies: Vec<SocketAddr> = self
            .pods
            .values()
            .filter(|p| p.sidecar.is_some())
            .map(|p| SocketAddr::from((p.net.ip, bootstrap::STATS_PORT)))
            .collect();
        proxies.sort();
        let Some(prom) = &self.prometheus else { return };
        if prom.proxies == proxies {
            return;
        }
        let config = prom.config.clone();
        if let Err(e) = self.write_prometheus_config(&config, &proxies) {
            tracing::warn!(error = %e, "cannot update prometheus' targets");
            return;
        }
        if let Some(pid) = self
            .components
            .iter()
            .find(|c| c.name == "prometheus")
            .and_then(|c| c.process.state().pid)
        {
            crate::supervise::signal(pid, "HUP");
        }
        if let Some(prom) = &mut self.prometheus {
            prom.proxies = proxies;
        }
    }

    fn start_forwarders(&mut self) -> Result<(), RuntimeError> {
        let Some(gw) = self.pods.values().find(|p| p.gateway) else {
            return Err(start_err("the ingress gateway", "is not running"));
        };
        let ip = gw.net.ip;
        let p = &self.opts.ports;
        for (host_port, pod_port) in [(p.gateway_http, 80), (p.gateway_https, 443)] {
            let listen = SocketAddr::from(([127, 0, 0, 1], host_port));
            let listener = std::net::TcpListener::bind(listen)
                .and_then(|l| {
                    l.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(l)
                })
                .map_err(|e| {
                    start_err(format!("listening on {listen} for the ingress gateway"), e)
                })?;
            let target = SocketAddr::from((ip, pod_port));
            self.forwarders
                .push(tokio::spawn(crate::probe::forward(listener, target)));
        }
        Ok(())
    }

    fn gateway_plan(&self) -> PodPlan {
        let hash = workload::template_hash(GATEWAY_NAME);
        PodPlan {
            namespace: GATEWAY_NAMESPACE.into(),
            name: workload::pod_name(GATEWAY_NAMESPACE, GATEWAY_NAME, &hash, 0),
            deployment: GATEWAY_NAME.into(),
            labels: BTreeMap::from([
                ("app".to_owned(), GATEWAY_NAME.to_owned()),
                ("istio".to_owned(), "ingressgateway".to_owned()),
                ("pod-template-hash".to_owned(), hash.clone()),
            ]),
            template_hash: hash,
            service_account: format!("{GATEWAY_NAME}-service-account"),
            containers: Vec::new(),
            inject: false,
        }
    }

    async fn reconcile(&mut self, snap: &Snapshot) {
        let (mut desired, problems) = workload::desired_pods(snap, &self.images);
        desired.push(self.gateway_plan());
        let mut all_problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let wanted: BTreeSet<String> = desired.iter().map(PodPlan::key).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        // Start the new before stopping the old: an edited Deployment rolls.
        for plan in desired {
            if self.pods.contains_key(&plan.key()) {
                continue;
            }
            if let Err(e) = self.start_pod(plan.clone()).await {
                all_problems.push(format!("pod {}: {e}", plan.key()));
            }
        }
        for key in gone {
            self.stop_pod(&key).await;
        }
        for p in self.pods.values() {
            for c in &p.containers {
                if let Some(e) = &c.error {
                    all_problems.push(format!("pod {}: container {}: {e}", p.plan.key(), c.name));
                }
            }
        }
        self.sync_services(snap).await;
        self.sync_gateway_certs(snap);
        self.sync_pod_objects(snap).await;
        self.sync_prometheus();
        all_problems.extend(self.problems.iter().cloned());
        self.status.problems = all_problems;
    }

    async fn start_pod(&mut self, plan: PodPlan) -> Result<(), RuntimeError> {
        let gateway = plan.deployment == GATEWAY_NAME && plan.namespace == GATEWAY_NAMESPACE;
        let net = self
            .net
            .add_pod(&format!("{}.{}", plan.namespace, plan.name))?;
        let ip = net.ip.to_string();
        tracing::info!(pod = %plan.key(), %ip, sidecar = plan.inject, "starting pod");
        let mut pod = RunningPod {
            plan,
            net,
            started_at: now(),
            gateway,
            node_id: None,
            sidecar: None,
            containers: Vec::new(),
        };
        let hosts = dns::hosts_file(&pod.plan.name, pod.net.ip, &pod.plan.namespace, &self.vips);
        let started = self.start_pod_processes(&mut pod, &hosts);
        // Recorded even when something failed, so stop_pod removes what was made.
        let key = pod.plan.key();
        self.pods.insert(key, pod);
        started
    }

    fn start_pod_processes(&self, pod: &mut RunningPod, hosts: &str) -> Result<(), RuntimeError> {
        let layout = &self.opts.layout;
        let (ns, name) = (pod.plan.namespace.clone(), pod.plan.name.clone());
        let netns = pod.net.netns.clone();
        let ip = pod.net.ip.to_string();
        dns::write_pod_files(&netns, hosts)
            .map_err(|e| start_err("writing the pod's hosts file", e))?;
        let dir = layout.pod_dir(&ns, &name);
        std::fs::create_dir_all(&dir).map_err(|e| start_err(dir.display().to_string(), e))?;
        let downward = |extra: &[(&str, &str)]| -> BTreeMap<String, String> {
            let mut env: BTreeMap<String, String> = [
                ("HOSTNAME", name.as_str()),
                ("POD_NAME", name.as_str()),
                ("POD_NAMESPACE", ns.as_str()),
                ("INSTANCE_IP", ip.as_str()),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
            env.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            env
        };
        if pod.gateway {
            gateway_cert_dirs(&self.opts.layout, &netns)?;
        }
        if pod.plan.inject || pod.gateway {
            if pod.plan.inject {
                capture::apply_pod_capture(&netns, &pod.plan.ports())
                    .map_err(|e| start_err("installing the traffic capture", e))?;
            }
            let role = if pod.gateway {
                bootstrap::Role::Router
            } else {
                bootstrap::Role::Sidecar
            };
            let node = bootstrap::node_id(role, &ip, &name, &ns);
            let cluster = pod
                .plan
                .labels
                .get("app")
                .cloned()
                .unwrap_or_else(|| pod.plan.deployment.clone());
            let pilot = SocketAddr::from((self.bridge_ip(), self.opts.ports.pilot_grpc));
            let boot = bootstrap::envoy_bootstrap(&node, &cluster, pilot);
            let boot_path = dir.join("envoy.json");
            std::fs::write(&boot_path, boot.to_string())
                .map_err(|e| start_err(format!("writing {}", boot_path.display()), e))?;
            let args = match self.opts.data_plane {
                DataPlane::Envoy => vec![
                    "-c".into(),
                    boot_path.display().to_string(),
                    "--disable-hot-restart".into(),
                    "--concurrency".into(),
                    "1".into(),
                    "--drain-time-s".into(),
                    "2".into(),
                    "-l".into(),
                    "warning".into(),
                ],
                DataPlane::Keel => vec![
                    "--bootstrap".into(),
                    boot_path.display().to_string(),
                    "--drain-time-s".into(),
                    "2".into(),
                ],
            };
            pod.sidecar = Some(supervise(ProcessSpec {
                name: format!("{ns}/{name}/istio-proxy"),
                program: self.opts.proxy_binary.clone(),
                args,
                env: downward(&[]),
                netns: Some(netns.clone()),
                gid: Some(capture::PROXY_GID),
                log: layout.container_log(&ns, &name, "istio-proxy"),
                pid_file: layout
                    .pids_dir()
                    .join(format!("{ns}.{name}.istio-proxy.pid")),
            }));
            pod.node_id = Some(node);
        }
        for c in pod.plan.containers.clone() {
            let mut running = RunningContainer {
                name: c.name.clone(),
                image: c.image.clone(),
                process: None,
                error: None,
            };
            let program = c
                .argv
                .first()
                .and_then(|p| images::find_program(p, &self.opts.bin_dir));
            let env: Result<BTreeMap<String, String>, String> = c
                .env
                .iter()
                .map(|(k, v)| Ok((k.clone(), workload::resolve_field(v, &pod.plan, &ip)?)))
                .collect();
            match (program, env) {
                (Some(program), Ok(env)) => {
                    let mut all = downward(&[]);
                    all.extend(env);
                    running.process = Some(supervise(ProcessSpec {
                        name: format!("{ns}/{name}/{}", c.name),
                        program,
                        args: c.argv[1..].to_vec(),
                        env: all,
                        netns: Some(netns.clone()),
                        gid: None,
                        log: layout.container_log(&ns, &name, &c.name),
                        pid_file: layout
                            .pids_dir()
                            .join(format!("{ns}.{name}.{}.pid", c.name)),
                    }));
                }
                (None, _) => {
                    running.error = Some(format!(
                        "program \"{}\" (image {}) not found in {} or on PATH",
                        c.argv.first().map(String::as_str).unwrap_or(""),
                        c.image,
                        self.opts.bin_dir.display()
                    ));
                }
                (_, Err(e)) => running.error = Some(e),
            }
            pod.containers.push(running);
        }
        Ok(())
    }

    async fn stop_pod(&mut self, key: &str) {
        let Some(pod) = self.pods.remove(key) else {
            return;
        };
        tracing::info!(pod = %key, "stopping pod");
        let mut stopping = tokio::task::JoinSet::new();
        for c in pod.containers {
            if let Some(p) = c.process {
                stopping.spawn(p.stop());
            }
        }
        if let Some(s) = pod.sidecar {
            stopping.spawn(s.stop());
        }
        while stopping.join_next().await.is_some() {}
        kill_netns_processes(&pod.net.netns);
        if let Err(e) = self.net.remove_pod(&pod.net.pod) {
            tracing::warn!(pod = %key, error = %e, "cannot remove the pod's network");
        }
        let _ = std::fs::remove_dir_all(
            self.opts
                .layout
                .pod_dir(&pod.plan.namespace, &pod.plan.name),
        );
        if self.written.remove(key).is_some()
            && let Err(e) = self
                .galley
                .delete("pods", &pod.plan.namespace, &pod.plan.name)
                .await
        {
            tracing::warn!(pod = %key, error = %e, "cannot remove the Pod from galley");
        }
    }

    /// Virtual IPs, hosts files and the host's service rules.
    async fn sync_services(&mut self, snap: &Snapshot) {
        let mut present = BTreeSet::new();
        let before = self.vips.clone();
        let mut virtual_ports = Vec::new();
        for r in snap.resources.values() {
            let Spec::Service(svc) = &r.spec else {
                continue;
            };
            let Some(spec) = &svc.spec else { continue };
            if spec.cluster_ip.as_deref() == Some("None") {
                continue;
            }
            let name = ServiceName {
                namespace: r.namespace().to_owned(),
                name: r.name().to_owned(),
            };
            present.insert(name.clone());
            let vip = match self.vips.assign(&name) {
                Ok(v) => v,
                Err(e) => {
                    self.problems.push(e.to_string());
                    continue;
                }
            };
            if spec.cluster_ip.as_deref() != Some(vip.to_string().as_str()) {
                let mut doc = r.raw.clone();
                doc["spec"]["clusterIP"] = json!(vip.to_string());
                if let Err(e) = self
                    .galley
                    .apply(
                        &[Source {
                            name: format!("clusterIP of service {}/{}", name.namespace, name.name),
                            text: doc.to_string(),
                        }],
                        &name.namespace,
                        false,
                    )
                    .await
                {
                    // A user's write raced ours; the next pass tries again.
                    tracing::info!(service = %format!("{}/{}", name.namespace, name.name), error = %e, "cannot record the cluster IP yet");
                }
            }
            let selector = spec.selector.clone().unwrap_or_default();
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let Ok(svc_port) = u16::try_from(port.port) else {
                    continue;
                };
                let endpoints = if selector.is_empty() {
                    Vec::new()
                } else {
                    self.pods
                        .values()
                        .filter(|p| p.plan.namespace == name.namespace)
                        .filter(|p| {
                            selector
                                .iter()
                                .all(|(k, v)| p.plan.labels.get(k) == Some(v))
                        })
                        .filter_map(|p| {
                            let target = match &port.target_port {
                                None => Some(svc_port),
                                Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
                                Some(IntOrString::String(s)) => p
                                    .plan
                                    .containers
                                    .iter()
                                    .find_map(|c| c.named_ports.get(s).copied()),
                            }?;
                            Some((p.net.ip, target))
                        })
                        .collect()
                };
                virtual_ports.push(VirtualPort {
                    vip,
                    port: svc_port,
                    endpoints,
                });
            }
        }
        let stale: Vec<ServiceName> = self
            .vips
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| !present.contains(n))
            .collect();
        for n in stale {
            self.vips.release(&n);
        }
        if self.vips != before {
            self.write_mixer_hosts();
            for p in self.pods.values() {
                let hosts = dns::hosts_file(&p.plan.name, p.net.ip, &p.plan.namespace, &self.vips);
                if let Err(e) = dns::write_pod_files(&p.net.netns, &hosts) {
                    tracing::warn!(pod = %p.plan.key(), error = %e, "cannot update the pod's hosts file");
                }
            }
        }
        let subnet = network_of(self.opts.net.gateway, self.opts.net.prefix);
        let rules = capture::service_rules(&virtual_ports, subnet, VIP_RANGE);
        if self.service_rules.as_ref() != Some(&rules) {
            match capture::apply_service_rules(&rules) {
                Ok(()) => self.service_rules = Some(rules),
                Err(e) => tracing::warn!(error = %e, "cannot update the service rules"),
            }
        }
    }

    /// Mixer runs on the host but its adapters name cluster services (`fluentd-es.logging`):
    /// it reads them from this file, the view a pod in istio-system has.
    fn write_mixer_hosts(&self) {
        let path = self.opts.layout.mixer_hosts();
        let text = dns::component_hosts_file(GATEWAY_NAMESPACE, &self.vips);
        let tmp = path.with_extension("tmp");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write mixer's hosts file");
        }
    }

    /// The Secrets Istio 1.0 mounted into the ingress gateway, as files in the gateway pod's
    /// `/etc/istio/...`: `istio-ingressgateway-certs` (tls.crt, tls.key) and
    /// `istio-ingressgateway-ca-certs`.
    fn sync_gateway_certs(&mut self, snap: &Snapshot) {
        let Some(gw) = self.pods.values().find(|p| p.gateway) else {
            return;
        };
        let base = dns::netns_etc(&gw.net.netns).join("istio");
        for (secret, dir) in GATEWAY_SECRETS {
            let key = keel_config::ResourceKey {
                kind: Kind::Secret,
                namespace: GATEWAY_NAMESPACE.into(),
                name: (*secret).into(),
            };
            let Some(Spec::Secret(sec)) = snap.get(&key).map(|r| &r.spec) else {
                continue;
            };
            let mut files: BTreeMap<String, Vec<u8>> = sec
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            for (k, v) in sec.string_data.iter().flatten() {
                files.insert(k.clone(), v.clone().into_bytes());
            }
            for (name, bytes) in files {
                if name.contains('/') || name.starts_with('.') {
                    continue;
                }
                let path = base.join(dir).join(&name);
                if std::fs::read(&path).is_ok_and(|old| old == bytes) {
                    continue;
                }
                let tmp = base.join(dir).join(format!(".{name}.tmp"));
                let written =
                    std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path));
                match written {
                    Ok(()) => {
                        tracing::info!(secret, file = %path.display(), "gateway certificate file written")
                    }
                    Err(e) => {
                        tracing::warn!(secret, error = %e, "cannot write a gateway certificate file")
                    }
                }
            }
        }
    }

    fn container_states(&self, pod: &RunningPod) -> Vec<ContainerState> {
        let mut out: Vec<ContainerState> = pod
            .containers
            .iter()
            .map(|c| {
                let st = c
                    .process
                    .as_ref()
                    .map(Supervised::state)
                    .unwrap_or_default();
                ContainerState {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    running: st.running,
                    ready: st.running,
                    restarts: st.restarts,
                    waiting_reason: if c.error.is_some() {
                        Some("ErrImagePull".into())
                    } else if st.backing_off {
                        Some("CrashLoopBackOff".into())
                    } else {
                        None
                    },
                }
            })
            .collect();
        if let Some(sidecar) = &pod.sidecar {
            let st = sidecar.state();
            let synced = pod
                .node_id
                .as_ref()
                .is_some_and(|n| self.synced.contains(n));
            out.push(ContainerState {
                name: "istio-proxy".into(),
                image: self.opts.data_plane.image().into(),
                running: st.running,
                ready: st.running && synced,
                restarts: st.restarts,
                waiting_reason: st.backing_off.then(|| "CrashLoopBackOff".into()),
            });
        }
        out
    }

    /// The components that run, as host-network Pods in istio-system.
    fn component_pod_objects(&self) -> Vec<(String, Value)> {
        let p = &self.opts.ports;
        workload::COMPONENT_PODS
            .iter()
            .filter_map(|c| {
                let running = self.components.iter().find(|x| x.name == c.component)?;
                let ports: Vec<u16> = match c.component {
                    "galley" => vec![p.galley_http, p.galley_grpc],
                    "pilot" => vec![p.pilot_grpc, p.pilot_http],
                    "mixer" => vec![p.mixer_grpc, p.mixer_prometheus, p.mixer_monitoring],
                    "prometheus" => vec![p.prometheus],
                    "servicegraph" => vec![p.servicegraph],
                    "dashboard" => vec![p.dashboard],
                    _ => Vec::new(),
                };
                let state = running.process.state();
                Some((
                    format!("{GATEWAY_NAMESPACE}/{}", c.name),
                    workload::component_pod_object(
                        c,
                        &ports,
                        &self.started_at,
                        state.running,
                        state.restarts,
                    ),
                ))
            })
            .collect()
    }

    /// Records every running pod in galley (when it changed) and removes Pod objects of pods
    /// that no longer run.
    async fn sync_pod_objects(&mut self, snap: &Snapshot) {
        let host_ip = self.bridge_ip().to_string();
        let mut writes = Vec::new();
        for (key, pod) in &self.pods {
            let obj = workload::pod_object(
                &pod.plan,
                &pod.net.ip.to_string(),
                &host_ip,
                &pod.started_at,
                &self.container_states(pod),
            );
            if self.written.get(key) != Some(&obj) {
                writes.push((key.clone(), obj));
            }
        }
        for (key, obj) in self.component_pod_objects() {
            if self.written.get(&key) != Some(&obj) {
                writes.push((key, obj));
            }
        }
        if !writes.is_empty() {
            let sources: Vec<Source> = writes
                .iter()
                .map(|(key, obj)| Source {
                    name: format!("pod {key}"),
                    text: obj.to_string(),
                })
                .collect();
            match self.galley.apply(&sources, "default", false).await {
                Ok(_) => self.written.extend(writes),
                Err(e) => tracing::warn!(error = %e, "cannot record pods in galley"),
            }
        }
        for r in snap.resources.values() {
            if r.kind != Kind::Pod
                || r.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(MANAGED_BY))
                    .is_none()
            {
                continue;
            }
            let key = format!("{}/{}", r.namespace(), r.name());
            let component = r
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(workload::COMPONENT));
            if !component
                && !self.pods.contains_key(&key)
                && let Err(e) = self.galley.delete("pods", r.namespace(), r.name()).await
            {
                tracing::warn!(pod = %key, error = %e, "cannot remove a stale Pod from galley");
            }
        }
    }

    /// Which proxies pilot has seen acknowledge their listeners.
    async fn refresh_sync(&mut self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.opts.ports.pilot_http));
        let Ok((200, body)) = http_get(addr, "/debug/syncz").await else {
            return;
        };
        let Ok(Value::Array(proxies)) = serde_json::from_str::<Value>(&body) else {
            return;
        };
        self.synced = proxies
            .iter()
            .filter(|p| {
                let t = &p["types"][LISTENER_TYPE];
                !t["acked"].is_null() && t["acked"] == t["sent"]
            })
            .filter_map(|p| p["proxy"].as_str().map(str::to_owned))
            .collect();
    }

    fn refresh_status(&mut self) {
        let layout = self.opts.layout.clone();
        self.status.components = self
            .components
            .iter()
            .map(|c| {
                let st = c.process.state();
                ComponentStatus {
                    name: c.name.to_owned(),
                    ready: c.ready && st.running,
                    pid: st.pid,
                    restarts: st.restarts,
                    log: layout.component_log(c.name).display().to_string(),
                    message: (!st.running).then(|| st.last_exit.clone()).flatten(),
                }
            })
            .collect();
        self.status.pods = self
            .pods
            .values()
            .map(|p| {
                let containers: Vec<ContainerStatus> = self
                    .container_states(p)
                    .into_iter()
                    .map(|c| ContainerStatus {
                        log: layout
                            .container_log(&p.plan.namespace, &p.plan.name, &c.name)
                            .display()
                            .to_string(),
                        name: c.name,
                        running: c.running,
                        ready: c.ready,
                        restarts: c.restarts,
                    })
                    .collect();
                PodStatus {
                    namespace: p.plan.namespace.clone(),
                    name: p.plan.name.clone(),
                    ip: p.net.ip.to_string(),
                    ready: containers.iter().all(|c| c.ready),
                    sidecar: p.sidecar.is_some(),
                    containers,
                }
            })
            .collect();
    }

    async fn shutdown(&mut self) {
        self.status.phase = if self.status.phase == Phase::Failed {
            Phase::Failed
        } else {
            Phase::Stopping
        };
        self.status.progress = "stopping".into();
        self.write_status();
        for f in self.forwarders.drain(..) {
            f.abort();
        }
        let keys: Vec<String> = self.pods.keys().cloned().collect();
        for key in keys {
            // Galley is about to go; Pod objects are not deleted one by one.
            self.written.remove(&key);
            self.stop_pod(&key).await;
        }
        self.prometheus = None;
        while let Some(c) = self.components.pop() {
            c.process.stop().await;
        }
        capture::remove_service_rules();
        remove_vip_route();
        if let Err(e) = self.net.remove_all() {
            tracing::warn!(error = %e, "cannot remove the pod network");
        }
        remove_etc_istio(&self.opts.layout);
        restore_reserved_ports(&self.opts.layout);
        let _ = std::fs::remove_file(self.opts.layout.runtime_pid());
    }
}

/// Secrets mounted into the gateway, and their directories under `/etc/istio`.
const GATEWAY_SECRETS: &[(&str, &str)] = &[
    ("istio-ingressgateway-certs", "ingressgateway-certs"),
    ("istio-ingressgateway-ca-certs", "ingressgateway-ca-certs"),
];

/// The gateway pod's `/etc/istio/ingressgateway-*certs` directories. `ip netns exec`
/// bind-mounts `/etc/netns/NS/istio` over `/etc/istio`, which must exist on the host: the
/// runtime creates it when missing and records that, so teardown removes it again.
fn gateway_cert_dirs(layout: &Layout, netns: &str) -> Result<(), RuntimeError> {
    let host = Path::new("/etc/istio");
    if !host.exists() {
        std::fs::write(layout.home.join(CREATED_ETC_ISTIO), "/etc/istio\n")
            .map_err(|e| start_err("recording /etc/istio", e))?;
        std::fs::create_dir_all(host).map_err(|e| start_err("creating /etc/istio", e))?;
    }
    for (_, dir) in GATEWAY_SECRETS {
        let d = dns::netns_etc(netns).join("istio").join(dir);
        std::fs::create_dir_all(&d).map_err(|e| start_err(d.display().to_string(), e))?;
    }
    Ok(())
}

/// Marks that this run created `/etc/istio` (removed at teardown when empty).
const CREATED_ETC_ISTIO: &str = "created-etc-istio";

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
/// The reservation setting before this run changed it, when it did.
const RESERVED_BEFORE: &str = "reserved-ports-before";

/// Keeps the mesh's ports that lie in Linux's ephemeral range (mixer's 42422) out of it
/// while the mesh runs, as kubelet does for node ports: otherwise a client connection
/// elsewhere can take the port and the component cannot (re)bind it.
fn reserve_ports(layout: &Layout, ports: &[u16]) {
    let Ok(current) = std::fs::read_to_string(RESERVED_PORTS) else {
        return;
    };
    let current = current.trim().to_owned();
    let listed: Vec<&str> = current.split(',').filter(|p| !p.is_empty()).collect();
    let missing: Vec<String> = ports
        .iter()
        .map(u16::to_string)
        .filter(|p| !listed.contains(&p.as_str()))
        .collect();
    if missing.is_empty() {
        return;
    }
    if std::fs::write(layout.home.join(RESERVED_BEFORE), &current).is_err() {
        return;
    }
    let mut all: Vec<String> = listed.iter().map(|p| (*p).to_owned()).collect();
    all.extend(missing);
    if let Err(e) = std::fs::write(RESERVED_PORTS, all.join(",")) {
        tracing::warn!(error = %e, "cannot reserve the mesh's ports");
        let _ = std::fs::remove_file(layout.home.join(RESERVED_BEFORE));
    }
}

fn restore_reserved_ports(layout: &Layout) {
    let record = layout.home.join(RESERVED_BEFORE);
    if let Ok(before) = std::fs::read_to_string(&record) {
        let value = if before.is_empty() {
            "\n".to_owned()
        } else {
            before
        };
        let _ = std::fs::write(RESERVED_PORTS, value);
        let _ = std::fs::remove_file(record);
    }
}

fn remove_etc_istio(layout: &Layout) {
    if layout.home.join(CREATED_ETC_ISTIO).exists() {
        // Only if empty: something else may have put files there since.
        let _ = std::fs::remove_dir("/etc/istio");
        let _ = std::fs::remove_file(layout.home.join(CREATED_ETC_ISTIO));
    }
}

/// The mesh's namespaces: `default` labelled for injection (as Istio's walkthrough does with
/// `kubectl label namespace default istio-injection=enabled`) and `istio-system`.
fn mesh_namespaces() -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n  labels: {{{}: enabled}}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {GATEWAY_NAMESPACE}\n",
        workload::INJECTION_LABEL
    )
}

/// The ingress gateway's Service, with the node ports Istio 1.0 gave it.
fn gateway_service(ports: &Ports) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {GATEWAY_NAME}\n  namespace: {GATEWAY_NAMESPACE}\n  labels: {{app: {GATEWAY_NAME}, istio: ingressgateway}}\nspec:\n  type: NodePort\n  selector: {{app: {GATEWAY_NAME}, istio: ingressgateway}}\n  ports:\n  - {{name: http2, port: 80, targetPort: 80, nodePort: {}}}\n  - {{name: https, port: 443, targetPort: 443, nodePort: {}}}\n",
        ports.gateway_http, ports.gateway_https
    )
}

/// Services for the components under Istio's names and selectors (`get svc prometheus`,
/// `get svc grafana` in the walkthrough). Their pods run on the host network, so the
/// services get addresses but no endpoints inside the mesh: the components are reached on
/// 127.0.0.1 (or with `keelctl port-forward`).
fn component_services(ports: &Ports, addons: bool) -> String {
    let svc = |name: &str, selector: &str, port_list: &[(&str, u16)]| {
        let ports: Vec<String> = port_list
            .iter()
            .map(|(n, p)| format!("  - {{name: {n}, port: {p}}}\n"))
            .collect();
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  labels: {{{selector}}}\n  annotations: {{keel.dev/component: \"true\"}}\nspec:\n  selector: {{{selector}}}\n  ports:\n{}",
            ports.concat()
        )
    };
    let mut docs = vec![
        svc(
            "istio-galley",
            "istio: galley",
            &[
                ("http-api", ports.galley_http),
                ("grpc-mcp", ports.galley_grpc),
            ],
        ),
        svc(
            "istio-pilot",
            "istio: pilot",
            &[
                ("grpc-xds", ports.pilot_grpc),
                ("http-legacy-discovery", ports.pilot_http),
            ],
        ),
        svc(
            "istio-telemetry",
            "istio-mixer-type: telemetry",
            &[
                ("grpc-mixer", ports.mixer_grpc),
                ("prometheus", ports.mixer_prometheus),
                ("http-monitoring", ports.mixer_monitoring),
            ],
        ),
        svc(
            "istio-policy",
            "istio-mixer-type: policy",
            &[("grpc-mixer", ports.mixer_grpc)],
        ),
    ];
    if addons {
        docs.push(svc(
            "prometheus",
            "app: prometheus",
            &[("http-prometheus", ports.prometheus)],
        ));
        docs.push(svc("grafana", "app: grafana", &[("http", ports.dashboard)]));
        docs.push(svc(
            "servicegraph",
            "app: servicegraph",
            &[("http", ports.servicegraph)],
        ));
    }
    docs.join("---\n")
}

/// The `istio` ConfigMap with the mesh settings pilot honours; access logs go to each
/// proxy's standard output (its `istio-proxy` log), as in Istio's demo profile.
fn mesh_config_map(bridge: &str, mixer_port: u16, policy_checks: bool) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  labels: {{app: istio}}\ndata:\n  mesh: |-\n    accessLogFile: /dev/stdout\n    disablePolicyChecks: {}\n    mixerCheckServer: {bridge}:{mixer_port}\n    mixerReportServer: {bridge}:{mixer_port}\n",
        !policy_checks
    )
}

/// The kinds the runtime follows.
fn subscribe_galley(
    grpc_port: u16,
) -> (
    watch::Receiver<std::sync::Arc<keel_xds::client::ClientState>>,
    tokio::task::JoinHandle<()>,
) {
    let types = [
        Kind::Namespace,
        Kind::Service,
        Kind::Deployment,
        Kind::Pod,
        Kind::Secret,
    ]
    .into_iter()
    .map(|k| k.type_url())
    .collect();
    let mut config = keel_xds::client::ClientConfig::new(
        format!("http://127.0.0.1:{grpc_port}"),
        "local~0.0.0.0~keel-local.istio-system~istio-system.svc.cluster.local",
        types,
    );
    config.consistent = true;
    keel_xds::client::spawn(config, keel_xds::client::AcceptAll)
}

fn network_of(ip: Ipv4Addr, prefix: u8) -> (Ipv4Addr, u8) {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    (Ipv4Addr::from(u32::from(ip) & mask), prefix)
}

/// Pods reach each other and service VIPs through the host, which must route. The VIP range
/// is routed to the bridge so the host's own connections to a VIP (mixer's adapters) reach
/// the nat OUTPUT hook; the guard chain (installed here, before any Service exists) refuses
/// VIP traffic no Service rule rewrote, so it fails at once and never goes out on a link.
fn enable_forwarding(bridge: &str, subnet: (Ipv4Addr, u8)) -> Result<(), RuntimeError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| start_err("enabling IPv4 forwarding", e))?;
    capture::apply_service_rules(&capture::service_rules(&[], subnet, VIP_RANGE))
        .map_err(|e| start_err("installing the VIP guard", e))?;
    let out = std::process::Command::new("ip")
        .args(["route", "replace", VIP_RANGE, "dev", bridge])
        .output()
        .map_err(|e| start_err("adding the VIP route", e))?;
    if !out.status.success() {
        return Err(start_err(
            format!("ip route replace {VIP_RANGE} dev {bridge}"),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    Ok(())
}

/// Removes the VIP route, whichever form it has (older runtimes made it `unreachable`).
fn remove_vip_route() {
    let _ = std::process::Command::new("ip")
        .args(["route", "del", VIP_RANGE])
        .output();
}

/// Kills every process left in a pod's namespace.
fn kill_netns_processes(netns: &str) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", netns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<u32>() {
            crate::supervise::signal(pid, "KILL");
        }
    }
}

/// Removes what a run made, from its files alone: for `keelctl down` after the runtime
/// crashed (or was killed). Idempotent. Returns what could not be removed.
pub fn teardown_from_record(layout: &Layout) -> Vec<String> {
    let mut problems = Vec::new();
    if let Ok(entries) = std::fs::read_dir(layout.pids_dir()) {
        for e in entries.flatten() {
            crate::supervise::kill_from_pid_file(&e.path());
        }
    }
    match Network::open(NetConfig::default(), &layout.net_state()) {
        Ok(mut net) => {
            for p in net.state().pods.clone() {
                kill_netns_processes(&p.netns);
            }
            if let Err(e) = net.remove_all() {
                problems.push(e.to_string());
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    capture::remove_service_rules();
    remove_vip_route();
    remove_etc_istio(layout);
    restore_reserved_ports(layout);
    let _ = std::fs::remove_file(layout.runtime_pid());
    problems
}

/// `keel-local`'s command line (keelctl up builds it).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "keel-local",
    about = "The local mesh's runtime (started by `keelctl up`)"
)]
pub struct Args {
    /// Where the mesh keeps its files ($KEEL_HOME/local).
    #[arg(long)]
    pub home: PathBuf,
    /// The data plane: envoy or keel.
    #[arg(long, default_value = "envoy")]
    pub proxy: DataPlane,
    /// The proxy program (default: Envoy as `find_envoy` finds it, or keel-proxy beside
    /// this binary).
    #[arg(long)]
    pub proxy_binary: Option<PathBuf>,
    /// Where Keel's binaries are (default: beside this binary).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The user's image table (default: images.yaml beside --home).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// No policy checks (Istio's `disablePolicyChecks: true`): sidecars do not ask mixer
    /// before serving a request, so deniers and quotas have no effect.
    #[arg(long)]
    pub disable_policy_checks: bool,
}

impl Args {
    pub fn options(self) -> Options {
        let bin_dir = self.bin_dir.unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."))
        });
        let proxy_binary = self.proxy_binary.unwrap_or_else(|| match self.proxy {
            DataPlane::Envoy => find_envoy(&bin_dir).unwrap_or_else(|| PathBuf::from("envoy")),
            DataPlane::Keel => bin_dir.join("keel-proxy"),
        });
        let images_file = self.images.unwrap_or_else(|| {
            self.home
                .parent()
                .unwrap_or(Path::new("."))
                .join("images.yaml")
        });
        Options {
            layout: Layout::new(self.home),
            bin_dir,
            data_plane: self.proxy,
            proxy_binary,
            net: NetConfig::default(),
            ports: Ports::default(),
            images_file,
            policy_checks: !self.disable_policy_checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_config_map_says_what_keelctl_up_was_asked() {
        for checks in [true, false] {
            let text = mesh_config_map("10.88.0.1", 9091, checks);
            let report = keel_config::load_str("mesh.yaml", &text, Some("istio-system"));
            assert!(report.is_ok(), "{:?}", report.diagnostics);
            let Some(Spec::ConfigMap(cm)) = report.resources.first().map(|r| &r.spec) else {
                panic!("not a ConfigMap: {text}");
            };
            let mesh = &cm.data.as_ref().expect("data")["mesh"];
            let v = &keel_config::yaml::parse_documents(mesh).expect("mesh is YAML")[0].value;
            assert_eq!(v["disablePolicyChecks"], !checks);
            assert_eq!(v["mixerCheckServer"], "10.88.0.1:9091");
            assert_eq!(v["accessLogFile"], "/dev/stdout");
        }
        let svcs = component_services(&Ports::default(), true);
        let report = keel_config::load_str("svc.yaml", &svcs, Some("istio-system"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        assert_eq!(report.resources.len(), 7);
    }

    fn options(dir: &Path, port: u16) -> Options {
        Options {
            layout: Layout::new(dir.join("local")),
            bin_dir: dir.join("bin"),
            data_plane: DataPlane::Keel,
            proxy_binary: dir.join("bin/keel-proxy"),
            net: NetConfig {
                bridge: "keeltest9".into(),
                ..NetConfig::default()
            },
            ports: Ports {
                gateway_http: port,
                ..Ports::default()
            },
            images_file: dir.join("images.yaml"),
            policy_checks: true,
        }
    }

    #[test]
    fn preflight_names_every_missing_piece_and_taken_port() {
        let dir = std::env::temp_dir().join(format!("keel-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let problems = preflight(&options(&dir, port)).join("\n");
        for needle in [
            "keel-galley is not in",
            "keel-pilot is not in",
            "keel-mixer is not in",
            "cargo build --bins",
            "keel-proxy is not at",
            "use --proxy envoy",
            &format!("port {port} (the ingress gateway (HTTP)) is in use"),
        ] {
            assert!(
                problems.contains(needle),
                "{needle:?} missing from:\n{problems}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn data_planes_and_networks_parse() {
        assert_eq!("envoy".parse::<DataPlane>(), Ok(DataPlane::Envoy));
        assert!(
            "nginx"
                .parse::<DataPlane>()
                .unwrap_err()
                .contains("keel or envoy")
        );
        assert_eq!(
            network_of(Ipv4Addr::new(10, 88, 0, 1), 16),
            (Ipv4Addr::new(10, 88, 0, 0), 16)
        );
        assert!(mesh_namespaces().contains("istio-injection: enabled"));
        let svc = gateway_service(&Ports::default());
        let report = keel_config::load_str("gw.yaml", &svc, None);
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        assert!(svc.contains("nodePort: 31380"));
    }
}
