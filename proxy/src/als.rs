//! Access logs to a gRPC access log service (Envoy's ALS; mixer in Keel): entries are
//! queued without blocking the request (a full queue drops and counts), batched per sink,
//! and sent on a long-lived stream whose first message names the node and the log.
//!
//! File access logs (Istio's `accessLogFile`, `/dev/stdout` in the demo profile) are lines
//! in Envoy's default format, written by one task per file; the request never waits for
//! the write either.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, Node, RequestMethod, SocketAddress};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, ConnectionProperties, HttpAccessLogEntry, HttpRequestProperties,
    HttpResponseProperties, TcpAccessLogEntry,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp, UInt32Value};
use tokio::sync::{mpsc, watch};

use crate::model::{AccessLog, AccessLogSink, Config, Discovery};

const QUEUE: usize = 10_000;

/// One HTTP request, as the access log records it.
#[derive(Clone, Debug)]
pub struct HttpEntry {
    pub start_time: SystemTime,
    pub duration: Duration,
    pub method: String,
    pub path: String,
    pub authority: String,
    pub request_headers: Vec<(String, String)>,
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// Envoy's response flags (`NR`, `UH`, `UF`, `UO`, `UT`, `FI`, `DI`, `URX`, `UC`),
    /// comma-separated; empty for none.
    pub response_flags: String,
    /// Milliseconds from sending upstream to the response head (the
    /// `x-envoy-upstream-service-time` header).
    pub upstream_service_time: Option<u64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_cluster: String,
    pub upstream_address: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
}

impl HttpEntry {
    /// A logged request header's value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.request_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// One proxied TCP connection, logged when it closes.
#[derive(Clone, Debug)]
pub struct TcpEntry {
    pub start_time: SystemTime,
    pub duration: Duration,
    pub upstream_cluster: String,
    pub upstream_address: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
    /// Bytes from the downstream peer, and bytes sent to it.
    pub received_bytes: u64,
    pub sent_bytes: u64,
}

/// What a sink queue carries.
#[derive(Debug)]
enum Entry {
    Http(HttpEntry),
    Tcp(TcpEntry),
}

#[derive(Debug)]
pub struct AccessLogs {
    node_id: String,
    config: watch::Receiver<Arc<Config>>,
    sinks: Mutex<HashMap<(String, String), mpsc::Sender<Entry>>>,
    /// Line writers by file path.
    files: Mutex<HashMap<String, mpsc::Sender<String>>>,
    pub dropped: prometheus_client::metrics::counter::Counter,
}

impl AccessLogs {
    pub fn new(node_id: String, config: watch::Receiver<Arc<Config>>) -> AccessLogs {
        AccessLogs {
            node_id,
            config,
            sinks: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            dropped: Default::default(),
        }
    }

    /// Queues `entry` for the log's destinations; never waits.
    pub fn log_http(&self, log: &AccessLog, entry: HttpEntry) {
        if let Some(path) = &log.file {
            self.write_line(path, http_default_line(&entry));
        }
        if let Some(sink) = &log.grpc {
            self.queue(sink, Entry::Http(entry));
        }
    }

    /// Queues a closed TCP connection's entry for the log's destinations; never waits.
    pub fn log_tcp(&self, log: &AccessLog, entry: TcpEntry) {
        if let Some(path) = &log.file {
            self.write_line(path, tcp_default_line(&entry));
        }
        if let Some(sink) = &log.grpc {
            self.queue(sink, Entry::Tcp(entry));
        }
    }

    fn write_line(&self, path: &str, line: String) {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let tx = files.entry(path.to_owned()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            let path = path.to_owned();
            let spawned = std::thread::Builder::new()
                .name("access-log-file".into())
                .spawn(move || write_file(path, rx));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the access log writer");
            }
            tx
        });
        if tx.try_send(line).is_err() {
            self.dropped.inc();
        }
    }

    fn queue(&self, sink: &AccessLogSink, entry: Entry) {
        let key = (sink.cluster.clone(), sink.log_name.clone());
        let mut sinks = self.sinks.lock().unwrap_or_else(|p| p.into_inner());
        let tx = sinks.entry(key).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(ship(
                self.node_id.clone(),
                sink.clone(),
                self.config.clone(),
                rx,
            ));
            tx
        });
        if tx.try_send(entry).is_err() {
            self.dropped.inc();
        }
    }
}

fn address(a: SocketAddr) -> Address {
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(a.port()))),
            ..Default::default()
        })),
    }
}

fn method(m: &str) -> RequestMethod {
    match m {
        "GET" => RequestMethod::Get,
        "HEAD" => RequestMethod::Head,
        "POST" => RequestMethod::Post,
        "PUT" => RequestMethod::Put,
        "DELETE" => RequestMethod::Delete,
        "CONNECT" => RequestMethod::Connect,
        "OPTIONS" => RequestMethod::Options,
        "TRACE" => RequestMethod::Trace,
        "PATCH" => RequestMethod::Patch,
        _ => RequestMethod::MethodUnspecified,
    }
}

fn pb_time(t: SystemTime) -> Timestamp {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// The properties HTTP and TCP entries share.
fn common(
    downstream_remote: SocketAddr,
    downstream_local: SocketAddr,
    upstream: Option<SocketAddr>,
    cluster: &str,
    start: SystemTime,
) -> AccessLogCommon {
    AccessLogCommon {
        downstream_remote_address: Some(address(downstream_remote)),
        downstream_direct_remote_address: Some(address(downstream_remote)),
        downstream_local_address: Some(address(downstream_local)),
        upstream_remote_address: upstream.map(address),
        upstream_cluster: cluster.to_owned(),
        start_time: Some(pb_time(start)),
        ..Default::default()
    }
}

/// The ALS message for one TCP connection (pure).
pub fn tcp_log_entry(e: &TcpEntry) -> TcpAccessLogEntry {
    TcpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            duration: Some(pb_duration(e.duration)),
            ..common(
                e.downstream_remote,
                e.downstream_local,
                e.upstream_address,
                &e.upstream_cluster,
                e.start_time,
            )
        }),
        connection_properties: Some(ConnectionProperties {
            received_bytes: e.received_bytes,
            sent_bytes: e.sent_bytes,
        }),
    }
}

/// The ALS message for one entry (pure).
pub fn http_log_entry(e: &HttpEntry, extra_headers: &[String]) -> HttpAccessLogEntry {
    let header = |name: &str| e.header(name).to_owned();
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            time_to_last_downstream_tx_byte: Some(pb_duration(e.duration)),
            ..common(
                e.downstream_remote,
                e.downstream_local,
                e.upstream_address,
                &e.upstream_cluster,
                e.start_time,
            )
        }),
        request: Some(HttpRequestProperties {
            request_method: method(&e.method) as i32,
            scheme: "http".into(),
            authority: e.authority.clone(),
            path: e.path.clone(),
            user_agent: header("user-agent"),
            referer: header("referer"),
            forwarded_for: header("x-forwarded-for"),
            request_id: header("x-request-id"),
            request_body_bytes: e.request_bytes,
            request_headers: extra_headers
                .iter()
                .filter_map(|h| {
                    let v = header(h);
                    (!v.is_empty()).then(|| (h.to_ascii_lowercase(), v))
                })
                .collect(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value {
                value: u32::from(e.status),
            }),
            response_body_bytes: e.response_bytes,
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn grpc_address(config: &Config, cluster: &str) -> Option<String> {
    let c = config.clusters.get(cluster)?;
    match c.discovery {
        Discovery::Static | Discovery::StrictDns => {
            c.hosts.first().map(|(h, p)| format!("http://{h}:{p}"))
        }
        Discovery::Eds => config
            .endpoints
            .get(&c.eds_name)
            .and_then(|e| e.first())
            .map(|e| format!("http://{}:{}", e.host, e.port)),
        Discovery::OriginalDst => None,
    }
}

/// Batches a sink's entries and keeps a stream to its service open; reconnects on failure.
async fn ship(
    node_id: String,
    sink: AccessLogSink,
    config: watch::Receiver<Arc<Config>>,
    mut rx: mpsc::Receiver<Entry>,
) {
    let mut pending: Vec<HttpAccessLogEntry> = Vec::new();
    let mut pending_tcp: Vec<TcpAccessLogEntry> = Vec::new();
    let mut stream: Option<mpsc::Sender<StreamAccessLogsMessage>> = None;
    loop {
        let deadline = tokio::time::sleep(sink.flush_interval);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(Entry::Http(e)) => {
                        pending.push(http_log_entry(&e, &sink.request_headers));
                        if pending.len() >= 256 { break; }
                    }
                    Some(Entry::Tcp(e)) => {
                        pending_tcp.push(tcp_log_entry(&e));
                        if pending_tcp.len() >= 256 { break; }
                    }
                    None => return,
                },
                () = &mut deadline => break,
            }
        }
        if pending.is_empty() && pending_tcp.is_empty() {
            continue;
        }
        if stream.as_ref().is_none_or(mpsc::Sender::is_closed) {
            stream = None;
            let Some(addr) = grpc_address(&config.borrow(), &sink.cluster) else {
                tracing::debug!(cluster = %sink.cluster, "access log cluster unknown; entries kept");
                pending.truncate(QUEUE);
                pending_tcp.truncate(QUEUE);
                continue;
            };
            match AccessLogServiceClient::connect(addr.clone()).await {
                Ok(mut client) => {
                    let (tx, rx_msgs) = mpsc::channel(64);
                    let identifier = Identifier {
                        node: Some(Node {
                            id: node_id.clone(),
                            ..Default::default()
                        }),
                        log_name: sink.log_name.clone(),
                    };
                    let first = StreamAccessLogsMessage {
                        identifier: Some(identifier),
                        log_entries: None,
                    };
                    if tx.send(first).await.is_ok() {
                        tokio::spawn(async move {
                            let _ = client
                                .stream_access_logs(tokio_stream::wrappers::ReceiverStream::new(
                                    rx_msgs,
                                ))
                                .await;
                        });
                        stream = Some(tx);
                    }
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "access log service unreachable; retrying");
                    pending.truncate(QUEUE);
                    pending_tcp.truncate(QUEUE);
                    continue;
                }
            }
        }
        if let Some(tx) = &stream {
            // A message carries one kind of entry: HTTP and TCP go separately.
            let mut batches = Vec::new();
            if !pending.is_empty() {
                batches.push(LogEntries::HttpLogs(HttpAccessLogEntries {
                    log_entry: std::mem::take(&mut pending),
                }));
            }
            if !pending_tcp.is_empty() {
                batches.push(LogEntries::TcpLogs(TcpAccessLogEntries {
                    log_entry: std::mem::take(&mut pending_tcp),
                }));
            }
            for entries in batches {
                let msg = StreamAccessLogsMessage {
                    identifier: None,
                    log_entries: Some(entries),
                };
                if tx.send(msg).await.is_err() {
                    stream = None;
                    break;
                }
            }
        }
    }
}

/// Appends lines to `path` (`/dev/stdout` is the process's standard output), a batch per
/// write, on a thread of its own so a slow disk or pipe never holds a worker; reopens the
/// file after a failure.
fn write_file(path: String, mut rx: mpsc::Receiver<String>) {
    use std::io::Write;
    let mut out: Option<Box<dyn Write + Send>> = None;
    let mut batch = String::new();
    while let Some(line) = rx.blocking_recv() {
        batch.push_str(&line);
        while batch.len() < 64 * 1024
            && let Ok(more) = rx.try_recv()
        {
            batch.push_str(&more);
        }
        if out.is_none() {
            out = if path == "/dev/stdout" {
                Some(Box::new(std::io::stdout()))
            } else {
                match std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                {
                    Ok(f) => Some(Box::new(f)),
                    Err(e) => {
                        tracing::warn!(%path, error = %e, "cannot open the access log file; lines dropped");
                        None
                    }
                }
            };
        }
        if let Some(w) = out.as_mut()
            && (w.write_all(batch.as_bytes()).is_err() || w.flush().is_err())
        {
            out = None;
        }
        batch.clear();
    }
}

/// `2026-11-26T13:15:00.123Z`: Envoy's %START_TIME% (UTC, milliseconds).
pub fn start_time(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

fn dash(v: &str) -> &str {
    if v.is_empty() { "-" } else { v }
}

/// One request in Envoy's default access log format (pure).
pub fn http_default_line(e: &HttpEntry) -> String {
    let header = |name: &str| e.header(name);
    format!(
        "[{}] \"{} {} {}\" {} {} {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"\n",
        start_time(e.start_time),
        dash(&e.method),
        dash(&e.path),
        dash(e.protocol),
        e.status,
        dash(&e.response_flags),
        e.request_bytes,
        e.response_bytes,
        e.duration.as_millis(),
        e.upstream_service_time
            .map_or_else(|| "-".to_owned(), |t| t.to_string()),
        dash(header("x-forwarded-for")),
        dash(header("user-agent")),
        dash(header("x-request-id")),
        dash(&e.authority),
        e.upstream_address
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
    )
}

/// One TCP connection in Envoy's default access log format (pure): the HTTP fields are
/// dashes and a zero response code.
pub fn tcp_default_line(e: &TcpEntry) -> String {
    format!(
        "[{}] \"- - -\" 0 - {} {} {} - \"-\" \"-\" \"-\" \"-\" \"{}\"\n",
        start_time(e.start_time),
        e.received_bytes,
        e.sent_bytes,
        e.duration.as_millis(),
        e.upstream_address
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_utc_with_milliseconds() {
        assert_eq!(start_time(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.123Z, a leap day.
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(start_time(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_700_000);
        assert_eq!(start_time(t), "2026-11-26T13:33:20.000Z");
    }

    #[test]
    fn lines_follow_envoys_default_format() {
        let e = HttpEntry {
            start_time: UNIX_EPOCH,
            duration: Duration::from_millis(12),
            method: "GET".into(),
            path: "/productpage".into(),
            authority: "productpage:9080".into(),
            request_headers: vec![
                ("user-agent".into(), "curl/8".into()),
                ("x-request-id".into(), "abc".into()),
            ],
            status: 200,
            protocol: "HTTP/1.1",
            response_flags: String::new(),
            upstream_service_time: Some(10),
            request_bytes: 0,
            response_bytes: 5723,
            upstream_cluster: "inbound|9080||productpage".into(),
            upstream_address: Some(([127, 0, 0, 1], 9080).into()),
            downstream_remote: ([10, 0, 0, 2], 5000).into(),
            downstream_local: ([10, 0, 0, 3], 9080).into(),
        };
        assert_eq!(
            http_default_line(&e),
            "[1970-01-01T00:00:00.000Z] \"GET /productpage HTTP/1.1\" 200 - 0 5723 12 10 \"-\" \"curl/8\" \"abc\" \"productpage:9080\" \"127.0.0.1:9080\"\n"
        );
        let nr = HttpEntry {
            status: 404,
            response_flags: "NR".into(),
            upstream_service_time: None,
            upstream_address: None,
            ..e
        };
        assert!(http_default_line(&nr).contains("\" 404 NR 0 5723 12 - \""));
    }
}
