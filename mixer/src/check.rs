//! Checks: Envoy's external authorization requests (`envoy.service.auth.v3.Authorization`)
//! turned into Mixer attribute bags, and [`crate::policy`]'s verdict turned back into the
//! response Istio 1.0's proxies gave (403 `PERMISSION_DENIED:handler:message`, 429
//! `RESOURCE_EXHAUSTED:Quota is exhausted for: requestcount`, ...).
//!
//! Pilot puts the ext_authz filter on sidecars' inbound listeners, so the checking proxy is
//! the destination: `destination.*` comes from the connection's local address, `source.*`
//! from its peer, both enriched from the registry; pilot names the destination service in
//! the route's context extensions (`destination.service.host`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::{Address, address};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use keel_attributes::Value;
use keel_pilot::registry::ServiceRegistry;

use crate::policy::Verdict;
use crate::report::{Attributes, peer_attributes, put, put_str};

/// The context extension pilot sets on inbound routes: the service being called.
pub const SERVICE_HOST_EXTENSION: &str = "destination.service.host";

fn ip_of(a: Option<&Address>) -> Option<IpAddr> {
    match a?.address.as_ref()? {
        address::Address::SocketAddress(s) => s.address.parse().ok(),
        _ => None,
    }
}

/// The attribute bag of one checked request.
pub fn check_attributes(req: &CheckRequest, registry: &dyn ServiceRegistry) -> Attributes {
    let mut bag = Attributes::new();
    put_str(&mut bag, "context.protocol", "http");
    put_str(&mut bag, "context.reporter.kind", "inbound");
    let Some(attrs) = &req.attributes else {
        put(
            &mut bag,
            "request.time",
            Value::Timestamp(SystemTime::now()),
        );
        return bag;
    };
    let time = attrs
        .request
        .as_ref()
        .and_then(|r| r.time.as_ref())
        .and_then(|t| {
            Some(
                UNIX_EPOCH
                    + Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?),
            )
        })
        .unwrap_or_else(SystemTime::now);
    put(&mut bag, "request.time", Value::Timestamp(time));
    put(&mut bag, "context.time", Value::Timestamp(time));
    if let Some(source) = &attrs.source {
        if let Some(ip) = ip_of(source.address.as_ref()) {
            peer_attributes(&mut bag, "source", ip, registry);
        }
        let principal = source.principal.trim_start_matches("spiffe://");
        put_str(&mut bag, "source.principal", principal);
        put_str(&mut bag, "source.user", principal);
    }
    if let Some(dest) = &attrs.destination
        && let Some(ip) = ip_of(dest.address.as_ref())
    {
        peer_attributes(&mut bag, "destination", ip, registry);
    }
    put(
        &mut bag,
        "connection.mtls",
        Value::Bool(
            attrs
                .source
                .as_ref()
                .is_some_and(|s| !s.principal.is_empty()),
        ),
    );
    if let Some(host) = attrs.context_extensions.get(SERVICE_HOST_EXTENSION) {
        put_str(&mut bag, "destination.service", host);
        put_str(&mut bag, "destination.service.host", host);
        if let Some(svc) = registry.service(host) {
            put_str(&mut bag, "destination.service.name", &svc.name);
            put_str(&mut bag, "destination.service.namespace", &svc.namespace);
            put_str(
                &mut bag,
                "destination.service.uid",
                &format!("istio://{}/services/{}", svc.namespace, svc.name),
            );
        }
    }
    if let Some(http) = attrs.request.as_ref().and_then(|r| r.http.as_ref()) {
        let mut headers: BTreeMap<String, String> = http
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        if let Some(map) = &http.header_map {
            for h in &map.headers {
                let v = if h.value.is_empty() {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                } else {
                    h.value.clone()
                };
                headers.insert(h.key.to_ascii_lowercase(), v);
            }
        }
        put_str(&mut bag, "request.method", &http.method);
        put_str(&mut bag, "request.scheme", &http.scheme);
        put_str(&mut bag, "request.host", &http.host);
        // Envoy sends the path with its query; `query` is set apart only by newer versions.
        let path = if http.query.is_empty() || http.path.contains('?') {
            http.path.clone()
        } else {
            format!("{}?{}", http.path, http.query)
        };
        put_str(&mut bag, "request.path", &path);
        put_str(&mut bag, "request.id", &http.id);
        for (attr, header) in [
            ("request.useragent", "user-agent"),
            ("request.referer", "referer"),
        ] {
            if let Some(v) = headers.get(header) {
                put_str(&mut bag, attr, &v.clone());
            }
        }
        if http.size >= 0 {
            put(&mut bag, "request.size", Value::Int64(http.size));
        }
        put(&mut bag, "request.headers", Value::StringMap(headers));
    }
    bag
}

/// The ext_authz answer for `verdict`.
pub fn response(verdict: &Verdict) -> CheckResponse {
    let status = Some(RpcStatus {
        code: verdict.code,
        message: verdict.message.clone(),
        details: Vec::new(),
    });
    if verdict.is_ok() {
        return CheckResponse {
            status,
            http_response: Some(check_response::HttpResponse::OkResponse(
                OkHttpResponse::default(),
            )),
            ..Default::default()
        };
    }
    CheckResponse {
        status,
        http_response: Some(check_response::HttpResponse::DeniedResponse(
            DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(verdict.http_status()),
                }),
                body: verdict.body(),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}
