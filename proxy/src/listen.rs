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

use tokio::net::{TcpListener, TcpStream};

use crate::Shared;
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

async fn serve(
    shared: Arc<Shared>,
    config: Arc<Config>,
    listener: Arc<Listener>,
    stream: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    shared.stats.downstream_cx.inc();
    match &listener.filter {
        NetworkFilter::Http(hcm) => match &listener.tls {
            None => {
                crate::http::serve_connection(
                    shared.clone(),
                    &listener.name,
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
        NetworkFilter::Tcp(tcp) => {
            let Some(cluster) = config.clusters.get(&tcp.cluster).cloned() else {
                tracing::debug!(cluster = %tcp.cluster, "tcp proxy: no such cluster");
                return;
            };
            let Some((upstream, _)) = shared.upstreams.pick(&config, &cluster, dst, None) else {
                tracing::debug!(cluster = %tcp.cluster, "tcp proxy: no endpoint");
                return;
            };
            // TCP connections do not wait: past max_connections they are closed (Envoy's
            // upstream_cx_overflow).
            let Some(_admitted) = shared.upstreams.breaker(&cluster).try_admit() else {
                shared.stats.upstream_overflow.inc();
                return;
            };
            let connect =
                tokio::time::timeout(cluster.connect_timeout, TcpStream::connect(upstream));
            let Ok(Ok(mut up)) = connect.await else {
                shared.stats.upstream_cx_fail.inc();
                return;
            };
            let _ = up.set_nodelay(true);
            let mut down = stream;
            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
        }
    }
}
