//! Server and client over a real loopback gRPC connection: subscribe, push, ACK, NACK with
//! the reason kept on both sides, consistent multi-type snapshots, and reconnection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use keel_xds::client::{self, ClientConfig, ClientState};
use keel_xds::server::AdsServer;
use keel_xds::status::SyncRegistry;
use keel_xds::{Any, TypeResources, XdsSnapshot};
use tokio::sync::watch;

const A: &str = "example.com/v1/A";
const B: &str = "example.com/v1/B";

fn snapshot(version: &str, a: &[&str], b: &[&str]) -> Arc<XdsSnapshot> {
    let mut snap = XdsSnapshot::default();
    for (t, names) in [(A, a), (B, b)] {
        let mut tr = TypeResources::new(version.to_owned());
        for n in names {
            tr.insert(
                (*n).into(),
                Arc::new(Any {
                    type_url: t.to_owned(),
                    value: n.as_bytes().to_vec(),
                }),
            );
        }
        snap.types.insert(t.to_owned(), Arc::new(tr));
    }
    Arc::new(snap)
}

/// A server on its own runtime and thread, so stopping it drops every connection at once,
/// as a process that dies would.
struct TestServer {
    registry: Arc<SyncRegistry>,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    fn start(rx: watch::Receiver<Arc<XdsSnapshot>>, addr: std::net::SocketAddr) -> Self {
        let server = AdsServer::new(rx);
        let registry = server.registry();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.spawn(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                let _ = tonic::transport::Server::builder()
                    .add_service(server.into_service())
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await;
            });
            let _ = stop_rx.recv();
            rt.shutdown_background();
        });
        ready_rx.recv().unwrap();
        TestServer {
            registry,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn until(
    rx: &mut watch::Receiver<Arc<ClientState>>,
    what: &str,
    f: impl Fn(&ClientState) -> bool,
) -> Arc<ClientState> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            {
                let s = rx.borrow_and_update().clone();
                if f(&s) {
                    return s;
                }
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

fn names(s: &ClientState, t: &str) -> Vec<String> {
    s.types[t]
        .resources
        .iter()
        .map(|a| String::from_utf8(a.value.clone()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_acks_nacks_and_reconnects() {
    let (snap_tx, snap_rx) = watch::channel(snapshot("1", &["a1"], &["b1"]));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = TestServer::start(snap_rx.clone(), addr);
    let registry = server.registry.clone();

    let mut config = ClientConfig::new(
        format!("http://{addr}"),
        "test-node",
        vec![A.into(), B.into()],
    );
    config.consistent = true;
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    let validator = |_: &str, resources: &[Any]| -> Result<(), String> {
        match resources.iter().find(|r| r.value == b"bad") {
            Some(_) => Err("resource \"bad\" is not acceptable".to_owned()),
            None => Ok(()),
        }
    };
    let (mut rx, _task) = client::spawn(config, validator);

    let s = until(&mut rx, "first sync", |s| s.synced).await;
    assert_eq!(names(&s, A), ["a1"]);
    assert_eq!(names(&s, B), ["b1"]);

    // A change to both types arrives as one state.
    snap_tx.send(snapshot("2", &["a1", "a2"], &["b2"])).unwrap();
    let s = until(&mut rx, "version 2", |s| s.types[A].version == "2").await;
    assert_eq!(
        s.types[B].version, "2",
        "the client published half a snapshot"
    );
    assert_eq!(names(&s, B), ["b2"]);

    // The server learns of the ACKs.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let streams = registry.streams();
            if streams.len() == 1
                && streams[0].node_id == "test-node"
                && streams[0]
                    .types
                    .get(A)
                    .and_then(|t| t.acked_version.as_deref())
                    == Some("2")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("server saw the ACK of version 2");

    // A bad push is NACKed: the client keeps version 2, the server keeps the reason.
    snap_tx.send(snapshot("3", &["bad"], &["b3"])).unwrap();
    let s = until(&mut rx, "a NACK", |s| s.last_nack.is_some()).await;
    assert_eq!(s.types[A].version, "2");
    assert_eq!(
        s.last_nack.as_ref().unwrap().1,
        "resource \"bad\" is not acceptable"
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let streams = registry.streams();
            if let Some((v, reason)) = streams
                .first()
                .and_then(|s| s.types.get(A))
                .and_then(|t| t.nacked.clone())
            {
                assert_eq!(v, "3");
                assert!(reason.contains("not acceptable"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("server kept the NACK");

    // The server goes away: the client keeps its state and says it is disconnected.
    server.stop();
    let s = until(&mut rx, "disconnect", |s| !s.connected).await;
    assert_eq!(s.types[A].version, "2");

    // It comes back on the same address: the client reconnects and syncs the newest state.
    snap_tx.send(snapshot("4", &["a4"], &["b4"])).unwrap();
    let _server = TestServer::start(snap_rx, addr);
    let s = until(&mut rx, "version 4 after reconnect", |s| {
        s.connected && s.types[A].version == "4"
    })
    .await;
    assert_eq!(names(&s, A), ["a4"]);
    assert_eq!(s.types[B].version, "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_streams_apply_changes_and_removals_and_resume_after_reconnect() {
    let (snap_tx, snap_rx) = watch::channel(snapshot("1", &["a1"], &["b1"]));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut server = TestServer::start(snap_rx.clone(), addr);
    let mut config = ClientConfig::new(
        format!("http://{addr}"),
        "delta-node",
        vec![A.into(), B.into()],
    );
    config.delta = true;
    config.initial_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(100);
    let validator = |_: &str, resources: &[Any]| -> Result<(), String> {
        match resources.iter().find(|r| r.value == b"bad") {
            Some(_) => Err("resource \"bad\" is not acceptable".to_owned()),
            None => Ok(()),
        }
    };
    let (mut rx, _task) = client::spawn(config, validator);
    let sorted = |s: &ClientState, t: &str| {
        let mut n = names(s, t);
        n.sort();
        n
    };

    let s = until(&mut rx, "first sync", |s| s.synced).await;
    assert_eq!(sorted(&s, A), ["a1"]);
    assert_eq!(s.types[A].names, ["a1"], "delta keeps resource names");

    // An addition and a removal arrive as changes and are applied to what the client holds.
    snap_tx.send(snapshot("2", &["a1", "a2"], &["b2"])).unwrap();
    let s = until(&mut rx, "a2 and b2", |s| {
        sorted(s, A) == ["a1", "a2"] && sorted(s, B) == ["b2"]
    })
    .await;
    assert_eq!(s.types[B].names, ["b2"], "b1 was removed");

    // A bad resource is NACKed; the rest of the type stays as it was.
    snap_tx
        .send(snapshot("3", &["a1", "a2", "bad"], &["b2"]))
        .unwrap();
    let s = until(&mut rx, "a NACK", |s| s.last_nack.is_some()).await;
    assert_eq!(sorted(&s, A), ["a1", "a2"]);
    assert!(s.last_nack.as_ref().unwrap().1.contains("not acceptable"));

    // Away: a1 is removed and a3 added while the client is disconnected; on reconnect it
    // says what it holds and ends up with exactly the server's set.
    server.stop();
    until(&mut rx, "disconnect", |s| !s.connected).await;
    snap_tx.send(snapshot("4", &["a2", "a3"], &["b2"])).unwrap();
    let _server = TestServer::start(snap_rx, addr);
    let s = until(&mut rx, "the set after reconnect", |s| {
        s.connected && sorted(s, A) == ["a2", "a3"]
    })
    .await;
    assert_eq!(sorted(&s, B), ["b2"]);
}

/// A push larger than tonic's default 4 MiB message limit (a mesh of some ten thousand
/// services) reaches the client whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_larger_than_four_mebibytes_arrives() {
    let big: Vec<String> = (0..6)
        .map(|i| format!("{i}{}", "x".repeat(1 << 20)))
        .collect();
    let names_in: Vec<&str> = big.iter().map(String::as_str).collect();
    let (_snap_tx, snap_rx) = watch::channel(snapshot("1", &names_in, &[]));
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let _server = TestServer::start(snap_rx, addr);
    let config = ClientConfig::new(format!("http://{addr}"), "big-node", vec![A.into()]);
    let (mut rx, _task) = client::spawn(config, client::AcceptAll);
    let s = until(&mut rx, "the 6 MiB push", |s| {
        s.types.get(A).is_some_and(|t| t.resources.len() == 6)
    })
    .await;
    let total: usize = s.types[A].resources.iter().map(|a| a.value.len()).sum();
    assert!(total > 6 << 20, "{total} bytes");
}
