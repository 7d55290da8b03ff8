//! How adapters find their backends by name (`fluentd-es.logging:24224`).
//!
//! On Kubernetes, mixer's pod resolves cluster names through cluster DNS. In the local mesh
//! mixer runs on the host, where those names mean nothing; the runtime keeps a hosts file
//! with the service names as a pod in istio-system would see them and starts mixer with
//! `--hosts-file`. That file is read on every lookup (it changes as services come and go;
//! lookups happen only when an adapter connects), and names it does not have go to the
//! system resolver.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// Resolves `host:port` addresses; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    hosts_file: Option<PathBuf>,
}

impl Resolver {
    /// Names from `hosts_file` first, when given, then the system resolver.
    pub fn new(hosts_file: Option<PathBuf>) -> Resolver {
        Resolver { hosts_file }
    }

    /// Connects to `address` (`host:port`), by the hosts file when it names the host.
    pub async fn connect(&self, address: &str) -> std::io::Result<tokio::net::TcpStream> {
        if let Some(addr) = self.in_hosts_file(address) {
            return tokio::net::TcpStream::connect(addr).await;
        }
        tokio::net::TcpStream::connect(address).await
    }

    fn in_hosts_file(&self, address: &str) -> Option<SocketAddr> {
        let path = self.hosts_file.as_ref()?;
        let (host, port) = address.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let text = std::fs::read_to_string(path).ok()?;
        lookup(&text, host).map(|ip| SocketAddr::new(ip, port))
    }
}

/// The address `/etc/hosts`-format `text` gives `name` (case-insensitive, first line wins,
/// a trailing dot ignored).
pub fn lookup(text: &str, name: &str) -> Option<IpAddr> {
    let name = name.strip_suffix('.').unwrap_or(name);
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| {
            let mut fields = l.split_whitespace();
            let ip: IpAddr = fields.next()?.parse().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        .next()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HOSTS: &str = "# Written by keel\n127.0.0.1\tlocalhost\n240.240.0.7\tfluentd-es.logging.svc.cluster.local fluentd-es.logging.svc fluentd-es.logging # the VIP\nnot-an-ip\tbroken\n240.240.0.8\tFluentd-ES.logging\n";

    #[test]
    fn names_resolve_like_glibc_reads_hosts() {
        assert_eq!(
            lookup(HOSTS, "fluentd-es.logging"),
            Some("240.240.0.7".parse().unwrap())
        );
        assert_eq!(
            lookup(HOSTS, "FLUENTD-ES.logging.svc.cluster.local."),
            Some("240.240.0.7".parse().unwrap())
        );
        assert_eq!(lookup(HOSTS, "the"), None);
        assert_eq!(lookup(HOSTS, "broken"), None);
        assert_eq!(lookup(HOSTS, "fluentd-es"), None);
    }

    #[tokio::test]
    async fn connect_uses_the_file_then_the_system() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("keel-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("hosts");
        std::fs::write(&file, "127.0.0.1 fluentd-es.logging\n").unwrap();
        let r = Resolver::new(Some(file.clone()));
        r.connect(&format!("fluentd-es.logging:{port}"))
            .await
            .unwrap();
        // Not in the file: the system resolver (which knows localhost).
        r.connect(&format!("localhost:{port}")).await.unwrap();
        // The file is read per lookup: a name removed from it stops resolving by it.
        std::fs::write(&file, "").unwrap();
        assert!(
            r.connect(&format!("fluentd-es.logging:{port}"))
                .await
                .is_err()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
