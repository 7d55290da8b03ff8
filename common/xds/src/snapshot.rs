//! What an ADS server offers at one moment: per type URL, a version and named resources.

use std::collections::BTreeMap;
use std::collections::btree_map;
use std::iter::Peekable;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// Named resources, shared: snapshots hold the same encoded resources (pilot's outbound
/// clusters) without copying them, and cloning a map of them copies no strings.
pub type ResourceMap = BTreeMap<Arc<str>, Arc<Any>>;

/// The resources of one type. The version changes whenever any resource of the type does.
///
/// Two layers: an optional base many snapshots share (pilot's outbound clusters, the same
/// for every sidecar), held by one `Arc`, and the snapshot's own resources on top. A
/// thousand proxies then hold one map of the mesh's clusters, not a thousand copies, and a
/// server can tell by one pointer that a whole layer did not change. Where both layers
/// name a resource, the own one is the resource.
#[derive(Clone, Debug, Default)]
pub struct TypeResources {
    pub version: String,
    base: Option<Arc<ResourceMap>>,
    own: ResourceMap,
    /// How many of `own`'s names `base` has too, so [`TypeResources::len`] needs no walk.
    shadowed: usize,
}

impl TypeResources {
    /// No resources yet, at `version`.
    pub fn new(version: impl Into<String>) -> TypeResources {
        TypeResources {
            version: version.into(),
            ..TypeResources::default()
        }
    }

    /// `base`'s resources (shared, not copied) at `version`; [`TypeResources::insert`]
    /// adds the snapshot's own on top.
    pub fn layered(version: impl Into<String>, base: Arc<ResourceMap>) -> TypeResources {
        TypeResources {
            version: version.into(),
            base: Some(base),
            ..TypeResources::default()
        }
    }

    /// Adds (or replaces) one of the snapshot's own resources.
    pub fn insert(&mut self, name: Arc<str>, resource: Arc<Any>) {
        let in_base = self.base.as_ref().is_some_and(|b| b.contains_key(&name));
        if self.own.insert(name, resource).is_none() && in_base {
            self.shadowed += 1;
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Any>> {
        self.own
            .get(name)
            .or_else(|| self.base.as_ref().and_then(|b| b.get(name)))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.own.len() + self.base.as_ref().map_or(0, |b| b.len()) - self.shadowed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every resource, both layers, in name order.
    pub fn iter(&self) -> Resources<'_> {
        Resources {
            own: self.own.iter().peekable(),
            base: self.base.as_ref().map(|b| b.iter().peekable()),
        }
    }

    /// The shared layer, if any: equal pointers are equal layers.
    pub fn base(&self) -> Option<&Arc<ResourceMap>> {
        self.base.as_ref()
    }
}

/// Equal resources at equal versions, however they are layered.
impl PartialEq for TypeResources {
    fn eq(&self, other: &TypeResources) -> bool {
        self.version == other.version && self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a> IntoIterator for &'a TypeResources {
    type Item = (&'a Arc<str>, &'a Arc<Any>);
    type IntoIter = Resources<'a>;
    fn into_iter(self) -> Resources<'a> {
        self.iter()
    }
}

/// `t["name"]`: the resource, or a panic naming the missing one (tests).
impl std::ops::Index<&str> for TypeResources {
    type Output = Arc<Any>;
    fn index(&self, name: &str) -> &Arc<Any> {
        match self.get(name) {
            Some(r) => r,
            None => panic!("no resource named {name:?}"),
        }
    }
}

/// Both layers' resources merged in name order; see [`TypeResources::iter`].
#[derive(Debug)]
pub struct Resources<'a> {
    own: Peekable<btree_map::Iter<'a, Arc<str>, Arc<Any>>>,
    base: Option<Peekable<btree_map::Iter<'a, Arc<str>, Arc<Any>>>>,
}

impl<'a> Iterator for Resources<'a> {
    type Item = (&'a Arc<str>, &'a Arc<Any>);

    fn next(&mut self) -> Option<Self::Item> {
        let Some(base) = self.base.as_mut() else {
            return self.own.next();
        };
        match (self.own.peek(), base.peek()) {
            (Some((o, _)), Some((b, _))) => match o.cmp(b) {
                std::cmp::Ordering::Less => self.own.next(),
                std::cmp::Ordering::Greater => base.next(),
                std::cmp::Ordering::Equal => {
                    base.next();
                    self.own.next()
                }
            },
            (Some(_), None) => self.own.next(),
            (None, _) => base.next(),
        }
    }
}

impl FromIterator<(Arc<str>, Arc<Any>)> for TypeResources {
    /// Own resources only, version empty.
    fn from_iter<I: IntoIterator<Item = (Arc<str>, Arc<Any>)>>(items: I) -> TypeResources {
        TypeResources {
            own: items.into_iter().collect(),
            ..TypeResources::default()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn any(v: &str) -> Arc<Any> {
        Arc::new(Any {
            type_url: String::new(),
            value: v.as_bytes().to_vec(),
        })
    }

    #[test]
    fn layers_merge_in_name_order_and_own_resources_win() {
        let base: ResourceMap = [("b", "base-b"), ("d", "base-d")]
            .into_iter()
            .map(|(n, v)| (Arc::from(n), any(v)))
            .collect();
        let base = Arc::new(base);
        let mut t = TypeResources::layered("1", base.clone());
        for (n, v) in [("a", "own-a"), ("d", "own-d"), ("e", "own-e")] {
            t.insert(n.into(), any(v));
        }
        // Replacing an own resource does not count its name twice.
        t.insert("d".into(), any("own-d2"));
        let seen: Vec<(&str, &[u8])> = t.iter().map(|(n, a)| (&**n, &a.value[..])).collect();
        assert_eq!(
            seen,
            [
                ("a", &b"own-a"[..]),
                ("b", b"base-b"),
                ("d", b"own-d2"),
                ("e", b"own-e")
            ]
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t["b"].value, b"base-b");
        assert_eq!(t.get("d").map(|a| &a.value[..]), Some(&b"own-d2"[..]));
        assert!(!t.contains("c"));
        assert!(Arc::ptr_eq(t.base().unwrap(), &base));
        // Equality is of content, not of layering.
        let flat: TypeResources = t.iter().map(|(n, a)| (n.clone(), a.clone())).collect();
        let flat = TypeResources {
            version: "1".into(),
            ..flat
        };
        assert_eq!(flat, t);
        let mut other = flat.clone();
        other.insert("b".into(), any("changed"));
        assert_ne!(other, t);
    }
}
