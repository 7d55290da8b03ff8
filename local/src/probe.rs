//! Small network helpers of the runtime: readiness probes over HTTP/1.0, the port check of
//! the preflight, and the host-side forwarder that makes the ingress gateway reachable on
//! 127.0.0.1 (as a NodePort would).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe answers are small; a bigger one is cut here.
const MAX_BODY: u64 = 4 << 20;

/// GET `path` from `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.take(MAX_BODY).read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer from {addr}")))?;
        Ok((code, body.to_owned()))
    };
    tokio::time::timeout(PROBE_TIMEOUT, fetch)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("{addr} did not answer"),
            )
        })?
}

/// Whether `port` on loopback, where the mesh's components listen, is taken.
pub fn port_in_use(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// Accepts connections on `listener` and joins each to a new connection to `target`.
pub async fn forward(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!(%target, error = %e, "gateway forward failed"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_read_status_and_body_and_forwarding_joins_both_ends() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = backend.accept().await.unwrap();
                let mut req = [0u8; 1024];
                let _ = s.read(&mut req).await;
                let _ = s
                    .write_all(b"HTTP/1.0 503 Service Unavailable\r\n\r\nnot yet")
                    .await;
            }
        });
        assert_eq!(
            http_get(backend_addr, "/ready").await.unwrap(),
            (503, "not yet".to_owned())
        );
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(forward(front, backend_addr));
        assert_eq!(http_get(front_addr, "/").await.unwrap().0, 503);
        assert!(port_in_use(front_addr.port()));
    }
}
