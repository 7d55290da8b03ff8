//! Serving validated config to subscribers (pilot, mixer) over ADS.
//!
//! Every kind is a type URL (`networking.istio.io/v1alpha3/VirtualService`, `core/v1/Service`);
//! each resource is a `google.protobuf.Any` whose `type_url` is that same string and whose
//! value is the resource's JSON document, exactly what `keelctl get -o json` prints. Every type
//! carries the store's snapshot version, so a subscriber that waits for all its types to reach
//! one version (keel-xds's consistent client) sees a multi-document apply whole or not at all.

use std::sync::Arc;

use keel_config::kind::KINDS;
use keel_config::store::Snapshot;
use keel_xds::server::Observer;
use keel_xds::{Any, TypeResources, XdsSnapshot};
use tokio::sync::watch;

use crate::metrics::{Metrics, TypeLabels};

/// Every type URL galley serves.
pub fn type_urls() -> Vec<String> {
    KINDS.iter().map(|k| k.kind.type_url()).collect()
}

/// The ADS view of a store snapshot.
pub fn to_xds(snap: &Snapshot) -> XdsSnapshot {
    let version = snap.version.to_string();
    let mut out = XdsSnapshot::default();
    for info in KINDS {
        let type_url = info.kind.type_url();
        let mut t = TypeResources {
            version: version.clone(),
            ..Default::default()
        };
        for (key, r) in snap.resources.iter().filter(|(k, _)| k.kind == info.kind) {
            let name = if key.namespace.is_empty() {
                key.name.clone()
            } else {
                format!("{}/{}", key.namespace, key.name)
            };
            let value = serde_json::to_vec(&r.to_value()).unwrap_or_default();
            t.resources.insert(
                name.into(),
                Arc::new(Any {
                    type_url: type_url.clone(),
                    value,
                }),
            );
        }
        out.types.insert(type_url, Arc::new(t));
    }
    out
}

/// Follows the store and republishes each snapshot in ADS form.
pub fn follow(
    mut store: watch::Receiver<Arc<Snapshot>>,
    metrics: Arc<Metrics>,
) -> (
    watch::Receiver<Arc<XdsSnapshot>>,
    tokio::task::JoinHandle<()>,
) {
    let first = store.borrow_and_update().clone();
    metrics.snapshot_version.set(first.version);
    let (tx, rx) = watch::channel(Arc::new(to_xds(&first)));
    let handle = tokio::spawn(async move {
        while store.changed().await.is_ok() {
            let snap = store.borrow_and_update().clone();
            metrics.snapshot_version.set(snap.version);
            tracing::info!(
                version = snap.version,
                resources = snap.resources.len(),
                "publishing configuration"
            );
            if tx.send(Arc::new(to_xds(&snap))).is_err() {
                return;
            }
        }
    });
    (rx, handle)
}

/// Counts pushes, rejects and subscribers.
#[derive(Debug)]
pub struct MetricsObserver(pub Arc<Metrics>);

impl Observer for MetricsObserver {
    fn connected(&self, node_id: &str) {
        self.0.subscribers.inc();
        tracing::info!(subscriber = node_id, "subscriber connected");
    }

    fn disconnected(&self, node_id: &str) {
        self.0.subscribers.dec();
        tracing::info!(subscriber = node_id, "subscriber disconnected");
    }

    fn pushed(&self, _node_id: &str, type_url: &str, _resources: usize) {
        self.0
            .pushes
            .get_or_create(&TypeLabels {
                type_url: type_url.to_owned(),
            })
            .inc();
    }

    fn nacked(&self, node_id: &str, type_url: &str, version: &str, reason: &str) {
        self.0
            .rejects
            .get_or_create(&TypeLabels {
                type_url: type_url.to_owned(),
            })
            .inc();
        tracing::warn!(
            subscriber = node_id,
            type_url,
            version,
            reason,
            "subscriber rejected a push"
        );
    }
}
