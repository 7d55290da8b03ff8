//! Listeners: the bound ones get a socket and an accept loop; connections captured by
//! iptables arrive at a `use_original_dst` listener and are handed to the listener of their
//! original destination (exact address first, then `0.0.0.0:PORT`), as Envoy does.
//!
//! A listener is looked up by name for each connection, so a changed listener applies to
//! new connections while open ones finish on the config they started with. A listener whose
//! address is gone from the config stops accepting; its connections are left to finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::Shared;
use crate::inspect::{Hello, MAX_HELLO, Seen, choose, client_hello};
use crate::model::{Config, Listener, NetworkFilter};

/// The original destination of a connection redirected by iptables (SO_ORIGINAL_DST).
fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    socket2::SockRef::from(stream)
        .original_dst_v4()
        .ok()
        .and_then(|a| a.as_socket())
}

/// The listener a connection to `dst` belongs to: exact address, then the wildcard one.
pub fn listener_for(config: &Config, dst: SocketAddr) -> Option<Arc<Listener>> {
    let mut wildcard = None;
    for l in config.listeners.values() {
        if l.address == dst {
            return Some(l.clone());
        }
        if l.address.port() == dst.port() && l.address.ip().is_unspecified() && !l.use_original_dst
        {
            wildcard = Some(l.clone());
        }
    }
    wildcard
}

/// Keeps one accept loop per bound listener address, following config changes.
pub async fn manage(shared: Arc<Shared>) {
    let mut config_rx = shared.config.clone();
    let mut running: HashMap<SocketAddr, (String, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        let config = config_rx.borrow_and_update().clone();
        let wanted: HashMap<SocketAddr, String> = config
            .listeners
            .values()
            .filter(|l| l.bind)
            .map(|l| (l.address, l.name.clone()))
            .collect();
        running.retain(|addr, (name, task)| {
            let keep = wanted.get(addr) == Some(name);
            if !keep {
                tracing::info!(listener = %name, %addr, "listener removed");
                task.abort();
            }
            keep
        });
        for (addr, name) in wanted {
            if running.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(l) => {
                    tracing::info!(listener = %name, %addr, "listening");
                    let task = tokio::spawn(accept_loop(shared.clone(), l, name.clone()));
                    running.insert(addr, (name, task));
                }
                Err(e) => {
                    shared.stats.listener_errors.inc();
                    tracing::warn!(listener = %name, %addr, error = %e, "cannot listen");
                }
            }
        }
        if config_rx.changed().await.is_err() {
            return;
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, name: String) {
    let mut draining = shared.draining.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            // Draining: the listener closes (dropped with this task); connections stay.
            _ = draining.wait_for(|d| *d) => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let config = shared.config.borrow().clone();
            let Some(own) = config.listeners.get(&name).cloned() else {
                return;
            };
            let local = stream.local_addr().unwrap_or(own.address);
            let (listener, dst) = if own.use_original_dst {
                let dst = original_dst(&stream).unwrap_or(local);
                let target = if dst == local {
                    None
                } else {
                    listener_for(&config, dst)
                };
                (target.unwrap_or(own), dst)
            } else {
                (own, local)
            };
            serve(shared, config, listener, stream, peer, dst).await;
        });
    }
}

/// What the TLS inspector sees on `stream`, waiting up to 15 s for the first bytes (Envoy's
/// listener filter timeout). A connection that says nothing in time, or is not TLS, is
/// matched as plain.
async fn inspect(stream: &TcpStream) -> Seen {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut buf = vec![0u8; 4096];
    let mut had = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Seen::default(),
        };
        match client_hello(&buf[..n]) {
            Hello::Tls { server_name, alpn } => {
                return Seen {
                    tls: true,
                    server_name,
                    alpn,
                };
            }
            Hello::NotTls => return Seen::default(),
            Hello::NeedMore if n == buf.len() => {
                if buf.len() >= MAX_HELLO {
                    return Seen::default();
                }
                buf.resize((buf.len() * 2).min(MAX_HELLO), 0);
            }
            Hello::NeedMore => {
                // peek returns what is queued at once; wait a little for the rest.
                if n == had {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                had = n;
            }
        }
    }
}

async fn serve(
    shared: Arc<Shared>,
    config: Arc<Config>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    shared.stats.downstream_cx.inc();
    let seen = if listener.inspect_tls {
        inspect(&stream).await
    } else {
        Seen::default()
    };
    let Some(chain) = choose(&listener.chains, dst.port(), &seen) else {
        shared.stats.no_filter_chain.inc();
        tracing::debug!(listener = %listener.name, ?seen, "no filter chain matches; closing");
        return;
    };
    match &chain.filter {
        NetworkFilter::Http(hcm) => match &chain.tls {
            None => {
                crate::http::serve_plain_connection(
                    shared.clone(),
                    &listener.name,
                    &chain.matcher,
                    hcm.clone(),
                    stream,
                    peer,
                    dst,
                )
                .await
            }
            Some(tls) => {
                let acceptor = match shared.acceptors.get(tls) {
                    Ok(a) => a,
                    Err(e) => {
                        shared.stats.tls_errors.inc();
                        tracing::warn!(listener = %listener.name, error = %e, "cannot terminate TLS");
                        return;
                    }
                };
                match acceptor.accept(stream).await {
                    Ok(tls_stream) => {
                        crate::http::serve_connection(
                            shared.clone(),
                            &listener.name,
                            &chain.matcher,
                            hcm.clone(),
                            tls_stream,
                            peer,
                            dst,
                        )
                        .await;
                    }
                    Err(e) => {
                        shared.stats.tls_errors.inc();
                        tracing::debug!(listener = %listener.name, error = %e, "TLS handshake failed");
                    }
                }
            }
        },
        NetworkFilter::Tcp(tcp) => tcp_proxy(&shared, &config, tcp, stream, peer, dst).await,
    }
}

/// Envoy's tcp_proxy: a cluster by weight, an endpoint, then bytes both ways until either
/// side closes or nothing moves for the idle timeout. The connection is access-logged when
/// it ends (mixer's TCP reports), however it ends.
async fn tcp_proxy(
    shared: &Shared,
    config: &Config,
    tcp: &crate::model::TcpProxy,
    down: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    let name = crate::http::pick_weighted(&tcp.clusters);
    let mut log = TcpLog {
        shared,
        sink: (!tcp.access_log.is_empty()).then_some(&tcp.access_log),
        started: std::time::Instant::now(),
        entry: crate::als::TcpEntry {
            start_time: std::time::SystemTime::now(),
            duration: Duration::ZERO,
            upstream_cluster: name.to_owned(),
            upstream_address: None,
            downstream_remote: peer,
            downstream_local: dst,
            received_bytes: 0,
            sent_bytes: 0,
        },
        counts: None,
    };
    let Some(cluster) = config.clusters.get(name).cloned() else {
        tracing::debug!(cluster = %name, "tcp proxy: no such cluster");
        return;
    };
    let Some((upstream, _)) = shared.upstreams.pick(config, &cluster, dst, None) else {
        tracing::debug!(cluster = %name, "tcp proxy: no endpoint");
        return;
    };
    log.entry.upstream_address = Some(upstream);
    // TCP connections do not wait: past max_connections they are closed (Envoy's
    // upstream_cx_overflow).
    let Some(_admitted) = shared.upstreams.breaker(&cluster).try_admit() else {
        shared.stats.upstream_overflow.inc();
        return;
    };
    let mut up = match shared.upstreams.connect(&cluster, upstream).await {
        Ok(up) => up,
        Err(e) => {
            shared.stats.upstream_cx_fail.inc();
            tracing::debug!(cluster = %name, %upstream, error = %e, "tcp proxy: connect failed");
            return;
        }
    };
    let started = tokio::time::Instant::now();
    let counts = Arc::new(Counts::default());
    log.counts = Some(counts.clone());
    let mut down = Tracked {
        inner: down,
        counts: counts.clone(),
        started,
    };
    let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
    let Some(idle) = tcp.idle_timeout else {
        let _ = copy.await;
        return;
    };
    tokio::pin!(copy);
    loop {
        let last = counts.last_activity();
        tokio::select! {
            _ = &mut copy => return,
            _ = tokio::time::sleep_until(started + last + idle) => {
                if counts.last_activity() == last {
                    shared.stats.tcp_idle_timeouts.inc();
                    tracing::debug!(cluster = %name, "tcp proxy: idle timeout");
                    return;
                }
            }
        }
    }
}

/// A TCP connection's access log entry, sent when dropped.
struct TcpLog<'a> {
    shared: &'a Shared,
    sink: Option<&'a crate::model::AccessLog>,
    started: std::time::Instant,
    entry: crate::als::TcpEntry,
    counts: Option<Arc<Counts>>,
}

impl Drop for TcpLog<'_> {
    fn drop(&mut self) {
        let Some(sink) = self.sink else {
            return;
        };
        let mut entry = self.entry.clone();
        entry.duration = self.started.elapsed();
        if let Some(c) = &self.counts {
            entry.received_bytes = c.received.load(std::sync::atomic::Ordering::Relaxed);
            entry.sent_bytes = c.sent.load(std::sync::atomic::Ordering::Relaxed);
        }
        self.shared.access_logs.log_tcp(sink, entry);
    }
}

/// Bytes each way on a proxied connection, and when they last moved (milliseconds since
/// the connection started), for the idle timeout.
#[derive(Debug, Default)]
struct Counts {
    received: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
    activity_ms: std::sync::atomic::AtomicU64,
}

impl Counts {
    fn last_activity(&self) -> Duration {
        Duration::from_millis(self.activity_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The downstream side of a proxied connection, counting what moves.
struct Tracked {
    inner: TcpStream,
    counts: Arc<Counts>,
    started: tokio::time::Instant,
}

impl Tracked {
    fn touch(&self, n: usize, received: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let total = if received {
            &self.counts.received
        } else {
            &self.counts.sent
        };
        total.fetch_add(n as u64, Relaxed);
        self.counts
            .activity_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.touch(n, true);
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if let std::task::Poll::Ready(Ok(n)) = r
            && n > 0
        {
            self.touch(n, false);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
