//! `keel-proxy init`: a pod's traffic capture, as Istio's istio-iptables sets it up from the
//! init container — outbound TCP redirected to the proxy's 15001, inbound TCP to the pod's
//! declared ports redirected to 15006, the proxy's own traffic (by uid or gid) exempt so its
//! upstream connections leave as they are, and the app calling its own pod address sent
//! through the inbound side.
//!
//! The rules are the pod's whole nat table in `iptables-restore` form, so applying them
//! again gives the same table (idempotent) and `--remove` restores an empty one. The text is
//! a pure function; the local mesh uses the same one for its pods.

use std::io::Write;
use std::process::{Command, Stdio};

pub const OUTBOUND_CAPTURE_PORT: u16 = 15001;
pub const INBOUND_CAPTURE_PORT: u16 = 15006;
/// Istio's proxy uid/gid.
pub const PROXY_ID: u32 = 1337;

/// What to capture and whom to exempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capture {
    /// Inbound ports to send to the proxy (the pod's declared container ports).
    pub inbound_ports: Vec<u16>,
    /// The proxy runs as this uid; its traffic is not captured.
    pub proxy_uid: Option<u32>,
    /// The proxy runs with this gid; its traffic is not captured.
    pub proxy_gid: Option<u32>,
    pub outbound_port: u16,
    pub inbound_port: u16,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            inbound_ports: Vec::new(),
            proxy_uid: Some(PROXY_ID),
            proxy_gid: None,
            outbound_port: OUTBOUND_CAPTURE_PORT,
            inbound_port: INBOUND_CAPTURE_PORT,
        }
    }
}

/// The pod's nat table with the capture, in iptables-restore form.
pub fn rules(c: &Capture) -> String {
    let mut r = String::from("*nat\n");
    for chain in [
        "ISTIO_INBOUND",
        "ISTIO_IN_REDIRECT",
        "ISTIO_OUTPUT",
        "ISTIO_REDIRECT",
    ] {
        r.push_str(&format!(":{chain} - [0:0]\n"));
    }
    r.push_str(&format!(
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        c.outbound_port
    ));
    r.push_str(&format!(
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}\n",
        c.inbound_port
    ));
    r.push_str("-A PREROUTING -p tcp -j ISTIO_INBOUND\n");
    for port in &c.inbound_ports {
        r.push_str(&format!(
            "-A ISTIO_INBOUND -p tcp --dport {port} -j ISTIO_IN_REDIRECT\n"
        ));
    }
    r.push_str("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n");
    if let Some(uid) = c.proxy_uid {
        r.push_str(&format!(
            "-A ISTIO_OUTPUT -m owner --uid-owner {uid} -j RETURN\n"
        ));
    }
    if let Some(gid) = c.proxy_gid {
        r.push_str(&format!(
            "-A ISTIO_OUTPUT -m owner --gid-owner {gid} -j RETURN\n"
        ));
    }
    // The app calling its own pod address goes through the sidecar's inbound side.
    r.push_str("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -j ISTIO_IN_REDIRECT\n");
    r.push_str("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
    r.push_str("-A ISTIO_OUTPUT -j ISTIO_REDIRECT\n");
    r.push_str("COMMIT\n");
    r
}

/// An empty nat table: what `--remove` restores.
pub const EMPTY_NAT: &str = "*nat\nCOMMIT\n";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot run `{command}`: {source} (is iptables installed? `apt-get install iptables`)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `program args` with `input` on stdin (`iptables-restore`, possibly behind
/// `ip netns exec NS`).
pub fn restore(program: &str, args: &[&str], input: &str) -> Result<(), CaptureError> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, Some(input))
}

/// Runs `cmd`, feeding it `input` when given; a failure carries the command and its stderr.
pub fn run_command(mut cmd: Command, input: Option<&str>) -> Result<(), CaptureError> {
    let command = format!("{cmd:?}").replace('"', "");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| CaptureError::Spawn {
        command: command.clone(),
        source,
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| CaptureError::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `keel-proxy init`'s command line.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "keel-proxy init",
    about = "Set up (or remove) the pod's traffic capture, as Istio's init container does"
)]
pub struct InitArgs {
    /// Inbound ports to capture, comma separated (the pod's container ports).
    #[arg(long, value_delimiter = ',')]
    pub inbound_ports: Vec<u16>,
    /// The proxy's uid, exempt from capture.
    #[arg(long, default_value_t = PROXY_ID)]
    pub proxy_uid: u32,
    /// The proxy's gid, exempt from capture (in addition to the uid).
    #[arg(long)]
    pub proxy_gid: Option<u32>,
    /// Remove the capture (restore an empty nat table).
    #[arg(long)]
    pub remove: bool,
    /// Print the rules instead of applying them.
    #[arg(long)]
    pub dry_run: bool,
}

/// Applies (or removes, or prints) the capture in the current network namespace.
pub fn init(args: &InitArgs, out: &mut dyn Write) -> Result<(), CaptureError> {
    let text = if args.remove {
        EMPTY_NAT.to_owned()
    } else {
        rules(&Capture {
            inbound_ports: args.inbound_ports.clone(),
            proxy_uid: Some(args.proxy_uid),
            proxy_gid: args.proxy_gid,
            ..Capture::default()
        })
    };
    if args.dry_run {
        let _ = out.write_all(text.as_bytes());
        return Ok(());
    }
    restore("iptables-restore", &["-w"], &text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn capture_redirects_both_ways_and_exempts_the_proxy() {
        let r = rules(&Capture {
            inbound_ports: vec![9080, 9443],
            proxy_gid: Some(1337),
            ..Capture::default()
        });
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("-A ISTIO_INBOUND -p tcp --dport 9443 -j ISTIO_IN_REDIRECT\n"));
        assert!(r.contains("REDIRECT --to-ports 15006"));
        assert!(r.contains("REDIRECT --to-ports 15001"));
        // The exemptions come before the catch-all redirect.
        let uid = r.find("--uid-owner 1337 -j RETURN").unwrap();
        let gid = r.find("--gid-owner 1337 -j RETURN").unwrap();
        let redirect = r.find("-A ISTIO_OUTPUT -j ISTIO_REDIRECT").unwrap();
        assert!(uid < redirect && gid < redirect);
        let uid_only = rules(&Capture::default());
        assert!(!uid_only.contains("--gid-owner"));
    }
}
