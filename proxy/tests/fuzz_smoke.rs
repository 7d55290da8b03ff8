//! The fuzz targets (`keel_proxy::fuzzing`, run for real by `cargo fuzz` in `proxy/fuzz/`),
//! run briefly and deterministically on every test run: random bytes, and mutations of the
//! real resources pilot sends for Bookinfo (with policy, telemetry, faults, retries, CORS,
//! mirrors, hashing, circuit breakers and outlier detection). Neither target may panic.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_config::store::Snapshot;
use keel_pilot::proxy::Proxy;
use keel_pilot::snapshot::{Mesh, proxy_snapshot};
use keel_proxy::fuzzing;
use keel_proxy::model;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

/// (type index, encoded resource) for everything pilot sends a sidecar and a gateway.
fn seeds() -> Vec<(u8, Vec<u8>)> {
    let samples = shared().join("istio-samples/1.0/samples/bookinfo");
    let mut texts = vec![
        std::fs::read_to_string(samples.join("platform/kube/bookinfo.yaml")).unwrap(),
        std::fs::read_to_string(samples.join("networking/bookinfo-gateway.yaml")).unwrap(),
        std::fs::read_to_string(samples.join("networking/virtual-service-ratings-test-delay.yaml")).unwrap(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 3, perTryTimeout: 1s}\n    mirror: {host: details}\n    corsPolicy: {allowOrigin: [a.example], allowMethods: [GET]}\n    websocketUpgrade: true\n".to_owned(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {consistentHash: {httpHeaderName: x-user}}\n    connectionPool: {tcp: {maxConnections: 5}, http: {http1MaxPendingRequests: 2}}\n    outlierDetection: {consecutiveErrors: 2, interval: 1s, baseEjectionTime: 30s}\n".to_owned(),
    ];
    for (i, (app, v)) in [
        ("details", "v1"),
        ("ratings", "v1"),
        ("reviews", "v1"),
        ("productpage", "v1"),
    ]
    .iter()
    .enumerate()
    {
        texts.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}, labels: {{app: {app}, version: {v}}}}}\nspec:\n  containers: [{{name: {app}, image: x, ports: [{{containerPort: 9080}}]}}]\nstatus: {{phase: Running, podIP: 10.88.0.{}}}\n",
            i + 2
        ));
    }
    texts.push("apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers: [{name: p, image: x}]\nstatus: {phase: Running, podIP: 10.88.0.100}\n".to_owned());
    let mut resources = std::collections::BTreeMap::new();
    for t in &texts {
        let report = keel_config::load_str("t.yaml", t, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        for r in report.resources {
            resources.insert(r.key(), Arc::new(r));
        }
    }
    let mesh = Mesh::new(Snapshot {
        version: 1,
        resources,
    })
    .with_telemetry(Some(("10.88.0.1".into(), 9091)))
    .with_policy(Some(("10.88.0.1".into(), 9091)));
    let types = [
        model::LISTENER_TYPE,
        model::ROUTE_TYPE,
        model::CLUSTER_TYPE,
        model::ENDPOINT_TYPE,
    ];
    let mut out = Vec::new();
    for node in [
        "sidecar~10.88.0.5~productpage-v1.default~default.svc.cluster.local",
        "router~10.88.0.100~gw.istio-system~istio-system.svc.cluster.local",
    ] {
        let snap = proxy_snapshot(&mesh, &Proxy::parse(node).unwrap());
        for (i, t) in types.iter().enumerate() {
            for any in snap.types[*t].iter().map(|(_, a)| a) {
                // The seed itself converts: mutations start from something valid.
                model::validate(t, std::slice::from_ref(any)).unwrap();
                out.push((i as u8, any.value.clone()));
            }
        }
    }
    out
}

#[test]
fn the_xds_target_survives_random_and_mutated_resources() {
    let seeds = seeds();
    assert!(seeds.len() > 20, "{} seeds", seeds.len());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..3000 {
        let n = rng.below(300);
        let _ = fuzzing::xds(&rng.bytes(n));
    }
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let (t, seed) = &seeds[rng.below(seeds.len())];
        let mut data = seed.clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] ^= 1 << rng.below(8);
                }
                1 if !data.is_empty() => {
                    let i = rng.below(data.len());
                    data[i] = rng.next() as u8;
                }
                2 => {
                    let keep = rng.below(data.len() + 1);
                    data.truncate(keep);
                }
                _ => {
                    let i = rng.below(data.len() + 1);
                    let n = rng.below(8) + 1;
                    let extra = rng.bytes(n);
                    data.splice(i..i, extra);
                }
            }
        }
        let mut input = vec![*t];
        input.extend_from_slice(&data);
        if fuzzing::xds(&input) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    // The mutations reach both ends: resources that still convert, and NACKs.
    assert!(
        accepted > 1000 && refused > 1000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn the_http_edge_target_survives_odd_hosts_paths_and_heads() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let pieces: [&[u8]; 12] = [
        b"reviews:9080",
        b"REVIEWS",
        b"*.svc.cluster.local",
        b"/re/12/x",
        b"/exact",
        b"q=1&q",
        b"jason",
        b"sticky=\"abc\"; a=b",
        b"websocket, Upgrade",
        b"HTTP/1.1 101 Switching\r\nupgrade: websocket\r\n\r\nrest",
        b"HTTP/1.1 abc\r\n\r\n",
        b"\xff\xfe",
    ];
    for _ in 0..20_000 {
        let mut data = Vec::new();
        for field in 0..4 {
            if rng.below(3) == 0 {
                let n = rng.below(40);
                data.extend(rng.bytes(n).into_iter().filter(|b| *b != 0));
            } else {
                data.extend_from_slice(pieces[rng.below(pieces.len())]);
            }
            if field < 3 {
                data.push(0);
            }
        }
        fuzzing::http_edge(&data);
    }
}

#[test]
fn the_tls_hello_target_survives_mutated_client_hellos() {
    // A real ClientHello (rustls, with SNI and ALPN), then bit flips, cuts and splices.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from("nginx.example.com").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(matches!(
        keel_proxy::inspect::client_hello(&hello),
        keel_proxy::inspect::Hello::Tls {
            server_name: Some(_),
            ..
        }
    ));
    let mut rng = Rng(0x5151_7a7a_0b0b_c3c3);
    let mut outcomes = std::collections::BTreeSet::new();
    for _ in 0..20_000 {
        let mut data = hello.clone();
        for _ in 0..=rng.below(4) {
            match rng.below(4) {
                0 => {
                    let i = rng.below(data.len().max(1));
                    if let Some(b) = data.get_mut(i) {
                        *b ^= 1 << rng.below(8);
                    }
                }
                1 => data.truncate(rng.below(data.len() + 1)),
                2 => {
                    let i = rng.below(data.len() + 1);
                    let n = rng.below(8);
                    let junk = rng.bytes(n);
                    data.splice(i..i, junk);
                }
                _ => {
                    // A length field (record or handshake) set to something else.
                    let i = [3usize, 4, 6, 7, 8][rng.below(5)];
                    if let Some(b) = data.get_mut(i) {
                        *b = rng.bytes(1)[0];
                    }
                }
            }
        }
        fuzzing::tls_hello(&data);
        outcomes.insert(
            format!("{:?}", keel_proxy::inspect::client_hello(&data))
                .chars()
                .take(6)
                .collect::<String>(),
        );
    }
    // The mutations reach every outcome: complete, incomplete and not TLS.
    assert!(outcomes.len() >= 3, "{outcomes:?}");
}
