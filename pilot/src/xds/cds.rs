//! CDS: clusters for a proxy, as pure functions of the registry and the DestinationRules.
//!
//! - `outbound|PORT||HOST` for every service port, and `outbound|PORT|SUBSET|HOST` for every
//!   subset a DestinationRule defines for the host; EDS through ADS, or STRICT_DNS for DNS
//!   ServiceEntries, or ORIGINAL_DST for resolution NONE.
//! - The DestinationRule's traffic policy (port-level settings override the rule's; a subset's
//!   override both): load balancer, connection pool (circuit breakers), outlier detection.
//! - HTTP/2 upstreams for `http2` and `grpc` ports.
//! - For sidecars, `inbound|PORT||HOST` to the workload on 127.0.0.1, and the
//!   `BlackHoleCluster` and `PassthroughCluster` every proxy has.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    DnsLookupFamily,
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, Http2ProtocolOptions, HttpProtocolOptions,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions as UpstreamHttpOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use keel_config::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    OutlierDetection as IstioOutlier, SimpleLb, TrafficPolicy,
};

use super::{any, eds, pb_duration};
use crate::proxy::{Proxy, ProxyKind};
use crate::registry::{Discovery, Service, ServicePort, ServiceRegistry};

pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// `outbound|9080|v1|reviews.default.svc.cluster.local`
pub fn outbound_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// `inbound|9080||reviews.default.svc.cluster.local`
pub fn inbound_name(port: u16, host: &str) -> String {
    format!("inbound|{port}||{host}")
}

/// The DestinationRules that apply to each host, by host, as a translation input.
pub type DestinationRules<'a> = HashMap<String, &'a DestinationRule>;

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// The policy for `port` of a host: the subset's over the port-level settings over the rule's.
fn effective_policy(rule: &DestinationRule, subset: Option<&str>, port: u16) -> TrafficPolicy {
    let mut out = rule.traffic_policy.clone().unwrap_or_default();
    let overlay = |out: &mut TrafficPolicy, tp: &TrafficPolicy| {
        if tp.load_balancer.is_some() {
            out.load_balancer = tp.load_balancer.clone();
        }
        if tp.connection_pool.is_some() {
            out.connection_pool = tp.connection_pool.clone();
        }
        if tp.outlier_detection.is_some() {
            out.outlier_detection = tp.outlier_detection.clone();
        }
        if tp.tls.is_some() {
            out.tls = tp.tls.clone();
        }
        for pl in &tp.port_level_settings {
            if pl.port.as_ref().and_then(|p| p.number) == Some(u32::from(port)) {
                if pl.load_balancer.is_some() {
                    out.load_balancer = pl.load_balancer.clone();
                }
                if pl.connection_pool.is_some() {
                    out.connection_pool = pl.connection_pool.clone();
                }
                if pl.outlier_detection.is_some() {
                    out.outlier_detection = pl.outlier_detection.clone();
                }
                if pl.tls.is_some() {
                    out.tls = pl.tls.clone();
                }
            }
        }
    };
    let base = out.clone();
    overlay(&mut out, &base);
    if let Some(s) = subset.and_then(|name| rule.subsets.iter().find(|s| s.name == name))
        && let Some(tp) = &s.traffic_policy
    {
        overlay(&mut out, tp);
    }
    out
}

fn apply_policy(c: &mut Cluster, tp: &TrafficPolicy) {
    if let Some(lb) = &tp.load_balancer {
        if lb.consistent_hash.is_some() {
            c.lb_policy = LbPolicy::RingHash as i32;
        } else if let Some(simple) = lb.simple {
            c.lb_policy = match simple {
                SimpleLb::LeastConn | SimpleLb::LeastRequest => LbPolicy::LeastRequest as i32,
                SimpleLb::Random => LbPolicy::Random as i32,
                SimpleLb::Passthrough => {
                    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                        DiscoveryType::OriginalDst as i32,
                    ));
                    c.eds_cluster_config = None;
                    LbPolicy::ClusterProvided as i32
                }
                SimpleLb::RoundRobin | SimpleLb::Unspecified => LbPolicy::RoundRobin as i32,
            };
        }
    }
    if let Some(pool) = &tp.connection_pool {
        apply_pool(c, pool);
    }
    if let Some(od) = &tp.outlier_detection {
        c.outlier_detection = Some(outlier(od));
    }
    if let Some(tls) = &tp.tls {
        apply_tls(c, tls);
    }
}

/// TLS origination with files (SIMPLE, MUTUAL). ISTIO_MUTUAL needs the mesh's certificates,
/// which citadel will hand out over SDS; until then such clusters stay plaintext.
fn apply_tls(c: &mut Cluster, tls: &ClientTlsSettings) {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, TransportSocket, data_source::Specifier,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, TlsCertificate,
        UpstreamTlsContext,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let file = |p: &Option<String>| {
        p.as_ref().map(|f| DataSource {
            specifier: Some(Specifier::Filename(f.clone())),
            ..Default::default()
        })
    };
    let mut common = CommonTlsContext::default();
    match tls.mode {
        ClientTlsMode::Disable | ClientTlsMode::IstioMutual => return,
        ClientTlsMode::Simple => {}
        ClientTlsMode::Mutual => common.tls_certificates.push(TlsCertificate {
            certificate_chain: file(&tls.client_certificate),
            private_key: file(&tls.private_key),
            ..Default::default()
        }),
    }
    if tls.ca_certificates.is_some() {
        common.validation_context_type = Some(ValidationContextType::ValidationContext(
            CertificateValidationContext {
                trusted_ca: file(&tls.ca_certificates),
                match_typed_subject_alt_names: tls
                    .subject_alt_names
                    .iter()
                    .map(|san| SubjectAltNameMatcher {
                        san_type: SanType::Dns as i32,
                        matcher: Some(StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(san.clone())),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        ));
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    c.transport_socket = Some(TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    });
}

fn u32v(v: Option<i64>) -> Option<UInt32Value> {
    v.and_then(|v| u32::try_from(v).ok())
        .map(|value| UInt32Value { value })
}

fn apply_pool(c: &mut Cluster, pool: &ConnectionPoolSettings) {
    let mut t = Thresholds::default();
    if let Some(tcp) = &pool.tcp {
        t.max_connections = u32v(tcp.max_connections);
        if let Some(ct) = tcp.connect_timeout {
            c.connect_timeout = Some(pb_duration(ct.as_std()));
        }
    }
    if let Some(http) = &pool.http {
        t.max_pending_requests = u32v(http.http1_max_pending_requests);
        t.max_requests = u32v(http.http2_max_requests);
        t.max_retries = u32v(http.max_retries);
        if http.max_requests_per_connection.is_some() || http.idle_timeout.is_some() {
            let mut opts = upstream_options(c);
            let common = opts
                .common_http_protocol_options
                .get_or_insert_with(HttpProtocolOptions::default);
            common.max_requests_per_connection = u32v(http.max_requests_per_connection);
            common.idle_timeout = http.idle_timeout.map(|d| pb_duration(d.as_std()));
            set_upstream_options(c, &opts);
        }
    }
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![t],
        ..Default::default()
    });
}

fn outlier(od: &IstioOutlier) -> OutlierDetection {
    // 1.0's consecutiveErrors is Envoy's consecutive 5xx. When only gateway errors are
    // asked for, the 5xx detector (on by default in Envoy) is switched off.
    let consecutive_5xx = od.consecutive_5xx_errors.or(od.consecutive_errors);
    let gateway = od.consecutive_gateway_errors;
    OutlierDetection {
        consecutive_5xx: u32v(consecutive_5xx),
        enforcing_consecutive_5xx: (consecutive_5xx.is_none() && gateway.is_some())
            .then_some(UInt32Value { value: 0 }),
        consecutive_gateway_failure: u32v(gateway),
        enforcing_consecutive_gateway_failure: gateway.map(|_| UInt32Value { value: 100 }),
        interval: od.interval.map(|d| pb_duration(d.as_std())),
        base_ejection_time: od.base_ejection_time.map(|d| pb_duration(d.as_std())),
        max_ejection_percent: u32v(od.max_ejection_percent),
        ..Default::default()
    }
}

const UPSTREAM_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn upstream_options(c: &Cluster) -> UpstreamHttpOptions {
    c.typed_extension_protocol_options
        .get(UPSTREAM_OPTIONS)
        .and_then(|a| prost::Message::decode(a.value.as_slice()).ok())
        .unwrap_or_default()
}

fn set_upstream_options(c: &mut Cluster, opts: &UpstreamHttpOptions) {
    let mut opts = opts.clone();
    if opts.upstream_protocol_options.is_none() {
        opts.upstream_protocol_options = Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
            },
        ));
    }
    c.typed_extension_protocol_options
        .insert(UPSTREAM_OPTIONS.to_owned(), any(&opts));
}

fn base_cluster(name: String, svc: &Service, port: &ServicePort) -> Cluster {
    let mut c = Cluster {
        name: name.clone(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    match svc.discovery {
        Discovery::Endpoints => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            c.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads()),
                service_name: name,
            });
        }
        Discovery::Dns => {
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
            // Istio resolves service entry names to IPv4 addresses only.
            c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
        }
        Discovery::Passthrough => {
            c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            c.lb_policy = LbPolicy::ClusterProvided as i32;
        }
    }
    if matches!(
        port.protocol,
        keel_config::networking::Protocol::Http2 | keel_config::networking::Protocol::Grpc
    ) {
        let opts = UpstreamHttpOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        set_upstream_options(&mut c, &opts);
    }
    c
}

/// STRICT_DNS clusters carry their endpoints inline.
fn inline_endpoints(
    c: &mut Cluster,
    reg: &dyn ServiceRegistry,
    svc: &Service,
    port: &ServicePort,
    subset_labels: Option<&std::collections::BTreeMap<String, String>>,
) {
    if svc.discovery == Discovery::Dns {
        c.load_assignment = Some(eds::assignment(
            &c.name,
            reg.endpoints(&svc.hostname, port.port),
            subset_labels,
        ));
    }
}

/// The cluster of mixer's report service (gRPC ALS), when telemetry is on.
pub const TELEMETRY_CLUSTER: &str = "mixer_telemetry";
/// The cluster of mixer's check service (ext_authz), when policy checks are on.
pub const POLICY_CLUSTER: &str = "mixer_policy";

/// A mixer service at `host:port` named `name`: a static address or a DNS name, spoken to
/// over HTTP/2 (gRPC).
pub fn mixer_cluster(name: &str, host: &str, port: u16) -> Cluster {
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        DiscoveryType::Static
    } else {
        DiscoveryType::StrictDns
    };
    let mut c = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: DnsLookupFamily::V4Only as i32,
        load_assignment: Some(eds::local_at(name, host, port)),
        ..Default::default()
    };
    let opts = UpstreamHttpOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    set_upstream_options(&mut c, &opts);
    c
}

/// Every cluster `proxy` needs.
pub fn clusters(
    reg: &dyn ServiceRegistry,
    rules: &DestinationRules<'_>,
    proxy: &Proxy,
) -> Vec<Cluster> {
    let mut out = outbound_clusters(reg, rules);
    out.extend(proxy_clusters(reg, proxy));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every service's outbound clusters (and their subsets'): the same for every proxy, so
/// pilot builds them once per configuration (see `Mesh::shared`).
pub fn outbound_clusters(reg: &dyn ServiceRegistry, rules: &DestinationRules<'_>) -> Vec<Cluster> {
    let mut out = Vec::new();
    for svc in reg.services() {
        let rule = rules.get(&svc.hostname).copied();
        for port in &svc.ports {
            let name = outbound_name(port.port, "", &svc.hostname);
            let mut c = base_cluster(name, svc, port);
            if let Some(rule) = rule {
                apply_policy(&mut c, &effective_policy(rule, None, port.port));
            }
            inline_endpoints(&mut c, reg, svc, port, None);
            out.push(c);
            for subset in rule.map(|r| r.subsets.as_slice()).unwrap_or_default() {
                let name = outbound_name(port.port, &subset.name, &svc.hostname);
                let mut c = base_cluster(name, svc, port);
                if let Some(rule) = rule {
                    apply_policy(
                        &mut c,
                        &effective_policy(rule, Some(&subset.name), port.port),
                    );
                }
                inline_endpoints(&mut c, reg, svc, port, Some(&subset.labels));
                out.push(c);
            }
        }
    }
    out
}

/// The clusters of one proxy: a sidecar's inbound clusters to its workload, and the
/// black hole and passthrough clusters.
pub fn proxy_clusters(reg: &dyn ServiceRegistry, proxy: &Proxy) -> Vec<Cluster> {
    let mut out = Vec::new();
    if proxy.kind == ProxyKind::Sidecar {
        for (svc, port, target) in reg.services_of(proxy.ip) {
            let name = inbound_name(port.port, &svc.hostname);
            let cla: ClusterLoadAssignment = eds::local(&name, target);
            out.push(Cluster {
                name,
                connect_timeout: Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                }),
                cluster_discovery_type: Some(ClusterDiscoveryType::Type(
                    DiscoveryType::Static as i32,
                )),
                load_assignment: Some(cla),
                ..Default::default()
            });
        }
    }
    out.push(Cluster {
        name: BLACKHOLE.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        ..Default::default()
    });
    out.push(Cluster {
        name: PASSTHROUGH.to_owned(),
        connect_timeout: Some(PbDuration {
            seconds: 1,
            nanos: 0,
        }),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Default::default()
    });
    out
}
