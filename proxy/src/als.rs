//! Access logs to a gRPC access log service (Envoy's ALS; mixer in Keel): entries are
//! queued without blocking the request (a full queue drops and counts), batched per sink,
//! and sent on a long-lived stream whose first message names the node and the log.

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

use crate::model::{AccessLogSink, Config, Discovery};

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
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_cluster: String,
    pub upstream_address: Option<SocketAddr>,
    pub downstream_remote: SocketAddr,
    pub downstream_local: SocketAddr,
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
    pub dropped: prometheus_client::metrics::counter::Counter,
}

impl AccessLogs {
    pub fn new(node_id: String, config: watch::Receiver<Arc<Config>>) -> AccessLogs {
        AccessLogs {
            node_id,
            config,
            sinks: Mutex::new(HashMap::new()),
            dropped: Default::default(),
        }
    }

    /// Queues `entry` for `sink`; never waits.
    pub fn log_http(&self, sink: &AccessLogSink, entry: HttpEntry) {
        self.queue(sink, Entry::Http(entry));
    }

    /// Queues a closed TCP connection's entry for `sink`; never waits.
    pub fn log_tcp(&self, sink: &AccessLogSink, entry: TcpEntry) {
        self.queue(sink, Entry::Tcp(entry));
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

/// The ALS message for one TCP connection (pure).
pub fn tcp_log_entry(e: &TcpEntry) -> TcpAccessLogEntry {
    TcpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: Some(address(e.downstream_remote)),
            downstream_direct_remote_address: Some(address(e.downstream_remote)),
            downstream_local_address: Some(address(e.downstream_local)),
            upstream_remote_address: e.upstream_address.map(address),
            upstream_cluster: e.upstream_cluster.clone(),
            start_time: Some(pb_time(e.start_time)),
            duration: Some(pb_duration(e.duration)),
            ..Default::default()
        }),
        connection_properties: Some(ConnectionProperties {
            received_bytes: e.received_bytes,
            sent_bytes: e.sent_bytes,
        }),
    }
}

/// The ALS message for one entry (pure).
pub fn http_log_entry(e: &HttpEntry, extra_headers: &[String]) -> HttpAccessLogEntry {
    let since = e.start_time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let header = |name: &str| {
        e.request_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let pb_dur = |d: Duration| PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    };
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: Some(address(e.downstream_remote)),
            downstream_direct_remote_address: Some(address(e.downstream_remote)),
            downstream_local_address: Some(address(e.downstream_local)),
            upstream_remote_address: e.upstream_address.map(address),
            upstream_cluster: e.upstream_cluster.clone(),
            start_time: Some(Timestamp {
                seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
            }),
            time_to_last_downstream_tx_byte: Some(pb_dur(e.duration)),
            ..Default::default()
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
