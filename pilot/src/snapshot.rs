//! One proxy's complete xDS view: clusters, endpoints, listeners and routes, computed from the
//! configuration snapshot and the registry. Pure.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use keel_config::load::qualify_host;
use keel_config::networking::{DestinationRule, Gateway};
use keel_config::store::Snapshot;
use keel_config::{Kind, Spec};
use keel_xds::{Any, ResourceMap, TypeResources, XdsSnapshot};

use crate::proxy::{Proxy, ProxyKind};
use crate::registry::{Registry, ServiceRegistry};
use crate::xds::rds::{RouteContext, ScopedVirtualService};
use crate::xds::{any, cds, eds, lds, rds};

pub const CLUSTER_TYPE: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT_TYPE: &str =
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE_TYPE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// The configuration pilot works from: galley's snapshot and the registry built from it.
#[derive(Debug, Default)]
pub struct Mesh {
    pub config: Snapshot,
    pub registry: Registry,
    /// Mixer's report service (`host`, `port`): when set, every proxy sends access logs there.
    pub telemetry: Option<(String, u16)>,
    /// Mixer's check service (`host`, `port`): when set, sidecars check every inbound request.
    pub policy: Option<(String, u16)>,
    /// Istio's `accessLogFile`: every proxy also logs each request and connection there, in
    /// Envoy's default format (`/dev/stdout` in Istio's demo profile).
    pub access_log_file: Option<String>,
    /// What every proxy's configuration shares, built (and encoded) once per configuration
    /// on first use rather than once per proxy.
    shared: std::sync::OnceLock<Arc<SharedParts>>,
    /// Sidecar route configurations by (namespace, workload labels when some route matches
    /// on source labels): proxies alike share them.
    sidecar_routes: std::sync::Mutex<HashMap<RoutesKey, Arc<TypeResources>>>,
    /// The previous configuration's parts, to reuse where nothing changed (see
    /// [`Mesh::reusing`]).
    previous: std::sync::Mutex<Reuse>,
}

/// What a new [`Mesh`] takes over from the one before it: resources that come out the same
/// keep their `Arc`, so the ADS server tells them unchanged by pointer and sends proxies
/// only what changed, and memory holds one copy. Only parts are kept, never the old mesh,
/// so meshes do not chain.
#[derive(Debug, Default)]
struct Reuse {
    shared: Option<Arc<SharedParts>>,
    routes: HashMap<RoutesKey, Arc<TypeResources>>,
}

/// Which sidecars share route configurations: namespace, and labels (empty unless a route
/// matches on source labels).
type RoutesKey = (String, BTreeMap<String, String>);

/// The parts of a proxy's configuration that do not depend on the proxy.
#[derive(Debug)]
struct SharedParts {
    /// Every service's outbound clusters, encoded, and a hash of them all.
    outbound_clusters: Arc<ResourceMap>,
    outbound_hash: u64,
    /// Every sidecar's outbound listeners, encoded, and their hash.
    outbound_listeners: Arc<ResourceMap>,
    outbound_listeners_hash: u64,
    /// Every service's endpoints (the same resources for every proxy).
    endpoints: Arc<TypeResources>,
}

impl Mesh {
    pub fn new(config: Snapshot) -> Mesh {
        let registry = Registry::from_config(&config);
        Mesh {
            config,
            registry,
            telemetry: None,
            policy: None,
            access_log_file: None,
            shared: std::sync::OnceLock::new(),
            sidecar_routes: std::sync::Mutex::new(HashMap::new()),
            previous: std::sync::Mutex::new(Reuse::default()),
        }
    }

    /// Reuses `previous`'s resources wherever this configuration produces the same ones.
    pub fn reusing(self, previous: &Mesh) -> Mesh {
        // A configuration no proxy was computed from (replaced within the debounce) built
        // no parts: pass on what it would have reused, or every resource after it would
        // be new to every proxy's stream.
        let inherited = previous.previous.lock().unwrap_or_else(|p| p.into_inner());
        let routes = previous
            .sidecar_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let reuse = Reuse {
            shared: previous
                .shared
                .get()
                .cloned()
                .or_else(|| inherited.shared.clone()),
            routes: if routes.is_empty() {
                inherited.routes.clone()
            } else {
                routes
            },
        };
        drop(inherited);
        *self.previous.lock().unwrap_or_else(|p| p.into_inner()) = reuse;
        self
    }

    /// Turns on policy checks against mixer at `host:port`.
    pub fn with_policy(mut self, policy: Option<(String, u16)>) -> Mesh {
        self.policy = policy;
        self
    }

    /// Istio's mesh config, the `mesh` key of the `istio` ConfigMap in istio-system, over
    /// the command line's settings: `disablePolicyChecks`, `mixerCheckServer`,
    /// `mixerReportServer` and `accessLogFile`. A mesh config that does not parse changes nothing and is
    /// reported (the `Err`), so a typo never turns checks off silently.
    pub fn with_mesh_config(mut self) -> (Mesh, Option<String>) {
        let key = keel_config::ResourceKey {
            kind: Kind::ConfigMap,
            namespace: "istio-system".into(),
            name: "istio".into(),
        };
        let Some(Spec::ConfigMap(cm)) = self.config.get(&key).map(|r| &r.spec) else {
            return (self, None);
        };
        let Some(text) = cm.data.as_ref().and_then(|d| d.get("mesh")) else {
            return (self, None);
        };
        match mesh_config(text) {
            Ok(m) => {
                self.access_log_file = m.access_log_file;
                if let Some(report) = m.report_server {
                    self.telemetry = Some(report);
                }
                match m.disable_policy_checks {
                    Some(true) => self.policy = None,
                    _ => {
                        if let Some(check) = m.check_server {
                            self.policy = Some(check);
                        }
                    }
                }
                (self, None)
            }
            Err(e) => (
                self,
                Some(format!("istio-system/istio ConfigMap, key mesh: {e}")),
            ),
        }
    }

    /// Turns on telemetry reports to mixer at `host:port`.
    pub fn with_telemetry(mut self, telemetry: Option<(String, u16)>) -> Mesh {
        self.telemetry = telemetry;
        self
    }

    fn shared(&self) -> &SharedParts {
        self.shared.get_or_init(|| {
            let before = self
                .previous
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .shared
                .take();
            let rules = self.destination_rules();
            let (outbound_clusters, outbound_hash) = encode_shared(
                cds::outbound_clusters(&self.registry, &rules)
                    .into_iter()
                    .map(|c| (c.name.clone(), c)),
                before.as_ref().map(|b| &b.outbound_clusters),
            );
            let (outbound_listeners, outbound_listeners_hash) = encode_shared(
                lds::sidecar_outbound_listeners(&self.registry, self.access_logs())
                    .into_iter()
                    .map(|l| (l.name.clone(), l)),
                before.as_ref().map(|b| &b.outbound_listeners),
            );
            let endpoints = resources(
                eds::assignments(&self.registry, &rules)
                    .into_iter()
                    .map(|c| (c.cluster_name.clone(), c))
                    .collect(),
            );
            Arc::new(SharedParts {
                outbound_clusters,
                outbound_hash,
                outbound_listeners,
                outbound_listeners_hash,
                endpoints: reuse_resources(before.as_ref().map(|b| &b.endpoints), endpoints),
            })
        })
    }

    /// Where every proxy's access logs go: mixer's report cluster when telemetry is on,
    /// and the mesh's access log file.
    fn access_logs(&self) -> lds::AccessLogs<'_> {
        lds::AccessLogs {
            cluster: self.telemetry.as_ref().map(|_| cds::TELEMETRY_CLUSTER),
            file: self.access_log_file.as_deref(),
        }
    }

    fn destination_rules(&self) -> HashMap<String, &DestinationRule> {
        let mut out = HashMap::new();
        for (_, r) in self.config.of_kind(Kind::DestinationRule) {
            if let Spec::DestinationRule(dr) = &r.spec {
                out.entry(qualify_host(&dr.host, r.namespace()))
                    .or_insert(dr);
            }
        }
        out
    }

    fn virtual_services(&self) -> Vec<ScopedVirtualService<'_>> {
        self.config
            .of_kind(Kind::VirtualService)
            .filter_map(|(_, r)| match &r.spec {
                Spec::VirtualService(vs) => Some(ScopedVirtualService {
                    namespace: r.namespace(),
                    spec: vs,
                }),
                _ => None,
            })
            .collect()
    }

    fn gateways(&self) -> Vec<(String, &Gateway)> {
        self.config
            .of_kind(Kind::Gateway)
            .filter_map(|(k, r)| match &r.spec {
                Spec::Gateway(g) => Some((format!("{}/{}", k.namespace, k.name), g)),
                _ => None,
            })
            .collect()
    }
}

/// The parts of Istio's MeshConfig pilot honours.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MeshConfig {
    pub disable_policy_checks: Option<bool>,
    pub check_server: Option<(String, u16)>,
    pub report_server: Option<(String, u16)>,
    pub access_log_file: Option<String>,
}

/// Parses the `mesh` YAML; unknown keys are Istio's others and are left alone.
pub fn mesh_config(text: &str) -> Result<MeshConfig, String> {
    let docs = keel_config::yaml::parse_documents(text).map_err(|e| e.to_string())?;
    let Some(v) = docs.into_iter().next().map(|d| d.value) else {
        return Ok(MeshConfig::default());
    };
    if !v.is_object() {
        return Err("expected a map of mesh settings".into());
    }
    let server = |key: &str| -> Result<Option<(String, u16)>, String> {
        match v.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
            Some(serde_json::Value::String(s)) => crate::server::parse_host_port(s)
                .map(Some)
                .map_err(|e| format!("{key}: {e}")),
            Some(other) => Err(format!("{key}: expected HOST:PORT, got {other}")),
        }
    };
    let disable_policy_checks = match v.get("disablePolicyChecks") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(other) => {
            return Err(format!(
                "disablePolicyChecks: expected true or false, got {other}"
            ));
        }
    };
    let access_log_file = match v.get("accessLogFile") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) if s.starts_with('/') => Some(s.clone()),
        Some(other) => {
            return Err(format!(
                "accessLogFile: expected an absolute path such as /dev/stdout, got {other}"
            ));
        }
    };
    Ok(MeshConfig {
        access_log_file,
        disable_policy_checks,
        check_server: server("mixerCheckServer")?,
        report_server: server("mixerReportServer")?,
    })
}

/// Resources every proxy shares, encoded (reusing `before`'s where equal), and a hash of
/// them all.
fn encode_shared<M: prost::Message + prost::Name>(
    items: impl Iterator<Item = (String, M)>,
    before: Option<&Arc<ResourceMap>>,
) -> (Arc<ResourceMap>, u64) {
    let mut out = ResourceMap::new();
    for (name, m) in items {
        let old = before.and_then(|b| b.get(name.as_str()));
        out.insert(name.into(), reuse_or_new(old, any(&m)));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, a) in &out {
        name.hash(&mut h);
        a.value.hash(&mut h);
    }
    // Nothing changed: the same layer, so streams see one pointer unchanged.
    if let Some(b) = before
        && b.len() == out.len()
        && b.values().zip(out.values()).all(|(x, y)| Arc::ptr_eq(x, y))
    {
        return (b.clone(), h.finish());
    }
    (Arc::new(out), h.finish())
}

/// `old` when it holds the same resource, else a new one.
fn reuse_or_new(old: Option<&Arc<Any>>, new: Any) -> Arc<Any> {
    match old {
        Some(o) if **o == new => o.clone(),
        _ => Arc::new(new),
    }
}

/// `new`, with every resource equal to one of `old`'s replaced by `old`'s (and `old` itself
/// when nothing differs).
fn reuse_resources(
    old: Option<&Arc<TypeResources>>,
    new: Arc<TypeResources>,
) -> Arc<TypeResources> {
    let Some(old) = old else { return new };
    if old.version == new.version {
        return old.clone();
    }
    let mut t = TypeResources::new(new.version.clone());
    for (name, any) in new.iter() {
        let kept = old.get(name).filter(|o| ***o == **any).unwrap_or(any);
        t.insert(name.clone(), kept.clone());
    }
    Arc::new(t)
}

fn resources<M: prost::Message + prost::Name>(items: Vec<(String, M)>) -> Arc<TypeResources> {
    let mut t = TypeResources::default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, m) in items {
        let a: Any = any(&m);
        name.hash(&mut h);
        a.value.hash(&mut h);
        t.insert(name.into(), Arc::new(a));
    }
    t.version = format!("{:016x}", h.finish());
    Arc::new(t)
}

/// The shared resources (already encoded) plus the proxy's own, versioned by the shared
/// part's hash and the proxy's own resources.
fn with_shared<M: prost::Message + prost::Name>(
    shared: &Arc<ResourceMap>,
    shared_hash: u64,
    own: Vec<(String, M)>,
) -> TypeResources {
    // The shared resources are a layer every proxy's snapshot points to, not a copy.
    let mut t = TypeResources::layered(String::new(), shared.clone());
    let mut h = std::collections::hash_map::DefaultHasher::new();
    shared_hash.hash(&mut h);
    for (name, m) in own {
        let a: Any = any(&m);
        name.hash(&mut h);
        a.value.hash(&mut h);
        t.insert(name.into(), Arc::new(a));
    }
    t.version = format!("{:016x}", h.finish());
    t
}

/// Everything `proxy` should have.
pub fn proxy_snapshot(mesh: &Mesh, proxy: &Proxy) -> XdsSnapshot {
    let reg: &dyn ServiceRegistry = &mesh.registry;
    let empty = BTreeMap::new();
    let labels = reg.workload(proxy.ip).map(|w| &w.labels).unwrap_or(&empty);
    let rules = mesh.destination_rules();
    let vss = mesh.virtual_services();
    let gateways = mesh.gateways();

    let shared = mesh.shared();
    // Outbound clusters come encoded from the shared parts; these are the proxy's own.
    let mut clusters: Vec<Cluster> = cds::proxy_clusters(reg, proxy);
    if let Some((host, port)) = &mesh.telemetry {
        clusters.push(cds::mixer_cluster(cds::TELEMETRY_CLUSTER, host, *port));
    }
    let logs = mesh.access_logs();
    let policy = match &mesh.policy {
        Some((host, port)) => {
            clusters.push(cds::mixer_cluster(cds::POLICY_CLUSTER, host, *port));
            Some(cds::POLICY_CLUSTER)
        }
        None => None,
    };
    // A sidecar's outbound listeners come encoded from the shared parts.
    let listeners: Arc<TypeResources> = match proxy.kind {
        ProxyKind::Sidecar => Arc::new(with_shared(
            &shared.outbound_listeners,
            shared.outbound_listeners_hash,
            lds::sidecar_inbound_listeners(reg, proxy, logs, policy)
                .into_iter()
                .map(|l| (l.name.clone(), l))
                .collect(),
        )),
        ProxyKind::Router => {
            let listeners: Vec<Listener> =
                lds::listeners(reg, &gateways, &vss, proxy, labels, logs, policy);
            resources(listeners.into_iter().map(|l| (l.name.clone(), l)).collect())
        }
    };
    let routes: Arc<TypeResources> = match proxy.kind {
        ProxyKind::Sidecar => {
            // A sidecar's routes depend on its namespace, and on its labels only where a
            // route matches on source labels: proxies alike share one computation.
            let by_labels = vss.iter().any(|vs| {
                vs.spec
                    .http
                    .iter()
                    .any(|r| r.matches.iter().any(|m| !m.source_labels.is_empty()))
            });
            let key = (
                proxy.namespace.clone(),
                if by_labels {
                    labels.clone()
                } else {
                    BTreeMap::new()
                },
            );
            let cached = mesh
                .sidecar_routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .cloned();
            match cached {
                Some(r) => r,
                None => {
                    let computed: Vec<RouteConfiguration> = lds::sidecar_http_ports(reg)
                        .into_iter()
                        .map(|port| {
                            let ctx = RouteContext {
                                gateways: Vec::new(),
                                labels,
                                port,
                                rules: Some(&rules),
                            };
                            rds::sidecar_routes(port, reg, &vss, &proxy.namespace, &ctx)
                        })
                        .collect();
                    let r = resources(computed.into_iter().map(|r| (r.name.clone(), r)).collect());
                    let r = {
                        let before = mesh.previous.lock().unwrap_or_else(|p| p.into_inner());
                        reuse_resources(before.routes.get(&key), r)
                    };
                    mesh.sidecar_routes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, r.clone());
                    r
                }
            }
        }
        ProxyKind::Router => {
            let mine = lds::gateways_for(&gateways, labels);
            let names: Vec<String> = mine.iter().map(|(n, _)| n.clone()).collect();
            let mut ports: Vec<u16> = mine
                .iter()
                .flat_map(|(_, g)| {
                    g.servers
                        .iter()
                        .filter_map(|s| u16::try_from(s.port.number).ok())
                })
                .collect();
            ports.sort_unstable();
            ports.dedup();
            let routes: Vec<(String, RouteConfiguration)> = ports
                .into_iter()
                .map(|port| {
                    let ctx = RouteContext {
                        gateways: names.clone(),
                        labels,
                        port,
                        rules: Some(&rules),
                    };
                    rds::gateway_routes(&format!("http.{port}"), reg, &vss, &ctx)
                })
                .map(|r: RouteConfiguration| (r.name.clone(), r))
                .collect();
            resources(routes)
        }
    };

    let mut snap = XdsSnapshot::default();
    snap.types.insert(
        CLUSTER_TYPE.into(),
        Arc::new(with_shared(
            &shared.outbound_clusters,
            shared.outbound_hash,
            clusters.into_iter().map(|c| (c.name.clone(), c)).collect(),
        )),
    );
    snap.types
        .insert(ENDPOINT_TYPE.into(), shared.endpoints.clone());
    snap.types.insert(LISTENER_TYPE.into(), listeners);
    snap.types.insert(ROUTE_TYPE.into(), routes);
    snap
}
