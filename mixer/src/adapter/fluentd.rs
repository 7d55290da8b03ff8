//! The fluentd adapter: log entries shipped with Fluentd's forward protocol.
//!
//! Each entry is `[time, record]` (time as an EventTime, the record the instance's variables
//! plus `severity`), tagged with the instance's full name. Entries are batched per tag in
//! Forward mode (`[tag, [[time, record], ...], {"chunk": id}]`) and every batch waits for the
//! receiver's `{"ack": id}`, so a batch is only dropped from the buffer once fluentd has it.
//! While the receiver is away, entries wait in a bounded buffer (`instanceBufferSize`); past
//! it they are dropped and counted. Never blocks the dispatcher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_attributes::Value;
use keel_config::mixer::FluentdParams;
use rmpv::Value as Mp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::instance::{Instance, InstanceBody};
use crate::names::Resolver;

const DEFAULT_ADDRESS: &str = "localhost:24224";
const DEFAULT_BUFFER: usize = 1024;
const DEFAULT_BATCH_BYTES: usize = 8 * 1024 * 1024;
const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_millis(200);
const DEFAULT_PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// One encoded entry and its tag.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub tag: String,
    /// `[time, record]`.
    pub value: Mp,
}

/// An entry for a log instance; `None` for other instances.
pub fn entry(params: &FluentdParams, instance: &Instance) -> Option<Entry> {
    let InstanceBody::LogEntry {
        variables,
        timestamp,
        severity,
    } = &instance.body
    else {
        return None;
    };
    let integer_duration = params.integer_duration.unwrap_or(false);
    let mut record: Vec<(Mp, Mp)> = variables
        .iter()
        .map(|(k, v)| (Mp::from(k.as_str()), to_msgpack(v, integer_duration)))
        .collect();
    if !severity.is_empty() {
        record.push((Mp::from("severity"), Mp::from(severity.as_str())));
    }
    Some(Entry {
        tag: instance.name.to_string(),
        value: Mp::Array(vec![event_time(*timestamp), Mp::Map(record)]),
    })
}

/// Fluentd's EventTime: ext type 0, seconds and nanoseconds as big-endian u32s.
fn event_time(t: SystemTime) -> Mp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(8);
    b.extend_from_slice(&secs.to_be_bytes());
    b.extend_from_slice(&d.subsec_nanos().to_be_bytes());
    Mp::Ext(0, b)
}

fn to_msgpack(v: &Value, integer_duration: bool) -> Mp {
    match v {
        Value::Int64(i) => Mp::from(*i),
        Value::Double(d) => Mp::from(*d),
        Value::Bool(b) => Mp::from(*b),
        Value::Duration(d) if integer_duration => {
            Mp::from(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        }
        Value::StringMap(m) => Mp::Map(
            m.iter()
                .map(|(k, v)| (Mp::from(k.as_str()), Mp::from(v.as_str())))
                .collect(),
        ),
        other => Mp::from(other.to_string()),
    }
}

/// Forward-mode messages for `entries`, one per tag, each asking for an ack with `chunk`.
pub fn forward_messages(entries: &[Entry], chunk_prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut by_tag: BTreeMap<&str, Vec<Mp>> = BTreeMap::new();
    for e in entries {
        by_tag.entry(&e.tag).or_default().push(e.value.clone());
    }
    by_tag
        .into_iter()
        .enumerate()
        .map(|(i, (tag, values))| {
            let chunk = format!("{chunk_prefix}-{i}");
            let msg = Mp::Array(vec![
                Mp::from(tag),
                Mp::Array(values),
                Mp::Map(vec![(Mp::from("chunk"), Mp::from(chunk.as_str()))]),
            ]);
            let mut out = Vec::new();
            // Writing to a Vec cannot fail.
            let _ = rmpv::encode::write_value(&mut out, &msg);
            (chunk, out)
        })
        .collect()
}

/// A running fluentd handler: a bounded buffer and the task that ships it.
#[derive(Debug)]
pub struct Sink {
    tx: mpsc::Sender<Entry>,
    /// Entries dropped because the buffer was full.
    pub dropped: Arc<AtomicU64>,
    /// Entries the receiver acknowledged.
    pub delivered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    pub params: FluentdParams,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// Starts shipping to `params.address` (default `localhost:24224`), found by `names`.
    pub fn start(params: FluentdParams, names: Resolver) -> Sink {
        let buffer = params
            .instance_buffer_size
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(DEFAULT_BUFFER);
        let (tx, rx) = mpsc::channel(buffer);
        let dropped = Arc::new(AtomicU64::new(0));
        let delivered = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(ship(params.clone(), names, rx, delivered.clone()));
        Sink {
            tx,
            dropped,
            delivered,
            task,
            params,
        }
    }

    /// Queues an entry; false (and counted) when the buffer is full.
    pub fn offer(&self, e: Entry) -> bool {
        if self.tx.try_send(e).is_ok() {
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

async fn ship(
    params: FluentdParams,
    names: Resolver,
    mut rx: mpsc::Receiver<Entry>,
    delivered: Arc<AtomicU64>,
) {
    let address = params
        .address
        .clone()
        .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
    let max_bytes = params
        .max_batch_size_bytes
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_BATCH_BYTES);
    let interval = params
        .push_interval_duration
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_PUSH_INTERVAL);
    let timeout = params
        .push_timeout_duration
        .map(|d| d.0)
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_PUSH_TIMEOUT);
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut seq: u64 = 0;
    let mut backoff = Duration::from_millis(50);
    loop {
        // A batch: the first entry, then whatever arrives within the push interval.
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        let mut bytes = encoded_len(&batch[0].value);
        let deadline = tokio::time::Instant::now() + interval;
        while bytes < max_bytes {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => {
                    bytes += encoded_len(&e.value);
                    batch.push(e);
                }
                Ok(None) | Err(_) => break,
            }
        }
        seq += 1;
        let messages = forward_messages(&batch, &format!("keel-{seq}"));
        // Until every message of the batch is acknowledged, keep trying; meanwhile new
        // entries wait in the channel (bounded: overflow is dropped and counted upstream).
        let mut next = 0;
        while next < messages.len() {
            if conn.is_none() {
                match names.connect(&address).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        conn = Some(s);
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        tracing::debug!(%address, error = %e, "fluentd not reachable; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let Some(stream) = conn.as_mut() else {
                continue;
            };
            let (chunk, bytes) = &messages[next];
            match tokio::time::timeout(timeout, send_and_wait_ack(stream, bytes, chunk)).await {
                Ok(Ok(())) => {
                    next += 1;
                }
                Ok(Err(e)) => {
                    tracing::debug!(%address, error = %e, "fluentd send failed; reconnecting");
                    conn = None;
                }
                Err(_) => {
                    tracing::debug!(%address, "fluentd did not acknowledge in time; reconnecting");
                    conn = None;
                }
            }
        }
        delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

fn encoded_len(v: &Mp) -> usize {
    let mut out = Vec::new();
    let _ = rmpv::encode::write_value(&mut out, v);
    out.len()
}

async fn send_and_wait_ack(
    stream: &mut tokio::net::TcpStream,
    bytes: &[u8],
    chunk: &str,
) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 256];
    loop {
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "fluentd closed the connection before acknowledging",
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
        let mut cursor = std::io::Cursor::new(buf.as_slice());
        if let Ok(v) = rmpv::decode::read_value(&mut cursor) {
            let acked = v.as_map().is_some_and(|m| {
                m.iter()
                    .any(|(k, v)| k.as_str() == Some("ack") && v.as_str() == Some(chunk))
            });
            return if acked {
                Ok(())
            } else {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unexpected answer from fluentd: {v}"),
                ))
            };
        }
    }
}
