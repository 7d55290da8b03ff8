//! The ext_authz filter over gRPC: before a request follows its route, the authorization
//! service (mixer's check service in Keel) is asked with the request's attributes, and its
//! answer lets the request through (possibly with headers added) or is sent back instead.
//! Building the request and reading the answer are pure; [`Authz`] keeps one lazily
//! connected HTTP/2 channel per service address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HeaderValueOption, SocketAddress};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, check_response,
};
use envoy_types::pb::google::protobuf::Timestamp;
use hyper::http::request::Parts;
use tonic::transport::Channel;

use crate::model::{Config, ExtAuthz};

/// What the authorization service decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on, with these request headers set.
    Allow { headers: Vec<(String, String)> },
    /// Answer the client with this instead.
    Deny {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// No answer (unreachable, timed out, malformed): the filter's failure mode applies.
    Error(String),
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

/// The check request for a request as it arrived (pseudo-headers included, as Envoy sends).
pub fn check_request(
    parts: &Parts,
    peer: SocketAddr,
    local: SocketAddr,
    context_extensions: &[(String, String)],
) -> CheckRequest {
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut headers: HashMap<String, String> = HashMap::new();
    for (k, v) in &parts.headers {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        headers
            .entry(k.as_str().to_owned())
            .and_modify(|old| {
                old.push(',');
                old.push_str(&v);
            })
            .or_insert(v);
    }
    headers.insert(":authority".into(), host.clone());
    headers.insert(":method".into(), parts.method.to_string());
    headers.insert(":path".into(), path.clone());
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let size = parts
        .headers
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(if parts.method == hyper::Method::GET {
            0
        } else {
            -1
        });
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(address(peer)),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: Some(address(local)),
                ..Default::default()
            }),
            request: Some(Request {
                time: Some(Timestamp {
                    seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
                }),
                http: Some(HttpRequest {
                    id: headers.get("x-request-id").cloned().unwrap_or_default(),
                    method: parts.method.to_string(),
                    path,
                    host,
                    scheme: "http".into(),
                    protocol: "HTTP/1.1".into(),
                    size,
                    headers,
                    ..Default::default()
                }),
            }),
            context_extensions: context_extensions.iter().cloned().collect(),
            ..Default::default()
        }),
    }
}

fn header_pairs(h: &[HeaderValueOption]) -> Vec<(String, String)> {
    h.iter()
        .filter_map(|o| o.header.as_ref())
        .map(|h| {
            let v = if h.value.is_empty() {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            } else {
                h.value.clone()
            };
            (h.key.to_ascii_lowercase(), v)
        })
        .collect()
}

/// Reads the service's answer: status OK allows; anything else denies, with the denied
/// response's status (403 when unset), body and headers.
pub fn decision(resp: &CheckResponse) -> Decision {
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let headers = match &resp.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) => header_pairs(&ok.headers),
            _ => Vec::new(),
        };
        return Decision::Allow { headers };
    }
    match &resp.http_response {
        Some(check_response::HttpResponse::DeniedResponse(d)) => Decision::Deny {
            status: d
                .status
                .as_ref()
                .and_then(|s| u16::try_from(s.code).ok())
                .filter(|c| (200..600).contains(c))
                .unwrap_or(403),
            body: d.body.clone(),
            headers: header_pairs(&d.headers),
        },
        _ => Decision::Deny {
            status: 403,
            body: String::new(),
            headers: Vec::new(),
        },
    }
}

/// Channels to authorization services, by address.
#[derive(Debug, Default)]
pub struct Authz {
    clients: Mutex<HashMap<String, AuthorizationClient<Channel>>>,
}

impl Authz {
    fn client(&self, addr: &str) -> Result<AuthorizationClient<Channel>, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(addr.to_owned())
            .map_err(|e| format!("{addr}: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(1))
            .tcp_nodelay(true);
        let client = AuthorizationClient::new(endpoint.connect_lazy());
        clients.insert(addr.to_owned(), client.clone());
        Ok(client)
    }

    /// Asks the filter's service about `req`, within the filter's timeout.
    pub async fn check(&self, config: &Config, filter: &ExtAuthz, req: CheckRequest) -> Decision {
        let Some(addr) = crate::als::grpc_address(config, &filter.cluster) else {
            return Decision::Error(format!("cluster {} has no endpoint", filter.cluster));
        };
        let mut client = match self.client(&addr) {
            Ok(c) => c,
            Err(e) => return Decision::Error(e),
        };
        match tokio::time::timeout(filter.timeout, client.check(req)).await {
            Ok(Ok(resp)) => decision(resp.get_ref()),
            Ok(Err(status)) => Decision::Error(format!("{}: {}", filter.cluster, status.message())),
            Err(_) => Decision::Error(format!("{}: timed out", filter.cluster)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue;
    use envoy_types::pb::envoy::service::auth::v3::DeniedHttpResponse;
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::rpc::Status;

    #[test]
    fn the_request_carries_peers_headers_and_extensions() {
        let req = hyper::Request::get("/ratings/0?x=1")
            .header("host", "ratings:9080")
            .header("x-request-id", "abc")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let r = check_request(
            &parts,
            "10.0.0.3:40000".parse().unwrap(),
            "10.0.0.4:9080".parse().unwrap(),
            &[(
                "destination.service.host".into(),
                "ratings.default.svc.cluster.local".into(),
            )],
        );
        let a = r.attributes.unwrap();
        let http = a.request.unwrap().http.unwrap();
        assert_eq!(http.path, "/ratings/0?x=1");
        assert_eq!(http.host, "ratings:9080");
        assert_eq!(http.id, "abc");
        assert_eq!(http.headers[":method"], "GET");
        assert_eq!(http.headers["cookie"], "a=1,b=2");
        assert_eq!(
            a.context_extensions["destination.service.host"],
            "ratings.default.svc.cluster.local"
        );
        match a.source.unwrap().address.unwrap().address.unwrap() {
            AddressKind::SocketAddress(s) => assert_eq!(s.address, "10.0.0.3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_become_decisions() {
        assert_eq!(
            decision(&CheckResponse::default()),
            Decision::Allow { headers: vec![] }
        );
        let denied = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus { code: 429 }),
                    body: "RESOURCE_EXHAUSTED:Quota is exhausted for: requestcount".into(),
                    headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "X-Why".into(),
                            value: "quota".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            decision(&denied),
            Decision::Deny {
                status: 429,
                body: "RESOURCE_EXHAUSTED:Quota is exhausted for: requestcount".into(),
                headers: vec![("x-why".into(), "quota".into())],
            }
        );
        // Denied without details: Envoy's 403.
        let bare = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            decision(&bare),
            Decision::Deny { status: 403, .. }
        ));
    }
}
