//! What an ADS server offers at one moment: per type URL, a version and named resources.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// The resources of one type. The version changes whenever any resource of the type does.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypeResources {
    pub version: String,
    /// Resource name -> resource. Shared, names too: proxies' snapshots hold the same
    /// encoded resources (pilot's outbound clusters) without copying them, and cloning a
    /// map of them copies no strings.
    pub resources: BTreeMap<Arc<str>, Arc<Any>>,
}

/// Everything a server offers a client, by type URL. Types absent here are offered as
/// empty (a client subscribing to them gets an empty response, which is how it learns there
/// is nothing).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdsSnapshot {
    pub types: BTreeMap<String, Arc<TypeResources>>,
}

impl XdsSnapshot {
    pub fn get(&self, type_url: &str) -> Option<&Arc<TypeResources>> {
        self.types.get(type_url)
    }

    /// Whether both offer the same types at the same versions. Where versions are derived
    /// from the resources (pilot's are hashes of them), that is equal content, told without
    /// comparing every resource's bytes.
    pub fn same_versions(&self, other: &XdsSnapshot) -> bool {
        self.types.len() == other.types.len()
            && self
                .types
                .iter()
                .zip(&other.types)
                .all(|((t1, r1), (t2, r2))| t1 == t2 && r1.version == r2.version)
    }

    /// The version of `type_url`, or `""` when the type has never had resources.
    pub fn version(&self, type_url: &str) -> &str {
        self.types
            .get(type_url)
            .map(|t| t.version.as_str())
            .unwrap_or("")
    }
}
