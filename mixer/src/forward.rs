//! The receiving end of Fluentd's Forward protocol, as fluentd's `in_forward` speaks it.
//!
//! Used by `keel-fluentd` (the local mesh's stand-in for a fluentd pod) and by the tests that
//! check mixer's fluentd adapter. Accepted: Message (`[tag, time, record, options?]`),
//! Forward (`[tag, [[time, record], ...], options?]`) and PackedForward (`[tag, bin|str of
//! concatenated entries, options?]`) modes; `time` as an integer or an EventTime (ext 0). A
//! message whose options carry `chunk` is acknowledged with `{"ack": chunk}` only after its
//! events were handed on, so a sender that waits for acks loses nothing. Not accepted (the
//! connection is closed with the reason logged): CompressedPackedForward (`compressed:
//! gzip`), the `<security>` handshake, and messages larger than [`MAX_MESSAGE_BYTES`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmpv::Value as Mp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A bigger unfinished message closes the connection (fluentd's default chunk limit is 8 MiB
/// per buffer chunk; a sender splits before this).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// One event: its tag, time and record.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub tag: String,
    pub time: SystemTime,
    pub record: Mp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    #[error("not a forward-protocol message: {0}")]
    Shape(String),
    #[error(
        "compressed PackedForward ({0}) is not supported; configure the sender without compression"
    )]
    Compressed(String),
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("invalid msgpack: {0}")]
    Msgpack(String),
}

/// A decoded message: its events and the chunk id to acknowledge, when asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub events: Vec<Event>,
    pub chunk: Option<Mp>,
}

fn event_time(v: &Mp) -> Result<SystemTime, ForwardError> {
    match v {
        Mp::Integer(i) => i
            .as_u64()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .ok_or_else(|| ForwardError::Shape(format!("negative time {i}"))),
        Mp::F64(f) if f.is_finite() && *f >= 0.0 => Ok(UNIX_EPOCH + Duration::from_secs_f64(*f)),
        Mp::Ext(0, b) if b.len() == 8 => {
            let secs = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let nanos = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            Ok(UNIX_EPOCH + Duration::new(u64::from(secs), nanos.min(999_999_999)))
        }
        other => Err(ForwardError::Shape(format!(
            "time must be an integer or an EventTime, got {other}"
        ))),
    }
}

fn entry(tag: &str, v: &Mp) -> Result<Event, ForwardError> {
    match v.as_array().map(Vec::as_slice) {
        Some([time, record]) => Ok(Event {
            tag: tag.to_owned(),
            time: event_time(time)?,
            record: record.clone(),
        }),
        _ => Err(ForwardError::Shape(format!(
            "an entry must be [time, record], got {v}"
        ))),
    }
}

fn option<'a>(options: Option<&'a Mp>, key: &str) -> Option<&'a Mp> {
    options?
        .as_map()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// Decodes one top-level msgpack value into its events.
pub fn decode(msg: &Mp) -> Result<Message, ForwardError> {
    let Some(arr) = msg.as_array() else {
        return Err(ForwardError::Shape(format!("expected an array, got {msg}")));
    };
    let Some(tag) = arr.first().and_then(Mp::as_str) else {
        return Err(ForwardError::Shape(
            "the first element must be the tag".into(),
        ));
    };
    let (events, options) = match arr.get(1) {
        Some(Mp::Array(entries)) => (
            entries
                .iter()
                .map(|e| entry(tag, e))
                .collect::<Result<Vec<_>, _>>()?,
            arr.get(2),
        ),
        Some(packed @ (Mp::Binary(_) | Mp::String(_))) => {
            let options = arr.get(2);
            if let Some(c) = option(options, "compressed") {
                return Err(ForwardError::Compressed(c.to_string()));
            }
            let bytes: &[u8] = match packed {
                Mp::Binary(b) => b,
                Mp::String(s) => s.as_bytes(),
                _ => &[],
            };
            let mut cur = std::io::Cursor::new(bytes);
            let mut events = Vec::new();
            while (cur.position() as usize) < bytes.len() {
                let e = rmpv::decode::read_value(&mut cur)
                    .map_err(|e| ForwardError::Msgpack(format!("in a packed entry: {e}")))?;
                events.push(entry(tag, &e)?);
            }
            (events, options)
        }
        Some(time) if arr.len() >= 3 => (
            vec![Event {
                tag: tag.to_owned(),
                time: event_time(time)?,
                record: arr[2].clone(),
            }],
            arr.get(3),
        ),
        _ => {
            return Err(ForwardError::Shape(
                "expected [tag, time, record], [tag, entries] or [tag, packed entries]".into(),
            ));
        }
    };
    Ok(Message {
        events,
        chunk: option(options, "chunk").cloned(),
    })
}

/// Takes every complete message off the front of `buf`; the rest waits for more bytes.
pub fn split_messages(buf: &mut Vec<u8>) -> Result<Vec<Mp>, ForwardError> {
    let mut out = Vec::new();
    let mut used = 0usize;
    loop {
        let rest = &buf[used..];
        if rest.is_empty() {
            break;
        }
        let mut cur = std::io::Cursor::new(rest);
        match rmpv::decode::read_value(&mut cur) {
            Ok(v) => {
                used += cur.position() as usize;
                out.push(v);
            }
            Err(e) if is_incomplete(&e) => break,
            Err(e) => return Err(ForwardError::Msgpack(e.to_string())),
        }
    }
    buf.drain(..used);
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(ForwardError::TooLarge);
    }
    Ok(out)
}

fn is_incomplete(e: &rmpv::decode::Error) -> bool {
    match e {
        rmpv::decode::Error::InvalidMarkerRead(io) | rmpv::decode::Error::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// Serves one connection: decodes messages, hands each message's events to `deliver` (which
/// returns once they are safe), then acknowledges. Returns when the peer closes, or with the
/// reason the connection was given up.
pub async fn serve_connection<S, F>(mut stream: S, mut deliver: F) -> Result<(), ForwardError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Vec<Event>),
{
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut tmp = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut tmp).await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(n) => n,
        };
        buf.extend_from_slice(&tmp[..n]);
        for msg in split_messages(&mut buf)? {
            let Message { events, chunk } = decode(&msg)?;
            deliver(events);
            if let Some(chunk) = chunk {
                let mut ack = Vec::new();
                // Writing to a Vec cannot fail.
                let _ =
                    rmpv::encode::write_value(&mut ack, &Mp::Map(vec![(Mp::from("ack"), chunk)]));
                if stream.write_all(&ack).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// A msgpack value as JSON: binary as lossy UTF-8, EventTime-like extensions as their bytes'
/// hex, non-string map keys by their msgpack text.
pub fn to_json(v: &Mp) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Mp::Nil => J::Null,
        Mp::Boolean(b) => J::Bool(*b),
        Mp::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        Mp::F32(f) => serde_json::Number::from_f64(f64::from(*f)).map_or(J::Null, J::Number),
        Mp::F64(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Mp::String(s) => J::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Mp::Binary(b) => J::String(String::from_utf8_lossy(b).into_owned()),
        Mp::Array(a) => J::Array(a.iter().map(to_json).collect()),
        Mp::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = k.as_str().map_or_else(|| k.to_string(), str::to_owned);
                    (key, to_json(v))
                })
                .collect(),
        ),
        Mp::Ext(t, b) => J::String(format!(
            "ext{t}:{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )),
    }
}

/// One event as fluentd's `out_stdout` prints it: time, tag, then the record as JSON.
pub fn stdout_line(e: &Event) -> String {
    format!(
        "{} {}: {}",
        keel_attributes::value::format_timestamp(e.time),
        e.tag,
        to_json(&e.record)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enc(v: &Mp) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn rec(k: &str, v: i64) -> Mp {
        Mp::Map(vec![(Mp::from(k), Mp::from(v))])
    }

    #[test]
    fn all_three_modes_decode_with_their_chunk() {
        let et = Mp::Ext(0, vec![0, 0, 0, 10, 0, 0, 0, 5]);
        let msg = Mp::Array(vec![Mp::from("t"), Mp::from(7), rec("a", 1)]);
        let m = decode(&msg).unwrap();
        assert_eq!(m.events.len(), 1);
        assert_eq!(m.events[0].time, UNIX_EPOCH + Duration::from_secs(7));
        assert_eq!(m.chunk, None);

        let chunk = Mp::Map(vec![(Mp::from("chunk"), Mp::from("c1"))]);
        let fwd = Mp::Array(vec![
            Mp::from("t"),
            Mp::Array(vec![
                Mp::Array(vec![et.clone(), rec("a", 1)]),
                Mp::Array(vec![Mp::from(8), rec("a", 2)]),
            ]),
            chunk.clone(),
        ]);
        let m = decode(&fwd).unwrap();
        assert_eq!(m.events.len(), 2);
        assert_eq!(m.events[0].time, UNIX_EPOCH + Duration::new(10, 5));
        assert_eq!(m.chunk, Some(Mp::from("c1")));

        let mut packed = enc(&Mp::Array(vec![et.clone(), rec("a", 1)]));
        packed.extend(enc(&Mp::Array(vec![et, rec("a", 2)])));
        let p = Mp::Array(vec![Mp::from("t"), Mp::Binary(packed), chunk]);
        let m = decode(&p).unwrap();
        assert_eq!(
            m.events
                .iter()
                .map(|e| to_json(&e.record))
                .collect::<Vec<_>>(),
            vec![serde_json::json!({"a":1}), serde_json::json!({"a":2})]
        );
    }

    #[test]
    fn bad_messages_are_named() {
        assert!(matches!(decode(&Mp::from(1)), Err(ForwardError::Shape(_))));
        assert!(matches!(
            decode(&Mp::Array(vec![Mp::from(1)])),
            Err(ForwardError::Shape(_))
        ));
        let gz = Mp::Array(vec![
            Mp::from("t"),
            Mp::Binary(vec![1, 2]),
            Mp::Map(vec![(Mp::from("compressed"), Mp::from("gzip"))]),
        ]);
        assert!(matches!(decode(&gz), Err(ForwardError::Compressed(_))));
        let bad_entry = Mp::Array(vec![Mp::from("t"), Mp::Array(vec![Mp::from(1)])]);
        assert!(matches!(decode(&bad_entry), Err(ForwardError::Shape(_))));
    }

    #[test]
    fn split_keeps_the_unfinished_tail() {
        let one = enc(&Mp::Array(vec![Mp::from("t"), Mp::from(1), rec("a", 1)]));
        let mut buf = one.clone();
        buf.extend_from_slice(&one[..one.len() - 2]);
        let msgs = split_messages(&mut buf).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(buf.len(), one.len() - 2);
        buf.extend_from_slice(&one[one.len() - 2..]);
        assert_eq!(split_messages(&mut buf).unwrap().len(), 1);
        assert!(buf.is_empty());
    }

    #[tokio::test]
    async fn a_connection_acks_each_chunk_after_delivery() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = got.clone();
        let task = tokio::spawn(serve_connection(server, move |evs| {
            sink.lock().unwrap().extend(evs);
        }));
        let fwd = Mp::Array(vec![
            Mp::from("newlog"),
            Mp::Array(vec![Mp::Array(vec![Mp::from(1), rec("seq", 1)])]),
            Mp::Map(vec![(Mp::from("chunk"), Mp::from("k"))]),
        ]);
        client.write_all(&enc(&fwd)).await.unwrap();
        let mut ack = vec![0u8; 64];
        let n = client.read(&mut ack).await.unwrap();
        let v = rmpv::decode::read_value(&mut &ack[..n]).unwrap();
        assert_eq!(v, Mp::Map(vec![(Mp::from("ack"), Mp::from("k"))]));
        assert_eq!(got.lock().unwrap().len(), 1);
        drop(client);
        assert_eq!(task.await.unwrap(), Ok(()));
        let line = stdout_line(&got.lock().unwrap()[0]);
        assert_eq!(line, "1970-01-01T00:00:01Z newlog: {\"seq\":1}");
    }
}
