//! `keelctl port-forward POD [LOCAL:]REMOTE...`: kubectl's port-forward for the local mesh.
//! Connections to 127.0.0.1:LOCAL are relayed to the pod's address and REMOTE port. A pod in
//! its own network namespace is reached over the bridge; a component (a host-network pod in
//! istio-system, such as grafana-local) already listens on the host, so a forward to the
//! same port has nothing to do and says so, and one to another port relays to loopback.
//! Runs until interrupted, like kubectl's.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use keel_galley::client::GalleyClient;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The pod: `NAME` or `pod/NAME`.
    pub pod: String,
    /// `LOCAL:REMOTE`, or `PORT` for the same port on both sides.
    #[arg(required = true)]
    pub ports: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
}

/// `LOCAL:REMOTE` or `PORT`.
pub fn parse_ports(spec: &str) -> Result<(u16, u16), String> {
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{s:?} in {spec:?} is not a port number"))
    };
    match spec.split_once(':') {
        Some((l, r)) => Ok((port(l)?, port(r)?)),
        None => {
            let p = port(spec)?;
            Ok((p, p))
        }
    }
}

pub async fn run(
    args: &Args,
    client: &GalleyClient,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let name = args
        .pod
        .trim_start_matches("pod/")
        .trim_start_matches("pods/");
    let mut pairs = Vec::new();
    for spec in &args.ports {
        match parse_ports(spec) {
            Ok(p) => pairs.push(p),
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(false);
            }
        }
    }
    let pod = match client.get("pods", &args.namespace, name).await {
        Ok(p) => p,
        Err(e) => {
            writeln!(err, "error: pod {}/{name}: {e}", args.namespace)?;
            return Ok(false);
        }
    };
    let Some(ip) = pod["status"]["podIP"]
        .as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
    else {
        writeln!(
            err,
            "error: pod {}/{name} has no address yet (status {})",
            args.namespace, pod["status"]["phase"]
        )?;
        return Ok(false);
    };
    let host_network = pod["spec"]["hostNetwork"].as_bool() == Some(true);
    let mut tasks = tokio::task::JoinSet::new();
    for (local, remote) in pairs {
        let listen = SocketAddr::new(args.address, local);
        let target = SocketAddr::new(ip, remote);
        if host_network && ip.is_loopback() && local == remote {
            writeln!(
                out,
                "Forwarding from {listen} -> {remote} ({name} runs on this host and listens there already)"
            )?;
            continue;
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                writeln!(err, "error: cannot listen on {listen}: {e}")?;
                return Ok(false);
            }
        };
        writeln!(out, "Forwarding from {listen} -> {remote}")?;
        tasks.spawn(relay(listener, target));
    }
    out.flush()?;
    // Until interrupted (kubectl's port-forward runs in the foreground, or with `&`).
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                term.recv().await;
            } else {
                std::future::pending::<()>().await;
            }
        } => {}
    }
    tasks.abort_all();
    Ok(true)
}

async fn relay(listener: tokio::net::TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, peer)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    eprintln!("Handling connection from {peer}: cannot reach {target}: {e}");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        assert_eq!(parse_ports("3000:3000"), Ok((3000, 3000)));
        assert_eq!(parse_ports("8088"), Ok((8088, 8088)));
        assert_eq!(parse_ports("15601:5601"), Ok((15601, 5601)));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("a:1").unwrap_err().contains("\"a\""));
    }
}
