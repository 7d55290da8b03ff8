//! RDS: Istio VirtualService http routes as Envoy routes.
//!
//! A route configuration is built per listener port (`9080` for a sidecar's outbound HTTP
//! port, `http.80` for a gateway server). Each service reachable on that port gets a virtual
//! host answering to every name a client may use; its routes come from the VirtualService
//! for the host, in order, or, with none, one default route to all of the service's
//! endpoints (round robin: the walkthrough's "no default route" behaviour).

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, data_source::Specifier as DataSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy, UpgradeConfig,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::envoy::r#type::v3::fractional_percent::DenominatorType;
use envoy_types::pb::google::protobuf::UInt32Value;
use keel_config::load::qualify_host;
use keel_config::networking::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRoute, StringMatch, VirtualService,
};

use super::cds::outbound_name;
use super::{any, pb_duration};
use crate::registry::{Service, ServiceRegistry};

pub const FAULT_FILTER: &str = "envoy.filters.http.fault";
pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// A VirtualService with the namespace it lives in.
#[derive(Clone, Copy, Debug)]
pub struct ScopedVirtualService<'a> {
    pub namespace: &'a str,
    pub spec: &'a VirtualService,
}

/// What the routes are built for.
#[derive(Clone, Debug)]
pub struct RouteContext<'a> {
    /// The gateway names (`ns/name`) this proxy implements; empty for sidecars ("mesh").
    pub gateways: Vec<String>,
    /// The proxy's workload labels (for `sourceLabels` matches).
    pub labels: &'a BTreeMap<String, String>,
    /// The listener port the routes serve.
    pub port: u16,
    /// DestinationRules by host, for consistent-hash routing.
    pub rules: Option<&'a super::cds::DestinationRules<'a>>,
}

impl RouteContext<'_> {
    fn is_gateway(&self) -> bool {
        !self.gateways.is_empty()
    }

    /// Whether a route bound to `gateways` (from `vs_namespace`) applies to this proxy.
    pub(crate) fn applies(&self, gateways: &[String], vs_namespace: &str) -> bool {
        if gateways.is_empty() {
            return !self.is_gateway();
        }
        gateways.iter().any(|g| {
            if g == "mesh" {
                return !self.is_gateway();
            }
            let full = match g.split_once('/') {
                Some((ns, name)) => format!("{ns}/{name}"),
                None => match g.split_once('.') {
                    // 1.0's `name.namespace.svc.cluster.local` form.
                    Some((name, rest)) => {
                        format!("{}/{name}", rest.split('.').next().unwrap_or(""))
                    }
                    None => format!("{vs_namespace}/{g}"),
                },
            };
            self.gateways.contains(&full)
        })
    }
}

fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else {
        MatchPattern::SafeRegex(RegexMatcher {
            regex: m.regex.clone()?,
            ..Default::default()
        })
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn header_matcher(name: &str, m: &StringMatch, invert: bool) -> Option<HeaderMatcher> {
    Some(HeaderMatcher {
        name: name.to_owned(),
        invert_match: invert,
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(string_matcher(m)?)),
        ..Default::default()
    })
}

/// An Istio match as an Envoy route match, or `None` when it cannot apply to this proxy.
fn route_match(
    m: Option<&HttpMatchRequest>,
    ctx: &RouteContext<'_>,
    vs_namespace: &str,
) -> Option<RouteMatch> {
    let Some(m) = m else {
        return Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        });
    };
    if m.port.is_some_and(|p| p != u32::from(ctx.port)) {
        return None;
    }
    if !m.gateways.is_empty() && !ctx.applies(&m.gateways, vs_namespace) {
        return None;
    }
    if !m
        .source_labels
        .iter()
        .all(|(k, v)| ctx.labels.get(k) == Some(v))
    {
        return None;
    }
    let path = match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => PathSpecifier::Path(e.clone()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
        _ => PathSpecifier::Prefix("/".into()),
    };
    let mut headers = Vec::new();
    for (name, sm) in [
        (":method", &m.method),
        (":scheme", &m.scheme),
        (":authority", &m.authority),
    ] {
        if let Some(sm) = sm {
            headers.extend(header_matcher(name, sm, false));
        }
    }
    for (name, sm) in &m.headers {
        headers.extend(header_matcher(name, sm, false));
    }
    for (name, sm) in &m.without_headers {
        headers.extend(header_matcher(name, sm, true));
    }
    let query_parameters = m
        .query_params
        .iter()
        .filter_map(|(name, sm)| {
            Some(QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                    string_matcher(sm)?,
                )),
            })
        })
        .collect();
    Some(RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m
            .ignore_uri_case
            .map(|i| envoy_types::pb::google::protobuf::BoolValue { value: !i }),
        headers,
        query_parameters,
        ..Default::default()
    })
}

/// A percentage as Envoy's fraction of a million (Istio's precision).
fn fraction(percent: f64) -> FractionalPercent {
    FractionalPercent {
        numerator: (percent.clamp(0.0, 100.0) * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

/// The cluster a destination names, from a proxy serving `listener_port`.
pub(crate) fn destination_cluster(
    d: &Destination,
    vs_namespace: &str,
    reg: &dyn ServiceRegistry,
    listener_port: u16,
) -> String {
    let host = qualify_host(&d.host, vs_namespace);
    let port = d
        .port
        .as_ref()
        .and_then(|p| p.number)
        .and_then(|n| u16::try_from(n).ok())
        .or_else(|| {
            let svc = reg.service(&host)?;
            if svc.ports.len() == 1 {
                Some(svc.ports[0].port)
            } else {
                svc.port(listener_port).map(|p| p.port)
            }
        })
        .unwrap_or(listener_port);
    outbound_name(port, d.subset.as_deref().unwrap_or(""), &host)
}

fn header_options(ops: &BTreeMap<String, String>, append: bool) -> Vec<HeaderValueOption> {
    ops.iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: if append {
                HeaderAppendAction::AppendIfExistsOrAdd as i32
            } else {
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32
            },
            ..Default::default()
        })
        .collect()
}

fn apply_header_ops(
    route: &mut Route,
    request: Option<&HeaderOperations>,
    response: Option<&HeaderOperations>,
) {
    if let Some(r) = request {
        route
            .request_headers_to_add
            .extend(header_options(&r.set, false));
        route
            .request_headers_to_add
            .extend(header_options(&r.add, true));
        route
            .request_headers_to_remove
            .extend(r.remove.iter().cloned());
    }
    if let Some(r) = response {
        route
            .response_headers_to_add
            .extend(header_options(&r.set, false));
        route
            .response_headers_to_add
            .extend(header_options(&r.add, true));
        route
            .response_headers_to_remove
            .extend(r.remove.iter().cloned());
    }
}

fn hash_policy(
    ch: &keel_config::networking::ConsistentHashLb,
) -> envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy {
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, Header, PolicySpecifier, QueryParameter,
    };
    let spec = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            ttl: c.ttl.map(|t| pb_duration(t.as_std())),
            path: c.path.clone().unwrap_or_default(),
            ..Default::default()
        })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    };
    HashPolicy {
        policy_specifier: Some(spec),
        ..Default::default()
    }
}

fn cors(
    c: &keel_config::networking::CorsPolicy,
) -> envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
    let mut origins: Vec<StringMatcher> = c
        .allow_origin
        .iter()
        .map(|o| StringMatcher {
            match_pattern: Some(MatchPattern::Exact(o.clone())),
            ..Default::default()
        })
        .collect();
    origins.extend(c.allow_origins.iter().filter_map(string_matcher));
    envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
        allow_origin_string_match: origins,
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_std().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c
            .allow_credentials
            .map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
        ..Default::default()
    }
}

/// One Istio http route as the Envoy routes for each of its matches.
pub fn translate_route(
    r: &HttpRoute,
    vs_namespace: &str,
    reg: &dyn ServiceRegistry,
    ctx: &RouteContext<'_>,
    name: &str,
) -> Vec<Route> {
    let action = if let Some(redirect) = &r.redirect {
        Action::Redirect(RedirectAction {
            host_redirect: redirect.authority.clone().unwrap_or_default(),
            path_rewrite_specifier: redirect.uri.clone().map(PathRewriteSpecifier::PathRedirect),
            response_code: match redirect.redirect_code.unwrap_or(301) {
                302 => RedirectResponseCode::Found,
                303 => RedirectResponseCode::SeeOther,
                307 => RedirectResponseCode::TemporaryRedirect,
                308 => RedirectResponseCode::PermanentRedirect,
                _ => RedirectResponseCode::MovedPermanently,
            } as i32,
            port_redirect: redirect.port.unwrap_or(0),
            ..Default::default()
        })
    } else if let Some(dr) = &r.direct_response {
        Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body: dr
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .map(|s| DataSource {
                    specifier: Some(DataSpecifier::InlineString(s)),
                    ..Default::default()
                }),
            ..Default::default()
        })
    } else {
        let clusters: Vec<(String, u32)> = r
            .route
            .iter()
            .map(|d| {
                (
                    destination_cluster(&d.destination, vs_namespace, reg, ctx.port),
                    u32::try_from(d.weight.unwrap_or(100)).unwrap_or(0),
                )
            })
            // 1.0 drops zero-weight destinations when there are several.
            .filter(|(_, w)| r.route.len() == 1 || *w > 0)
            .collect();
        let cluster_specifier = if clusters.len() == 1 {
            ClusterSpecifier::Cluster(clusters[0].0.clone())
        } else {
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(name, w)| ClusterWeight {
                        name: name.clone(),
                        weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        };
        let mut action = RouteAction {
            cluster_specifier: Some(cluster_specifier),
            // 1.0: no timeout unless the VirtualService sets one.
            timeout: Some(
                r.timeout
                    .map(|t| pb_duration(t.as_std()))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        };
        if let Some(retry) = &r.retries
            && retry.attempts > 0
        {
            action.retry_policy = Some(RetryPolicy {
                retry_on: retry
                    .retry_on
                    .clone()
                    .unwrap_or_else(|| "5xx,connect-failure,refused-stream".to_owned()),
                num_retries: Some(UInt32Value {
                    value: u32::try_from(retry.attempts).unwrap_or(0),
                }),
                per_try_timeout: retry.per_try_timeout.map(|t| pb_duration(t.as_std())),
                ..Default::default()
            });
        }
        if let Some(rw) = &r.rewrite {
            if let Some(uri) = &rw.uri {
                action.prefix_rewrite = uri.clone();
            }
            if let Some(host) = &rw.authority {
                action.host_rewrite_specifier =
                    Some(HostRewriteSpecifier::HostRewriteLiteral(host.clone()));
            }
        }
        let mut mirrors: Vec<(&Destination, f64)> = r
            .mirrors
            .iter()
            .map(|m| (&m.destination, m.percentage.map_or(100.0, |p| p.value)))
            .collect();
        if let Some(m) = &r.mirror {
            let pct = r
                .mirror_percentage
                .map(|p| p.value)
                .or(r.mirror_percent.map(f64::from))
                .unwrap_or(100.0);
            mirrors.push((m, pct));
        }
        action.request_mirror_policies = mirrors
            .into_iter()
            .map(|(d, pct)| RequestMirrorPolicy {
                cluster: destination_cluster(d, vs_namespace, reg, ctx.port),
                runtime_fraction: Some(RuntimeFractionalPercent {
                    default_value: Some(fraction(pct)),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        if let Some(first) = r.route.first() {
            let host = qualify_host(&first.destination.host, vs_namespace);
            if let Some(ch) = ctx.rules.and_then(|rules| rules.get(&host)).and_then(|dr| {
                dr.traffic_policy
                    .as_ref()?
                    .load_balancer
                    .as_ref()?
                    .consistent_hash
                    .as_ref()
            }) {
                action.hash_policy.push(hash_policy(ch));
            }
        }
        if r.websocket_upgrade == Some(true) {
            action.upgrade_configs.push(UpgradeConfig {
                upgrade_type: "websocket".into(),
                ..Default::default()
            });
        }
        Action::Route(action)
    };

    let mut per_filter = HashMap::new();
    if let Some(f) = &r.fault {
        let mut fault = HttpFault::default();
        if let Some(d) = &f.delay
            && let Some(fixed) = d.fixed_delay
        {
            let pct = d
                .percentage
                .map(|p| p.value)
                .or(d.percent.map(|p| p as f64))
                .unwrap_or(100.0);
            fault.delay = Some(FaultDelay {
                percentage: Some(fraction(pct)),
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(pb_duration(
                    fixed.as_std(),
                ))),
            });
        }
        if let Some(a) = &f.abort
            && let Some(status) = a.http_status
        {
            let pct = a
                .percentage
                .map(|p| p.value)
                .or(a.percent.map(|p| p as f64))
                .unwrap_or(100.0);
            fault.abort = Some(FaultAbort {
                percentage: Some(fraction(pct)),
                error_type: Some(ErrorType::HttpStatus(u32::try_from(status).unwrap_or(500))),
                ..Default::default()
            });
        }
        per_filter.insert(FAULT_FILTER.to_owned(), any(&fault));
    }

    if let Some(c) = &r.cors_policy {
        per_filter.insert(CORS_FILTER.to_owned(), any(&cors(c)));
    }
    let matches: Vec<Option<&HttpMatchRequest>> = if r.matches.is_empty() {
        vec![None]
    } else {
        r.matches.iter().map(Some).collect()
    };
    matches
        .into_iter()
        .filter_map(|m| route_match(m, ctx, vs_namespace))
        .map(|m| {
            let mut route = Route {
                name: name.to_owned(),
                r#match: Some(m),
                action: Some(action.clone()),
                typed_per_filter_config: per_filter.clone(),
                ..Default::default()
            };
            let mut request = r
                .headers
                .as_ref()
                .and_then(|h| h.request.clone())
                .unwrap_or_default();
            request.add.extend(r.append_headers.clone());
            request.add.extend(r.append_request_headers.clone());
            request.remove.extend(r.remove_request_headers.clone());
            let mut response = r
                .headers
                .as_ref()
                .and_then(|h| h.response.clone())
                .unwrap_or_default();
            response.add.extend(r.append_response_headers.clone());
            response.remove.extend(r.remove_response_headers.clone());
            apply_header_ops(&mut route, Some(&request), Some(&response));
            route
        })
        .collect()
}

/// The routes of `vs` for this proxy, in order.
pub fn virtual_service_routes(
    vs: ScopedVirtualService<'_>,
    reg: &dyn ServiceRegistry,
    ctx: &RouteContext<'_>,
) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        let name = r.name.clone().unwrap_or_else(|| format!("route-{i}"));
        out.extend(translate_route(r, vs.namespace, reg, ctx, &name));
    }
    out
}

fn default_route(svc: &Service, port: u16) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(outbound_name(
                port,
                "",
                &svc.hostname,
            ))),
            timeout: Some(Default::default()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn with_ports(names: Vec<String>, port: u16) -> Vec<String> {
    let mut out = Vec::with_capacity(names.len() * 2);
    for n in names {
        out.push(format!("{n}:{port}"));
        out.push(n);
    }
    out
}

/// The sidecar's outbound route configuration for HTTP port `port`, named after the port.
pub fn sidecar_routes(
    port: u16,
    reg: &dyn ServiceRegistry,
    virtual_services: &[ScopedVirtualService<'_>],
    client_namespace: &str,
    ctx: &RouteContext<'_>,
) -> RouteConfiguration {
    let mut hosts = Vec::new();
    for svc in reg.services() {
        let Some(sp) = svc.port(port) else { continue };
        if !sp.protocol.is_http() {
            continue;
        }
        // The first VirtualService (by namespace/name order) whose hosts name this service.
        let vs = virtual_services.iter().find(|vs| {
            ctx.applies(&vs.spec.gateways, vs.namespace)
                && vs
                    .spec
                    .hosts
                    .iter()
                    .any(|h| qualify_host(h, vs.namespace) == svc.hostname)
        });
        let routes = match vs {
            Some(vs) => virtual_service_routes(*vs, reg, ctx),
            None => vec![default_route(svc, port)],
        };
        hosts.push(VirtualHost {
            name: format!("{}:{port}", svc.hostname),
            domains: with_ports(svc.client_names(client_namespace), port),
            routes,
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts: hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

/// A gateway server's route configuration (`http.PORT`): one virtual host per VirtualService
/// bound to the gateway, answering to its hosts.
pub fn gateway_routes(
    name: &str,
    reg: &dyn ServiceRegistry,
    virtual_services: &[ScopedVirtualService<'_>],
    ctx: &RouteContext<'_>,
) -> RouteConfiguration {
    let mut hosts: Vec<VirtualHost> = Vec::new();
    let mut seen_domains = std::collections::HashSet::new();
    for vs in virtual_services
        .iter()
        .filter(|vs| !vs.spec.gateways.is_empty() && ctx.applies(&vs.spec.gateways, vs.namespace))
    {
        let domains: Vec<String> = vs
            .spec
            .hosts
            .iter()
            .flat_map(|h| {
                if h == "*" {
                    vec!["*".to_owned()]
                } else {
                    with_ports(vec![h.clone()], ctx.port)
                }
            })
            .filter(|d| seen_domains.insert(d.clone()))
            .collect();
        if domains.is_empty() {
            continue;
        }
        hosts.push(VirtualHost {
            name: format!("{}:{}", vs.spec.hosts.join(","), ctx.port),
            domains,
            routes: virtual_service_routes(*vs, reg, ctx),
            ..Default::default()
        });
    }
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}
