//! An in-memory store: all-or-nothing applies with optimistic concurrency.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::{ConfigStore, Snapshot};
use crate::resource::{Resource, ResourceKey};

/// What an apply did to one resource (kubectl's words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyAction {
    Created,
    Configured,
    Unchanged,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub key: ResourceKey,
    pub action: ApplyAction,
    pub resource_version: String,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "conflict: {key} was modified (resourceVersion is {current}, the update was based on {given}); get it again and reapply your change"
    )]
    Conflict {
        key: ResourceKey,
        given: String,
        current: String,
    },
    #[error("{key} does not exist, so it cannot be updated from resourceVersion {given}")]
    StaleCreate { key: ResourceKey, given: String },
    #[error("{0} appears more than once in one apply")]
    Duplicate(ResourceKey),
    #[error("{0} not found")]
    NotFound(ResourceKey),
}

/// Resources in memory, published as snapshots.
#[derive(Debug)]
pub struct MemoryStore {
    current: Mutex<Arc<Snapshot>>,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let snap = Arc::new(Snapshot::default());
        let (tx, _) = watch::channel(snap.clone());
        MemoryStore {
            current: Mutex::new(snap),
            tx,
        }
    }

    /// Creates or updates every resource, or none: a conflict or a duplicate anywhere fails
    /// the whole apply and changes nothing. A resource that carries a resourceVersion is an
    /// update of exactly that version; without one it is a create-or-replace.
    pub fn apply(&self, resources: Vec<Resource>) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut guard = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let base = guard.clone();
        let mut next = (*base).clone();
        let version = base.version + 1;
        let mut outcomes = Vec::with_capacity(resources.len());
        let mut seen = std::collections::HashSet::new();
        for mut r in resources {
            let key = r.key();
            if !seen.insert(key.clone()) {
                return Err(StoreError::Duplicate(key));
            }
            let existing = base.resources.get(&key);
            if let Some(given) = r.metadata.resource_version.clone() {
                match existing {
                    None => return Err(StoreError::StaleCreate { key, given }),
                    Some(old) => {
                        let current = old.metadata.resource_version.clone().unwrap_or_default();
                        if current != given {
                            return Err(StoreError::Conflict {
                                key,
                                given,
                                current,
                            });
                        }
                    }
                }
            }
            let action = match existing {
                None => ApplyAction::Created,
                Some(old) if same_content(old, &r) => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Configured,
            };
            let resource_version = match (&action, existing) {
                (ApplyAction::Unchanged, Some(old)) => {
                    old.metadata.resource_version.clone().unwrap_or_default()
                }
                _ => {
                    let mut meta = r.metadata.clone();
                    meta.resource_version = Some(version.to_string());
                    r.set_metadata(meta);
                    next.resources.insert(key.clone(), Arc::new(r));
                    version.to_string()
                }
            };
            outcomes.push(ApplyOutcome {
                key,
                action,
                resource_version,
            });
        }
        if outcomes.iter().any(|o| o.action != ApplyAction::Unchanged) {
            next.version = version;
            self.publish(&mut guard, next);
        }
        Ok(outcomes)
    }

    /// Deletes one resource.
    pub fn delete(&self, key: &ResourceKey) -> Result<Arc<Resource>, StoreError> {
        let mut guard = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = (**guard).clone();
        let removed = next
            .resources
            .remove(key)
            .ok_or_else(|| StoreError::NotFound(key.clone()))?;
        next.version += 1;
        self.publish(&mut guard, next);
        Ok(removed)
    }

    fn publish(&self, guard: &mut Arc<Snapshot>, next: Snapshot) {
        let snap = Arc::new(next);
        *guard = snap.clone();
        // No receivers is fine: the snapshot is still the store's state.
        self.tx.send_replace(snap);
    }
}

/// Equal apart from the resourceVersion the store assigns.
fn same_content(old: &Resource, new: &Resource) -> bool {
    let mut a = old.metadata.clone();
    let mut b = new.metadata.clone();
    a.resource_version = None;
    b.resource_version = None;
    a == b && old.spec == new.spec && strip_meta(&old.raw) == strip_meta(&new.raw)
}

fn strip_meta(v: &serde_json::Value) -> serde_json::Value {
    let mut v = v.clone();
    if let serde_json::Value::Object(m) = &mut v {
        m.remove("metadata");
    }
    v
}

impl ConfigStore for MemoryStore {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}
