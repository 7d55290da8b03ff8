//! The mixer service, in process: config from a real galley, reports over gRPC ALS as a
//! proxy sends them, metrics scraped over HTTP as Prometheus would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Address, Node, SocketAddress, address};
use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn addr(ip: &str) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            ..Default::default()
        })),
    })
}

fn entry(size: u64) -> HttpAccessLogEntry {
    HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon {
            downstream_remote_address: addr("10.0.0.2"),
            upstream_cluster: "inbound|9080||details.default.svc.cluster.local".to_owned(),
            ..Default::default()
        }),
        request: Some(HttpRequestProperties {
            path: "/details/0".to_owned(),
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            response_body_bytes: size,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A proxy's report stream as details' inbound sidecar sends it: the identifier first, then
/// one message per batch.
fn details_stream(batches: Vec<Vec<HttpAccessLogEntry>>) -> Vec<StreamAccessLogsMessage> {
    let mut messages = vec![StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: Some(Node {
                id: "sidecar~10.0.0.1~details-v1-5d8f7c9b4-a.default~default.svc.cluster.local"
                    .into(),
                ..Default::default()
            }),
            log_name: "inbound".into(),
        }),
        log_entries: None,
    }];
    for log_entry in batches {
        messages.push(StreamAccessLogsMessage {
            identifier: None,
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry })),
        });
    }
    messages
}

fn sum_of(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_from_a_proxy_reach_prometheus_through_galley_config() {
    let dir = std::env::temp_dir().join(format!("keel-mixer-service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let galley = keel_galley::start(&keel_galley::Args {
        config_dir: dir.join("config"),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        default_namespace: "default".into(),
        rescan_ms: 100,
        log_format: "text".into(),
    })
    .await
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts = vec![(
        "bookinfo.yaml".to_owned(),
        std::fs::read_to_string(root.join("samples/bookinfo/platform/kube/bookinfo.yaml")).unwrap(),
    )];
    texts.push((
        "pods.yaml".to_owned(),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: details-v1-5d8f7c9b4-a, namespace: default, labels: {app: details, version: v1, pod-template-hash: 5d8f7c9b4}}\nspec:\n  containers: [{name: d, image: x}]\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: productpage-v1-5d8f7c9b4-b, namespace: default, labels: {app: productpage, version: v1, pod-template-hash: 5d8f7c9b4}}\nspec:\n  containers: [{name: p, image: x}]\nstatus: {phase: Running, podIP: 10.0.0.2}\n".to_owned(),
    ));
    for (name, text) in &texts {
        galley
            .state
            .galley
            .apply(
                &[keel_galley::core::Source {
                    name: name.clone(),
                    text: text.clone(),
                }],
                "default",
                false,
            )
            .unwrap();
    }
    let hosts_file = dir.join("hosts");
    std::fs::write(
        &hosts_file,
        "127.0.0.1\tfluentd-es.logging.svc.cluster.local fluentd-es.logging.svc fluentd-es.logging\n",
    )
    .unwrap();
    let mixer = keel_mixer::server::start(&keel_mixer::server::Args {
        galley: format!("http://{}", galley.grpc_addr),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        prometheus_addr: "127.0.0.1:0".parse().unwrap(),
        monitoring_addr: "127.0.0.1:0".parse().unwrap(),
        config_namespace: "istio-system".into(),
        queue: 1000,
        log_format: "text".into(),
        hosts_file: Some(hosts_file.clone()),
    })
    .await
    .unwrap();
    // Ready once galley's snapshot is in.
    let mut ready = false;
    for _ in 0..100 {
        if get(mixer.monitoring_addr, "/ready").await.starts_with("ok") {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "mixer never became ready");

    // The telemetry config arrives after mixer started: no restart needed.
    let telemetry =
        std::fs::read_to_string(root.join("samples/bookinfo/telemetry/new_telemetry.yaml"))
            .unwrap();
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "new_telemetry.yaml".into(),
                text: telemetry,
            }],
            "istio-system",
            false,
        )
        .unwrap();
    let mut rules = String::new();
    for _ in 0..100 {
        rules = get(mixer.monitoring_addr, "/debug/configz").await;
        if rules.contains("\"rules\": 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rules.contains("\"rules\": 2"), "{rules}");
    assert!(rules.contains("\"problems\": []"), "{rules}");

    // A proxy's stream: the identifier first, then batches.
    let mut client = AccessLogServiceClient::connect(format!("http://{}", mixer.grpc_addr))
        .await
        .unwrap();
    let n = 25u64;
    let messages = details_stream(
        (0..5)
            .map(|batch| (0..n / 5).map(|i| entry(170 + batch + i)).collect())
            .collect(),
    );
    client
        .stream_access_logs(tokio_stream::iter(messages))
        .await
        .unwrap();

    let mut text = String::new();
    for _ in 0..100 {
        text = get(mixer.prometheus_addr, "/metrics").await;
        if sum_of(&text, "istio_double_request_count") >= 2.0 * n as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sum_of(&text, "istio_double_request_count"),
        2.0 * n as f64,
        "{text}"
    );
    assert!(
        text.contains("source=\"productpage.default.svc.cluster.local\",destination=\"details.default.svc.cluster.local\",message=\"twice the fun!\""),
        "{text}"
    );
    let own = get(mixer.monitoring_addr, "/metrics").await;
    assert!(
        own.contains("mixer_reports_total{protocol=\"http\"} 25"),
        "{own}"
    );
    assert!(own.contains("mixer_reports_dropped_total 0"), "{own}");

    // A stdio handler writing to a file: one JSON line per report, appended.
    let log_path = dir.join("access.log");
    let file_handler = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: stdio\nmetadata: {{name: tofile, namespace: istio-system}}\nspec:\n  logStream: FILE\n  outputPath: {}\n---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: logtofile, namespace: istio-system}}\nspec:\n  actions:\n  - handler: tofile.stdio\n    instances: [newlog.logentry]\n",
        log_path.display()
    );
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "tofile.yaml".into(),
                text: file_handler,
            }],
            "istio-system",
            false,
        )
        .unwrap();
    for _ in 0..100 {
        if get(mixer.monitoring_addr, "/debug/configz")
            .await
            .contains("\"rules\": 3")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let batch = details_stream(vec![(0..4).map(|_| entry(178)).collect()]);
    client
        .stream_access_logs(tokio_stream::iter(batch))
        .await
        .unwrap();
    let mut lines = Vec::new();
    for _ in 0..100 {
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        if lines.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.len(), 4, "{lines:?}");
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["instance"], "newlog.logentry.istio-system");
        assert_eq!(v["source"], "productpage");
        assert_eq!(v["destination"], "details");
        assert_eq!(v["responseSize"], 178);
    }

    // The walkthrough's fluentd-istio.yaml with only the port changed: mixer finds
    // fluentd-es.logging through its hosts file, as in the local mesh, and every report
    // arrives as one log record.
    let fluentd_port = common::free_port();
    let got: common::Received = std::sync::Arc::default();
    let _receiver = common::receiver(fluentd_port, got.clone()).await;
    let fluentd_yaml =
        std::fs::read_to_string(root.join("samples/bookinfo/telemetry/fluentd-istio.yaml"))
            .unwrap()
            .replace(
                "fluentd-es.logging:24224",
                &format!("fluentd-es.logging:{fluentd_port}"),
            );
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "fluentd-istio.yaml".into(),
                text: fluentd_yaml,
            }],
            "istio-system",
            false,
        )
        .unwrap();
    for _ in 0..100 {
        if get(mixer.monitoring_addr, "/debug/configz")
            .await
            .contains("\"rules\": 4")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reports = 40;
    let stream = details_stream(
        (0..4)
            .map(|_| (0..reports / 4).map(|_| entry(178)).collect())
            .collect(),
    );
    client
        .stream_access_logs(tokio_stream::iter(stream))
        .await
        .unwrap();
    for _ in 0..200 {
        if got.lock().unwrap().len() >= reports as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let g = got.lock().unwrap();
        assert_eq!(g.len(), reports as usize, "nothing lost, nothing doubled");
        for (tag, record) in g.iter() {
            assert_eq!(tag, "newlog.logentry.istio-system");
            assert_eq!(record["source"].as_str(), Some("productpage"));
            assert_eq!(record["destination"].as_str(), Some("details"));
            assert_eq!(record["responseSize"].as_i64(), Some(178));
            assert_eq!(record["severity"].as_str(), Some("info"));
        }
    }

    // A stalled adapter stalls nothing else: a second fluentd handler whose receiver
    // accepts but never acknowledges; metrics and the first receiver keep up.
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let black_hole_addr = black_hole.local_addr().unwrap();
    let _hole = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            held.push(s); // read nothing, answer nothing
        }
    });
    let stalled = format!(
        "apiVersion: config.istio.io/v1alpha2\nkind: fluentd\nmetadata: {{name: stalled, namespace: istio-system}}\nspec:\n  address: {black_hole_addr}\n  instanceBufferSize: 5\n---\napiVersion: config.istio.io/v1alpha2\nkind: rule\nmetadata: {{name: tostalled, namespace: istio-system}}\nspec:\n  actions:\n  - handler: stalled.fluentd\n    instances: [newlog.logentry]\n"
    );
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "stalled.yaml".into(),
                text: stalled,
            }],
            "istio-system",
            false,
        )
        .unwrap();
    for _ in 0..100 {
        if get(mixer.monitoring_addr, "/debug/configz")
            .await
            .contains("\"rules\": 5")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = sum_of(
        &get(mixer.prometheus_addr, "/metrics").await,
        "istio_double_request_count",
    );
    let records_before = got.lock().unwrap().len();
    let more = 30;
    let burst = || details_stream(vec![(0..more).map(|_| entry(178)).collect()]);
    // Two bursts, the second once the stalled handler's first batch is stuck waiting for
    // its ack: then its buffer (5) is all the second burst can use.
    for round in 1..=2u32 {
        client
            .stream_access_logs(tokio_stream::iter(burst()))
            .await
            .unwrap();
        let want = before + 2.0 * f64::from(more * round);
        let want_records = records_before + (more * round) as usize;
        let mut after = before;
        for _ in 0..100 {
            after = sum_of(
                &get(mixer.prometheus_addr, "/metrics").await,
                "istio_double_request_count",
            );
            if after >= want && got.lock().unwrap().len() >= want_records {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(after, want, "round {round}");
        assert_eq!(got.lock().unwrap().len(), want_records, "round {round}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let own = get(mixer.monitoring_addr, "/metrics").await;
    let dropped: f64 = own
        .lines()
        .find(|l| {
            l.starts_with("mixer_adapter_dropped_total{handler=\"stalled.fluentd.istio-system\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (f64::from(more) - 5.0..=2.0 * f64::from(more)).contains(&dropped),
        "{own}"
    );

    // A stream that does not say who it is is refused, not guessed at.
    let anonymous = vec![StreamAccessLogsMessage {
        identifier: None,
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![entry(1)],
        })),
    }];
    let err = client
        .stream_access_logs(tokio_stream::iter(anonymous))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    mixer.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
