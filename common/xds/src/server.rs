//! A state-of-the-world ADS server.
//!
//! Each stream runs one task. Requests go through [`StreamState`], a pure state machine that
//! decides whether a request is an ACK, a NACK, a stale reply or a (re)subscription, and
//! which responses to send; snapshot changes go through the same machine. The wire side only
//! moves messages between tonic and the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status, Streaming};

use crate::snapshot::{TypeResources, XdsSnapshot};
use crate::status::SyncRegistry;
use crate::wire::{AdsService, SotwResponse};
use envoy_types::pb::google::protobuf::Any;

/// Where a server's snapshots come from. A server may give each client its own view (pilot
/// computes per proxy); galley gives everyone the same.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshots(&self, node: &Node) -> watch::Receiver<Arc<XdsSnapshot>>;
}

impl SnapshotSource for watch::Receiver<Arc<XdsSnapshot>> {
    fn snapshots(&self, _node: &Node) -> watch::Receiver<Arc<XdsSnapshot>> {
        self.clone()
    }
}

/// Hooks for metrics and logs; every method has a no-op default.
pub trait Observer: Send + Sync + 'static {
    fn connected(&self, _node_id: &str) {}
    fn disconnected(&self, _node_id: &str) {}
    fn pushed(&self, _node_id: &str, _type_url: &str, _resources: usize) {}
    fn acked(&self, _node_id: &str, _type_url: &str, _version: &str) {}
    fn nacked(&self, _node_id: &str, _type_url: &str, _version: &str, _reason: &str) {}
}

/// The default observer: logs NACKs, nothing else.
#[derive(Debug, Default)]
pub struct LogObserver;

impl Observer for LogObserver {
    fn nacked(&self, node_id: &str, type_url: &str, version: &str, reason: &str) {
        tracing::warn!(
            node = node_id,
            type_url,
            version,
            reason,
            "client rejected (NACKed) a push; it keeps its last good config"
        );
    }
}

/// What a client's request meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A first request, or a change of subscribed names.
    Subscribe,
    Ack {
        version: String,
    },
    Nack {
        version: String,
        reason: String,
    },
    /// A reply to a response that is no longer the latest: ignored, as Envoy expects.
    Stale,
}

#[derive(Debug, Default)]
struct Subscription {
    /// `None`: every resource of the type (wildcard).
    names: Option<BTreeSet<String>>,
    sent_version: Option<String>,
    sent_nonce: Option<String>,
    /// The parent type was pushed: answer the next request even if nothing changed.
    resend: bool,
    /// With `resend`: the resources to send again (the parent's changed ones, by name);
    /// `None`: all of them.
    resend_names: Option<BTreeSet<String>>,
    /// The resources of the last response's snapshot: what the client holds, to tell
    /// which resources a new snapshot changed.
    sent_from: Option<Arc<TypeResources>>,
}

/// Types whose state of the world responses may carry only the resources that changed:
/// every type but listeners and clusters, whose responses must be complete (the xDS
/// protocol; Envoy keeps endpoints and routes it is not sent again). A change to one
/// service then re-sends its endpoints, not the whole mesh's.
pub const INCREMENTAL_SOTW_TYPES: &[&str] = &[
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
];

/// Which responses a push includes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Every (subscribed) resource.
    All,
    /// Those that changed since the last response, and those named for a resend.
    Changed,
}

/// Envoy's warming dependencies: after a push of the first type, Envoy re-requests the
/// second for the clusters or listeners it is warming, and waits (up to its fetch timeout)
/// for an answer even when nothing changed.
pub(crate) const DEPENDENTS: &[(&str, &str)] = &[
    (
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    ),
    (
        "type.googleapis.com/envoy.config.listener.v3.Listener",
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    ),
];

/// One stream's protocol state.
#[derive(Debug, Default)]
pub struct StreamState {
    subs: BTreeMap<String, Subscription>,
    nonce: u64,
    changes: Arc<ChangeCache>,
}

/// What changed between two versions of an incremental type, shared by a server's streams:
/// proxies holding the same shared endpoints move to the same new ones, so the difference
/// is found once per change, not once per proxy. One entry per type (the latest change).
#[derive(Debug, Default)]
pub struct ChangeCache(std::sync::Mutex<BTreeMap<String, CachedChange>>);

#[derive(Debug)]
struct CachedChange {
    from: Arc<TypeResources>,
    to: Arc<TypeResources>,
    changed: Arc<[Arc<Any>]>,
}

impl ChangeCache {
    fn get(
        &self,
        type_url: &str,
        from: &Arc<TypeResources>,
        to: &Arc<TypeResources>,
    ) -> Option<Arc<[Arc<Any>]>> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(type_url)
            .filter(|c| Arc::ptr_eq(&c.from, from) && Arc::ptr_eq(&c.to, to))
            .map(|c| c.changed.clone())
    }

    fn put(
        &self,
        type_url: &str,
        from: Arc<TypeResources>,
        to: Arc<TypeResources>,
        changed: Arc<[Arc<Any>]>,
    ) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(type_url.to_owned(), CachedChange { from, to, changed });
    }
}

impl StreamState {
    /// A stream's state sharing `changes` with the server's other streams.
    pub fn with_change_cache(changes: Arc<ChangeCache>) -> StreamState {
        StreamState {
            changes,
            ..StreamState::default()
        }
    }

    /// Handles a request against the current snapshot: what it meant, and the response to
    /// send, if any.
    pub fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> (Reply, Option<SotwResponse>) {
        let names: Option<BTreeSet<String>> = if req.resource_names.is_empty() {
            None
        } else {
            Some(req.resource_names.iter().cloned().collect())
        };
        let mut reply = Reply::Subscribe;
        if !req.response_nonce.is_empty() {
            let latest = self
                .subs
                .get(&req.type_url)
                .and_then(|s| s.sent_nonce.as_deref());
            if latest != Some(req.response_nonce.as_str()) {
                return (Reply::Stale, None);
            }
            reply = match &req.error_detail {
                Some(status) => Reply::Nack {
                    version: self
                        .subs
                        .get(&req.type_url)
                        .and_then(|s| s.sent_version.clone())
                        .unwrap_or_default(),
                    reason: status.message.clone(),
                },
                None => Reply::Ack {
                    version: req.version_info.clone(),
                },
            };
        }
        let sub = self.subs.entry(req.type_url.clone()).or_default();
        if matches!(reply, Reply::Nack { .. }) {
            // The client kept what it had before the rejected response: the next push of
            // an incremental type cannot build on what that response carried.
            sub.sent_from = None;
        }
        let first = sub.sent_nonce.is_none();
        let names_changed = sub.names != names;
        let resend = sub.resend && matches!(reply, Reply::Ack { .. });
        sub.names = names;
        if first || names_changed {
            let resp = self.respond(&req.type_url, snap, Scope::All);
            return (Reply::Subscribe, resp);
        }
        if resend {
            let scope = match self.subs.get(&req.type_url) {
                Some(s) if s.resend_names.is_some() => Scope::Changed,
                _ => Scope::All,
            };
            let resp = self.respond(&req.type_url, snap, scope);
            return (reply, resp);
        }
        (reply, None)
    }

    /// Responses for every subscribed type whose version differs from what was last sent;
    /// for [`INCREMENTAL_SOTW_TYPES`], only the resources that changed.
    pub fn on_snapshot(&mut self, snap: &XdsSnapshot) -> Vec<SotwResponse> {
        let due: Vec<String> = self
            .subs
            .iter()
            .filter(|(t, s)| s.sent_version.as_deref() != Some(snap.version(t)))
            .map(|(t, _)| t.clone())
            .collect();
        due.iter()
            .filter_map(|t| {
                let scope = if INCREMENTAL_SOTW_TYPES.contains(&t.as_str()) {
                    Scope::Changed
                } else {
                    Scope::All
                };
                self.respond(t, snap, scope)
            })
            .collect()
    }

    /// The response for `type_url`; `None` when `Scope::Changed` finds nothing to send (the
    /// client already holds it all; its version is recorded as sent).
    fn respond(
        &mut self,
        type_url: &str,
        snap: &XdsSnapshot,
        scope: Scope,
    ) -> Option<SotwResponse> {
        let sub = self.subs.entry(type_url.to_owned()).or_default();
        let current = snap.get(type_url);
        let version = current.map(|t| t.version.clone()).unwrap_or_default();
        let is_parent = DEPENDENTS.iter().any(|(parent, _)| *parent == type_url);
        let mut resources = Vec::with_capacity(match scope {
            Scope::All => current.map_or(0, |t| t.len()),
            Scope::Changed => 0,
        });
        let mut changed = BTreeSet::new();
        // Both maps are sorted by name: walk them together. Servers that keep unchanged
        // resources' `Arc`s across snapshots (pilot does) make each comparison a pointer's.
        let same_set = match (current, &sub.sent_from) {
            (Some(c), Some(s)) => Arc::ptr_eq(c, s),
            _ => false,
        };
        // Wildcard subscribers moving between the same two versions of an incremental type
        // share one computation of what changed.
        let shared_pair = match (current, &sub.sent_from) {
            (Some(to), Some(from))
                if scope == Scope::Changed && !is_parent && sub.names.is_none() && !same_set =>
            {
                Some((from.clone(), to.clone()))
            }
            _ => None,
        };
        let cached = shared_pair
            .as_ref()
            .and_then(|(from, to)| self.changes.get(type_url, from, to));
        let mut held_iter = sub
            .sent_from
            .as_ref()
            .map(|t| t.iter())
            .into_iter()
            .flatten()
            .peekable();
        let walk = if cached.is_some() { None } else { current };
        for (name, any) in walk.iter().flat_map(|t| t.iter()) {
            if sub.names.as_ref().is_some_and(|n| !n.contains(&**name)) {
                continue;
            }
            // The same `Arc` is the same resource, name included: no names to compare.
            // Otherwise the held resource of the same name is consumed here too, so one
            // resource rebuilt equal (a proxy's own) does not send every name after it
            // down this slower path.
            let unchanged = same_set
                || held_iter
                    .next_if(|(_, old)| Arc::ptr_eq(old, any))
                    .is_some()
                || {
                    while held_iter.next_if(|(held, _)| *held < name).is_some() {}
                    held_iter
                        .next_if(|(held, _)| *held == name)
                        .is_some_and(|(_, old)| **old == **any)
                };
            if !unchanged && is_parent {
                changed.insert(name.to_string());
            }
            if scope == Scope::All || !unchanged {
                resources.push(any.clone());
            }
        }
        match (cached, shared_pair) {
            (Some(list), _) => resources.extend(list.iter().cloned()),
            (None, Some((from, to))) => {
                self.changes
                    .put(type_url, from, to, resources.clone().into());
            }
            (None, None) => {}
        }
        // Those named for a resend, unless changed (and so already in).
        if scope == Scope::Changed
            && let (Some(named), Some(current)) = (&sub.resend_names, current)
        {
            let changed_count = resources.len();
            for name in named {
                if sub.names.as_ref().is_some_and(|n| !n.contains(name)) {
                    continue;
                }
                if let Some(any) = current.get(name.as_str())
                    && !resources[..changed_count]
                        .iter()
                        .any(|r| Arc::ptr_eq(r, any))
                {
                    resources.push(any.clone());
                }
            }
        }
        sub.sent_from = current.cloned();
        sub.sent_version = Some(version.clone());
        sub.resend = false;
        sub.resend_names = None;
        if scope == Scope::Changed && resources.is_empty() {
            return None;
        }
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        sub.sent_nonce = Some(nonce.clone());
        for (parent, child) in DEPENDENTS {
            if *parent == type_url
                && let Some(c) = self.subs.get_mut(*child)
            {
                c.resend = true;
                // Clusters and their endpoints share names: re-send the endpoints of the
                // clusters that changed (Envoy warms those). Listeners name their routes
                // inside, so after a listener push every route is sent again.
                c.resend_names = (*parent == DEPENDENTS[0].0).then(|| changed.clone());
            }
        }
        Some(SotwResponse {
            version_info: version,
            resources,
            type_url: type_url.to_owned(),
            nonce,
        })
    }
}

/// The ADS service: hand it to tonic with [`AdsServer::into_service`].
pub struct AdsServer<S> {
    source: Arc<S>,
    registry: Arc<SyncRegistry>,
    observer: Arc<dyn Observer>,
    next_id: AtomicU64,
    pushes: Arc<Semaphore>,
    changes: Arc<ChangeCache>,
}

/// How many state of the world pushes (after a snapshot change) may be in flight at once:
/// built, sent, and not yet answered. Istio's pilot throttles the same way (100 by
/// default). Without a bound, a change reaching thousands of proxies builds and queues
/// every response at once: memory for all of them, fresh pages for each, and no proxy
/// served sooner.
pub const DEFAULT_PUSH_LIMIT: usize = 100;

/// A push holds its permit until the client answers every response in it, or this long.
const PUSH_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

impl<S> std::fmt::Debug for AdsServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("connected", &self.registry.connected())
            .finish()
    }
}

impl<S: SnapshotSource> AdsServer<S> {
    pub fn new(source: S) -> Self {
        AdsServer {
            source: Arc::new(source),
            registry: Arc::new(SyncRegistry::default()),
            observer: Arc::new(LogObserver),
            next_id: AtomicU64::new(1),
            pushes: Arc::new(Semaphore::new(DEFAULT_PUSH_LIMIT)),
            changes: Arc::new(ChangeCache::default()),
        }
    }

    /// At most `limit` pushes in flight at once (at least one).
    pub fn with_push_limit(mut self, limit: usize) -> Self {
        self.pushes = Arc::new(Semaphore::new(limit.max(1)));
        self
    }

    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = observer;
        self
    }

    /// The sync status of every connected stream.
    pub fn registry(&self) -> Arc<SyncRegistry> {
        self.registry.clone()
    }

    /// The gRPC service to hand to tonic's `Server::add_service`.
    pub fn into_service(self) -> AdsService<S> {
        AdsService::new(self)
    }

    fn stream_task(&self) -> StreamTask<S> {
        StreamTask {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            source: self.source.clone(),
            registry: self.registry.clone(),
            observer: self.observer.clone(),
            pushes: self.pushes.clone(),
            changes: self.changes.clone(),
        }
    }

    /// A state of the world stream: one task runs it; responses leave through the stream
    /// returned.
    pub(crate) fn open_sotw(
        &self,
        inbound: Streaming<DiscoveryRequest>,
    ) -> Response<ResponseStream<SotwResponse>> {
        let (tx, rx) = mpsc::channel(16);
        let stream = self.stream_task();
        // The span is attached to the task, not entered across awaits.
        let span = tracing::debug_span!("ads", stream = stream.id);
        tokio::spawn(tracing::Instrument::instrument(
            stream.run(inbound, tx),
            span,
        ));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }

    /// An incremental stream, run the same way.
    pub(crate) fn open_delta(
        &self,
        inbound: Streaming<DeltaDiscoveryRequest>,
    ) -> Response<ResponseStream<DeltaDiscoveryResponse>> {
        let (tx, rx) = mpsc::channel(16);
        let stream = self.stream_task();
        let span = tracing::debug_span!("delta-ads", stream = stream.id);
        tokio::spawn(tracing::Instrument::instrument(
            stream.run_delta(inbound, tx),
            span,
        ));
        Response::new(Box::pin(ReceiverStream::new(rx)))
    }
}

pub(crate) type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

struct StreamTask<S> {
    id: u64,
    source: Arc<S>,
    registry: Arc<SyncRegistry>,
    observer: Arc<dyn Observer>,
    pushes: Arc<Semaphore>,
    changes: Arc<ChangeCache>,
}

/// A push in flight: its permit, and the nonces not answered yet.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    nonces: BTreeSet<String>,
    deadline: tokio::time::Instant,
}

impl<S: SnapshotSource> StreamTask<S> {
    async fn run(
        self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<SotwResponse, Status>>,
    ) {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let node = first.node.clone().unwrap_or_default();
        let node_id = node.id.clone();
        self.registry.insert(self.id, node_id.clone());
        self.observer.connected(&node_id);
        let mut snaps = self.source.snapshots(&node);
        let mut state = StreamState::with_change_cache(self.changes.clone());
        let mut in_flight: Option<InFlight> = None;
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                if let Some(n) = &req.node
                    && !n.id.is_empty()
                    && n.id != node_id
                {
                    self.registry.set_node(self.id, &n.id);
                }
                if let Some(f) = in_flight.as_mut() {
                    f.nonces.remove(&req.response_nonce);
                    if f.nonces.is_empty() {
                        in_flight = None;
                    }
                }
                let snap = snaps.borrow().clone();
                let (reply, resp) = state.on_request(&req, &snap);
                self.record(&node_id, &req.type_url, &reply);
                if let Some(resp) = resp
                    && !self.send(&node_id, resp, &tx).await
                {
                    break;
                }
                continue;
            }
            let deadline = in_flight.as_ref().map(|f| f.deadline);
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "stream ended");
                        break;
                    }
                },
                // The previous push is answered before the next one is built.
                changed = snaps.changed(), if in_flight.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    let Ok(permit) = self.pushes.clone().acquire_owned().await else {
                        break;
                    };
                    let snap = snaps.borrow_and_update().clone();
                    let mut nonces = BTreeSet::new();
                    let mut open = true;
                    for resp in state.on_snapshot(&snap) {
                        nonces.insert(resp.nonce.clone());
                        if !self.send(&node_id, resp, &tx).await {
                            open = false;
                            break;
                        }
                    }
                    if !open {
                        break;
                    }
                    if !nonces.is_empty() {
                        in_flight = Some(InFlight {
                            _permit: permit,
                            nonces,
                            deadline: tokio::time::Instant::now() + PUSH_ANSWER_TIMEOUT,
                        });
                    }
                }
                () = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                    tracing::debug!(node = %node_id, "push not answered in time; its permit is released");
                    in_flight = None;
                }
                _ = tx.closed() => break,
            }
        }
        self.registry.remove(self.id);
        self.observer.disconnected(&node_id);
    }

    async fn run_delta(
        self,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let first = match inbound.message().await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let node = first.node.clone().unwrap_or_default();
        let node_id = node.id.clone();
        self.registry.insert(self.id, node_id.clone());
        self.observer.connected(&node_id);
        let mut snaps = self.source.snapshots(&node);
        let mut state = crate::delta::DeltaState::default();
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                let snap = snaps.borrow().clone();
                let (reply, resp) = state.on_request(&req, &snap);
                let reply = match reply {
                    // Delta has no snapshot version in ACKs: record the one last sent.
                    Reply::Ack { .. } => Reply::Ack {
                        version: snap.version(&req.type_url).to_owned(),
                    },
                    other => other,
                };
                self.record(&node_id, &req.type_url, &reply);
                if let Some(resp) = resp
                    && !self.send_delta(&node_id, resp, &tx).await
                {
                    break;
                }
                continue;
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "delta stream ended");
                        break;
                    }
                },
                changed = snaps.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snaps.borrow_and_update().clone();
                    let mut open = true;
                    for resp in state.on_snapshot(&snap) {
                        if !self.send_delta(&node_id, resp, &tx).await {
                            open = false;
                            break;
                        }
                    }
                    if !open {
                        break;
                    }
                }
                _ = tx.closed() => break,
            }
        }
        self.registry.remove(self.id);
        self.observer.disconnected(&node_id);
    }

    async fn send_delta(
        &self,
        node_id: &str,
        resp: DeltaDiscoveryResponse,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> bool {
        let (type_url, version, nonce, n) = (
            resp.type_url.clone(),
            resp.system_version_info.clone(),
            resp.nonce.clone(),
            resp.resources.len(),
        );
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        self.registry.update(self.id, &type_url, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.pushes += 1;
        });
        self.observer.pushed(node_id, &type_url, n);
        true
    }

    fn record(&self, node_id: &str, type_url: &str, reply: &Reply) {
        match reply {
            Reply::Ack { version } => {
                self.registry.update(self.id, type_url, |t| {
                    t.acked_version = Some(version.clone());
                    t.nacked = None;
                });
                self.observer.acked(node_id, type_url, version);
            }
            Reply::Nack { version, reason } => {
                self.registry.update(self.id, type_url, |t| {
                    t.nacked = Some((version.clone(), reason.clone()));
                });
                self.observer.nacked(node_id, type_url, version, reason);
            }
            Reply::Subscribe | Reply::Stale => {}
        }
    }

    async fn send(
        &self,
        node_id: &str,
        resp: SotwResponse,
        tx: &mpsc::Sender<Result<SotwResponse, Status>>,
    ) -> bool {
        let (type_url, version, nonce, n) = (
            resp.type_url.clone(),
            resp.version_info.clone(),
            resp.nonce.clone(),
            resp.resources.len(),
        );
        if tx.send(Ok(resp)).await.is_err() {
            return false;
        }
        self.registry.update(self.id, &type_url, |t| {
            t.sent_version = Some(version);
            t.sent_nonce = Some(nonce);
            t.pushes += 1;
        });
        self.observer.pushed(node_id, &type_url, n);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::TypeResources;
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status as RpcStatus;

    const T: &str = "example.com/Thing";

    fn snap(version: &str, names: &[&str]) -> XdsSnapshot {
        let mut t = TypeResources::new(version);
        for n in names {
            t.insert(
                (*n).into(),
                Arc::new(Any {
                    type_url: T.into(),
                    value: n.as_bytes().to_vec(),
                }),
            );
        }
        XdsSnapshot {
            types: [(T.to_owned(), Arc::new(t))].into(),
        }
    }

    /// Resources of one type: (name, value) pairs at `version`.
    fn typed(version: &str, items: &[(&str, &str)]) -> Arc<TypeResources> {
        let mut t = TypeResources::new(version);
        for (name, value) in items {
            t.insert(
                (*name).into(),
                Arc::new(Any {
                    type_url: String::new(),
                    value: value.as_bytes().to_vec(),
                }),
            );
        }
        Arc::new(t)
    }

    fn req(nonce: &str, version: &str, names: &[&str]) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: T.into(),
            response_nonce: nonce.into(),
            version_info: version.into(),
            resource_names: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn subscribe_ack_and_push() {
        let mut st = StreamState::default();
        let s1 = snap("1", &["a", "b"]);
        let (reply, resp) = st.on_request(&req("", "", &[]), &s1);
        assert_eq!(reply, Reply::Subscribe);
        let resp = resp.unwrap();
        assert_eq!((resp.version_info.as_str(), resp.resources.len()), ("1", 2));
        let (reply, resp2) = st.on_request(&req(&resp.nonce, "1", &[]), &s1);
        assert_eq!(
            reply,
            Reply::Ack {
                version: "1".into()
            }
        );
        assert!(resp2.is_none());
        // Nothing new: no push.
        assert!(st.on_snapshot(&s1).is_empty());
        let pushed = st.on_snapshot(&snap("2", &["a"]));
        assert_eq!(pushed.len(), 1);
        assert_eq!(pushed[0].version_info, "2");
        assert_ne!(pushed[0].nonce, resp.nonce);
    }

    #[test]
    fn nack_keeps_the_reason_and_is_not_resent() {
        let mut st = StreamState::default();
        let s1 = snap("1", &["a"]);
        let resp = st.on_request(&req("", "", &[]), &s1).1.unwrap();
        let mut nack = req(&resp.nonce, "", &[]);
        nack.error_detail = Some(RpcStatus {
            code: 3,
            message: "bad thing a".into(),
            details: vec![],
        });
        let (reply, again) = st.on_request(&nack, &s1);
        assert_eq!(
            reply,
            Reply::Nack {
                version: "1".into(),
                reason: "bad thing a".into()
            }
        );
        assert!(again.is_none());
        assert!(st.on_snapshot(&s1).is_empty());
    }

    #[test]
    fn a_cluster_push_makes_the_next_endpoint_request_answered() {
        const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let mut st = StreamState::default();
        let mut snap = XdsSnapshot::default();
        snap.types
            .insert(CDS.into(), typed("1", &[("a", "a1"), ("b", "b1")]));
        snap.types
            .insert(EDS.into(), typed("1", &[("a", "ea"), ("b", "eb")]));
        let mk = |t: &str, nonce: &str| DiscoveryRequest {
            type_url: t.into(),
            response_nonce: nonce.into(),
            version_info: "1".into(),
            ..Default::default()
        };
        let c1 = st.on_request(&mk(CDS, ""), &snap).1.unwrap();
        let e1 = st.on_request(&mk(EDS, ""), &snap).1.unwrap();
        assert_eq!(e1.resources.len(), 2);
        // Unchanged endpoints after an ACK: nothing to send...
        assert!(st.on_request(&mk(EDS, &e1.nonce), &snap).1.is_none());
        // ...but after a push that changes cluster a, Envoy's warming request is answered
        // with a's endpoints (b did not change, so it is not warming).
        let mut snap2 = snap.clone();
        snap2
            .types
            .insert(CDS.into(), typed("2", &[("a", "a2"), ("b", "b1")]));
        let c2 = st.on_snapshot(&snap2).remove(0);
        assert_ne!(c2.nonce, c1.nonce);
        assert_eq!(c2.resources.len(), 2, "cluster responses are complete");
        let again = st
            .on_request(&mk(EDS, &e1.nonce), &snap2)
            .1
            .expect("the warming EDS request must get an answer");
        assert_eq!(again.resources.len(), 1);
        assert_eq!(again.resources[0].value, b"ea");
        assert!(st.on_request(&mk(EDS, &again.nonce), &snap2).1.is_none());
    }

    #[test]
    fn a_resource_rebuilt_equal_is_unchanged_and_so_are_those_after_it() {
        const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let v1 = typed("1", &[("a", "a"), ("b", "b"), ("c", "c1"), ("d", "d")]);
        // "a" comes again in a new allocation (a proxy's own cluster, rebuilt); "b" and
        // "d" keep their `Arc`s; only "c" changes.
        let mut t2 = (*v1).clone();
        t2.version = "2".into();
        t2.insert("a".into(), Arc::new((*v1["a"]).clone()));
        t2.insert(
            "c".into(),
            Arc::new(Any {
                type_url: String::new(),
                value: b"c2".to_vec(),
            }),
        );
        let snap_of = |c: Arc<TypeResources>| XdsSnapshot {
            types: [
                (CDS.to_owned(), c),
                (
                    EDS.to_owned(),
                    typed("1", &[("a", ""), ("b", ""), ("c", ""), ("d", "")]),
                ),
            ]
            .into(),
        };
        let (s1, s2) = (snap_of(v1), snap_of(Arc::new(t2)));
        let mut st = StreamState::default();
        let sub = |t: &str, nonce: &str| DiscoveryRequest {
            type_url: t.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        st.on_request(&sub(CDS, ""), &s1);
        let e1 = st.on_request(&sub(EDS, ""), &s1).1.unwrap();
        let pushed = st.on_snapshot(&s2);
        assert_eq!(pushed.len(), 1);
        assert_eq!(
            pushed[0].resources.len(),
            4,
            "cluster responses are complete"
        );
        // The endpoints re-sent for warming are the changed cluster's alone.
        let warming = st.on_request(&sub(EDS, &e1.nonce), &s2).1.unwrap();
        assert_eq!(warming.resources.len(), 1);
        assert!(Arc::ptr_eq(&warming.resources[0], &s2.types[EDS]["c"]));
    }

    #[test]
    fn streams_moving_between_the_same_versions_share_what_changed() {
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let snap_of = |t: &Arc<TypeResources>| XdsSnapshot {
            types: [(EDS.to_owned(), t.clone())].into(),
        };
        let cache = Arc::new(ChangeCache::default());
        let subscribe = DiscoveryRequest {
            type_url: EDS.into(),
            ..Default::default()
        };
        let v1 = typed("1", &[("a", "1"), ("b", "1")]);
        let v2 = typed("2", &[("a", "1"), ("b", "2")]);
        let v3 = typed("3", &[("a", "3"), ("b", "2")]);
        let mut streams: Vec<StreamState> = (0..3)
            .map(|_| StreamState::with_change_cache(cache.clone()))
            .collect();
        for st in &mut streams[..2] {
            st.on_request(&subscribe, &snap_of(&v1));
        }
        // The third stream joined at v2: it holds a different version.
        streams[2].on_request(&subscribe, &snap_of(&v2));
        let pushed: Vec<Vec<SotwResponse>> = streams
            .iter_mut()
            .map(|st| st.on_snapshot(&snap_of(&v3)))
            .collect();
        let values = |r: &SotwResponse| -> Vec<Vec<u8>> {
            r.resources.iter().map(|a| a.value.clone()).collect()
        };
        // From v1: a and b changed; the second stream's answer came from the cache.
        assert_eq!(values(&pushed[0][0]), [b"3".to_vec(), b"2".to_vec()]);
        assert_eq!(values(&pushed[1][0]), values(&pushed[0][0]));
        // From v2: only a.
        assert_eq!(values(&pushed[2][0]), [b"3".to_vec()]);
    }

    #[test]
    fn endpoint_pushes_carry_only_what_changed_and_a_nack_makes_the_next_complete() {
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let snap_of = |t: Arc<TypeResources>| XdsSnapshot {
            types: [(EDS.to_owned(), t)].into(),
        };
        let mut st = StreamState::default();
        let s1 = snap_of(typed("1", &[("a", "1"), ("b", "1"), ("c", "1")]));
        let first = st
            .on_request(
                &DiscoveryRequest {
                    type_url: EDS.into(),
                    ..Default::default()
                },
                &s1,
            )
            .1
            .unwrap();
        assert_eq!(first.resources.len(), 3);
        // b changes, d is new, c is gone: b and d are sent, under the new version.
        let s2 = snap_of(typed("2", &[("a", "1"), ("b", "2"), ("d", "1")]));
        let pushed = st.on_snapshot(&s2);
        assert_eq!(pushed.len(), 1);
        let values: Vec<&[u8]> = pushed[0].resources.iter().map(|a| &a.value[..]).collect();
        assert_eq!(values, [&b"2"[..], &b"1"[..]]);
        assert_eq!(pushed[0].version_info, "2");
        // Only a removal: nothing to send (Envoy drops endpoints with their cluster).
        let s3 = snap_of(typed("3", &[("a", "1"), ("b", "2")]));
        assert!(st.on_snapshot(&s3).is_empty());
        // A NACK: the client kept its older state, so the next push is complete.
        let s4 = snap_of(typed("4", &[("a", "1"), ("b", "3")]));
        let p4 = st.on_snapshot(&s4).remove(0);
        assert_eq!(p4.resources.len(), 1);
        let mut nack = req(&p4.nonce, "3", &[]);
        nack.type_url = EDS.into();
        nack.error_detail = Some(RpcStatus {
            message: "bad".into(),
            ..Default::default()
        });
        let (reply, _) = st.on_request(&nack, &s4);
        assert!(matches!(reply, Reply::Nack { .. }));
        let s5 = snap_of(typed("5", &[("a", "1"), ("b", "4")]));
        assert_eq!(st.on_snapshot(&s5).remove(0).resources.len(), 2);
    }

    #[test]
    fn stale_nonces_are_ignored_and_names_filter() {
        let mut st = StreamState::default();
        let s1 = snap("1", &["a", "b"]);
        let first = st.on_request(&req("", "", &["b"]), &s1).1.unwrap();
        assert_eq!(first.resources.len(), 1);
        assert_eq!(first.resources[0].value, b"b");
        let second = st.on_snapshot(&snap("2", &["a", "b"])).remove(0);
        // A late ACK of the first response is stale.
        assert_eq!(
            st.on_request(&req(&first.nonce, "1", &["b"]), &s1).0,
            Reply::Stale
        );
        // Changing the names re-sends.
        let (reply, resp) = st.on_request(&req(&second.nonce, "2", &["a", "b"]), &s1);
        assert_eq!(reply, Reply::Subscribe);
        assert_eq!(resp.unwrap().resources.len(), 2);
    }
}
