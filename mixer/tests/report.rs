//! Access log entries from both ends of a call become the attribute bags Istio 1.0 users
//! write rules against, and the walkthrough's log entry comes out of them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, Timestamp, UInt32Value};
use keel_attributes::{Manifest, Value};
use keel_config::store::Snapshot;
use keel_mixer::Plan;
use keel_mixer::adapter::stdio;
use keel_mixer::report::{Reporter, ReporterKind, cluster_host, http_attributes};
use keel_pilot::registry::Registry;

fn registry() -> Registry {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts = vec![
        std::fs::read_to_string(root.join("samples/bookinfo/platform/kube/bookinfo.yaml"))
            .expect("bookinfo.yaml"),
    ];
    for (i, (app, v, sa)) in [
        ("details", "v1", "bookinfo-details"),
        ("productpage", "v1", "bookinfo-productpage"),
    ]
    .iter()
    .enumerate()
    {
        texts.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}-5d8f7c9b4-x2x9z, labels: {{app: {app}, version: {v}, pod-template-hash: 5d8f7c9b4}}}}\nspec:\n  serviceAccountName: {sa}\n  containers: [{{name: {app}, image: x}}]\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n",
            i + 1
        ));
    }
    let mut resources = BTreeMap::new();
    for t in texts {
        let report = keel_config::load_str("t.yaml", &t, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        for r in report.resources {
            resources.insert(r.key(), Arc::new(r));
        }
    }
    Registry::from_config(&Snapshot {
        version: 1,
        resources,
    })
}

fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    port,
                ),
            ),
            ..Default::default()
        })),
    })
}

/// productpage (10.0.0.2) calling details (10.0.0.1) for GET /details/0, 178 bytes back.
fn entry(cluster: &str, downstream: &str, upstream: &str) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: addr(downstream, 40000),
            upstream_remote_address: addr(upstream, 9080),
            upstream_cluster: cluster.to_owned(),
            start_time: Some(Timestamp {
                seconds: 1_543_222_846,
                nanos: 541_292_000,
            }),
            duration: Some(PbDuration {
                seconds: 0,
                nanos: 2_245_269,
            }),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            request_method: 1, // GET
            authority: "details:9080".to_owned(),
            path: "/details/0".to_owned(),
            request_headers_bytes: 100,
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            response_body_bytes: 178,
            response_headers_bytes: 120,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn string(bag: &BTreeMap<String, Value>, k: &str) -> String {
    match bag.get(k) {
        Some(v) => v.to_string(),
        None => panic!("{k} missing from {bag:#?}"),
    }
}

#[test]
fn inbound_report_names_both_ends() {
    let reg = registry();
    let reporter = Reporter::from_identifier(
        "sidecar~10.0.0.1~details-v1-5d8f7c9b4-x2x9z.default~default.svc.cluster.local",
        "inbound",
    )
    .expect("node id");
    assert_eq!(reporter.kind, ReporterKind::Inbound);
    let bag = http_attributes(
        &reporter,
        &entry(
            "inbound|9080||details.default.svc.cluster.local",
            "10.0.0.2",
            "127.0.0.1",
        ),
        &reg,
    );
    for (k, want) in [
        ("context.reporter.kind", "inbound"),
        ("context.protocol", "http"),
        ("source.workload.name", "productpage-v1"),
        ("source.name", "productpage-v1-5d8f7c9b4-x2x9z"),
        ("source.namespace", "default"),
        ("source.serviceAccount", "bookinfo-productpage"),
        ("source.service", "productpage.default.svc.cluster.local"),
        ("source.ip", "10.0.0.2"),
        ("destination.workload.name", "details-v1"),
        (
            "destination.uid",
            "kubernetes://details-v1-5d8f7c9b4-x2x9z.default",
        ),
        ("destination.service", "details.default.svc.cluster.local"),
        ("destination.service.name", "details"),
        (
            "destination.owner",
            "kubernetes://apis/apps/v1/namespaces/default/deployments/details-v1",
        ),
        ("request.method", "GET"),
        ("request.path", "/details/0"),
        ("request.host", "details:9080"),
        ("response.code", "200"),
        ("response.size", "178"),
        ("response.total_size", "298"),
        ("response.duration", "2.245269ms"),
        ("request.time", "2018-11-26T09:00:46.541292Z"),
        ("connection.mtls", "false"),
    ] {
        assert_eq!(string(&bag, k), want, "{k}");
    }
    assert_eq!(
        bag.get("destination.labels"),
        Some(&Value::StringMap(BTreeMap::from([
            ("app".to_owned(), "details".to_owned()),
            ("pod-template-hash".to_owned(), "5d8f7c9b4".to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ])))
    );
    assert!(!bag.contains_key("source.user"), "no mTLS, no principal");

    // The walkthrough's log entry, straight from the report.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples/bookinfo/telemetry/new_telemetry.yaml"),
    )
    .expect("new_telemetry.yaml");
    let resources = keel_config::load_str("n.yaml", &text, Some("istio-system")).resources;
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    let outcome = plan.dispatch(&bag);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    let line = outcome
        .dispatches
        .iter()
        .find_map(|d| match &plan.handlers[d.handler].adapter {
            keel_config::mixer::Adapter::Stdio(p) => stdio::format(p, &d.instances[0]),
            _ => None,
        })
        .expect("a log line");
    assert_eq!(
        line.text,
        r#"{"level":"warn","time":"2018-11-26T09:00:46.541292Z","instance":"newlog.logentry.istio-system","destination":"details","latency":"2.245269ms","responseCode":200,"responseSize":178,"source":"productpage","user":"unknown"}"#
    );
}

#[test]
fn outbound_report_finds_the_destination_by_upstream_address() {
    let reg = registry();
    let reporter = Reporter::from_identifier(
        "sidecar~10.0.0.2~productpage-v1-5d8f7c9b4-x2x9z.default~default.svc.cluster.local",
        "outbound",
    )
    .expect("node id");
    let bag = http_attributes(
        &reporter,
        &entry(
            "outbound|9080|v1|details.default.svc.cluster.local",
            "127.0.0.1",
            "10.0.0.1",
        ),
        &reg,
    );
    assert_eq!(string(&bag, "context.reporter.kind"), "outbound");
    assert_eq!(string(&bag, "source.workload.name"), "productpage-v1");
    assert_eq!(string(&bag, "destination.workload.name"), "details-v1");
    assert_eq!(string(&bag, "destination.ip"), "10.0.0.1");
    assert_eq!(
        string(&bag, "destination.service.host"),
        "details.default.svc.cluster.local"
    );
    // An address the registry does not know: only the address, nothing invented.
    let bag = http_attributes(
        &reporter,
        &entry("outbound|443||api.example.com", "127.0.0.1", "192.0.2.9"),
        &reg,
    );
    assert_eq!(
        bag.get("destination.ip"),
        Some(&Value::IpAddress(
            "192.0.2.9".parse::<IpAddr>().expect("ip")
        ))
    );
    assert!(!bag.contains_key("destination.workload.name"));
    assert_eq!(string(&bag, "destination.service"), "api.example.com");
}

#[test]
fn unknown_reporters_and_cluster_names() {
    assert!(Reporter::from_identifier("not-a-node-id", "inbound").is_err());
    assert_eq!(
        cluster_host("outbound|9080|v1|reviews.default.svc.cluster.local"),
        Some("reviews.default.svc.cluster.local")
    );
    assert_eq!(
        cluster_host("inbound|9080||reviews.default.svc.cluster.local"),
        Some("reviews.default.svc.cluster.local")
    );
    assert_eq!(cluster_host("BlackHoleCluster"), None);
    assert_eq!(cluster_host("outbound|9080|v1|"), None);
}
