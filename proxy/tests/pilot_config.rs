//! Everything pilot emits for the walkthrough converts (keel-proxy would ACK it), and what
//! keel-proxy does not implement is refused with the resource and field named (a NACK).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use keel_config::store::Snapshot;
use keel_pilot::proxy::Proxy;
use keel_pilot::snapshot::{Mesh, proxy_snapshot};
use keel_proxy::model::{self, Config, RouteAction};

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn mesh(extra_files: &[&str], extra_yaml: &str) -> Mesh {
    let samples = shared().join("istio-samples/1.0/samples/bookinfo");
    // A test's own DestinationRule replaces the sample's (pilot uses one rule per host).
    let rules = if extra_yaml.is_empty() {
        std::fs::read_to_string(samples.join("networking/destination-rule-all.yaml")).unwrap()
    } else {
        String::new()
    };
    let mut texts = vec![
        std::fs::read_to_string(samples.join("platform/kube/bookinfo.yaml")).unwrap(),
        rules,
        std::fs::read_to_string(samples.join("networking/bookinfo-gateway.yaml")).unwrap(),
        extra_yaml.to_owned(),
    ];
    for (i, (app, v)) in [
        ("details", "v1"),
        ("ratings", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
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
    for f in extra_files {
        texts.push(std::fs::read_to_string(samples.join("networking").join(f)).unwrap());
    }
    let mut resources = std::collections::BTreeMap::new();
    for t in texts.iter().filter(|t| !t.trim().is_empty()) {
        let report = keel_config::load_str("t.yaml", t, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        for r in report.resources {
            resources.insert(r.key(), Arc::new(r));
        }
    }
    Mesh::new(Snapshot {
        version: 1,
        resources,
    })
    .with_telemetry(Some(("10.88.0.1".into(), 9091)))
    .with_policy(Some(("10.88.0.1".into(), 9091)))
}

fn convert(mesh: &Mesh, node: &str) -> Result<Config, String> {
    let snap = proxy_snapshot(mesh, &Proxy::parse(node).unwrap());
    let mut config = Config::default();
    for (type_url, res) in &snap.types {
        let anys: Vec<_> = res.iter().map(|(_, a)| (**a).clone()).collect();
        model::validate(type_url, &anys)?;
        for any in &anys {
            model::convert_into(&mut config, type_url, any).map_err(|e| e.to_string())?;
        }
    }
    Ok(config)
}

const PRODUCTPAGE: &str = "sidecar~10.88.0.7~productpage-v1.default~default.svc.cluster.local";
const GATEWAY: &str = "router~10.88.0.100~gw.istio-system~istio-system.svc.cluster.local";

#[test]
fn every_walkthrough_config_converts_for_sidecars_and_the_gateway() {
    for file in [
        "virtual-service-all-v1.yaml",
        "virtual-service-reviews-test-v2.yaml",
        "virtual-service-ratings-test-delay.yaml",
        "virtual-service-ratings-test-abort.yaml",
        "virtual-service-reviews-50-v3.yaml",
        "virtual-service-reviews-v3.yaml",
        "virtual-service-reviews-80-20.yaml",
        "virtual-service-reviews-90-10.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
        "virtual-service-reviews-v2-v3.yaml",
        "destination-rule-reviews.yaml",
    ] {
        let m = mesh(&["virtual-service-all-v1.yaml", file], "");
        for node in [PRODUCTPAGE, GATEWAY] {
            let c = convert(&m, node).unwrap_or_else(|e| panic!("{file} for {node}: {e}"));
            assert!(!c.listeners.is_empty() && !c.clusters.is_empty(), "{file}");
        }
    }
    let c = convert(
        &mesh(&["virtual-service-reviews-50-v3.yaml"], ""),
        PRODUCTPAGE,
    )
    .unwrap();
    let reviews = c.routes["9080"]
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "reviews"))
        .unwrap();
    let RouteAction::Forward(f) = &reviews.routes[0].action else {
        panic!("not forwarded")
    };
    assert_eq!(f.clusters.len(), 2, "50/50 is two weighted clusters");
    let c = convert(
        &mesh(&["virtual-service-ratings-test-delay.yaml"], ""),
        PRODUCTPAGE,
    )
    .unwrap();
    let ratings = c.routes["9080"]
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "ratings"))
        .unwrap();
    let delay = ratings.routes[0]
        .fault
        .as_ref()
        .and_then(|f| f.delay)
        .unwrap();
    assert_eq!(delay.0, std::time::Duration::from_secs(7));
    assert!(
        c.listeners
            .values()
            .any(|l| l.use_original_dst && l.address.port() == 15001)
    );
    // Policy checks: productpage's inbound listener asks mixer, naming its service; the
    // outbound side does not check.
    let inbound = &c.listeners["10.88.0.7_9080"];
    let model::NetworkFilter::Http(hcm) = &inbound.chains[0].filter else {
        panic!("inbound 9080 is HTTP")
    };
    let authz = hcm.ext_authz.as_ref().expect("ext_authz on inbound");
    assert_eq!(authz.cluster, "mixer_policy");
    assert!(!authz.failure_mode_allow);
    assert_eq!(authz.status_on_error, 503);
    let model::RouteSource::Inline(table) = &hcm.routes else {
        panic!("inbound routes are inline")
    };
    assert_eq!(
        table.virtual_hosts[0].routes[0].ext_authz,
        model::RouteAuthz::CheckWith(vec![(
            "destination.service.host".into(),
            "productpage.default.svc.cluster.local".into()
        )])
    );
    let model::NetworkFilter::Http(outbound) = &c.listeners["0.0.0.0_9080"].chains[0].filter else {
        panic!("outbound 9080 is HTTP")
    };
    assert!(outbound.ext_authz.is_none());
}

#[test]
fn what_is_not_implemented_is_refused_with_the_field() {
    // TLS origination converts (SNI, CA, names, client certificate); TLS settings keel-proxy
    // does not implement (certificates over SDS) are refused with the field.
    let tls = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings-tls}\nspec:\n  host: ratings\n  trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, subjectAltNames: [ratings.example], sni: ratings.example}}\n";
    let c = convert(&mesh(&[], tls), PRODUCTPAGE).unwrap();
    let ratings = c
        .clusters
        .values()
        .find(|c| c.name == "outbound|9080||ratings.default.svc.cluster.local")
        .expect("the ratings cluster");
    assert_eq!(
        ratings.tls,
        Some(model::ClientTls {
            sni: "ratings.example".into(),
            client_certificate: Some((
                model::Pem::File("/c.pem".into()),
                model::Pem::File("/k.pem".into())
            )),
            trusted_ca: Some(model::Pem::File("/ca.pem".into())),
            subject_alt_names: vec!["ratings.example".into()],
            alpn: vec![],
        })
    );
    {
        use envoy_types::pb::envoy::config::cluster::v3::Cluster as PbCluster;
        use envoy_types::pb::envoy::config::core::v3::TransportSocket;
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
            CommonTlsContext, SdsSecretConfig, UpstreamTlsContext,
        };
        use prost::Name;
        let ctx = UpstreamTlsContext {
            common_tls_context: Some(CommonTlsContext {
                tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                    name: "default".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let pb = PbCluster {
            name: "sds-cluster".into(),
            transport_socket: Some(TransportSocket {
                name: "envoy.transport_sockets.tls".into(),
                config_type: Some(ConfigType::TypedConfig(prost_types_any(
                    UpstreamTlsContext::type_url(),
                    prost::Message::encode_to_vec(&ctx),
                ))),
            }),
            ..Default::default()
        };
        let err = model::cluster(&pb).unwrap_err();
        assert_eq!(err.resource, "sds-cluster");
        assert!(
            err.field.contains("tls_certificate_sds_secret_configs"),
            "{err}"
        );
    }
    // Consistent hashing converts: a ring-hash cluster, and the VirtualService route hashes
    // the header.
    let hash = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings-hash}\nspec:\n  host: ratings\n  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - route: [{destination: {host: ratings}}]\n";
    let c = convert(&mesh(&[], hash), PRODUCTPAGE).unwrap();
    let ratings = c.routes["9080"]
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "ratings"))
        .unwrap();
    let RouteAction::Forward(f) = &ratings.routes[0].action else {
        panic!("not forwarded")
    };
    assert_eq!(f.hash_policy, [model::HashPolicy::Header("x-user".into())]);
    let lb = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings-lb}\nspec:\n  host: ratings\n  trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}\n";
    let c = convert(&mesh(&[], lb), PRODUCTPAGE).unwrap();
    let ratings: Vec<_> = c
        .clusters
        .values()
        .filter(|c| c.name.ends_with("ratings.default.svc.cluster.local"))
        .collect();
    assert!(!ratings.is_empty());
    assert!(
        ratings
            .iter()
            .all(|c| c.balancer == model::Balancer::LeastRequest)
    );
    let reuse = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings-reuse}\nspec:\n  host: ratings\n  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 5}}}\n";
    let err = convert(&mesh(&[], reuse), PRODUCTPAGE).unwrap_err();
    assert!(err.contains("max_requests_per_connection"), "{err}");
}

#[test]
fn circuit_breakers_and_outlier_detection_convert_with_istios_numbers() {
    let dr = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: ratings-cb}\nspec:\n  host: ratings\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}\n    outlierDetection: {consecutiveErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}\n";
    let c = convert(&mesh(&[], dr), PRODUCTPAGE).unwrap();
    let ratings = c
        .clusters
        .values()
        .find(|c| c.name == "outbound|9080||ratings.default.svc.cluster.local")
        .expect("the ratings cluster");
    assert_eq!(ratings.limits.max_connections, 1);
    assert_eq!(ratings.limits.max_pending_requests, 1);
    assert_eq!(ratings.limits.max_requests, 1024, "Envoy's default");
    assert_eq!(ratings.max_requests_per_connection, Some(1));
    let od = ratings.outlier.expect("outlier detection");
    assert_eq!(od.consecutive_5xx, 1);
    assert_eq!(od.enforcing_5xx, 100);
    assert_eq!(od.base_ejection_time, std::time::Duration::from_secs(180));
    assert_eq!(od.max_ejection_percent, 100);
}

fn prost_types_any(type_url: String, value: Vec<u8>) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any { type_url, value }
}
