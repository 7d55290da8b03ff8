//! `cargo xtask bench proxy [--quick]`: keel-proxy against Envoy, side by side, fed by the
//! same pilot with the same configuration (performance.md).
//!
//! What runs today: the path `direct` (load generator -> backend) and `gateway` (load
//! generator -> proxy as an ingress gateway -> backend), plaintext HTTP/1.1, 1 KiB answers,
//! with nginx and HAProxy (Debian's) as plain L7 hops on the same path for reference (one
//! worker, keep-alive to the backend). The sidecar paths (one and two hops through iptables
//! capture), mTLS and HTTP/2 are not measured yet; the report says so.
//!
//! Method: release builds; galley and pilot started here with a ServiceEntry for the backend
//! and a Gateway + VirtualService for the proxies; each proxy starts from the same JSON
//! bootstrap with one worker. The load generator (this process) is pinned to CPU 0, proxies
//! and backend to CPU 1 (`taskset`). Open loop: each of 16 keep-alive connections sends on a
//! fixed schedule, and latency is measured from the *scheduled* send time, so a stalled
//! proxy cannot hide its queueing (coordinated omission). Candidates are interleaved, runs
//! repeated, medians reported. Proxy CPU is utime+stime from /proc over the measured
//! window; memory is VmRSS before load, at the end, and VmHWM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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

/// The 1 KiB backend (run as `xtask bench-backend PORT`, pinned by the caller).
pub fn backend(port: u16) -> Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
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

fn read_response(reader: &mut BufReader<TcpStream>, line: &mut String) -> std::io::Result<u16> {
    line.clear();
    reader.read_line(line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut len = 0usize;
    loop {
        line.clear();
        if reader.read_line(line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(status)
}

struct Load {
    latencies_us: Vec<u32>,
    requests: u64,
    errors: u64,
    elapsed: Duration,
}

/// Open loop at `rate` requests/s over `CONNECTIONS` connections for `duration`, after
/// `warmup` (not recorded). `rate == 0`: closed loop, as fast as possible (throughput).
fn load(port: u16, rate: u32, warmup: Duration, duration: Duration) -> Load {
    let start = Instant::now() + Duration::from_millis(100);
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
                    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
                    s.set_nodelay(true).ok()?;
                    Some((BufReader::new(s.try_clone().ok()?), s))
                };
                let mut conn = connect();
                let req = b"GET /bench HTTP/1.1\r\nHost: bench\r\n\r\n";
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
                    let ok = match conn.as_mut() {
                        None => false,
                        Some((reader, writer)) => {
                            writer.write_all(req).is_ok()
                                && read_response(reader, &mut line).is_ok_and(|s| s == 200)
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
                    if !ok {
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

fn bootstrap(dir: &Path) -> Result<PathBuf> {
    let socket = |port: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    let boot = serde_json::json!({
        "node": {"id": "router~127.0.0.1~bench-gw.istio-system~istio-system.svc.cluster.local", "cluster": "bench-gw"},
        "admin": {"address": socket(ADMIN)},
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
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(PILOT_GRPC)}}]}]},
        }]},
    });
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, boot.to_string())?;
    Ok(path)
}

const CONFIG: &str = r#"apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: backend, namespace: default}
spec:
  hosts: [backend.bench.local]
  location: MESH_INTERNAL
  ports: [{number: 18090, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: bench-gw, namespace: istio-system}
spec:
  selector: {istio: bench}
  servers: [{port: {number: 18080, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bench, namespace: istio-system}
spec:
  hosts: ["*"]
  gateways: [bench-gw]
  http: [{route: [{destination: {host: backend.bench.local, port: {number: 18090}}}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: bench-gw, namespace: istio-system, labels: {istio: bench}}
spec: {containers: [{name: proxy, image: bench}]}
status: {phase: Running, podIP: 127.0.0.1}
"#;

fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// One measured run of a candidate: proxy started, warmed, loaded at the target rate, then
/// at full speed.
fn run_candidate(name: &str, proxy: Option<Command>, quick: bool) -> Result<Row> {
    let (warmup, duration) = if quick {
        (Duration::from_secs(2), Duration::from_secs(8))
    } else {
        (Duration::from_secs(5), Duration::from_secs(30))
    };
    let (port, child) = match proxy {
        None => (BACKEND, None),
        Some(mut cmd) => {
            let p = spawn(&mut cmd, name)?;
            // Ready once the gateway route answers.
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ok = TcpStream::connect(("127.0.0.1", GATEWAY))
                    .ok()
                    .and_then(|s| {
                        let mut r = BufReader::new(s.try_clone().ok()?);
                        let mut w = s;
                        w.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").ok()?;
                        read_response(&mut r, &mut String::new()).ok()
                    });
                if ok == Some(200) {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{name} did not route to the backend within 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (GATEWAY, Some(p))
        }
    };
    let pid = child.as_ref().map(|c| c.0.id());
    let rss_idle = pid.map(|p| status_kb(p, "VmRSS:")).unwrap_or(0);
    let cpu_before = pid.map(cpu_seconds).unwrap_or(f64::NAN);
    let l = load(port, RATE, warmup, duration);
    let cpu_after = pid.map(cpu_seconds).unwrap_or(f64::NAN);
    let rss_end = pid.map(|p| status_kb(p, "VmRSS:")).unwrap_or(0);
    let hwm = pid.map(|p| status_kb(p, "VmHWM:")).unwrap_or(0);
    let max = load(
        port,
        0,
        Duration::from_secs(1),
        Duration::from_secs(if quick { 4 } else { 10 }),
    );
    let s = &l.latencies_us;
    Ok(Row {
        candidate: name.to_owned(),
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

/// nginx as a plain L7 hop: one process (no master, so its pid is the one measured),
/// keep-alive upstream connections, no access log.
fn nginx_config(dir: &Path) -> Result<PathBuf> {
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    let conf = format!(
        "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 1024; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  upstream backend {{ server 127.0.0.1:{BACKEND}; keepalive 32; }}\n  server {{\n    listen 127.0.0.1:{GATEWAY};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
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

pub fn proxy(root: &Path, envoy: &Path, quick: bool) -> Result<()> {
    eprintln!("xtask: building release binaries (keel-proxy, keel-pilot, keel-galley)");
    let ok = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "keel-proxy",
            "-p",
            "keel-pilot",
            "-p",
            "keel-galley",
            "-p",
            "xtask",
        ])
        .current_dir(root)
        .status()?
        .success();
    if !ok {
        bail!("the release build failed");
    }
    let release = root.join("target/release");
    let dir = root.join("target/bench/proxy-run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config"))?;
    // This process generates load: CPU 0. Everything measured: CPU 1.
    let _ = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let _backend = spawn(
        pinned("1", &release.join("xtask")).args(["bench-backend", &BACKEND.to_string()]),
        "backend",
    )?;
    wait_port(BACKEND, "the backend")?;
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
    std::fs::write(&cfg, CONFIG)?;
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
            &format!("127.0.0.1:{PILOT_GRPC}"),
            "--http-addr",
            &format!("127.0.0.1:{PILOT_HTTP}"),
        ]),
        "pilot",
    )?;
    wait_port(PILOT_GRPC, "pilot")?;
    let boot = bootstrap(&dir)?;
    let keel = || {
        let mut c = pinned("1", &release.join("keel-proxy"));
        c.arg("--bootstrap").arg(&boot).args(["--concurrency", "1"]);
        c
    };
    let envoy_cmd = || {
        let mut c = pinned("1", envoy);
        c.arg("-c")
            .arg(&boot)
            .args(["--concurrency", "1", "--disable-hot-restart", "-l", "error"]);
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
    let repeats = if quick { 1 } else { 3 };
    let mut runs: Vec<Row> = Vec::new();
    for r in 0..repeats {
        eprintln!(
            "xtask: round {}/{repeats}: direct, keel-proxy, envoy, nginx, haproxy",
            r + 1
        );
        runs.push(run_candidate("direct", None, quick)?);
        runs.push(run_candidate("keel-proxy", Some(keel()), quick)?);
        runs.push(run_candidate("envoy", Some(envoy_cmd()), quick)?);
        if let Some(c) = nginx_cmd() {
            runs.push(run_candidate("nginx", Some(c), quick)?);
        }
        if let Some(c) = haproxy_cmd() {
            runs.push(run_candidate("haproxy", Some(c), quick)?);
        }
    }
    let candidates: Vec<&str> = ["direct", "keel-proxy", "envoy", "nginx", "haproxy"]
        .into_iter()
        .filter(|c| runs.iter().any(|r| r.candidate == *c))
        .collect();
    let med = |name: &str, f: &dyn Fn(&Row) -> f64| {
        median(runs.iter().filter(|r| r.candidate == name).map(f).collect())
    };
    let direct = [
        med("direct", &|r| r.p50),
        med("direct", &|r| r.p90),
        med("direct", &|r| r.p99),
    ];
    let mut json = Vec::new();
    let mut table = String::from(
        "| candidate | path | rps | p50 µs | p90 µs | p99 µs | max µs | added p50 | added p90 | added p99 | CPU s/1000 req | RSS idle KiB | RSS end KiB | max rps (1 core) | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for name in candidates {
        let row = |f: &dyn Fn(&Row) -> f64| med(name, f);
        let (p50, p90, p99, max) = (
            row(&|r| r.p50),
            row(&|r| r.p90),
            row(&|r| r.p99),
            row(&|r| r.max),
        );
        let path = match name {
            "direct" => "direct",
            "nginx" | "haproxy" => "l7-hop",
            _ => "gateway",
        };
        let errors: u64 = runs
            .iter()
            .filter(|r| r.candidate == name)
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
        let added = [p50 - direct[0], p90 - direct[1], p99 - direct[2]];
        table.push_str(&format!(
            "| {name} | {path} | {rps:.0} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} | {:.0} | {:.0} | {:.0} | {cpu:.4} | {rss_idle:.0} | {rss_end:.0} | {max_rps:.0} | {errors} |\n",
            added[0], added[1], added[2]
        ));
        json.push(format!(
            "{{\"candidate\":\"{name}\",\"path\":\"{path}\",\"tls\":false,\"protocol\":\"http1\",\"rps_target\":{RATE},\"rps_achieved\":{rps:.1},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1},\"added_p50_us\":{:.1},\"added_p90_us\":{:.1},\"added_p99_us\":{:.1},\"cpu_s_per_1000\":{},\"rss_idle_kb\":{rss_idle:.0},\"rss_end_kb\":{rss_end:.0},\"rss_hwm_kb\":{hwm:.0},\"max_rps\":{max_rps:.0},\"errors\":{errors},\"repeats\":{repeats}}}",
            added[0], added[1], added[2],
            if cpu.is_nan() { "null".to_owned() } else { format!("{cpu:.5}") }
        ));
    }
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "n/a".into()
        }
    };
    let k = |f: &dyn Fn(&Row) -> f64| med("keel-proxy", f);
    let e = |f: &dyn Fn(&Row) -> f64| med("envoy", f);
    let summary = format!(
        "\nkeel-proxy / Envoy (goal in brackets): added p50 {} [≤0.5x], added p99 {} [≤0.5x], CPU per 1000 requests {} [≤0.33x], RSS at the end {} [≤0.2x], max throughput {} [≥1.5x].\nNot measured yet: sidecar paths (one and two hops through capture), mTLS, HTTP/2.\n",
        ratio(k(&|r| r.p50) - direct[0], e(&|r| r.p50) - direct[0]),
        ratio(k(&|r| r.p99) - direct[2], e(&|r| r.p99) - direct[2]),
        ratio(k(&|r| r.cpu_s_per_1000), e(&|r| r.cpu_s_per_1000)),
        ratio(k(&|r| r.rss_end_kb as f64), e(&|r| r.rss_end_kb as f64)),
        ratio(k(&|r| r.max_rps), e(&|r| r.max_rps)),
    );
    let out = root.join("target/bench");
    std::fs::write(out.join("proxy.json"), format!("[{}]\n", json.join(",\n")))?;
    std::fs::write(out.join("proxy.md"), format!("{table}{summary}"))?;
    println!("{table}{summary}\nwritten to target/bench/proxy.json and target/bench/proxy.md");
    Ok(())
}
