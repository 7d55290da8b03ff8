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
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{ConfigStore, Snapshot};
use crate::diagnostic::Diagnostic;
use crate::load::Loader;
use crate::path::FieldPath;
use crate::resource::{Resource, ResourceKey};

mod journal;

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
    /// Fingerprint of the content in force (good or reported).
    fingerprint: u64,
    /// A changed content seen once by a settling rescan, not yet taken.
    unsettled: Option<u64>,
    /// The file's metadata when the content in force was read, kept only when that content
    /// was already old then (see [`FileStat::settled_before`]): while the metadata stays the
    /// same, rescans need not read the file.
    clean_stat: Option<FileStat>,
    good: Vec<Resource>,
    /// What each of `good` was last published as (`None`: not yet, or lost to another
    /// file): an unchanged file's resources are taken as they were, not compared again.
    published: Vec<Option<Arc<Resource>>>,
    errors: Vec<Diagnostic>,
}

/// The parts of a file's metadata that change when its content does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStat {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    inode: (u64, u64),
}

/// How long a file must have gone unmodified before its metadata is trusted to show the
/// next change: more than the coarsest timestamp granularity of common filesystems (FAT's
/// two seconds), so a write landing in the same tick as an earlier read still shows.
const SETTLED: Duration = Duration::from_secs(3);

impl FileStat {
    /// `None` where the metadata cannot be had: the file is then always read.
    #[cfg(not(unix))]
    fn of(_path: &Path) -> Option<FileStat> {
        None
    }

    #[cfg(unix)]
    fn of(path: &Path) -> Option<FileStat> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStat {
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
            inode: (m.dev(), m.ino()),
        })
    }

    /// Whether the file had not been modified for [`SETTLED`] at `read_at` (git's
    /// racy-clean rule): a later write then necessarily moves its timestamps.
    fn settled_before(&self, read_at: SystemTime) -> bool {
        let latest = self.modified.max(self.changed);
        let Ok(read) = read_at.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        latest.0 >= 0
            && (read.as_secs() as i64) >= latest.0.saturating_add(SETTLED.as_secs() as i64)
    }
}

#[derive(Debug)]
struct DirState {
    files: BTreeMap<PathBuf, FileEntry>,
    /// The highest resourceVersion handed out or found in a file.
    last_rv: u64,
    /// Keys each file lost to an earlier file that defines the same resource.
    duplicates: BTreeMap<PathBuf, Vec<Diagnostic>>,
    current: Arc<Snapshot>,
}

#[derive(Debug)]
pub struct DirectoryStore {
    dir: PathBuf,
    default_namespace: String,
    /// Serialises rescans and transactions, so a transaction's files are read back together.
    write: Mutex<()>,
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
            write: Mutex::new(()),
            state: Mutex::new(DirState {
                files: BTreeMap::new(),
                last_rv: 0,
                duplicates: BTreeMap::new(),
                current: snap,
            }),
            tx,
        };
        journal::recover(&store.dir)?;
        store.refresh();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rescans the directory; publishes a new snapshot if any resource changed. Returns
    /// whether one was published.
    pub fn refresh(&self) -> bool {
        let _write = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_locked(false)
    }

    /// A rescan that takes a changed file only once two scans in a row read the same
    /// content, so a file caught halfway through being written (an editor truncating then
    /// writing, `cat > file`) is never published. The background watcher uses this.
    pub fn refresh_settled(&self) -> bool {
        let _write = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_locked(true)
    }

    fn refresh_locked(&self, settle: bool) -> bool {
        let paths = config_files(&self.dir);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let present: HashSet<&PathBuf> = paths.iter().collect();
        let known = state.files.len();
        state.files.retain(|p, _| present.contains(p));
        // Whether any file's contribution changed: if none did, neither did the snapshot.
        let mut changed = state.files.len() != known;
        for path in &paths {
            let stat = FileStat::of(path);
            if let (Some(e), Some(now)) = (state.files.get(path), stat)
                && e.unsettled.is_none()
                && e.clean_stat == Some(now)
            {
                continue;
            }
            let read_at = SystemTime::now();
            let Ok(bytes) = std::fs::read(path) else {
                // Vanished between listing and reading: the next scan settles it.
                continue;
            };
            // Metadata taken before the read: a write in between shows as a change next
            // time, and the file is read again.
            let clean_stat = stat.filter(|s| s.settled_before(read_at));
            let fingerprint = fingerprint(&bytes);
            if let Some(e) = state.files.get_mut(path) {
                if e.fingerprint == fingerprint {
                    e.unsettled = None;
                    e.clean_stat = clean_stat;
                    continue;
                }
                if settle && e.unsettled != Some(fingerprint) {
                    e.unsettled = Some(fingerprint);
                    continue;
                }
            }
            changed = true;
            let text = String::from_utf8_lossy(&bytes);
            let mut loader = Loader::new().default_namespace(&self.default_namespace);
            loader.add_str(&path.display().to_string(), &text);
            let report = loader.finish();
            let errors: Vec<Diagnostic> = report.errors().cloned().collect();
            let entry = state.files.entry(path.clone()).or_insert(FileEntry {
                fingerprint,
                unsettled: None,
                clean_stat: None,
                good: Vec::new(),
                published: Vec::new(),
                errors: Vec::new(),
            });
            entry.fingerprint = fingerprint;
            entry.unsettled = None;
            entry.clean_stat = clean_stat;
            if errors.is_empty() {
                entry.published = vec![None; report.resources.len()];
                entry.good = report.resources;
                entry.errors.clear();
            } else {
                for e in &errors {
                    tracing::warn!(file = %path.display(), error = %e, "invalid configuration file ignored; its last good version stays in force");
                }
                entry.errors = errors;
            }
        }
        if !changed {
            return false;
        }
        let mut next = self.assemble(&mut state);
        if same_resources(&next.resources, &state.current.resources) {
            return false;
        }
        // Every published change gets a higher version, deletions included.
        if next.version <= state.current.version {
            state.last_rv = state.last_rv.max(state.current.version) + 1;
            next.version = state.last_rv;
        }
        let snap = Arc::new(next);
        state.current = snap.clone();
        self.tx.send_replace(snap);
        true
    }

    /// Builds the snapshot from the files' good resources, first file (by path) wins a key.
    /// A resource keeps the resourceVersion its file records (galley writes one); others get
    /// a new one whenever their content changes.
    fn assemble(&self, state: &mut DirState) -> Snapshot {
        let recorded = state
            .files
            .values()
            .flat_map(|e| e.good.iter())
            .filter_map(|r| r.metadata.resource_version.as_deref()?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        state.last_rv = state.last_rv.max(recorded);
        let version = state.last_rv + 1;
        let mut assigned = false;
        let mut resources: BTreeMap<ResourceKey, Arc<Resource>> = BTreeMap::new();
        let mut owner: BTreeMap<ResourceKey, PathBuf> = BTreeMap::new();
        let mut duplicates: BTreeMap<PathBuf, Vec<Diagnostic>> = BTreeMap::new();
        let current = state.current.clone();
        for (path, entry) in state.files.iter_mut() {
            for (r, published) in entry.good.iter().zip(entry.published.iter_mut()) {
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
                    *published = None;
                    continue;
                }
                owner.insert(key.clone(), path.clone());
                // Unchanged since this file last published it: taken as it was.
                if let Some(arc) = published {
                    resources.insert(key, arc.clone());
                    continue;
                }
                let old = current.resources.get(&key);
                let arc = match old {
                    // Unchanged: keep the published Arc and its resourceVersion.
                    Some(old) if same_but_version(old, r) => old.clone(),
                    // A version recorded in the file (galley writes one) is kept when it is
                    // new; a file whose content changed under an old version (a hand edit
                    // that left the line, a revert) gets a fresh one, so a writer holding the
                    // old version meets a conflict instead of overwriting the edit.
                    _ if recorded_rv(r).is_some_and(|rv| {
                        old.and_then(|o| recorded_rv(o)).is_none_or(|o| rv > o)
                    }) =>
                    {
                        Arc::new(r.clone())
                    }
                    _ => {
                        assigned = true;
                        let mut r = r.clone();
                        let mut meta = r.metadata.clone();
                        meta.resource_version = Some(version.to_string());
                        r.set_metadata(meta);
                        Arc::new(r)
                    }
                };
                *published = Some(arc.clone());
                resources.insert(key, arc);
            }
        }
        state.duplicates = duplicates;
        if assigned {
            state.last_rv = version;
        }
        Snapshot {
            version: state.last_rv,
            resources,
        }
    }

    /// Runs `f` against the current state and writes the files it returns, atomically: after a
    /// crash at any point, either every file of the transaction is in place or none is. The
    /// store is rescanned before `f` (so hand edits are seen) and after the writes (so the
    /// result is published as one snapshot before this returns).
    pub fn transaction<T, E>(
        &self,
        f: impl FnOnce(&TxView<'_>) -> Result<(T, Vec<FileWrite>), E>,
    ) -> Result<T, TxError<E>> {
        let _write = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        self.refresh_locked(true);
        let (value, writes) = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut owners = BTreeMap::new();
            let mut files = BTreeMap::new();
            for (path, entry) in &state.files {
                let rel = path.strip_prefix(&self.dir).unwrap_or(path).to_path_buf();
                files.insert(
                    rel,
                    (
                        entry.good.iter().map(Resource::key).collect::<Vec<_>>(),
                        !entry.errors.is_empty(),
                    ),
                );
                let single = entry.good.len() == 1 && entry.errors.is_empty();
                for r in &entry.good {
                    owners.entry(r.key()).or_insert_with(|| Owner {
                        path: path.strip_prefix(&self.dir).unwrap_or(path).to_path_buf(),
                        single_document: single,
                    });
                }
            }
            let view = TxView {
                snapshot: &state.current,
                owners: &owners,
                files: &files,
                next_version: state.last_rv.max(state.current.version) + 1,
            };
            f(&view).map_err(TxError::Aborted)?
        };
        if !writes.is_empty() {
            journal::commit(&self.dir, &writes).map_err(TxError::Io)?;
            self.refresh_locked(false);
        }
        Ok(value)
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
                // Reading files and taking the store's lock block: keep them off the
                // async workers that serve ADS and the API.
                let _ = tokio::task::spawn_blocking(move || store.refresh_settled()).await;
            }
        })
    }
}

/// Who holds a resource on disk.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Relative to the store's directory.
    pub path: PathBuf,
    /// The file holds only this resource and is valid, so it may be rewritten whole.
    pub single_document: bool,
}

/// What a transaction sees.
#[derive(Debug)]
pub struct TxView<'a> {
    pub snapshot: &'a Snapshot,
    owners: &'a BTreeMap<ResourceKey, Owner>,
    /// Every file (relative path): the resources it holds, and whether it has errors.
    files: &'a BTreeMap<PathBuf, (Vec<ResourceKey>, bool)>,
    /// The resourceVersion to give every resource this transaction changes.
    pub next_version: u64,
}

impl TxView<'_> {
    pub fn owner(&self, key: &ResourceKey) -> Option<&Owner> {
        self.owners.get(key)
    }

    /// Whether writing `path` whole for `key` would destroy something else: a file there
    /// that holds other resources, or content with errors.
    pub fn path_holds_other(&self, path: &std::path::Path, key: &ResourceKey) -> bool {
        self.files
            .get(path)
            .is_some_and(|(keys, errors)| *errors || keys.iter().any(|k| k != key))
    }
}

/// One file to write (or, with `content: None`, remove), relative to the store's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileWrite {
    pub path: PathBuf,
    pub content: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TxError<E> {
    #[error("{0}")]
    Aborted(E),
    #[error("writing the configuration directory failed: {0}")]
    Io(std::io::Error),
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

fn recorded_rv(r: &Resource) -> Option<u64> {
    r.metadata.resource_version.as_deref()?.parse().ok()
}

/// Equal apart from the resourceVersion (in the metadata, and in the typed object of the
/// Kubernetes kinds, which carries metadata too).
fn same_but_version(a: &Resource, b: &Resource) -> bool {
    let strip = |r: &Resource| {
        let mut r = r.clone();
        let mut meta = r.metadata.clone();
        meta.resource_version = None;
        r.set_metadata(meta);
        if let serde_json::Value::Object(m) = &mut r.raw
            && let Some(serde_json::Value::Object(md)) = m.get_mut("metadata")
        {
            md.remove("resourceVersion");
        }
        r
    };
    strip(a) == strip(b)
}

/// Whether two snapshots' resources are the same: by pointer where they are shared (most
/// are), by content where not.
fn same_resources(
    a: &BTreeMap<ResourceKey, Arc<Resource>>,
    b: &BTreeMap<ResourceKey, Arc<Resource>>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((k1, r1), (k2, r2))| k1 == k2 && (Arc::ptr_eq(r1, r2) || r1 == r2))
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
        // The directory entry's type costs no system call; a symlink is followed.
        let is_dir = match entry.file_type() {
            Ok(t) if t.is_symlink() => p.is_dir(),
            Ok(t) => t.is_dir(),
            Err(_) => p.is_dir(),
        };
        if is_dir {
            walk(&p, out);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_trusted_only_once_the_file_had_settled_when_read() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let stat = FileStat {
            len: 10,
            modified: (100, 500),
            changed: (100, 700),
            inode: (1, 2),
        };
        assert!(!stat.settled_before(at(100)));
        assert!(!stat.settled_before(at(102)));
        assert!(stat.settled_before(at(103)));
        // A metadata change (a restored modification time) counts as a change.
        let touched = FileStat {
            changed: (105, 0),
            ..stat
        };
        assert!(!touched.settled_before(at(103)));
        assert!(touched.settled_before(at(108)));
    }
}
