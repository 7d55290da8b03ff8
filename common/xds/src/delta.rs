//! Incremental (delta) ADS: the same snapshots, sent as per-resource changes.
//!
//! Per type, the stream keeps what the client subscribed to (names, or everything) and the
//! version of each resource it holds. A snapshot change sends only the resources whose
//! version differs and names the ones that went away; a resource's version is a hash of its
//! bytes, so identical content is never resent. A reconnecting client's
//! `initial_resource_versions` are honoured, so it gets only what changed while it was away.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use envoy_types::pb::google::protobuf::Any;

use crate::server::Reply;
use crate::snapshot::XdsSnapshot;

/// A resource's version: a hash of its bytes.
pub fn resource_version(any: &Any) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    any.type_url.hash(&mut h);
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[derive(Debug, Default)]
struct DeltaSubscription {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    /// What the client holds: name -> version.
    client: BTreeMap<String, String>,
    /// The nonce of the last response, and the versions it carried (to undo on NACK).
    sent_nonce: Option<String>,
    before_send: BTreeMap<String, String>,
}

/// One delta stream's protocol state.
#[derive(Debug, Default)]
pub struct DeltaState {
    subs: BTreeMap<String, DeltaSubscription>,
    nonce: u64,
}

impl DeltaState {
    pub fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snap: &XdsSnapshot,
    ) -> (Reply, Option<DeltaDiscoveryResponse>) {
        let first = !self.subs.contains_key(&req.type_url);
        let sub = self.subs.entry(req.type_url.clone()).or_default();
        let mut reply = Reply::Subscribe;
        if !req.response_nonce.is_empty() {
            if sub.sent_nonce.as_deref() != Some(req.response_nonce.as_str()) {
                return (Reply::Stale, None);
            }
            reply = match &req.error_detail {
                Some(status) => {
                    // The client kept what it had: forget what that response sent.
                    sub.client = std::mem::take(&mut sub.before_send);
                    Reply::Nack {
                        version: String::new(),
                        reason: status.message.clone(),
                    }
                }
                None => Reply::Ack {
                    version: String::new(),
                },
            };
        }
        if first {
            sub.client = req.initial_resource_versions.clone().into_iter().collect();
            let explicit: BTreeSet<String> = req
                .resource_names_subscribe
                .iter()
                .filter(|n| n.as_str() != "*")
                .cloned()
                .collect();
            let wildcard = req.resource_names_subscribe.is_empty()
                || req.resource_names_subscribe.iter().any(|n| n == "*");
            sub.names = (!wildcard).then_some(explicit);
        } else {
            // A (re)subscription wants the resource now, even one it was sent before: Envoy
            // re-subscribes when it rebuilds a cluster and waits for its endpoints.
            for n in &req.resource_names_subscribe {
                sub.client.remove(n);
            }
            if let Some(names) = &mut sub.names {
                names.extend(
                    req.resource_names_subscribe
                        .iter()
                        .filter(|n| n.as_str() != "*")
                        .cloned(),
                );
                for n in &req.resource_names_unsubscribe {
                    names.remove(n);
                }
            }
            for n in &req.resource_names_unsubscribe {
                sub.client.remove(n);
            }
        }
        let changed_subscription = first
            || !req.resource_names_subscribe.is_empty()
            || !req.resource_names_unsubscribe.is_empty();
        // After a NACK nothing is resent until the snapshot changes (no NACK loop).
        if changed_subscription {
            let resp = self.respond(&req.type_url, snap, true);
            return (reply, resp);
        }
        (reply, None)
    }

    /// Responses for every type whose resources changed for the client.
    pub fn on_snapshot(&mut self, snap: &XdsSnapshot) -> Vec<DeltaDiscoveryResponse> {
        let types: Vec<String> = self.subs.keys().cloned().collect();
        types
            .iter()
            .filter_map(|t| self.respond(t, snap, false))
            .collect()
    }

    /// The difference between what the client holds and the snapshot, if any (always a
    /// response for a first request, so the client knows it has everything).
    fn respond(
        &mut self,
        type_url: &str,
        snap: &XdsSnapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let sub = self.subs.get_mut(type_url)?;
        let wanted = |name: &str| sub.names.as_ref().is_none_or(|n| n.contains(name));
        let current: BTreeMap<&str, &Any> = snap
            .get(type_url)
            .map(|t| {
                t.iter()
                    .filter(|(n, _)| wanted(n))
                    .map(|(n, a)| (&**n, &**a))
                    .collect()
            })
            .unwrap_or_default();
        let mut resources = Vec::new();
        let mut updated = BTreeMap::new();
        for (name, any) in &current {
            let version = resource_version(any);
            if sub.client.get(*name) != Some(&version) {
                updated.insert((*name).to_owned(), version.clone());
                resources.push(Resource {
                    name: (*name).to_owned(),
                    version,
                    resource: Some((*any).clone()),
                    ..Default::default()
                });
            }
        }
        let mut removed: Vec<String> = sub
            .client
            .keys()
            .filter(|n| !current.contains_key(n.as_str()))
            .cloned()
            .collect();
        // Names asked for that do not exist are answered as removed: that is how a delta
        // client learns not to wait for them.
        if always && let Some(names) = &sub.names {
            for n in names {
                if !current.contains_key(n.as_str()) && !removed.contains(n) {
                    removed.push(n.clone());
                }
            }
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        sub.before_send = sub.client.clone();
        for n in &removed {
            sub.client.remove(n);
        }
        sub.client.extend(updated);
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let sub = self.subs.get_mut(type_url)?;
        sub.sent_nonce = Some(nonce.clone());
        // Envoy rebuilds a cluster it is sent and waits for that cluster's endpoints, without
        // asking again: forget that it has them, so they follow (types are visited in order,
        // clusters before endpoints, listeners before routes).
        let sent: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
        for (parent, child) in crate::server::DEPENDENTS {
            if *parent == type_url
                && let Some(c) = self.subs.get_mut(*child)
            {
                if child.ends_with("ClusterLoadAssignment") {
                    for n in &sent {
                        c.client.remove(n);
                    }
                } else {
                    c.client.clear();
                }
            }
        }
        Some(DeltaDiscoveryResponse {
            system_version_info: snap.version(type_url).to_owned(),
            resources,
            removed_resources: removed,
            type_url: type_url.to_owned(),
            nonce,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::TypeResources;

    const T: &str = "example.com/Thing";

    fn snap(items: &[(&str, &str)]) -> XdsSnapshot {
        let mut t = TypeResources::new("v");
        for (n, body) in items {
            t.insert(
                (*n).into(),
                Arc::new(Any {
                    type_url: T.into(),
                    value: body.as_bytes().to_vec(),
                }),
            );
        }
        XdsSnapshot {
            types: [(T.to_owned(), Arc::new(t))].into(),
        }
    }

    fn req(nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: T.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    #[test]
    fn sends_only_changes_and_removals() {
        let mut st = DeltaState::default();
        let s1 = snap(&[("a", "1"), ("b", "1")]);
        let r1 = st.on_request(&req(""), &s1).1.unwrap();
        assert_eq!(r1.resources.len(), 2);
        assert_eq!(
            st.on_request(&req(&r1.nonce), &s1).0,
            Reply::Ack {
                version: String::new()
            }
        );
        assert!(st.on_snapshot(&s1).is_empty(), "nothing changed");
        let r2 = st.on_snapshot(&snap(&[("a", "2"), ("c", "1")])).remove(0);
        let names: Vec<&str> = r2.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(r2.removed_resources, ["b"]);
    }

    #[test]
    fn a_reconnecting_client_gets_only_what_it_lacks() {
        let mut st = DeltaState::default();
        let s = snap(&[("a", "1"), ("b", "1")]);
        let a = &s.types[T]["a"];
        let mut r = req("");
        r.initial_resource_versions
            .insert("a".into(), resource_version(a));
        r.initial_resource_versions
            .insert("gone".into(), "x".into());
        let resp = st.on_request(&r, &s).1.unwrap();
        let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        assert_eq!(resp.removed_resources, ["gone"]);
    }

    #[test]
    fn updated_clusters_bring_their_endpoints() {
        const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
        const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
        let mk = |items: &[(&str, &str, &str)]| {
            let mut snap = XdsSnapshot::default();
            for (t, n, body) in items {
                let e = snap
                    .types
                    .entry((*t).to_owned())
                    .or_insert_with(|| Arc::new(TypeResources::default()));
                Arc::make_mut(e).insert(
                    (*n).into(),
                    Arc::new(Any {
                        type_url: (*t).into(),
                        value: body.as_bytes().to_vec(),
                    }),
                );
            }
            snap
        };
        let s1 = mk(&[
            (CDS, "c1", "1"),
            (CDS, "c2", "1"),
            (EDS, "c1", "e"),
            (EDS, "c2", "e"),
        ]);
        let mut st = DeltaState::default();
        let r = DeltaDiscoveryRequest {
            type_url: CDS.into(),
            ..Default::default()
        };
        st.on_request(&r, &s1);
        let r = DeltaDiscoveryRequest {
            type_url: EDS.into(),
            resource_names_subscribe: vec!["c1".into(), "c2".into()],
            ..Default::default()
        };
        st.on_request(&r, &s1);
        // c1's cluster changes, its endpoints do not: both are sent, c2's neither.
        let pushed = st.on_snapshot(&mk(&[
            (CDS, "c1", "2"),
            (CDS, "c2", "1"),
            (EDS, "c1", "e"),
            (EDS, "c2", "e"),
        ]));
        let sent: Vec<(String, Vec<String>)> = pushed
            .iter()
            .map(|p| {
                (
                    p.type_url.clone(),
                    p.resources.iter().map(|r| r.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            sent,
            [
                (CDS.to_owned(), vec!["c1".to_owned()]),
                (EDS.to_owned(), vec!["c1".to_owned()])
            ]
        );
    }

    #[test]
    fn explicit_subscriptions_and_nacks() {
        let mut st = DeltaState::default();
        let s = snap(&[("a", "1"), ("b", "1")]);
        let mut r = req("");
        r.resource_names_subscribe = vec!["b".into()];
        let resp = st.on_request(&r, &s).1.unwrap();
        assert_eq!(resp.resources.len(), 1);
        let mut nack = req(&resp.nonce);
        nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "bad b".into(),
            details: vec![],
        });
        let (reply, again) = st.on_request(&nack, &s);
        assert!(matches!(reply, Reply::Nack { .. }));
        assert!(again.is_none(), "no resend loop after a NACK");
        // The client holds nothing of it, so the next snapshot offers b again (once per
        // snapshot, not in a loop).
        let next = st.on_snapshot(&snap(&[("a", "2"), ("b", "1")]));
        assert_eq!(next.len(), 1);
        let names: Vec<&str> = next[0].resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b"], "a is not subscribed");
    }
}
