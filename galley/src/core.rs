//! Galley's write and read logic, free of HTTP: apply, delete, get, list.
//!
//! The configuration directory is the source of truth. Resources applied through the API
//! live one per file at `NAMESPACE/PLURAL/NAME.yaml` (cluster-scoped kinds under `_cluster/`),
//! carrying their resourceVersion; files people put there by hand are served too. Every write
//! is one [`DirectoryStore::transaction`]: validated first (all documents, all errors), then
//! checked for conflicts, then written atomically, then published as one snapshot.

use std::path::PathBuf;
use std::sync::Arc;

use keel_config::store::{ConfigStore, DirectoryStore, FileState, FileWrite, TxError, TxView};
use keel_config::{Kind, LabelSelector, Loader, Resource, ResourceKey};
use serde::Serialize;

use crate::metrics::Metrics;

/// One input file of an apply or delete: its name (for diagnostics) and text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, Serialize)]
pub struct Source {
    pub name: String,
    pub text: String,
}

/// What an apply or delete did to one resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub kind: String,
    pub group: String,
    pub namespace: String,
    pub name: String,
    /// `created`, `configured`, `unchanged` or `deleted`.
    pub action: String,
    pub resource_version: String,
}

/// Why a request was refused; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the configuration is invalid; nothing was applied")]
    Invalid { diagnostics: Vec<String> },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Invalid { .. } => 422,
            ApiError::Conflict(_) => 409,
            ApiError::NotFound(_) => 404,
            ApiError::BadRequest(_) => 400,
            ApiError::Internal(_) => 500,
        }
    }

    pub fn details(&self) -> Vec<String> {
        match self {
            ApiError::Invalid { diagnostics } => diagnostics.clone(),
            _ => Vec::new(),
        }
    }
}

impl<E: Into<ApiError>> From<TxError<E>> for ApiError {
    fn from(e: TxError<E>) -> Self {
        match e {
            TxError::Aborted(e) => e.into(),
            TxError::Io(e) => {
                ApiError::Internal(format!("writing the configuration directory failed: {e}"))
            }
        }
    }
}

/// Galley's state: the store and the metrics.
#[derive(Debug)]
pub struct Galley {
    pub store: Arc<DirectoryStore>,
    pub metrics: Arc<Metrics>,
}

fn outcome(key: &ResourceKey, action: &str, rv: &str) -> Outcome {
    Outcome {
        kind: key.kind.name().to_owned(),
        group: key.kind.info().group.to_owned(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        action: action.to_owned(),
        resource_version: rv.to_owned(),
    }
}

/// Where the API keeps a resource it manages.
pub fn managed_path(key: &ResourceKey) -> PathBuf {
    let ns = if key.namespace.is_empty() {
        "_cluster"
    } else {
        &key.namespace
    };
    PathBuf::from(ns)
        .join(key.kind.info().plural)
        .join(format!("{}.yaml", key.name))
}

/// Equal as far as a user is concerned: everything but resourceVersion and creationTimestamp.
fn same_content(old: &Resource, new: &Resource) -> bool {
    let strip = |r: &Resource| {
        let mut v = r.to_value();
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.remove("resourceVersion");
            m.remove("creationTimestamp");
        }
        v
    };
    strip(old) == strip(new)
}

impl Galley {
    pub fn new(store: Arc<DirectoryStore>, metrics: Arc<Metrics>) -> Self {
        Galley { store, metrics }
    }

    /// Validates every document of `text` and, if all are valid and none conflicts, creates
    /// or updates them all in one atomic write. `dry_run` validates and reports without
    /// writing.
    pub fn apply(
        &self,
        sources: &[Source],
        namespace: &str,
        dry_run: bool,
    ) -> Result<(Vec<Outcome>, Vec<String>), ApiError> {
        let mut loader = Loader::new().default_namespace(namespace);
        for s in sources {
            loader.add_str(&s.name, &s.text);
        }
        let report = loader.finish();
        for o in &report.outcomes {
            let kind = o.key.as_ref().map(|k| k.kind.name()).unwrap_or("unknown");
            self.metrics.validation(kind, o.accepted);
        }
        if !report.is_ok() {
            return Err(ApiError::Invalid {
                diagnostics: report.diagnostics.iter().map(ToString::to_string).collect(),
            });
        }
        let warnings: Vec<String> = report.warnings().map(ToString::to_string).collect();
        if report.resources.is_empty() {
            return Err(ApiError::BadRequest(
                "no objects passed to apply".to_owned(),
            ));
        }
        let resources = report.resources;
        let outcomes = self
            .store
            .transaction(|view| plan_apply(view, resources, dry_run))?;
        Ok((outcomes, warnings))
    }

    /// Deletes the resources `text` describes (as `kubectl delete -f`), all or none.
    pub fn delete_documents(
        &self,
        sources: &[Source],
        namespace: &str,
    ) -> Result<Vec<Outcome>, ApiError> {
        let mut loader = Loader::new().default_namespace(namespace);
        for s in sources {
            loader.add_str(&s.name, &s.text);
        }
        let report = loader.finish();
        // Deleting needs only the identity of each document, but a document whose kind or
        // name cannot be read is an error.
        let mut keys = Vec::new();
        for o in &report.outcomes {
            match &o.key {
                Some(k) => keys.push(k.clone()),
                None => {
                    return Err(ApiError::Invalid {
                        diagnostics: report.errors().map(ToString::to_string).collect(),
                    });
                }
            }
        }
        if let Some(d) = report
            .diagnostics
            .iter()
            .find(|d| d.is_error() && d.message.starts_with("invalid YAML"))
        {
            return Err(ApiError::Invalid {
                diagnostics: vec![d.to_string()],
            });
        }
        self.delete(&keys)
    }

    /// Deletes resources by key, all or none.
    pub fn delete(&self, keys: &[ResourceKey]) -> Result<Vec<Outcome>, ApiError> {
        Ok(self.store.transaction(|view| {
            let mut outcomes = Vec::new();
            let mut writes = Vec::new();
            for key in keys {
                let Some(existing) = view.snapshot.get(key) else {
                    return Err(ApiError::NotFound(not_found(key)));
                };
                let path = owned_path(view, key)?;
                writes.push(FileWrite {
                    path,
                    content: None,
                });
                outcomes.push(outcome(
                    key,
                    "deleted",
                    existing.metadata.resource_version.as_deref().unwrap_or(""),
                ));
            }
            Ok((outcomes, writes))
        })?)
    }

    pub fn get(&self, key: &ResourceKey) -> Result<Arc<Resource>, ApiError> {
        self.store
            .snapshot()
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(not_found(key)))
    }

    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<Arc<Resource>> {
        self.store
            .snapshot()
            .list(kind, namespace, selector)
            .cloned()
            .collect()
    }

    /// Files with problems (invalid edits, duplicate definitions).
    pub fn file_problems(&self) -> Vec<FileState> {
        let states = self.store.file_states();
        let bad = states.iter().filter(|s| !s.errors.is_empty()).count();
        self.metrics.set_file_errors(bad);
        states
            .into_iter()
            .filter(|s| !s.errors.is_empty())
            .collect()
    }
}

fn not_found(key: &ResourceKey) -> String {
    let info = key.kind.info();
    let qualified = if info.group.is_empty() {
        info.plural.to_owned()
    } else {
        format!("{}.{}", info.plural, info.group)
    };
    format!("{qualified} \"{}\" not found", key.name)
}

/// The file that holds `key`, if galley may rewrite or remove it whole.
fn owned_path(view: &TxView<'_>, key: &ResourceKey) -> Result<PathBuf, ApiError> {
    match view.owner(key) {
        None => {
            let path = managed_path(key);
            if view.path_holds_other(&path, key) {
                return Err(ApiError::Conflict(format!(
                    "{key} would be written to {}, which holds something else (edit or move that file)",
                    path.display()
                )));
            }
            Ok(path)
        }
        Some(owner) if owner.single_document => Ok(owner.path.clone()),
        Some(owner) => Err(ApiError::Conflict(format!(
            "{key} is defined in {}, a file with other documents (or with errors); edit that file instead",
            owner.path.display()
        ))),
    }
}

fn plan_apply(
    view: &TxView<'_>,
    resources: Vec<Resource>,
    dry_run: bool,
) -> Result<(Vec<Outcome>, Vec<FileWrite>), ApiError> {
    let rv = view.next_version.to_string();
    let now = k8s_now();
    let mut outcomes = Vec::with_capacity(resources.len());
    let mut writes = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for mut r in resources {
        let key = r.key();
        if !seen.insert(key.clone()) {
            return Err(ApiError::BadRequest(format!(
                "{key} appears more than once in this apply"
            )));
        }
        let existing = view.snapshot.get(&key);
        if let Some(given) = r.metadata.resource_version.clone() {
            let current = existing.and_then(|e| e.metadata.resource_version.clone());
            match current {
                None => {
                    return Err(ApiError::Conflict(format!(
                        "{key} does not exist; an object to create must not carry a resourceVersion ({given})"
                    )));
                }
                Some(current) if current != given => {
                    return Err(ApiError::Conflict(format!(
                        "Operation cannot be fulfilled on {key}: the object has been modified (resourceVersion {current}, yours is based on {given}); get it again and reapply your changes"
                    )));
                }
                Some(_) => {}
            }
        }
        let mut meta = r.metadata.clone();
        meta.creation_timestamp = existing
            .and_then(|e| e.metadata.creation_timestamp.clone())
            .or_else(|| Some(now.clone()));
        meta.resource_version = None;
        r.set_metadata(meta);
        let action = match existing {
            None => "created",
            Some(old) if same_content(old, &r) => "unchanged",
            Some(_) => "configured",
        };
        if action == "unchanged" {
            let old_rv = existing
                .and_then(|e| e.metadata.resource_version.clone())
                .unwrap_or_default();
            outcomes.push(outcome(&key, action, &old_rv));
            continue;
        }
        let path = owned_path(view, &key)?;
        let mut meta = r.metadata.clone();
        meta.resource_version = Some(rv.clone());
        r.set_metadata(meta);
        let content = keel_config::yaml::to_yaml(&r.to_value());
        writes.push(FileWrite {
            path,
            content: Some(content.into_bytes()),
        });
        outcomes.push(outcome(&key, action, &rv));
    }
    if dry_run {
        writes.clear();
    }
    Ok((outcomes, writes))
}

/// Now, as a Kubernetes timestamp.
fn k8s_now() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    // jiff is built without its clock here; take the time from std.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
        .unwrap_or(0);
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs).unwrap_or_default();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts)
}
