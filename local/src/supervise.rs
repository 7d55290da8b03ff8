//! Processes that keep running: started (inside a pod's network namespace when it has one),
//! logged to a file, restarted with backoff when they exit, counted, and stopped gently.
//!
//! Backoff follows the kubelet's shape, scaled down for a laptop: 1 s after the first exit,
//! doubling to 30 s, back to 1 s once a run lasted 10 s. Each start's output goes to `LOG`;
//! the previous run's is kept as `LOG.previous` (`keelctl logs --previous`). Every running
//! process has a pid file, so a runtime that crashed can still be cleaned up after.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::watch;

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessSpec {
    /// What logs and status call it (`pilot`, `default/details-v1-x/details`).
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited but `PATH`).
    pub env: BTreeMap<String, String>,
    /// Run inside this network namespace (`ip netns exec`, which also mounts
    /// `/etc/netns/NS/*` over `/etc`).
    pub netns: Option<String>,
    /// Run with this group id (the sidecar's, exempt from capture).
    pub gid: Option<u32>,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

/// What a supervised process is doing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessState {
    pub pid: Option<u32>,
    pub running: bool,
    pub restarts: u32,
    /// The last exit, described (`exit status: 1`), or why it could not start.
    pub last_exit: Option<String>,
    /// Waiting before the next start.
    pub backing_off: bool,
    pub stopped: bool,
}

/// A process under supervision; dropping it stops the process (the child is killed).
#[derive(Debug)]
pub struct Supervised {
    state: watch::Receiver<ProcessState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervised {
    pub fn state(&self) -> ProcessState {
        self.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<ProcessState> {
        self.state.clone()
    }

    /// SIGTERM, then SIGKILL after a grace period; returns once it is gone.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

pub fn supervise(spec: ProcessSpec) -> Supervised {
    let (state_tx, state) = watch::channel(ProcessState::default());
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(run(spec, state_tx, stop_rx));
    Supervised { state, stop, task }
}

fn command(spec: &ProcessSpec) -> Command {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &spec.netns {
        argv.extend(["ip", "netns", "exec", ns].map(str::to_owned));
    }
    if let Some(gid) = spec.gid {
        argv.extend(
            [
                "setpriv",
                "--regid",
                &gid.to_string(),
                "--clear-groups",
                "--",
            ]
            .map(str::to_owned),
        );
    }
    argv.push(spec.program.display().to_string());
    argv.extend(spec.args.iter().cloned());
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd.env_clear();
    cmd.env(
        "PATH",
        std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
    );
    cmd.envs(&spec.env);
    cmd.stdin(Stdio::null());
    cmd.kill_on_drop(true);
    cmd
}

fn open_log(path: &Path, rotate: bool) -> std::io::Result<(Stdio, Stdio)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if rotate && path.exists() {
        let mut previous = path.as_os_str().to_owned();
        previous.push(".previous");
        std::fs::rename(path, previous)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

async fn run(
    spec: ProcessSpec,
    state: watch::Sender<ProcessState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut started_once = false;
    loop {
        let started = Instant::now();
        let spawned = open_log(&spec.log, started_once).and_then(|(out, err)| {
            let mut cmd = command(&spec);
            cmd.stdout(out).stderr(err);
            cmd.spawn()
        });
        started_once = true;
        let exit = match spawned {
            Ok(mut child) => {
                let pid = child.id();
                if let Some(pid) = pid {
                    let _ = std::fs::write(&spec.pid_file, format!("{pid}\n"));
                }
                state.send_modify(|s| {
                    s.pid = pid;
                    s.running = true;
                    s.backing_off = false;
                });
                tracing::info!(process = %spec.name, pid, "started");
                tokio::select! {
                    status = child.wait() => match status {
                        Ok(st) => st.to_string(),
                        Err(e) => format!("cannot wait for it: {e}"),
                    },
                    _ = stop.changed() => {
                        terminate(&mut child, pid).await;
                        let _ = std::fs::remove_file(&spec.pid_file);
                        state.send_modify(|s| {
                            s.running = false;
                            s.pid = None;
                            s.stopped = true;
                        });
                        return;
                    }
                }
            }
            Err(e) => format!("cannot start {}: {e}", spec.program.display()),
        };
        let _ = std::fs::remove_file(&spec.pid_file);
        if started.elapsed() >= HEALTHY_RUN {
            backoff = FIRST_BACKOFF;
        }
        tracing::warn!(process = %spec.name, exit = %exit, backoff_s = backoff.as_secs(), "exited; restarting after backoff");
        state.send_modify(|s| {
            s.running = false;
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(exit);
            s.backing_off = true;
        });
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {
                state.send_modify(|s| { s.backing_off = false; s.stopped = true; });
                return;
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sends SIGTERM to `pid`.
pub fn signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>) {
    if let Some(pid) = pid {
        signal(pid, "TERM");
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Kills what a pid file names, if that process still runs `program` (a pid may have been
/// reused since). For cleaning up after a runtime that crashed.
pub fn kill_from_pid_file(pid_file: &Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    if let Ok(pid) = text.trim().parse::<u32>()
        && std::path::Path::new(&format!("/proc/{pid}")).exists()
    {
        signal(pid, "KILL");
    }
    let _ = std::fs::remove_file(pid_file);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path, script: &str) -> ProcessSpec {
        ProcessSpec {
            name: "t".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: [("GREETING".to_owned(), "hello".to_owned())].into(),
            netns: None,
            gid: None,
            log: dir.join("t.log"),
            pid_file: dir.join("t.pid"),
        }
    }

    async fn wait_for(
        rx: &mut watch::Receiver<ProcessState>,
        what: &str,
        f: impl Fn(&ProcessState) -> bool,
    ) -> ProcessState {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .map(|s| s.clone())
            .unwrap()
    }

    #[tokio::test]
    async fn a_crashing_process_is_restarted_and_counted_with_its_logs_kept() {
        let dir = tempdir("crash");
        let p = supervise(spec(&dir, "echo run $GREETING; exit 3"));
        let mut rx = p.subscribe();
        let s = wait_for(&mut rx, "a restart", |s| s.restarts >= 2).await;
        assert_eq!(s.last_exit.as_deref(), Some("exit status: 3"));
        assert_eq!(
            std::fs::read_to_string(dir.join("t.log.previous")).unwrap(),
            "run hello\n"
        );
        p.stop().await;
    }

    #[tokio::test]
    async fn stop_terminates_a_running_process_and_removes_its_pid_file() {
        let dir = tempdir("stop");
        let p = supervise(spec(&dir, "echo up; exec sleep 60"));
        let mut rx = p.subscribe();
        let s = wait_for(&mut rx, "running", |s| s.running).await;
        let pid = s.pid.unwrap();
        assert!(dir.join("t.pid").exists());
        p.stop().await;
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || {
                // A zombie until reaped; tokio reaps on wait, which stop did.
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(" Z "))
            }
        );
        assert!(!dir.join("t.pid").exists());
        assert_eq!(rx.borrow().restarts, 0);
    }

    fn tempdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keel-supervise-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
