//! Stub proxies for `cargo xtask bench pilot`: COUNT ADS clients on one process, each a
//! sidecar of the benchmark's pods (node id `sidecar~IP~POD.bench~...`), subscribed to
//! clusters, endpoints, listeners and routes like Envoy, ACKing every push (the shared ADS
//! client ACKs before it publishes what it accepted).
//!
//! Prints, for the driver on stdout:
//! - `synced I BYTES CLUSTERS` when client I first holds all four types (BYTES: the
//!   encoded size of everything it holds);
//! - `clusters I N UNIX_NANOS` each time client I's cluster count changes after that.
//!
//! Usage: ads_stubs PILOT_URL COUNT

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use keel_xds::client::{self, AcceptAll, ClientConfig};

const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

/// The benchmark's pod I: its address and name (the same formula as the driver's).
pub fn pod(i: usize) -> (String, String) {
    let n = i + 1;
    (
        format!("10.{}.{}.{}", 1 + n / 65536, (n / 256) % 256, n % 256),
        format!(
            "svc-{}-{}",
            i / 2,
            if i.is_multiple_of(2) { "a" } else { "b" }
        ),
    )
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pilot = args.next().context("usage: ads_stubs PILOT_URL COUNT")?;
    let count: usize = args
        .next()
        .context("usage: ads_stubs PILOT_URL COUNT")?
        .parse()
        .context("COUNT is a number")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for i in 0..count {
            let (ip, name) = pod(i);
            let mut config = ClientConfig::new(
                pilot.clone(),
                format!("sidecar~{ip}~{name}.bench~bench.svc.cluster.local"),
                TYPES.map(str::to_owned).to_vec(),
            );
            config.initial_backoff = std::time::Duration::from_millis(200);
            let (mut rx, task) = client::spawn(config, AcceptAll);
            tasks.push(task);
            let out = out.clone();
            tokio::spawn(async move {
                let mut synced = false;
                let mut clusters = 0;
                loop {
                    let (line, n) = {
                        let s = rx.borrow_and_update();
                        let n = s.types.get(TYPES[0]).map_or(0, |t| t.resources.len());
                        if s.synced && !synced {
                            synced = true;
                            let bytes: usize = s.payloads().map(<[u8]>::len).sum();
                            (Some(format!("synced {i} {bytes} {n}\n")), n)
                        } else if synced && n != clusters {
                            let now = SystemTime::now()
                                .duration_since(UNIX_EPOCH)
                                .unwrap_or_default()
                                .as_nanos();
                            (Some(format!("clusters {i} {n} {now}\n")), n)
                        } else {
                            (None, n)
                        }
                    };
                    clusters = n;
                    if let Some(line) = line {
                        use std::io::Write;
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = o.write_all(line.as_bytes());
                        let _ = o.flush();
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
            // Connect at a steady pace, as a rollout would, not all in one instant.
            if i % 100 == 99 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    Ok(())
}
