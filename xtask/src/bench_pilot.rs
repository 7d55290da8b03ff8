//! `cargo xtask bench pilot [--quick]`: pilot at scale (performance.md).
//!
//! For each size (N services, M proxies): galley holds N Kubernetes Services in namespace
//! `bench`, each with two Pods (so the M proxies are real workloads with their own inbound
//! config); pilot runs alone on CPU 1; M stub ADS clients (pilot's `ads_stubs` example, one
//! process) and one real Envoy, a sidecar of pod 0, run on CPU 0 with this driver. Measured:
//! - initial sync: from the stubs' start to the last one holding all four types;
//! - per change (a ServiceEntry added through galley's API): the time from the apply to
//!   each proxy's ACK of the new cluster set, its p50/p99 over proxies, and to the last
//!   one; the same for the Envoy (its `cluster_manager.cds.update_success` counter);
//! - pilot's CPU seconds per change (utime+stime from /proc), its RSS (VmRSS, VmHWM) with
//!   every proxy connected, and the bytes each proxy holds.
//!
//! Writes `target/bench/pilot.json` and `target/bench/pilot.md`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

const GALLEY_HTTP: u16 = 19193;
const GALLEY_GRPC: u16 = 19191;
const PILOT_GRPC: u16 = 19110;
const PILOT_HTTP: u16 = 19180;
const ENVOY_ADMIN: u16 = 19101;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pod I of the benchmark (the same formula as `ads_stubs`).
fn pod(i: usize) -> (String, String) {
    let n = i + 1;
    (
        format!("10.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256),
        format!(
            "svc-{}-{}",
            i / 2,
            if i.is_multiple_of(2) { "a" } else { "b" }
        ),
    )
}

/// N Services, two Pods each.
fn mesh_config(services: usize) -> String {
    let mut docs = Vec::with_capacity(services * 3);
    for s in 0..services {
        docs.push(format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  selector: {{app: svc-{s}}}\n  ports: [{{name: http, port: 8080}}]\n"
        ));
        for i in [2 * s, 2 * s + 1] {
            let (ip, name) = pod(i);
            docs.push(format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: svc-{s}, version: v1}}}}\nspec: {{containers: [{{name: app, image: bench, ports: [{{containerPort: 8080}}]}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n"
            ));
        }
    }
    docs.join("---\n")
}

fn change(k: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: bench-change-{k}, namespace: bench}}\nspec:\n  hosts: [bench-change-{k}.example.com]\n  location: MESH_EXTERNAL\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 192.0.2.{}}}]\n",
        1 + k % 250
    )
}

fn proc_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat: 11 and 12 after the command.
    (ticks(11) + ticks(12)) / 100.0
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

fn envoy_cds_updates() -> Option<u64> {
    let body = http_get(
        ENVOY_ADMIN,
        "/stats?filter=cluster_manager.cds.update_success",
    )
    .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("cluster_manager.cds.update_success: "))
        .and_then(|v| v.trim().parse().ok())
}

fn keelctl_apply(keelctl: &Path, file: &Path) -> Result<()> {
    let ok = Command::new(keelctl)
        .args([
            "--galley",
            &format!("127.0.0.1:{GALLEY_HTTP}"),
            "apply",
            "-f",
        ])
        .arg(file)
        .stdout(Stdio::null())
        .status()
        .context("running keelctl")?
        .success();
    if !ok {
        bail!("keelctl apply -f {} failed", file.display());
    }
    Ok(())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

#[derive(Debug)]
struct SizeResult {
    services: usize,
    proxies: usize,
    sync_s: f64,
    bytes_per_proxy: f64,
    clusters: usize,
    /// Per change: every proxy's seconds to ACK, sorted.
    changes: Vec<Vec<f64>>,
    envoy_ack_s: Vec<f64>,
    pilot_cpu_per_change_s: f64,
    /// The stub proxies' CPU per change (the harness: pushes are only as fast as the
    /// stubs can take them on their one core).
    stubs_cpu_per_change_s: f64,
    pilot_rss_kb: u64,
    pilot_hwm_kb: u64,
}

#[allow(clippy::too_many_arguments)]
fn run_size(
    root: &Path,
    dir: &Path,
    envoy: &Path,
    keelctl: &Path,
    services: usize,
    proxies: usize,
    changes: usize,
) -> Result<SizeResult> {
    let release = root.join("target/release");
    let run = dir.join(format!("{services}x{proxies}"));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(run.join("config"))?;
    let log = |name: &str| -> Result<Stdio> {
        Ok(Stdio::from(std::fs::File::create(
            run.join(format!("{name}.log")),
        )?))
    };
    let _galley = Proc(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(release.join("keel-galley"))
            .arg("--config-dir")
            .arg(run.join("config"))
            .args([
                "--grpc-addr",
                &format!("127.0.0.1:{GALLEY_GRPC}"),
                "--http-addr",
                &format!("127.0.0.1:{GALLEY_HTTP}"),
            ])
            .stdout(Stdio::null())
            .stderr(log("galley")?)
            .spawn()
            .context("starting galley")?,
    );
    wait_port(GALLEY_HTTP, "galley")?;
    let mesh_file = run.join("mesh.yaml");
    std::fs::write(&mesh_file, mesh_config(services))?;
    keelctl_apply(keelctl, &mesh_file)?;
    let pilot = Proc(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(release.join("keel-pilot"))
            .args([
                "--galley",
                &format!("http://127.0.0.1:{GALLEY_GRPC}"),
                "--grpc-addr",
                &format!("127.0.0.1:{PILOT_GRPC}"),
                "--http-addr",
                &format!("127.0.0.1:{PILOT_HTTP}"),
            ])
            .stdout(Stdio::null())
            .stderr(log("pilot")?)
            .spawn()
            .context("starting pilot")?,
    );
    wait_port(PILOT_GRPC, "pilot")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(PILOT_HTTP, "/ready").is_ok_and(|b| b.starts_with("ok")) {
        if Instant::now() > deadline {
            bail!("pilot not ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pilot_pid = pilot.0.id();

    // The stubs, and a thread turning their lines into events.
    let started = Instant::now();
    let mut stubs = Proc(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(release.join("examples/ads_stubs"))
            .args([
                format!("http://127.0.0.1:{PILOT_GRPC}"),
                proxies.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(log("stubs")?)
            .spawn()
            .context("starting the stub proxies")?,
    );
    let stdout = stubs.0.stdout.take().context("stub output")?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut synced = 0usize;
    let mut bytes = 0usize;
    let mut clusters = 0usize;
    let sync_deadline = Instant::now() + Duration::from_secs(600);
    while synced < proxies {
        let line = rx
            .recv_timeout(sync_deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("only {synced} of {proxies} stubs synced"))?;
        if let Some(rest) = line.strip_prefix("synced ") {
            let f: Vec<&str> = rest.split_whitespace().collect();
            synced += 1;
            bytes += f.get(1).and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            clusters = f.get(2).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    let sync_s = started.elapsed().as_secs_f64();

    // One real Envoy, the sidecar of pod 0.
    let (ip, name) = pod(0);
    let boot = run.join("envoy.json");
    let socket = |port: u16| serde_json::json!({"socket_address": {"address": "127.0.0.1", "port_value": port}});
    std::fs::write(
        &boot,
        serde_json::json!({
            "node": {"id": format!("sidecar~{ip}~{name}.bench~bench.svc.cluster.local"), "cluster": "svc-0"},
            "admin": {"address": socket(ENVOY_ADMIN)},
            "dynamic_resources": {
                "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}}}},
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(PILOT_GRPC)}}]}]},
            }]},
        })
        .to_string(),
    )?;
    let _envoy = Proc(
        Command::new("taskset")
            .args(["-c", "0"])
            .arg(envoy)
            .arg("-c")
            .arg(&boot)
            .args([
                "--concurrency",
                "1",
                "--disable-hot-restart",
                "--base-id",
                "31",
                "-l",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(log("envoy")?)
            .spawn()
            .context("starting Envoy")?,
    );
    wait_port(ENVOY_ADMIN, "Envoy's admin")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while envoy_cds_updates().unwrap_or(0) == 0 {
        if Instant::now() > deadline {
            bail!(
                "Envoy never accepted pilot's clusters (see {})",
                run.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the initial pushes settle.
    std::thread::sleep(Duration::from_secs(2));
    while rx.try_recv().is_ok() {}

    let stubs_pid = stubs.0.id();
    let cpu_before = proc_cpu(pilot_pid);
    let stubs_cpu_before = proc_cpu(stubs_pid);
    let mut per_change = Vec::new();
    let mut envoy_ack = Vec::new();
    for k in 1..=changes {
        let file = run.join(format!("change-{k}.yaml"));
        std::fs::write(&file, change(k))?;
        let want = clusters + k;
        let envoy_before = envoy_cds_updates().unwrap_or(0);
        let t0 = unix_nanos();
        let t0_instant = Instant::now();
        keelctl_apply(keelctl, &file)?;
        let mut times: Vec<f64> = Vec::with_capacity(proxies);
        let mut envoy_s = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        while times.len() < proxies || envoy_s.is_none() {
            if Instant::now() > deadline {
                bail!(
                    "change {k}: {} of {proxies} proxies acknowledged within 120 s (Envoy: {envoy_s:?})",
                    times.len()
                );
            }
            if envoy_s.is_none() && envoy_cds_updates().unwrap_or(0) > envoy_before {
                envoy_s = Some(t0_instant.elapsed().as_secs_f64());
            }
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["clusters", _, n, at] = f.as_slice()
                    && n.parse::<usize>().ok() == Some(want)
                    && let Ok(at) = at.parse::<u128>()
                {
                    times.push(at.saturating_sub(t0) as f64 / 1e9);
                }
                if times.len() >= proxies {
                    break;
                }
            }
        }
        times.sort_by(f64::total_cmp);
        eprintln!(
            "xtask: {services} services x {proxies} proxies, change {k}: p50 {:.3} s, p99 {:.3} s, last {:.3} s; Envoy {:.3} s",
            pct(&times, 0.5),
            pct(&times, 0.99),
            pct(&times, 1.0),
            envoy_s.unwrap_or(f64::NAN)
        );
        per_change.push(times);
        envoy_ack.push(envoy_s.unwrap_or(f64::NAN));
        // Pushes settle before the next change.
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu_after = proc_cpu(pilot_pid);
    let stubs_cpu_after = proc_cpu(stubs_pid);
    Ok(SizeResult {
        services,
        proxies,
        sync_s,
        bytes_per_proxy: bytes as f64 / proxies.max(1) as f64,
        clusters,
        changes: per_change,
        envoy_ack_s: envoy_ack,
        pilot_cpu_per_change_s: (cpu_after - cpu_before) / changes.max(1) as f64,
        stubs_cpu_per_change_s: (stubs_cpu_after - stubs_cpu_before) / changes.max(1) as f64,
        pilot_rss_kb: status_kb(pilot_pid, "VmRSS:"),
        pilot_hwm_kb: status_kb(pilot_pid, "VmHWM:"),
    })
}

/// `--size 1000x2000`: services and proxies.
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let (n, m) = s
        .split_once('x')
        .ok_or_else(|| format!("\"{s}\" is not SERVICESxPROXIES (e.g. 1000x2000)"))?;
    let number = |v: &str| {
        v.parse::<usize>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("\"{v}\" in \"{s}\" is not a positive number"))
    };
    Ok((number(n)?, number(m)?))
}

pub fn pilot(root: &Path, envoy: &Path, quick: bool, only: Option<(usize, usize)>) -> Result<()> {
    eprintln!("xtask: building release binaries (keel-pilot, keel-galley, the stub proxies)");
    crate::bench::release_build(
        root,
        &[
            "-p",
            "keel-pilot",
            "-p",
            "keel-galley",
            "--bin",
            "keel-pilot",
            "--bin",
            "keel-galley",
            "--example",
            "ads_stubs",
        ],
        "the release binaries",
    )?;
    let keelctl = if root.join("target/release/keelctl").exists() {
        root.join("target/release/keelctl")
    } else {
        root.join("target/debug/keelctl")
    };
    if !keelctl.exists() {
        bail!("no keelctl: run `cargo build --bins` first");
    }
    let dir = root.join("target/bench/pilot-run");
    std::fs::create_dir_all(&dir)?;
    let _ = Command::new("taskset")
        .args(["-pc", "0", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status();
    let sizes: Vec<(usize, usize)> = match only {
        Some(size) => vec![size],
        None if quick => vec![(100, 100), (1000, 200)],
        None => vec![(100, 100), (1000, 100), (1000, 1000), (1000, 2000)],
    };
    let changes = if quick { 3 } else { 5 };
    let mut results = Vec::new();
    for (services, proxies) in sizes {
        eprintln!("xtask: pilot with {services} services and {proxies} proxies");
        results.push(run_size(
            root, &dir, envoy, &keelctl, services, proxies, changes,
        )?);
    }
    let mut table = String::from(
        "| services | proxies | clusters per proxy | KiB per proxy | initial sync s | change→ACK p50 s | p99 s | last s (median change) | Envoy ACK s | pilot CPU s per change | pilot RSS MiB | pilot HWM MiB | stubs CPU s per change |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut json = Vec::new();
    for r in &results {
        let mut all: Vec<f64> = r.changes.iter().flatten().copied().collect();
        all.sort_by(f64::total_cmp);
        let mut lasts: Vec<f64> = r.changes.iter().map(|c| pct(c, 1.0)).collect();
        lasts.sort_by(f64::total_cmp);
        let mut envoy = r.envoy_ack_s.clone();
        envoy.sort_by(f64::total_cmp);
        let (p50, p99, last, envoy_med) = (
            pct(&all, 0.5),
            pct(&all, 0.99),
            pct(&lasts, 0.5),
            pct(&envoy, 0.5),
        );
        table.push_str(&format!(
            "| {} | {} | {} | {:.1} | {:.2} | {p50:.3} | {p99:.3} | {last:.3} | {envoy_med:.3} | {:.3} | {:.1} | {:.1} | {:.3} |\n",
            r.services,
            r.proxies,
            r.clusters,
            r.bytes_per_proxy / 1024.0,
            r.sync_s,
            r.pilot_cpu_per_change_s,
            r.pilot_rss_kb as f64 / 1024.0,
            r.pilot_hwm_kb as f64 / 1024.0,
            r.stubs_cpu_per_change_s,
        ));
        json.push(serde_json::json!({
            "services": r.services,
            "proxies": r.proxies,
            "clusters_per_proxy": r.clusters,
            "bytes_per_proxy": r.bytes_per_proxy.round(),
            "initial_sync_s": r.sync_s,
            "change_to_ack_p50_s": p50,
            "change_to_ack_p99_s": p99,
            "change_to_last_ack_s": lasts,
            "envoy_ack_s": r.envoy_ack_s,
            "pilot_cpu_s_per_change": r.pilot_cpu_per_change_s,
            "pilot_rss_kb": r.pilot_rss_kb,
            "pilot_hwm_kb": r.pilot_hwm_kb,
            "stubs_cpu_s_per_change": r.stubs_cpu_per_change_s,
            "changes": r.changes.len(),
        }));
    }
    let goal = results
        .iter()
        .find(|r| r.services == 1000 && r.proxies == 2000)
        .map(|r| {
            let mut all: Vec<f64> = r.changes.iter().flatten().copied().collect();
            all.sort_by(f64::total_cmp);
            let p99 = pct(&all, 0.99);
            format!(
                "\nGoal: 1000 services and 2000 proxies, change to ACK p99 under 1 s with pilot on one core: {p99:.3} s ({}).\n",
                if p99 < 1.0 { "met" } else { "not met" }
            )
        })
        .unwrap_or_else(|| "\nThe goal's size (1000 services, 2000 proxies) runs without --quick.\n".into());
    let out = root.join("target/bench");
    std::fs::write(
        out.join("pilot.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    std::fs::write(out.join("pilot.md"), format!("{table}{goal}"))?;
    println!("{table}{goal}\nwritten to target/bench/pilot.json and target/bench/pilot.md");
    Ok(())
}
