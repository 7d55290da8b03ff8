//! Backends and clients for the conformance rows on TLS origination and streaming bodies.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // test code

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Certificates made with openssl: two CAs, a server certificate for `tls.backend` and a
/// client certificate, both from the first CA.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (installed by `cargo xtask test`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_certs(dir: &Path) -> Certs {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let key = format!("{ca}.key");
        let pem = format!("{ca}.pem");
        let subj = format!("/CN=keel-conformance-{ca}");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        openssl(dir, &args);
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:tls.backend\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, subj) in [("server", "/CN=tls.backend"), ("client", "/CN=keel-client")] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subj]);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    Certs {
        dir: dir.to_owned(),
    }
}

/// An HTTPS backend: answers `tls-backend sni=NAME client=present|none` (the server name the
/// client sent, and whether it showed a certificate the CA signed).
pub async fn tls_backend(certs: &Certs, addr: (&str, u16)) {
    let read = |n: &str| std::fs::read(certs.dir.join(n)).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read("server.pem"))
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&read("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read("ca.pem")) {
        roots.add(c.unwrap()).unwrap();
    }
    let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (_, session) = tls.get_ref();
                let answer = format!(
                    "tls-backend sni={} client={}",
                    session.server_name().unwrap_or("none"),
                    if session.peer_certificates().is_some_and(|c| !c.is_empty()) {
                        "present"
                    } else {
                        "none"
                    }
                );
                let service = hyper::service::service_fn(move |_req| {
                    let answer = answer.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(answer)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
}

/// A POST with a body through the gateway (Content-Length, or chunked in `chunks` pieces):
/// status and body.
pub fn post(
    port: u16,
    host: &str,
    path: &str,
    body: &[u8],
    chunks: Option<usize>,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let framing = match chunks {
        None => format!("Content-Length: {}", body.len()),
        Some(_) => "Transfer-Encoding: chunked".to_owned(),
    };
    s.write_all(
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{framing}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    match chunks {
        None => s.write_all(body).unwrap(),
        Some(n) => {
            for part in body.chunks(body.len().div_ceil(n.max(1)).max(1)) {
                s.write_all(format!("{:x}\r\n", part.len()).as_bytes())
                    .unwrap();
                s.write_all(part).unwrap();
                s.write_all(b"\r\n").unwrap();
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        }
    }
    let mut raw = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut chunk = [0u8; 8192];
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
        }
        let text = String::from_utf8_lossy(&raw);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end].lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            });
            if len.is_some_and(|len| raw.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A bidirectional gRPC stream backend: each DiscoveryRequest is answered at once with a
/// DiscoveryResponse carrying the request's version_info (ADS's shape, used as an echo).
pub struct EchoStream;

type EchoOut = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<
                Item = Result<
                    envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
                    tonic::Status,
                >,
            > + Send,
    >,
>;
type DeltaOut = std::pin::Pin<
    Box<
        dyn tokio_stream::Stream<
                Item = Result<
                    envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse,
                    tonic::Status,
                >,
            > + Send,
    >,
>;

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService
    for EchoStream
{
    type StreamAggregatedResourcesStream = EchoOut;
    type DeltaAggregatedResourcesStream = DeltaOut;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<
            tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest>,
        >,
    ) -> Result<tonic::Response<EchoOut>, tonic::Status> {
        use tokio_stream::StreamExt;
        let inbound = request.into_inner();
        let out = inbound.map(|r| {
            r.map(|r| envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
                version_info: format!("echo {}", r.version_info),
                ..Default::default()
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: tonic::Request<
            tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest>,
        >,
    ) -> Result<tonic::Response<DeltaOut>, tonic::Status> {
        Err(tonic::Status::unimplemented("not used"))
    }
}

/// Three rounds on one stream through the gateway, each request sent only after the previous
/// answer came back: a proxy that waits for the request's end never answers the first.
pub async fn grpc_ping_pong(port: u16, authority: &str) -> Result<Vec<String>, String> {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .origin(format!("http://{authority}").parse().unwrap())
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel::<DiscoveryRequest>(1);
    let send = |v: &str| DiscoveryRequest {
        version_info: v.to_owned(),
        ..Default::default()
    };
    tx.send(send("1")).await.map_err(|e| e.to_string())?;
    let mut answers = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut seen = Vec::new();
    for round in 1..=3 {
        let next = tokio::time::timeout(Duration::from_secs(5), answers.message())
            .await
            .map_err(|_| format!("no answer to message {round} within 5 s (seen {seen:?})"))?
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("stream ended after {seen:?}"))?;
        seen.push(next.version_info);
        if round < 3 {
            tx.send(send(&(round + 1).to_string()))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(seen)
}

/// A GET over TLS to the gateway with `sni`, trusting the conformance CA: the body, or why
/// it failed.
pub async fn tls_get(port: u16, sni: &str, certs: &Certs) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&std::fs::read(certs.dir.join("ca.pem")).unwrap()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let mut tls = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    if text.is_empty() {
        return Err("no answer".into());
    }
    Ok(text)
}

/// A gRPC access log service that keeps the TCP entries it receives:
/// (upstream cluster, received bytes, sent bytes).
#[derive(Clone, Default)]
pub struct TcpLogs(pub Arc<std::sync::Mutex<Vec<(String, u64, u64)>>>);

#[tonic::async_trait]
impl envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogService
    for TcpLogs
{
    async fn stream_access_logs(
        &self,
        request: tonic::Request<
            tonic::Streaming<
                envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage,
            >,
        >,
    ) -> Result<
        tonic::Response<envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsResponse>,
        tonic::Status,
    > {
        use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
        let mut stream = request.into_inner();
        while let Some(msg) = stream.message().await? {
            if let Some(LogEntries::TcpLogs(logs)) = msg.log_entries {
                for e in logs.log_entry {
                    let cluster = e
                        .common_properties
                        .map(|c| c.upstream_cluster)
                        .unwrap_or_default();
                    let (rx, tx) = e
                        .connection_properties
                        .map(|c| (c.received_bytes, c.sent_bytes))
                        .unwrap_or_default();
                    self.0.lock().unwrap().push((cluster, rx, tx));
                }
            }
        }
        Ok(tonic::Response::new(Default::default()))
    }
}

pub async fn serve_tcp_logs(logs: TcpLogs) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::AccessLogServiceServer::new(logs),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

/// An access log line in Envoy's default format with what varies run to run or by Envoy
/// version masked: the start time (`[T]`), the duration (`D`), the upstream service time
/// (`U`, when there is one), x-forwarded-for (`X`) and the request id (`R`; Envoy 1.40
/// counts loopback clients as external, regenerates their ids and appends a documentation
/// address rather than theirs).
pub fn mask_access_line(line: &str) -> String {
    let rest = match line.split_once("] ") {
        Some((_, rest)) => rest,
        None => return line.to_owned(),
    };
    // `"METHOD PATH PROTOCOL" CODE FLAGS RX TX DURATION UPSTREAM_TIME "XFF" "UA" "ID" ...`
    let Some((request, tail)) = rest[1..].split_once('"') else {
        return line.to_owned();
    };
    let mut fields: Vec<String> = tail
        .trim_start()
        .splitn(7, ' ')
        .map(str::to_owned)
        .collect();
    if fields.len() == 7 {
        fields[4] = "D".into();
        if fields[5] != "-" {
            fields[5] = "U".into();
        }
        // The quoted fields: "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM".
        let quoted: Vec<&str> = fields[6].split("\" \"").collect();
        if quoted.len() == 5 {
            let (ua, authority, upstream) = (quoted[1], quoted[3], quoted[4]);
            fields[6] = format!("\"X\" \"{ua}\" \"R\" \"{authority}\" \"{upstream}");
        }
    }
    format!("[T] \"{request}\" {}", fields.join(" "))
}
