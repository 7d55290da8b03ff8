//! `keelctl up`, `down`, `status` and `logs`: the local mesh (keel-local) from the command
//! line. `up` starts the runtime in the background and follows its status file until the
//! mesh is ready; the others read the same files.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use keel_local::runtime::{self, DataPlane};
use keel_local::status::{Layout, Phase, PodStatus, Status, running_pid};

use crate::output::render;

/// `$KEEL_HOME/local`.
pub fn layout() -> Layout {
    Layout::new(crate::context::keel_home().join("local"))
}

fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The data plane for sidecars and the gateway: envoy, or keel (keel-proxy, once built).
    #[arg(long, default_value = "envoy")]
    pub proxy: String,
    /// How long to wait for the mesh to be ready, in seconds.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
    /// Turn off policy checks (Istio's `disablePolicyChecks: true`): sidecars stop asking
    /// mixer before each request, so deniers and quotas have no effect.
    #[arg(long)]
    pub disable_policy_checks: bool,
}

pub fn up(args: &UpArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let data_plane: DataPlane = match args.proxy.parse() {
        Ok(d) => d,
        Err(e) => {
            writeln!(err, "error: --proxy: {e}")?;
            return Ok(false);
        }
    };
    let layout = layout();
    if let Some(pid) = running_pid(&layout.runtime_pid()) {
        writeln!(
            out,
            "The local mesh is already running (runtime pid {pid}); see `keelctl status`, or stop it with `keelctl down`."
        )?;
        return Ok(true);
    }
    if layout.home.exists() {
        writeln!(out, "Cleaning up after a previous run that did not stop...")?;
        for p in runtime::teardown_from_record(&layout) {
            writeln!(err, "warning: {p}")?;
        }
        std::fs::remove_dir_all(&layout.home)
            .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", layout.home.display()))?;
    }
    let run_args = runtime::Args {
        home: layout.home.clone(),
        proxy: data_plane,
        proxy_binary: None,
        bin_dir: Some(bin_dir()),
        images: None,
        disable_policy_checks: args.disable_policy_checks,
    };
    let options = run_args.clone().options();
    let problems = runtime::preflight(&options);
    let keel_local = bin_dir().join("keel-local");
    let mut problems = problems;
    if !keel_local.is_file() {
        problems.push(format!(
            "keel-local is not in {} (build it with `cargo build --bins`)",
            bin_dir().display()
        ));
    }
    if !problems.is_empty() {
        writeln!(err, "error: cannot start the local mesh:")?;
        for p in problems {
            writeln!(err, "  - {p}")?;
        }
        return Ok(false);
    }
    std::fs::create_dir_all(layout.logs_dir())?;
    let log = layout.component_log("runtime");
    let log_file = std::fs::File::create(&log)?;
    let mut cmd = std::process::Command::new(&keel_local);
    cmd.arg("--home")
        .arg(&layout.home)
        .args(["--proxy", data_plane.name()])
        .arg("--proxy-binary")
        .arg(&options.proxy_binary)
        .arg("--bin-dir")
        .arg(&options.bin_dir)
        .arg("--images")
        .arg(&options.images_file)
        .args((!options.policy_checks).then_some("--disable-policy-checks"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_file.try_clone()?))
        .stderr(Stdio::from(log_file));
    // Its own process group: the mesh outlives this command and the terminal's Ctrl-C.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", keel_local.display()))?;
    writeln!(
        out,
        "Starting the local mesh (data plane: {})...",
        data_plane.name()
    )?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut shown_progress = String::new();
    let mut shown_ready: Vec<String> = Vec::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let status = Status::read(&layout.status()).ok();
        if let Some(s) = &status {
            for c in s.components.iter().filter(|c| c.ready) {
                if !shown_ready.contains(&c.name) {
                    writeln!(out, "  ✔ {} ready", c.name)?;
                    shown_ready.push(c.name.clone());
                }
            }
            if !s.progress.is_empty() && s.progress != shown_progress {
                writeln!(out, "  … {}", s.progress)?;
                shown_progress = s.progress.clone();
            }
            match s.phase {
                Phase::Ready => {
                    writeln!(out, "  ✔ ingress gateway ready")?;
                    print_next_steps(s, out)?;
                    return Ok(true);
                }
                Phase::Failed => {
                    writeln!(
                        err,
                        "error: {}",
                        s.error.as_deref().unwrap_or("the local mesh failed")
                    )?;
                    let _ = child.wait();
                    return Ok(false);
                }
                Phase::Starting | Phase::Stopping => {}
            }
        }
        if let Ok(Some(exit)) = child.try_wait() {
            writeln!(
                err,
                "error: the runtime exited ({exit}) before the mesh was ready; the end of {}:\n{}",
                log.display(),
                tail(&log, 20)
            )?;
            return Ok(false);
        }
        if Instant::now() > deadline {
            writeln!(
                err,
                "error: the mesh was not ready after {} s (still: {}); it keeps starting in the background: `keelctl status`, `keelctl down`",
                args.timeout,
                status.map(|s| s.progress).unwrap_or_default()
            )?;
            return Ok(false);
        }
    }
}

fn print_next_steps(s: &Status, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "\nKeel is up (data plane: {}).\n", s.proxy)?;
    writeln!(
        out,
        "  export GATEWAY_URL={}",
        s.gateway_url.trim_start_matches("http://")
    )?;
    for name in ["prometheus", "dashboard", "servicegraph"] {
        if let Some(p) = s.endpoints.get(name) {
            writeln!(out, "  {name}: {p}")?;
        }
    }
    writeln!(
        out,
        "\nTry:\n  keelctl apply -f samples/bookinfo/platform/kube/bookinfo.yaml\n  keelctl apply -f samples/bookinfo/networking/bookinfo-gateway.yaml\n  keelctl get pods\n  curl -s http://$GATEWAY_URL/productpage | grep -o '<title>.*</title>'\n\n`keelctl status` shows the mesh; `keelctl down` stops it and removes everything it made."
    )
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// Seconds to wait for the runtime to stop before killing it.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

pub fn down(args: &DownArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let layout = layout();
    if !layout.home.exists() {
        writeln!(out, "No local mesh is running.")?;
        return Ok(true);
    }
    if !runtime::is_root() {
        writeln!(
            err,
            "error: keelctl down needs root, as keelctl up did (run it with sudo)"
        )?;
        return Ok(false);
    }
    if let Some(pid) = running_pid(&layout.runtime_pid()) {
        writeln!(out, "Stopping the local mesh (runtime pid {pid})...")?;
        keel_local::supervise::signal(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(args.timeout);
        while running_pid(&layout.runtime_pid()).is_some() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if running_pid(&layout.runtime_pid()).is_some() {
            writeln!(
                err,
                "warning: the runtime did not stop in {} s; killing it",
                args.timeout
            )?;
            keel_local::supervise::signal(pid, "KILL");
        }
    }
    // Whatever the runtime did not remove (or all of it, after a crash), from the record.
    let problems = runtime::teardown_from_record(&layout);
    for p in &problems {
        writeln!(err, "warning: {p}")?;
    }
    std::fs::remove_dir_all(&layout.home)
        .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", layout.home.display()))?;
    writeln!(
        out,
        "The local mesh is down: its processes, network namespaces, bridge, iptables rules and files are removed."
    )?;
    Ok(problems.is_empty())
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Output: table (default) or json.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

/// The status file, with the phase corrected when the runtime is gone.
pub fn read_status() -> Result<Status, String> {
    let layout = layout();
    let mut s = Status::read(&layout.status())
        .map_err(|_| "no local mesh is running (start one with `keelctl up`)".to_owned())?;
    if running_pid(&layout.runtime_pid()).is_none() && s.phase != Phase::Failed {
        s.phase = Phase::Failed;
        s.error = Some(
            "the runtime is not running (it crashed or was killed): `keelctl down` cleans up, then `keelctl up`"
                .into(),
        );
    }
    Ok(s)
}

pub fn status(args: &StatusArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let s = match read_status() {
        Ok(s) => s,
        Err(e) => {
            writeln!(err, "{e}")?;
            return Ok(false);
        }
    };
    if args.output.as_deref() == Some("json") {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(s.phase != Phase::Failed);
    }
    let phase = match s.phase {
        Phase::Starting => format!("starting ({})", s.progress),
        Phase::Ready => "ready".into(),
        Phase::Stopping => "stopping".into(),
        Phase::Failed => "failed".into(),
    };
    writeln!(
        out,
        "Mesh:     {phase} (data plane {}, policy checks {}, runtime pid {})",
        s.proxy,
        if s.policy_checks { "on" } else { "off" },
        s.pid
    )?;
    if let Some(e) = &s.error {
        writeln!(out, "Error:    {e}")?;
    }
    writeln!(out, "Gateway:  {}\n", s.gateway_url)?;
    let mut rows = vec![vec![
        "COMPONENT".to_owned(),
        "READY".into(),
        "RESTARTS".into(),
        "PID".into(),
    ]];
    for c in &s.components {
        rows.push(vec![
            c.name.clone(),
            c.ready.to_string(),
            c.restarts.to_string(),
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    write!(out, "{}", render(&rows))?;
    let mut rows = vec![vec![
        "NAMESPACE".to_owned(),
        "POD".into(),
        "READY".into(),
        "RESTARTS".into(),
        "IP".into(),
    ]];
    for p in &s.pods {
        let ready = p.containers.iter().filter(|c| c.ready).count();
        rows.push(vec![
            p.namespace.clone(),
            p.name.clone(),
            format!("{ready}/{}", p.containers.len()),
            p.containers
                .iter()
                .map(|c| c.restarts)
                .sum::<u32>()
                .to_string(),
            p.ip.clone(),
        ]);
    }
    writeln!(out)?;
    write!(out, "{}", render(&rows))?;
    writeln!(out, "\nEndpoints:")?;
    for (name, url) in &s.endpoints {
        writeln!(out, "  {name:<17} {url}")?;
    }
    if !s.problems.is_empty() {
        writeln!(out, "\nProblems:")?;
        for p in &s.problems {
            writeln!(out, "  - {p}")?;
        }
    }
    Ok(s.phase != Phase::Failed)
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// A pod (`NAME`, or `deploy/NAME` for a Deployment's first pod), or a component:
    /// galley, pilot, mixer, prometheus, ingressgateway, runtime.
    pub target: String,
    /// The container (default: the pod's first application container; `istio-proxy` is
    /// the sidecar).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Keep printing new lines.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The previous run's output (after a restart).
    #[arg(short = 'p', long)]
    pub previous: bool,
}

/// Which log file `keelctl logs` reads.
pub fn log_path(args: &LogsArgs, s: &Status, layout: &Layout) -> Result<PathBuf, String> {
    let components = [
        "galley",
        "pilot",
        "mixer",
        "prometheus",
        "servicegraph",
        "dashboard",
        "runtime",
    ];
    if components.contains(&args.target.as_str()) {
        return Ok(layout.component_log(&args.target));
    }
    // A component's host-network Pod (`istio-telemetry-local`, `pod/prometheus-local`).
    let target = args.target.trim_start_matches("pod/");
    if let Some(c) = keel_local::workload::COMPONENT_PODS
        .iter()
        .find(|c| c.name == target)
    {
        return Ok(layout.component_log(c.component));
    }
    if args.target == "citadel" {
        return Err("citadel is not part of the local mesh yet (mutual TLS comes with it)".into());
    }
    let (namespace, pod): (&str, Option<&PodStatus>) = if matches!(
        args.target.as_str(),
        "ingressgateway" | "istio-ingressgateway"
    ) {
        (
            runtime::GATEWAY_NAMESPACE,
            s.pods.iter().find(|p| {
                p.namespace == runtime::GATEWAY_NAMESPACE
                    && p.name.starts_with(runtime::GATEWAY_NAME)
            }),
        )
    } else if let Some(deploy) = args
        .target
        .strip_prefix("deploy/")
        .or_else(|| args.target.strip_prefix("deployment/"))
    {
        let ns = args.namespace.as_str();
        let prefix = format!("{deploy}-");
        (
            ns,
            s.pods.iter().find(|p| {
                p.namespace == ns
                    && p.name
                        .strip_prefix(&prefix)
                        .is_some_and(|rest| rest.matches('-').count() == 1)
            }),
        )
    } else {
        let ns = args.namespace.as_str();
        (
            ns,
            s.pods
                .iter()
                .find(|p| p.namespace == ns && p.name == args.target),
        )
    };
    let pod = pod.ok_or_else(|| {
        format!(
            "Error from server (NotFound): pods \"{}\" not found in namespace {namespace}",
            args.target
        )
    })?;
    let container = match &args.container {
        Some(c) => pod
            .containers
            .iter()
            .find(|x| &x.name == c)
            .ok_or_else(|| {
                format!(
                    "container {c} is not valid for pod {}: choose one of [{}]",
                    pod.name,
                    pod.containers
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            })?,
        None => pod
            .containers
            .iter()
            .find(|c| c.name != "istio-proxy")
            .or_else(|| pod.containers.first())
            .ok_or_else(|| format!("pod {} has no containers", pod.name))?,
    };
    Ok(PathBuf::from(&container.log))
}

pub fn logs(args: &LogsArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let layout = layout();
    let s = match Status::read(&layout.status()) {
        Ok(s) => s,
        Err(_) => {
            writeln!(
                err,
                "no local mesh is running (start one with `keelctl up`)"
            )?;
            return Ok(false);
        }
    };
    let mut path = match log_path(args, &s, &layout) {
        Ok(p) => p,
        Err(e) => {
            writeln!(err, "{e}")?;
            return Ok(false);
        }
    };
    if args.previous {
        let mut p = path.into_os_string();
        p.push(".previous");
        path = PathBuf::from(p);
        if !path.exists() {
            writeln!(
                err,
                "previous terminated container not found: it has not restarted"
            )?;
            return Ok(false);
        }
    }
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            writeln!(err, "cannot read {}: {e}", path.display())?;
            return Ok(false);
        }
    };
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    out.write_all(&buf)?;
    out.flush()?;
    if !args.follow {
        return Ok(true);
    }
    let mut pos = buf.len() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        // A restart rotates the file: follow the new one from its start.
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            if let Ok(f) = std::fs::File::open(&path) {
                file = f;
            }
            pos = 0;
        }
        file.seek(std::io::SeekFrom::Start(pos))?;
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk)?;
        if !chunk.is_empty() {
            pos += chunk.len() as u64;
            out.write_all(&chunk)?;
            out.flush()?;
        }
    }
}
