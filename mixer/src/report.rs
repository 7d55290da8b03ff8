//! Reports: Envoy access log entries (gRPC ALS) turned into Mixer attribute bags.
//!
//! Pilot names each proxy's access logs `inbound` or `outbound` (the reporter kind) and the
//! stream's first message carries the proxy's node id, `sidecar~IP~POD.NS~NS.svc.cluster.local`.
//! The reporter is one end of the call; the other end is found by address in the service
//! registry, the way Istio 1.0's kubernetesenv adapter filled in `source.*` and
//! `destination.*`. Everything here is pure: the registry is passed in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{Address, RequestMethod, address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, TcpAccessLogEntry,
};
use keel_attributes::Value;
use keel_pilot::proxy::{Proxy, ProxyIdError};
use keel_pilot::registry::{ServiceRegistry, Workload};

/// Which end of the call made the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReporterKind {
    /// The server-side sidecar (Istio's `reporter="destination"`).
    Inbound,
    /// The client-side sidecar or a gateway (`reporter="source"`).
    Outbound,
}

impl ReporterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReporterKind::Inbound => "inbound",
            ReporterKind::Outbound => "outbound",
        }
    }
}

/// The proxy behind an access log stream.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub proxy: Proxy,
    pub kind: ReporterKind,
}

impl Reporter {
    /// From the stream identifier: the node id and the log name pilot configured.
    pub fn from_identifier(node_id: &str, log_name: &str) -> Result<Reporter, ProxyIdError> {
        Ok(Reporter {
            proxy: Proxy::parse(node_id)?,
            kind: if log_name.contains("inbound") {
                ReporterKind::Inbound
            } else {
                ReporterKind::Outbound
            },
        })
    }

    fn pod(&self) -> (&str, &str) {
        // Proxy ids are POD.NAMESPACE.
        match self.proxy.id.rsplit_once('.') {
            Some((pod, ns)) => (pod, ns),
            None => (self.proxy.id.as_str(), self.proxy.namespace.as_str()),
        }
    }
}

/// An attribute bag.
pub type Attributes = BTreeMap<String, Value>;

pub(crate) fn put(bag: &mut Attributes, name: &str, v: Value) {
    bag.insert(name.to_owned(), v);
}

pub(crate) fn put_str(bag: &mut Attributes, name: &str, s: &str) {
    if !s.is_empty() {
        put(bag, name, Value::String(s.to_owned()));
    }
}

/// The attributes of one HTTP request as `reporter` saw it.
pub fn http_attributes(
    reporter: &Reporter,
    entry: &HttpAccessLogEntry,
    registry: &dyn ServiceRegistry,
) -> Attributes {
    let mut bag = Attributes::new();
    put_str(&mut bag, "context.protocol", "http");
    if let Some(common) = &entry.common_properties {
        common_attributes(&mut bag, reporter, common, registry);
    } else {
        reporter_attributes(&mut bag, reporter, registry);
    }
    if let Some(req) = &entry.request {
        let method = RequestMethod::try_from(req.request_method)
            .map(|m| m.as_str_name())
            .unwrap_or("METHOD_UNSPECIFIED");
        if method != "METHOD_UNSPECIFIED" {
            put_str(&mut bag, "request.method", method);
        }
        put_str(&mut bag, "request.scheme", &req.scheme);
        put_str(&mut bag, "request.host", &req.authority);
        put_str(&mut bag, "request.path", &req.path);
        put_str(&mut bag, "request.useragent", &req.user_agent);
        put_str(&mut bag, "request.referer", &req.referer);
        put_str(&mut bag, "request.id", &req.request_id);
        put(&mut bag, "request.size", int(req.request_body_bytes));
        put(
            &mut bag,
            "request.total_size",
            int(req.request_headers_bytes + req.request_body_bytes),
        );
        let headers: BTreeMap<String, String> = req
            .request_headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        put(&mut bag, "request.headers", Value::StringMap(headers));
    }
    if let Some(resp) = &entry.response {
        if let Some(code) = &resp.response_code {
            put(
                &mut bag,
                "response.code",
                Value::Int64(i64::from(code.value)),
            );
        }
        put(&mut bag, "response.size", int(resp.response_body_bytes));
        put(
            &mut bag,
            "response.total_size",
            int(resp.response_headers_bytes + resp.response_body_bytes),
        );
        put(
            &mut bag,
            "response.headers",
            Value::StringMap(
                resp.response_headers
                    .iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                    .collect(),
            ),
        );
    }
    bag
}

/// The attributes of one TCP connection (reported when it closes).
pub fn tcp_attributes(
    reporter: &Reporter,
    entry: &TcpAccessLogEntry,
    registry: &dyn ServiceRegistry,
) -> Attributes {
    let mut bag = Attributes::new();
    put_str(&mut bag, "context.protocol", "tcp");
    put_str(&mut bag, "connection.event", "close");
    if let Some(common) = &entry.common_properties {
        common_attributes(&mut bag, reporter, common, registry);
        if let Some(d) = bag.get("response.duration").cloned() {
            bag.insert("connection.duration".to_owned(), d);
        }
    } else {
        reporter_attributes(&mut bag, reporter, registry);
    }
    if let Some(c) = &entry.connection_properties {
        // Bytes as the server sees them: received from the client, sent to it.
        put(&mut bag, "connection.received.bytes", int(c.received_bytes));
        put(
            &mut bag,
            "connection.received.bytes_total",
            int(c.received_bytes),
        );
        put(&mut bag, "connection.sent.bytes", int(c.sent_bytes));
        put(&mut bag, "connection.sent.bytes_total", int(c.sent_bytes));
    }
    bag
}

fn int(n: u64) -> Value {
    Value::Int64(i64::try_from(n).unwrap_or(i64::MAX))
}

fn common_attributes(
    bag: &mut Attributes,
    reporter: &Reporter,
    common: &AccessLogCommon,
    registry: &dyn ServiceRegistry,
) {
    let start = common.start_time.as_ref().and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        Some(UNIX_EPOCH + Duration::new(secs, nanos))
    });
    let duration = common
        .duration
        .as_ref()
        .or(common.time_to_last_downstream_tx_byte.as_ref())
        .and_then(|d| {
            Some(Duration::new(
                u64::try_from(d.seconds).ok()?,
                u32::try_from(d.nanos).ok()?,
            ))
        });
    let start = start.unwrap_or_else(SystemTime::now);
    put(bag, "request.time", Value::Timestamp(start));
    put(bag, "context.time", Value::Timestamp(start));
    if let Some(d) = duration {
        put(bag, "response.duration", Value::Duration(d));
        put(bag, "response.time", Value::Timestamp(start + d));
    }
    let tls_peer = common
        .tls_properties
        .as_ref()
        .and_then(|t| t.peer_certificate_properties.as_ref())
        .and_then(|p| {
            p.subject_alt_name.iter().find_map(|san| match &san.san {
                Some(envoy_types::pb::envoy::data::accesslog::v3::tls_properties::certificate_properties::subject_alt_name::San::Uri(u)) => Some(u.clone()),
                _ => None,
            })
        });
    put(bag, "connection.mtls", Value::Bool(tls_peer.is_some()));
    reporter_attributes(bag, reporter, registry);

    // The peer of the connection, not the address x-forwarded-for claims: a sidecar's
    // inbound side does not use the remote address, so Envoy takes the client from the
    // header, which names the gateway's client rather than the gateway.
    let downstream = common
        .downstream_direct_remote_address
        .as_ref()
        .or(common.downstream_remote_address.as_ref())
        .and_then(ip_of);
    let upstream = common.upstream_remote_address.as_ref().and_then(ip_of);
    let cluster_host = cluster_host(&common.upstream_cluster);
    match reporter.kind {
        ReporterKind::Inbound => {
            if let Some(ip) = downstream {
                peer_attributes(bag, "source", ip, registry);
            }
            if let Some(principal) = &tls_peer {
                let p = principal.trim_start_matches("spiffe://");
                put_str(bag, "source.principal", p);
                put_str(bag, "source.user", p);
            }
        }
        ReporterKind::Outbound => {
            if let Some(ip) = upstream {
                peer_attributes(bag, "destination", ip, registry);
            }
        }
    }
    if let Some(host) = cluster_host {
        put_str(bag, "destination.service", host);
        put_str(bag, "destination.service.host", host);
        if let Some(svc) = registry.service(host) {
            put_str(bag, "destination.service.name", &svc.name);
            put_str(bag, "destination.service.namespace", &svc.namespace);
            put_str(
                bag,
                "destination.service.uid",
                &format!("istio://{}/services/{}", svc.namespace, svc.name),
            );
        }
    }
}

/// The reporter's own end of the call.
fn reporter_attributes(bag: &mut Attributes, reporter: &Reporter, registry: &dyn ServiceRegistry) {
    let (pod, ns) = reporter.pod();
    let side = match reporter.kind {
        ReporterKind::Inbound => "destination",
        ReporterKind::Outbound => "source",
    };
    put_str(bag, "context.reporter.kind", reporter.kind.as_str());
    put_str(
        bag,
        "context.reporter.uid",
        &format!("kubernetes://{pod}.{ns}"),
    );
    put(bag, "context.reporter.local", Value::Bool(true));
    if !peer_attributes(bag, side, reporter.proxy.ip, registry) {
        // Not (yet) in the registry: what the node id says.
        put_str(bag, &format!("{side}.name"), pod);
        put_str(bag, &format!("{side}.namespace"), ns);
        put_str(
            bag,
            &format!("{side}.uid"),
            &format!("kubernetes://{pod}.{ns}"),
        );
    }
}

/// `source.*` or `destination.*` for the workload at `ip`; false when the registry does not
/// know it (then only the address is set).
pub(crate) fn peer_attributes(
    bag: &mut Attributes,
    side: &str,
    ip: IpAddr,
    registry: &dyn ServiceRegistry,
) -> bool {
    put(bag, &format!("{side}.ip"), Value::IpAddress(ip));
    let Some(w) = registry.workload(ip) else {
        return false;
    };
    let workload = workload_name(w);
    let key = |k: &str| format!("{side}.{k}");
    put_str(bag, &key("name"), &w.name);
    put_str(bag, &key("namespace"), &w.namespace);
    put_str(
        bag,
        &key("uid"),
        &format!("kubernetes://{}.{}", w.name, w.namespace),
    );
    put(bag, &key("labels"), Value::StringMap(w.labels.clone()));
    put_str(bag, &key("serviceAccount"), &w.service_account);
    put_str(bag, &key("workload.name"), &workload);
    put_str(bag, &key("workload.namespace"), &w.namespace);
    put_str(
        bag,
        &key("workload.uid"),
        &format!("istio://{}/workloads/{workload}", w.namespace),
    );
    put_str(
        bag,
        &key("owner"),
        &format!(
            "kubernetes://apis/apps/v1/namespaces/{}/deployments/{workload}",
            w.namespace
        ),
    );
    if side == "source"
        && let Some((svc, _, _)) = registry.services_of(ip).first()
    {
        put_str(bag, "source.service", &svc.hostname);
    }
    true
}

/// The workload (Deployment) a pod belongs to: its name without the ReplicaSet and pod
/// suffixes (`reviews-v1-7f9b8c-x2x9z` -> `reviews-v1`), told by the pod-template-hash label;
/// a pod without one is its own workload.
pub fn workload_name(w: &Workload) -> String {
    if let Some(hash) = w.labels.get("pod-template-hash")
        && let Some(i) = w.name.rfind(&format!("-{hash}-"))
    {
        return w.name[..i].to_owned();
    }
    w.name.clone()
}

/// The service host of a pilot cluster name, `outbound|9080|v1|details.default.svc.cluster.local`.
pub fn cluster_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    let dir = parts.next()?;
    if dir != "outbound" && dir != "inbound" {
        return None;
    }
    parts.nth(2).filter(|h| !h.is_empty())
}

fn ip_of(a: &Address) -> Option<IpAddr> {
    match a.address.as_ref()? {
        address::Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}
