//! LDS: listeners.
//!
//! Sidecars (traffic captured by iptables):
//! - `virtualOutbound` on 0.0.0.0:15001 hands each connection to the listener of its
//!   original destination (`use_original_dst`); unmatched traffic goes to PassthroughCluster.
//! - `0.0.0.0_PORT` (not bound) for each HTTP service port: an HTTP connection manager on
//!   route configuration `PORT`. `VIP_PORT` (not bound) for each TCP service with an address.
//! - `virtualInbound` on 0.0.0.0:15006, and `IP_PORT` (not bound) per port the workload
//!   serves, to `inbound|PORT||HOST` on 127.0.0.1.
//!
//! Gateways (routers) bind `0.0.0.0_PORT` for each server of the Gateways whose selector
//! matches them, HTTP servers on route configuration `http.PORT`.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::{AggregatedConfigSource, ApiVersion, ConfigSource};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportSocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, TlsCertificate,
};
use envoy_types::pb::envoy::config::listener::v3::{FilterChainMatch, ListenerFilter};
use keel_config::networking::{
    Gateway, Protocol, RouteDestination, Server, ServerTlsMode, ServerTlsSettings,
    parse_protocol,
};

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as AccessLogConfig;
use envoy_types::pb::envoy::config::core::v3::GrpcService;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{
    EnvoyGrpc, TargetSpecifier as GrpcTarget,
};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::google::protobuf::UInt32Value;

use super::cds::{PASSTHROUGH, inbound_name, outbound_name};
use super::eds::socket;
use super::rds::{
    CORS_FILTER, FAULT_FILTER, RouteContext, ScopedVirtualService, destination_cluster,
};
use super::{any, pb_duration};
use crate::proxy::{Proxy, ProxyKind};
use crate::registry::ServiceRegistry;
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    CheckSettings, ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PORT: u16 = 15006;

/// The ext_authz filter's name; inbound routes carry its per-route settings.
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
/// The context extension naming the called service (mixer's `destination.service.host`).
pub const SERVICE_HOST_EXTENSION: &str = "destination.service.host";

/// Policy checks (Istio 1.0's Mixer Check) as Envoy's external authorization against
/// mixer's check service. Failing closed, as Istio 1.0 did by default
/// (`policyCheckFailOpen: false`): mixer unreachable answers 503.
fn ext_authz_filter(cluster: &str) -> HttpFilter {
    let config = ExtAuthz {
        services: Some(ext_authz::Services::GrpcService(GrpcService {
            target_specifier: Some(GrpcTarget::EnvoyGrpc(EnvoyGrpc {
                cluster_name: cluster.to_owned(),
                ..Default::default()
            })),
            timeout: Some(pb_duration(std::time::Duration::from_secs(2))),
            ..Default::default()
        })),
        transport_api_version: ApiVersion::V3 as i32,
        failure_mode_allow: false,
        status_on_error: Some(HttpStatus {
            code: StatusCode::ServiceUnavailable as i32,
        }),
        ..Default::default()
    };
    HttpFilter {
        name: EXT_AUTHZ_FILTER.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(any(&config))),
        ..Default::default()
    }
}

fn http_filters(policy: Option<&str>) -> Vec<HttpFilter> {
    let mut filters: Vec<HttpFilter> = policy.map(ext_authz_filter).into_iter().collect();
    filters.extend([
        HttpFilter {
            name: FAULT_FILTER.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&HttpFault::default()))),
            ..Default::default()
        },
        HttpFilter {
            name: CORS_FILTER.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&Cors::default()))),
            ..Default::default()
        },
        HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&Router::default()))),
            ..Default::default()
        },
    ]);
    filters
}

/// The access log name of the server side's reports (mixer's `context.reporter.kind`).
const INBOUND: &str = "inbound";
/// Client sidecars and gateways report as the source.
const OUTBOUND: &str = "outbound";

/// Where proxies send access logs (gRPC ALS, to mixer), if telemetry is on.
#[derive(Clone, Copy, Debug, Default)]
pub struct AccessLogs<'a> {
    /// The cluster of mixer's report service.
    pub cluster: Option<&'a str>,
    /// Istio's `accessLogFile`.
    pub file: Option<&'a str>,
}

impl AccessLogs<'_> {
    pub const NONE: AccessLogs<'static> = AccessLogs {
        cluster: None,
        file: None,
    };

    /// Envoy's file access log in its default format.
    fn file_log(&self) -> Option<AccessLog> {
        use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
        let path = self.file?;
        Some(AccessLog {
            name: "envoy.access_loggers.file".into(),
            config_type: Some(AccessLogConfig::TypedConfig(any(&FileAccessLog {
                path: path.to_owned(),
                ..Default::default()
            }))),
            ..Default::default()
        })
    }

    fn common(&self, reporter: &str) -> Option<CommonGrpcAccessLogConfig> {
        let cluster = self.cluster?;
        Some(CommonGrpcAccessLogConfig {
            log_name: reporter.to_owned(),
            grpc_service: Some(GrpcService {
                target_specifier: Some(GrpcTarget::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: cluster.to_owned(),
                    ..Default::default()
                })),
                ..Default::default()
            }),
            transport_api_version: ApiVersion::V3 as i32,
            // Reports are batched: a second or 16 KiB, whichever comes first.
            buffer_flush_interval: Some(pb_duration(std::time::Duration::from_secs(1))),
            buffer_size_bytes: Some(UInt32Value { value: 16 * 1024 }),
            ..Default::default()
        })
    }

    fn http(&self, reporter: &str) -> Vec<AccessLog> {
        let grpc = self.common(reporter).map(|common_config| AccessLog {
            name: "envoy.access_loggers.http_grpc".into(),
            config_type: Some(AccessLogConfig::TypedConfig(any(
                &HttpGrpcAccessLogConfig {
                    common_config: Some(common_config),
                    // Bookinfo's logged-in user, so rules can use request.headers["end-user"].
                    additional_request_headers_to_log: vec!["end-user".into()],
                    ..Default::default()
                },
            ))),
            ..Default::default()
        });
        self.file_log().into_iter().chain(grpc).collect()
    }

    fn tcp(&self, reporter: &str) -> Vec<AccessLog> {
        let grpc = self.common(reporter).map(|common_config| AccessLog {
            name: "envoy.access_loggers.tcp_grpc".into(),
            config_type: Some(AccessLogConfig::TypedConfig(any(&TcpGrpcAccessLogConfig {
                common_config: Some(common_config),
            }))),
            ..Default::default()
        });
        self.file_log().into_iter().chain(grpc).collect()
    }
}

fn hcm(
    stat_prefix: &str,
    routes: RouteSpecifier,
    edge: bool,
    logs: AccessLogs<'_>,
    reporter: &str,
    policy: Option<&str>,
) -> Filter {
    let m = HttpConnectionManager {
        access_log: logs.http(reporter),
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(routes),
        http_filters: http_filters(policy),
        use_remote_address: Some(BoolValue { value: edge }),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.http_connection_manager".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&m))),
    }
}

fn rds(name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
            ..Default::default()
        }),
        route_config_name: name.to_owned(),
    })
}

fn tcp(stat_prefix: &str, cluster: &str, logs: AccessLogs<'_>, reporter: &str) -> Filter {
    let p = TcpProxy {
        access_log: logs.tcp(reporter),
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(TcpCluster::Cluster(cluster.to_owned())),
        ..Default::default()
    };
    Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&p))),
    }
}

fn listener(name: String, address: &str, port: u16, bind: bool, filters: Vec<Filter>) -> Listener {
    Listener {
        name,
        address: Some(socket(address, port)),
        filter_chains: vec![FilterChain {
            filters,
            ..Default::default()
        }],
        bind_to_port: (!bind).then_some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn capture(name: &str, port: u16) -> Listener {
    Listener {
        name: name.to_owned(),
        address: Some(socket("0.0.0.0", port)),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![FilterChain {
            filters: vec![tcp(PASSTHROUGH, PASSTHROUGH, AccessLogs::NONE, "")],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An inbound HTTP listener's inline routes: everything to the local workload. With policy
/// checks on, the route names the service being called for mixer.
fn inbound_routes(cluster: &str, service_host: &str, policy: bool) -> RouteConfiguration {
    let mut per_filter = std::collections::HashMap::new();
    if policy {
        per_filter.insert(
            EXT_AUTHZ_FILTER.to_owned(),
            any(&ExtAuthzPerRoute {
                r#override: Some(ext_authz_per_route::Override::CheckSettings(
                    CheckSettings {
                        context_extensions: std::collections::HashMap::from([(
                            SERVICE_HOST_EXTENSION.to_owned(),
                            service_host.to_owned(),
                        )]),
                        ..Default::default()
                    },
                )),
            }),
        );
    }
    RouteConfiguration {
        name: cluster.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: cluster.to_owned(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(RouteCluster::Cluster(cluster.to_owned())),
                    timeout: Some(Default::default()),
                    ..Default::default()
                })),
                typed_per_filter_config: per_filter,
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The HTTP ports a sidecar routes by RDS (each is a route configuration name).
pub fn sidecar_http_ports(reg: &dyn ServiceRegistry) -> BTreeSet<u16> {
    reg.services()
        .flat_map(|s| s.ports.iter())
        .filter(|p| p.protocol.is_http())
        .map(|p| p.port)
        .collect()
}

/// A sidecar's listeners. `policy` is mixer's check cluster when policy checks are on: the
/// server side checks every inbound request, as Istio 1.0 did by default.
pub fn sidecar_listeners(
    reg: &dyn ServiceRegistry,
    proxy: &Proxy,
    logs: AccessLogs<'_>,
    policy: Option<&str>,
) -> Vec<Listener> {
    let mut out = sidecar_outbound_listeners(reg, logs);
    out.extend(sidecar_inbound_listeners(reg, proxy, logs, policy));
    out
}

/// The listeners every sidecar has alike: the capture ports, and one per outbound service
/// port (pilot builds them once for all sidecars).
pub fn sidecar_outbound_listeners(
    reg: &dyn ServiceRegistry,
    logs: AccessLogs<'_>,
) -> Vec<Listener> {
    let mut out = vec![
        capture("virtualOutbound", OUTBOUND_PORT),
        capture("virtualInbound", INBOUND_PORT),
    ];
    let http_ports = sidecar_http_ports(reg);
    for port in &http_ports {
        out.push(listener(
            format!("0.0.0.0_{port}"),
            "0.0.0.0",
            *port,
            false,
            vec![hcm(
                &format!("outbound_{port}"),
                rds(&port.to_string()),
                false,
                logs,
                OUTBOUND,
                None,
            )],
        ));
    }
    for svc in reg.services() {
        for p in svc.ports.iter().filter(|p| !p.protocol.is_http()) {
            if let Some(vip) = svc.address {
                out.push(listener(
                    format!("{vip}_{}", p.port),
                    &vip.to_string(),
                    p.port,
                    false,
                    vec![tcp(
                        &format!("outbound|{}||{}", p.port, svc.hostname),
                        &outbound_name(p.port, "", &svc.hostname),
                        logs,
                        OUTBOUND,
                    )],
                ));
            }
        }
    }
    out
}

/// A sidecar's own listeners: one per port its workload serves.
pub fn sidecar_inbound_listeners(
    reg: &dyn ServiceRegistry,
    proxy: &Proxy,
    logs: AccessLogs<'_>,
    policy: Option<&str>,
) -> Vec<Listener> {
    let mut out = Vec::new();
    let mut inbound = BTreeMap::new();
    for (svc, port, target) in reg.services_of(proxy.ip) {
        inbound.entry(port.port).or_insert((svc, port, target));
    }
    for (port, (svc, sp, _target)) in inbound {
        let cluster = inbound_name(port, &svc.hostname);
        let filter = if sp.protocol.is_http() {
            hcm(
                &cluster,
                RouteSpecifier::RouteConfig(inbound_routes(
                    &cluster,
                    &svc.hostname,
                    policy.is_some(),
                )),
                false,
                logs,
                INBOUND,
                policy,
            )
        } else {
            tcp(&cluster, &cluster, logs, INBOUND)
        };
        out.push(listener(
            format!("{}_{port}", proxy.ip),
            &proxy.ip.to_string(),
            port,
            false,
            vec![filter],
        ));
    }
    out
}

/// Gateways whose selector matches the router's labels, with the `ns/name` they go by.
pub fn gateways_for<'a>(
    gateways: &'a [(String, &'a Gateway)],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a (String, &'a Gateway)> {
    gateways
        .iter()
        .filter(|(_, g)| g.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .collect()
}

/// A router's listeners: one bound listener per gateway server port.
///
/// - HTTP servers route by `http.PORT`.
/// - HTTPS servers (`tls.mode: SIMPLE`) terminate TLS with the server's certificate files
///   (Istio 1.0's `/etc/istio/ingressgateway-certs/...`) and route the same way; several
///   servers on one port are told apart by SNI (a filter chain per server naming its hosts,
///   the TLS inspector reading the name), as Istio does.
/// - TLS servers with `tls.mode: PASSTHROUGH` forward the encrypted stream by SNI: a filter
///   chain per `tls` route match of the VirtualServices bound to the gateway, proxying TCP
///   to the route's destination.
/// - TCP servers proxy to the destination of the first bound `tcp` route for the port.
///
/// MUTUAL servers are left out (client certificates are not verified yet).
pub fn gateway_listeners(
    gateways: &[&(String, &Gateway)],
    reg: &dyn ServiceRegistry,
    virtual_services: &[ScopedVirtualService<'_>],
    labels: &BTreeMap<String, String>,
    logs: AccessLogs<'_>,
) -> Vec<Listener> {
    let mut ports: BTreeMap<u16, Vec<&Server>> = BTreeMap::new();
    for (_, g) in gateways {
        for s in &g.servers {
            if let Ok(port) = u16::try_from(s.port.number) {
                ports.entry(port).or_default().push(s);
            }
        }
    }
    let names: Vec<String> = gateways.iter().map(|(n, _)| n.clone()).collect();
    ports
        .into_iter()
        .filter_map(|(port, servers)| {
            let ctx = RouteContext {
                gateways: names.clone(),
                labels,
                port,
                rules: None,
            };
            let hcm_filter = || {
                hcm(
                    &format!("http.{port}"),
                    rds(&format!("http.{port}")),
                    true,
                    logs,
                    OUTBOUND,
                    None,
                )
            };
            let proto = parse_protocol(&servers[0].port.protocol).unwrap_or(Protocol::Tcp);
            if proto.is_http() {
                return Some(listener(
                    format!("0.0.0.0_{port}"),
                    "0.0.0.0",
                    port,
                    true,
                    vec![hcm_filter()],
                ));
            }
            let mut chains: Vec<FilterChain> = Vec::new();
            let mut push = |chain: FilterChain| {
                // Envoy refuses a listener with two chains matching the same connections.
                if !chains
                    .iter()
                    .any(|c| c.filter_chain_match == chain.filter_chain_match)
                {
                    chains.push(chain);
                }
            };
            for server in &servers {
                let Some(tls) = &server.tls else {
                    if parse_protocol(&server.port.protocol).is_none_or(|p| !p.is_http())
                        && let Some(filter) =
                            tcp_route_filter(port, reg, virtual_services, &ctx, logs)
                    {
                        push(FilterChain {
                            filters: vec![filter],
                            ..Default::default()
                        });
                    }
                    continue;
                };
                match tls.mode.unwrap_or_default() {
                    ServerTlsMode::Simple => push(FilterChain {
                        filter_chain_match: sni_match(&server.hosts),
                        filters: vec![hcm_filter()],
                        transport_socket: Some(server_tls(tls)),
                        ..Default::default()
                    }),
                    ServerTlsMode::Passthrough => {
                        for (sni, filter) in
                            tls_route_filters(port, reg, virtual_services, &ctx, logs)
                        {
                            push(FilterChain {
                                filter_chain_match: sni_match(&sni),
                                filters: vec![filter],
                                ..Default::default()
                            });
                        }
                    }
                    _ => {}
                }
            }
            if chains.is_empty() {
                return None;
            }
            let inspect = chains.iter().any(|c| {
                c.filter_chain_match
                    .as_ref()
                    .is_some_and(|m| !m.server_names.is_empty())
            });
            Some(Listener {
                name: format!("0.0.0.0_{port}"),
                address: Some(socket("0.0.0.0", port)),
                filter_chains: chains,
                listener_filters: if inspect {
                    vec![tls_inspector()]
                } else {
                    Vec::new()
                },
                ..Default::default()
            })
        })
        .collect()
}

/// A filter chain match on server names (none for `*`: any connection).
fn sni_match(hosts: &[String]) -> Option<FilterChainMatch> {
    if hosts.is_empty() || hosts.iter().any(|h| h == "*") {
        return None;
    }
    Some(FilterChainMatch {
        server_names: hosts.to_vec(),
        ..Default::default()
    })
}

/// Reads the server name (and ALPN) from a TLS ClientHello before a filter chain is chosen.
fn tls_inspector() -> ListenerFilter {
    use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;
    use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ConfigType::TypedConfig(any(&TlsInspector::default()))),
        ..Default::default()
    }
}

/// A tcp_proxy to a route's destinations (weighted when there are several).
fn tcp_to_destinations(
    stat_prefix: &str,
    route: &[RouteDestination],
    vs_namespace: &str,
    reg: &dyn ServiceRegistry,
    port: u16,
    logs: AccessLogs<'_>,
) -> Option<Filter> {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
        WeightedCluster, weighted_cluster::ClusterWeight,
    };
    // Envoy's TCP weighted clusters take weights of 1 or more: zero-weight destinations
    // are left out (and a single one left needs no weights).
    let weighted: Vec<&RouteDestination> = match route {
        [] => return None,
        [one] => vec![one],
        many => many.iter().filter(|d| d.weight.unwrap_or(0) > 0).collect(),
    };
    let cluster_specifier = match weighted.as_slice() {
        [] => return None,
        [one] => TcpCluster::Cluster(destination_cluster(
            &one.destination,
            vs_namespace,
            reg,
            port,
        )),
        many => TcpCluster::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|d| ClusterWeight {
                    name: destination_cluster(&d.destination, vs_namespace, reg, port),
                    weight: u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
        }),
    };
    let p = TcpProxy {
        access_log: logs.tcp(OUTBOUND),
        stat_prefix: stat_prefix.to_owned(),
        cluster_specifier: Some(cluster_specifier),
        ..Default::default()
    };
    Some(Filter {
        name: "envoy.filters.network.tcp_proxy".into(),
        config_type: Some(FilterConfig::TypedConfig(any(&p))),
    })
}

/// PASSTHROUGH: (server names, tcp_proxy) for each `tls` route match bound to the gateway
/// on `port` (a match without a port applies to every port).
fn tls_route_filters(
    port: u16,
    reg: &dyn ServiceRegistry,
    virtual_services: &[ScopedVirtualService<'_>],
    ctx: &RouteContext<'_>,
    logs: AccessLogs<'_>,
) -> Vec<(Vec<String>, Filter)> {
    let mut out = Vec::new();
    for vs in virtual_services
        .iter()
        .filter(|vs| !vs.spec.gateways.is_empty() && ctx.applies(&vs.spec.gateways, vs.namespace))
    {
        for route in &vs.spec.tls {
            for m in &route.matches {
                if m.port.is_some_and(|p| p != u32::from(port))
                    || (!m.gateways.is_empty() && !ctx.applies(&m.gateways, vs.namespace))
                {
                    continue;
                }
                let stat = format!("tls.{port}.{}", m.sni_hosts.join(","));
                if let Some(f) =
                    tcp_to_destinations(&stat, &route.route, vs.namespace, reg, port, logs)
                {
                    out.push((m.sni_hosts.clone(), f));
                }
            }
        }
    }
    out
}

/// A TCP server: the first bound `tcp` route whose match names the port (or no port).
fn tcp_route_filter(
    port: u16,
    reg: &dyn ServiceRegistry,
    virtual_services: &[ScopedVirtualService<'_>],
    ctx: &RouteContext<'_>,
    logs: AccessLogs<'_>,
) -> Option<Filter> {
    virtual_services
        .iter()
        .filter(|vs| !vs.spec.gateways.is_empty() && ctx.applies(&vs.spec.gateways, vs.namespace))
        .flat_map(|vs| vs.spec.tcp.iter().map(move |r| (vs, r)))
        .find(|(vs, r)| {
            r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.port.is_none_or(|p| p == u32::from(port))
                        && (m.gateways.is_empty() || ctx.applies(&m.gateways, vs.namespace))
                })
        })
        .and_then(|(vs, r)| {
            tcp_to_destinations(
                &format!("tcp.{port}"),
                &r.route,
                vs.namespace,
                reg,
                port,
                logs,
            )
        })
}

fn server_tls(tls: &ServerTlsSettings) -> TransportSocket {
    let file = |p: &Option<String>| {
        p.as_ref().map(|f| DataSource {
            specifier: Some(Specifier::Filename(f.clone())),
            ..Default::default()
        })
    };
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: file(&tls.server_certificate),
                private_key: file(&tls.private_key),
                ..Default::default()
            }],
            // Istio's gateways offer HTTP/2 first, then HTTP/1.1.
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(TransportSocketConfig::TypedConfig(any(&ctx))),
    }
}

/// Every listener `proxy` needs.
#[allow(clippy::too_many_arguments)] // the inputs a proxy's listeners depend on
pub fn listeners(
    reg: &dyn ServiceRegistry,
    gateways: &[(String, &Gateway)],
    virtual_services: &[ScopedVirtualService<'_>],
    proxy: &Proxy,
    labels: &BTreeMap<String, String>,
    logs: AccessLogs<'_>,
    policy: Option<&str>,
) -> Vec<Listener> {
    match proxy.kind {
        ProxyKind::Sidecar => sidecar_listeners(reg, proxy, logs, policy),
        ProxyKind::Router => gateway_listeners(
            &gateways_for(gateways, labels),
            reg,
            virtual_services,
            labels,
            logs,
        ),
    }
}
