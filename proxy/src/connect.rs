//! Upstream connections for the HTTP pools: TCP, then TLS when the cluster originates it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Dials an endpoint (`http://ADDR` URIs built by the router) and, for TLS clusters, does the
/// handshake with the cluster's settings.
#[derive(Clone, Debug)]
pub struct Connector {
    tcp: HttpConnector,
    tls: Option<Tls>,
}

#[derive(Clone)]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    /// The cluster's SNI; without one the endpoint's address stands in (and is not sent).
    sni: Option<rustls_pki_types::ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("sni", &self.sni).finish()
    }
}

impl Connector {
    pub fn new(tcp: HttpConnector, tls: Option<(Arc<rustls::ClientConfig>, &str)>) -> Connector {
        Connector {
            tcp,
            tls: tls.map(|(config, sni)| Tls {
                connector: tokio_rustls::TlsConnector::from(config),
                sni: rustls_pki_types::ServerName::try_from(sni.to_owned()).ok(),
            }),
        }
    }
}

/// A connection to an endpoint.
#[derive(Debug)]
pub enum Upstream {
    Plain(TokioIo<TcpStream>),
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl tower_service::Service<Uri> for Connector {
    type Response = Upstream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Upstream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.tcp.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let stream = tcp.await?;
            let Some(tls) = tls else {
                return Ok(Upstream::Plain(stream));
            };
            let name = match tls.sni {
                Some(n) => n,
                None => {
                    let ip: std::net::IpAddr = uri
                        .host()
                        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                        .and_then(|h| h.parse().ok())
                        .ok_or_else(|| format!("endpoint {uri} is not an address"))?;
                    rustls_pki_types::ServerName::IpAddress(ip.into())
                }
            };
            let stream = tls
                .connector
                .connect(name, stream.into_inner())
                .await
                .map_err(|e| format!("TLS handshake with {uri}: {e}"))?;
            Ok(Upstream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

impl Connection for Upstream {
    fn connected(&self) -> Connected {
        match self {
            Upstream::Plain(s) => s.connected(),
            Upstream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let c = tcp.connected();
                if session.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl hyper::rt::Read for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Upstream::Plain(s) => s.is_write_vectored(),
            Upstream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}
