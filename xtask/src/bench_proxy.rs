//! `cargo xtask bench proxy [--quick]`: keel-proxy against Envoy, side by side, fed by the
//! same pilot with the same configuration (performance.md).
//!
//! Paths, plaintext, 1 KiB answers; HTTP/1.1, and on the gateway and two-hop paths also
//! h2c from the load generator to the first proxy (keel-proxy's `h2_load` example):
//! - `direct`: load generator -> backend on loopback (the floor of `gateway`);
//! - `gateway`: load generator -> proxy as an ingress gateway -> backend, with nginx and
//!   HAProxy (Debian's) as plain L7 hops on the same path for reference (`l7-hop`; one
//!   worker, keep-alive to the backend);
//! - `pod-direct`: from a client pod's network namespace to the backend in a server pod's,
//!   over veth and a bridge, no proxy (the floor of the sidecar paths, Istio's `no_istio`);
//! - `one-hop`: the same with the server pod's sidecar capturing inbound traffic (iptables,
//!   `keel-proxy init`, as Istio's `serveronly`);
//! - `two-hop`: client sidecar -> server sidecar, both capturing (Istio's `both`). CPU and
//!   memory of this path are the two sidecars' sum.
//!
//! Not measured yet, and the report says so: mTLS (no citadel), policy checks and telemetry
//! (pilot runs without mixer, so sidecars carry no mixer filter).
//!
//! Method: release builds; galley and pilot started here with a ServiceEntry, a Gateway +
//! VirtualService, and a Kubernetes Service with its pods for the sidecars; each proxy starts
//! from a JSON bootstrap with one worker. The load generator is pinned to CPU 0 (this
//! process, or `xtask bench-load` inside the client pod's namespace), proxies and backends to
//! CPU 1 (`taskset`). Open loop: each of 16 keep-alive connections sends on a fixed schedule,
//! and latency is measured from the *scheduled* send time, so a stalled proxy cannot hide its
//! queueing (coordinated omission). Candidates are interleaved, runs repeated, medians
//! reported. Proxy CPU is utime+stime from /proc over the measured window; memory is VmRSS
//! before load, at the end, and VmHWM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const GALLEY_HTTP: u16 = 19093;
const GALLEY_GRPC: u16 = 19901;
const PILOT_GRPC: u16 = 19010;
const PILOT_HTTP: u16 = 19080;
const BACKEND: u16 = 18090;
const GATEWAY: u16 = 18080;
const ADMIN: u16 = 19000;
const CONNECTIONS: usize = 16;
const RATE: u32 = 1000;

/// The sidecar paths' network: a bridge on the host and two pod namespaces.
const NET_BRIDGE: &str = "kbench0";
const NET_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 1);
const CLIENT_NS: &str = "kbench-client";
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 2);
const SERVER_NS: &str = "kbench-server";
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 89, 7, 3);
/// The Kubernetes Service the sidecar paths call.
const SERVICE_HOST: &str = "backend.bench.svc.cluster.local";
/// Istio's proxy gid: the capture exempts it, the sidecars run with it.
const PROXY_GID: &str = "1337";

/// Which candidates and paths a run measures (`--only`, `--paths`); empty means all. The
/// floor a path is compared with (`direct`, `pod-direct`) runs whenever that path does.
pub struct Selection {
    candidates: Vec<String>,
    paths: Vec<String>,
    /// HTTP/1.1 always; HTTP/2 too unless `--http1-only`.
    http2: bool,
}

const CANDIDATES: [&str; 4] = ["keel-proxy", "envoy", "nginx", "haproxy"];
const PATHS: [&str; 4] = ["gateway", "l7-hop", "one-hop", "two-hop"];

impl Selection {
    pub fn new(candidates: Vec<String>, paths: Vec<String>, http2: bool) -> Result<Selection> {
        for c in &candidates {
            if !CANDIDATES.contains(&c.as_str()) {
                bail!(
                    "--only: unknown candidate {c:?} (one of {})",
                    CANDIDATES.join(", ")
                );
            }
        }
        for p in &paths {
            if !PATHS.contains(&p.as_str()) {
                bail!("--paths: unknown path {p:?} (one of {})", PATHS.join(", "));
            }
        }
        Ok(Selection {
            candidates,
            paths,
            http2,
        })
    }

    /// The protocols the gateway and two-hop paths are measured with (the others, and
    /// nginx and HAProxy, with HTTP/1.1 only).
    fn protocols(&self) -> Vec<Protocol> {
        if self.http2 {
            vec![Protocol::Http1, Protocol::Http2]
        } else {
            vec![Protocol::Http1]
        }
    }

    fn candidate(&self, name: &str) -> bool {
        self.candidates.is_empty() || self.candidates.iter().any(|c| c == name)
    }

    fn path(&self, name: &str) -> bool {
        self.paths.is_empty() || self.paths.iter().any(|p| p == name)
    }

    fn wants(&self, candidate: &str, path: &str) -> bool {
        self.candidate(candidate) && self.path(path)
    }

    /// Whether any of the sidecar paths is measured (they need the pods' network).
    fn sidecars(&self) -> bool {
        self.path("one-hop") || self.path("two-hop")
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> Result<Proc> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Ok(Proc(
        cmd.spawn().with_context(|| format!("starting {what}"))?,
    ))
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    for _ in 0..300 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {port}")
}

/// The 1 KiB backend (run as `xtask bench-backend PORT [ADDRESS]`, pinned by the caller).
pub fn backend(port: u16, address: IpAddr) -> Result<()> {
    let listener = TcpListener::bind((address, port))?;
    let body = vec![b'k'; 1024];
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    let answer: &'static [u8] = Box::leak(answer.into_boxed_slice());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || {
            let _ = stream.set_nodelay(true);
            let Ok(read_half) = stream.try_clone() else {
                return;
            };
            let mut reader = BufReader::new(read_half);
            let mut writer = stream;
            let mut line = String::new();
            loop {
                let mut len = 0usize;
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut skip = vec![0; len];
                if reader.read_exact(&mut skip).is_err() || writer.write_all(answer).is_err() {
                    return;
                }
            }
        });
    }
    Ok(())
}

/// One response: its status, and whether the server closes the connection after it
/// (`connection: close`; nginx does after `keepalive_requests`).
fn read_response(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
) -> std::io::Result<(u16, bool)> {
    line.clear();
    reader.read_line(line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    let mut close = false;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = lower.strip_prefix("connection:") {
            close |= v.split(',').any(|t| t.trim() == "close");
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok((status, close))
}

struct Load {
    latencies_us: Vec<u32>,
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

/// Where the load generator runs and what it calls.
#[derive(Clone, Copy, Debug)]
struct Target {
    /// Run inside this network namespace (`xtask bench-load` under `ip netns exec`); this
    /// process otherwise.
    netns: Option<&'static str>,
    addr: SocketAddrV4,
    host: &'static str,
    protocol: Protocol,
}

/// What the load generator speaks to the first hop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Protocol {
    Http1,
    /// h2c with prior knowledge (the hops after the first stay HTTP/1.1: the backend speaks
    /// only that).
    Http2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
        }
    }
}

/// The programs the benchmark runs besides the candidates.
struct Tools {
    /// This program (`bench-load`, `bench-probe`, `bench-backend`).
    xtask: PathBuf,
    /// keel-proxy's `h2_load` example: the HTTP/2 load generator.
    h2_load: PathBuf,
}

impl Target {
    fn with(self, protocol: Protocol) -> Target {
        Target { protocol, ..self }
    }

    /// Open loop at `rate` (0: closed loop, as fast as possible) from where the target says.
    fn load(&self, tools: &Tools, rate: u32, warmup: Duration, duration: Duration) -> Result<Load> {
        if self.netns.is_none() && self.protocol == Protocol::Http1 {
            return Ok(load(self.addr.into(), self.host, rate, warmup, duration));
        }
        let mut cmd = match self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "taskset", "-c", "0"]);
                c
            }
            None => {
                let mut c = Command::new("taskset");
                c.args(["-c", "0"]);
                c
            }
        };
        match self.protocol {
            Protocol::Http1 => cmd.arg(&tools.xtask).arg("bench-load"),
            Protocol::Http2 => cmd.arg(&tools.h2_load),
        };
        let where_ = self.netns.unwrap_or("this namespace");
        let out = cmd
            .args([
                &self.addr.to_string(),
                self.host,
                &rate.to_string(),
                &warmup.as_millis().to_string(),
                &duration.as_millis().to_string(),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running the load generator in {where_}"))?;
        if !out.status.success() {
            bail!("the load generator in {where_} failed ({})", out.status);
        }
        parse_load(&String::from_utf8_lossy(&out.stdout), duration)
    }

    /// Waits (30 s at most) until one request through the target answers 200.
    fn ready(&self, tools: &Tools, what: &str) -> Result<()> {
        let ok = match self.netns {
            None => probe(self.addr.into(), self.host, Duration::from_secs(30)),
            Some(ns) => Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(&tools.xtask)
                .args(["bench-probe", &self.addr.to_string(), self.host, "30000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
        };
        if !ok {
            bail!(
                "{what} did not answer 200 for {} (Host {}) within 30 s",
                self.addr,
                self.host
            );
        }
        Ok(())
    }
}

/// One request, retried until it answers 200 or `timeout` passes.
fn probe(addr: SocketAddr, host: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    loop {
        let status = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
            .ok()
            .and_then(|s| {
                let mut r = BufReader::new(s.try_clone().ok()?);
                let mut w = s;
                w.write_all(req.as_bytes()).ok()?;
                read_response(&mut r, &mut String::new()).ok()
            });
        if status.is_some_and(|(s, _)| s == 200) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `xtask bench-probe ADDR HOST TIMEOUT_MS`: exits 0 once a request answers 200.
pub fn probe_main(addr: SocketAddr, host: &str, timeout_ms: u64) -> Result<()> {
    if probe(addr, host, Duration::from_millis(timeout_ms)) {
        Ok(())
    } else {
        bail!("{addr} (Host {host}) did not answer 200 within {timeout_ms} ms")
    }
}

/// `xtask bench-load ADDR HOST RATE WARMUP_MS DURATION_MS`: runs [`load`] and prints
/// `requests errors` on the first line, then one latency (µs) per line.
pub fn load_main(
    addr: SocketAddr,
    host: &str,
    rate: u32,
    warmup_ms: u64,
    duration_ms: u64,
) -> Result<()> {
    let l = load(
        addr,
        host,
        rate,
        Duration::from_millis(warmup_ms),
        Duration::from_millis(duration_ms),
    );
    let mut out = String::with_capacity(l.latencies_us.len() * 4 + 32);
    out.push_str(&format!("{} {}\n", l.requests, l.errors));
    for v in &l.latencies_us {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

fn parse_load(text: &str, elapsed: Duration) -> Result<Load> {
    let mut lines = text.lines();
    let head = lines.next().context("the load generator printed nothing")?;
    let mut counts = head.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(requests)), Some(Ok(errors))) = (counts.next(), counts.next()) else {
        bail!("the load generator's first line is not `requests errors`: {head:?}");
    };
    let mut latencies_us = lines
        .map(str::parse::<u32>)
        .collect::<Result<Vec<_>, _>>()
        .context("the load generator printed a latency that is not a number")?;
    latencies_us.sort_unstable();
    Ok(Load {
        latencies_us,
        requests,
        errors,
        elapsed,
    })
}

/// Open loop at `rate` requests/s over `CONNECTIONS` connections for `duration`, after
/// `warmup` (not recorded). `rate == 0`: closed loop, as fast as possible (throughput).
fn load(addr: SocketAddr, host: &str, rate: u32, warmup: Duration, duration: Duration) -> Load {
    let start = Instant::now() + Duration::from_millis(100);
    let req: &'static [u8] = format!("GET /bench HTTP/1.1\r\nHost: {host}\r\n\r\n")
        .leak()
        .as_bytes();
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let (mut requests, mut errors) = (0u64, 0u64);
                let interval = if rate == 0 {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(CONNECTIONS as f64 / f64::from(rate))
                };
                // Spread the connections' schedules over one interval.
                let offset = interval.mul_f64(c as f64 / CONNECTIONS as f64);
                let connect = || -> Option<(BufReader<TcpStream>, TcpStream)> {
                    let s = TcpStream::connect(addr).ok()?;
                    s.set_nodelay(true).ok()?;
                    Some((BufReader::new(s.try_clone().ok()?), s))
                };
                let mut conn = connect();
                let mut line = String::new();
                let end = start + warmup + duration;
                let mut k: u32 = 0;
                loop {
                    let scheduled = if rate == 0 {
                        Instant::now()
                    } else {
                        start + offset + interval * k
                    };
                    k += 1;
                    if scheduled >= end {
                        break;
                    }
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    let mut closing = false;
                    let ok = match conn.as_mut() {
                        None => false,
                        Some((reader, writer)) => {
                            writer.write_all(req).is_ok()
                                && read_response(reader, &mut line).is_ok_and(|(s, close)| {
                                    closing = close;
                                    s == 200
                                })
                        }
                    };
                    let done = Instant::now();
                    if scheduled >= start + warmup {
                        requests += 1;
                        if ok {
                            lat.push(
                                u32::try_from(done.duration_since(scheduled).as_micros())
                                    .unwrap_or(u32::MAX),
                            );
                        } else {
                            errors += 1;
                        }
                    }
                    // A failed connection, or one the server said it closes (as an HTTP
                    // client does, the next request goes on a new one).
                    if !ok || closing {
                        conn = connect();
                    }
                }
                (lat, requests, errors)
            })
        })
        .collect();
    let mut out = Load {
        latencies_us: Vec::new(),
        requests: 0,
        errors: 0,
        elapsed: duration,
    };
    for t in threads {
        if let Ok((lat, r, e)) = t.join() {
            out.latencies_us.extend(lat);
            out.requests += r;
            out.errors += e;
        }
    }
    out.latencies_us.sort_unstable();
    out
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    // Fields 14 and 15 of stat; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Clone, Debug)]
struct Row {
    candidate: String,
    path: &'static str,
    protocol: &'static str,
    rps_achieved: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    cpu_s_per_1000: f64,
    rss_idle_kb: u64,
    rss_end_kb: u64,
    hwm_kb: u64,
    errors: u64,
    max_rps: f64,
}

/// A proxy's bootstrap: its node id, admin port, and ADS to pilot at `pilot`.
fn bootstrap(
    dir: &Path,
    file: &str,
    node_id: &str,
    cluster: &str,
    pilot: Ipv4Addr,
) -> Result<PathBuf> {
    let socket = |address: Ipv4Addr, port: u16| serde_json::json!({"socket_address": {"address": address.to_string(), "port_value": port}});
    let boot = serde_json::json!({
        "node": {"id": node_id, "cluster": cluster},
        "admin": {"address": socket(Ipv4Addr::LOCALHOST, ADMIN)},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc",
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(pilot, PILOT_GRPC)}}]}]},
        }]},
    });
    let path = dir.join(file);
    std::fs::write(&path, boot.to_string())?;
    Ok(path)
}

/// The gateway path's configuration, and the sidecar paths': a Service `backend` in
/// namespace `bench` whose pod is the server namespace, and a client pod without a service.
fn config() -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {{name: backend, namespace: default}}
spec:
  hosts: [backend.bench.local]
  location: MESH_INTERNAL
  ports: [{{number: {BACKEND}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {{name: bench-gw, namespace: istio-system}}
spec:
  selector: {{istio: bench}}
  servers: [{{port: {{number: {GATEWAY}, name: http, protocol: HTTP}}, hosts: ["*"]}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {{name: bench, namespace: istio-system}}
spec:
  hosts: ["*"]
  gateways: [bench-gw]
  http: [{{route: [{{destination: {{host: backend.bench.local, port: {{number: {BACKEND}}}}}}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: bench-gw, namespace: istio-system, labels: {{istio: bench}}}}
spec: {{containers: [{{name: proxy, image: bench}}]}}
status: {{phase: Running, podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: backend, namespace: bench}}
spec:
  selector: {{app: backend}}
  ports: [{{name: http, port: {BACKEND}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-0, namespace: bench, labels: {{app: backend, version: v1}}}}
spec: {{containers: [{{name: app, image: bench, ports: [{{containerPort: {BACKEND}}}]}}]}}
status: {{phase: Running, podIP: {SERVER_IP}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: client-0, namespace: bench, labels: {{app: client, version: v1}}}}
spec: {{containers: [{{name: app, image: bench}}]}}
status: {{phase: Running, podIP: {CLIENT_IP}}}
"#
    )
}

fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// `program` as a pod's process: in namespace `ns`, with the proxy gid (exempt from the
/// capture), on CPU 1.
fn in_pod(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .args(["setpriv", "--regid", PROXY_GID, "--clear-groups", "--"])
        .args(["taskset", "-c", "1"])
        .arg(program);
    c
}

/// The bench pods' network, removed on drop (and before it is made, in case a previous run
/// was killed).
struct BenchNet;

impl BenchNet {
    fn up() -> Result<BenchNet> {
        remove_net();
        let net = BenchNet;
        let gateway = format!("{NET_GATEWAY}/24");
        ip(&["link", "add", NET_BRIDGE, "type", "bridge"])?;
        ip(&["addr", "add", &gateway, "dev", NET_BRIDGE])?;
        ip(&["link", "set", NET_BRIDGE, "up"])?;
        for (ns, address, veth) in [
            (CLIENT_NS, CLIENT_IP, "kbv-c"),
            (SERVER_NS, SERVER_IP, "kbv-s"),
        ] {
            let peer = format!("{veth}p");
            let address = format!("{address}/24");
            let via = NET_GATEWAY.to_string();
            ip(&["netns", "add", ns])?;
            ip(&["link", "add", veth, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", veth, "master", NET_BRIDGE])?;
            ip(&["link", "set", veth, "up"])?;
            ip(&["link", "set", &peer, "netns", ns])?;
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&["-n", ns, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "route", "add", "default", "via", &via])?;
        }
        Ok(net)
    }

    /// Sets a pod's capture (`keel-proxy init`; no ports: outbound only), or removes it.
    fn capture(&self, keel_proxy: &Path, ns: &str, inbound: Option<u16>) -> Result<()> {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(keel_proxy).arg("init");
        match inbound {
            Some(port) => c.args([
                "--proxy-gid",
                PROXY_GID,
                "--inbound-ports",
                &port.to_string(),
            ]),
            None => c.args(["--proxy-gid", PROXY_GID]),
        };
        let ok = c.stdout(Stdio::null()).status()?.success();
        if !ok {
            bail!("setting the capture in {ns} failed");
        }
        Ok(())
    }

    fn uncapture(&self, keel_proxy: &Path, ns: &str) -> Result<()> {
        let ok = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(keel_proxy)
            .args(["init", "--remove"])
            .status()?
            .success();
        if !ok {
            bail!("removing the capture in {ns} failed");
        }
        Ok(())
    }
}

impl Drop for BenchNet {
    fn drop(&mut self) {
        remove_net();
    }
}

fn remove_net() {
    for args in [
        ["netns", "del", CLIENT_NS],
        ["netns", "del", SERVER_NS],
        ["link", "del", NET_BRIDGE],
    ] {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// One measured run of a candidate on a path: its proxies started, the target answering,
/// then load at the target rate, then at full speed. CPU and memory are the proxies' sum.
fn run_candidate(
    name: &str,
    path: &'static str,
    proxies: Vec<Command>,
    target: Target,
    tools: &Tools,
    quick: bool,
) -> Result<Row> {
    // Quick: 15 cells in well under five minutes (6 s keeps CPU's 10 ms ticks to about 2%).
    let (warmup, duration) = if quick {
        (Duration::from_secs(2), Duration::from_secs(6))
    } else {
        (Duration::from_secs(5), Duration::from_secs(30))
    };
    let mut children = Vec::new();
    for mut cmd in proxies {
        children.push(spawn(&mut cmd, name)?);
    }
    target.ready(tools, &format!("{name} ({path})"))?;
    let pids: Vec<u32> = children.iter().map(|c| c.0.id()).collect();
    let sum_kb = |key: &str| pids.iter().map(|p| status_kb(*p, key)).sum::<u64>();
    let cpu = || {
        if pids.is_empty() {
            f64::NAN
        } else {
            pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>()
        }
    };
    let rss_idle = sum_kb("VmRSS:");
    let cpu_before = cpu();
    let l = target.load(tools, RATE, warmup, duration)?;
    let cpu_after = cpu();
    let rss_end = sum_kb("VmRSS:");
    let hwm = sum_kb("VmHWM:");
    let max = target.load(
        tools,
        0,
        Duration::from_secs(1),
        Duration::from_secs(if quick { 3 } else { 10 }),
    )?;
    let s = &l.latencies_us;
    Ok(Row {
        candidate: name.to_owned(),
        path,
        protocol: target.protocol.name(),
        rps_achieved: l.requests as f64 / l.elapsed.as_secs_f64(),
        p50: pct(s, 0.5),
        p90: pct(s, 0.9),
        p99: pct(s, 0.99),
        max: pct(s, 1.0),
        // The whole window's CPU (warm-up included) over the requests it served.
        cpu_s_per_1000: (cpu_after - cpu_before)
            / ((l.requests as f64 * (1.0 + warmup.as_secs_f64() / duration.as_secs_f64()))
                / 1000.0),
        rss_idle_kb: rss_idle,
        rss_end_kb: rss_end,
        hwm_kb: hwm,
        errors: l.errors,
        max_rps: max.requests as f64 / max.elapsed.as_secs_f64(),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The smallest and largest of the values that are numbers (NaN when none is).
fn min_max(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    values
        .into_iter()
        .filter(|v| !v.is_nan())
        .fold((f64::NAN, f64::NAN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// keel-proxy's value over Envoy's round by round (the candidates ran interleaved, so each
/// pair saw the same machine): the smallest and largest ratio, `None` without pairs.
fn round_ratios(keel: &[f64], envoy: &[f64]) -> Option<(f64, f64)> {
    let ratios = keel
        .iter()
        .zip(envoy)
        .filter(|&(k, e)| *e > 0.0 && !k.is_nan())
        .map(|(k, e)| k / e);
    let (lo, hi) = min_max(ratios);
    (!lo.is_nan()).then_some((lo, hi))
}

/// nginx as a plain L7 hop: one process (no master, so its pid is the one measured),
/// keep-alive upstream connections, no access log.
fn nginx_config(dir: &Path) -> Result<PathBuf> {
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  keepalive_requests 1000000;\n  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 32; keepalive_requests 1000000; }}\n  server {{\n    listen 127.0.0.1:{GATEWAY};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    Ok(path)
}

/// HAProxy as a plain L7 hop: one thread, HTTP mode, connections to the backend reused.
fn haproxy_config(dir: &Path) -> Result<PathBuf> {
    let conf = format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{GATEWAY}\n  default_backend be\nbackend be\n  server s1 127.0.0.1:{BACKEND}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    Ok(path)
}

fn sbin(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

pub fn proxy(root: &Path, envoy: &Path, quick: bool, selection: &Selection) -> Result<()> {
    eprintln!("xtask: building release binaries (keel-proxy, keel-pilot, keel-galley)");
    crate::bench::release_build(
        root,
        &[
            "-p",
            "keel-proxy",
            "-p",
            "keel-pilot",
            "-p",
            "keel-galley",
            "-p",
            "xtask",
        ],
        "the release binaries",
    )?;
    crate::bench::release_build(
        root,
        &["-p", "keel-proxy", "--example", "h2_load"],
        "the HTTP/2 load generator (keel-proxy's h2_load example)",
    )?;
    let release = root.join("target/release");
    let xtask = release.join("xtask");
    let tools = Tools {
        xtask: xtask.clone(),
        h2_load: release.join("examples/h2_load"),
    };
    let keel_proxy = release.join("keel-proxy");
    let dir = root.join("target/bench/proxy-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config"))?;
    // This process generates load: CPU 0. Everything measured: CPU 1.
    let _ = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    // The pods' network for the sidecar paths (root, iproute2, iptables); without it those
    // paths are skipped and the report says why.
    let mut sidecars_failed = false;
    let net = match selection.sidecars().then(BenchNet::up) {
        None => None,
        Some(Ok(net)) => Some(net),
        Some(Err(e)) => {
            eprintln!("xtask: the sidecar paths are skipped: {e:#}");
            sidecars_failed = true;
            None
        }
    };
    let pilot_ip = if net.is_some() {
        NET_GATEWAY
    } else {
        Ipv4Addr::LOCALHOST
    };
    let _backend = spawn(
        pinned("1", &xtask).args(["bench-backend", &BACKEND.to_string()]),
        "backend",
    )?;
    wait_port(BACKEND, "the backend")?;
    let _pod_backend = match net {
        Some(_) => Some(spawn(
            Command::new("ip")
                .args(["netns", "exec", SERVER_NS, "taskset", "-c", "1"])
                .arg(&xtask)
                .args(["bench-backend", &BACKEND.to_string(), "0.0.0.0"]),
            "the server pod's backend",
        )?),
        None => None,
    };
    let _galley = spawn(
        pinned("1", &release.join("keel-galley"))
            .arg("--config-dir")
            .arg(dir.join("config"))
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{GALLEY_GRPC}"),
                "--http-addr",
                &format!("127.0.0.1:{GALLEY_HTTP}"),
            ]),
        "galley",
    )?;
    wait_port(GALLEY_HTTP, "galley")?;
    let cfg = dir.join("bench.yaml");
    std::fs::write(&cfg, config())?;
    let applied = Command::new(if root.join("target/release/keelctl").exists() {
        root.join("target/release/keelctl")
    } else {
        root.join("target/debug/keelctl")
    })
    .args([
        "--galley",
        &format!("127.0.0.1:{GALLEY_HTTP}"),
        "apply",
        "-f",
    ])
    .arg(&cfg)
    .stdout(Stdio::null())
    .status()
    .context("running keelctl (build it with `cargo build --bins`)")?;
    if !applied.success() {
        bail!("applying the benchmark's configuration failed");
    }
    let _pilot = spawn(
        pinned("1", &release.join("keel-pilot")).args([
            "--galley",
            &format!("http://127.0.0.1:{GALLEY_GRPC}"),
            "--grpc-addr",
            &format!("{pilot_ip}:{PILOT_GRPC}"),
            "--http-addr",
            &format!("127.0.0.1:{PILOT_HTTP}"),
        ]),
        "pilot",
    )?;
    wait_port_at(SocketAddrV4::new(pilot_ip, PILOT_GRPC), "pilot")?;
    let gateway_boot = bootstrap(
        &dir,
        "gateway.json",
        "router~127.0.0.1~bench-gw.istio-system~istio-system.svc.cluster.local",
        "bench-gw",
        pilot_ip,
    )?;
    let server_boot = bootstrap(
        &dir,
        "server.json",
        &format!("sidecar~{SERVER_IP}~backend-0.bench~bench.svc.cluster.local"),
        "backend",
        pilot_ip,
    )?;
    let client_boot = bootstrap(
        &dir,
        "client.json",
        &format!("sidecar~{CLIENT_IP}~client-0.bench~bench.svc.cluster.local"),
        "client",
        pilot_ip,
    )?;
    // A proxy's command: keel-proxy or Envoy, one worker, from a bootstrap; `ns` runs it as
    // a pod's sidecar.
    let proxy_cmd = |candidate: &str, boot: &Path, ns: Option<&str>| {
        let program = if candidate == "envoy" {
            envoy
        } else {
            keel_proxy.as_path()
        };
        let mut c = match ns {
            Some(ns) => in_pod(ns, program),
            None => pinned("1", program),
        };
        if candidate == "envoy" {
            c.arg("-c").arg(boot).args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "-l",
                "error",
            ]);
        } else {
            c.arg("--bootstrap").arg(boot).args(["--concurrency", "1"]);
        }
        c
    };
    let nginx = sbin("nginx");
    let haproxy = sbin("haproxy");
    let (nginx_conf, haproxy_conf) = (nginx_config(&dir)?, haproxy_config(&dir)?);
    let nginx_cmd = || {
        nginx.as_ref().map(|bin| {
            let mut c = pinned("1", bin);
            c.arg("-c").arg(&nginx_conf);
            c
        })
    };
    let haproxy_cmd = || {
        haproxy.as_ref().map(|bin| {
            let mut c = pinned("1", bin);
            c.arg("-f").arg(&haproxy_conf).arg("-db");
            c
        })
    };
    let loopback = |port: u16, host: &'static str| Target {
        netns: None,
        addr: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        host,
        protocol: Protocol::Http1,
    };
    let to_server_pod = Target {
        netns: Some(CLIENT_NS),
        addr: SocketAddrV4::new(SERVER_IP, BACKEND),
        host: SERVICE_HOST,
        protocol: Protocol::Http1,
    };
    let repeats = if quick { 1 } else { 3 };
    let mut runs: Vec<Row> = Vec::new();
    for r in 0..repeats {
        eprintln!("xtask: round {}/{repeats}", r + 1);
        let direct = loopback(BACKEND, "bench");
        let gateway = loopback(GATEWAY, "bench");
        if selection.path("gateway") || selection.path("l7-hop") {
            runs.push(run_candidate(
                "direct",
                "direct",
                vec![],
                direct,
                &tools,
                quick,
            )?);
        }
        for protocol in selection.protocols() {
            for candidate in ["keel-proxy", "envoy"] {
                if selection.wants(candidate, "gateway") {
                    let p = vec![proxy_cmd(candidate, &gateway_boot, None)];
                    let target = gateway.with(protocol);
                    runs.push(run_candidate(
                        candidate, "gateway", p, target, &tools, quick,
                    )?);
                }
            }
        }
        for (candidate, cmd) in [("nginx", nginx_cmd()), ("haproxy", haproxy_cmd())] {
            if let (Some(c), true) = (cmd, selection.wants(candidate, "l7-hop")) {
                runs.push(run_candidate(
                    candidate,
                    "l7-hop",
                    vec![c],
                    gateway,
                    &tools,
                    quick,
                )?);
            }
        }
        let Some(net) = net.as_ref() else { continue };
        runs.push(run_candidate(
            "direct",
            "pod-direct",
            vec![],
            to_server_pod,
            &tools,
            quick,
        )?);
        net.capture(&keel_proxy, SERVER_NS, Some(BACKEND))?;
        for candidate in ["keel-proxy", "envoy"] {
            if selection.wants(candidate, "one-hop") {
                let p = vec![proxy_cmd(candidate, &server_boot, Some(SERVER_NS))];
                runs.push(run_candidate(
                    candidate,
                    "one-hop",
                    p,
                    to_server_pod,
                    &tools,
                    quick,
                )?);
            }
        }
        net.capture(&keel_proxy, CLIENT_NS, None)?;
        for protocol in selection.protocols() {
            for candidate in ["keel-proxy", "envoy"] {
                if selection.wants(candidate, "two-hop") {
                    let p = vec![
                        proxy_cmd(candidate, &server_boot, Some(SERVER_NS)),
                        proxy_cmd(candidate, &client_boot, Some(CLIENT_NS)),
                    ];
                    runs.push(run_candidate(
                        candidate,
                        "two-hop",
                        p,
                        to_server_pod.with(protocol),
                        &tools,
                        quick,
                    )?);
                }
            }
        }
        net.uncapture(&keel_proxy, CLIENT_NS)?;
        net.uncapture(&keel_proxy, SERVER_NS)?;
    }
    report(root, &runs, repeats, sidecars_failed)
}

fn wait_port_at(addr: SocketAddrV4, what: &str) -> Result<()> {
    for _ in 0..300 {
        if TcpStream::connect_timeout(&addr.into(), Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {addr}")
}

/// The floor a path's added latency is measured from.
fn floor_of(path: &str) -> &'static str {
    match path {
        "one-hop" | "two-hop" | "pod-direct" => "pod-direct",
        _ => "direct",
    }
}

/// Medians per (candidate, path): the markdown table, the JSON rows and the goal ratios.
fn report(root: &Path, runs: &[Row], repeats: usize, sidecars_failed: bool) -> Result<()> {
    type Cell<'a> = (&'a str, &'static str, &'static str);
    let mut cells: Vec<Cell<'_>> = Vec::new();
    for r in runs {
        let cell = (r.candidate.as_str(), r.path, r.protocol);
        if !cells.contains(&cell) {
            cells.push(cell);
        }
    }
    let med = |(name, path, protocol): Cell<'_>, f: &dyn Fn(&Row) -> f64| {
        median(
            runs.iter()
                .filter(|r| r.candidate == name && r.path == path && r.protocol == protocol)
                .map(f)
                .collect(),
        )
    };
    // Added latency is over the same path without proxies, measured with HTTP/1.1 (the
    // backend speaks nothing else): HTTP/2 rows have none.
    let floor = |path: &str, protocol: &str| {
        if protocol != "http1" {
            return [f64::NAN; 3];
        }
        let f = ("direct", floor_of(path), "http1");
        [med(f, &|r| r.p50), med(f, &|r| r.p90), med(f, &|r| r.p99)]
    };
    let num = |v: f64, digits: usize| {
        if v.is_nan() {
            "null".to_owned()
        } else {
            format!("{v:.digits$}")
        }
    };
    let cell_text = |v: f64| {
        if v.is_nan() {
            "n/a".to_owned()
        } else {
            format!("{v:.0}")
        }
    };
    let values = |(name, path, protocol): Cell<'_>, f: &dyn Fn(&Row) -> f64| -> Vec<f64> {
        runs.iter()
            .filter(|r| r.candidate == name && r.path == path && r.protocol == protocol)
            .map(f)
            .collect()
    };
    let mut spread = format!(
        "\nSpread over the {repeats} rounds (smallest–largest):\n\n| candidate | path | protocol | p50 µs | p99 µs | CPU s/1000 req | max rps (1 core) |\n|---|---|---|---|---|---|---|\n"
    );
    let mut json = Vec::new();
    let mut table = String::from(
        "| candidate | path | protocol | rps | p50 µs | p90 µs | p99 µs | max µs | added p50 | added p90 | added p99 | CPU s/1000 req | RSS idle KiB | RSS end KiB | max rps (1 core) | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for cell in cells.iter().copied() {
        let (name, path, protocol) = cell;
        let row = |f: &dyn Fn(&Row) -> f64| med(cell, f);
        let (p50, p90, p99, max) = (
            row(&|r| r.p50),
            row(&|r| r.p90),
            row(&|r| r.p99),
            row(&|r| r.max),
        );
        let errors: u64 = runs
            .iter()
            .filter(|r| r.candidate == name && r.path == path && r.protocol == protocol)
            .map(|r| r.errors)
            .sum();
        let hwm = row(&|r| r.hwm_kb as f64);
        let (cpu, rss_idle, rss_end, rps, max_rps) = (
            row(&|r| r.cpu_s_per_1000),
            row(&|r| r.rss_idle_kb as f64),
            row(&|r| r.rss_end_kb as f64),
            row(&|r| r.rps_achieved),
            row(&|r| r.max_rps),
        );
        let d = floor(path, protocol);
        let added = [p50 - d[0], p90 - d[1], p99 - d[2]];
        table.push_str(&format!(
            "| {name} | {path} | {protocol} | {rps:.0} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} | {} | {} | {} | {cpu:.4} | {rss_idle:.0} | {rss_end:.0} | {max_rps:.0} | {errors} |\n",
            cell_text(added[0]),
            cell_text(added[1]),
            cell_text(added[2]),
        ));
        let [p50_range, p99_range, cpu_range, max_rps_range] = [
            min_max(values(cell, &|r| r.p50)),
            min_max(values(cell, &|r| r.p99)),
            min_max(values(cell, &|r| r.cpu_s_per_1000)),
            min_max(values(cell, &|r| r.max_rps)),
        ];
        let span = |(lo, hi): (f64, f64), digits: usize| {
            if lo.is_nan() {
                "n/a".to_owned()
            } else {
                format!("{lo:.digits$}–{hi:.digits$}")
            }
        };
        spread.push_str(&format!(
            "| {name} | {path} | {protocol} | {} | {} | {} | {} |\n",
            span(p50_range, 0),
            span(p99_range, 0),
            span(cpu_range, 4),
            span(max_rps_range, 0),
        ));
        let json_range = |(lo, hi): (f64, f64), digits: usize| {
            format!("[{},{}]", num(lo, digits), num(hi, digits))
        };
        json.push(format!(
            "{{\"candidate\":\"{name}\",\"path\":\"{path}\",\"tls\":false,\"protocol\":\"{protocol}\",\"rps_target\":{RATE},\"rps_achieved\":{rps:.1},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1},\"added_p50_us\":{},\"added_p90_us\":{},\"added_p99_us\":{},\"cpu_s_per_1000\":{},\"rss_idle_kb\":{rss_idle:.0},\"rss_end_kb\":{rss_end:.0},\"rss_hwm_kb\":{hwm:.0},\"max_rps\":{max_rps:.0},\"errors\":{errors},\"repeats\":{repeats},\"p50_us_range\":{},\"p99_us_range\":{},\"cpu_s_per_1000_range\":{}}}",
            num(added[0], 1),
            num(added[1], 1),
            num(added[2], 1),
            num(cpu, 5),
            json_range(p50_range, 1),
            json_range(p99_range, 1),
            json_range(cpu_range, 5),
        ));
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 && !a.is_nan() {
            format!("{:.2}x", a / b)
        } else {
            "n/a".into()
        }
    };
    let mut summary = String::new();
    for path in ["gateway", "one-hop", "two-hop"] {
        for protocol in ["http1", "http2"] {
            if !runs
                .iter()
                .any(|r| r.path == path && r.protocol == protocol)
            {
                continue;
            }
            let k = |f: &dyn Fn(&Row) -> f64| med(("keel-proxy", path, protocol), f);
            let e = |f: &dyn Fn(&Row) -> f64| med(("envoy", path, protocol), f);
            let latency = if protocol == "http1" {
                let d = floor(path, protocol);
                format!(
                    "added p50 {} [≤0.5x], added p99 {} [≤0.5x]",
                    ratio(k(&|r| r.p50) - d[0], e(&|r| r.p50) - d[0]),
                    ratio(k(&|r| r.p99) - d[2], e(&|r| r.p99) - d[2]),
                )
            } else {
                // No floor to subtract: the whole latency (the same client and path).
                format!(
                    "p50 {}, p99 {} (whole latency)",
                    ratio(k(&|r| r.p50), e(&|r| r.p50)),
                    ratio(k(&|r| r.p99), e(&|r| r.p99)),
                )
            };
            let cpu_rounds = match round_ratios(
                &values(("keel-proxy", path, protocol), &|r| r.cpu_s_per_1000),
                &values(("envoy", path, protocol), &|r| r.cpu_s_per_1000),
            ) {
                Some((lo, hi)) if repeats > 1 => format!(" (round by round {lo:.2}–{hi:.2}x)"),
                _ => String::new(),
            };
            summary.push_str(&format!(
                "\n{path} ({protocol}): keel-proxy / Envoy (goal in brackets): {latency}, CPU per 1000 requests {}{cpu_rounds} [≤0.33x], RSS at the end {} [≤0.2x], max throughput {} [≥1.5x].",
                ratio(k(&|r| r.cpu_s_per_1000), e(&|r| r.cpu_s_per_1000)),
                ratio(k(&|r| r.rss_end_kb as f64), e(&|r| r.rss_end_kb as f64)),
                ratio(k(&|r| r.max_rps), e(&|r| r.max_rps)),
            ));
        }
    }
    summary.push_str(
        "\nThe two-hop path's CPU and memory are both sidecars' sum. HTTP/2 is h2c from the load generator to the first proxy; the hops after it are HTTP/1.1. Not measured yet: mTLS (no citadel), policy checks and telemetry (no mixer in this run).\n",
    );
    if sidecars_failed {
        summary.push_str("The sidecar paths were skipped: their network (root, iproute2, iptables) could not be set up; see the log.\n");
    }
    let out = root.join("target/bench");
    std::fs::write(out.join("proxy.json"), format!("[{}]\n", json.join(",\n")))?;
    if repeats < 2 {
        spread = String::new();
    }
    std::fs::write(out.join("proxy.md"), format!("{table}{spread}{summary}"))?;
    println!(
        "{table}{spread}{summary}\nwritten to target/bench/proxy.json and target/bench/proxy.md"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_skip_missing_values_and_pair_rounds_in_order() {
        let (lo, hi) = min_max([0.3, f64::NAN, 0.1, 0.2]);
        assert_eq!((lo, hi), (0.1, 0.3));
        assert!(min_max([f64::NAN]).0.is_nan());
        // Round i of one candidate against round i of the other, not smallest against largest.
        let (lo, hi) = round_ratios(&[1.0, 2.0, 3.0], &[4.0, 4.0, 6.0]).unwrap();
        assert_eq!((lo, hi), (0.25, 0.5));
        assert_eq!(round_ratios(&[1.0], &[0.0]), None);
        assert_eq!(round_ratios(&[], &[]), None);
    }
}
