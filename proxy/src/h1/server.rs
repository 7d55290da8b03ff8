//! The HTTP/1.1 server for plaintext downstream connections: the connection's own task reads
//! a request head, awaits the request's response and writes it, one request at a time; the
//! request body reads the socket itself as the request is forwarded.
//!
//! Why not hyper's server: its dispatcher polls the service, the request body's channel and
//! the connection's buffers as separate state machines and moves each request and response
//! through them; on the benchmark's two hops it was about a third of keel-proxy's user-space
//! CPU per request. Written the way the upstream client is ([`super::Pool`]), a request
//! costs one read and one write on a keep-alive connection, with head and body in one write
//! whenever the body is already there.
//!
//! What it does as Envoy's HTTP/1.1 codec does:
//! - a connection that opens with HTTP/2's preface is handed back ([`Served::Http2`]) for an
//!   HTTP/2 server (h2c with prior knowledge);
//! - a head that does not parse is answered 400, one over 60 KiB or 100 fields 431, and the
//!   connection closes; so does one whose body length cannot be known (RFC 9112, 6.3);
//! - `Expect: 100-continue` is answered by the proxy and not passed on;
//! - a response's body is sent with its content-length when known, chunked otherwise (to an
//!   HTTP/1.0 client: until the close); `date` is added when the response has none;
//! - after `101 Switching Protocols` to an upgrade request the connection is handed to whoever
//!   holds the request's [`OnUpgrade`];
//! - the connection is kept for the next request (pipelined ones included) only when both
//!   messages ended as their framing said and neither side asked to close.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Chunked, Framing, MAX_HEADERS, READ_CHUNK, Step, decode_body, poll_read_some};
use crate::body::BodyError;

/// The largest request head read (Envoy's default max_request_headers_kb).
const MAX_REQUEST_HEAD: usize = 60 * 1024;
/// What an HTTP/2 connection opens with (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Response bytes gathered before they are written even though more frames are ready.
const WRITE_BATCH: usize = 64 * 1024;
/// How long, and how much, a closing connection still reads what the client sends, so that
/// closing with unread bytes does not reset the connection under a response not yet read.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// How a connection's service ended.
#[derive(Debug)]
pub enum Served {
    /// The connection is done (closed, or handed over after an upgrade).
    Closed,
    /// The client speaks HTTP/2: the connection, with what was read of it.
    Http2(Rewind),
}

/// Serves HTTP/1.1 on `stream` with `handle` until the connection ends.
pub async fn serve<F, Fut, B>(stream: TcpStream, mut handle: F) -> Served
where
    F: FnMut(Request<RequestBody>) -> Fut,
    Fut: Future<Output = Response<B>>,
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (read, write) = stream.into_split();
    // The reading side goes with a request's body while it is read, and comes back at its
    // end; the writing side stays here.
    let mut side = ReadSide {
        io: read,
        buf: BytesMut::with_capacity(READ_CHUNK),
    };
    let mut out = BytesMut::with_capacity(READ_CHUNK);
    let mut first = true;
    loop {
        let head = loop {
            let buf = &side.buf;
            if first && PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())]) {
                if buf.len() >= PREFACE.len() {
                    return match side.io.reunite(write) {
                        Ok(stream) => Served::Http2(Rewind {
                            read: side.buf.freeze(),
                            stream,
                        }),
                        Err(_) => Served::Closed,
                    };
                }
            } else if !buf.is_empty() {
                match parse_request_head(buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) if buf.len() > MAX_REQUEST_HEAD => {
                        let e = HeadError::too_large(format!(
                            "request head over {MAX_REQUEST_HEAD} bytes"
                        ));
                        reject(&write, &mut out, e).await;
                        return Served::Closed;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        reject(&write, &mut out, e).await;
                        return Served::Closed;
                    }
                }
            }
            match std::future::poll_fn(|cx| side.poll_fill(cx)).await {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {}
            }
        };
        first = false;
        side.buf.advance(head.len);

        let mut request = Request::new(RequestBody { reading: None });
        *request.method_mut() = head.method;
        *request.uri_mut() = head.uri;
        *request.version_mut() = head.version;
        let mut headers = head.headers;
        if head.expects_continue {
            // Envoy answers 100 Continue itself and does not pass the expectation on.
            headers.remove(header::EXPECT);
            if write_all(&write, b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return Served::Closed;
            }
        }
        *request.headers_mut() = headers;
        let upgrade = head.upgrade.then(|| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            request
                .extensions_mut()
                .insert(OnUpgrade(Arc::new(Mutex::new(Some(rx)))));
            tx
        });
        let is_head = request.method() == Method::HEAD;
        let (home, reading) = match head.body {
            BodyLength::None => (None, Some(side)),
            length => {
                let home = Arc::new(Mutex::new(None));
                request.body_mut().reading = Some(Box::new(Reading {
                    side,
                    framing: match length {
                        BodyLength::Chunked => Framing::Chunked(Chunked::Size),
                        BodyLength::Length(n) => Framing::Length(n),
                        BodyLength::None => Framing::Length(0),
                    },
                    home: home.clone(),
                }));
                (Some(home), None)
            }
        };

        let response = handle(request).await;

        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(tx) = upgrade
        {
            out.clear();
            put_status_line(&mut out, StatusCode::SWITCHING_PROTOCOLS);
            super::put_headers(&mut out, response.headers());
            out.put_slice(b"\r\n");
            drop(response);
            if write_all(&write, &out).await.is_err() {
                return Served::Closed;
            }
            // A request body still being read has the reading side; upgrade requests have
            // none.
            if let Some(mut side) = reading
                && let Ok(stream) = side.io.reunite(write)
            {
                let _ = tx.send(Upgraded {
                    stream,
                    read: side.buf.split().freeze(),
                });
            }
            return Served::Closed;
        }
        let sent = write_response(
            &write,
            &mut out,
            response,
            ResponseContext {
                is_head,
                version: head.version,
                keep_alive: head.keep_alive,
            },
        )
        .await;
        let Ok(keep_alive) = sent else {
            return Served::Closed;
        };
        // The request body gives the reading side back when it was read to its end.
        let back = match home {
            None => reading,
            Some(home) => home.lock().unwrap_or_else(|p| p.into_inner()).take(),
        };
        match back {
            Some(back) if keep_alive => side = back,
            Some(_) => return Served::Closed,
            None => {
                linger(&write).await;
                return Served::Closed;
            }
        }
    }
}

/// The connection's reading side and what was read past the messages handed on.
#[derive(Debug)]
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
}

impl ReadSide {
    /// Reads what is there into `buf` (0 at the end of the stream). Through `AsyncRead`,
    /// whose short reads tell tokio the socket is drained, so that the next request is
    /// waited for without a read that would block.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let mut storage = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut storage);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }
}

/// What the response's framing depends on in its request.
struct ResponseContext {
    is_head: bool,
    version: Version,
    keep_alive: bool,
}

/// How the response's body goes out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Outgoing {
    /// No body may follow (HEAD, 1xx, 204, 304).
    None,
    /// Bytes left of a content-length body.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    UntilClose,
}

/// A response that could not go out whole (the connection or the body failed, or the body
/// did not match its length): the client cannot tell where the message ends, so the
/// connection closes.
struct Cut;

/// Writes `response`; `Ok(keep_alive)` when it went out whole.
async fn write_response<B>(
    stream: &OwnedWriteHalf,
    out: &mut BytesMut,
    response: Response<B>,
    request: ResponseContext,
) -> Result<bool, Cut>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let headers = &parts.headers;
    let mut keep_alive = request.keep_alive && !asks_to_close(headers);
    out.clear();
    out.reserve(256 + headers.len() * 32);
    put_status_line(out, status);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut framing = if request.is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Outgoing::None
    } else if let Some(n) = declared {
        Outgoing::Length(n)
    } else if body.is_end_stream() {
        Outgoing::Length(0)
    } else if let Some(n) = body.size_hint().exact() {
        Outgoing::Length(n)
    } else if request.version == Version::HTTP_11 {
        Outgoing::Chunked
    } else {
        keep_alive = false;
        Outgoing::UntilClose
    };
    for (name, value) in headers {
        // The framing and the connection's fate are this hop's to say.
        let own = name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == "keep-alive"
            || (name == header::CONTENT_LENGTH && declared.is_none() && framing != Outgoing::None);
        if !own {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    // An answer to HEAD says the length a GET's body would have, when the body knows it
    // (an upstream's answer carries its own content-length).
    let head_length = (request.is_head && declared.is_none() && !body.is_end_stream())
        .then(|| body.size_hint().exact())
        .flatten();
    if let Some(n) = head_length {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    match framing {
        Outgoing::Length(n) if declared.is_none() => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Outgoing::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        _ => {}
    }
    if !headers.contains_key(header::DATE) {
        out.put_slice(b"date: ");
        put_date(out);
        out.put_slice(b"\r\n");
    }
    if !keep_alive {
        out.put_slice(b"connection: close\r\n");
    } else if request.version == Version::HTTP_10 {
        out.put_slice(b"connection: keep-alive\r\n");
    }
    out.put_slice(b"\r\n");
    if framing == Outgoing::None {
        drop(body);
        return write_all(stream, out)
            .await
            .map(|()| keep_alive)
            .map_err(|_| Cut);
    }
    loop {
        // Frames that are ready now go out in one write with what is pending; the task
        // waits for the body only when nothing is pending.
        let next = if out.is_empty() {
            body.frame().await
        } else {
            match std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    write_all(stream, out).await.map_err(|_| Cut)?;
                    out.clear();
                    continue;
                }
            }
        };
        match next {
            None => break,
            Some(Err(e)) => {
                // Flush what the client can still use, then close: the message is cut.
                tracing::debug!(error = %e, "response body failed; closing the connection");
                let _ = write_all(stream, out).await;
                return Err(Cut);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => match &mut framing {
                    Outgoing::Length(left) => {
                        let n = data.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        out.put_slice(&data[..n]);
                        *left -= n as u64;
                        if n < data.len() {
                            tracing::debug!("response body longer than its content-length");
                            let _ = write_all(stream, out).await;
                            return Err(Cut);
                        }
                    }
                    Outgoing::Chunked => {
                        let _ = write!(out, "{:x}\r\n", data.len());
                        out.put_slice(&data);
                        out.put_slice(b"\r\n");
                    }
                    Outgoing::UntilClose => out.put_slice(&data),
                    Outgoing::None => {}
                },
                // Trailers end the body; HTTP/1.1 clients rarely ask for them (TE: trailers),
                // so, as Envoy, they are not sent.
                Err(_) => break,
            },
        }
        if out.len() >= WRITE_BATCH {
            write_all(stream, out).await.map_err(|_| Cut)?;
            out.clear();
        }
    }
    match framing {
        Outgoing::Chunked => out.put_slice(b"0\r\n\r\n"),
        Outgoing::Length(left) if left > 0 => {
            tracing::debug!(left, "response body shorter than its content-length");
            let _ = write_all(stream, out).await;
            return Err(Cut);
        }
        _ => {}
    }
    if !out.is_empty() {
        write_all(stream, out).await.map_err(|_| Cut)?;
    }
    Ok(keep_alive)
}

fn asks_to_close(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
    })
}

fn put_status_line(out: &mut BytesMut, status: StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.put_slice(b"\r\n");
}

/// The current time as an HTTP date, formatted once per second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.put_slice(text.as_bytes());
    });
}

/// Answers a request whose head was refused, and closes.
async fn reject(stream: &OwnedWriteHalf, out: &mut BytesMut, e: HeadError) {
    tracing::debug!(reason = %e.reason, status = e.status.as_u16(), "refused a request head");
    out.clear();
    put_status_line(out, e.status);
    out.put_slice(b"content-length: 0\r\nconnection: close\r\ndate: ");
    put_date(out);
    out.put_slice(b"\r\n\r\n");
    if write_all(stream, out).await.is_ok() {
        linger(stream).await;
    }
}

/// Closes the sending side, then reads and drops what the client still sends for a while:
/// closing a socket with unread bytes resets the connection, and the client may lose the
/// response it has not read yet.
async fn linger(write: &OwnedWriteHalf) {
    let stream: &TcpStream = write.as_ref();
    if socket2::SockRef::from(stream)
        .shutdown(Shutdown::Write)
        .is_err()
    {
        return;
    }
    let drain = async {
        let mut scratch = BytesMut::with_capacity(READ_CHUNK);
        let mut total = 0;
        while total < LINGER_BYTES {
            scratch.clear();
            match std::future::poll_fn(|cx| poll_read_some(stream, &mut scratch, cx)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

async fn write_all(write: &OwnedWriteHalf, mut data: &[u8]) -> io::Result<()> {
    let stream: &TcpStream = write.as_ref();
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How a request's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// A request head, parsed and checked.
#[derive(Debug)]
pub(crate) struct RequestHead {
    /// Bytes the head took.
    pub(crate) len: usize,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: BodyLength,
    /// Neither the client nor the framing rules the connection's reuse out.
    pub(crate) keep_alive: bool,
    pub(crate) expects_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header (WebSocket).
    pub(crate) upgrade: bool,
}

/// Why a request head was refused, and the status that says so.
#[derive(Debug)]
pub(crate) struct HeadError {
    pub(crate) status: StatusCode,
    pub(crate) reason: String,
}

impl HeadError {
    fn bad(reason: impl Into<String>) -> HeadError {
        HeadError {
            status: StatusCode::BAD_REQUEST,
            reason: reason.into(),
        }
    }
    fn too_large(reason: impl Into<String>) -> HeadError {
        HeadError {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            reason: reason.into(),
        }
    }
}

/// The request head at the start of `buf`, `None` while it is incomplete.
pub(crate) fn parse_request_head(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::too_large(format!(
                "more than {MAX_HEADERS} header fields"
            )));
        }
        Err(e) => return Err(HeadError::bad(e.to_string())),
    };
    if len > MAX_REQUEST_HEAD {
        return Err(HeadError::too_large(format!(
            "request head over {MAX_REQUEST_HEAD} bytes"
        )));
    }
    let method = parsed
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or_else(|| HeadError::bad("invalid method"))?;
    let uri = parsed
        .path
        .and_then(|p| Uri::try_from(p).ok())
        .ok_or_else(|| HeadError::bad("invalid request target"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let mut keep_alive = version == Version::HTTP_11;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut connection_upgrade = false;
    let mut expects_continue = false;
    // Room for what the proxy adds (request id, forwarded-*, the route's headers) without
    // growing the map per request.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 8);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::bad(format!("invalid header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HeadError::bad(format!("invalid value of header {}", h.name)))?;
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| HeadError::bad("invalid content-length"))?;
            if content_length.is_some_and(|old| old != n) {
                return Err(HeadError::bad("conflicting content-length headers"));
            }
            content_length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            transfer_encoding = true;
            // Only the last coding of the last field counts.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && version == Version::HTTP_10 {
                    keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    connection_upgrade = true;
                }
            }
        } else if name == header::EXPECT {
            expects_continue = h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        headers.append(name, value);
    }
    let body = if transfer_encoding {
        // RFC 9112, 6.3: a request whose last coding is not chunked has no knowable length;
        // HTTP/1.0 has no transfer codings at all.
        if !chunked || version == Version::HTTP_10 {
            return Err(HeadError::bad("transfer-encoding without chunked last"));
        }
        if content_length.is_some() {
            // Both: the coding wins, the length goes, and the connection is not reused
            // (the message may have been made to be read two ways).
            headers.remove(header::CONTENT_LENGTH);
            keep_alive = false;
        }
        BodyLength::Chunked
    } else {
        match content_length {
            Some(0) | None => BodyLength::None,
            Some(n) => BodyLength::Length(n),
        }
    };
    let upgrade =
        connection_upgrade && version == Version::HTTP_11 && headers.contains_key(header::UPGRADE);
    Ok(Some(RequestHead {
        len,
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expects_continue: expects_continue
            && version == Version::HTTP_11
            && body != BodyLength::None,
        upgrade,
    }))
}

/// A request's body, read from the connection as it is polled. At its end the connection's
/// buffer goes back to the server for the next request; a body dropped before its end
/// closes the connection after the response.
#[derive(Debug)]
pub struct RequestBody {
    /// `None`: the request has no body.
    reading: Option<Box<Reading>>,
}

#[derive(Debug)]
struct Reading {
    /// The connection's reading side (its buffer holds the next request's bytes once the
    /// body ended).
    side: ReadSide,
    framing: Framing,
    /// Where the reading side goes back to.
    home: Arc<Mutex<Option<ReadSide>>>,
}

impl RequestBody {
    /// The body ended: the reading side goes back for the next request.
    fn finish(&mut self) {
        if let Some(reading) = self.reading.take() {
            let Reading { side, home, .. } = *reading;
            *home.lock().unwrap_or_else(|p| p.into_inner()) = Some(side);
        }
    }

    /// The body cannot be read to its end: the reading side is dropped, and with it the
    /// connection once the response is out.
    fn fail(&mut self, reason: impl Into<String>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.reading = None;
        Poll::Ready(Some(Err(
            format!("the request body: {}", reason.into()).into()
        )))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(r) = this.reading.as_deref_mut() else {
                return Poll::Ready(None);
            };
            match decode_body(&mut r.framing, &mut r.side.buf) {
                Ok(Step::Data(data)) => {
                    if r.framing.is_done() {
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
            match ready!(r.side.poll_fill(cx)) {
                Ok(0) => return this.fail("the client closed the connection before its end"),
                Ok(_) => {}
                Err(e) => return this.fail(e.to_string()),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|r| r.framing.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.as_deref().map(|r| &r.framing) {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(n)) => SizeHint::with_exact(*n),
            Some(Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Chunked(_) | Framing::UntilClose) => SizeHint::default(),
        }
    }
}

/// The connection after `101 Switching Protocols`, with what the client sent past the
/// request's head.
#[derive(Debug)]
pub struct Upgraded {
    pub stream: TcpStream,
    pub read: Bytes,
}

/// In an upgrade request's extensions: the connection, once the response switched protocols
/// (an error when it did not).
#[derive(Clone, Debug)]
pub struct OnUpgrade(Arc<Mutex<Option<tokio::sync::oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub async fn upgraded(self) -> Option<Upgraded> {
        let rx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        rx.await.ok()
    }
}

/// A connection whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let n = this.read.len().min(out.remaining());
            out.put_slice(&this.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Decoded, decode_chunked};
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    type TestBody = BoxBody<Bytes, BodyError>;

    fn text(status: StatusCode, body: String) -> Response<TestBody> {
        let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|n| match n {}).boxed());
        *r.status_mut() = status;
        r
    }

    /// The test's service: `/echo` answers with the method, target, whether an expectation
    /// reached it, and the body; `/ignore` does not read the body; `/stream` answers with a
    /// body of unknown length; `/upgrade` switches protocols and echoes what follows.
    async fn service(req: Request<RequestBody>) -> Response<TestBody> {
        match req.uri().path() {
            "/ignore" => text(StatusCode::OK, "ignored".into()),
            "/stream" => {
                let frames = ["one,", "two"]
                    .map(|s| Ok::<_, BodyError>(Frame::data(Bytes::from_static(s.as_bytes()))));
                Response::new(StreamBody::new(tokio_stream::iter(frames)).boxed())
            }
            "/upgrade" => {
                let on_upgrade = req.extensions().get::<OnUpgrade>().cloned();
                tokio::spawn(async move {
                    let Some(up) = on_upgrade.unwrap().upgraded().await else {
                        return;
                    };
                    let mut stream = up.stream;
                    stream.write_all(b"early=").await.unwrap();
                    stream.write_all(&up.read).await.unwrap();
                    let mut byte = [0u8; 4];
                    stream.read_exact(&mut byte).await.unwrap();
                    stream.write_all(&byte).await.unwrap();
                });
                let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                r.headers_mut()
                    .insert(header::UPGRADE, HeaderValue::from_static("test"));
                r
            }
            _ => {
                let method = req.method().clone();
                let target = req.uri().to_string();
                let expect = req.headers().contains_key(header::EXPECT);
                let body = req.into_body().collect().await.unwrap().to_bytes();
                text(
                    StatusCode::OK,
                    format!(
                        "{method} {target} expect={expect} body={}",
                        String::from_utf8_lossy(&body)
                    ),
                )
            }
        }
    }

    /// A server for one connection, and the client's end of it.
    async fn connect() -> (TcpStream, tokio::task::JoinHandle<Served>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream, service).await
        });
        (TcpStream::connect(addr).await.unwrap(), server)
    }

    struct Answer {
        status: u16,
        headers: HeaderMap,
        body: String,
    }

    /// Reads one response (to a request that was not HEAD) as its head frames it.
    async fn answer(client: &mut TcpStream, buf: &mut BytesMut) -> Answer {
        let head = loop {
            if let Some(head) = super::super::parse_head(buf).unwrap() {
                break head;
            }
            assert!(
                client.read_buf(buf).await.unwrap() > 0,
                "closed before a head"
            );
        };
        buf.advance(head.len);
        let mut body = BytesMut::new();
        if head.chunked {
            let mut state = Chunked::Size;
            loop {
                match decode_chunked(&mut state, buf).unwrap() {
                    Decoded::Data(d) => body.extend_from_slice(&d),
                    Decoded::End | Decoded::Trailers(_) => break,
                    Decoded::NeedMore => {
                        assert!(client.read_buf(buf).await.unwrap() > 0, "cut chunked body");
                    }
                }
            }
        } else if let Some(n) = head.content_length {
            while (buf.len() as u64) < n {
                assert!(client.read_buf(buf).await.unwrap() > 0, "cut body");
            }
            body.extend_from_slice(&buf.split_to(n as usize));
        } else {
            while client.read_buf(buf).await.unwrap() > 0 {}
            body.extend_from_slice(&buf.split());
        }
        Answer {
            status: head.status.as_u16(),
            headers: head.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    async fn closed(client: &mut TcpStream) -> bool {
        let mut rest = Vec::new();
        matches!(client.read_to_end(&mut rest).await, Ok(0))
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, _server) = connect().await;
        client
            .write_all(
                b"GET /echo/1 HTTP/1.1\r\nhost: a\r\n\r\nGET /echo/2 HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let first = answer(&mut client, &mut buf).await;
        let second = answer(&mut client, &mut buf).await;
        assert_eq!(first.body, "GET /echo/1 expect=false body=");
        assert_eq!(second.body, "GET /echo/2 expect=false body=");
        assert!(first.headers.contains_key(header::DATE));
        assert_eq!(first.headers[header::CONTENT_LENGTH], "30");
        assert!(!first.headers.contains_key(header::CONNECTION));
        client
            .write_all(b"GET /echo/3 HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answer(&mut client, &mut buf).await.status, 200);
    }

    #[tokio::test]
    async fn bodies_by_length_and_chunked_arrive_and_the_connection_is_kept() {
        let (mut client, _server) = connect().await;
        let mut buf = BytesMut::new();
        client
            .write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhel")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"lo").await.unwrap();
        assert_eq!(
            answer(&mut client, &mut buf).await.body,
            "POST /echo expect=false body=hello"
        );
        client
            .write_all(
                b"PUT /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-t: 1\r\n\r\nGET /echo/after HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await
            .unwrap();
        assert_eq!(
            answer(&mut client, &mut buf).await.body,
            "PUT /echo expect=false body=abcde"
        );
        assert_eq!(
            answer(&mut client, &mut buf).await.body,
            "GET /echo/after expect=false body="
        );
    }

    #[tokio::test]
    async fn unknown_lengths_go_chunked_to_http11_and_until_the_close_to_http10() {
        let (mut client, _server) = connect().await;
        let mut buf = BytesMut::new();
        client
            .write_all(b"GET /stream HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut client, &mut buf).await;
        assert_eq!(a.headers[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(a.body, "one,two");

        let (mut client, server) = connect().await;
        client
            .write_all(b"GET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut client, &mut BytesMut::new()).await;
        assert_eq!(a.headers[header::CONNECTION], "close");
        assert!(!a.headers.contains_key(header::TRANSFER_ENCODING));
        assert_eq!(a.body, "one,two");
        assert!(matches!(server.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn http10_keep_alive_is_answered_in_kind_and_close_is_honoured() {
        let (mut client, _server) = connect().await;
        let mut buf = BytesMut::new();
        client
            .write_all(b"GET /echo HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut client, &mut buf).await;
        assert_eq!(a.headers[header::CONNECTION], "keep-alive");
        client
            .write_all(b"GET /echo HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut client, &mut buf).await;
        assert_eq!(a.headers[header::CONNECTION], "close");
        assert!(closed(&mut client).await);
    }

    #[tokio::test]
    async fn head_answers_keep_their_length_and_send_no_body() {
        let (mut client, _server) = connect().await;
        client
            .write_all(
                b"HEAD /echo HTTP/1.1\r\nhost: a\r\n\r\nGET /echo HTTP/1.1\r\nhost: a\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        // The head of HEAD's answer, then at once the next answer's.
        let head = loop {
            if let Some(head) = super::super::parse_head(&buf).unwrap() {
                break head;
            }
            client.read_buf(&mut buf).await.unwrap();
        };
        buf.advance(head.len);
        assert_eq!(
            head.content_length,
            Some(29),
            "HEAD /echo expect=false body="
        );
        let next = answer(&mut client, &mut buf).await;
        assert_eq!(next.body, "GET /echo expect=false body=");
    }

    #[tokio::test]
    async fn heads_that_do_not_parse_are_refused_and_the_connection_closed() {
        for (request, status) in [
            (&b"GET / HTTP/1.1\r\nbad header\r\n\r\n"[..], 400),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\ncontent-length: +1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n", 400),
            (
                b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nhost: a\r\n\r\nG\x01T / HTTP/1.1\r\n\r\n",
                200,
            ),
        ] {
            let (mut client, server) = connect().await;
            client.write_all(request).await.unwrap();
            let mut buf = BytesMut::new();
            let a = answer(&mut client, &mut buf).await;
            assert_eq!(a.status, status, "{}", String::from_utf8_lossy(request));
            if status == 200 {
                assert_eq!(answer(&mut client, &mut buf).await.status, 400);
            }
            assert!(closed(&mut client).await);
            drop(client);
            assert!(matches!(server.await.unwrap(), Served::Closed));
        }
        let (mut client, _server) = connect().await;
        let big = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70 * 1024));
        client.write_all(big.as_bytes()).await.unwrap();
        assert_eq!(answer(&mut client, &mut BytesMut::new()).await.status, 431);
        let (mut client, _server) = connect().await;
        let many: String = (0..120).map(|i| format!("x-{i}: v\r\n")).collect();
        client
            .write_all(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(answer(&mut client, &mut BytesMut::new()).await.status, 431);
    }

    #[tokio::test]
    async fn a_body_left_unread_closes_the_connection_after_the_answer() {
        let (mut client, server) = connect().await;
        client
            .write_all(b"POST /ignore HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n0123456789GET /echo HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let a = answer(&mut client, &mut BytesMut::new()).await;
        assert_eq!(a.body, "ignored");
        assert!(
            closed(&mut client).await,
            "the pipelined request is not served"
        );
        drop(client);
        assert!(matches!(server.await.unwrap(), Served::Closed));
    }

    #[tokio::test]
    async fn an_expectation_of_100_continue_is_answered_and_not_passed_on() {
        let (mut client, _server) = connect().await;
        client
            .write_all(b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        let mut interim = [0u8; 25];
        client.read_exact(&mut interim).await.unwrap();
        assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
        client.write_all(b"ok").await.unwrap();
        let a = answer(&mut client, &mut BytesMut::new()).await;
        assert_eq!(a.body, "POST /echo expect=false body=ok");
    }

    #[tokio::test]
    async fn a_connection_opening_with_the_http2_preface_is_handed_back_whole() {
        let (mut client, server) = connect().await;
        client.write_all(&PREFACE[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(&PREFACE[10..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let Served::Http2(mut io) = server.await.unwrap() else {
            panic!("not handed back as HTTP/2");
        };
        let mut seen = vec![0u8; PREFACE.len() + 6];
        io.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen[..PREFACE.len()], PREFACE);
        assert_eq!(&seen[PREFACE.len()..], b"frames");
        io.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn switching_protocols_hands_the_connection_over_with_what_came_early() {
        let (mut client, server) = connect().await;
        client
            .write_all(b"GET /upgrade HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: test\r\n\r\nhi")
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let head = loop {
            if let Some(head) = super::super::parse_head(&buf).unwrap() {
                break head;
            }
            client.read_buf(&mut buf).await.unwrap();
        };
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.headers[header::UPGRADE], "test");
        buf.advance(head.len);
        while buf.len() < 8 {
            client.read_buf(&mut buf).await.unwrap();
        }
        assert_eq!(&buf[..8], b"early=hi");
        client.write_all(b"ping").await.unwrap();
        let mut pong = [0u8; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!(&pong, b"ping");
        assert!(matches!(server.await.unwrap(), Served::Closed));
    }

    #[test]
    fn request_heads_are_checked_as_the_rfc_says() {
        let head = parse_request_head(
            b"GET http://h/x?y HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(head.body, BodyLength::Chunked);
        assert!(
            !head.keep_alive,
            "a message with both lengths closes the connection"
        );
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(head.uri.path_and_query().unwrap().as_str(), "/x?y");
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nhost: a\r\n")
                .unwrap()
                .is_none()
        );
        let head = parse_request_head(b"OPTIONS * HTTP/1.0\r\ncontent-length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(head.body, BodyLength::None);
        assert!(!head.keep_alive);
        let head = parse_request_head(
            b"GET / HTTP/1.1\r\nexpect: 100-continue\r\nconnection: keep-alive, Upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(head.upgrade);
        assert!(!head.expects_continue, "no body, nothing to continue");
    }
}
