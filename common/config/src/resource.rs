//! A validated resource: its kind, metadata, typed spec, and the document as the user wrote
//! it (so `get -o yaml` shows what was applied, not a re-serialisation).

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use crate::authentication::{Policy, RbacConfig, ServiceRole, ServiceRoleBinding};
use crate::kind::Kind;
use crate::mixer::{Adapter, AttributeManifest, QuotaSpec, QuotaSpecBinding, Rule, Template};
use crate::networking::{DestinationRule, Gateway, ServiceEntry, VirtualService, WorkloadEntry};

/// The typed body of a resource.
// Resources are held behind `Arc` in stores and snapshots, so the size spread between
// variants costs nothing worth an extra indirection on every access.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    /// Policy and MeshPolicy.
    Policy(Policy),
    ServiceRole(ServiceRole),
    ServiceRoleBinding(ServiceRoleBinding),
    RbacConfig(RbacConfig),
    Rule(Rule),
    AttributeManifest(AttributeManifest),
    /// An instance of a template, from `kind: metric` (etc.) or `kind: instance`.
    Instance(Template),
    /// A handler of an adapter, from `kind: prometheus` (etc.) or `kind: handler`.
    Handler(Adapter),
    QuotaSpec(QuotaSpec),
    QuotaSpecBinding(QuotaSpecBinding),
    Namespace(Box<Namespace>),
    Service(Box<Service>),
    Deployment(Box<Deployment>),
    Pod(Box<Pod>),
    ServiceAccount(Box<ServiceAccount>),
    Endpoints(Box<Endpoints>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
}

/// Identifies a resource: kind, namespace (empty for cluster-scoped kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resource {
    pub kind: Kind,
    /// The apiVersion the document used (an accepted alias, e.g. `networking.istio.io/v1`).
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
    /// The document as written, apiVersion/kind/metadata included.
    pub raw: Value,
}

impl Resource {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind,
            namespace: self.namespace().to_owned(),
            name: self.name().to_owned(),
        }
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.metadata.labels.as_ref().unwrap_or(&EMPTY)
    }

    /// The full name Mixer uses for instances and handlers: `name.kind.namespace`.
    pub fn mixer_fqn(&self) -> String {
        format!("{}.{}.{}", self.name(), self.kind.name(), self.namespace())
    }

    /// The object as JSON: the document as written with the current metadata.
    pub fn to_value(&self) -> Value {
        let mut v = self.raw.clone();
        if let Value::Object(map) = &mut v {
            map.insert(
                "metadata".to_owned(),
                serde_json::to_value(&self.metadata).unwrap_or(Value::Null),
            );
        }
        v
    }

    /// Replaces the metadata (resourceVersion, labels ...) keeping the typed spec in step for
    /// the Kubernetes kinds, whose typed object carries metadata too.
    pub fn set_metadata(&mut self, metadata: ObjectMeta) {
        match &mut self.spec {
            Spec::Namespace(o) => o.metadata = metadata.clone(),
            Spec::Service(o) => o.metadata = metadata.clone(),
            Spec::Deployment(o) => o.metadata = metadata.clone(),
            Spec::Pod(o) => o.metadata = metadata.clone(),
            Spec::ServiceAccount(o) => o.metadata = metadata.clone(),
            Spec::Endpoints(o) => o.metadata = metadata.clone(),
            Spec::ConfigMap(o) => o.metadata = metadata.clone(),
            Spec::Secret(o) => o.metadata = metadata.clone(),
            _ => {}
        }
        self.metadata = metadata;
    }
}
