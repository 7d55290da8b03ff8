//! A directory of YAML/JSON files as a config store.
//!
//! Each file is loaded on its own. A file that fails validation (or defines a resource another
//! file already defines) is reported through [`DirectoryStore::file_states`] and a log line,
//! and its last good resources stay in force; fixing the file clears the report. Files are
//! rescanned by [`DirectoryStore::refresh`], which [`DirectoryStore::watch`] calls on an
//! interval: polling notices edits however they are made (editors that write in place, tools
//! that rename a temporary file over the old one) and costs little at config-directory sizes.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::{ConfigStore, Snapshot};
use crate::diagnostic::Diagnostic;
use crate::load::Loader;
use crate::path::FieldPath;
use crate::resource::{Resource, ResourceKey};

/// What a file currently contributes, and what is wrong with it.
#[derive(Clone, Debug)]
pub struct FileState {
    pub path: PathBuf,
    /// The resources in force from this file (its last good version).
    pub resources: Vec<ResourceKey>,
    /// Problems with the file as it is now on disk; empty when it is good.
    pub errors: Vec<Diagnostic>,
}

#[derive(Debug)]
struct FileEntry {
    fingerprint: u64,
    good: Vec<Resource>,
    errors: Vec<Diagnostic>,
}

#[derive(Debug)]
struct DirState {
    files: BTreeMap<PathBuf, FileEntry>,
    /// Keys each file lost to an earlier file that defines the same resource.
    duplicates: BTreeMap<PathBuf, Vec<Diagnostic>>,
    current: Arc<Snapshot>,
}

#[derive(Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
    default_namespace: String,
    state: Mutex<DirState>,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl DirectoryStore {
    /// Opens `dir` (which must exist) and loads it.
    pub fn open(dir: impl Into<PathBuf>, default_namespace: &str) -> std::io::Result<Self> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a directory", dir.display()),
            ));
        }
        let snap = Arc::new(Snapshot::default());
        let (tx, _) = watch::channel(snap.clone());
        let store = DirectoryStore {
            dir,
            default_namespace: default_namespace.to_owned(),
            state: Mutex::new(DirState {
                files: BTreeMap::new(),
                duplicates: BTreeMap::new(),
                current: snap,
            }),
            tx,
        };
        store.refresh();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rescans the directory; publishes a new snapshot if any resource changed. Returns
    /// whether one was published.
    pub fn refresh(&self) -> bool {
        let paths = config_files(&self.dir);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let present: HashSet<&PathBuf> = paths.iter().collect();
        state.files.retain(|p, _| present.contains(p));
        for path in &paths {
            let Ok(bytes) = std::fs::read(path) else {
                // Vanished between listing and reading: the next scan settles it.
                continue;
            };
            let fingerprint = fingerprint(&bytes);
            if state
                .files
                .get(path)
                .is_some_and(|e| e.fingerprint == fingerprint)
            {
                continue;
            }
            let text = String::from_utf8_lossy(&bytes);
            let mut loader = Loader::new().default_namespace(&self.default_namespace);
            loader.add_str(&path.display().to_string(), &text);
            let report = loader.finish();
            let errors: Vec<Diagnostic> = report.errors().cloned().collect();
            let entry = state.files.entry(path.clone()).or_insert(FileEntry {
                fingerprint,
                good: Vec::new(),
                errors: Vec::new(),
            });
            entry.fingerprint = fingerprint;
            if errors.is_empty() {
                entry.good = report.resources;
                entry.errors.clear();
            } else {
                for e in &errors {
                    tracing::warn!(file = %path.display(), error = %e, "invalid configuration file ignored; its last good version stays in force");
                }
                entry.errors = errors;
            }
        }
        let next = self.assemble(&mut state);
        if next.resources == state.current.resources {
            return false;
        }
        let snap = Arc::new(next);
        state.current = snap.clone();
        self.tx.send_replace(snap);
        true
    }

    /// Builds the snapshot from the files' good resources, first file (by path) wins a key.
    fn assemble(&self, state: &mut DirState) -> Snapshot {
        let version = state.current.version + 1;
        let mut resources: BTreeMap<ResourceKey, Arc<Resource>> = BTreeMap::new();
        let mut owner: BTreeMap<ResourceKey, PathBuf> = BTreeMap::new();
        let mut duplicates: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
        for (path, entry) in &state.files {
            for r in &entry.good {
                let key = r.key();
                if let Some(first) = owner.get(&key) {
                    let mut d = Diagnostic::error(
                        FieldPath::root(),
                        format!(
                            "{key} is already defined in {}; this definition is ignored",
                            first.display()
                        ),
                    );
                    d.file = Some(path.display().to_string().into());
                    duplicates.entry(path.clone()).or_default().push(d);
                    continue;
                }
                owner.insert(key.clone(), path.clone());
                // Keep the published Arc (and its resourceVersion) when nothing changed.
                let kept = state.current.resources.get(&key).filter(|old| {
                    let mut a = old.metadata.clone();
                    a.resource_version = None;
                    a == r.metadata && old.spec == r.spec && old.raw == r.raw
                });
                let arc = match kept {
                    Some(old) => old.clone(),
                    None => {
                        let mut r = r.clone();
                        let mut meta = r.metadata.clone();
                        meta.resource_version = Some(version.to_string());
                        r.set_metadata(meta);
                        Arc::new(r)
                    }
                };
                resources.insert(key, arc);
            }
        }
        state.duplicates = duplicates;
        Snapshot { version, resources }
    }

    /// Every file's contribution and problems.
    pub fn file_states(&self) -> Vec<FileState> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .files
            .iter()
            .map(|(path, e)| {
                let mut errors = e.errors.clone();
                errors.extend(state.duplicates.get(path).cloned().unwrap_or_default());
                FileState {
                    path: path.clone(),
                    resources: e.good.iter().map(Resource::key).collect(),
                    errors,
                }
            })
            .collect()
    }

    /// Rescans every `interval` until the store is dropped by all other owners.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                // File reads are small and few; a blocking-pool hop would cost more.
                store.refresh();
            }
        })
    }
}

impl ConfigStore for DirectoryStore {
    fn snapshot(&self) -> Arc<Snapshot> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .current
            .clone()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Config files under `dir`, sorted; hidden files and editor leftovers are skipped.
fn config_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with('~') || name.starts_with('#') {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}
