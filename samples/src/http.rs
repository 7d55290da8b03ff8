//! The little HTTP each Bookinfo service needs: a server loop over hyper, response helpers,
//! and an outbound GET with a deadline and chosen headers, on a fresh connection per call
//! (as the originals did: no pooling, so load spreads across versions behind a proxy).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type Resp = Response<Full<Bytes>>;

/// A response with a body and a content type.
pub fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    r
}

pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, "application/json", body)
}

pub fn html(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, "text/html; charset=utf-8", body)
}

pub fn not_found() -> Resp {
    html(
        StatusCode::NOT_FOUND,
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n<p>The requested URL was not found on the server.</p>\n",
    )
}

pub fn method_not_allowed() -> Resp {
    html(
        StatusCode::METHOD_NOT_ALLOWED,
        "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<title>405 Method Not Allowed</title>\n<h1>Method Not Allowed</h1>\n<p>The method is not allowed for the requested URL.</p>\n",
    )
}

/// Binds `addr`; a bind failure is reported with the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serves HTTP/1.1 on `listener` until the task is dropped, one task per connection.
pub async fn serve<H, F>(listener: TcpListener, handler: Arc<H>)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Resp> + Send + 'static,
{
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let fut = h(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads a request body (forms are small); an unreadable body reads as empty.
pub async fn body_bytes(req: Request<Incoming>) -> Bytes {
    match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

/// How an outbound call ended.
#[derive(Debug)]
pub enum Outbound {
    Response {
        status: u16,
        body: Bytes,
    },
    /// Timed out, refused, reset: there is no status.
    Failed(String),
}

impl Outbound {
    pub fn ok_json(&self) -> Option<serde_json::Value> {
        match self {
            Outbound::Response { status: 200, body } => serde_json::from_slice(body).ok(),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            Outbound::Response { status, .. } => Some(*status),
            Outbound::Failed(_) => None,
        }
    }
}

/// `GET http://host:port/path` with `headers`, all of it (connect, send, whole body) within
/// `timeout`.
pub async fn get(
    host: &str,
    port: u16,
    path: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Outbound {
    match tokio::time::timeout(timeout, get_inner(host, port, path, headers)).await {
        Ok(Ok((status, body))) => Outbound::Response { status, body },
        Ok(Err(e)) => Outbound::Failed(e),
        Err(_) => Outbound::Failed(format!("timed out after {timeout:?}")),
    }
}

async fn get_inner(
    host: &str,
    port: u16,
    path: &str,
    headers: &HeaderMap,
) -> Result<(u16, Bytes), String> {
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .uri(path)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let authority = if port == 80 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    if let Ok(v) = HeaderValue::from_str(&authority) {
        req.headers_mut().insert(hyper::header::HOST, v);
    }
    for (k, v) in headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Istio 1.0's trace and request headers that each service copies to its upstreams.
pub const TRACE_HEADERS: &[&str] = &[
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
];

/// Copies the named headers present in `from`.
pub fn copy_headers(from: &HeaderMap, names: &[&str]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in names {
        if let Some(v) = from.get(*name)
            && let Ok(n) = HeaderName::from_bytes(name.as_bytes())
        {
            out.insert(n, v.clone());
        }
    }
    out
}

/// Where an upstream is: `NAME_HOSTNAME` or NAME (with `SERVICES_DOMAIN` appended), port
/// `NAME_SERVICE_PORT` or 9080.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    pub fn from_env(name: &str) -> Upstream {
        let upper = name.to_ascii_uppercase();
        let host = std::env::var(format!("{upper}_HOSTNAME"))
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| match std::env::var("SERVICES_DOMAIN") {
                Ok(d) if !d.is_empty() => format!("{name}.{d}"),
                _ => name.to_owned(),
            });
        let port = std::env::var(format!("{upper}_SERVICE_PORT"))
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9080);
        Upstream { host, port }
    }
}

/// Multiplies the services' timeouts (`BOOKINFO_TIME_SCALE`, default 1): tests run the real
/// timeout logic at a tenth of the wall time.
pub fn time_scale() -> f64 {
    std::env::var("BOOKINFO_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0)
}

pub fn scaled(secs: f64, scale: f64) -> Duration {
    Duration::from_secs_f64(secs * scale)
}

/// The listening address from the command line: `[PORT]` (default 9080) on all interfaces,
/// or `--listen ADDR`.
pub fn listen_addr_from_args() -> Result<SocketAddr, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => Ok(SocketAddr::from(([0, 0, 0, 0], 9080))),
        [flag, addr] if flag == "--listen" => {
            addr.parse().map_err(|e| format!("--listen {addr}: {e}"))
        }
        [port] => port
            .parse::<u16>()
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)))
            .map_err(|e| format!("port {port}: {e}")),
        _ => Err("usage: [PORT] | --listen ADDR".to_owned()),
    }
}

/// The start-up shared by every binary: logging, the listen address, serve until killed.
pub fn main_with<F, Fut>(name: &str, run: F) -> std::process::ExitCode
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let addr = match listen_addr_from_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("{name}: {e}");
                return std::process::ExitCode::from(64);
            }
        };
        tracing::info!(%addr, "{name} listening");
        tokio::select! {
            () = run(listener) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        std::process::ExitCode::SUCCESS
    })
}
