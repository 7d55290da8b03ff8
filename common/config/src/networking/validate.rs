//! Istio's validation rules for the networking kinds.
//!
//! The rules follow Istio 1.0's `pilot/pkg/model/validation.go`, with messages an operator can
//! act on, and accept the forms later Istio added (`ns/name` gateway references, `percentage`,
//! `headers`). Where 1.0 allowed something the data plane refuses (an abort status of 0), the
//! data plane's limit wins: a config that validates must be one Envoy accepts.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::*;
use crate::diagnostic::Diagnostics;
use crate::path::FieldPath;
use crate::validation::{
    check_labels, check_percent_f64, check_percent_i64, check_port, is_dns1123_label,
    validate_fqdn, validate_wildcard_domain,
};

type P = FieldPath;

/// Parses a protocol name as Istio does: case-insensitive.
pub fn parse_protocol(name: &str) -> Option<Protocol> {
    Some(match name.to_ascii_uppercase().as_str() {
        "HTTP" => Protocol::Http,
        "HTTP2" => Protocol::Http2,
        "GRPC" | "GRPC-WEB" => Protocol::Grpc,
        "HTTPS" => Protocol::Https,
        "TLS" => Protocol::Tls,
        "TCP" => Protocol::Tcp,
        "MONGO" => Protocol::Mongo,
        "REDIS" => Protocol::Redis,
        "MYSQL" => Protocol::Mysql,
        "UDP" => Protocol::Udp,
        _ => return None,
    })
}

/// Subset names are DNS-1123 labels.
pub fn is_valid_subset_name(name: &str) -> bool {
    is_dns1123_label(name)
}

const SUPPORTED_PROTOCOLS: &str = "HTTP, HTTP2, GRPC, HTTPS, TLS, TCP, MONGO, REDIS, MYSQL, UDP";

/// Envoy's retry_on conditions (and the gRPC ones); numeric HTTP statuses are also allowed.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

const HTTP_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE",
];

/// Durations in route and pool settings: at least 1ms, whole milliseconds (Istio's rule).
fn check_duration(d: &mut Diagnostics, path: &P, value: Option<&Duration>) {
    if let Some(v) = value {
        let std = v.as_std();
        if std < std::time::Duration::from_millis(1) {
            d.error(path, format!("duration must be at least 1ms (got {v})"));
        } else if std.subsec_nanos() % 1_000_000 != 0 {
            d.error(
                path,
                format!("only durations to ms precision are supported (got {v})"),
            );
        }
    }
}

fn check_string_match(d: &mut Diagnostics, path: &P, m: &StringMatch) {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    match set {
        0 => d.error(path, "one of exact, prefix or regex is required"),
        1 => {}
        _ => d.error(path, "only one of exact, prefix or regex may be set"),
    }
    if let Some(re) = &m.regex {
        if re.is_empty() {
            d.error(&path.key("regex"), "regex must not be empty");
        } else if let Err(e) = regex::Regex::new(re) {
            d.error(
                &path.key("regex"),
                format!("invalid regex: {}", first_line(&e.to_string())),
            );
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_header_name(d: &mut Diagnostics, path: &P, name: &str) {
    if name.is_empty() {
        d.error(path, "header name cannot be empty");
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b))
    {
        d.error(path, format!("\"{name}\" is not a valid HTTP header name"));
    }
}

fn check_gateway_ref(d: &mut Diagnostics, path: &P, gw: &str) {
    if gw == "mesh" {
        return;
    }
    match gw.split_once('/') {
        Some((ns, name)) => {
            if !is_dns1123_label(ns) {
                d.error(
                    path,
                    format!("invalid gateway namespace \"{ns}\" in \"{gw}\""),
                );
            }
            if !is_dns1123_label(name) {
                d.error(path, format!("invalid gateway name \"{name}\" in \"{gw}\""));
            }
        }
        None => {
            if let Err(e) = validate_fqdn(gw) {
                d.error(path, format!("invalid gateway name: {e}"));
            }
        }
    }
}

fn check_port_selector(d: &mut Diagnostics, path: &P, p: &PortSelector) {
    match (&p.number, &p.name) {
        (Some(n), _) => check_port(d, &path.key("number"), i64::from(*n)),
        (None, Some(name)) => {
            if !is_dns1123_label(name) {
                d.error(&path.key("name"), format!("invalid port name \"{name}\""));
            }
        }
        (None, None) => d.error(path, "port number or name is required"),
    }
}

fn check_destination(d: &mut Diagnostics, path: &P, dest: &Destination) {
    if dest.host.is_empty() {
        d.error(&path.key("host"), "destination host is required");
    } else if dest.host == "*" {
        d.error(&path.key("host"), "invalid destination host *");
    } else if let Err(e) = validate_wildcard_domain(&dest.host) {
        d.error(&path.key("host"), e);
    }
    if let Some(subset) = &dest.subset {
        if subset.is_empty() {
            d.error(&path.key("subset"), "subset name cannot be empty");
        } else if !is_valid_subset_name(subset) {
            d.error(
                &path.key("subset"),
                format!("subset name \"{subset}\" is invalid (must be a DNS-1123 label)"),
            );
        }
    }
    if let Some(port) = &dest.port {
        check_port_selector(d, &path.key("port"), port);
    }
}

/// 1.0's weight rule: each 0..100, and with several destinations they add up to 100.
fn check_weights(d: &mut Diagnostics, path: &P, weights: &[Option<i64>]) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w {
            check_percent_i64(d, &path.index(i).key("weight"), *w);
        }
    }
    if weights.len() > 1 {
        let total: i64 = weights.iter().map(|w| w.unwrap_or(0)).sum();
        if total != 100 {
            d.error(
                path,
                format!("route weights add up to {total}, they must add up to 100"),
            );
        }
    }
}

fn check_header_ops(d: &mut Diagnostics, path: &P, ops: &HeaderOperations, request: bool) {
    for (name, _) in ops.set.iter().chain(ops.add.iter()) {
        let p = path.key(name.clone());
        check_header_name(d, &p, name);
        if name.starts_with(':') && !(request && name == ":authority") {
            d.error(&p, format!("header \"{name}\" cannot be set: \":\" prefix"));
        }
    }
    for (i, name) in ops.remove.iter().enumerate() {
        let p = path.key("remove").index(i);
        check_header_name(d, &p, name);
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            d.error(&p, format!("header \"{name}\" cannot be removed"));
        }
    }
}

fn check_headers(d: &mut Diagnostics, path: &P, h: &Headers) {
    if let Some(r) = &h.request {
        check_header_ops(d, &path.key("request"), r, true);
    }
    if let Some(r) = &h.response {
        check_header_ops(d, &path.key("response"), r, false);
    }
}

fn check_header_map(d: &mut Diagnostics, path: &P, m: &BTreeMap<String, String>) {
    for name in m.keys() {
        check_header_name(d, &path.key(name.clone()), name);
    }
}

// === VirtualService ===

impl VirtualService {
    pub fn validate(&self, d: &mut Diagnostics, spec: &P) {
        let bound_to_mesh = self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh");
        if self.hosts.is_empty() {
            d.error(
                &spec.key("hosts"),
                "virtual service must have at least one host",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let p = spec.key("hosts").index(i);
            if host == "*" {
                if bound_to_mesh {
                    d.error(
                        &p,
                        "wildcard host * is not allowed for virtual services bound to the mesh gateway",
                    );
                }
            } else if let Err(e) = validate_wildcard_domain(host) {
                d.error(&p, e);
            }
        }
        let mut seen = HashSet::new();
        for (i, host) in self.hosts.iter().enumerate() {
            if !seen.insert(host.as_str()) {
                d.error(
                    &spec.key("hosts").index(i),
                    format!("duplicate host \"{host}\""),
                );
            }
        }
        for (i, gw) in self.gateways.iter().enumerate() {
            check_gateway_ref(d, &spec.key("gateways").index(i), gw);
        }
        if self.http.is_empty() && self.tcp.is_empty() && self.tls.is_empty() {
            d.error(spec, "http, tcp or tls must be provided in virtual service");
        }
        for (i, route) in self.http.iter().enumerate() {
            route.validate(d, &spec.key("http").index(i));
        }
        for (i, route) in self.tcp.iter().enumerate() {
            let p = spec.key("tcp").index(i);
            for (j, m) in route.matches.iter().enumerate() {
                check_l4_match(d, &p.key("match").index(j), m);
            }
            check_route_destinations(d, &p.key("route"), &route.route, "TCP");
        }
        for (i, route) in self.tls.iter().enumerate() {
            let p = spec.key("tls").index(i);
            if route.matches.is_empty() {
                d.error(
                    &p.key("match"),
                    "TLS route must have at least one match condition",
                );
            }
            for (j, m) in route.matches.iter().enumerate() {
                self.check_tls_match(d, &p.key("match").index(j), m);
            }
            check_route_destinations(d, &p.key("route"), &route.route, "TLS");
        }
    }

    fn check_tls_match(&self, d: &mut Diagnostics, path: &P, m: &TlsMatchAttributes) {
        if m.sni_hosts.is_empty() {
            d.error(
                &path.key("sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (i, sni) in m.sni_hosts.iter().enumerate() {
            let p = path.key("sniHosts").index(i);
            if let Err(e) = validate_wildcard_domain(sni) {
                d.error(&p, e);
            } else if !self.hosts.iter().any(|h| host_covers(h, sni)) {
                d.error(
                    &p,
                    format!("SNI host \"{sni}\" is not covered by the virtual service hosts"),
                );
            }
        }
        for (i, subnet) in m.destination_subnets.iter().enumerate() {
            check_subnet(d, &path.key("destinationSubnets").index(i), subnet);
        }
        if let Some(port) = m.port {
            check_port(d, &path.key("port"), i64::from(port));
        }
        check_labels(d, &path.key("sourceLabels"), &m.source_labels);
        for (i, gw) in m.gateways.iter().enumerate() {
            check_gateway_ref(d, &path.key("gateways").index(i), gw);
        }
    }
}

/// Whether VirtualService host `host` covers the name `name` (`*.example.com` covers
/// `a.example.com`; `*` covers everything).
fn host_covers(host: &str, name: &str) -> bool {
    if host == "*" || host == name {
        return true;
    }
    match host.strip_prefix('*') {
        Some(suffix) => name.ends_with(suffix) || name.strip_prefix('*') == Some(suffix),
        None => false,
    }
}

fn check_subnet(d: &mut Diagnostics, path: &P, subnet: &str) {
    let (addr, len) = match subnet.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (subnet, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        d.error(
            path,
            format!("\"{subnet}\" is not a valid IP address or CIDR block"),
        );
        return;
    };
    if let Some(len) = len {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match len.parse::<u8>() {
            Ok(l) if l <= max => {}
            _ => d.error(path, format!("\"{subnet}\" is not a valid CIDR block")),
        }
    }
}

fn check_l4_match(d: &mut Diagnostics, path: &P, m: &L4MatchAttributes) {
    for (i, subnet) in m.destination_subnets.iter().enumerate() {
        check_subnet(d, &path.key("destinationSubnets").index(i), subnet);
    }
    if let Some(s) = &m.source_subnet {
        check_subnet(d, &path.key("sourceSubnet"), s);
    }
    if let Some(port) = m.port {
        check_port(d, &path.key("port"), i64::from(port));
    }
    check_labels(d, &path.key("sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        check_gateway_ref(d, &path.key("gateways").index(i), gw);
    }
}

fn check_route_destinations(d: &mut Diagnostics, path: &P, route: &[RouteDestination], what: &str) {
    if route.is_empty() {
        d.error(
            path,
            format!("{what} route must have at least one destination"),
        );
    }
    for (i, r) in route.iter().enumerate() {
        check_destination(d, &path.index(i).key("destination"), &r.destination);
    }
    let weights: Vec<_> = route.iter().map(|r| r.weight).collect();
    check_weights(d, path, &weights);
}

impl HttpRoute {
    fn validate(&self, d: &mut Diagnostics, path: &P) {
        let has_route = !self.route.is_empty();
        let has_redirect = self.redirect.is_some();
        let has_direct = self.direct_response.is_some();
        let has_delegate = self.delegate.is_some();
        match (has_route, has_redirect, has_direct, has_delegate) {
            (false, false, false, false) => {
                d.error(path, "HTTP route, redirect or direct response is required")
            }
            (true, true, _, _) => {
                d.error(path, "HTTP route cannot contain both route and redirect")
            }
            (true, _, true, _) => d.error(
                path,
                "HTTP route cannot contain both route and direct response",
            ),
            (_, true, true, _) => d.error(
                path,
                "HTTP route cannot contain both redirect and direct response",
            ),
            (true, _, _, true) | (_, true, _, true) => d.error(
                path,
                "HTTP route with a delegate must not specify route or redirect",
            ),
            _ => {}
        }
        if has_redirect {
            if self.fault.is_some() {
                d.error(path, "HTTP route cannot contain both fault and redirect");
            }
            if self.rewrite.is_some() {
                d.error(
                    path,
                    "HTTP route rule cannot contain both rewrite and redirect",
                );
            }
            if self.websocket_upgrade == Some(true) {
                d.error(path, "WebSocket upgrade is not allowed on redirect rules");
            }
        }
        for (i, m) in self.matches.iter().enumerate() {
            check_http_match(d, &path.key("match").index(i), m);
        }
        for (i, r) in self.route.iter().enumerate() {
            let p = path.key("route").index(i);
            check_destination(d, &p.key("destination"), &r.destination);
            if let Some(h) = &r.headers {
                check_headers(d, &p.key("headers"), h);
            }
        }
        let weights: Vec<_> = self.route.iter().map(|r| r.weight).collect();
        check_weights(d, &path.key("route"), &weights);

        if let Some(r) = &self.redirect {
            let p = path.key("redirect");
            if r.uri.is_none() && r.authority.is_none() && r.scheme.is_none() && r.port.is_none() {
                d.error(&p, "redirect must specify URI, authority, or both");
            }
            if let Some(code) = r.redirect_code
                && !matches!(code, 301 | 302 | 303 | 307 | 308)
            {
                d.error(
                    &p.key("redirectCode"),
                    format!("{code} is not a valid redirect code (use 301, 302, 303, 307 or 308)"),
                );
            }
            if let Some(s) = &r.scheme
                && s != "http"
                && s != "https"
            {
                d.error(
                    &p.key("scheme"),
                    format!("redirect scheme must be http or https, not \"{s}\""),
                );
            }
            if let Some(port) = r.port {
                check_port(d, &p.key("port"), i64::from(port));
            }
        }
        if let Some(dr) = &self.direct_response {
            let p = path.key("directResponse");
            if !(200..=599).contains(&dr.status) {
                d.error(
                    &p.key("status"),
                    format!("HTTP status {} is not in range 200-599", dr.status),
                );
            }
        }
        if let Some(del) = &self.delegate
            && !is_dns1123_label(&del.name)
        {
            d.error(
                &path.key("delegate").key("name"),
                "delegate name must be a DNS-1123 label",
            );
        }
        if let Some(rw) = &self.rewrite
            && rw.uri.is_none()
            && rw.authority.is_none()
        {
            d.error(
                &path.key("rewrite"),
                "rewrite must specify URI, authority, or both",
            );
        }
        check_duration(d, &path.key("timeout"), self.timeout.as_ref());
        if let Some(r) = &self.retries {
            let p = path.key("retries");
            if r.attempts < 0 {
                d.error(&p.key("attempts"), "attempts cannot be negative");
            }
            check_duration(d, &p.key("perTryTimeout"), r.per_try_timeout.as_ref());
            if let Some(on) = &r.retry_on {
                for cond in on.split(',').map(str::trim) {
                    let numeric = cond.parse::<u16>().is_ok_and(|c| (100..600).contains(&c));
                    if !numeric && !RETRY_ON.contains(&cond) {
                        d.error(
                            &p.key("retryOn"),
                            format!("\"{cond}\" is not a valid retryOn condition (expected one of {} or an HTTP status code)", RETRY_ON.join(", ")),
                        );
                    }
                }
            }
        }
        if let Some(f) = &self.fault {
            check_fault(d, &path.key("fault"), f);
        }
        if let Some(m) = &self.mirror {
            check_destination(d, &path.key("mirror"), m);
            if !self.mirrors.is_empty() {
                d.error(path, "HTTP route cannot contain both mirror and mirrors");
            }
        }
        for (i, m) in self.mirrors.iter().enumerate() {
            let p = path.key("mirrors").index(i);
            check_destination(d, &p.key("destination"), &m.destination);
            if let Some(pc) = m.percentage {
                check_percent_f64(d, &p.key("percentage").key("value"), pc.value);
            }
        }
        if let Some(pc) = self.mirror_percent {
            check_percent_i64(d, &path.key("mirrorPercent"), i64::from(pc));
        }
        if let Some(pc) = self.mirror_percentage {
            check_percent_f64(d, &path.key("mirrorPercentage").key("value"), pc.value);
        }
        if let Some(c) = &self.cors_policy {
            check_cors(d, &path.key("corsPolicy"), c);
        }
        check_header_map(d, &path.key("appendHeaders"), &self.append_headers);
        check_header_map(
            d,
            &path.key("appendRequestHeaders"),
            &self.append_request_headers,
        );
        check_header_map(
            d,
            &path.key("appendResponseHeaders"),
            &self.append_response_headers,
        );
        for (i, h) in self.remove_response_headers.iter().enumerate() {
            check_header_name(d, &path.key("removeResponseHeaders").index(i), h);
        }
        for (i, h) in self.remove_request_headers.iter().enumerate() {
            check_header_name(d, &path.key("removeRequestHeaders").index(i), h);
        }
        if let Some(h) = &self.headers {
            check_headers(d, &path.key("headers"), h);
        }
    }
}

fn check_http_match(d: &mut Diagnostics, path: &P, m: &HttpMatchRequest) {
    for (name, sm) in [
        ("uri", &m.uri),
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            check_string_match(d, &path.key(name), sm);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, sm) in map {
            let p = path.key(field).key(name.clone());
            check_header_name(d, &p, name);
            if name.bytes().any(|b| b.is_ascii_uppercase()) {
                d.error(&p, format!("header match \"{name}\" must be lowercase"));
            }
            check_string_match(d, &p, sm);
        }
    }
    for (name, sm) in &m.query_params {
        let p = path.key("queryParams").key(name.clone());
        if name.is_empty() {
            d.error(&p, "query parameter name cannot be empty");
        }
        check_string_match(d, &p, sm);
    }
    if let Some(port) = m.port {
        check_port(d, &path.key("port"), i64::from(port));
    }
    check_labels(d, &path.key("sourceLabels"), &m.source_labels);
    for (i, gw) in m.gateways.iter().enumerate() {
        check_gateway_ref(d, &path.key("gateways").index(i), gw);
    }
    if let Some(ns) = &m.source_namespace
        && !is_dns1123_label(ns)
    {
        d.error(
            &path.key("sourceNamespace"),
            format!("sourceNamespace \"{ns}\" is invalid"),
        );
    }
}

fn check_fault(d: &mut Diagnostics, path: &P, f: &HttpFaultInjection) {
    if f.delay.is_none() && f.abort.is_none() {
        d.error(
            path,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(delay) = &f.delay {
        let p = path.key("delay");
        if let Some(pc) = delay.percent {
            check_percent_i64(d, &p.key("percent"), pc);
        }
        if let Some(pc) = delay.percentage {
            check_percent_f64(d, &p.key("percentage").key("value"), pc.value);
        }
        if delay.percent.is_some() && delay.percentage.is_some() {
            d.error(&p, "only one of percent and percentage may be set");
        }
        match (&delay.fixed_delay, &delay.exponential_delay) {
            (Some(fixed), None) => check_duration(d, &p.key("fixedDelay"), Some(fixed)),
            (None, Some(_)) => {
                d.error(&p.key("exponentialDelay"), "exponentialDelay not supported")
            }
            (Some(_), Some(_)) => {
                d.error(&p, "only one of fixedDelay and exponentialDelay may be set")
            }
            (None, None) => d.error(&p.key("fixedDelay"), "delay must set fixedDelay"),
        }
    }
    if let Some(abort) = &f.abort {
        let p = path.key("abort");
        if let Some(pc) = abort.percent {
            check_percent_i64(d, &p.key("percent"), pc);
        }
        if let Some(pc) = abort.percentage {
            check_percent_f64(d, &p.key("percentage").key("value"), pc.value);
        }
        if abort.percent.is_some() && abort.percentage.is_some() {
            d.error(&p, "only one of percent and percentage may be set");
        }
        match (&abort.http_status, &abort.grpc_status) {
            (Some(status), None) => {
                if !(200..=599).contains(status) {
                    d.error(
                        &p.key("httpStatus"),
                        format!("HTTP status {status} is not in range 200-599"),
                    );
                }
            }
            (None, Some(code)) => {
                if !GRPC_CODES.contains(&code.as_str()) {
                    d.error(
                        &p.key("grpcStatus"),
                        format!("\"{code}\" is not a gRPC status name"),
                    );
                }
            }
            (Some(_), Some(_)) => d.error(&p, "only one of httpStatus and grpcStatus may be set"),
            (None, None) => d.error(&p, "abort must set httpStatus or grpcStatus"),
        }
    }
}

const GRPC_CODES: &[&str] = &[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn check_cors(d: &mut Diagnostics, path: &P, c: &CorsPolicy) {
    for (i, m) in c.allow_methods.iter().enumerate() {
        if !HTTP_METHODS.contains(&m.as_str()) {
            d.error(
                &path.key("allowMethods").index(i),
                format!("\"{m}\" is not a supported HTTP method"),
            );
        }
    }
    for (i, o) in c.allow_origins.iter().enumerate() {
        check_string_match(d, &path.key("allowOrigins").index(i), o);
    }
    for (field, list) in [
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, h) in list.iter().enumerate() {
            if h != "*" {
                check_header_name(d, &path.key(field).index(i), h);
            }
        }
    }
    if let Some(age) = &c.max_age {
        check_duration(d, &path.key("maxAge"), Some(age));
        if age.as_std().subsec_nanos() != 0 {
            d.error(
                &path.key("maxAge"),
                "max_age duration is accurate only to seconds precision",
            );
        }
    }
}

// === DestinationRule ===

impl DestinationRule {
    pub fn validate(&self, d: &mut Diagnostics, spec: &P) {
        if self.host.is_empty() {
            d.error(&spec.key("host"), "host is required");
        } else if let Err(e) = validate_wildcard_domain(&self.host) {
            d.error(&spec.key("host"), e);
        }
        if let Some(tp) = &self.traffic_policy {
            check_traffic_policy(d, &spec.key("trafficPolicy"), tp);
        }
        let mut names = HashSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            let p = spec.key("subsets").index(i);
            if s.name.is_empty() {
                d.error(&p.key("name"), "subset name cannot be empty");
            } else if !is_valid_subset_name(&s.name) {
                d.error(
                    &p.key("name"),
                    format!(
                        "subset name \"{}\" is invalid (must be a DNS-1123 label)",
                        s.name
                    ),
                );
            } else if !names.insert(s.name.as_str()) {
                d.error(
                    &p.key("name"),
                    format!("duplicate subset name \"{}\"", s.name),
                );
            }
            check_labels(d, &p.key("labels"), &s.labels);
            if let Some(tp) = &s.traffic_policy {
                check_traffic_policy(d, &p.key("trafficPolicy"), tp);
            }
        }
        if let Some(ws) = &self.workload_selector {
            check_labels(
                d,
                &spec.key("workloadSelector").key("matchLabels"),
                &ws.match_labels,
            );
        }
    }
}

fn check_traffic_policy(d: &mut Diagnostics, path: &P, tp: &TrafficPolicy) {
    if tp.load_balancer.is_none()
        && tp.connection_pool.is_none()
        && tp.outlier_detection.is_none()
        && tp.tls.is_none()
        && tp.port_level_settings.is_empty()
    {
        d.error(path, "traffic policy must have at least one field");
    }
    check_policy_parts(
        d,
        path,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
    );
    let mut ports = HashSet::new();
    for (i, pl) in tp.port_level_settings.iter().enumerate() {
        let p = path.key("portLevelSettings").index(i);
        match &pl.port {
            None => d.error(&p.key("port"), "port traffic policy must have a port"),
            Some(sel) => {
                check_port_selector(d, &p.key("port"), sel);
                if let Some(n) = sel.number
                    && !ports.insert(n)
                {
                    d.error(
                        &p.key("port"),
                        format!("duplicate port traffic policy for port {n}"),
                    );
                }
            }
        }
        if pl.load_balancer.is_none()
            && pl.connection_pool.is_none()
            && pl.outlier_detection.is_none()
            && pl.tls.is_none()
        {
            d.error(&p, "port traffic policy must have at least one field");
        }
        check_policy_parts(
            d,
            &p,
            pl.load_balancer.as_ref(),
            pl.connection_pool.as_ref(),
            pl.outlier_detection.as_ref(),
            pl.tls.as_ref(),
        );
    }
}

fn check_policy_parts(
    d: &mut Diagnostics,
    path: &P,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    od: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
) {
    if let Some(lb) = lb {
        let p = path.key("loadBalancer");
        match (&lb.simple, &lb.consistent_hash) {
            (Some(_), Some(_)) => d.error(&p, "only one of simple and consistentHash may be set"),
            (None, None) => d.error(&p, "one of simple or consistentHash is required"),
            _ => {}
        }
        if let Some(ch) = &lb.consistent_hash {
            let p = p.key("consistentHash");
            let keys = [
                ch.http_header_name.is_some(),
                ch.http_cookie.is_some(),
                ch.use_source_ip == Some(true),
                ch.http_query_parameter_name.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if keys != 1 {
                d.error(
                    &p,
                    "exactly one of httpHeaderName, httpCookie, useSourceIp or httpQueryParameterName is required",
                );
            }
            if let Some(h) = &ch.http_header_name {
                check_header_name(d, &p.key("httpHeaderName"), h);
            }
            if let Some(c) = &ch.http_cookie {
                if c.name.is_empty() {
                    d.error(
                        &p.key("httpCookie").key("name"),
                        "name required for HttpCookie",
                    );
                }
                check_duration_allow_zero(d, &p.key("httpCookie").key("ttl"), c.ttl.as_ref());
            }
        }
    }
    if let Some(pool) = pool {
        let p = path.key("connectionPool");
        if pool.tcp.is_none() && pool.http.is_none() {
            d.error(&p, "connection pool must have at least one field");
        }
        if let Some(tcp) = &pool.tcp {
            let p = p.key("tcp");
            non_negative(
                d,
                &p.key("maxConnections"),
                tcp.max_connections,
                "max connections",
            );
            check_duration(d, &p.key("connectTimeout"), tcp.connect_timeout.as_ref());
            if let Some(ka) = &tcp.tcp_keepalive {
                check_duration(d, &p.key("tcpKeepalive").key("time"), ka.time.as_ref());
                check_duration(
                    d,
                    &p.key("tcpKeepalive").key("interval"),
                    ka.interval.as_ref(),
                );
            }
        }
        if let Some(http) = &pool.http {
            let p = p.key("http");
            non_negative(
                d,
                &p.key("http1MaxPendingRequests"),
                http.http1_max_pending_requests,
                "http1 max pending requests",
            );
            non_negative(
                d,
                &p.key("http2MaxRequests"),
                http.http2_max_requests,
                "http2 max requests",
            );
            non_negative(
                d,
                &p.key("maxRequestsPerConnection"),
                http.max_requests_per_connection,
                "max requests per connection",
            );
            non_negative(d, &p.key("maxRetries"), http.max_retries, "max retries");
            check_duration(d, &p.key("idleTimeout"), http.idle_timeout.as_ref());
            if http.use_client_protocol == Some(true)
                && http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
            {
                d.error(
                    &p,
                    "useClientProtocol cannot be combined with h2UpgradePolicy UPGRADE",
                );
            }
        }
    }
    if let Some(od) = od {
        let p = path.key("outlierDetection");
        non_negative(
            d,
            &p.key("consecutiveErrors"),
            od.consecutive_errors,
            "consecutive errors",
        );
        non_negative(
            d,
            &p.key("consecutive5xxErrors"),
            od.consecutive_5xx_errors,
            "consecutive 5xx errors",
        );
        non_negative(
            d,
            &p.key("consecutiveGatewayErrors"),
            od.consecutive_gateway_errors,
            "consecutive gateway errors",
        );
        check_duration(d, &p.key("interval"), od.interval.as_ref());
        check_duration(
            d,
            &p.key("baseEjectionTime"),
            od.base_ejection_time.as_ref(),
        );
        if let Some(v) = od.max_ejection_percent {
            check_percent_i64(d, &p.key("maxEjectionPercent"), v);
        }
        if let Some(v) = od.min_health_percent {
            check_percent_i64(d, &p.key("minHealthPercent"), v);
        }
    }
    if let Some(tls) = tls {
        let p = path.key("tls");
        match tls.mode {
            ClientTlsMode::Mutual if tls.credential_name.is_none() => {
                if tls.client_certificate.is_none() {
                    d.error(
                        &p.key("clientCertificate"),
                        "client certificate required for mutual tls",
                    );
                }
                if tls.private_key.is_none() {
                    d.error(&p.key("privateKey"), "private key required for mutual tls");
                }
            }
            ClientTlsMode::IstioMutual
                if tls.client_certificate.is_some()
                    || tls.private_key.is_some()
                    || tls.ca_certificates.is_some()
                    || tls.credential_name.is_some() =>
            {
                d.error(
                    &p,
                    "ISTIO_MUTUAL uses the mesh's certificates: clientCertificate, privateKey, caCertificates and credentialName must not be set",
                );
            }
            _ => {}
        }
    }
}

fn check_duration_allow_zero(d: &mut Diagnostics, path: &P, value: Option<&Duration>) {
    if let Some(v) = value
        && !v.is_zero()
    {
        check_duration(d, path, Some(v));
    }
}

fn non_negative(d: &mut Diagnostics, path: &P, v: Option<i64>, what: &str) {
    if let Some(v) = v
        && v < 0
    {
        d.error(path, format!("{what} must be non-negative (got {v})"));
    }
}

// === Gateway ===

impl Gateway {
    pub fn validate(&self, d: &mut Diagnostics, spec: &P) {
        if self.servers.is_empty() {
            d.error(
                &spec.key("servers"),
                "gateway must have at least one server",
            );
        }
        let mut port_names = HashSet::new();
        for (i, s) in self.servers.iter().enumerate() {
            let p = spec.key("servers").index(i);
            s.validate(d, &p);
            if let Some(name) = &s.port.name
                && !port_names.insert(name.as_str())
            {
                d.error(
                    &p.key("port").key("name"),
                    format!("port names in servers must be unique: duplicate name {name}"),
                );
            }
        }
        check_labels(d, &spec.key("selector"), &self.selector);
    }
}

impl Server {
    fn validate(&self, d: &mut Diagnostics, path: &P) {
        let port = &self.port;
        let pp = path.key("port");
        check_port(d, &pp.key("number"), i64::from(port.number));
        let protocol = parse_protocol(&port.protocol);
        if protocol.is_none() {
            d.error(
                &pp.key("protocol"),
                format!(
                    "invalid protocol \"{}\", supported protocols are {SUPPORTED_PROTOCOLS}",
                    port.protocol
                ),
            );
        }
        if port.name.as_deref().unwrap_or("").is_empty() {
            d.error(&pp.key("name"), "port name must be set");
        }
        if self.hosts.is_empty() {
            d.error(
                &path.key("hosts"),
                "server config must contain at least one host",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let p = path.key("hosts").index(i);
            let (ns, name) = host.split_once('/').unwrap_or(("*", host));
            if ns != "*" && ns != "." && !is_dns1123_label(ns) {
                d.error(&p, format!("invalid namespace \"{ns}\" in host \"{host}\""));
            }
            if name != "*" {
                if !name.contains('.') {
                    d.error(
                        &p,
                        format!("short names (non FQDN) are not allowed in Gateway server hosts: \"{name}\""),
                    );
                } else if let Err(e) = validate_wildcard_domain(name) {
                    d.error(&p, e);
                }
            }
        }
        let is_tls_port = matches!(protocol, Some(Protocol::Https | Protocol::Tls));
        match &self.tls {
            None if is_tls_port => d.error(
                &path.key("tls"),
                "server must have TLS settings for HTTPS/TLS protocols",
            ),
            None => {}
            Some(tls) => {
                let p = path.key("tls");
                let mode = tls.mode.unwrap_or_default();
                let has_files = tls.server_certificate.is_some()
                    || tls.private_key.is_some()
                    || tls.ca_certificates.is_some();
                if !is_tls_port {
                    if mode != ServerTlsMode::Passthrough || has_files {
                        d.error(&p, "server cannot have TLS settings for plain text ports (only httpsRedirect)");
                    }
                    return;
                }
                let by_credential = tls.credential_name.is_some();
                match mode {
                    ServerTlsMode::Simple | ServerTlsMode::Mutual if !by_credential => {
                        let what = if mode == ServerTlsMode::Simple { "SIMPLE" } else { "MUTUAL" };
                        if tls.server_certificate.is_none() {
                            d.error(&p.key("serverCertificate"), format!("{what} TLS requires a server certificate"));
                        }
                        if tls.private_key.is_none() {
                            d.error(&p.key("privateKey"), format!("{what} TLS requires a private key"));
                        }
                        if mode == ServerTlsMode::Mutual && tls.ca_certificates.is_none() {
                            d.error(&p.key("caCertificates"), "MUTUAL TLS requires a client CA bundle");
                        }
                    }
                    ServerTlsMode::IstioMutual if has_files || by_credential => d.error(
                        &p,
                        "ISTIO_MUTUAL uses the mesh's certificates: certificate fields must not be set",
                    ),
                    _ => {}
                }
            }
        }
        if let Some(bind) = &self.bind
            && bind.parse::<IpAddr>().is_err()
            && !bind.starts_with("unix://")
        {
            d.error(
                &path.key("bind"),
                format!("\"{bind}\" is not an IP address or unix:// path"),
            );
        }
    }
}

// === ServiceEntry and WorkloadEntry ===

impl ServiceEntry {
    pub fn validate(&self, d: &mut Diagnostics, spec: &P) {
        if self.hosts.is_empty() {
            d.error(
                &spec.key("hosts"),
                "service entry must have at least one host",
            );
        }
        for (i, host) in self.hosts.iter().enumerate() {
            let p = spec.key("hosts").index(i);
            if host == "*" {
                d.error(&p, "invalid host *");
            } else if let Err(e) = validate_wildcard_domain(host) {
                d.error(&p, e);
            }
        }
        let resolution = self.resolution.unwrap_or_default();
        for (i, a) in self.addresses.iter().enumerate() {
            let p = spec.key("addresses").index(i);
            check_subnet(d, &p, a);
            if a.contains('/') && !matches!(resolution, Resolution::None | Resolution::Static) {
                d.error(
                    &p,
                    "CIDR addresses are allowed only for NONE/STATIC resolution types",
                );
            }
        }
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for (i, port) in self.ports.iter().enumerate() {
            let p = spec.key("ports").index(i);
            check_port(d, &p.key("number"), i64::from(port.number));
            if let Some(t) = port.target_port {
                check_port(d, &p.key("targetPort"), i64::from(t));
            }
            match &port.name {
                Some(n) if is_dns1123_label(n) => {
                    if !names.insert(n.as_str()) {
                        d.error(
                            &p.key("name"),
                            format!("service entry port name \"{n}\" already defined"),
                        );
                    }
                }
                Some(n) => d.error(&p.key("name"), format!("invalid port name: \"{n}\"")),
                None => d.error(&p.key("name"), "port name is required"),
            }
            if parse_protocol(&port.protocol).is_none() {
                d.error(
                    &p.key("protocol"),
                    format!("unsupported protocol: \"{}\"", port.protocol),
                );
            }
            if port.number != 0 && !numbers.insert(port.number) {
                d.error(
                    &p.key("number"),
                    format!("service entry port {} already defined", port.number),
                );
            }
        }
        if self.workload_selector.is_some() && !self.endpoints.is_empty() {
            d.error(spec, "only one of endpoints or workloadSelector may be set");
        }
        match resolution {
            Resolution::None if !self.endpoints.is_empty() => d.error(
                &spec.key("endpoints"),
                "no endpoints should be provided for resolution type NONE",
            ),
            Resolution::Static if self.endpoints.is_empty() && self.workload_selector.is_none() => {
                d.error(
                    &spec.key("endpoints"),
                    "endpoints must be provided if service entry resolution is STATIC",
                )
            }
            Resolution::Dns | Resolution::DnsRoundRobin if self.endpoints.is_empty() => {
                for (i, h) in self.hosts.iter().enumerate() {
                    if h.starts_with('*') {
                        d.error(
                            &spec.key("hosts").index(i),
                            "hosts must be FQDN if no endpoints are provided for resolution DNS",
                        );
                    }
                }
            }
            _ => {}
        }
        if resolution == Resolution::DnsRoundRobin && self.endpoints.len() > 1 {
            d.error(
                &spec.key("endpoints"),
                "DNS_ROUND_ROBIN allows at most one endpoint",
            );
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let p = spec.key("endpoints").index(i);
            ep.check(d, &p, Some(resolution));
            for name in ep.ports.keys() {
                if !names.contains(name.as_str()) {
                    d.error(
                        &p.key("ports").key(name.clone()),
                        format!("endpoint port \"{name}\" is not defined by the service entry"),
                    );
                }
            }
        }
        if let Some(ws) = &self.workload_selector {
            check_labels(
                d,
                &spec.key("workloadSelector").key("labels"),
                &ws.match_labels,
            );
        }
    }
}

impl WorkloadEntry {
    pub fn validate(&self, d: &mut Diagnostics, spec: &P) {
        self.check(d, spec, None);
    }

    fn check(&self, d: &mut Diagnostics, path: &P, resolution: Option<Resolution>) {
        let p = path.key("address");
        if self.address.is_empty() {
            if self.network.is_none() {
                d.error(&p, "address is required");
            }
        } else if let Some(uds) = self.address.strip_prefix("unix://") {
            if !uds.starts_with('/') && !uds.starts_with('@') {
                d.error(&p, "UDS must be an absolute path or abstract socket");
            }
            if !self.ports.is_empty() {
                d.error(&path.key("ports"), "UDS may not include ports");
            }
        } else if self.address.parse::<IpAddr>().is_err() {
            if resolution == Some(Resolution::Static) {
                d.error(
                    &p,
                    format!(
                        "endpoint address \"{}\" is not a valid IP address",
                        self.address
                    ),
                );
            } else if let Err(e) = validate_fqdn(&self.address) {
                d.error(&p, e);
            }
        }
        for (name, port) in &self.ports {
            let pp = path.key("ports").key(name.clone());
            if !is_dns1123_label(name) {
                d.error(&pp, format!("invalid port name: \"{name}\""));
            }
            check_port(d, &pp, i64::from(*port));
        }
        check_labels(d, &path.key("labels"), &self.labels);
        if let Some(sa) = &self.service_account
            && !is_dns1123_label(sa)
            && validate_fqdn(sa).is_err()
        {
            d.error(
                &path.key("serviceAccount"),
                format!("invalid service account name \"{sa}\""),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_give_protocols() {
        assert_eq!(Protocol::from_port_name("http"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http-web"), Protocol::Http);
        assert_eq!(Protocol::from_port_name("http2"), Protocol::Http2);
        assert_eq!(Protocol::from_port_name("grpc-api"), Protocol::Grpc);
        assert_eq!(Protocol::from_port_name("http2foo"), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name(""), Protocol::Tcp);
        assert_eq!(Protocol::from_port_name("mongo"), Protocol::Mongo);
    }

    #[test]
    fn wildcard_hosts_cover_names() {
        assert!(host_covers("*", "a.b"));
        assert!(host_covers("*.example.com", "a.example.com"));
        assert!(!host_covers("*.example.com", "example.org"));
        assert!(host_covers("a.example.com", "a.example.com"));
    }
}
