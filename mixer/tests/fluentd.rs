//! The fluentd adapter against a forward-protocol receiver (decoding with rmpv, acking
//! chunks as fluentd's in_forward does): every entry arrives, in order, across a receiver
//! restart; past the buffer, drops are counted, not hidden.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, UNIX_EPOCH};

use keel_attributes::Value;
use keel_config::mixer::FluentdParams;
use keel_mixer::adapter::fluentd::{Sink, entry};
use keel_mixer::names::Resolver;
use keel_mixer::{Instance, InstanceBody};
mod common;
use common::{Received, free_port, receiver};

fn log(seq: i64) -> Instance {
    Instance {
        name: "newlog.logentry.istio-system".into(),
        body: InstanceBody::LogEntry {
            variables: BTreeMap::from([
                ("seq".to_owned(), Value::Int64(seq)),
                ("source".to_owned(), Value::String("productpage".into())),
                ("responseSize".to_owned(), Value::Int64(178)),
                (
                    "latency".to_owned(),
                    Value::Duration(Duration::from_nanos(2_245_269)),
                ),
            ]),
            timestamp: UNIX_EPOCH + Duration::from_secs(1_543_222_846),
            severity: "info".into(),
        },
    }
}

async fn wait_for(got: &Received, n: usize) {
    let start = Instant::now();
    while got.lock().unwrap().len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "only {} of {n} arrived",
            got.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn seqs(got: &Received) -> Vec<i64> {
    got.lock()
        .unwrap()
        .iter()
        .map(|(_, r)| r["seq"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_arrives_in_order_across_a_receiver_restart() {
    let port = free_port();
    let got: Received = Arc::default();
    let rx = receiver(port, got.clone()).await;
    let params = FluentdParams {
        address: Some(format!("127.0.0.1:{port}")),
        instance_buffer_size: Some(100),
        ..Default::default()
    };
    let sink = Sink::start(params.clone(), Resolver::default());
    for i in 0..50 {
        assert!(sink.offer(entry(&params, &log(i)).unwrap()));
    }
    wait_for(&got, 50).await;
    {
        let g = got.lock().unwrap();
        let (tag, r) = &g[0];
        assert_eq!(tag, "newlog.logentry.istio-system");
        assert_eq!(r["source"].as_str(), Some("productpage"));
        assert_eq!(r["responseSize"].as_i64(), Some(178));
        assert_eq!(r["latency"].as_str(), Some("2.245269ms"));
        assert_eq!(r["severity"].as_str(), Some("info"));
    }

    // The receiver goes away; entries wait in the buffer and arrive once it is back.
    rx.abort();
    let _ = rx.await;
    for i in 50..80 {
        assert!(sink.offer(entry(&params, &log(i)).unwrap()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _rx = receiver(port, got.clone()).await;
    wait_for(&got, 80).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = seqs(&got);
    s.dedup();
    assert_eq!(s, (0..80).collect::<Vec<_>>(), "every entry once, in order");
    assert_eq!(sink.dropped.load(Ordering::Relaxed), 0);
    assert_eq!(sink.delivered.load(Ordering::Relaxed), 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_buffer_entries_are_dropped_and_counted() {
    let port = free_port();
    let params = FluentdParams {
        address: Some(format!("127.0.0.1:{port}")),
        instance_buffer_size: Some(10),
        integer_duration: Some(true),
        ..Default::default()
    };
    let sink = Sink::start(params.clone(), Resolver::default());
    // Nobody listens: the first entry is taken into a batch that waits for the receiver...
    assert!(sink.offer(entry(&params, &log(0)).unwrap()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and the buffer holds ten more.
    let accepted = (1..26)
        .filter(|i| sink.offer(entry(&params, &log(*i)).unwrap()))
        .count();
    assert_eq!(accepted, 10);
    assert_eq!(sink.dropped.load(Ordering::Relaxed), 15);
    let got: Received = Arc::default();
    let _rx = receiver(port, got.clone()).await;
    wait_for(&got, 11).await;
    assert_eq!(seqs(&got), (0..11).collect::<Vec<_>>());
    // integerDuration: milliseconds as an integer.
    assert_eq!(got.lock().unwrap()[0].1["latency"].as_i64(), Some(2));
}

/// The test receiver, checked against the reference sender (Python's fluent-logger, installed
/// by `cargo xtask test`; `KEEL_PYTHON` names the interpreter): what it decodes from a real
/// Fluentd client is what was sent, so what it decodes from ours can be trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_agrees_with_the_reference_sender() {
    let python = std::env::var_os("KEEL_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/envoy-venv/bin/python")
        });
    let port = free_port();
    let got: Received = Arc::default();
    let _rx = receiver(port, got.clone()).await;
    let script = format!(
        r#"
import sys
from fluent import sender
for precise in (False, True):
    s = sender.FluentSender("keel", host="127.0.0.1", port={port}, nanosecond_precision=precise)
    for i in range(5):
        if not s.emit("newlog", {{"seq": i + (5 if precise else 0), "source": "productpage", "responseSize": 178, "latency": "2.245269ms"}}):
            print(s.last_error, file=sys.stderr); sys.exit(1)
    s.close()
"#
    );
    let out = tokio::process::Command::new(&python)
        .args(["-c", &script])
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `cargo xtask test`, which installs fluent-logger, or set KEEL_PYTHON)",
                python.display()
            )
        });
    assert!(
        out.status.success(),
        "fluent-logger failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&got, 10).await;
    // Two senders, two connections: each one's records in order, the two interleaved freely.
    let all = seqs(&got);
    let first: Vec<i64> = all.iter().copied().filter(|s| *s < 5).collect();
    let second: Vec<i64> = all.iter().copied().filter(|s| *s >= 5).collect();
    assert_eq!(first, (0..5).collect::<Vec<_>>(), "{all:?}");
    assert_eq!(second, (5..10).collect::<Vec<_>>(), "{all:?}");
    let g = got.lock().unwrap();
    assert!(g.iter().all(|(tag, _)| tag == "keel.newlog"), "{g:?}");
    assert_eq!(g[0].1["responseSize"].as_i64(), Some(178));
    assert!(
        g.iter()
            .all(|(_, r)| r["latency"].as_str() == Some("2.245269ms"))
    );
}
