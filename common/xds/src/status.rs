//! Per-stream sync status: what each connected client was sent, ACKed and NACKed.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// One type on one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    pub sent_version: Option<String>,
    pub sent_nonce: Option<String>,
    pub acked_version: Option<String>,
    /// The last NACK: the version it refused and the client's reason.
    pub nacked: Option<(String, String)>,
    pub pushes: u64,
}

/// One connected stream.
#[derive(Clone, Debug)]
pub struct StreamStatus {
    pub id: u64,
    pub node_id: String,
    pub connected_at: SystemTime,
    pub types: BTreeMap<String, TypeStatus>,
}

/// All connected streams of a server.
#[derive(Debug, Default)]
pub struct SyncRegistry {
    streams: Mutex<BTreeMap<u64, StreamStatus>>,
}

impl SyncRegistry {
    pub(crate) fn insert(&self, id: u64, node_id: String) {
        self.lock().insert(
            id,
            StreamStatus {
                id,
                node_id,
                connected_at: SystemTime::now(),
                types: BTreeMap::new(),
            },
        );
    }

    pub(crate) fn set_node(&self, id: u64, node_id: &str) {
        if let Some(s) = self.lock().get_mut(&id) {
            node_id.clone_into(&mut s.node_id);
        }
    }

    pub(crate) fn update(&self, id: u64, type_url: &str, f: impl FnOnce(&mut TypeStatus)) {
        if let Some(s) = self.lock().get_mut(&id) {
            f(s.types.entry(type_url.to_owned()).or_default());
        }
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// A copy of every stream's status.
    pub fn streams(&self) -> Vec<StreamStatus> {
        self.lock().values().cloned().collect()
    }

    pub fn connected(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, StreamStatus>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
