//! Stub proxies for `cargo xtask bench pilot`: COUNT ADS clients on one process, each a
//! sidecar of the benchmark's pods (node id `sidecar~IP~POD.bench~...`) on its own HTTP/2
//! connection, subscribed to clusters, endpoints, listeners and routes like Envoy (state of
//! the world), ACKing every response as soon as it has read it.
//!
//! They are deliberately light: a response is read for its version, nonce and type, and its
//! resources are counted and measured but not decoded. Two thousand Envoys would each
//! decode on their own core; two thousand stubs share one, and decoding every resource
//! there (a gigabyte per change at the largest size) would measure the stubs, not pilot.
//! What pilot must do (build, encode and send every byte, and handle every ACK) is
//! unchanged.
//!
//! Prints, for the driver on stdout:
//! - `synced I BYTES CLUSTERS` when client I first holds all four types (BYTES: the
//!   encoded size of the resources it holds);
//! - `clusters I N UNIX_NANOS` each time client I's cluster count changes after that.
//!
//! Usage: ads_stubs PILOT_URL COUNT

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::bytes::Buf;
use prost::encoding::{DecodeContext, WireType};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TYPES: [&str; 4] = [
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

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

/// A `DiscoveryResponse` read shallowly: fields 1 (version_info), 4 (type_url) and
/// 5 (nonce); the resources (field 2) counted and their bytes summed, not decoded.
#[derive(Debug, Default)]
struct ShallowResponse {
    version_info: String,
    type_url: String,
    nonce: String,
    resources: usize,
    resource_bytes: usize,
}

impl prost::Message for ShallowResponse {
    fn encode_raw(&self, _buf: &mut impl prost::bytes::BufMut) {
        // Only ever received.
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        use prost::encoding::{skip_field, string};
        match tag {
            1 => string::merge(wire_type, &mut self.version_info, buf, ctx),
            4 => string::merge(wire_type, &mut self.type_url, buf, ctx),
            5 => string::merge(wire_type, &mut self.nonce, buf, ctx),
            2 => {
                // Skipped, not decoded: counted, and measured with its length prefix.
                let before = buf.remaining();
                skip_field(wire_type, tag, buf, ctx)?;
                self.resources += 1;
                self.resource_bytes += before - buf.remaining();
                Ok(())
            }
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        *self = ShallowResponse::default();
    }
}

/// What a stub holds per type: resource count and bytes.
type Held = BTreeMap<String, (usize, usize)>;

/// Opens client I's ADS stream, subscribed to the four types; `tx` carries its requests.
async fn open(
    pilot: &str,
    i: usize,
    tx: &mpsc::Sender<DiscoveryRequest>,
    rx: mpsc::Receiver<DiscoveryRequest>,
) -> Result<tonic::Streaming<ShallowResponse>> {
    let (ip, name) = pod(i);
    let channel = tonic::transport::Endpoint::from_shared(pilot.to_owned())?
        .connect()
        .await
        .context("connecting to pilot")?;
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(256 << 20);
    grpc.ready().await.context("pilot's channel")?;
    let node = Node {
        id: format!("sidecar~{ip}~{name}.bench~bench.svc.cluster.local"),
        cluster: format!("svc-{}", i / 2),
        ..Default::default()
    };
    for (k, t) in TYPES.iter().enumerate() {
        tx.send(DiscoveryRequest {
            node: (k == 0).then(|| node.clone()),
            type_url: (*t).to_owned(),
            ..Default::default()
        })
        .await?;
    }
    let codec = tonic_prost::ProstCodec::<DiscoveryRequest, ShallowResponse>::default();
    Ok(grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            tonic::codegen::http::uri::PathAndQuery::from_static(SOTW_PATH),
            codec,
        )
        .await
        .context("opening the ADS stream")?
        .into_inner())
}

async fn stub(pilot: String, i: usize, out: Arc<Mutex<std::io::Stdout>>) -> Result<()> {
    // Two thousand connections at once can overflow pilot's accept queue: retry opening,
    // as a proxy would (once open, a stream that fails ends the stub).
    let mut attempt = 0;
    let (tx, mut responses) = loop {
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(8);
        match open(&pilot, i, &tx, rx).await {
            Ok(r) => break (tx, r),
            Err(e) if attempt < 20 => {
                attempt += 1;
                eprintln!("stub {i}: {e:#}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut held = Held::new();
    let mut synced = false;
    while let Some(resp) = responses.message().await? {
        tx.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        })
        .await?;
        let before = held.get(TYPES[0]).map_or(0, |h| h.0);
        held.insert(resp.type_url, (resp.resources, resp.resource_bytes));
        let clusters = held.get(TYPES[0]).map_or(0, |h| h.0);
        let line = if !synced && TYPES.iter().all(|t| held.contains_key(*t)) {
            synced = true;
            let bytes: usize = held.values().map(|h| h.1).sum();
            if i == 0 {
                // What one proxy holds, by type, for the run's log.
                eprintln!("stub 0 holds (type: resources, bytes): {held:?}");
            }
            Some(format!("synced {i} {bytes} {clusters}\n"))
        } else if synced && clusters != before {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            Some(format!("clusters {i} {clusters} {now}\n"))
        } else {
            None
        };
        if let Some(line) = line {
            let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = o.write_all(line.as_bytes());
            let _ = o.flush();
        }
    }
    Ok(())
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
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for i in 0..count {
            let (pilot, out) = (pilot.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = stub(pilot, i, out).await {
                    eprintln!("stub {i}: {e:#}");
                }
            }));
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
