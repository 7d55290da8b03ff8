//! Request bodies that stream upstream as they arrive and can still be sent again.
//!
//! Envoy's router passes a request body on as it arrives and keeps a copy, up to the buffer
//! limit, so that a retry or a mirror can send it again. [`Replay`] does the same: each
//! [`Replay::attempt`] is a body that first replays the frames kept so far, then pulls new
//! frames from the downstream connection (keeping them too while the copy stays under the
//! limit). A body larger than the limit still streams through; it just cannot be retried.
//! Bidirectional gRPC streams therefore work: nothing waits for the request's end.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::HeaderMap;

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the downstream connection delivers it: from keel-proxy's own HTTP/1.1
/// server, or from hyper's (HTTP/2, TLS listeners).
#[derive(Debug)]
pub enum Downstream {
    H1(crate::h1::server::RequestBody),
    Hyper(Incoming),
}

impl Body for Downstream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Downstream::H1(b) => Pin::new(b).poll_frame(cx),
            Downstream::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Downstream::H1(b) => b.is_end_stream(),
            Downstream::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Downstream::H1(b) => b.size_hint(),
            Downstream::Hyper(b) => b.size_hint(),
        }
    }
}

/// What a body frame was, kept for replay (hyper's `Frame` is not `Clone`).
#[derive(Clone, Debug)]
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(b) => Frame::data(b.clone()),
            Kept::Trailers(t) => Frame::trailers(t.clone()),
        }
    }
}

#[derive(Debug)]
struct State {
    /// The downstream body; `None` once it ended (or failed).
    source: Option<Downstream>,
    /// Frames pulled from the source so far.
    pulled: usize,
    /// The first `kept.len()` of them; all of them unless `overflowed`.
    kept: Vec<Kept>,
    kept_bytes: usize,
    overflowed: bool,
    /// Data bytes read from downstream.
    bytes_read: u64,
    failed: Option<String>,
    /// Woken when the body ends (mirrors wait for it).
    ended: Option<tokio::sync::watch::Sender<bool>>,
}

/// A downstream request body shared by the attempts that send it upstream.
#[derive(Clone, Debug)]
pub struct Replay {
    /// `None`: the request has no body.
    state: Option<Arc<Mutex<State>>>,
    limit: usize,
    ended: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Replay {
    /// Keeps up to `limit` bytes of `body` for replay.
    pub fn new(body: Downstream, limit: usize) -> Replay {
        if body.is_end_stream() {
            return Replay {
                state: None,
                limit,
                ended: None,
            };
        }
        let (tx, rx) = tokio::sync::watch::channel(false);
        Replay {
            state: Some(Arc::new(Mutex::new(State {
                source: Some(body),
                pulled: 0,
                kept: Vec::new(),
                kept_bytes: 0,
                overflowed: false,
                bytes_read: 0,
                failed: None,
                ended: Some(tx),
            }))),
            limit,
            ended: Some(rx),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, State>> {
        self.state
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A body that sends the request from its first byte.
    pub fn attempt(&self) -> Attempt {
        Attempt {
            replay: self.clone(),
            next: 0,
        }
    }

    /// The whole body can be sent again: nothing was passed on without being kept.
    pub fn replayable(&self) -> bool {
        self.lock()
            .is_none_or(|s| !s.overflowed && s.failed.is_none())
    }

    /// Data bytes read from downstream so far.
    pub fn bytes_read(&self) -> u64 {
        self.lock().map_or(0, |s| s.bytes_read)
    }

    /// The whole body once downstream finished sending it, if it was all kept: what a
    /// mirror sends. `None` when it was too large or the downstream failed.
    pub async fn complete(&self) -> Option<(Bytes, Option<HeaderMap>)> {
        if let Some(mut rx) = self.ended.clone() {
            // The sender is dropped without sending only if the state is gone.
            rx.wait_for(|done| *done).await.ok()?;
        }
        let Some(s) = self.lock() else {
            return Some((Bytes::new(), None));
        };
        if s.overflowed || s.failed.is_some() {
            return None;
        }
        let mut data = bytes::BytesMut::with_capacity(s.kept_bytes);
        let mut trailers = None;
        for k in &s.kept {
            match k {
                Kept::Data(b) => data.extend_from_slice(b),
                Kept::Trailers(t) => trailers = Some(t.clone()),
            }
        }
        Some((data.freeze(), trailers))
    }
}

/// One sending of the request body (the first try, a retry).
#[derive(Debug)]
pub struct Attempt {
    replay: Replay,
    /// Index of the next frame this attempt sends.
    next: usize,
}

impl Body for Attempt {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let limit = self.replay.limit;
        let next = self.next;
        let Some(mut s) = self.replay.lock() else {
            return Poll::Ready(None);
        };
        if let Some(k) = s.kept.get(next) {
            let frame = k.frame();
            drop(s);
            self.next += 1;
            return Poll::Ready(Some(Ok(frame)));
        }
        if next < s.pulled {
            // Frames this attempt has not sent were passed on without being kept.
            return Poll::Ready(Some(Err(
                "the request body is larger than the retry buffer and cannot be sent again".into(),
            )));
        }
        if let Some(reason) = &s.failed {
            return Poll::Ready(Some(Err(reason.clone().into())));
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        let result = match polled {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                s.source = None;
                if let Some(tx) = s.ended.take() {
                    tx.send_replace(true);
                }
                None
            }
            Poll::Ready(Some(Err(e))) => {
                s.source = None;
                s.failed = Some(format!("downstream request body: {e}"));
                if let Some(tx) = s.ended.take() {
                    tx.send_replace(true);
                }
                Some(Err(BodyError::from(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                s.pulled += 1;
                let kept = if let Some(data) = frame.data_ref() {
                    s.bytes_read += data.len() as u64;
                    Kept::Data(data.clone())
                } else if let Some(t) = frame.trailers_ref() {
                    Kept::Trailers(t.clone())
                } else {
                    Kept::Data(Bytes::new())
                };
                let size = match &kept {
                    Kept::Data(b) => b.len(),
                    Kept::Trailers(_) => 0,
                };
                if !s.overflowed && s.kept_bytes + size <= limit {
                    s.kept_bytes += size;
                    s.kept.push(kept);
                } else if !s.overflowed {
                    // From here on the body only streams: free what was kept.
                    s.overflowed = true;
                    s.kept = Vec::new();
                    s.kept_bytes = 0;
                }
                Some(Ok(frame))
            }
        };
        drop(s);
        if matches!(result, Some(Ok(_))) {
            self.next += 1;
        }
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        match self.replay.lock() {
            None => true,
            Some(s) => s.source.is_none() && s.failed.is_none() && self.next >= s.pulled,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.replay.lock() {
            None => SizeHint::with_exact(0),
            Some(s) => match &s.source {
                // Before anything was sent, the downstream's own hint (its content-length).
                Some(src) if self.next == 0 && s.pulled == 0 => src.size_hint(),
                Some(_) => SizeHint::default(),
                // All of it is here: a retry knows exactly what is left to send.
                None if !s.overflowed => {
                    let left = s.kept.iter().skip(self.next).map(|k| match k {
                        Kept::Data(b) => b.len() as u64,
                        Kept::Trailers(_) => 0,
                    });
                    SizeHint::with_exact(left.sum())
                }
                None => SizeHint::default(),
            },
        }
    }
}

/// What goes upstream: a request's body (streamed, replayable) or a whole one (mirrors).
#[derive(Debug)]
pub enum Outgoing {
    Stream(Attempt),
    Whole {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl Outgoing {
    pub fn whole(data: Bytes, trailers: Option<HeaderMap>) -> Outgoing {
        Outgoing::Whole {
            data: (!data.is_empty()).then_some(data),
            trailers,
        }
    }
}

impl Body for Outgoing {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Outgoing::Stream(a) => Pin::new(a).poll_frame(cx),
            Outgoing::Whole { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Outgoing::Stream(a) => a.is_end_stream(),
            Outgoing::Whole { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Outgoing::Stream(a) => a.size_hint(),
            Outgoing::Whole { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
