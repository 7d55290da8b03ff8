//! Shared by the mixer tests: a Fluentd forward-protocol receiver built on rmpv.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rmpv::Value as Mp;

/// What the receiver got: (tag, record) in arrival order.
pub type Received = Arc<Mutex<Vec<(String, BTreeMap<String, Mp>)>>>;

/// A forward-protocol receiver on `port` (keel_mixer::forward: acks chunks after the
/// events are recorded). Aborting the returned task closes the listener and every connection.
pub async fn receiver(port: u16, got: Received) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let got = got.clone();
            conns.spawn(async move {
                let deliver = move |events: Vec<keel_mixer::forward::Event>| {
                    let mut g = got.lock().unwrap();
                    for e in events {
                        let map = e
                            .record
                            .as_map()
                            .expect("a record is a map")
                            .iter()
                            .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
                            .collect();
                        g.push((e.tag, map));
                    }
                };
                keel_mixer::forward::serve_connection(s, deliver)
                    .await
                    .expect("the sender speaks the forward protocol");
            });
        }
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
