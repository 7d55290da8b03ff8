//! Entry points for fuzzing: each takes arbitrary bytes and must never panic. They are run
//! by the cargo-fuzz targets in `proxy/fuzz/` (nightly, `cargo fuzz run xds`) and, briefly
//! and deterministically, by `tests/fuzz_smoke.rs` in every test run.
//!
//! - [`xds`]: bytes as any xDS resource type keel-proxy converts (the NACK path: anything
//!   pilot or a broken control plane could send).
//! - [`http_edge`]: the HTTP pieces keel-proxy parses itself rather than leaving to hyper:
//!   virtual host and route matching on odd hosts and paths, response heads of upgrades,
//!   cookies for hashing, the shadow host of mirrors, request heads of the HTTP/1.1 server.

use std::sync::OnceLock;

use envoy_types::pb::google::protobuf::Any;

use crate::model::{self, Config, RouteTable};

const TYPES: [&str; 4] = [
    model::LISTENER_TYPE,
    model::ROUTE_TYPE,
    model::CLUSTER_TYPE,
    model::ENDPOINT_TYPE,
];

/// The first byte picks the type, the rest is the resource's encoding. True when it
/// converted (keel-proxy would ACK it).
pub fn xds(data: &[u8]) -> bool {
    let Some((first, rest)) = data.split_first() else {
        return false;
    };
    let type_url = TYPES[usize::from(*first) % TYPES.len()];
    let any = Any {
        type_url: type_url.to_owned(),
        value: rest.to_vec(),
    };
    let valid = model::validate(type_url, std::slice::from_ref(&any)).is_ok();
    let mut config = Config::default();
    let converted = model::convert_into(&mut config, type_url, &any).is_ok();
    valid && converted
}

/// A route table with every kind of match, built once.
fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        use envoy_types::pb::envoy::config::route::v3::{
            HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteConfiguration,
            RouteMatch, VirtualHost, header_matcher::HeaderMatchSpecifier, route::Action,
            route_action::ClusterSpecifier, route_match::PathSpecifier,
        };
        use envoy_types::pb::envoy::r#type::matcher::v3::{
            RegexMatcher, StringMatcher, string_matcher::MatchPattern,
        };
        let route = |path: PathSpecifier, headers: Vec<HeaderMatcher>| Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(path),
                headers,
                query_parameters: vec![QueryParameterMatcher {
                    name: "q".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                ..Default::default()
            })),
            ..Default::default()
        };
        let header = |m: MatchPattern| HeaderMatcher {
            name: "x-user".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(m),
                ..Default::default()
            })),
            ..Default::default()
        };
        let rc = RouteConfiguration {
            name: "fuzz".into(),
            virtual_hosts: vec![VirtualHost {
                name: "any".into(),
                domains: vec![
                    "*".into(),
                    "*.svc.cluster.local".into(),
                    "rev*".into(),
                    "reviews:9080".into(),
                ],
                routes: vec![
                    route(PathSpecifier::Path("/exact".into()), vec![]),
                    route(
                        PathSpecifier::SafeRegex(RegexMatcher {
                            regex: "/re/[0-9]+(/.*)?".into(),
                            ..Default::default()
                        }),
                        vec![header(MatchPattern::Prefix("ja".into()))],
                    ),
                    route(
                        PathSpecifier::Prefix("/".into()),
                        vec![header(MatchPattern::SafeRegex(RegexMatcher {
                            regex: "j.*n".into(),
                            ..Default::default()
                        }))],
                    ),
                ],
                ..Default::default()
            }],
            ..Default::default()
        };
        model::route_table(&rc).unwrap_or(RouteTable {
            name: "fuzz".into(),
            virtual_hosts: Vec::new(),
        })
    })
}

/// The bytes split at NULs into host, path, a header value and the rest (a response head).
pub fn http_edge(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let text = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
    let host = text(parts.next());
    let path = text(parts.next());
    let value = parts.next().unwrap_or_default();
    let head = parts.next().unwrap_or_default();
    let mut headers = hyper::HeaderMap::new();
    if let Ok(v) = hyper::header::HeaderValue::from_bytes(value) {
        headers.insert("x-user", v.clone());
        headers.insert(hyper::header::COOKIE, v.clone());
        headers.insert(hyper::header::UPGRADE, v.clone());
        headers.insert(hyper::header::CONNECTION, v);
    }
    if let Some(vh) = crate::http::virtual_host(table(), &host) {
        let _ = crate::http::route_for(vh, &path, &headers);
    }
    let _ = crate::http::shadow_host(&host);
    let _ = crate::http::fuzz_parse_head(head);
    let _ = crate::http::fuzz_parse_request_head(head);
    let _ = crate::http::fuzz_is_websocket_upgrade(&headers);
    if let Ok(req) = hyper::Request::get("/").body(()) {
        let (mut p, ()) = req.into_parts();
        p.headers = headers;
        if let Ok(uri) = format!("/x?{path}").parse() {
            p.uri = uri;
        }
        let peer = std::net::SocketAddr::from(([10, 0, 0, 1], 1));
        let policies = [
            model::HashPolicy::Header("x-user".into()),
            model::HashPolicy::Cookie {
                name: "sticky".into(),
                ttl: Some(std::time::Duration::from_secs(1)),
                path: path.clone(),
            },
            model::HashPolicy::QueryParameter("q".into()),
            model::HashPolicy::SourceIp,
        ];
        let _ = crate::http::request_hash(&policies, &p, peer);
    }
}

/// The TLS inspector's ClientHello reader: any bytes, never a panic; a longer read of the
/// same connection never un-sees TLS it already saw.
pub fn tls_hello(data: &[u8]) {
    let whole = crate::inspect::client_hello(data);
    let cut = data.len() / 2;
    let half = crate::inspect::client_hello(&data[..cut]);
    if let crate::inspect::Hello::Tls { .. } = half {
        assert_eq!(half, whole, "more bytes changed a complete ClientHello");
    }
}
