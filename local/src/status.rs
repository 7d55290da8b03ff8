//! Where a local mesh keeps its files, and the status it publishes for `keelctl status`.
//!
//! Everything a run makes lives under one directory (`$KEEL_HOME/local`): the network
//! record, pid files, logs, galley's configuration, prometheus' data, and `status.json`,
//! which the runtime rewrites (atomically) whenever something changes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The files of one local mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub home: PathBuf,
}

impl Layout {
    pub fn new(home: impl Into<PathBuf>) -> Layout {
        Layout { home: home.into() }
    }
    pub fn status(&self) -> PathBuf {
        self.home.join("status.json")
    }
    pub fn runtime_pid(&self) -> PathBuf {
        self.home.join("runtime.pid")
    }
    pub fn net_state(&self) -> PathBuf {
        self.home.join("network.json")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.home.join("config")
    }
    pub fn pids_dir(&self) -> PathBuf {
        self.home.join("pids")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }
    /// A component's (or the runtime's) log: `logs/pilot.log`.
    pub fn component_log(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }
    /// A container's log: `logs/pods/NS/POD/CONTAINER.log`.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        self.logs_dir()
            .join("pods")
            .join(namespace)
            .join(pod)
            .join(format!("{container}.log"))
    }
    pub fn pod_dir(&self, namespace: &str, pod: &str) -> PathBuf {
        self.home.join("pods").join(namespace).join(pod)
    }
    /// Service names as seen from istio-system, for mixer (`--hosts-file`).
    pub fn mixer_hosts(&self) -> PathBuf {
        self.home.join("mixer-hosts")
    }
    pub fn prometheus_dir(&self) -> PathBuf {
        self.home.join("prometheus")
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    #[default]
    Starting,
    Ready,
    Stopping,
    Failed,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub ready: bool,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub log: String,
    /// Why it is not ready, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub running: bool,
    pub ready: bool,
    pub restarts: u32,
    pub log: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub ip: String,
    pub ready: bool,
    pub sidecar: bool,
    pub containers: Vec<ContainerStatus>,
}

/// What `keelctl status` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The data plane: `envoy` or `keel`.
    pub proxy: String,
    /// Whether sidecars check requests with mixer.
    #[serde(default)]
    pub policy_checks: bool,
    pub phase: Phase,
    /// Why the mesh failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being waited for now.
    pub progress: String,
    pub components: Vec<ComponentStatus>,
    pub pods: Vec<PodStatus>,
    /// Deployments that cannot run, and why.
    pub problems: Vec<String>,
    pub gateway_url: String,
    pub endpoints: BTreeMap<String, String>,
    pub updated: String,
}

impl Status {
    /// Writes atomically: readers see the old or the new status, never half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Status> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// Whether the process that wrote `pid_file` is still alive.
pub fn running_pid(pid_file: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // A zombie is not alive.
    let state = stat.rsplit_once(") ")?.1.chars().next()?;
    (state != 'Z').then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_pids_are_checked() {
        let dir = std::env::temp_dir().join(format!("keel-status-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let layout = Layout::new(&dir);
        let status = Status {
            pid: 7,
            proxy: "envoy".into(),
            phase: Phase::Ready,
            gateway_url: "http://127.0.0.1:31380".into(),
            ..Status::default()
        };
        status.write(&layout.status()).unwrap();
        assert_eq!(Status::read(&layout.status()).unwrap(), status);
        let text = std::fs::read_to_string(layout.status()).unwrap();
        assert!(text.contains("\"phase\": \"ready\""), "{text}");
        std::fs::write(layout.runtime_pid(), format!("{}\n", std::process::id())).unwrap();
        assert_eq!(running_pid(&layout.runtime_pid()), Some(std::process::id()));
        std::fs::write(layout.runtime_pid(), "4194304\n").unwrap();
        assert_eq!(running_pid(&layout.runtime_pid()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
