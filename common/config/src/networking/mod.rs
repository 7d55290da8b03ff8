//! `networking.istio.io`: VirtualService, DestinationRule, Gateway, ServiceEntry and
//! WorkloadEntry, with every field of Istio 1.0's v1alpha3 API and the later additions that
//! Istio's current samples use.
//!
//! Field names are lowerCamelCase as in Istio's YAML; the snake_case proto names are accepted
//! too (Istio parsed its specs with protobuf JSON rules, which take both). A field that is not
//! here is reported as unknown, never silently dropped.

mod validate;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::duration::Duration;

pub use validate::{is_valid_subset_name, parse_protocol};

/// A string match: exactly one of `exact`, `prefix`, `regex`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A port chosen by number (or, in 1.0, by name).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A percentage 0..100 with fractions (`percentage: {value: 0.1}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}

type Labels = BTreeMap<String, String>;

// === VirtualService ===

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VirtualService {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<HttpRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<TlsRoute>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
    #[serde(default, alias = "export_to", skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HttpMatchRequest>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<HttpRouteDestination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<HttpRedirect>,
    #[serde(
        default,
        alias = "direct_response",
        skip_serializing_if = "Option::is_none"
    )]
    pub direct_response: Option<HttpDirectResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<Delegate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<HttpRewrite>,
    #[serde(
        default,
        alias = "websocket_upgrade",
        skip_serializing_if = "Option::is_none"
    )]
    pub websocket_upgrade: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<HttpRetry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<HttpFaultInjection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<HttpMirrorPolicy>,
    #[serde(
        default,
        alias = "mirror_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percent: Option<u32>,
    #[serde(
        default,
        alias = "mirror_percentage",
        skip_serializing_if = "Option::is_none"
    )]
    pub mirror_percentage: Option<Percent>,
    #[serde(
        default,
        alias = "cors_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub cors_policy: Option<CorsPolicy>,
    /// 1.0: headers appended to the request.
    #[serde(
        default,
        alias = "append_headers",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub append_headers: BTreeMap<String, String>,
    /// 1.0: response headers removed.
    #[serde(
        default,
        alias = "remove_response_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remove_response_headers: Vec<String>,
    /// 1.1: response headers appended.
    #[serde(
        default,
        alias = "append_response_headers",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub append_response_headers: BTreeMap<String, String>,
    /// 1.1: request headers removed.
    #[serde(
        default,
        alias = "remove_request_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub remove_request_headers: Vec<String>,
    /// 1.1: request headers appended.
    #[serde(
        default,
        alias = "append_request_headers",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub append_request_headers: BTreeMap<String, String>,
    /// Later Istio: `headers.request` / `headers.response` with set/add/remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMatchRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(
        default,
        alias = "source_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(
        default,
        alias = "query_params",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(
        default,
        alias = "ignore_uri_case",
        skip_serializing_if = "Option::is_none"
    )]
    pub ignore_uri_case: Option<bool>,
    #[serde(
        default,
        alias = "without_headers",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteDestination {
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteDestination {
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRedirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(
        default,
        alias = "redirect_code",
        skip_serializing_if = "Option::is_none"
    )]
    pub redirect_code: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpDirectResponse {
    #[serde(default)]
    pub status: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delegate {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRetry {
    #[serde(default)]
    pub attempts: i64,
    #[serde(
        default,
        alias = "per_try_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    #[serde(default, alias = "retry_on", skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    #[serde(
        default,
        alias = "retry_remote_localities",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_remote_localities: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// 1.0: an integer percentage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    #[serde(
        default,
        alias = "fixed_delay",
        skip_serializing_if = "Option::is_none"
    )]
    pub fixed_delay: Option<Duration>,
    #[serde(
        default,
        alias = "exponential_delay",
        skip_serializing_if = "Option::is_none"
    )]
    pub exponential_delay: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
    #[serde(
        default,
        alias = "http_status",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_status: Option<i64>,
    #[serde(
        default,
        alias = "grpc_status",
        skip_serializing_if = "Option::is_none"
    )]
    pub grpc_status: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpMirrorPolicy {
    #[serde(default)]
    pub destination: Destination,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percent>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsPolicy {
    /// 1.0: exact origins.
    #[serde(default, alias = "allow_origin", skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Later: origins as string matches.
    #[serde(
        default,
        alias = "allow_origins",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_origins: Vec<StringMatch>,
    #[serde(
        default,
        alias = "allow_methods",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_methods: Vec<String>,
    #[serde(
        default,
        alias = "allow_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub allow_headers: Vec<String>,
    #[serde(
        default,
        alias = "expose_headers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub expose_headers: Vec<String>,
    #[serde(default, alias = "max_age", skip_serializing_if = "Option::is_none")]
    pub max_age: Option<Duration>,
    #[serde(
        default,
        alias = "allow_credentials",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_credentials: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperations {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpRoute {
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<L4MatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L4MatchAttributes {
    #[serde(
        default,
        alias = "destination_subnets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(
        default,
        alias = "source_subnet",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_subnet: Option<String>,
    #[serde(
        default,
        alias = "source_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsRoute {
    #[serde(default, rename = "match")]
    pub matches: Vec<TlsMatchAttributes>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsMatchAttributes {
    #[serde(default, alias = "sni_hosts")]
    pub sni_hosts: Vec<String>,
    #[serde(
        default,
        alias = "destination_subnets",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub destination_subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
    #[serde(
        default,
        alias = "source_subnet",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_subnet: Option<String>,
    #[serde(
        default,
        alias = "source_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub source_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    #[serde(
        default,
        alias = "source_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_namespace: Option<String>,
}

// === DestinationRule ===

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestinationRule {
    #[serde(default)]
    pub host: String,
    #[serde(
        default,
        alias = "traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subsets: Vec<Subset>,
    #[serde(default, alias = "export_to", skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<WorkloadSelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default, alias = "match_labels")]
    pub match_labels: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(
        default,
        alias = "load_balancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(
        default,
        alias = "connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(
        default,
        alias = "outlier_detection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
    #[serde(
        default,
        alias = "port_level_settings",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSelector>,
    #[serde(
        default,
        alias = "load_balancer",
        skip_serializing_if = "Option::is_none"
    )]
    pub load_balancer: Option<LoadBalancerSettings>,
    #[serde(
        default,
        alias = "connection_pool",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_pool: Option<ConnectionPoolSettings>,
    #[serde(
        default,
        alias = "outlier_detection",
        skip_serializing_if = "Option::is_none"
    )]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTlsSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<SimpleLb>,
    #[serde(
        default,
        alias = "consistent_hash",
        skip_serializing_if = "Option::is_none"
    )]
    pub consistent_hash: Option<ConsistentHashLb>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SimpleLb {
    Unspecified,
    RoundRobin,
    LeastConn,
    LeastRequest,
    Random,
    Passthrough,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHashLb {
    #[serde(
        default,
        alias = "http_header_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_header_name: Option<String>,
    #[serde(
        default,
        alias = "http_cookie",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_cookie: Option<HttpCookie>,
    #[serde(
        default,
        alias = "use_source_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_source_ip: Option<bool>,
    #[serde(
        default,
        alias = "http_query_parameter_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_query_parameter_name: Option<String>,
    #[serde(
        default,
        alias = "minimum_ring_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_ring_size: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCookie {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPoolSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSettings>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(
        default,
        alias = "max_connections",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connections: Option<i64>,
    #[serde(
        default,
        alias = "connect_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub connect_timeout: Option<Duration>,
    #[serde(
        default,
        alias = "tcp_keepalive",
        skip_serializing_if = "Option::is_none"
    )]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpKeepalive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(
        default,
        alias = "http1_max_pending_requests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http1_max_pending_requests: Option<i64>,
    #[serde(
        default,
        alias = "http2_max_requests",
        skip_serializing_if = "Option::is_none"
    )]
    pub http2_max_requests: Option<i64>,
    #[serde(
        default,
        alias = "max_requests_per_connection",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_requests_per_connection: Option<i64>,
    #[serde(
        default,
        alias = "max_retries",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_retries: Option<i64>,
    #[serde(
        default,
        alias = "idle_timeout",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_timeout: Option<Duration>,
    #[serde(
        default,
        alias = "h2_upgrade_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub h2_upgrade_policy: Option<H2UpgradePolicy>,
    #[serde(
        default,
        alias = "use_client_protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub use_client_protocol: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum H2UpgradePolicy {
    Default,
    DoNotUpgrade,
    Upgrade,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 1.0's name for consecutive 5xx (gateway errors in Envoy terms).
    #[serde(
        default,
        alias = "consecutive_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_errors: Option<i64>,
    #[serde(
        default,
        alias = "consecutive_5xx_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<i64>,
    #[serde(
        default,
        alias = "consecutive_gateway_errors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_gateway_errors: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(
        default,
        alias = "base_ejection_time",
        skip_serializing_if = "Option::is_none"
    )]
    pub base_ejection_time: Option<Duration>,
    #[serde(
        default,
        alias = "max_ejection_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ejection_percent: Option<i64>,
    #[serde(
        default,
        alias = "min_health_percent",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_health_percent: Option<i64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClientTlsMode {
    #[default]
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientTlsSettings {
    #[serde(default)]
    pub mode: ClientTlsMode,
    #[serde(
        default,
        alias = "client_certificate",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_certificate: Option<String>,
    #[serde(
        default,
        alias = "private_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
    #[serde(
        default,
        alias = "ca_certificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_certificates: Option<String>,
    #[serde(
        default,
        alias = "credential_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_name: Option<String>,
    #[serde(
        default,
        alias = "subject_alt_names",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subject_alt_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(
        default,
        alias = "insecure_skip_verify",
        skip_serializing_if = "Option::is_none"
    )]
    pub insecure_skip_verify: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subset {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(
        default,
        alias = "traffic_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub traffic_policy: Option<TrafficPolicy>,
}

// === Gateway ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gateway {
    #[serde(default)]
    pub servers: Vec<Server>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: Labels,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Server {
    #[serde(default)]
    pub port: Port,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsSettings>,
    #[serde(
        default,
        alias = "default_endpoint",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A service or server port: number, protocol, name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    #[serde(default)]
    pub number: u32,
    #[serde(default)]
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        alias = "target_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub target_port: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerTlsMode {
    #[default]
    Passthrough,
    Simple,
    Mutual,
    AutoPassthrough,
    IstioMutual,
    OptionalMutual,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum TlsProtocolVersion {
    #[serde(rename = "TLS_AUTO")]
    Auto,
    #[serde(rename = "TLSV1_0")]
    V1_0,
    #[serde(rename = "TLSV1_1")]
    V1_1,
    #[serde(rename = "TLSV1_2")]
    V1_2,
    #[serde(rename = "TLSV1_3")]
    V1_3,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerTlsSettings {
    #[serde(
        default,
        alias = "https_redirect",
        skip_serializing_if = "Option::is_none"
    )]
    pub https_redirect: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<ServerTlsMode>,
    #[serde(
        default,
        alias = "server_certificate",
        skip_serializing_if = "Option::is_none"
    )]
    pub server_certificate: Option<String>,
    #[serde(
        default,
        alias = "private_key",
        skip_serializing_if = "Option::is_none"
    )]
    pub private_key: Option<String>,
    #[serde(
        default,
        alias = "ca_certificates",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_certificates: Option<String>,
    #[serde(
        default,
        alias = "credential_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub credential_name: Option<String>,
    #[serde(
        default,
        alias = "subject_alt_names",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subject_alt_names: Vec<String>,
    #[serde(
        default,
        alias = "verify_certificate_spki",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub verify_certificate_spki: Vec<String>,
    #[serde(
        default,
        alias = "verify_certificate_hash",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub verify_certificate_hash: Vec<String>,
    #[serde(
        default,
        alias = "min_protocol_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_protocol_version: Option<TlsProtocolVersion>,
    #[serde(
        default,
        alias = "max_protocol_version",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_protocol_version: Option<TlsProtocolVersion>,
    #[serde(
        default,
        alias = "cipher_suites",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cipher_suites: Vec<String>,
}

// === ServiceEntry and WorkloadEntry ===

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(
        default,
        alias = "workload_selector",
        skip_serializing_if = "Option::is_none"
    )]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, alias = "export_to", skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(
        default,
        alias = "subject_alt_names",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ports: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(
        default,
        alias = "service_account",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_account: Option<String>,
}

/// The protocol a port speaks, from an explicit protocol or from a port name prefix
/// (Istio 1.0: `http`, `http-foo`, `http2`, `grpc`, `https`, `tls`, `tcp`, `mongo`, `redis`,
/// `mysql`, `udp`; anything else, or no name, is TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    Mongo,
    Redis,
    Mysql,
    Udp,
}

impl Protocol {
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Istio 1.0's port-name convention: `<protocol>[-<suffix>]`; unknown prefixes are TCP.
    pub fn from_port_name(name: &str) -> Protocol {
        let prefix = name.split('-').next().unwrap_or("");
        parse_protocol(prefix).unwrap_or(Protocol::Tcp)
    }
}
