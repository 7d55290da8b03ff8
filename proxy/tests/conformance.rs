//! Conformance: one table of scenarios (VirtualService through pilot + request -> expected
//! status, body marker, backend reached, timing), run against real Envoy and keel-proxy as
//! gateways fed by the same galley and pilot. Every row must pass on both. Then, on both:
//! WebSocket upgrades (allowed and refused), consistent hashing (sticky by header), HTTP/2
//! (h2c downstream; gRPC through an HTTP/2 cluster, statuses in trailers, a bidirectional
//! stream answered message by message), request bodies (3 MiB uploads streamed with a
//! length and chunked; a retried POST whole on every attempt), TLS origination (verified
//! with SNI and a SAN, with a client certificate, unverified, wrong CA, wrong SAN), CORS
//! (preflight, simple request, other origin), mirroring (a copy to another backend, host
//! suffixed `-shadow`), outlier detection (a failing endpoint ejected after one error, later
//! requests all to the healthy one), a circuit breaker (one connection, one pending, the
//! third request refused at once with the overflow answer), and 50 route changes under load
//! without a failure. Envoy is fed state-of-the-world xDS, keel-proxy incremental (delta).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_ENVOY") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/envoy-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.exists() {
                return bin;
            }
        }
    }
    panic!("no Envoy binary: run `cargo xtask test` (it installs Envoy) or set KEEL_ENVOY");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET through the gateway: status, Location, body, time taken.
fn request(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, Duration) {
    let (status, head, body, took) = request_with("GET", port, host, path, headers);
    let location = header_of(&head, "location");
    (status, location, body, took)
}

/// A response header's value from a response head ("" when absent).
fn header_of(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_default()
}

/// Any method: status, the response head, body, time taken.
fn request_with(
    method: &str,
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String, Duration) {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // Read the head and Content-Length bytes, not to the close: Envoy delays closing after
    // a local reply (delayed_close_timeout), which is not the response's time.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if let Some(len) = len
                && buf.len() >= end + 4 + len
            {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let raw = String::from_utf8_lossy(&buf).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (status, head.to_owned(), body.to_owned(), t.elapsed())
}

/// The gRPC backend: an authorization service that allows everything and says who it is.
struct GrpcBackend;

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization
    for GrpcBackend
{
    async fn check(
        &self,
        request: tonic::Request<envoy_types::pb::envoy::service::auth::v3::CheckRequest>,
    ) -> Result<
        tonic::Response<envoy_types::pb::envoy::service::auth::v3::CheckResponse>,
        tonic::Status,
    > {
        let path = request
            .into_inner()
            .attributes
            .and_then(|a| a.request?.http.map(|h| h.path))
            .unwrap_or_default();
        if path == "/deny" {
            return Err(tonic::Status::permission_denied("grpc backend says no"));
        }
        Ok(tonic::Response::new(
            envoy_types::pb::envoy::service::auth::v3::CheckResponse {
                status: Some(envoy_types::pb::google::rpc::Status {
                    code: 0,
                    message: format!("grpc backend saw {path}"),
                    details: Vec::new(),
                }),
                ..Default::default()
            },
        ))
    }
}

/// A unary call through the gateway as `authority`: the answer's message, or the status.
async fn grpc_call(port: u16, authority: &str, path: &str) -> Result<String, tonic::Status> {
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let req = CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    path: path.to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let r = AuthorizationClient::new(channel).check(req).await?;
    Ok(r.into_inner().status.map(|s| s.message).unwrap_or_default())
}

/// A GET over HTTP/2 with prior knowledge (h2c): status and body.
async fn h2c_get(port: u16, authority: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://{authority}{path}"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const BACKEND_IPS: [(&str, &str); 4] = [
    ("a", "127.0.0.31"),
    ("b", "127.0.0.32"),
    ("slow", "127.0.0.33"),
    ("fail", "127.0.0.34"),
];

/// One row of the table.
struct Scenario {
    name: &'static str,
    /// The `http:` routes of a VirtualService for host `NAME.test`.
    routes: &'static str,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    /// Must appear in the body (or the Location header for redirects).
    marker: &'static str,
    /// Time bounds in milliseconds.
    min_ms: u64,
    max_ms: u64,
    /// Requests the failing backend must see.
    fail_hits: Option<usize>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "prefix",
        routes: "  - route: [{destination: {host: a.backend}}]\n",
        path: "/anything",
        headers: &[],
        status: 200,
        marker: "backend=a path=/anything",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "exact",
        routes: "  - match: [{uri: {exact: /only}}]\n    route: [{destination: {host: b.backend}}]\n  - route: [{destination: {host: a.backend}}]\n",
        path: "/only",
        headers: &[],
        status: 200,
        marker: "backend=b",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "exact-miss",
        routes: "  - match: [{uri: {exact: /only}}]\n    route: [{destination: {host: b.backend}}]\n  - route: [{destination: {host: a.backend}}]\n",
        path: "/only/not",
        headers: &[],
        status: 200,
        marker: "backend=a",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "header",
        routes: "  - match: [{headers: {x-user: {exact: jason}}}]\n    route: [{destination: {host: b.backend}}]\n  - route: [{destination: {host: a.backend}}]\n",
        path: "/",
        headers: &[("x-user", "jason")],
        status: 200,
        marker: "backend=b",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "header-case",
        routes: "  - match: [{headers: {x-user: {exact: jason}}}]\n    route: [{destination: {host: b.backend}}]\n  - route: [{destination: {host: a.backend}}]\n",
        path: "/",
        headers: &[("x-user", "Jason")],
        status: 200,
        marker: "backend=a",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "regex",
        routes: "  - match: [{uri: {regex: \"/re/[0-9]+\"}}]\n    route: [{destination: {host: b.backend}}]\n  - route: [{destination: {host: a.backend}}]\n",
        path: "/re/42",
        headers: &[],
        status: 200,
        marker: "backend=b",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "weights",
        routes: "  - route:\n    - {destination: {host: a.backend}, weight: 0}\n    - {destination: {host: b.backend}, weight: 100}\n",
        path: "/",
        headers: &[],
        status: 200,
        marker: "backend=b",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "rewrite",
        routes: "  - match: [{uri: {prefix: /old}}]\n    rewrite: {uri: /new}\n    route: [{destination: {host: a.backend}}]\n",
        path: "/old/page",
        headers: &[],
        status: 200,
        marker: "path=/new/page",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "append-headers",
        routes: "  - route: [{destination: {host: a.backend}}]\n    appendHeaders: {x-added: yes-added}\n",
        path: "/",
        headers: &[],
        status: 200,
        marker: "x-added=yes-added",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "timeout",
        routes: "  - route: [{destination: {host: slow.backend}}]\n    timeout: 0.5s\n",
        path: "/",
        headers: &[],
        status: 504,
        marker: "upstream request timeout",
        min_ms: 400,
        max_ms: 1500,
        fail_hits: None,
    },
    Scenario {
        name: "retries",
        routes: "  - route: [{destination: {host: fail.backend}}]\n    retries: {attempts: 3, perTryTimeout: 1s}\n",
        path: "/",
        headers: &[],
        status: 503,
        marker: "",
        min_ms: 0,
        max_ms: 5000,
        fail_hits: Some(4),
    },
    Scenario {
        name: "abort",
        routes: "  - route: [{destination: {host: a.backend}}]\n    fault: {abort: {percent: 100, httpStatus: 418}}\n",
        path: "/",
        headers: &[],
        status: 418,
        marker: "fault filter abort",
        min_ms: 0,
        max_ms: 1000,
        fail_hits: None,
    },
    Scenario {
        name: "delay",
        routes: "  - route: [{destination: {host: a.backend}}]\n    fault: {delay: {percent: 100, fixedDelay: 1s}}\n",
        path: "/",
        headers: &[],
        status: 200,
        marker: "backend=a",
        min_ms: 950,
        max_ms: 2500,
        fail_hits: None,
    },
    Scenario {
        name: "redirect",
        routes: "  - redirect: {uri: /elsewhere}\n",
        path: "/",
        headers: &[],
        status: 301,
        marker: "/elsewhere",
        min_ms: 0,
        max_ms: 2000,
        fail_hits: None,
    },
    Scenario {
        name: "upstream-down",
        routes: "  - route: [{destination: {host: down.backend}}]\n",
        path: "/",
        headers: &[],
        status: 503,
        marker: "",
        min_ms: 0,
        max_ms: 3000,
        fail_hits: None,
    },
];

fn config(backend_port: u16, gateway_port: u16, grpc_port: u16) -> String {
    let mut docs = vec![
        format!("apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {{name: gw, namespace: istio-system}}\nspec:\n  selector: {{istio: conformance}}\n  servers: [{{port: {{number: {gateway_port}, name: http, protocol: HTTP}}, hosts: ['*']}}]\n"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: conformance}}\nspec: {containers: [{name: p, image: x}]}\nstatus: {phase: Running, podIP: 127.0.0.1}\n".to_owned(),
    ];
    for (name, ip) in BACKEND_IPS.iter().chain([("down", "127.0.0.35")].iter()) {
        docs.push(format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: {ip}}}]\n"
        ));
    }
    for s in SCENARIOS {
        docs.push(format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: {}, namespace: default}}\nspec:\n  hosts: [{}.test]\n  gateways: [istio-system/gw]\n  http:\n{}",
            s.name, s.name, s.routes
        ));
    }
    // Outlier detection: a healthy and a failing endpoint behind one host, ejected after
    // one error. Circuit breaker: the slow backend, one connection and one pending request.
    docs.push(format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: pair, namespace: default}}\nspec:\n  hosts: [pair.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.31}}, {{address: 127.0.0.34}}]\n"
    ));
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: pair, namespace: default}\nspec:\n  host: pair.backend\n  trafficPolicy:\n    outlierDetection: {consecutiveErrors: 1, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 100}\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: ejection, namespace: default}\nspec:\n  hosts: [ejection.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: pair.backend}}]\n".to_owned());
    // WebSocket: allowed on ws.test, not on wsdeny.test.
    docs.push(format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: ws, namespace: default}}\nspec:\n  hosts: [ws.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.37}}]\n"
    ));
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: ws, namespace: default}\nspec:\n  hosts: [ws.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: ws.backend}}]\n    websocketUpgrade: true\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: wsdeny, namespace: default}\nspec:\n  hosts: [wsdeny.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: ws.backend}}]\n".to_owned());
    // Consistent hashing by a header over two endpoints.
    docs.push(format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: sticky, namespace: default}}\nspec:\n  hosts: [sticky.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.31}}, {{address: 127.0.0.32}}]\n"
    ));
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: sticky, namespace: default}\nspec:\n  host: sticky.backend\n  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: sticky, namespace: default}\nspec:\n  hosts: [sticky.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: sticky.backend}}]\n".to_owned());
    // gRPC: a GRPC port makes the cluster speak HTTP/2 upstream.
    docs.push(format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: grpc, namespace: default}}\nspec:\n  hosts: [grpc.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {grpc_port}, name: grpc, protocol: GRPC}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.36}}]\n"
    ));
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: grpc, namespace: default}\nspec:\n  hosts: [grpc.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: grpc.backend}}]\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: cors, namespace: default}\nspec:\n  hosts: [cors.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: a.backend}}]\n    corsPolicy:\n      allowOrigin: [https://example.com]\n      allowMethods: [GET, POST]\n      allowHeaders: [x-custom]\n      exposeHeaders: [x-exposed]\n      maxAge: 24h\n      allowCredentials: true\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: mirror, namespace: default}\nspec:\n  hosts: [mirror.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: a.backend}}]\n    mirror: {host: b.backend}\n".to_owned());
    docs.push(format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: cb, namespace: default}}\nspec:\n  hosts: [cb.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.33}}]\n"
    ));
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: cb, namespace: default}\nspec:\n  host: cb.backend\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1}\n".to_owned());
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: breaker, namespace: default}\nspec:\n  hosts: [breaker.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: cb.backend}}]\n".to_owned());
    docs.join("---\n")
}

/// TLS origination, one host per DestinationRule setting, all to the HTTPS backend:
/// verified with SNI and a SAN (`tls`), with a client certificate (`mtls`), unverified
/// (`tlsany`), signed by another CA (`tlsbadca`), a SAN the certificate lacks (`tlsbadsan`).
fn tls_config(
    backend_port: u16,
    certs: &support::Certs,
    l4: (u16, u16),
    access_log: &Path,
) -> String {
    let (ca, other) = (certs.path("ca.pem"), certs.path("other-ca.pem"));
    let (cert, key) = (certs.path("client.pem"), certs.path("client.key"));
    let rules = [
        (
            "tls",
            format!(
                "{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [tls.backend], sni: tls.backend}}"
            ),
        ),
        (
            "mtls",
            format!(
                "{{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}"
            ),
        ),
        ("tlsany", "{mode: SIMPLE}".to_owned()),
        (
            "tlsbadca",
            format!("{{mode: SIMPLE, caCertificates: {other}}}"),
        ),
        (
            "tlsbadsan",
            format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [other.backend]}}"),
        ),
    ];
    let mut docs = Vec::new();
    for (name, tls) in rules {
        docs.push(format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.38}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  host: {name}.backend\n  trafficPolicy:\n    tls: {tls}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  hosts: [{name}.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{{destination: {{host: {name}.backend}}}}]\n"
        ));
    }
    // Layer 4 on the gateway: TLS passed through by SNI (to the HTTPS backend, whose
    // certificate names tls.backend), and TCP proxied with weights.
    let (pass_port, tcp_port) = l4;
    docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {{name: gw-l4, namespace: istio-system}}\nspec:\n  selector: {{istio: conformance}}\n  servers:\n  - port: {{number: {pass_port}, name: tls, protocol: TLS}}\n    hosts: [tls.backend]\n    tls: {{mode: PASSTHROUGH}}\n  - port: {{number: {tcp_port}, name: tcp, protocol: TCP}}\n    hosts: ['*']\n"));
    docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: pass, namespace: default}}\nspec:\n  hosts: [pass.backend]\n  location: MESH_INTERNAL\n  ports: [{{number: {backend_port}, name: tls, protocol: TLS}}]\n  resolution: STATIC\n  endpoints: [{{address: 127.0.0.38}}]\n"));
    docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: l4, namespace: default}}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/gw-l4]\n  tls:\n  - match: [{{port: {pass_port}, sniHosts: [tls.backend]}}]\n    route: [{{destination: {{host: pass.backend, port: {{number: {backend_port}}}}}}}]\n  tcp:\n  - match: [{{port: {tcp_port}}}]\n    route:\n    - {{destination: {{host: a.backend, port: {{number: {backend_port}}}}}, weight: 0}}\n    - {{destination: {{host: b.backend, port: {{number: {backend_port}}}}}, weight: 100}}\n"));
    // Istio's mesh config: access logs to a file in Envoy's default format.
    docs.push(format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |\n    accessLogFile: {}\n", access_log.display()));
    // A STRICT_DNS cluster: `localhost` resolved by the proxy (IPv4, as pilot asks).
    docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: dnsname, namespace: default}}\nspec:\n  hosts: [dnsname.backend]\n  location: MESH_EXTERNAL\n  ports: [{{number: {backend_port}, name: http, protocol: HTTP}}]\n  resolution: DNS\n  endpoints: [{{address: localhost}}]\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: dnsname, namespace: default}}\nspec:\n  hosts: [dnsname.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{{destination: {{host: dnsname.backend}}}}]\n"));
    // A POST to the failing backend, retried: every attempt must carry the whole body.
    docs.push("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: postretry, namespace: default}\nspec:\n  hosts: [postretry.test]\n  gateways: [istio-system/gw]\n  http:\n  - route: [{destination: {host: fail.backend}}]\n    retries: {attempts: 2, perTryTimeout: 2s}\n".to_owned());
    docs.join("---\n")
}

/// `api_type`: GRPC (state of the world) or DELTA_GRPC (incremental).
fn bootstrap(dir: &Path, pilot: SocketAddr, admin: u16, api_type: &str) -> PathBuf {
    let socket = |ip: &str, port: u16| serde_json::json!({"socket_address": {"address": ip, "port_value": port}});
    let boot = serde_json::json!({
        "node": {"id": "router~127.0.0.1~gw.istio-system~istio-system.svc.cluster.local", "cluster": "gw"},
        "admin": {"address": socket("127.0.0.1", admin)},
        "dynamic_resources": {
            "ads_config": {"api_type": api_type, "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket("127.0.0.1", pilot.port())}}]}]},
        }]},
    });
    let path = dir.join(format!("bootstrap-{admin}.json"));
    std::fs::write(&path, boot.to_string()).unwrap();
    path
}

#[test]
fn every_scenario_behaves_the_same_on_envoy_and_keel_proxy() {
    let dir = std::env::temp_dir().join(format!("keel-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend_port = free_port();
    let fail_hits = Arc::new(AtomicUsize::new(0));
    // The body size of each request the failing backend saw.
    let fail_sizes: Arc<std::sync::Mutex<Vec<usize>>> = Arc::default();
    // (backend, Host) of every request for /mirrored.
    let mirrored: Arc<std::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    rt.block_on(async {
        for (name, ip) in BACKEND_IPS {
            let l = tokio::net::TcpListener::bind((ip, backend_port))
                .await
                .unwrap();
            let hits = fail_hits.clone();
            let fail_sizes = fail_sizes.clone();
            let mirrored = mirrored.clone();
            tokio::spawn(keel_samples::http::serve(
                l,
                Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
                    let hits = hits.clone();
                    if req.uri().path() == "/mirrored" {
                        let host = req
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        mirrored.lock().unwrap().push((name.to_owned(), host));
                    }
                    let head = format!(
                        "backend={name} path={} x-added={}",
                        req.uri().path(),
                        req.headers()
                            .get("x-added")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                    );
                    let sizes = fail_sizes.clone();
                    async move {
                        use http_body_util::BodyExt;
                        let got = req.into_body().collect().await.map(|b| b.to_bytes().len());
                        let body = match &got {
                            Ok(n) => format!("{head} bytes={n}"),
                            Err(e) => format!("{head} body-error={e}"),
                        };
                        match name {
                            "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
                            "fail" => {
                                sizes
                                    .lock()
                                    .unwrap()
                                    .push(*got.as_ref().unwrap_or(&usize::MAX));
                                hits.fetch_add(1, Ordering::SeqCst);
                                return keel_samples::http::json(
                                    hyper::StatusCode::SERVICE_UNAVAILABLE,
                                    "{}",
                                );
                            }
                            _ => {}
                        }
                        keel_samples::http::json(hyper::StatusCode::OK, body)
                    }
                }),
            ));
        }
    });
    // A WebSocket-style backend: answers an upgrade with 101, then echoes bytes.
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.37", backend_port))
            .await
            .unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if s.read(&mut b).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(b[0]);
                    }
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if !text.contains("upgrade: websocket") {
                        let _ = s
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n")
                        .await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    });
    let grpc_port = free_port();
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.36", grpc_port))
            .await
            .unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer::new(
                        GrpcBackend,
                    ),
                )
                .add_service(
                    envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(
                        support::EchoStream,
                    ),
                )
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
    });
    let (pass_port, tcp_port) = (free_port(), free_port());
    let access_log = dir.join("access.log");
    // An HTTPS backend for TLS origination (certificates from openssl).
    let certs = support::make_certs(&dir.join("certs"));
    rt.block_on(support::tls_backend(&certs, ("127.0.0.38", backend_port)));
    // The backend `localhost` resolves to.
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", backend_port))
            .await
            .unwrap();
        tokio::spawn(keel_samples::http::serve(
            l,
            Arc::new(|req: hyper::Request<hyper::body::Incoming>| {
                let body = format!("backend=dns path={}", req.uri().path());
                async move { keel_samples::http::json(hyper::StatusCode::OK, body) }
            }),
        ));
    });
    let galley = rt
        .block_on(keel_galley::start(&keel_galley::Args {
            config_dir: dir.join("config"),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            default_namespace: "default".into(),
            rescan_ms: 100,
            log_format: "text".into(),
        }))
        .unwrap();
    let gateway_port = free_port();
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "conformance.yaml".into(),
                text: config(backend_port, gateway_port, grpc_port),
            }],
            "default",
            false,
        )
        .unwrap();
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "tls.yaml".into(),
                text: tls_config(backend_port, &certs, (pass_port, tcp_port), &access_log),
            }],
            "default",
            false,
        )
        .unwrap();
    let tcp_logs = support::TcpLogs::default();
    let als_addr = rt.block_on(support::serve_tcp_logs(tcp_logs.clone()));
    let pilot = rt
        .block_on(keel_pilot::server::start(&keel_pilot::server::Args {
            galley: format!("http://{}", galley.grpc_addr),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            debounce_ms: 10,
            log_format: "text".into(),
            // Access logs go to a collector of TCP entries (HTTP entries are ignored).
            mixer_telemetry: Some(("127.0.0.1".into(), als_addr.port())),
            mixer_policy: None,
        }))
        .unwrap();

    let mut failures = Vec::new();
    let readiness_port = free_port();
    for candidate in ["envoy", "keel-proxy"] {
        let admin = free_port();
        // Envoy takes state-of-the-world xDS, keel-proxy incremental (the local mesh's
        // keel-proxy sidecars take state of the world, so the e2e covers that).
        let api_type = if candidate == "envoy" {
            "GRPC"
        } else {
            "DELTA_GRPC"
        };
        let boot = bootstrap(&dir, pilot.grpc_addr, admin, api_type);
        let log = std::fs::File::create(dir.join(format!("{candidate}.log"))).unwrap();
        let mut cmd = match candidate {
            "envoy" => {
                let mut c = Command::new(envoy_binary());
                c.arg("-c").arg(&boot).args([
                    "--concurrency",
                    "1",
                    "--disable-hot-restart",
                    "-l",
                    "warning",
                    // Access log files are flushed every 10 s or 64 KiB by default.
                    "--file-flush-interval-msec",
                    "100",
                    "--file-flush-min-size-kb",
                    "0",
                ]);
                c
            }
            _ => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_keel-proxy"));
                c.arg("--bootstrap")
                    .arg(&boot)
                    .arg("--readiness-port")
                    .arg(readiness_port.to_string());
                c
            }
        };
        let mut proxy = Proc(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
        // Ready once the first scenario's route answers.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !TcpStream::connect(("127.0.0.1", gateway_port))
            .is_ok_and(|_| request(gateway_port, "prefix.test", "/", &[]).0 == 200)
        {
            assert!(
                Instant::now() < deadline,
                "{candidate} never routed (see {})",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        for s in SCENARIOS {
            let before = fail_hits.load(Ordering::SeqCst);
            let (status, location, body, took) =
                request(gateway_port, &format!("{}.test", s.name), s.path, s.headers);
            let hits = fail_hits.load(Ordering::SeqCst) - before;
            let seen = if s.status / 100 == 3 {
                &location
            } else {
                &body
            };
            let ms = took.as_millis() as u64;
            let mut wrong = Vec::new();
            if status != s.status {
                wrong.push(format!("status {status}, want {}", s.status));
            }
            if !seen.contains(s.marker) {
                wrong.push(format!("{seen:?} lacks {:?}", s.marker));
            }
            if ms < s.min_ms || ms > s.max_ms {
                wrong.push(format!("took {ms} ms, want {}..{}", s.min_ms, s.max_ms));
            }
            if let Some(want) = s.fail_hits
                && hits != want
            {
                wrong.push(format!(
                    "the failing backend saw {hits} requests, want {want}"
                ));
            }
            if !wrong.is_empty() {
                failures.push(format!("{candidate} / {}: {}", s.name, wrong.join("; ")));
            }
        }
        // keel-proxy's readiness port answers once the configuration is in; /logging
        // changes the level as Envoy's does (both answer the same POST).
        if candidate == "keel-proxy" {
            let (status, ..) = request(readiness_port, "probe", "/healthz/ready", &[]);
            if status != 200 {
                failures.push(format!("keel-proxy / readiness: status {status}, want 200"));
            }
        }
        let (status, _, body, _) =
            request_with("POST", admin, "admin", "/logging?level=debug", &[]);
        let (bad, ..) = request_with("POST", admin, "admin", "/logging?level=loud", &[]);
        let _ = request_with("POST", admin, "admin", "/logging?level=warning", &[]);
        if status != 200 || !body.contains("debug") || bad != 400 {
            failures.push(format!(
                "{candidate} / logging: {status} {body:?}, unknown level {bad}"
            ));
        }
        // Unknown host: no virtual host matches.
        let (status, ..) = request(gateway_port, "nowhere.example", "/", &[]);
        if status != 404 {
            failures.push(format!("{candidate} / no-route: status {status}, want 404"));
        }
        // Consistent hashing: each user keeps reaching one backend; between them the users
        // reach both.
        let mut reached = std::collections::BTreeMap::new();
        // 16 users: all on one of two backends by chance is 1 in 32768.
        for i in 0..16 {
            let user = format!("u{i}");
            let user = user.as_str();
            let backends: std::collections::BTreeSet<String> = (0..4)
                .map(|_| {
                    let (_, _, body, _) =
                        request(gateway_port, "sticky.test", "/", &[("x-user", user)]);
                    body.split_whitespace().next().unwrap_or("").to_owned()
                })
                .collect();
            reached.insert(user.to_owned(), backends);
        }
        let all: std::collections::BTreeSet<&String> = reached.values().flatten().collect();
        if reached.values().any(|b| b.len() != 1) || all.len() != 2 {
            let (_, head, body, _) = request(admin, "admin", "/clusters", &[]);
            let sticky: Vec<&str> = body.lines().filter(|l| l.contains("sticky")).collect();
            failures.push(format!(
                "{candidate} / consistent-hash: {reached:?}; admin /clusters: {sticky:?} {head:?}"
            ));
        }

        // WebSocket: the upgrade goes through and bytes echo back; where the route does
        // not allow it, the upgrade is refused.
        let ws = |host: &str| -> (String, String) {
            let mut s = TcpStream::connect(("127.0.0.1", gateway_port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(format!("GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            let status_line = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            let mut echoed = String::new();
            if status_line.contains(" 101 ") {
                s.write_all(b"ping over the upgraded connection").unwrap();
                let mut buf = [0u8; 64];
                let mut got = Vec::new();
                while got.len() < 33 {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                echoed = String::from_utf8_lossy(&got).into_owned();
            }
            (status_line, echoed)
        };
        let (line, echoed) = ws("ws.test");
        if !line.contains(" 101 ") || echoed != "ping over the upgraded connection" {
            failures.push(format!(
                "{candidate} / websocket: {line:?} echoed {echoed:?}"
            ));
        }
        let (line, _) = ws("wsdeny.test");
        if !line.contains(" 403 ") {
            failures.push(format!("{candidate} / websocket-not-allowed: {line:?}"));
        }

        // HTTP/2: h2c with prior knowledge downstream, to an HTTP/1.1 backend.
        let (status, body) = rt.block_on(h2c_get(gateway_port, "prefix.test", "/h2"));
        if status != 200 || !body.contains("backend=a path=/h2") {
            failures.push(format!("{candidate} / h2c: {status} {body:?}"));
        }
        // gRPC end to end: HTTP/2 both ways, the answer and a non-OK status (trailers) intact.
        match rt.block_on(grpc_call(gateway_port, "grpc.test", "/allow")) {
            Ok(m) if m == "grpc backend saw /allow" => {}
            other => failures.push(format!("{candidate} / grpc: {other:?}")),
        }
        match rt.block_on(grpc_call(gateway_port, "grpc.test", "/deny")) {
            Err(s)
                if s.code() == tonic::Code::PermissionDenied
                    && s.message() == "grpc backend says no" => {}
            other => failures.push(format!("{candidate} / grpc-status: {other:?}")),
        }

        // A bidirectional stream: each message answered before the next is sent.
        match rt.block_on(support::grpc_ping_pong(gateway_port, "grpc.test")) {
            Ok(seen) if seen == ["echo 1", "echo 2", "echo 3"] => {}
            other => failures.push(format!("{candidate} / grpc-bidi-stream: {other:?}")),
        }

        // Request bodies: a 3 MiB upload (past the 1 MiB buffer) streams through whole, with
        // a length and chunked; a retried POST carries its whole body on every attempt.
        let big: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        for chunks in [None, Some(48)] {
            let (status, body) =
                support::post(gateway_port, "prefix.test", "/upload", &big, chunks);
            if status != 200 || !body.contains(&format!("bytes={}", big.len())) {
                failures.push(format!(
                    "{candidate} / upload-3MiB (chunks {chunks:?}): {status} {:?}",
                    body.chars().take(120).collect::<String>()
                ));
            }
        }
        fail_sizes.lock().unwrap().clear();
        let (status, _) =
            support::post(gateway_port, "postretry.test", "/", b"eleven-byte", Some(3));
        let sizes = fail_sizes.lock().unwrap().clone();
        if status != 503 || sizes != [11, 11, 11] {
            failures.push(format!(
                "{candidate} / post-retried: {status}, the failing backend saw bodies of {sizes:?}, want [11, 11, 11]"
            ));
        }

        // STRICT_DNS: the name resolved by the proxy.
        let (status, _, body, _) = request(gateway_port, "dnsname.test", "/resolved", &[]);
        if status != 200 || !body.contains("backend=dns path=/resolved") {
            failures.push(format!("{candidate} / strict-dns: {status} {body:?}"));
        }

        // TLS origination (DestinationRule tls modes).
        for (host, status_want, marker) in [
            ("tls.test", 200, "tls-backend sni=tls.backend client=none"),
            ("mtls.test", 200, "tls-backend sni=none client=present"),
            ("tlsany.test", 200, "tls-backend sni=none client=none"),
            ("tlsbadca.test", 503, "upstream connect error"),
            ("tlsbadsan.test", 503, "upstream connect error"),
        ] {
            let (status, _, body, _) = request(gateway_port, host, "/", &[]);
            if status != status_want || !body.contains(marker) {
                failures.push(format!(
                    "{candidate} / tls-origination {host}: {status} {body:?}, want {status_want} with {marker:?}"
                ));
            }
        }

        // The file access log in Envoy's default format: a routed request, a request no
        // route matches, an injected abort (start time, duration and upstream service time
        // masked).
        let _ = std::fs::write(&access_log, "");
        let ua = [("User-Agent", "keel-conformance")];
        let (_, _, body, _) = request(gateway_port, "prefix.test", "/logged", &ua);
        request(gateway_port, "nowhere.example", "/logged-nr", &[]);
        request(gateway_port, "abort.test", "/logged-fi", &[]);
        let want = [
            format!("[T] \"GET /logged HTTP/1.1\" 200 - 0 {} D U \"X\" \"keel-conformance\" \"R\" \"prefix.test\" \"127.0.0.31:{backend_port}\"", body.len()),
            "[T] \"GET /logged-nr HTTP/1.1\" 404 NR 0 0 D - \"X\" \"-\" \"R\" \"nowhere.example\" \"-\"".to_owned(),
            "[T] \"GET /logged-fi HTTP/1.1\" 418 FI 0 18 D - \"X\" \"-\" \"R\" \"abort.test\" \"-\"".to_owned(),
        ];
        let deadline = Instant::now() + Duration::from_secs(5);
        let got = loop {
            let text = std::fs::read_to_string(&access_log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(" /logged"))
                .map(support::mask_access_line)
                .collect();
            if lines.len() >= 3 || Instant::now() > deadline {
                break lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if got != want {
            let text = std::fs::read_to_string(&access_log).unwrap_or_default();
            failures.push(format!(
                "{candidate} / file-access-log:\n  got  {got:#?}\n  want {want:#?}\n  the file has {} lines: {text}",
                text.lines().count(),
            ));
        }

        // TLS passthrough by SNI: the backend's own certificate and answer come back; a name
        // no chain matches gets the connection closed.
        match rt.block_on(support::tls_get(pass_port, "tls.backend", &certs)) {
            Ok(body) if body.contains("tls-backend sni=tls.backend") => {}
            other => failures.push(format!("{candidate} / tls-passthrough: {other:?}")),
        }
        if let Ok(body) = rt.block_on(support::tls_get(pass_port, "nobody.backend", &certs)) {
            failures.push(format!(
                "{candidate} / tls-passthrough-unknown-sni: answered {body:?}"
            ));
        }
        // TCP with weights (all to b), access-logged when the connection closes with the
        // bytes each way.
        tcp_logs.0.lock().unwrap().clear();
        let (status, head, body, _) = request_with("GET", tcp_port, "anything", "/over-tcp", &[]);
        if status != 200 || !body.contains("backend=b path=/over-tcp") {
            failures.push(format!("{candidate} / tcp-weighted: {status} {body:?}"));
        }
        let sent_request = "GET /over-tcp HTTP/1.1\r\nHost: anything\r\nConnection: close\r\n\r\n";
        let want = (
            "outbound|".to_owned(),
            sent_request.len() as u64,
            (head.len() + 4 + body.len()) as u64,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        // (The passthrough row's connection is logged too, possibly in this window.)
        let logged = loop {
            let got: Vec<_> = tcp_logs
                .0
                .lock()
                .unwrap()
                .iter()
                .filter(|(c, ..)| c.contains("b.backend"))
                .cloned()
                .collect();
            if !got.is_empty() || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The same connection in the file log, Envoy's default format for TCP.
        let want_line = format!(
            "[T] \"- - -\" 0 - {} {} D - \"X\" \"-\" \"R\" \"-\" \"127.0.0.32:{backend_port}\"",
            want.1, want.2
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let tcp_line = loop {
            let text = std::fs::read_to_string(&access_log).unwrap_or_default();
            let line = text
                .lines()
                .find(|l| l.contains("\"- - -\"") && l.contains("127.0.0.32:"))
                .map(support::mask_access_line);
            if line.is_some() || Instant::now() > deadline {
                break line;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if tcp_line.as_deref() != Some(want_line.as_str()) {
            failures.push(format!(
                "{candidate} / tcp-file-access-log: {tcp_line:?}, want {want_line:?}"
            ));
        }
        match logged.as_slice() {
            [(cluster, rx, tx)]
                if cluster.starts_with(&want.0)
                    && cluster.contains("b.backend")
                    && (*rx, *tx) == (want.1, want.2) => {}
            other => failures.push(format!(
                "{candidate} / tcp-access-log: {other:?}, want one entry to b.backend with {} bytes in, {} out",
                want.1, want.2
            )),
        }

        // CORS: an allowed preflight is answered by the proxy; an allowed simple request
        // gets the allow-origin and expose headers; another origin gets none.
        let origin = [("Origin", "https://example.com")];
        let (status, head, ..) = request_with(
            "OPTIONS",
            gateway_port,
            "cors.test",
            "/",
            &[
                ("Origin", "https://example.com"),
                ("Access-Control-Request-Method", "POST"),
            ],
        );
        let got = [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-headers",
            "access-control-max-age",
            "access-control-allow-credentials",
        ]
        .map(|h| header_of(&head, h));
        if status != 200
            || got
                != [
                    "https://example.com",
                    "GET,POST",
                    "x-custom",
                    "86400",
                    "true",
                ]
        {
            failures.push(format!("{candidate} / cors-preflight: {status} {got:?}"));
        }
        let (status, head, body, _) = request_with("GET", gateway_port, "cors.test", "/", &origin);
        let got = [
            header_of(&head, "access-control-allow-origin"),
            header_of(&head, "access-control-expose-headers"),
        ];
        if status != 200
            || !body.contains("backend=a")
            || got != ["https://example.com", "x-exposed"]
        {
            failures.push(format!("{candidate} / cors-simple: {status} {got:?}"));
        }
        let (status, head, ..) = request_with(
            "GET",
            gateway_port,
            "cors.test",
            "/",
            &[("Origin", "https://evil.example")],
        );
        if status != 200 || !header_of(&head, "access-control-allow-origin").is_empty() {
            failures.push(format!(
                "{candidate} / cors-other-origin: {status} {head:?}"
            ));
        }

        // Mirroring: the answer comes from the route's backend; the mirror gets a copy with
        // `-shadow` appended to the host.
        mirrored.lock().unwrap().clear();
        let (status, _, body, _) = request(gateway_port, "mirror.test", "/mirrored", &[]);
        let deadline = Instant::now() + Duration::from_secs(3);
        while mirrored.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut seen = mirrored.lock().unwrap().clone();
        seen.sort();
        let want = vec![
            ("a".to_owned(), "mirror.test".to_owned()),
            ("b".to_owned(), "mirror.test-shadow".to_owned()),
        ];
        if status != 200 || !body.contains("backend=a") || seen != want {
            failures.push(format!(
                "{candidate} / mirror: status {status}, body {body:?}, backends saw {seen:?}, want {want:?}"
            ));
        }

        // Outlier detection: after the failing endpoint's first error it is ejected, and
        // every later request goes to the healthy one.
        let before = fail_hits.load(Ordering::SeqCst);
        let mut last = Vec::new();
        for i in 0..20 {
            let (status, _, body, _) = request(gateway_port, "ejection.test", "/", &[]);
            if i >= 10 {
                last.push((status, body.contains("backend=a")));
            }
        }
        let hits = fail_hits.load(Ordering::SeqCst) - before;
        if !(1..=2).contains(&hits) || last.iter().any(|(s, a)| *s != 200 || !a) {
            failures.push(format!(
                "{candidate} / ejection: the failing endpoint saw {hits} requests (want 1..=2); last ten {last:?}"
            ));
        }
        // Circuit breaker: one connection busy (2 s), one request pending, the third is
        // refused at once with Envoy's overflow answer.
        let started = Instant::now();
        let calls: Vec<_> = (0..3)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 300 }));
                std::thread::spawn(move || request(gateway_port, "breaker.test", "/", &[]))
            })
            .collect();
        let results: Vec<(u16, String, Duration)> = calls
            .into_iter()
            .map(|c| {
                let (status, _, body, took) = c.join().unwrap();
                (status, body, took)
            })
            .collect();
        let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
        let overflow = &results[2];
        if statuses != [200, 200, 503]
            || !overflow.1.contains("reset reason: overflow")
            || overflow.2 > Duration::from_millis(1500)
            || results[1].2 < Duration::from_millis(3000)
        {
            failures.push(format!(
                "{candidate} / circuit-breaker: {:?} after {:?}",
                results
                    .iter()
                    .map(|(s, b, t)| (s, b.chars().take(80).collect::<String>(), t))
                    .collect::<Vec<_>>(),
                started.elapsed()
            ));
        }

        // Under continuous load, 50 route changes in a row fail no request.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let loaders: Vec<_> = (0..4)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let (mut ok, mut bad) = (0usize, Vec::new());
                    while !stop.load(Ordering::SeqCst) {
                        let (status, _, body, _) = request(gateway_port, "weights.test", "/", &[]);
                        if status == 200 && body.contains("backend=") {
                            ok += 1;
                        } else {
                            bad.push(status);
                        }
                    }
                    (ok, bad)
                })
            })
            .collect();
        for i in 0..50 {
            let (wa, wb) = if i % 2 == 0 { (100, 0) } else { (0, 100) };
            galley
                .state
                .galley
                .apply(
                    &[keel_galley::core::Source {
                        name: "weights.yaml".into(),
                        text: format!("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {{name: weights, namespace: default}}\nspec:\n  hosts: [weights.test]\n  gateways: [istio-system/gw]\n  http:\n  - route:\n    - {{destination: {{host: a.backend}}, weight: {wa}}}\n    - {{destination: {{host: b.backend}}, weight: {wb}}}\n"),
                    }],
                    "default",
                    false,
                )
                .unwrap();
            std::thread::sleep(Duration::from_millis(40));
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::SeqCst);
        let (mut ok, mut bad) = (0, Vec::new());
        for l in loaders {
            let (o, b) = l.join().unwrap();
            ok += o;
            bad.extend(b);
        }
        if !bad.is_empty() || ok < 50 {
            failures.push(format!(
                "{candidate} / 50 route changes under load: {ok} ok, failed statuses {bad:?}"
            ));
        }
        if candidate == "keel-proxy" {
            // SIGTERM drains: the request in flight (a 1 s fault delay) still gets its answer,
            // the listener closes, the process exits.
            let slow = std::thread::spawn(move || request(gateway_port, "delay.test", "/", &[]));
            std::thread::sleep(Duration::from_millis(300));
            let pid = proxy.0.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let (status, _, body, _) = slow.join().unwrap();
            if status != 200 || !body.contains("backend=a") {
                failures.push(format!(
                    "keel-proxy / drain: the request in flight got {status} {body:?}"
                ));
            }
            let deadline = Instant::now() + Duration::from_secs(6);
            let exited = loop {
                if let Ok(Some(_)) = proxy.0.try_wait() {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !exited {
                failures.push("keel-proxy / drain: still running 6 s after SIGTERM".into());
            }
            if TcpStream::connect(("127.0.0.1", gateway_port)).is_ok() {
                failures.push("keel-proxy / drain: the listener still accepts".into());
            }
        }
        // Leave the weights row as the table expects for the next candidate.
        galley
            .state
            .galley
            .apply(
                &[keel_galley::core::Source {
                    name: "weights.yaml".into(),
                    text: config(backend_port, gateway_port, grpc_port),
                }],
                "default",
                false,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        failures.is_empty(),
        "scenarios that failed:\n{}",
        failures.join("\n")
    );
    drop(pilot);
    drop(galley);
    let _ = std::fs::remove_dir_all(&dir);
}
