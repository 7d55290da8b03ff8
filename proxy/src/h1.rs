//! The HTTP/1.1 client for plaintext upstreams: the request's own task writes the request
//! and reads the response, and the response body reads the upstream socket itself.
//!
//! Why not hyper's pooled client: it runs every upstream connection as a task of its own
//! and hands each request, response and body chunk across channels between that task and
//! the request's. On the one core a sidecar gets that hand-over cost about a fifth of
//! keel-proxy's CPU per request (measured against a forwarder written this way). Clusters
//! that speak HTTP/2 or originate TLS keep hyper's client.
//!
//! Idle connections wait in a pool per cluster and endpoint, newest first. A connection
//! goes back only when its response was read to the end with nothing after it and neither
//! side asked to close. One that idled for a while is checked before reuse (a server that
//! timed it out has closed it or written an error to it); one that turns out closed before
//! answering a byte is reported as [`SendError::Stale`], so that the caller sends the
//! request again on a new connection (the request never reached the application).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::body::{BodyError, Outgoing};

pub mod server;

/// The largest response head read (Envoy's default max_request_headers_kb is 60).
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response head may have (Envoy's default is 100).
const MAX_HEADERS: usize = 100;
/// How long a connection may idle before it is checked at checkout.
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 8 * 1024;

/// How a cluster's connections are made and kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// Requests a connection carries before it is closed (`None`: no limit).
    pub max_requests_per_connection: Option<u32>,
}

/// A cluster's idle connections, by endpoint.
#[derive(Debug)]
pub struct Pool {
    settings: Settings,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>>>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Requests this connection carried so far.
    requests: u32,
    /// Buffers kept for the next request (their memory is reused once what was handed on
    /// from them is dropped).
    read: BytesMut,
    write: BytesMut,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    /// A reused connection closed before a byte of the response: the server closed it while
    /// it idled, so the request can be sent again.
    #[error("{addr} closed a reused connection before answering")]
    Stale { addr: SocketAddr },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the response from {addr} is not HTTP/1.1: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("reading the request body: {0}")]
    RequestBody(BodyError),
}

impl SendError {
    /// No connection was made (Envoy's `UF`); otherwise it was reset (`UC`).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect { .. } | SendError::ConnectTimeout { .. }
        )
    }
}

impl Pool {
    pub fn new(settings: Settings) -> Pool {
        Pool {
            settings,
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Sends one request to `addr` and reads the response head; the body follows as the
    /// returned response's body is read. `headers` must carry Host.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Outgoing,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (mut conn, reused) = match self.checkout(addr) {
            Some(conn) => (conn, true),
            None => (self.connect(addr).await?, false),
        };
        conn.requests += 1;
        let io = |source| SendError::Io { addr, source };
        let mut out = std::mem::take(&mut conn.write);
        out.clear();
        out.reserve(256 + headers.len() * 32);
        let framing = encode_head(&mut out, method, path, headers, &body);
        let mut body = body;
        match framing {
            RequestFraming::None => {}
            RequestFraming::Length | RequestFraming::Chunked => {
                // The body's first frames go out with the head when they are already here.
                let chunked = framing == RequestFraming::Chunked;
                let mut terminated = false;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(SendError::RequestBody)?;
                    if let Some(data) = frame.data_ref() {
                        if data.is_empty() {
                            continue;
                        }
                        if chunked {
                            out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                            out.put_slice(data);
                            out.put_slice(b"\r\n");
                        } else {
                            out.put_slice(data);
                        }
                    } else if let (true, Some(trailers)) = (chunked, frame.trailers_ref()) {
                        out.put_slice(b"0\r\n");
                        put_headers(&mut out, trailers);
                        out.put_slice(b"\r\n");
                        terminated = true;
                    }
                    if out.len() >= READ_CHUNK {
                        let sent = conn.stream.write_all(&out).await;
                        out.clear();
                        if let Err(e) = sent {
                            return Err(stale_or(reused, addr, io(e)));
                        }
                    }
                }
                if chunked && !terminated {
                    out.put_slice(b"0\r\n\r\n");
                }
            }
        }
        if !out.is_empty()
            && let Err(e) = conn.stream.write_all(&out).await
        {
            return Err(stale_or(reused, addr, io(e)));
        }
        out.clear();
        conn.write = out;
        let mut buf = std::mem::take(&mut conn.read);
        buf.reserve(READ_CHUNK);
        loop {
            // What is read may hold more than one head (100 Continue, then the answer).
            let parsed = if buf.is_empty() {
                None
            } else {
                parse_head(&buf).map_err(|reason| SendError::Protocol { addr, reason })?
            };
            let Some(head) = parsed else {
                if buf.len() > MAX_HEAD {
                    return Err(SendError::Protocol {
                        addr,
                        reason: format!("response head over {MAX_HEAD} bytes"),
                    });
                }
                let n = read_some(&mut conn.stream, &mut buf)
                    .await
                    .map_err(|e| stale_or(reused && buf.is_empty(), addr, io(e)))?;
                if n == 0 {
                    return Err(if reused && buf.is_empty() {
                        SendError::Stale { addr }
                    } else {
                        SendError::Protocol {
                            addr,
                            reason: "connection closed before the response head ended".into(),
                        }
                    });
                }
                continue;
            };
            buf.advance(head.len);
            // 100 Continue and other informational heads: the final one follows.
            if head.status.is_informational() {
                if head.status == StatusCode::SWITCHING_PROTOCOLS {
                    return Err(SendError::Protocol {
                        addr,
                        reason: "101 Switching Protocols to a request that did not ask".into(),
                    });
                }
                continue;
            }
            let framing = response_framing(method, &head);
            let keep_alive = head.keep_alive
                && !matches!(framing, Framing::UntilClose)
                && self
                    .settings
                    .max_requests_per_connection
                    .is_none_or(|max| conn.requests < max);
            let mut response = Response::new(UpstreamBody {
                conn: Some(conn),
                buf,
                framing,
                keep_alive,
                pool: self.clone(),
                addr,
            });
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            let body = response.body_mut();
            if body.framing.is_done() {
                body.finish();
            }
            return Ok(response);
        }
    }

    /// The newest idle connection to `addr` fit for another request.
    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(Idle { conn, since }) = list.pop() {
            let idled = since.elapsed();
            if idled >= self.settings.idle_timeout {
                // Older ones idled longer still.
                list.clear();
                break;
            }
            if idled < CHECK_AFTER_IDLE || still_open(&conn.stream) {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry(addr).or_default().push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, SendError> {
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(SendError::ConnectTimeout { addr, timeout }),
            Ok(Err(source)) => return Err(SendError::Connect { addr, source }),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            requests: 0,
            read: BytesMut::new(),
            write: BytesMut::new(),
        })
    }
}

/// Whether an idle connection is still usable: nothing to read (a closed connection reads
/// as end of stream, a server's timeout answer as bytes nobody asked for).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

fn stale_or(reused: bool, addr: SocketAddr, e: SendError) -> SendError {
    match &e {
        SendError::Io { source, .. }
            if reused
                && matches!(
                    source.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
        {
            SendError::Stale { addr }
        }
        _ => e,
    }
}

/// Reads what is there into `buf` (at least one byte, or 0 at the end of the stream).
async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_some(stream, buf, cx)).await
}

fn poll_read_some(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    loop {
        ready!(stream.poll_read_ready(cx))?;
        match stream.try_read_buf(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RequestFraming {
    None,
    Length,
    Chunked,
}

/// Writes the request line and headers; says how the body follows. A request that carries
/// its content-length keeps it; one without, whose body is not known to be empty, goes
/// chunked.
fn encode_head(
    out: &mut BytesMut,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Outgoing,
) -> RequestFraming {
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    out.put_slice(b" HTTP/1.1\r\n");
    put_headers(out, headers);
    let framing = if headers.contains_key(hyper::header::CONTENT_LENGTH) {
        RequestFraming::Length
    } else if body.is_end_stream() {
        // Envoy and hyper say so for methods that usually carry a body.
        if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
        RequestFraming::None
    } else if let Some(n) = body.size_hint().exact() {
        out.put_slice(format!("content-length: {n}\r\n").as_bytes());
        RequestFraming::Length
    } else {
        out.put_slice(b"transfer-encoding: chunked\r\n");
        RequestFraming::Chunked
    };
    out.put_slice(b"\r\n");
    framing
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    for (name, value) in headers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
}

pub(crate) struct Head {
    /// Bytes of `buf` the head took; the body starts after them.
    pub(crate) len: usize,
    pub(crate) status: StatusCode,
    version: Version,
    pub(crate) headers: HeaderMap,
    keep_alive: bool,
    pub(crate) content_length: Option<u64>,
    chunked: bool,
}

/// The response head at the start of `buf`, `None` while it is incomplete. Also reads the
/// answer to a WebSocket upgrade (`http::websocket`).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("no valid status code")?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut keep_alive = version == Version::HTTP_11;
    let mut content_length = None;
    let mut chunked = false;
    // Room for what the proxy adds (x-envoy-upstream-service-time, the route's headers).
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 4);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.name))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| format!("invalid value of header {}", h.name))?;
        if name == hyper::header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or("invalid content-length")?;
            if content_length.is_some_and(|old| old != n) {
                return Err("conflicting content-length headers".into());
            }
            content_length = Some(n);
        } else if name == hyper::header::TRANSFER_ENCODING {
            // Chunked must be the last coding; a body coded otherwise runs to the close.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            if !chunked {
                keep_alive = false;
            }
        } else if name == hyper::header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                }
            }
        }
        headers.append(name, value);
    }
    Ok(Some(Head {
        len,
        status,
        version,
        headers,
        keep_alive,
        content_length,
        chunked,
    }))
}

/// How a message's body is delimited (RFC 9112, section 6.3): a response's here, a
/// request's in [`server`] (which never reads until the close).
#[derive(Debug)]
enum Framing {
    /// Bytes left of a content-length body.
    Length(u64),
    Chunked(Chunked),
    /// Read until the server closes.
    UntilClose,
    Done,
}

impl Framing {
    fn is_done(&self) -> bool {
        matches!(self, Framing::Done | Framing::Length(0))
    }
}

/// What the buffered bytes give of a body.
enum Step {
    /// Data; the body ended with it when the framing is done.
    Data(Bytes),
    /// The trailers, which end the body.
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// The next step of a body framed by `framing` from what `buf` holds (one decoder for the
/// upstream response bodies and the downstream request bodies).
fn decode_body(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, String> {
    match framing {
        Framing::Done | Framing::Length(0) => Ok(Step::End),
        Framing::Length(_) | Framing::UntilClose if buf.is_empty() => Ok(Step::NeedMore),
        Framing::Length(left) => {
            let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= n as u64;
            Ok(Step::Data(buf.split_to(n).freeze()))
        }
        Framing::UntilClose => Ok(Step::Data(buf.split().freeze())),
        Framing::Chunked(state) => Ok(match decode_chunked(state, buf)? {
            Decoded::Data(data) => Step::Data(data),
            Decoded::Trailers(trailers) => Step::Trailers(trailers),
            Decoded::End => Step::End,
            Decoded::NeedMore => Step::NeedMore,
        }),
    }
}

fn response_framing(method: &Method, head: &Head) -> Framing {
    if *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        Framing::Done
    } else if head.chunked {
        Framing::Chunked(Chunked::Size)
    } else if let Some(n) = head.content_length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    }
}

/// Where a chunked body's decoder is.
#[derive(Debug)]
enum Chunked {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left of the current chunk's data.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// A response body read from the upstream connection as it is polled; the connection goes
/// back to the pool at its end.
#[derive(Debug)]
pub struct UpstreamBody {
    conn: Option<Conn>,
    /// Bytes read past what was handed on.
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
    addr: SocketAddr,
}

impl UpstreamBody {
    /// The body ended: the connection is reused when it can be.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(mut conn) = self.conn.take()
            && self.keep_alive
            && self.buf.is_empty()
        {
            conn.read = std::mem::take(&mut self.buf);
            self.pool.put(self.addr, conn);
        }
    }

    fn fail(&mut self, reason: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(format!(
            "the response body from {}: {}",
            self.addr,
            reason.into()
        )
        .into())))
    }

    /// Reads more into `buf`; `Ok(false)` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let Some(conn) = self.conn.as_ref() else {
            return Poll::Ready(Ok(false));
        };
        let n = ready!(poll_read_some(&conn.stream, &mut self.buf, cx))?;
        Poll::Ready(Ok(n > 0))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            match decode_body(&mut this.framing, &mut this.buf) {
                Ok(Step::Data(data)) => {
                    if this.framing.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Ok(Step::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(reason) => return this.fail(reason),
            }
            match ready!(this.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) if matches!(this.framing, Framing::UntilClose) => {
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(false) => return this.fail("the connection closed before the body ended"),
                Err(e) => return this.fail(e.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    NeedMore,
}

/// Decodes what `buf` holds of a chunked body, one step at a time.
fn decode_chunked(state: &mut Chunked, buf: &mut BytesMut) -> Result<Decoded, String> {
    loop {
        match state {
            Chunked::Size => {
                let Some(line_end) = find_crlf(buf) else {
                    if buf.len() > 1024 {
                        return Err("chunk size line too long".into());
                    }
                    return Ok(Decoded::NeedMore);
                };
                let line = &buf[..line_end];
                // Chunk extensions (";name=value") are ignored.
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or_default()
                    .trim_ascii();
                let size = std::str::from_utf8(digits)
                    .ok()
                    .filter(|d| !d.is_empty() && d.len() <= 16)
                    .and_then(|d| u64::from_str_radix(d, 16).ok())
                    .ok_or("invalid chunk size")?;
                buf.advance(line_end + 2);
                *state = if size == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(size)
                };
            }
            Chunked::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *state = Chunked::DataEnd;
                }
                return Ok(Decoded::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF".into());
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Decoded::End);
                }
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                return match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                        Err("trailers too long".into())
                    }
                    Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
                    Err(e) => Err(format!("invalid trailers: {e}")),
                    Ok(httparse::Status::Complete((len, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(k, v);
                            }
                        }
                        buf.advance(len);
                        Ok(Decoded::Trailers(trailers))
                    }
                };
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next of `answers`
    /// (closing after it when the answer ends in `CLOSE`), and records what it read.
    struct Script {
        addr: SocketAddr,
        connections: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<String>>>,
    }

    const CLOSE: &str = "<close>";

    async fn script(answers: Vec<&'static str>) -> Script {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(answers.into_iter()));
        let (c, s) = (connections.clone(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (answers, seen) = (answers.clone(), s.clone());
                tokio::spawn(async move {
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    loop {
                        // The head, then a body by content-length or chunked (to "0\r\n\r\n").
                        let mut head = String::new();
                        loop {
                            let mut line = String::new();
                            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            head.push_str(&line);
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let lower = head.to_ascii_lowercase();
                        if let Some(n) = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                        {
                            let mut body = vec![0; n.trim().parse().unwrap()];
                            r.read_exact(&mut body).await.unwrap();
                            head.push_str(&String::from_utf8(body).unwrap());
                        } else if lower.contains("transfer-encoding: chunked") {
                            while !head.ends_with("0\r\n\r\n") {
                                let mut line = String::new();
                                r.read_line(&mut line).await.unwrap();
                                head.push_str(&line);
                            }
                        }
                        seen.lock().unwrap().push(head);
                        let Some(answer) = answers.lock().unwrap().next() else {
                            return;
                        };
                        let (answer, close) = match answer.strip_suffix(CLOSE) {
                            Some(a) => (a, true),
                            None => (answer, false),
                        };
                        w.write_all(answer.as_bytes()).await.unwrap();
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        Script {
            addr,
            connections,
            seen,
        }
    }

    fn pool(max: Option<u32>) -> Arc<Pool> {
        Arc::new(Pool::new(Settings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_requests_per_connection: max,
        }))
    }

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(hyper::header::HOST, HeaderValue::from_str(h).unwrap());
        m
    }

    async fn get(
        pool: &Arc<Pool>,
        addr: SocketAddr,
        method: Method,
    ) -> Result<(StatusCode, HeaderMap, String, Option<HeaderMap>), SendError> {
        let r = pool
            .send(
                addr,
                &method,
                "/p?q=1",
                &host("h"),
                Outgoing::whole(Bytes::new(), None),
            )
            .await?;
        let status = r.status();
        let headers = r.headers().clone();
        let collected = r.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = String::from_utf8(collected.to_bytes().to_vec()).unwrap();
        Ok((status, headers, body, trailers))
    }

    #[tokio::test]
    async fn keep_alive_responses_reuse_one_connection() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nbye",
        ])
        .await;
        let p = pool(None);
        let (status, headers, body, _) = get(&p, s.addr, Method::GET).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
        assert_eq!(headers["x-a"], "1");
        let (status, _, body, _) = get(&p, s.addr, Method::GET).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::NOT_FOUND, ""));
        let (_, _, body, _) = get(&p, s.addr, Method::GET).await.unwrap();
        assert_eq!(body, "bye");
        assert_eq!(s.connections.load(Ordering::SeqCst), 1);
        let seen = s.seen.lock().unwrap();
        assert!(
            seen[0].starts_with("GET /p?q=1 HTTP/1.1\r\nhost: h\r\n"),
            "{}",
            seen[0]
        );
    }

    #[tokio::test]
    async fn chunked_bodies_decode_with_extensions_and_trailers() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\ngrpc-status: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ])
        .await;
        let p = pool(None);
        let (_, _, body, trailers) = get(&p, s.addr, Method::GET).await.unwrap();
        assert_eq!(body, "hello, world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        let (_, _, body, trailers) = get(&p, s.addr, Method::GET).await.unwrap();
        assert_eq!((body.as_str(), trailers), ("ok", None));
        assert_eq!(s.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn close_http10_and_limits_end_the_connection() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na<close>",
            "HTTP/1.0 200 OK\r\n\r\nuntil the end<close>",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nc",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd",
        ])
        .await;
        let p = pool(None);
        assert_eq!(get(&p, s.addr, Method::GET).await.unwrap().2, "a");
        assert_eq!(
            get(&p, s.addr, Method::GET).await.unwrap().2,
            "until the end"
        );
        assert_eq!(s.connections.load(Ordering::SeqCst), 2);
        // One request per connection: each needs a connection of its own.
        let one = pool(Some(1));
        assert_eq!(get(&one, s.addr, Method::GET).await.unwrap().2, "c");
        assert_eq!(get(&one, s.addr, Method::GET).await.unwrap().2, "d");
        assert_eq!(s.connections.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn head_204_and_informational_answers_have_no_body() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n",
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        ])
        .await;
        let p = pool(None);
        let (status, headers, body, _) = get(&p, s.addr, Method::HEAD).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
        assert_eq!(headers["content-length"], "1000");
        let (status, _, body, _) = get(&p, s.addr, Method::DELETE).await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
        assert_eq!(get(&p, s.addr, Method::GET).await.unwrap().2, "ok");
        assert_eq!(s.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_stale_and_a_new_one_works() {
        let s = script(vec![
            // The server answers, then closes without saying so.
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na<close>",
            "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
        ])
        .await;
        let p = pool(None);
        assert_eq!(get(&p, s.addr, Method::GET).await.unwrap().2, "a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let err = get(&p, s.addr, Method::GET).await.unwrap_err();
        assert!(matches!(err, SendError::Stale { .. }), "{err}");
        assert!(!err.is_connect());
        assert_eq!(get(&p, s.addr, Method::GET).await.unwrap().2, "b");
        assert_eq!(s.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn request_bodies_carry_their_length_and_posts_say_when_empty() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ])
        .await;
        let p = pool(None);
        let body = Outgoing::whole(Bytes::from_static(b"eleven-byte"), None);
        let r = p
            .send(s.addr, &Method::PUT, "/", &host("h"), body)
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
        let r = p
            .send(
                s.addr,
                &Method::POST,
                "/",
                &host("h"),
                Outgoing::whole(Bytes::new(), None),
            )
            .await
            .unwrap();
        r.into_body().collect().await.unwrap();
        let seen = s.seen.lock().unwrap();
        assert!(
            seen[0].ends_with("content-length: 11\r\n\r\neleven-byte"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].ends_with("content-length: 0\r\n\r\n"),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn bad_answers_and_refused_connections_are_errors() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nabc",
            "NOT HTTP\r\n\r\n",
        ])
        .await;
        let p = pool(None);
        let err = get(&p, s.addr, Method::GET).await.unwrap_err();
        assert!(
            err.to_string().contains("conflicting content-length"),
            "{err}"
        );
        let err = get(&p, s.addr, Method::GET).await.unwrap_err();
        assert!(matches!(err, SendError::Protocol { .. }), "{err}");
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = get(&p, addr, Method::GET).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn a_body_cut_short_fails_instead_of_ending() {
        let s = script(vec![
            "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort<close>",
        ])
        .await;
        let p = pool(None);
        let r = p
            .send(
                s.addr,
                &Method::GET,
                "/",
                &host("h"),
                Outgoing::whole(Bytes::new(), None),
            )
            .await
            .unwrap();
        let err = r.into_body().collect().await.unwrap_err();
        assert!(
            err.to_string().contains("closed before the body ended"),
            "{err}"
        );
    }
}
