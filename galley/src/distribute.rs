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
    to_xds_reusing(snap, None)
}

/// The same, reusing `previous` (the last snapshot and its view) for every resource that
/// did not change: the store keeps an unchanged resource's `Arc`, so its JSON document is
/// not written again, and the ADS server tells it unchanged by pointer.
pub fn to_xds_reusing(snap: &Snapshot, previous: Option<(&Snapshot, &XdsSnapshot)>) -> XdsSnapshot {
    let version = snap.version.to_string();
    let mut out = XdsSnapshot::default();
    for info in KINDS {
        let type_url = info.kind.type_url();
        let before = previous.and_then(|(s, x)| Some((s, x.get(&type_url)?)));
        let mut t = TypeResources::new(version.clone());
        for (key, r) in snap.of_kind(info.kind) {
            let name = if key.namespace.is_empty() {
                key.name.clone()
            } else {
                format!("{}/{}", key.namespace, key.name)
            };
            let kept = before.and_then(|(s, x)| {
                s.get(key)
                    .filter(|old| Arc::ptr_eq(old, r))
                    .and_then(|_| x.get(name.as_str()).cloned())
            });
            let any = kept.unwrap_or_else(|| {
                Arc::new(Any {
                    type_url: type_url.clone(),
                    value: serde_json::to_vec(&r.to_value()).unwrap_or_default(),
                })
            });
            t.insert(name.into(), any);
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
        let mut last = first;
        while store.changed().await.is_ok() {
            let snap = store.borrow_and_update().clone();
            metrics.snapshot_version.set(snap.version);
            tracing::info!(
                version = snap.version,
                resources = snap.resources.len(),
                "publishing configuration"
            );
            let view = to_xds_reusing(&snap, Some((&last, &tx.borrow())));
            if tx.send(Arc::new(view)).is_err() {
                return;
            }
            last = snap;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn resources(yaml: &str) -> Vec<Arc<keel_config::Resource>> {
        let report = keel_config::load_str("t.yaml", yaml, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        report.resources.into_iter().map(Arc::new).collect()
    }

    #[test]
    fn unchanged_resources_keep_their_documents() {
        let se = |name: &str, host: &str| {
            format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: DNS\n"
            )
        };
        let a = resources(&se("a", "a.example.com")).remove(0);
        let b1 = resources(&se("b", "b.example.com")).remove(0);
        let b2 = resources(&se("b", "b2.example.com")).remove(0);
        let snap = |version: u64, rs: &[&Arc<keel_config::Resource>]| Snapshot {
            version,
            resources: rs.iter().map(|r| (r.key(), (*r).clone())).collect(),
        };
        let s1 = snap(1, &[&a, &b1]);
        let x1 = to_xds(&s1);
        let s2 = snap(2, &[&a, &b2]);
        let x2 = to_xds_reusing(&s2, Some((&s1, &x1)));
        let t = keel_config::Kind::ServiceEntry.type_url();
        let (r1, r2) = (&x1.types[&t], &x2.types[&t]);
        assert!(Arc::ptr_eq(&r1["default/a"], &r2["default/a"]));
        assert!(!Arc::ptr_eq(&r1["default/b"], &r2["default/b"]));
        assert_eq!(x2.types[&t].version, "2");
        // Reused or not, the documents are what a fresh view writes.
        assert_eq!(x2, to_xds(&s2));
    }
}
