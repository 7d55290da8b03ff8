//! keel-proxy's configuration: Envoy xDS resources turned into plain, immutable Rust values
//! the data path reads without decoding anything. Pure; every conversion either gives the
//! value or says why not (`resource: field: reason`), which becomes the NACK's detail. A
//! field keel-proxy does not implement is refused, never ignored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as PbAccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as AccessLogConfig;
use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as PbAddressKind;
use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::Address as PbAddress;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener as PbListener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, Route as PbRoute, RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::{
    CommonGrpcAccessLogConfig, HttpGrpcAccessLogConfig, TcpGrpcAccessLogConfig,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthz as PbExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy as PbCorsPolicy;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as PbTcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpClusterSpecifier;
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration};
use prost::{Message, Name};

pub const HCM: &str = "envoy.filters.network.http_connection_manager";
pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";

/// Why a resource was refused: the NACK's detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{resource}: {field}: {reason}")]
pub struct Refused {
    pub resource: String,
    pub field: String,
    pub reason: String,
}

fn refuse(resource: &str, field: &str, reason: impl Into<String>) -> Refused {
    Refused {
        resource: resource.to_owned(),
        field: field.to_owned(),
        reason: reason.into(),
    }
}

fn unsupported(resource: &str, field: &str) -> Refused {
    refuse(resource, field, "not supported by keel-proxy yet")
}

fn decode<M: Message + Name + Default>(
    any: &Any,
    resource: &str,
    field: &str,
) -> Result<M, Refused> {
    if any.type_url != M::type_url() {
        return Err(refuse(
            resource,
            field,
            format!("expected {}, got {}", M::type_url(), any.type_url),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| refuse(resource, field, format!("cannot decode: {e}")))
}

fn duration(d: &PbDuration) -> Duration {
    Duration::new(
        u64::try_from(d.seconds).unwrap_or(0),
        u32::try_from(d.nanos).unwrap_or(0),
    )
}

/// A share of requests, in millionths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fraction(pub u32);

impl Fraction {
    pub const ALL: Fraction = Fraction(1_000_000);

    fn from_pb(p: Option<&FractionalPercent>) -> Fraction {
        let Some(p) = p else { return Fraction::ALL };
        let scale = match p.denominator {
            0 => 10_000,
            1 => 100,
            _ => 1,
        };
        Fraction(p.numerator.saturating_mul(scale).min(1_000_000))
    }
}

// ---- listeners ----------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Envoy's `bind_to_port` (true unless set false): a virtual listener only receives
    /// connections handed over by an original-destination listener.
    pub bind: bool,
    /// Hand each accepted connection to the listener of its original destination.
    pub use_original_dst: bool,
    /// Read the TLS ClientHello (server name, ALPN) before choosing a chain (Envoy's TLS
    /// inspector listener filter).
    pub inspect_tls: bool,
    /// In Envoy's order; a connection takes the most specific one that matches.
    pub chains: Vec<FilterChain>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FilterChain {
    pub matcher: ChainMatch,
    /// TLS termination (a gateway's HTTPS server).
    pub tls: Option<ServerTls>,
    pub filter: NetworkFilter,
}

/// Envoy's `filter_chain_match`, the criteria keel-proxy implements (an empty criterion
/// matches every connection).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainMatch {
    pub destination_port: Option<u16>,
    /// Exact names, or `*.suffix` wildcards.
    pub server_names: Vec<String>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: Option<String>,
    pub application_protocols: Vec<String>,
}

/// A certificate or key: a file, or the PEM inline.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Pem {
    File(String),
    Inline(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerTls {
    pub certificate_chain: Pem,
    pub private_key: Pem,
    pub alpn: Vec<String>,
}

fn pem(
    d: Option<&envoy_types::pb::envoy::config::core::v3::DataSource>,
    resource: &str,
    field: &str,
) -> Result<Pem, Refused> {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    match d.and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::Filename(f)) => Ok(Pem::File(f.clone())),
        Some(Specifier::InlineBytes(b)) => Ok(Pem::Inline(b.clone())),
        Some(Specifier::InlineString(s)) => Ok(Pem::Inline(s.clone().into_bytes())),
        _ => Err(refuse(
            resource,
            field,
            "a file name or inline PEM is required",
        )),
    }
}

fn server_tls(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    resource: &str,
    field: &str,
) -> Result<ServerTls, Refused> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(refuse(resource, field, "no typed_config"));
    };
    let ctx: DownstreamTlsContext = decode(any, resource, field)?;
    if ctx
        .require_client_certificate
        .as_ref()
        .is_some_and(|b| b.value)
    {
        return Err(refuse(
            resource,
            field,
            "client certificates (mutual TLS) are not supported yet",
        ));
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    if common.validation_context_type.is_some()
        || !common.tls_certificate_sds_secret_configs.is_empty()
    {
        return Err(refuse(
            resource,
            field,
            "validation contexts and SDS are not supported yet",
        ));
    }
    let [cert] = common.tls_certificates.as_slice() else {
        return Err(refuse(
            resource,
            &format!("{field}.tls_certificates"),
            "exactly one certificate is supported",
        ));
    };
    Ok(ServerTls {
        certificate_chain: pem(
            cert.certificate_chain.as_ref(),
            resource,
            &format!("{field}.tls_certificates[0].certificate_chain"),
        )?,
        private_key: pem(
            cert.private_key.as_ref(),
            resource,
            &format!("{field}.tls_certificates[0].private_key"),
        )?,
        alpn: common.alpn_protocols,
    })
}

/// TLS origination to a cluster's endpoints (a DestinationRule's SIMPLE or MUTUAL mode).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientTls {
    /// Server name sent in the handshake; empty: none (Envoy sends SNI only when told).
    pub sni: String,
    /// Certificate and key presented to the server (MUTUAL).
    pub client_certificate: Option<(Pem, Pem)>,
    /// CA bundle the server's chain must lead to; `None`: the server is not verified, as
    /// Envoy without a validation context.
    pub trusted_ca: Option<Pem>,
    /// DNS names one of which the server certificate must carry (with `trusted_ca`).
    pub subject_alt_names: Vec<String>,
    pub alpn: Vec<String>,
}

fn client_tls(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
    resource: &str,
) -> Result<ClientTls, Refused> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    let field = "transport_socket";
    if ts.name != "envoy.transport_sockets.tls" {
        return Err(refuse(
            resource,
            &format!("{field}.name"),
            format!(
                "only envoy.transport_sockets.tls is supported, not {:?}",
                ts.name
            ),
        ));
    }
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Err(refuse(resource, field, "no typed_config"));
    };
    let ctx: UpstreamTlsContext = decode(any, resource, field)?;
    if ctx.allow_renegotiation || ctx.max_session_keys.is_some() || ctx.auto_host_sni {
        return Err(unsupported(
            resource,
            &format!("{field}.allow_renegotiation/max_session_keys/auto_host_sni"),
        ));
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    let f = format!("{field}.common_tls_context");
    if !common.tls_certificate_sds_secret_configs.is_empty() {
        return Err(refuse(
            resource,
            &format!("{f}.tls_certificate_sds_secret_configs"),
            "certificates over SDS are not supported yet",
        ));
    }
    if common.tls_params.is_some() {
        return Err(unsupported(resource, &format!("{f}.tls_params")));
    }
    let client_certificate = match common.tls_certificates.as_slice() {
        [] => None,
        [cert] => Some((
            pem(
                cert.certificate_chain.as_ref(),
                resource,
                &format!("{f}.tls_certificates[0].certificate_chain"),
            )?,
            pem(
                cert.private_key.as_ref(),
                resource,
                &format!("{f}.tls_certificates[0].private_key"),
            )?,
        )),
        _ => {
            return Err(refuse(
                resource,
                &format!("{f}.tls_certificates"),
                "at most one client certificate is supported",
            ));
        }
    };
    let (mut trusted_ca, mut subject_alt_names) = (None, Vec::new());
    match &common.validation_context_type {
        None => {}
        Some(ValidationContextType::ValidationContext(v)) => {
            let vf = format!("{f}.validation_context");
            if !v.verify_certificate_spki.is_empty()
                || !v.verify_certificate_hash.is_empty()
                || v.crl.is_some()
                || v.allow_expired_certificate
                || v.custom_validator_config.is_some()
            {
                return Err(unsupported(
                    resource,
                    &format!("{vf} (only trusted_ca and match_typed_subject_alt_names are)"),
                ));
            }
            if v.trusted_ca.is_none() && !v.match_typed_subject_alt_names.is_empty() {
                return Err(refuse(
                    resource,
                    &format!("{vf}.trusted_ca"),
                    "subject alt names are checked only against a trusted CA",
                ));
            }
            if v.trusted_ca.is_some() {
                trusted_ca = Some(pem(
                    v.trusted_ca.as_ref(),
                    resource,
                    &format!("{vf}.trusted_ca"),
                )?);
            }
            for (i, m) in v.match_typed_subject_alt_names.iter().enumerate() {
                let mf = format!("{vf}.match_typed_subject_alt_names[{i}]");
                let exact = match m.matcher.as_ref().and_then(|m| m.match_pattern.as_ref()) {
                    Some(MatchPattern::Exact(e))
                        if !m.matcher.as_ref().is_some_and(|m| m.ignore_case) =>
                    {
                        e.clone()
                    }
                    _ => return Err(unsupported(resource, &format!("{mf}.matcher (only exact)"))),
                };
                if SanType::try_from(m.san_type) != Ok(SanType::Dns) {
                    return Err(unsupported(resource, &format!("{mf}.san_type (only DNS)")));
                }
                if rustls_pki_types::ServerName::try_from(exact.as_str()).is_err() {
                    return Err(refuse(
                        resource,
                        &mf,
                        format!("{exact:?} is not a DNS name"),
                    ));
                }
                subject_alt_names.push(exact);
            }
        }
        Some(_) => {
            return Err(refuse(
                resource,
                &format!("{f}.validation_context_type"),
                "validation contexts over SDS are not supported yet",
            ));
        }
    }
    if !ctx.sni.is_empty() && rustls_pki_types::ServerName::try_from(ctx.sni.as_str()).is_err() {
        return Err(refuse(
            resource,
            &format!("{field}.sni"),
            format!("{:?} is not a server name", ctx.sni),
        ));
    }
    Ok(ClientTls {
        sni: ctx.sni,
        client_certificate,
        trusted_ca,
        subject_alt_names,
        alpn: common.alpn_protocols,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum NetworkFilter {
    Http(Arc<HttpManager>),
    Tcp(TcpProxy),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HttpManager {
    pub stat_prefix: String,
    pub routes: RouteSource,
    /// Whether the connection's peer is the client (edge), rather than x-forwarded-for.
    pub use_remote_address: bool,
    pub access_log: AccessLog,
    /// External authorization (mixer's checks), asked before the route is followed.
    pub ext_authz: Option<ExtAuthz>,
}

/// The ext_authz filter over gRPC (`envoy.service.auth.v3.Authorization/Check`).
#[derive(Clone, Debug, PartialEq)]
pub struct ExtAuthz {
    pub cluster: String,
    pub timeout: Duration,
    /// When the service cannot answer: let the request through (true) or answer
    /// `status_on_error`.
    pub failure_mode_allow: bool,
    pub status_on_error: u16,
}

/// A route's ext_authz settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum RouteAuthz {
    /// Checked with no context extensions.
    #[default]
    Check,
    /// Checked, with these context extensions in the request.
    CheckWith(Vec<(String, String)>),
    /// Not checked on this route.
    Disabled,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteSource {
    /// A route configuration by name, from RDS.
    Rds(String),
    Inline(Arc<RouteTable>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct TcpProxy {
    pub stat_prefix: String,
    /// Clusters and weights (one with weight 1 unless weighted).
    pub clusters: Vec<(String, u32)>,
    /// Closed after this long without a byte either way.
    pub idle_timeout: Option<Duration>,
    pub access_log: AccessLog,
}

/// A gRPC access log service (ALS) destination.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessLogSink {
    pub log_name: String,
    pub cluster: String,
    pub flush_interval: Duration,
    pub buffer_bytes: u32,
    pub request_headers: Vec<String>,
}

fn socket_address(
    a: Option<&PbAddress>,
    resource: &str,
    field: &str,
) -> Result<SocketAddr, Refused> {
    let Some(PbAddressKind::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(refuse(
            resource,
            field,
            "only socket addresses are supported",
        ));
    };
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| refuse(resource, field, "port out of range"))?
        }
        _ => return Err(refuse(resource, field, "named ports are not supported")),
    };
    let ip = sa.address.parse().map_err(|_| {
        refuse(
            resource,
            field,
            format!("\"{}\" is not an IP address", sa.address),
        )
    })?;
    Ok(SocketAddr::new(ip, port))
}

/// Where a connection manager's or TCP proxy's entries go: a gRPC access log service
/// (mixer), a file in Envoy's default format (`/dev/stdout` for the proxy's own log), both,
/// or neither.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessLog {
    pub grpc: Option<AccessLogSink>,
    pub file: Option<String>,
}

impl AccessLog {
    pub fn is_empty(&self) -> bool {
        self.grpc.is_none() && self.file.is_none()
    }
}

fn access_log(
    logs: &[PbAccessLog],
    resource: &str,
    field: &str,
    http: bool,
) -> Result<AccessLog, Refused> {
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
    let mut out = AccessLog::default();
    for (i, log) in logs.iter().enumerate() {
        let field = format!("{field}[{i}]");
        if log.filter.is_some() {
            return Err(unsupported(resource, &format!("{field}.filter")));
        }
        let Some(AccessLogConfig::TypedConfig(any)) = &log.config_type else {
            return Err(refuse(resource, &field, "no typed_config"));
        };
        if any.type_url == FileAccessLog::type_url() {
            let f: FileAccessLog = decode(any, resource, &field)?;
            if f.access_log_format.is_some() {
                return Err(refuse(
                    resource,
                    &format!("{field}.access_log_format"),
                    "only Envoy's default format is supported",
                ));
            }
            if f.path.is_empty() {
                return Err(refuse(resource, &format!("{field}.path"), "no path"));
            }
            if out.file.is_some() {
                return Err(refuse(resource, &field, "more than one file access log"));
            }
            out.file = Some(f.path);
            continue;
        }
        let (common, headers): (Option<CommonGrpcAccessLogConfig>, Vec<String>) = if http {
            let c: HttpGrpcAccessLogConfig = decode(any, resource, &field)?;
            (c.common_config, c.additional_request_headers_to_log)
        } else {
            let c: TcpGrpcAccessLogConfig = decode(any, resource, &field)?;
            (c.common_config, Vec::new())
        };
        let common = common.ok_or_else(|| refuse(resource, &field, "no common_config"))?;
        let cluster = match common
            .grpc_service
            .as_ref()
            .and_then(|g| g.target_specifier.as_ref())
        {
            Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
            _ => {
                return Err(refuse(
                    resource,
                    &format!("{field}.grpc_service"),
                    "only envoy_grpc is supported",
                ));
            }
        };
        if out.grpc.is_some() {
            return Err(refuse(resource, &field, "more than one gRPC access log"));
        }
        out.grpc = Some(AccessLogSink {
            log_name: common.log_name,
            cluster,
            flush_interval: common
                .buffer_flush_interval
                .as_ref()
                .map(duration)
                .unwrap_or(Duration::from_secs(1)),
            buffer_bytes: common
                .buffer_size_bytes
                .map(|v| v.value)
                .unwrap_or(16 * 1024),
            request_headers: headers,
        });
    }
    Ok(out)
}

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

pub fn listener(l: &PbListener) -> Result<Listener, Refused> {
    let name = l.name.as_str();
    let address = socket_address(l.address.as_ref(), name, "address")?;
    let mut inspect_tls = false;
    for (i, f) in l.listener_filters.iter().enumerate() {
        use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType;
        use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
        let field = format!("listener_filters[{i}]");
        match &f.config_type {
            Some(ConfigType::TypedConfig(any)) if any.type_url == TlsInspector::type_url() => {
                let t: TlsInspector = decode(any, name, &field)?;
                if t != TlsInspector::default() {
                    return Err(unsupported(name, &format!("{field} (settings)")));
                }
            }
            None if f.name == TLS_INSPECTOR => {}
            _ => {
                return Err(refuse(
                    name,
                    &field,
                    format!("only the TLS inspector is supported, not {:?}", f.name),
                ));
            }
        }
        if f.filter_disabled.is_some() {
            return Err(unsupported(name, &format!("{field}.filter_disabled")));
        }
        inspect_tls = true;
    }
    if l.filter_chains.is_empty() {
        return Err(refuse(name, "filter_chains", "no filter chain"));
    }
    if l.default_filter_chain.is_some() {
        return Err(unsupported(name, "default_filter_chain"));
    }
    let mut chains: Vec<FilterChain> = Vec::with_capacity(l.filter_chains.len());
    for (i, chain) in l.filter_chains.iter().enumerate() {
        let chain = filter_chain(chain, name, &format!("filter_chains[{i}]"))?;
        if chains.iter().any(|c| c.matcher == chain.matcher) {
            // Envoy refuses the listener too: the second chain could never be chosen.
            return Err(refuse(
                name,
                &format!("filter_chains[{i}].filter_chain_match"),
                "the same match as an earlier filter chain",
            ));
        }
        let needs_inspector = !chain.matcher.server_names.is_empty()
            || !chain.matcher.application_protocols.is_empty()
            || chain.matcher.transport_protocol.as_deref() == Some("tls");
        if needs_inspector && !inspect_tls {
            return Err(refuse(
                name,
                &format!("filter_chains[{i}].filter_chain_match"),
                "server names, ALPN and transport protocol need the TLS inspector listener filter",
            ));
        }
        chains.push(chain);
    }
    Ok(Listener {
        name: name.to_owned(),
        address,
        bind: l.bind_to_port.as_ref().is_none_or(|b| b.value),
        use_original_dst: l.use_original_dst.as_ref().is_some_and(|b| b.value),
        inspect_tls,
        chains,
    })
}

fn chain_match(
    m: Option<&envoy_types::pb::envoy::config::listener::v3::FilterChainMatch>,
    name: &str,
    field: &str,
) -> Result<ChainMatch, Refused> {
    let Some(m) = m else {
        return Ok(ChainMatch::default());
    };
    let f = format!("{field}.filter_chain_match");
    if !m.prefix_ranges.is_empty()
        || !m.direct_source_prefix_ranges.is_empty()
        || !m.source_prefix_ranges.is_empty()
        || !m.source_ports.is_empty()
        || m.source_type != 0
        || !m.address_suffix.is_empty()
        || m.suffix_len.is_some()
        || m.destination_port.as_ref().is_some_and(|p| p.value > 65535)
    {
        return Err(unsupported(
            name,
            &format!(
                "{f} (only destination_port, server_names, transport_protocol and application_protocols are)"
            ),
        ));
    }
    for (i, n) in m.server_names.iter().enumerate() {
        let bare = n.strip_prefix("*.").unwrap_or(n);
        if bare.is_empty() || bare.contains('*') {
            return Err(refuse(
                name,
                &format!("{f}.server_names[{i}]"),
                format!("{n:?} is not a name or a *.suffix wildcard"),
            ));
        }
    }
    Ok(ChainMatch {
        destination_port: m.destination_port.as_ref().map(|p| p.value as u16),
        server_names: m
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        transport_protocol: (!m.transport_protocol.is_empty())
            .then(|| m.transport_protocol.clone()),
        application_protocols: m.application_protocols.clone(),
    })
}

fn filter_chain(
    chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain,
    name: &str,
    field: &str,
) -> Result<FilterChain, Refused> {
    let matcher = chain_match(chain.filter_chain_match.as_ref(), name, field)?;
    let tls = chain
        .transport_socket
        .as_ref()
        .map(|ts| server_tls(ts, name, &format!("{field}.transport_socket")))
        .transpose()?;
    let [filter] = chain.filters.as_slice() else {
        return Err(refuse(
            name,
            &format!("{field}.filters"),
            "exactly one network filter is supported",
        ));
    };
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        return Err(refuse(
            name,
            &format!("{field}.filters[0]"),
            "no typed_config",
        ));
    };
    let field = format!("{field}.filters[0].typed_config");
    let field = field.as_str();
    let filter = if any.type_url == HttpConnectionManager::type_url() {
        NetworkFilter::Http(Arc::new(http_manager(
            &decode::<HttpConnectionManager>(any, name, field)?,
            name,
            field,
        )?))
    } else if any.type_url == PbTcpProxy::type_url() {
        let t: PbTcpProxy = decode(any, name, field)?;
        let clusters = match t.cluster_specifier {
            Some(TcpClusterSpecifier::Cluster(c)) => vec![(c, 1)],
            Some(TcpClusterSpecifier::WeightedClusters(w)) => {
                if w.clusters.iter().any(|c| c.metadata_match.is_some()) {
                    return Err(unsupported(
                        name,
                        &format!("{field}.weighted_clusters.metadata_match"),
                    ));
                }
                let clusters: Vec<(String, u32)> =
                    w.clusters.into_iter().map(|c| (c.name, c.weight)).collect();
                if clusters.iter().any(|(_, w)| *w == 0) {
                    // As Envoy's validation: every TCP weight is 1 or more.
                    return Err(refuse(
                        name,
                        &format!("{field}.weighted_clusters"),
                        "a weight is zero (each must be at least 1)",
                    ));
                }
                clusters
            }
            _ => {
                return Err(refuse(
                    name,
                    &format!("{field}.cluster_specifier"),
                    "no cluster",
                ));
            }
        };
        if t.max_connect_attempts.is_some()
            || t.metadata_match.is_some()
            || t.tunneling_config.is_some()
            || !t.hash_policy.is_empty()
        {
            return Err(unsupported(
                name,
                &format!(
                    "{field} (only cluster, weighted_clusters, idle_timeout and access_log are)"
                ),
            ));
        }
        NetworkFilter::Tcp(TcpProxy {
            stat_prefix: t.stat_prefix,
            clusters,
            // Envoy's default: an hour without a byte either way closes the connection;
            // zero turns the timeout off.
            idle_timeout: match &t.idle_timeout {
                None => Some(Duration::from_secs(3600)),
                Some(d) if duration(d).is_zero() => None,
                Some(d) => Some(duration(d)),
            },
            access_log: access_log(&t.access_log, name, &format!("{field}.access_log"), false)?,
        })
    } else {
        return Err(refuse(
            name,
            field,
            format!("network filter {} is not supported", any.type_url),
        ));
    };
    if tls.is_some() && matches!(filter, NetworkFilter::Tcp(_)) {
        return Err(unsupported(
            name,
            &format!("{field} (transport_socket with tcp_proxy)"),
        ));
    }
    Ok(FilterChain {
        matcher,
        tls,
        filter,
    })
}

fn http_manager(
    m: &HttpConnectionManager,
    name: &str,
    field: &str,
) -> Result<HttpManager, Refused> {
    let mut ext_authz = None;
    for (i, f) in m.http_filters.iter().enumerate() {
        let filter_field = format!("{field}.http_filters[{i}]");
        if f.name == EXT_AUTHZ_FILTER {
            let Some(HttpFilterConfig::TypedConfig(any)) = &f.config_type else {
                return Err(refuse(
                    name,
                    &filter_field,
                    "ext_authz needs a typed_config",
                ));
            };
            ext_authz = Some(ext_authz_config(
                &decode(any, name, &filter_field)?,
                name,
                &format!("{filter_field}.typed_config"),
            )?);
            continue;
        }
        if ![FAULT_FILTER, CORS_FILTER, ROUTER_FILTER].contains(&f.name.as_str()) {
            return Err(refuse(
                name,
                &filter_field,
                format!("HTTP filter {} is not supported", f.name),
            ));
        }
    }
    if !m.upgrade_configs.is_empty() {
        // Pilot enables upgrades per route; a manager-wide one would be silently different.
        return Err(unsupported(name, &format!("{field}.upgrade_configs")));
    }
    let routes = match &m.route_specifier {
        Some(RouteSpecifier::Rds(r)) => RouteSource::Rds(r.route_config_name.clone()),
        Some(RouteSpecifier::RouteConfig(rc)) => RouteSource::Inline(Arc::new(route_table(rc)?)),
        _ => return Err(unsupported(name, &format!("{field}.route_specifier"))),
    };
    Ok(HttpManager {
        stat_prefix: m.stat_prefix.clone(),
        routes,
        use_remote_address: m.use_remote_address.as_ref().is_some_and(|b| b.value),
        access_log: access_log(&m.access_log, name, &format!("{field}.access_log"), true)?,
        ext_authz,
    })
}

/// The gRPC ext_authz filter; any setting keel-proxy would not honour is refused.
fn ext_authz_config(c: &PbExtAuthz, resource: &str, field: &str) -> Result<ExtAuthz, Refused> {
    let grpc = match &c.services {
        Some(ext_authz::Services::GrpcService(g)) => g,
        Some(ext_authz::Services::HttpService(_)) => {
            return Err(refuse(
                resource,
                &format!("{field}.http_service"),
                "only the gRPC authorization service is supported",
            ));
        }
        None => return Err(refuse(resource, field, "no grpc_service")),
    };
    let cluster = match &grpc.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
        _ => {
            return Err(refuse(
                resource,
                &format!("{field}.grpc_service"),
                "only envoy_grpc is supported",
            ));
        }
    };
    let unsupported_set = [
        ("with_request_body", c.with_request_body.is_some()),
        ("filter_enabled", c.filter_enabled.is_some()),
        (
            "filter_enabled_metadata",
            c.filter_enabled_metadata.is_some(),
        ),
        ("deny_at_disable", c.deny_at_disable.is_some()),
        ("allowed_headers", c.allowed_headers.is_some()),
        ("disallowed_headers", c.disallowed_headers.is_some()),
        ("clear_route_cache", c.clear_route_cache),
        ("include_peer_certificate", c.include_peer_certificate),
        ("include_tls_session", c.include_tls_session),
        ("shadow_mode", c.shadow_mode),
        (
            "metadata_context_namespaces",
            !c.metadata_context_namespaces.is_empty(),
        ),
    ];
    if let Some((f, _)) = unsupported_set.iter().find(|(_, set)| *set) {
        return Err(unsupported(resource, &format!("{field}.{f}")));
    }
    Ok(ExtAuthz {
        cluster,
        // Envoy's default for gRPC authorization calls.
        timeout: grpc
            .timeout
            .as_ref()
            .map(duration)
            .unwrap_or(Duration::from_millis(200)),
        failure_mode_allow: c.failure_mode_allow,
        status_on_error: c
            .status_on_error
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .filter(|c| (200..600).contains(c))
            .unwrap_or(403),
    })
}

// ---- routes -------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub fault: Option<Fault>,
    pub ext_authz: RouteAuthz,
    pub cors: Option<Cors>,
    pub request_headers_to_add: Vec<(String, String)>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<(String, String)>,
    pub response_headers_to_remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    Regex(Matcher),
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<(String, Option<Matcher>)>,
}

/// A compiled string matcher.
#[derive(Clone, Debug)]
pub enum Matcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(regex::Regex),
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Matcher::Exact(a), Matcher::Exact(b))
            | (Matcher::Prefix(a), Matcher::Prefix(b))
            | (Matcher::Suffix(a), Matcher::Suffix(b))
            | (Matcher::Contains(a), Matcher::Contains(b)) => a == b,
            (Matcher::Regex(a), Matcher::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Matcher {
    pub fn matches(&self, s: &str) -> bool {
        match self {
            Matcher::Exact(x) => s == x,
            Matcher::Prefix(x) => s.starts_with(x.as_str()),
            Matcher::Suffix(x) => s.ends_with(x.as_str()),
            Matcher::Contains(x) => s.contains(x.as_str()),
            Matcher::Regex(r) => r.is_match(s),
        }
    }
}

fn full_regex(pattern: &str, resource: &str, field: &str) -> Result<regex::Regex, Refused> {
    // Envoy's safe_regex matches the whole value.
    regex::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| refuse(resource, field, format!("invalid regex: {e}")))
}

fn string_matcher(m: &StringMatcher, resource: &str, field: &str) -> Result<Matcher, Refused> {
    if m.ignore_case {
        return Err(unsupported(resource, &format!("{field}.ignore_case")));
    }
    Ok(match &m.match_pattern {
        Some(MatchPattern::Exact(s)) => Matcher::Exact(s.clone()),
        Some(MatchPattern::Prefix(s)) => Matcher::Prefix(s.clone()),
        Some(MatchPattern::Suffix(s)) => Matcher::Suffix(s.clone()),
        Some(MatchPattern::Contains(s)) => Matcher::Contains(s.clone()),
        Some(MatchPattern::SafeRegex(r)) => Matcher::Regex(full_regex(&r.regex, resource, field)?),
        _ => return Err(unsupported(resource, field)),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    /// Lower-case.
    pub name: String,
    /// `None`: present.
    pub matcher: Option<Matcher>,
    pub invert: bool,
}

impl HeaderMatch {
    pub fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (&self.matcher, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(v)) => m.matches(v),
        };
        hit != self.invert
    }
}

// The deprecated header matchers are still valid xDS; Envoy accepts them, so do we.
#[allow(deprecated)]
fn header_match(h: &HeaderMatcher, resource: &str, field: &str) -> Result<HeaderMatch, Refused> {
    let matcher = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(m)) => Some(string_matcher(m, resource, field)?),
        Some(HeaderMatchSpecifier::PresentMatch(true)) => None,
        Some(HeaderMatchSpecifier::ExactMatch(s)) => Some(Matcher::Exact(s.clone())),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => Some(Matcher::Prefix(s.clone())),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => Some(Matcher::Suffix(s.clone())),
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            Some(Matcher::Regex(full_regex(&r.regex, resource, field)?))
        }
        None => None,
        _ => return Err(unsupported(resource, field)),
    };
    Ok(HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        matcher,
        invert: h.invert_match,
    })
}

#[derive(Clone, Debug, PartialEq)]
pub enum RouteAction {
    Forward(Forward),
    Redirect {
        host: Option<String>,
        path: Option<String>,
        status: u16,
    },
    Direct {
        status: u16,
        body: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Forward {
    /// Clusters with weights; one with weight 1 when the route names a single cluster.
    pub clusters: Vec<(String, u32)>,
    /// None: no timeout (Envoy's 0).
    pub timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    /// Clusters that get a copy of a share of the requests (fire and forget).
    pub mirrors: Vec<Mirror>,
    /// What a ring-hash cluster hashes (Istio's consistentHash).
    pub hash_policy: Vec<HashPolicy>,
    /// WebSocket upgrades allowed on this route (`upgrade_configs: websocket`).
    pub websocket: bool,
}

/// One input to the request's hash, Envoy's route `hash_policy`.
#[derive(Clone, Debug, PartialEq)]
pub enum HashPolicy {
    Header(String),
    /// A cookie; when absent and `ttl` is set, one is generated and set on the response.
    Cookie {
        name: String,
        ttl: Option<Duration>,
        path: String,
    },
    QueryParameter(String),
    SourceIp,
}

fn hash_policies(
    a: &envoy_types::pb::envoy::config::route::v3::RouteAction,
    resource: &str,
    field: &str,
) -> Result<Vec<HashPolicy>, Refused> {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    let mut out = Vec::new();
    for (i, h) in a.hash_policy.iter().enumerate() {
        let f = format!("{field}.route.hash_policy[{i}]");
        if h.terminal {
            return Err(unsupported(resource, &format!("{f}.terminal")));
        }
        out.push(match &h.policy_specifier {
            Some(PolicySpecifier::Header(hd)) if hd.regex_rewrite.is_none() => {
                HashPolicy::Header(hd.header_name.to_ascii_lowercase())
            }
            Some(PolicySpecifier::Cookie(c)) if c.attributes.is_empty() => HashPolicy::Cookie {
                name: c.name.clone(),
                ttl: c.ttl.as_ref().map(duration),
                path: c.path.clone(),
            },
            Some(PolicySpecifier::QueryParameter(q)) => HashPolicy::QueryParameter(q.name.clone()),
            Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashPolicy::SourceIp,
            _ => return Err(unsupported(resource, &f)),
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub cluster: String,
    pub fraction: Fraction,
    /// Envoy appends `-shadow` to the mirrored request's host unless told not to.
    pub shadow_suffix: bool,
}

/// A route's CORS policy (Envoy's cors filter, per route).
#[derive(Clone, Debug, PartialEq)]
pub struct Cors {
    pub origins: Vec<Matcher>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: String,
    pub allow_credentials: bool,
}

fn cors(c: &PbCorsPolicy, resource: &str, field: &str) -> Result<Cors, Refused> {
    if c.filter_enabled.is_some() || c.shadow_enabled.is_some() {
        return Err(unsupported(resource, &format!("{field}.filter_enabled")));
    }
    if c.allow_private_network_access.is_some() || c.forward_not_matching_preflights.is_some() {
        return Err(unsupported(
            resource,
            &format!("{field}.forward_not_matching_preflights"),
        ));
    }
    let origins = c
        .allow_origin_string_match
        .iter()
        .enumerate()
        .map(|(i, m)| {
            string_matcher(
                m,
                resource,
                &format!("{field}.allow_origin_string_match[{i}]"),
            )
        })
        .collect::<Result<_, _>>()?;
    Ok(Cors {
        origins,
        allow_methods: c.allow_methods.clone(),
        allow_headers: c.allow_headers.clone(),
        expose_headers: c.expose_headers.clone(),
        max_age: c.max_age.clone(),
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, Fraction)>,
    pub abort: Option<(u16, Fraction)>,
}

fn fault(f: &HttpFault, resource: &str, field: &str) -> Result<Fault, Refused> {
    if !f.headers.is_empty() || !f.upstream_cluster.is_empty() || !f.downstream_nodes.is_empty() {
        return Err(unsupported(resource, &format!("{field}.headers")));
    }
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => {
                Some((duration(fd), Fraction::from_pb(d.percentage.as_ref())))
            }
            _ => return Err(unsupported(resource, &format!("{field}.delay"))),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => match &a.error_type {
            Some(ErrorType::HttpStatus(s)) => Some((
                u16::try_from(*s).map_err(|_| {
                    refuse(
                        resource,
                        &format!("{field}.abort.http_status"),
                        "out of range",
                    )
                })?,
                Fraction::from_pb(a.percentage.as_ref()),
            )),
            _ => return Err(unsupported(resource, &format!("{field}.abort"))),
        },
    };
    Ok(Fault { delay, abort })
}

fn headers_to_add(
    list: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
) -> Vec<(String, String)> {
    list.iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.to_ascii_lowercase(), h.value.clone()))
        .collect()
}

fn route(r: &PbRoute, resource: &str, field: &str) -> Result<Route, Refused> {
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| refuse(resource, field, "no match"))?;
    if m.case_sensitive.as_ref().is_some_and(|b| !b.value) {
        return Err(unsupported(
            resource,
            &format!("{field}.match.case_sensitive"),
        ));
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::SafeRegex(r)) => {
            PathMatch::Regex(Matcher::Regex(full_regex(&r.regex, resource, field)?))
        }
        _ => {
            return Err(unsupported(
                resource,
                &format!("{field}.match.path_specifier"),
            ));
        }
    };
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| header_match(h, resource, &format!("{field}.match.headers[{i}]")))
        .collect::<Result<_, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let f = format!("{field}.match.query_parameters[{i}]");
            use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            let matcher = match &q.query_parameter_match_specifier {
                Some(Q::StringMatch(s)) => Some(string_matcher(s, resource, &f)?),
                Some(Q::PresentMatch(true)) | None => None,
                _ => return Err(unsupported(resource, &f)),
            };
            Ok((q.name.clone(), matcher))
        })
        .collect::<Result<_, _>>()?;
    let action = match &r.action {
        Some(Action::Route(a)) => {
            let clusters = match &a.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => vec![(c.clone(), 1)],
                Some(ClusterSpecifier::WeightedClusters(w)) => w
                    .clusters
                    .iter()
                    .map(|c| {
                        (
                            c.name.clone(),
                            c.weight.as_ref().map(|w| w.value).unwrap_or(0),
                        )
                    })
                    .collect(),
                _ => {
                    return Err(unsupported(
                        resource,
                        &format!("{field}.route.cluster_specifier"),
                    ));
                }
            };
            let mut mirrors = Vec::new();
            for (i, m) in a.request_mirror_policies.iter().enumerate() {
                let f = format!("{field}.route.request_mirror_policies[{i}]");
                if m.cluster.is_empty() {
                    return Err(refuse(
                        resource,
                        &f,
                        "only a named cluster is supported (not cluster_header)",
                    ));
                }
                if m.runtime_fraction
                    .as_ref()
                    .is_some_and(|r| !r.runtime_key.is_empty())
                {
                    return Err(unsupported(
                        resource,
                        &format!("{f}.runtime_fraction.runtime_key"),
                    ));
                }
                mirrors.push(Mirror {
                    cluster: m.cluster.clone(),
                    fraction: Fraction::from_pb(
                        m.runtime_fraction
                            .as_ref()
                            .and_then(|r| r.default_value.as_ref()),
                    ),
                    shadow_suffix: !m.disable_shadow_host_suffix_append,
                });
            }
            let hash_policy = hash_policies(a, resource, field)?;
            let mut websocket = false;
            for (i, u) in a.upgrade_configs.iter().enumerate() {
                let f = format!("{field}.route.upgrade_configs[{i}]");
                if !u.upgrade_type.eq_ignore_ascii_case("websocket") {
                    return Err(refuse(
                        resource,
                        &f,
                        format!(
                            "upgrade type {:?} is not supported (only websocket)",
                            u.upgrade_type
                        ),
                    ));
                }
                if u.connect_config.is_some() {
                    return Err(unsupported(resource, &format!("{f}.connect_config")));
                }
                websocket = u.enabled.as_ref().is_none_or(|b| b.value);
            }
            let retry = match &a.retry_policy {
                None => None,
                Some(p) => {
                    let mut retry = Retry {
                        on_5xx: false,
                        on_gateway_error: false,
                        on_connect_failure: false,
                        num_retries: p.num_retries.as_ref().map(|n| n.value).unwrap_or(1),
                        per_try_timeout: p
                            .per_try_timeout
                            .as_ref()
                            .map(duration)
                            .filter(|d| !d.is_zero()),
                    };
                    for cond in p
                        .retry_on
                        .split(',')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                    {
                        match cond {
                            "5xx" => retry.on_5xx = true,
                            "gateway-error" => retry.on_gateway_error = true,
                            "connect-failure" | "refused-stream" | "reset" => {
                                retry.on_connect_failure = true
                            }
                            other => {
                                return Err(refuse(
                                    resource,
                                    &format!("{field}.route.retry_policy.retry_on"),
                                    format!("condition \"{other}\" is not supported"),
                                ));
                            }
                        }
                    }
                    Some(retry)
                }
            };
            use envoy_types::pb::envoy::config::route::v3::route_action::HostRewriteSpecifier;
            let host_rewrite = match &a.host_rewrite_specifier {
                Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => Some(h.clone()),
                None => None,
                _ => {
                    return Err(unsupported(
                        resource,
                        &format!("{field}.route.host_rewrite_specifier"),
                    ));
                }
            };
            RouteAction::Forward(Forward {
                clusters,
                timeout: a.timeout.as_ref().map(duration).filter(|d| !d.is_zero()),
                retry,
                prefix_rewrite: Some(a.prefix_rewrite.clone()).filter(|p| !p.is_empty()),
                host_rewrite,
                mirrors,
                hash_policy,
                websocket,
            })
        }
        Some(Action::Redirect(rd)) => {
            use envoy_types::pb::envoy::config::route::v3::redirect_action::PathRewriteSpecifier;
            let path = match &rd.path_rewrite_specifier {
                Some(PathRewriteSpecifier::PathRedirect(p)) => Some(p.clone()),
                None => None,
                _ => {
                    return Err(unsupported(
                        resource,
                        &format!("{field}.redirect.path_rewrite_specifier"),
                    ));
                }
            };
            let status = match rd.response_code {
                0 => 301,
                1 => 302,
                2 => 303,
                3 => 307,
                4 => 308,
                _ => {
                    return Err(refuse(
                        resource,
                        &format!("{field}.redirect.response_code"),
                        "unknown code",
                    ));
                }
            };
            RouteAction::Redirect {
                host: Some(rd.host_redirect.clone()).filter(|h| !h.is_empty()),
                path,
                status,
            }
        }
        Some(Action::DirectResponse(d)) => {
            use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => String::new(),
                Some(Specifier::InlineString(s)) => s.clone(),
                Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(_) => {
                    return Err(unsupported(
                        resource,
                        &format!("{field}.direct_response.body"),
                    ));
                }
            };
            RouteAction::Direct {
                status: u16::try_from(d.status).unwrap_or(500),
                body,
            }
        }
        _ => return Err(unsupported(resource, &format!("{field}.action"))),
    };
    let mut fault_cfg = None;
    let mut cors_cfg = None;
    let mut authz = RouteAuthz::Check;
    for (name, any) in &r.typed_per_filter_config {
        match name.as_str() {
            EXT_AUTHZ_FILTER => {
                let f = format!("{field}.typed_per_filter_config");
                let per_route: ExtAuthzPerRoute = decode(any, resource, &f)?;
                authz = match per_route.r#override {
                    Some(ext_authz_per_route::Override::Disabled(true)) => RouteAuthz::Disabled,
                    Some(ext_authz_per_route::Override::Disabled(false)) | None => {
                        RouteAuthz::Check
                    }
                    Some(ext_authz_per_route::Override::CheckSettings(s)) => {
                        if s.with_request_body.is_some() {
                            return Err(unsupported(
                                resource,
                                &format!("{f}.check_settings.with_request_body"),
                            ));
                        }
                        let mut ext: Vec<(String, String)> =
                            s.context_extensions.into_iter().collect();
                        ext.sort();
                        RouteAuthz::CheckWith(ext)
                    }
                };
            }
            CORS_FILTER => {
                let f = format!("{field}.typed_per_filter_config[{CORS_FILTER}]");
                cors_cfg = Some(cors(
                    &decode::<PbCorsPolicy>(any, resource, &f)?,
                    resource,
                    &f,
                )?);
            }
            FAULT_FILTER => {
                fault_cfg = Some(fault(
                    &decode::<HttpFault>(any, resource, field)?,
                    resource,
                    &format!("{field}.typed_per_filter_config"),
                ))
                .transpose()?;
            }
            other => {
                return Err(refuse(
                    resource,
                    &format!("{field}.typed_per_filter_config"),
                    format!("per-route config for {other} is not supported yet"),
                ));
            }
        }
    }
    Ok(Route {
        matcher: RouteMatch {
            path,
            headers,
            query,
        },
        action,
        fault: fault_cfg,
        ext_authz: authz,
        cors: cors_cfg,
        request_headers_to_add: headers_to_add(&r.request_headers_to_add),
        request_headers_to_remove: r
            .request_headers_to_remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        response_headers_to_add: headers_to_add(&r.response_headers_to_add),
        response_headers_to_remove: r
            .response_headers_to_remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}

#[allow(deprecated)] // `cors` on a virtual host: refused, so it must be read.
pub fn route_table(rc: &RouteConfiguration) -> Result<RouteTable, Refused> {
    let name = rc.name.as_str();
    let mut virtual_hosts = Vec::new();
    for (i, vh) in rc.virtual_hosts.iter().enumerate() {
        let field = format!("virtual_hosts[{i}]");
        if vh.cors.is_some() || !vh.typed_per_filter_config.is_empty() {
            return Err(unsupported(
                name,
                &format!("{field}.typed_per_filter_config"),
            ));
        }
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .map(|(j, r)| route(r, name, &format!("{field}.routes[{j}]")))
            .collect::<Result<_, _>>()?;
        virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            routes,
        });
    }
    Ok(RouteTable {
        name: name.to_owned(),
        virtual_hosts,
    })
}

// ---- clusters and endpoints ---------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    Eds,
    Static,
    StrictDns,
    OriginalDst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancer {
    RoundRobin,
    Random,
    /// Envoy's LEAST_REQUEST: of two endpoints drawn at random, the one with fewer
    /// requests in flight.
    LeastRequest,
    /// Consistent hashing on a ring of about this many points (Envoy's RING_HASH).
    RingHash {
        ring_size: usize,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub discovery: Discovery,
    /// The EDS resource name (the cluster's own unless eds_cluster_config says otherwise).
    pub eds_name: String,
    pub connect_timeout: Duration,
    pub balancer: Balancer,
    /// STATIC and STRICT_DNS endpoints (host, port).
    pub hosts: Vec<(String, u16)>,
    /// The upstream speaks HTTP/2 (gRPC).
    pub http2: bool,
    /// Circuit breaker thresholds (the default priority's).
    pub limits: Limits,
    pub outlier: Option<Outlier>,
    /// Requests per upstream connection (1: never reused); None: unlimited.
    pub max_requests_per_connection: Option<u32>,
    /// How long an idle upstream connection is kept.
    pub idle_timeout: Option<Duration>,
    /// TLS to the endpoints.
    pub tls: Option<ClientTls>,
    /// STRICT_DNS: which addresses of a name to use, and how often to look again.
    pub dns_lookup: DnsLookup,
    pub dns_refresh: Duration,
}

/// Envoy's `dns_lookup_family`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DnsLookup {
    /// IPv6 addresses if the name has any, else IPv4 (Envoy's AUTO).
    #[default]
    Auto,
    V4Only,
    V6Only,
    /// IPv4 addresses if the name has any, else IPv6.
    V4Preferred,
    All,
}

/// Circuit breaker thresholds, with Envoy's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    pub max_retries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Outlier detection by consecutive errors, with Envoy's defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive 5xx (locally originated failures included) before ejection.
    pub consecutive_5xx: u32,
    /// Percent chance an ejection by consecutive 5xx is enforced.
    pub enforcing_5xx: u32,
    /// Consecutive 502/503/504 (and local failures) before ejection.
    pub consecutive_gateway: u32,
    pub enforcing_gateway: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

fn limits(c: &PbCluster) -> Result<Limits, Refused> {
    use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
    let name = c.name.as_str();
    let mut l = Limits::default();
    let Some(cb) = &c.circuit_breakers else {
        return Ok(l);
    };
    for (i, t) in cb.thresholds.iter().enumerate() {
        let field = format!("circuit_breakers.thresholds[{i}]");
        if RoutingPriority::try_from(t.priority) != Ok(RoutingPriority::Default) {
            return Err(refuse(
                name,
                &format!("{field}.priority"),
                "only the DEFAULT priority is supported",
            ));
        }
        if t.retry_budget.is_some() {
            return Err(unsupported(name, &format!("{field}.retry_budget")));
        }
        let n = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: usize| {
            v.as_ref()
                .map_or(d, |v| usize::try_from(v.value).unwrap_or(usize::MAX))
        };
        l = Limits {
            max_connections: n(&t.max_connections, l.max_connections),
            max_pending_requests: n(&t.max_pending_requests, l.max_pending_requests),
            max_requests: n(&t.max_requests, l.max_requests),
            max_retries: n(&t.max_retries, l.max_retries),
        };
    }
    if !cb.per_host_thresholds.is_empty() {
        return Err(unsupported(name, "circuit_breakers.per_host_thresholds"));
    }
    Ok(l)
}

fn outlier(c: &PbCluster) -> Result<Option<Outlier>, Refused> {
    let name = c.name.as_str();
    let Some(od) = &c.outlier_detection else {
        return Ok(None);
    };
    let v = |x: &Option<envoy_types::pb::google::protobuf::UInt32Value>, d: u32| {
        x.as_ref().map_or(d, |x| x.value)
    };
    // What keel-proxy does not detect must not be asked for.
    let unsupported_set = [
        (
            "success_rate_minimum_hosts",
            od.success_rate_minimum_hosts.is_some(),
        ),
        (
            "success_rate_request_volume",
            od.success_rate_request_volume.is_some(),
        ),
        (
            "success_rate_stdev_factor",
            od.success_rate_stdev_factor.is_some(),
        ),
        (
            "enforcing_success_rate",
            od.enforcing_success_rate
                .as_ref()
                .is_some_and(|e| e.value > 0),
        ),
        (
            "split_external_local_origin_errors",
            od.split_external_local_origin_errors,
        ),
        (
            "enforcing_failure_percentage",
            od.enforcing_failure_percentage
                .as_ref()
                .is_some_and(|e| e.value > 0),
        ),
        (
            "failure_percentage_threshold",
            od.failure_percentage_threshold.is_some(),
        ),
        ("max_ejection_time", od.max_ejection_time.is_some()),
    ];
    if let Some((f, _)) = unsupported_set.iter().find(|(_, set)| *set) {
        return Err(unsupported(name, &format!("outlier_detection.{f}")));
    }
    let pct = v(&od.max_ejection_percent, 10);
    if pct > 100 {
        return Err(refuse(
            name,
            "outlier_detection.max_ejection_percent",
            "must be at most 100",
        ));
    }
    Ok(Some(Outlier {
        consecutive_5xx: v(&od.consecutive_5xx, 5),
        enforcing_5xx: v(&od.enforcing_consecutive_5xx, 100),
        consecutive_gateway: v(&od.consecutive_gateway_failure, 5),
        enforcing_gateway: v(&od.enforcing_consecutive_gateway_failure, 0),
        base_ejection_time: od
            .base_ejection_time
            .as_ref()
            .map(duration)
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: pct,
    }))
}

pub fn cluster(c: &PbCluster) -> Result<Cluster, Refused> {
    let name = c.name.as_str();
    let discovery = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => match DiscoveryType::try_from(*t) {
            Ok(DiscoveryType::Eds) => Discovery::Eds,
            Ok(DiscoveryType::Static) => Discovery::Static,
            Ok(DiscoveryType::StrictDns) => Discovery::StrictDns,
            Ok(DiscoveryType::OriginalDst) => Discovery::OriginalDst,
            _ => return Err(unsupported(name, "type")),
        },
        None => Discovery::Static,
        Some(_) => return Err(unsupported(name, "cluster_type")),
    };
    let balancer = match LbPolicy::try_from(c.lb_policy) {
        Ok(LbPolicy::RoundRobin) => Balancer::RoundRobin,
        Ok(LbPolicy::Random) => Balancer::Random,
        Ok(LbPolicy::RingHash) => {
            use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
            use envoy_types::pb::envoy::config::cluster::v3::cluster::ring_hash_lb_config::HashFunction;
            let mut ring_size = 1024;
            match &c.lb_config {
                None => {}
                Some(LbConfig::RingHashLbConfig(r)) => {
                    if HashFunction::try_from(r.hash_function) != Ok(HashFunction::XxHash) {
                        return Err(unsupported(name, "ring_hash_lb_config.hash_function"));
                    }
                    if let Some(min) = &r.minimum_ring_size {
                        ring_size = usize::try_from(min.value).unwrap_or(1024).clamp(1, 1 << 23);
                    }
                }
                Some(_) => return Err(unsupported(name, "lb_config")),
            }
            Balancer::RingHash { ring_size }
        }
        Ok(LbPolicy::LeastRequest) => {
            if c.lb_config.is_some() {
                return Err(unsupported(name, "least_request_lb_config"));
            }
            Balancer::LeastRequest
        }
        Ok(LbPolicy::ClusterProvided) if discovery == Discovery::OriginalDst => {
            Balancer::RoundRobin
        }
        _ => {
            return Err(refuse(
                name,
                "lb_policy",
                "only ROUND_ROBIN, RANDOM, LEAST_REQUEST and RING_HASH are supported yet",
            ));
        }
    };
    let limits = limits(c)?;
    let outlier = outlier(c)?;
    let tls = c
        .transport_socket
        .as_ref()
        .map(|ts| client_tls(ts, name))
        .transpose()?;
    let mut http2 = false;
    let mut max_requests_per_connection = None;
    let mut idle_timeout = None;
    for (key, any) in &c.typed_extension_protocol_options {
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
        use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
        let field = format!("typed_extension_protocol_options[{key}]");
        let o: HttpProtocolOptions = decode(any, name, &field)?;
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) = &o.upstream_protocol_options {
            http2 = matches!(
                e.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            );
        }
        if let Some(common) = &o.common_http_protocol_options {
            max_requests_per_connection =
                common.max_requests_per_connection.as_ref().map(|v| v.value);
            if max_requests_per_connection.is_some_and(|n| n != 1) {
                return Err(refuse(
                    name,
                    &format!("{field}.common_http_protocol_options.max_requests_per_connection"),
                    "only 1 (no connection reuse) is supported yet",
                ));
            }
            idle_timeout = common.idle_timeout.as_ref().map(duration);
            if common.max_connection_duration.is_some()
                || common.max_headers_count.is_some()
                || common.max_stream_duration.is_some()
            {
                return Err(unsupported(
                    name,
                    &format!("{field}.common_http_protocol_options"),
                ));
            }
        }
    }
    let dns_lookup = {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::DnsLookupFamily as F;
        match F::try_from(c.dns_lookup_family) {
            Ok(F::Auto) => DnsLookup::Auto,
            Ok(F::V4Only) => DnsLookup::V4Only,
            Ok(F::V6Only) => DnsLookup::V6Only,
            Ok(F::V4Preferred) => DnsLookup::V4Preferred,
            Ok(F::All) => DnsLookup::All,
            Err(_) => return Err(refuse(name, "dns_lookup_family", "unknown value")),
        }
    };
    #[allow(deprecated)] // dns_resolvers: refused, not read
    if !c.dns_resolvers.is_empty()
        || c.typed_dns_resolver_config.is_some()
        || c.respect_dns_ttl
        || c.dns_failure_refresh_rate.is_some()
    {
        return Err(unsupported(
            name,
            "dns settings (only dns_lookup_family and dns_refresh_rate are)",
        ));
    }
    #[allow(deprecated)] // still what Istio's pilot (and Keel's) set
    let dns_refresh = c
        .dns_refresh_rate
        .as_ref()
        .map(duration)
        .filter(|d| *d >= Duration::from_millis(1))
        .unwrap_or(Duration::from_secs(5));
    let hosts = match &c.load_assignment {
        Some(cla) => endpoints(cla)?
            .into_iter()
            .map(|e| (e.host, e.port))
            .collect(),
        None => Vec::new(),
    };
    let eds_name = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.to_owned());
    Ok(Cluster {
        name: name.to_owned(),
        discovery,
        eds_name,
        connect_timeout: c
            .connect_timeout
            .as_ref()
            .map(duration)
            .unwrap_or(Duration::from_secs(5)),
        balancer,
        hosts,
        http2,
        limits,
        outlier,
        max_requests_per_connection,
        idle_timeout,
        tls,
        dns_lookup,
        dns_refresh,
    })
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address, or a DNS name for STRICT_DNS clusters.
    pub host: String,
    pub port: u16,
    pub weight: u32,
    /// `host:port` when the host is an IP address: parsed once here, not per request.
    pub addr: Option<std::net::SocketAddr>,
}

pub fn endpoints(cla: &ClusterLoadAssignment) -> Result<Vec<Endpoint>, Refused> {
    let name = cla.cluster_name.as_str();
    let mut out = Vec::new();
    for (i, locality) in cla.endpoints.iter().enumerate() {
        for (j, lb) in locality.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{i}].lb_endpoints[{j}]");
            let Some(HostIdentifier::Endpoint(e)) = &lb.host_identifier else {
                return Err(unsupported(name, &format!("{field}.endpoint_name")));
            };
            let Some(PbAddressKind::SocketAddress(sa)) =
                e.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                return Err(refuse(name, &field, "only socket addresses are supported"));
            };
            let port = match sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => {
                    u16::try_from(p).map_err(|_| refuse(name, &field, "port out of range"))?
                }
                _ => return Err(refuse(name, &field, "named ports are not supported")),
            };
            out.push(Endpoint {
                addr: sa
                    .address
                    .parse()
                    .ok()
                    .map(|ip| std::net::SocketAddr::new(ip, port)),
                host: sa.address.clone(),
                port,
                weight: lb
                    .load_balancing_weight
                    .as_ref()
                    .map(|w| w.value)
                    .unwrap_or(1)
                    .max(1),
            });
        }
    }
    Ok(out)
}

/// Everything the proxy runs with: what the control plane sent, converted. Swapped whole.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub listeners: BTreeMap<String, Arc<Listener>>,
    pub routes: BTreeMap<String, Arc<RouteTable>>,
    pub clusters: BTreeMap<String, Arc<Cluster>>,
    /// By EDS name.
    pub endpoints: BTreeMap<String, Arc<Vec<Endpoint>>>,
}

pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Checks one xDS response: every resource must convert. The error is the NACK's detail.
pub fn validate(type_url: &str, resources: &[Any]) -> Result<(), String> {
    for any in resources {
        convert_into(&mut Config::default(), type_url, any).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Adds one resource to `config`.
pub fn convert_into(config: &mut Config, type_url: &str, any: &Any) -> Result<(), Refused> {
    match type_url {
        LISTENER_TYPE => {
            let l = listener(&decode::<PbListener>(any, "listener", "")?)?;
            config.listeners.insert(l.name.clone(), Arc::new(l));
        }
        ROUTE_TYPE => {
            let r = route_table(&decode::<RouteConfiguration>(
                any,
                "route configuration",
                "",
            )?)?;
            config.routes.insert(r.name.clone(), Arc::new(r));
        }
        CLUSTER_TYPE => {
            let c = cluster(&decode::<PbCluster>(any, "cluster", "")?)?;
            config.clusters.insert(c.name.clone(), Arc::new(c));
        }
        ENDPOINT_TYPE => {
            let cla: ClusterLoadAssignment = decode(any, "endpoints", "")?;
            let e = endpoints(&cla)?;
            config
                .endpoints
                .insert(cla.cluster_name.clone(), Arc::new(e));
        }
        other => {
            return Err(refuse(
                other,
                "type_url",
                "not a type keel-proxy subscribes to",
            ));
        }
    }
    Ok(())
}
