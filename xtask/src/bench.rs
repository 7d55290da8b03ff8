//! `cargo xtask bench samples`: how long each Bookinfo service takes to answer on loopback.
//!
//! Release binaries, one keep-alive connection, requests one after another (so the figure is
//! the service's own time plus one loopback round trip), a warm-up discarded. Leaf services are
//! measured alone; productpage's API route (no upstream call) measures productpage itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(bin: &Path, port: u16, env: &[(&str, String)]) -> Result<Service> {
    let mut c = Command::new(bin);
    c.args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Service(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{} did not start", bin.display())
}

/// One keep-alive connection; returns per-request latencies.
fn measure(port: u16, path: &str, n: usize) -> Result<Vec<Duration>> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        writer.write_all(req.as_bytes())?;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        if i >= n / 10 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// `cargo build --release --quiet ARGS` in `root`: the benchmarks measure release builds.
/// `what` names what failed to build.
pub fn release_build(root: &Path, args: &[&str], what: &str) -> Result<()> {
    let ok = Command::new("cargo")
        .args(["build", "--release", "--quiet"])
        .args(args)
        .current_dir(root)
        .status()
        .context("running cargo build")?
        .success();
    if !ok {
        bail!("building {what} failed");
    }
    Ok(())
}

pub fn samples(root: &Path, n: usize) -> Result<()> {
    release_build(root, &["-p", "keel-samples"], "keel-samples")?;
    let bin = |name: &str| root.join("target/release").join(name);
    let _ratings = start(&bin("bookinfo-ratings"), 19181, &[])?;
    let _details = start(&bin("bookinfo-details"), 19183, &[])?;
    let _reviews = start(
        &bin("bookinfo-reviews"),
        19182,
        &[("ENABLE_RATINGS", "false".into())],
    )?;
    let _pp = start(&bin("bookinfo-productpage"), 19180, &[])?;
    let cases = [
        ("details", 19183, "/details/0"),
        ("ratings", 19181, "/ratings/0"),
        ("reviews v1", 19182, "/reviews/0"),
        ("productpage", 19180, "/api/v1/products"),
    ];
    let mut rows = Vec::new();
    println!("| service | path | p50 µs | p90 µs | p99 µs | max µs |");
    println!("|---|---|---|---|---|---|");
    for (name, port, path) in cases {
        let mut lat = measure(port, path, n)?;
        lat.sort();
        let (p50, p90, p99, max) = (
            pct(&lat, 0.5),
            pct(&lat, 0.9),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
        );
        println!("| {name} | {path} | {p50:.0} | {p90:.0} | {p99:.0} | {max:.0} |");
        rows.push(format!(
            "{{\"service\":\"{name}\",\"path\":\"{path}\",\"requests\":{n},\"p50_us\":{p50:.1},\"p90_us\":{p90:.1},\"p99_us\":{p99:.1},\"max_us\":{max:.1}}}"
        ));
    }
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("samples.json"), format!("[{}]\n", rows.join(",")))?;
    println!("\nwritten to target/bench/samples.json (latency includes one loopback round trip)");
    Ok(())
}
