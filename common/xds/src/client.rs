//! An ADS client: subscribes to a set of types, validates what arrives (ACK or NACK with the
//! reason), publishes the accepted state, and reconnects with backoff, keeping the last
//! accepted state while the server is away.
//!
//! With [`ClientConfig::consistent`], the client publishes only when every subscribed type
//! has arrived at the same version. Servers that version whole snapshots (galley does) thereby
//! give subscribers all of a change or none of it, even across types.
//!
//! With [`ClientConfig::delta`], the client speaks incremental ADS
//! (`DeltaAggregatedResources`): it subscribes to everything of each type, applies each
//! response's changed and removed resources to what it holds, validates the result as a
//! whole (the same check as state of the world), and ACKs or NACKs by nonce. On reconnect it
//! tells the server the version of every resource it holds, so only what changed while it
//! was away is sent again. `consistent` does not apply to delta streams.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::server::INCREMENTAL_SOTW_TYPES;

const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT_TYPE: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// What the client subscribes to and how it behaves.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port`.
    pub endpoint: String,
    pub node: Node,
    pub type_urls: Vec<String>,
    /// Publish only whole snapshots (every type at one version).
    pub consistent: bool,
    /// Incremental xDS instead of state of the world.
    pub delta: bool,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientConfig {
    pub fn new(
        endpoint: impl Into<String>,
        node_id: impl Into<String>,
        type_urls: Vec<String>,
    ) -> Self {
        ClientConfig {
            endpoint: endpoint.into(),
            node: Node {
                id: node_id.into(),
                ..Default::default()
            },
            type_urls,
            consistent: false,
            delta: false,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Resources of one type the client accepted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AcceptedType {
    pub version: String,
    pub resources: Vec<Any>,
    /// Each resource's name, parallel to `resources`: on delta streams, and for the types
    /// state of the world servers send incrementally (endpoints, routes).
    pub names: Vec<String>,
    /// Delta streams only: each resource's version, parallel to `resources`.
    pub resource_versions: Vec<String>,
}

/// What the client holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClientState {
    /// Whether a stream is up right now.
    pub connected: bool,
    /// Whether every subscribed type has been received at least once.
    pub synced: bool,
    pub types: BTreeMap<String, Arc<AcceptedType>>,
    /// The last NACK this client sent: (type URL, reason).
    pub last_nack: Option<(String, String)>,
}

/// Checks resources before they are accepted; `Err(reason)` NACKs them.
pub trait Validate: Send + Sync + 'static {
    fn validate(&self, type_url: &str, resources: &[Any]) -> Result<(), String>;
}

impl<F> Validate for F
where
    F: Fn(&str, &[Any]) -> Result<(), String> + Send + Sync + 'static,
{
    fn validate(&self, type_url: &str, resources: &[Any]) -> Result<(), String> {
        self(type_url, resources)
    }
}

/// Accepts everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAll;

impl Validate for AcceptAll {
    fn validate(&self, _: &str, _: &[Any]) -> Result<(), String> {
        Ok(())
    }
}

impl ClientState {
    /// The highest version among the accepted types, for servers (galley) that number
    /// whole snapshots; 0 when none is numeric.
    pub fn snapshot_version(&self) -> u64 {
        self.types
            .values()
            .filter_map(|t| t.version.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// Every accepted resource's encoded payload, of every type.
    pub fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.types
            .values()
            .flat_map(|t| t.resources.iter().map(|any| any.value.as_slice()))
    }
}

/// Starts the client; the task runs until the returned receiver's last clone is dropped.
pub fn spawn(
    config: ClientConfig,
    validator: impl Validate,
) -> (
    watch::Receiver<Arc<ClientState>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = watch::channel(Arc::new(ClientState::default()));
    let handle = tokio::spawn(run(config, Arc::new(validator), tx));
    (rx, handle)
}

async fn run(
    config: ClientConfig,
    validator: Arc<dyn Validate>,
    tx: watch::Sender<Arc<ClientState>>,
) {
    let mut backoff = config.initial_backoff;
    loop {
        if tx.is_closed() {
            return;
        }
        let (received, error) = stream_once(&config, validator.as_ref(), &tx).await;
        if received {
            // The server was there: the next attempt starts from the shortest wait.
            backoff = config.initial_backoff;
        }
        if let Some(e) = error {
            tracing::debug!(endpoint = %config.endpoint, error = %e, "ADS stream failed; retrying");
        }
        set_connected(&tx, false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// One stream's life: whether any response arrived (to reset the backoff), and how it ended.
async fn stream_once(
    config: &ClientConfig,
    validator: &dyn Validate,
    tx: &watch::Sender<Arc<ClientState>>,
) -> (bool, Option<tonic::Status>) {
    let mut received = false;
    let result = if config.delta {
        delta_inner(config, validator, tx, &mut received).await
    } else {
        stream_inner(config, validator, tx, &mut received).await
    };
    (received, result.err())
}

/// The largest response a client takes: a state of the world push carries a whole mesh's
/// clusters (about 300 bytes each) or galley's every document; tonic's default of 4 MiB
/// would refuse a mesh of some ten thousand services.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// HTTP/2 flow-control windows large enough for a whole push (Envoy's own default is
/// 256 MiB): with h2's 64 KiB a large response waits on a window update every 64 KiB.
const STREAM_WINDOW: u32 = 16 << 20;
const CONNECTION_WINDOW: u32 = 64 << 20;

async fn connect(
    endpoint: &str,
) -> Result<AggregatedDiscoveryServiceClient<tonic::transport::Channel>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| tonic::Status::invalid_argument(format!("endpoint {endpoint:?}: {e}")))?
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connecting to {endpoint}: {e}")))?;
    Ok(
        AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES),
    )
}

async fn stream_inner(
    config: &ClientConfig,
    validator: &dyn Validate,
    tx: &watch::Sender<Arc<ClientState>>,
    received: &mut bool,
) -> Result<(), tonic::Status> {
    let mut client = connect(&config.endpoint).await?;
    let (req_tx, req_rx) = mpsc::channel::<DiscoveryRequest>(config.type_urls.len() + 4);
    let current = tx.borrow().clone();
    for (i, type_url) in config.type_urls.iter().enumerate() {
        let version = current
            .types
            .get(type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default();
        let req = DiscoveryRequest {
            node: (i == 0).then(|| config.node.clone()),
            type_url: type_url.clone(),
            version_info: version,
            ..Default::default()
        };
        let _ = req_tx.send(req).await;
    }
    let mut inbound = client
        .stream_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    set_connected(tx, true);
    let mut pending: BTreeMap<String, AcceptedType> = BTreeMap::new();
    while let Some(resp) = inbound.message().await? {
        *received = true;
        if tx.is_closed() {
            return Ok(());
        }
        handle_response(config, validator, tx, &req_tx, &mut pending, resp).await;
    }
    Ok(())
}

/// Publishes whether a stream is up (only when that changes).
fn set_connected(tx: &watch::Sender<Arc<ClientState>>, up: bool) {
    tx.send_if_modified(|s| {
        if s.connected == up {
            return false;
        }
        let mut next = (**s).clone();
        next.connected = up;
        *s = Arc::new(next);
        true
    });
}

/// A NACK's error detail.
fn nack_status(reason: &str) -> RpcStatus {
    RpcStatus {
        code: 3, // INVALID_ARGUMENT
        message: reason.to_owned(),
        details: vec![],
    }
}

/// Keeps the reason of a rejected push in the published state (the accepted one stays).
fn record_nack(tx: &watch::Sender<Arc<ClientState>>, type_url: &str, reason: String) {
    tracing::warn!(%type_url, %reason, "rejected a push; keeping the last good state");
    let type_url = type_url.to_owned();
    tx.send_modify(|s| {
        let mut next = (**s).clone();
        next.last_nack = Some((type_url, reason));
        *s = Arc::new(next);
    });
}

async fn handle_response(
    config: &ClientConfig,
    validator: &dyn Validate,
    tx: &watch::Sender<Arc<ClientState>>,
    req_tx: &mpsc::Sender<DiscoveryRequest>,
    pending: &mut BTreeMap<String, AcceptedType>,
    resp: DiscoveryResponse,
) {
    let verdict = validator.validate(&resp.type_url, &resp.resources);
    let ack_version = match &verdict {
        Ok(()) => resp.version_info.clone(),
        Err(_) => tx
            .borrow()
            .types
            .get(&resp.type_url)
            .map(|t| t.version.clone())
            .unwrap_or_default(),
    };
    let req = DiscoveryRequest {
        type_url: resp.type_url.clone(),
        version_info: ack_version,
        response_nonce: resp.nonce.clone(),
        error_detail: verdict.as_ref().err().map(|reason| nack_status(reason)),
        ..Default::default()
    };
    let _ = req_tx.send(req).await;
    match verdict {
        Err(reason) => record_nack(tx, &resp.type_url, reason),
        Ok(()) => {
            let accepted = if INCREMENTAL_SOTW_TYPES.contains(&resp.type_url.as_str()) {
                // Only what changed was sent: the rest stays as held.
                let held = pending
                    .get(&resp.type_url)
                    .cloned()
                    .or_else(|| tx.borrow().types.get(&resp.type_url).map(|a| (**a).clone()));
                merge_incremental(held.as_ref(), resp.resources, resp.version_info.clone())
            } else {
                AcceptedType {
                    version: resp.version_info.clone(),
                    resources: resp.resources,
                    ..Default::default()
                }
            };
            pending.insert(resp.type_url.clone(), accepted);
            let ready = !config.consistent
                || config.type_urls.iter().all(|t| {
                    pending
                        .get(t)
                        .is_some_and(|p| p.version == resp.version_info)
                        || (!pending.contains_key(t)
                            && tx
                                .borrow()
                                .types
                                .get(t)
                                .is_some_and(|a| a.version == resp.version_info))
                });
            if ready {
                let batch = std::mem::take(pending);
                tx.send_modify(|s| {
                    let mut next = (**s).clone();
                    for (t, accepted) in batch {
                        next.types.insert(t, Arc::new(accepted));
                    }
                    prune_endpoints(&mut next);
                    next.synced = config.type_urls.iter().all(|t| next.types.contains_key(t));
                    *s = Arc::new(next);
                });
            }
        }
    }
}

async fn delta_inner(
    config: &ClientConfig,
    validator: &dyn Validate,
    tx: &watch::Sender<Arc<ClientState>>,
    received: &mut bool,
) -> Result<(), tonic::Status> {
    let mut client = connect(&config.endpoint).await?;
    let (req_tx, req_rx) = mpsc::channel::<DeltaDiscoveryRequest>(config.type_urls.len() + 4);
    let current = tx.borrow().clone();
    for (i, type_url) in config.type_urls.iter().enumerate() {
        // What we hold, so a reconnect is sent only what changed meanwhile.
        let held = current
            .types
            .get(type_url)
            .map(|t| {
                t.names
                    .iter()
                    .cloned()
                    .zip(t.resource_versions.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        let req = DeltaDiscoveryRequest {
            node: (i == 0).then(|| config.node.clone()),
            type_url: type_url.clone(),
            resource_names_subscribe: vec!["*".into()],
            initial_resource_versions: held,
            ..Default::default()
        };
        let _ = req_tx.send(req).await;
    }
    let mut inbound = client
        .delta_aggregated_resources(ReceiverStream::new(req_rx))
        .await?
        .into_inner();
    set_connected(tx, true);
    while let Some(resp) = inbound.message().await? {
        *received = true;
        if tx.is_closed() {
            return Ok(());
        }
        handle_delta(config, validator, tx, &req_tx, resp).await;
    }
    Ok(())
}

/// The name of an Envoy resource: field 1 of listeners, clusters, route configurations
/// (`name`) and endpoint assignments (`cluster_name`) alike.
#[derive(Clone, PartialEq, prost::Message)]
struct Named {
    #[prost(string, tag = "1")]
    name: String,
}

/// What a cluster's endpoints are named by: its EDS service name, or else its own name.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterEds {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsServiceName>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EdsServiceName {
    #[prost(string, tag = "2")]
    service_name: String,
}

fn resource_name(any: &Any) -> String {
    <Named as prost::Message>::decode(any.value.as_slice())
        .map(|n| n.name)
        .unwrap_or_default()
}

/// A state of the world response of an incremental type laid over what is held: the
/// resources sent replace those of the same name, the others stay.
pub fn merge_incremental(
    held: Option<&AcceptedType>,
    sent: Vec<Any>,
    version: String,
) -> AcceptedType {
    let mut set: BTreeMap<String, Any> = BTreeMap::new();
    if let Some(h) = held {
        for (i, any) in h.resources.iter().enumerate() {
            let name = h
                .names
                .get(i)
                .cloned()
                .unwrap_or_else(|| resource_name(any));
            set.insert(name, any.clone());
        }
    }
    for any in sent {
        set.insert(resource_name(&any), any);
    }
    AcceptedType {
        version,
        names: set.keys().cloned().collect(),
        resources: set.into_values().collect(),
        resource_versions: Vec::new(),
    }
}

/// Endpoints no cluster uses any more are dropped: state of the world servers send
/// endpoints only when they change and never say when one is gone (its cluster's removal
/// says it), so without this a long-lived client would keep every endpoint it ever got.
fn prune_endpoints(state: &mut ClientState) {
    let (Some(clusters), Some(endpoints)) = (
        state.types.get(CLUSTER_TYPE),
        state.types.get(ENDPOINT_TYPE),
    ) else {
        return;
    };
    let used: std::collections::BTreeSet<String> = clusters
        .resources
        .iter()
        .filter_map(|any| <ClusterEds as prost::Message>::decode(any.value.as_slice()).ok())
        .map(|c| match c.eds_cluster_config {
            Some(e) if !e.service_name.is_empty() => e.service_name,
            _ => c.name,
        })
        .collect();
    let names: Vec<String> = if endpoints.names.len() == endpoints.resources.len() {
        endpoints.names.clone()
    } else {
        endpoints.resources.iter().map(resource_name).collect()
    };
    if names.iter().all(|n| used.contains(n)) {
        return;
    }
    let mut kept = AcceptedType {
        version: endpoints.version.clone(),
        ..Default::default()
    };
    let delta = !endpoints.resource_versions.is_empty();
    for (i, (name, any)) in names.iter().zip(&endpoints.resources).enumerate() {
        if used.contains(name) {
            kept.names.push(name.clone());
            kept.resources.push(any.clone());
            if delta && let Some(v) = endpoints.resource_versions.get(i) {
                kept.resource_versions.push(v.clone());
            }
        }
    }
    state.types.insert(ENDPOINT_TYPE.to_owned(), Arc::new(kept));
}

/// What the client holds of one type after a delta response, by name: (version, resource).
pub fn apply_delta(
    held: Option<&AcceptedType>,
    resp: &DeltaDiscoveryResponse,
) -> BTreeMap<String, (String, Any)> {
    let mut set: BTreeMap<String, (String, Any)> = held
        .map(|t| {
            t.names
                .iter()
                .zip(&t.resource_versions)
                .zip(&t.resources)
                .map(|((n, v), a)| (n.clone(), (v.clone(), a.clone())))
                .collect()
        })
        .unwrap_or_default();
    for r in &resp.resources {
        // A resource without a body is a name-only notice; nothing to hold.
        if let Some(any) = &r.resource {
            set.insert(r.name.clone(), (r.version.clone(), any.clone()));
        }
    }
    for name in &resp.removed_resources {
        set.remove(name);
    }
    set
}

async fn handle_delta(
    config: &ClientConfig,
    validator: &dyn Validate,
    tx: &watch::Sender<Arc<ClientState>>,
    req_tx: &mpsc::Sender<DeltaDiscoveryRequest>,
    resp: DeltaDiscoveryResponse,
) {
    let held = tx.borrow().types.get(&resp.type_url).cloned();
    let set = apply_delta(held.as_deref(), &resp);
    let resources: Vec<Any> = set.values().map(|(_, a)| a.clone()).collect();
    let verdict = validator.validate(&resp.type_url, &resources);
    let req = DeltaDiscoveryRequest {
        type_url: resp.type_url.clone(),
        response_nonce: resp.nonce.clone(),
        error_detail: verdict.as_ref().err().map(|reason| nack_status(reason)),
        ..Default::default()
    };
    let _ = req_tx.send(req).await;
    match verdict {
        Err(reason) => record_nack(tx, &resp.type_url, reason),
        Ok(()) => {
            // The type's version: the server's, or else one made from the resources'.
            let version = if resp.system_version_info.is_empty() {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                for (n, (v, _)) in &set {
                    n.hash(&mut h);
                    v.hash(&mut h);
                }
                format!("{:016x}", h.finish())
            } else {
                resp.system_version_info.clone()
            };
            let accepted = AcceptedType {
                version,
                names: set.keys().cloned().collect(),
                resource_versions: set.values().map(|(v, _)| v.clone()).collect(),
                resources,
            };
            let type_url = resp.type_url.clone();
            tx.send_modify(|s| {
                let mut next = (**s).clone();
                next.types.insert(type_url, Arc::new(accepted));
                next.synced = config.type_urls.iter().all(|t| next.types.contains_key(t));
                *s = Arc::new(next);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::cluster::v3::cluster::EdsClusterConfig;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;

    fn cla(name: &str, policy_marker: u32) -> Any {
        let mut m = ClusterLoadAssignment {
            cluster_name: name.into(),
            ..Default::default()
        };
        m.named_endpoints
            .insert(format!("marker-{policy_marker}"), Default::default());
        Any {
            type_url: ENDPOINT_TYPE.into(),
            value: m.encode_to_vec(),
        }
    }

    fn cluster(name: &str, service_name: &str) -> Any {
        let c = Cluster {
            name: name.into(),
            eds_cluster_config: (!service_name.is_empty()).then(|| EdsClusterConfig {
                service_name: service_name.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        Any {
            type_url: CLUSTER_TYPE.into(),
            value: c.encode_to_vec(),
        }
    }

    #[test]
    fn incremental_responses_replace_by_name_and_keep_the_rest() {
        let first = merge_incremental(None, vec![cla("a", 1), cla("b", 1)], "1".into());
        assert_eq!(first.names, ["a", "b"]);
        let second = merge_incremental(Some(&first), vec![cla("b", 2), cla("c", 1)], "2".into());
        assert_eq!(second.version, "2");
        assert_eq!(second.names, ["a", "b", "c"]);
        assert_eq!(second.resources[0], cla("a", 1));
        assert_eq!(second.resources[1], cla("b", 2));
    }

    #[test]
    fn endpoints_of_removed_clusters_are_dropped() {
        let mut state = ClientState::default();
        state.types.insert(
            CLUSTER_TYPE.into(),
            Arc::new(AcceptedType {
                version: "1".into(),
                // `b` names its endpoints by service name; `c` is gone.
                resources: vec![cluster("a", ""), cluster("outbound|b", "b")],
                ..Default::default()
            }),
        );
        state.types.insert(
            ENDPOINT_TYPE.into(),
            Arc::new(merge_incremental(
                None,
                vec![cla("a", 1), cla("b", 1), cla("c", 1)],
                "1".into(),
            )),
        );
        prune_endpoints(&mut state);
        let kept = &state.types[ENDPOINT_TYPE];
        assert_eq!(kept.names, ["a", "b"]);
        assert_eq!(kept.resources, [cla("a", 1), cla("b", 1)]);
    }
}
