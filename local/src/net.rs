//! Pod networking: a Linux bridge with an address on the host, and per pod a network
//! namespace joined to the bridge by a veth pair, with an address from the bridge's subnet
//! and a default route through the host.
//!
//! Every change is written to the state file *before* it is made (write-ahead), so
//! [`Network::teardown`] removes exactly what a run made, including what a crashed run left.
//! Teardown is idempotent: things already gone are fine.
//!
//! The `ip` command (iproute2) does the work; this needs root.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `ip` (is iproute2 installed?): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("the subnet {base}/{prefix} has no address left for pod {pod}")]
    Exhausted {
        base: Ipv4Addr,
        prefix: u8,
        pod: String,
    },
    #[error(
        "pod name \"{0}\" is not usable as a namespace name (letters, digits, '-', '.', at most 64)"
    )]
    BadName(String),
    #[error("pod {0} already has a network")]
    Exists(String),
}

/// What the network looks like: the bridge and the subnet its pods get addresses from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// At most 15 characters (a Linux interface name).
    pub bridge: String,
    /// The bridge's (host's) address; pods get the following ones.
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// Prefixes veth names (`PREFIX` + a number), at most 9 characters.
    pub veth_prefix: String,
    /// Prefixes namespace names, so `ip netns list` shows which are Keel's.
    pub netns_prefix: String,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            bridge: "keel0".into(),
            gateway: Ipv4Addr::new(10, 88, 0, 1),
            prefix: 16,
            veth_prefix: "keelv".into(),
            netns_prefix: "keel-".into(),
        }
    }
}

/// One pod's network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNet {
    pub pod: String,
    pub netns: String,
    /// The host end of the veth pair (the pod end is `eth0` inside the namespace).
    pub host_veth: String,
    pub ip: Ipv4Addr,
}

/// Everything a run made (or was about to make), as recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    pub config: Option<NetConfig>,
    pub bridge_created: bool,
    pub pods: Vec<PodNet>,
    /// Never reused within a run, so a half-made veth is never mistaken for a new one.
    pub next_veth: u32,
}

/// The bridge and its pods, with the state file that records them.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    state_path: PathBuf,
    state: NetState,
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(NetError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Removal that tolerates "already gone".
fn ip_gone(args: &[&str]) -> Result<(), NetError> {
    match ip(args) {
        Ok(()) => Ok(()),
        Err(NetError::Command { stderr, .. })
            if stderr.contains("Cannot find device")
                || stderr.contains("No such file")
                || stderr.contains("does not exist")
                || stderr.contains("not found") =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn valid_pod_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

impl Network {
    /// Opens the record at `state_path` (a missing file is an empty record).
    pub fn open(config: NetConfig, state_path: &Path) -> Result<Network, NetError> {
        let state = read_state(state_path)?;
        Ok(Network {
            config,
            state_path: state_path.to_owned(),
            state,
        })
    }

    pub fn state(&self) -> &NetState {
        &self.state
    }

    fn save(&self) -> Result<(), NetError> {
        let err = |reason: String| NetError::State {
            path: self.state_path.clone(),
            reason,
        };
        let text = serde_json::to_string_pretty(&self.state).map_err(|e| err(e.to_string()))?;
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.state_path).map_err(|e| err(e.to_string()))
    }

    /// Creates the bridge with the gateway address (idempotent within a run).
    pub fn up(&mut self) -> Result<(), NetError> {
        if self.state.bridge_created {
            return Ok(());
        }
        self.state.config = Some(self.config.clone());
        self.state.bridge_created = true;
        self.save()?;
        let br = self.config.bridge.as_str();
        ip(&["link", "add", br, "type", "bridge"])?;
        let addr = format!("{}/{}", self.config.gateway, self.config.prefix);
        ip(&["addr", "add", &addr, "dev", br])?;
        ip(&["link", "set", br, "up"])
    }

    fn next_address(&self, pod: &str) -> Result<Ipv4Addr, NetError> {
        let base = u32::from(self.config.gateway);
        let host_bits = 32 - u32::from(self.config.prefix);
        let size = 1u32.checked_shl(host_bits).unwrap_or(0);
        let network = base & !(size.wrapping_sub(1));
        let broadcast = network | size.wrapping_sub(1);
        let used: std::collections::HashSet<Ipv4Addr> =
            self.state.pods.iter().map(|p| p.ip).collect();
        (base + 1..broadcast)
            .map(Ipv4Addr::from)
            .find(|a| !used.contains(a))
            .ok_or_else(|| NetError::Exhausted {
                base: Ipv4Addr::from(network),
                prefix: self.config.prefix,
                pod: pod.to_owned(),
            })
    }

    /// Gives `pod` a namespace, a veth pair into the bridge, an address and a default route.
    pub fn add_pod(&mut self, pod: &str) -> Result<PodNet, NetError> {
        if !valid_pod_name(pod) {
            return Err(NetError::BadName(pod.to_owned()));
        }
        if self.state.pods.iter().any(|p| p.pod == pod) {
            return Err(NetError::Exists(pod.to_owned()));
        }
        self.up()?;
        let ip_addr = self.next_address(pod)?;
        let n = self.state.next_veth;
        self.state.next_veth += 1;
        let net = PodNet {
            pod: pod.to_owned(),
            netns: format!("{}{pod}", self.config.netns_prefix),
            host_veth: format!("{}{n}", self.config.veth_prefix),
            ip: ip_addr,
        };
        self.state.pods.push(net.clone());
        self.save()?;
        let peer = format!("{}p", net.host_veth);
        ip(&["netns", "add", &net.netns])?;
        ip(&[
            "link",
            "add",
            &net.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &net.host_veth, "master", &self.config.bridge])?;
        ip(&["link", "set", &net.host_veth, "up"])?;
        ip(&["link", "set", &peer, "netns", &net.netns])?;
        let ns = net.netns.as_str();
        ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
        let addr = format!("{ip_addr}/{}", self.config.prefix);
        ip(&["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        let gw = self.config.gateway.to_string();
        ip(&["-n", ns, "route", "add", "default", "via", &gw])?;
        Ok(net)
    }

    /// Removes one pod's network (idempotent).
    pub fn remove_pod(&mut self, pod: &str) -> Result<(), NetError> {
        let Some(i) = self.state.pods.iter().position(|p| p.pod == pod) else {
            return Ok(());
        };
        let net = self.state.pods[i].clone();
        remove_pod_net(&net)?;
        self.state.pods.remove(i);
        self.save()
    }

    /// Removes everything the record names, then the record itself.
    pub fn teardown(mut self) -> Result<(), NetError> {
        self.remove_all()
    }

    /// [`Network::teardown`] without giving up the handle.
    pub fn remove_all(&mut self) -> Result<(), NetError> {
        let pods = std::mem::take(&mut self.state.pods);
        for p in &pods {
            remove_pod_net(p)?;
        }
        if self.state.bridge_created {
            let bridge = self
                .state
                .config
                .as_ref()
                .map(|c| c.bridge.clone())
                .unwrap_or_else(|| self.config.bridge.clone());
            ip_gone(&["link", "del", &bridge])?;
            self.state.bridge_created = false;
        }
        match std::fs::remove_file(&self.state_path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::State {
                path: self.state_path.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

fn remove_pod_net(p: &PodNet) -> Result<(), NetError> {
    // Deleting the host end removes the pair; deleting the namespace removes what is inside.
    ip_gone(&["link", "del", &p.host_veth])?;
    ip_gone(&["netns", "del", &p.netns])?;
    // The pod's hosts file and resolv.conf (crate::dns), if any were written.
    let etc = crate::dns::netns_etc(&p.netns);
    match std::fs::remove_dir_all(&etc) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetError::State {
            path: etc,
            reason: format!("cannot remove the pod's /etc files: {e}"),
        }),
    }
}

fn read_state(path: &Path) -> Result<NetState, NetError> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| NetError::State {
            path: path.to_owned(),
            reason: format!("not a Keel network record: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NetState::default()),
        Err(e) => Err(NetError::State {
            path: path.to_owned(),
            reason: e.to_string(),
        }),
    }
}
