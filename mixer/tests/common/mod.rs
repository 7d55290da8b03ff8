//! Shared by the mixer tests: a Fluentd forward-protocol receiver built on rmpv.

#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rmpv::Value as Mp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the receiver got: (tag, record) in arrival order.
pub type Received = Arc<Mutex<Vec<(String, BTreeMap<String, Mp>)>>>;

/// A forward-protocol receiver on `port` (Message, Forward and PackedForward modes; acks
/// chunks). Aborting the returned task closes the listener and every connection.
pub async fn receiver(port: u16, got: Received) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let got = got.clone();
            conns.spawn(async move {
                let mut buf: Vec<u8> = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    let n = match s.read(&mut tmp).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&tmp[..n]);
                    loop {
                        let mut cur = std::io::Cursor::new(buf.as_slice());
                        let Ok(msg) = rmpv::decode::read_value(&mut cur) else {
                            break;
                        };
                        let used = usize::try_from(cur.position()).unwrap();
                        buf.drain(..used);
                        let arr = msg
                            .as_array()
                            .expect("a forward message is an array")
                            .clone();
                        let tag = arr[0].as_str().unwrap().to_owned();
                        let mut records = Vec::new();
                        let options = match &arr[1] {
                            Mp::Array(entries) => {
                                for e in entries {
                                    records.push(e.as_array().unwrap()[1].clone());
                                }
                                arr.get(2).cloned()
                            }
                            Mp::Binary(_) | Mp::String(_) => {
                                let bytes: Vec<u8> = match &arr[1] {
                                    Mp::Binary(b) => b.clone(),
                                    Mp::String(s) => s.as_bytes().to_vec(),
                                    _ => unreachable!(),
                                };
                                let mut c = std::io::Cursor::new(bytes.as_slice());
                                while (c.position() as usize) < bytes.len() {
                                    let e = rmpv::decode::read_value(&mut c).unwrap();
                                    records.push(e.as_array().unwrap()[1].clone());
                                }
                                arr.get(2).cloned()
                            }
                            _ => {
                                records.push(arr[2].clone());
                                arr.get(3).cloned()
                            }
                        };
                        {
                            let mut g = got.lock().unwrap();
                            for r in records {
                                let map = r
                                    .as_map()
                                    .unwrap()
                                    .iter()
                                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
                                    .collect();
                                g.push((tag.clone(), map));
                            }
                        }
                        if let Some(chunk) = options.as_ref().and_then(|o| {
                            o.as_map()?
                                .iter()
                                .find(|(k, _)| k.as_str() == Some("chunk"))
                                .map(|(_, v)| v.clone())
                        }) {
                            let mut out = Vec::new();
                            rmpv::encode::write_value(
                                &mut out,
                                &Mp::Map(vec![(Mp::from("ack"), chunk)]),
                            )
                            .unwrap();
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
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
