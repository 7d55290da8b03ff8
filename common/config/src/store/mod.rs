//! Config stores: where accepted resources live, and how their changes are watched.
//!
//! A store publishes immutable [`Snapshot`]s through a `tokio::sync::watch` channel: a
//! subscriber always sees a whole, consistent set of resources (a multi-document apply appears
//! at once, never half), and [`Snapshot::diff`] tells it what changed since the snapshot it
//! last saw. Two backends exist today: [`MemoryStore`] (in process; galley's write path and
//! tests) and [`DirectoryStore`] (a directory of YAML files, edited by hand or by tools). The
//! Kubernetes backend comes later behind the same trait.

mod dir;
mod memory;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::watch;

pub use dir::{DirectoryStore, FileState, FileWrite, Owner, TxError, TxView};
pub use memory::{ApplyAction, ApplyOutcome, MemoryStore, StoreError};

use crate::kind::Kind;
use crate::resource::{Resource, ResourceKey};
use crate::selector::LabelSelector;

/// Every resource of a store at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases by one with every change that is published.
    pub version: u64,
    pub resources: BTreeMap<ResourceKey, Arc<Resource>>,
}

/// One difference between two snapshots.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Added(Arc<Resource>),
    Updated(Arc<Resource>),
    Deleted(ResourceKey),
}

impl Change {
    pub fn key(&self) -> ResourceKey {
        match self {
            Change::Added(r) | Change::Updated(r) => r.key(),
            Change::Deleted(k) => k.clone(),
        }
    }
}

/// Resources parsed from galley's documents, by the documents' bytes.
#[derive(Debug, Default)]
pub struct ParsedDocuments(HashMap<Box<[u8]>, Arc<Resource>>);

/// One of galley's documents; `None` (logged) when it does not load.
fn parse_document(doc: &[u8]) -> Option<Resource> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(doc) else {
        tracing::warn!("galley sent a resource that is not JSON; skipped");
        return None;
    };
    match crate::load::load_document(&value, None) {
        (Ok(r), _) => Some(r),
        (Err(()), diags) => {
            for d in diags {
                tracing::warn!(error = %d, "galley sent a resource that cannot be read; skipped");
            }
            None
        }
    }
}

impl Snapshot {
    /// The resources of one kind, in key order (a range of the map, not a scan of it).
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ResourceKey, &Arc<Resource>)> {
        let first = ResourceKey {
            kind,
            namespace: String::new(),
            name: String::new(),
        };
        self.resources
            .range(first..)
            .take_while(move |(k, _)| k.kind == kind)
    }

    /// A snapshot from resources as JSON documents, as a subscriber receives them from
    /// galley. A document that does not load is skipped with a log line: galley validated it,
    /// so a mismatch means the two sides run different versions.
    pub fn from_json_documents<'a>(
        version: u64,
        documents: impl IntoIterator<Item = &'a [u8]>,
    ) -> Snapshot {
        Snapshot::from_json_documents_reusing(version, documents, &mut ParsedDocuments::default())
    }

    /// The same, parsing only documents `parsed` has not seen: a subscriber that keeps
    /// `parsed` between galley's snapshots reads a one-resource change as one document,
    /// not the whole mesh again. `parsed` then holds this snapshot's documents.
    pub fn from_json_documents_reusing<'a>(
        version: u64,
        documents: impl IntoIterator<Item = &'a [u8]>,
        parsed: &mut ParsedDocuments,
    ) -> Snapshot {
        let mut snap = Snapshot {
            version,
            ..Snapshot::default()
        };
        let mut now = HashMap::new();
        for doc in documents {
            let resource = match parsed.0.remove(doc) {
                Some(r) => r,
                None => match parse_document(doc) {
                    Some(r) => Arc::new(r),
                    None => continue,
                },
            };
            snap.resources.insert(resource.key(), resource.clone());
            now.insert(Box::<[u8]>::from(doc), resource);
        }
        parsed.0 = now;
        snap
    }

    pub fn get(&self, key: &ResourceKey) -> Option<&Arc<Resource>> {
        self.resources.get(key)
    }

    /// Resources of `kind`, in `namespace` (all namespaces when `None`), matching `selector`.
    pub fn list<'a>(
        &'a self,
        kind: Kind,
        namespace: Option<&'a str>,
        selector: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Arc<Resource>> + 'a {
        self.resources
            .iter()
            .filter(move |(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, r)| r)
            .filter(move |r| selector.matches(r.labels()))
    }

    /// What changed from `older` to `self`. Resources are compared by value, so a rewrite
    /// that changes nothing is not a change.
    pub fn diff(&self, older: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for (key, r) in &self.resources {
            match older.resources.get(key) {
                None => changes.push(Change::Added(r.clone())),
                Some(old) if !Arc::ptr_eq(old, r) && old.as_ref() != r.as_ref() => {
                    changes.push(Change::Updated(r.clone()))
                }
                Some(_) => {}
            }
        }
        for key in older.resources.keys() {
            if !self.resources.contains_key(key) {
                changes.push(Change::Deleted(key.clone()));
            }
        }
        changes
    }
}

/// A source of configuration that can be read and watched.
pub trait ConfigStore: Send + Sync {
    /// The current snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;

    /// A receiver that yields every snapshot published from now on (and holds the current
    /// one).
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}
