//! The service registry: which services exist, on which ports and protocols, and which
//! workload endpoints back them. Pure: built from a configuration snapshot, no I/O.
//!
//! Sources, as Istio 1.0 read them:
//! - Kubernetes Services (name, namespace, cluster IP, named ports) with the Pods their
//!   selector matches (pod IP, labels, service account, the target port resolved by number or
//!   by container port name). The local mesh runtime records its pods the same way.
//! - ServiceEntries (hosts, ports, location, resolution) with their inline endpoints, or the
//!   WorkloadEntries their `workloadSelector` picks.
//!
//! A port's protocol comes from the Service port's name (`http`, `http-web`, `grpc`, ...;
//! anything else, or no name, is TCP) or from a ServiceEntry port's `protocol`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service as KubeService};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use keel_config::networking::{Location, Protocol, Resolution, parse_protocol};
use keel_config::store::Snapshot;
use keel_config::{Resource, Spec};

/// The cluster's DNS suffix.
pub const DOMAIN_SUFFIX: &str = "cluster.local";

/// How a service's endpoints are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Endpoints come from the registry (EDS).
    Endpoints,
    /// Endpoints are DNS names the proxy resolves (STRICT_DNS).
    Dns,
    /// Traffic goes where the client sent it (ORIGINAL_DST): ServiceEntry resolution NONE.
    Passthrough,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The fully qualified name: `reviews.default.svc.cluster.local`, or a ServiceEntry host.
    pub hostname: String,
    /// Short name and namespace (for Kubernetes services; the ServiceEntry's otherwise).
    pub name: String,
    pub namespace: String,
    /// The virtual IP clients dial, when there is one.
    pub address: Option<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub discovery: Discovery,
    pub mesh_external: bool,
}

impl Service {
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == number)
    }

    /// Every name a client in `client_namespace` may use for this service: the FQDN, and for
    /// Kubernetes services `name.ns`, `name.ns.svc` and (from the same namespace) `name`.
    pub fn client_names(&self, client_namespace: &str) -> Vec<String> {
        let mut names = vec![self.hostname.clone()];
        let k8s_suffix = format!(".{}.svc.{DOMAIN_SUFFIX}", self.namespace);
        if self.hostname.ends_with(&k8s_suffix) {
            names.push(format!("{}.{}", self.name, self.namespace));
            names.push(format!("{}.{}.svc", self.name, self.namespace));
            if client_namespace == self.namespace {
                names.push(self.name.clone());
            }
        }
        if let Some(ip) = self.address {
            names.push(ip.to_string());
        }
        names
    }
}

/// One workload endpoint of a service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// An IP address (or, for DNS services, a host name).
    pub address: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    /// `namespace/pod` for pods; empty otherwise.
    pub workload: String,
}

/// What translation needs from a service registry: services, their endpoints, and who a
/// proxy at an address is. [`Registry`] implements it from configuration (Kubernetes
/// Services and Pods, ServiceEntries and WorkloadEntries); a registry that watches a
/// Kubernetes API server implements the same.
pub trait ServiceRegistry: Send + Sync {
    fn services(&self) -> Box<dyn Iterator<Item = &Arc<Service>> + '_>;
    fn service(&self, hostname: &str) -> Option<&Arc<Service>>;
    /// Endpoints of `hostname:port`, in a stable order.
    fn endpoints(&self, hostname: &str, port: u16) -> &[Endpoint];
    fn workload(&self, ip: IpAddr) -> Option<&Workload>;

    /// Services whose endpoints include `ip`: what a sidecar at `ip` serves, with the
    /// service port and the workload's port behind it.
    fn services_of(&self, ip: IpAddr) -> Vec<(Arc<Service>, ServicePort, u16)> {
        let ip = ip.to_string();
        let mut out = Vec::new();
        for svc in self.services() {
            for port in &svc.ports {
                for ep in self.endpoints(&svc.hostname, port.port) {
                    if ep.address == ip {
                        out.push((svc.clone(), port.clone(), ep.port));
                    }
                }
            }
        }
        out
    }
}

impl ServiceRegistry for Registry {
    fn services(&self) -> Box<dyn Iterator<Item = &Arc<Service>> + '_> {
        Box::new(self.services.values())
    }

    fn service(&self, hostname: &str) -> Option<&Arc<Service>> {
        self.services.get(hostname)
    }

    fn endpoints(&self, hostname: &str, port: u16) -> &[Endpoint] {
        self.endpoints
            .get(&(hostname.to_owned(), port))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        self.workloads.get(&ip)
    }

    fn services_of(&self, ip: IpAddr) -> Vec<(Arc<Service>, ServicePort, u16)> {
        self.served
            .get(&ip.to_string())
            .cloned()
            .unwrap_or_default()
    }
}

/// Pods by (namespace, label key, label value).
type PodsByLabel<'a> = HashMap<(&'a str, &'a str, &'a str), Vec<&'a Resource>>;

/// Services and their endpoints, by FQDN and port.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    endpoints: HashMap<(String, u16), Vec<Endpoint>>,
    /// Pod workloads by IP: what a connecting sidecar is.
    workloads: HashMap<IpAddr, Workload>,
    /// What the endpoint at an address serves, in `services_of`'s order: indexed once
    /// rather than scanned for every connecting proxy.
    served: HashMap<String, Vec<(Arc<Service>, ServicePort, u16)>>,
}

/// A running workload (pod): who a proxy at its IP is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
}

impl Registry {
    /// Builds the registry from a configuration snapshot.
    pub fn from_config(snapshot: &Snapshot) -> Registry {
        let mut reg = Registry::default();
        let pods: Vec<&Resource> = snapshot
            .resources
            .values()
            .map(Arc::as_ref)
            .filter(|r| matches!(r.spec, Spec::Pod(_)))
            .collect();
        // Pods by (namespace, label, value): a service's selector looks up the pods with
        // its first label instead of scanning every pod.
        let mut by_label: PodsByLabel = HashMap::new();
        for r in pods.iter().copied() {
            for (k, v) in r.labels() {
                by_label
                    .entry((r.namespace(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(r);
            }
        }
        for r in pods.iter().copied() {
            if let Spec::Pod(p) = &r.spec
                && let Some(ip) = pod_ip(p)
            {
                reg.workloads.insert(
                    ip,
                    Workload {
                        name: r.name().to_owned(),
                        namespace: r.namespace().to_owned(),
                        labels: r.labels().clone(),
                        service_account: service_account(p),
                    },
                );
            }
        }
        for r in snapshot.resources.values() {
            match &r.spec {
                Spec::Service(s) => reg.add_kube_service(r, s, &by_label),
                Spec::ServiceEntry(_) => reg.add_service_entry(r, snapshot),
                _ => {}
            }
        }
        for eps in reg.endpoints.values_mut() {
            eps.sort_by(|a, b| (&a.address, a.port).cmp(&(&b.address, b.port)));
        }
        let mut served: HashMap<String, Vec<_>> = HashMap::new();
        for svc in reg.services.values() {
            for port in &svc.ports {
                for ep in reg.endpoints(&svc.hostname, port.port) {
                    served.entry(ep.address.clone()).or_default().push((
                        svc.clone(),
                        port.clone(),
                        ep.port,
                    ));
                }
            }
        }
        reg.served = served;
        reg
    }

    fn add_kube_service(&mut self, r: &Resource, s: &KubeService, pods: &PodsByLabel<'_>) {
        let Some(spec) = &s.spec else { return };
        let hostname = format!("{}.{}.svc.{DOMAIN_SUFFIX}", r.name(), r.namespace());
        let address = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| *ip != "None")
            .and_then(|ip| ip.parse().ok());
        let mut ports = Vec::new();
        for p in spec.ports.as_deref().unwrap_or_default() {
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue; // UDP and SCTP are not proxied
            }
            let name = p.name.clone().unwrap_or_default();
            ports.push(ServicePort {
                protocol: Protocol::from_port_name(&name),
                name,
                port,
            });
            let selector = spec.selector.clone().unwrap_or_default();
            if selector.is_empty() {
                continue;
            }
            let Some((k, v)) = selector.iter().next() else {
                continue;
            };
            let candidates = pods
                .get(&(r.namespace(), k.as_str(), v.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            for pod_res in candidates {
                if pod_res.namespace() != r.namespace() {
                    continue;
                }
                let Spec::Pod(pod) = &pod_res.spec else {
                    continue;
                };
                let labels = pod_res.labels();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                let Some(ip) = pod_ip(pod) else { continue };
                let Some(target) = target_port(p.target_port.as_ref(), port, pod) else {
                    continue;
                };
                self.endpoints
                    .entry((hostname.clone(), port))
                    .or_default()
                    .push(Endpoint {
                        address: ip.to_string(),
                        port: target,
                        labels: labels.clone(),
                        service_account: service_account(pod),
                        workload: format!("{}/{}", pod_res.namespace(), pod_res.name()),
                    });
            }
        }
        self.services.insert(
            hostname.clone(),
            Arc::new(Service {
                hostname,
                name: r.name().to_owned(),
                namespace: r.namespace().to_owned(),
                address,
                ports,
                discovery: Discovery::Endpoints,
                mesh_external: false,
            }),
        );
    }

    fn add_service_entry(&mut self, r: &Resource, snapshot: &Snapshot) {
        let Spec::ServiceEntry(se) = &r.spec else {
            return;
        };
        let discovery = match se.resolution.unwrap_or_default() {
            Resolution::None => Discovery::Passthrough,
            Resolution::Static => Discovery::Endpoints,
            Resolution::Dns | Resolution::DnsRoundRobin => Discovery::Dns,
        };
        let ports: Vec<ServicePort> = se
            .ports
            .iter()
            .filter_map(|p| {
                Some(ServicePort {
                    name: p.name.clone().unwrap_or_default(),
                    port: u16::try_from(p.number).ok()?,
                    protocol: parse_protocol(&p.protocol).unwrap_or(Protocol::Tcp),
                })
            })
            .collect();
        let address = se.addresses.iter().find_map(|a| a.parse::<IpAddr>().ok());
        // The workloads behind the entry: inline endpoints, or WorkloadEntries it selects.
        let mut workloads: Vec<keel_config::networking::WorkloadEntry> = se.endpoints.clone();
        if let Some(sel) = &se.workload_selector {
            for w in snapshot.resources.values() {
                if let Spec::WorkloadEntry(we) = &w.spec
                    && w.namespace() == r.namespace()
                    && sel
                        .match_labels
                        .iter()
                        .all(|(k, v)| we.labels.get(k) == Some(v))
                {
                    workloads.push(we.clone());
                }
            }
        }
        for host in &se.hosts {
            let hostname = keel_config::load::qualify_host(host, r.namespace());
            for port in &ports {
                let eps: Vec<Endpoint> = match discovery {
                    Discovery::Passthrough => Vec::new(),
                    Discovery::Dns if workloads.is_empty() => vec![Endpoint {
                        address: host.clone(),
                        port: port.port,
                        labels: BTreeMap::new(),
                        service_account: String::new(),
                        workload: String::new(),
                    }],
                    _ => workloads
                        .iter()
                        .map(|w| Endpoint {
                            address: w.address.clone(),
                            port: w
                                .ports
                                .get(&port.name)
                                .and_then(|p| u16::try_from(*p).ok())
                                .unwrap_or(port.port),
                            labels: w.labels.clone(),
                            service_account: w.service_account.clone().unwrap_or_default(),
                            workload: String::new(),
                        })
                        .collect(),
                };
                if !eps.is_empty() {
                    self.endpoints
                        .entry((hostname.clone(), port.port))
                        .or_default()
                        .extend(eps);
                }
            }
            self.services.insert(
                hostname.clone(),
                Arc::new(Service {
                    hostname,
                    name: r.name().to_owned(),
                    namespace: r.namespace().to_owned(),
                    address,
                    ports: ports.clone(),
                    discovery,
                    mesh_external: se.location.unwrap_or_default() == Location::MeshExternal,
                }),
            );
        }
    }
}

/// A running pod's address. Host-network pods (the local mesh's control-plane components)
/// share the host's address and have no sidecar: they are not mesh workloads.
fn pod_ip(p: &Pod) -> Option<IpAddr> {
    if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if status.phase.as_deref().is_some_and(|ph| ph != "Running") {
        return None;
    }
    status.pod_ip.as_deref()?.parse().ok()
}

fn service_account(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".to_owned())
}

/// The pod port a Service port sends to: a number, a container port name, or the port itself.
fn target_port(target: Option<&IntOrString>, port: u16, pod: &Pod) -> Option<u16> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.as_deref().unwrap_or_default())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_config::load_str;

    fn snapshot(yaml: &str) -> Snapshot {
        let report = load_str("t.yaml", yaml, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        Snapshot {
            version: 1,
            resources: report
                .resources
                .into_iter()
                .map(|r| (r.key(), Arc::new(r)))
                .collect(),
        }
    }

    const BOOKINFO_REVIEWS: &str = "apiVersion: v1
kind: Service
metadata: {name: reviews}
spec:
  clusterIP: 240.240.0.3
  ports: [{port: 9080, name: http}]
  selector: {app: reviews}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1-a, labels: {app: reviews, version: v1}}
spec:
  serviceAccountName: bookinfo-reviews
  containers: [{name: reviews, image: keel/bookinfo-reviews:0.1}]
status: {phase: Running, podIP: 10.10.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v2-a, labels: {app: reviews, version: v2}}
spec:
  containers: [{name: reviews, image: keel/bookinfo-reviews:0.1}]
status: {phase: Running, podIP: 10.10.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v3-pending, labels: {app: reviews, version: v3}}
spec:
  containers: [{name: reviews, image: keel/bookinfo-reviews:0.1}]
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: host-network, labels: {app: reviews, version: v9}}
spec:
  hostNetwork: true
  containers: [{name: reviews, image: keel/bookinfo-reviews:0.1}]
status: {phase: Running, podIP: 127.0.0.1}
";

    #[test]
    fn kubernetes_services_and_their_pods() {
        let reg = Registry::from_config(&snapshot(BOOKINFO_REVIEWS));
        let svc = reg.service("reviews.default.svc.cluster.local").unwrap();
        assert_eq!(svc.address, Some("240.240.0.3".parse().unwrap()));
        assert_eq!(svc.ports[0].protocol, Protocol::Http);
        let eps = reg.endpoints(&svc.hostname, 9080);
        assert_eq!(
            eps.len(),
            2,
            "the pending pod and the host-network pod have no endpoint"
        );
        assert!(reg.workload("127.0.0.1".parse().unwrap()).is_none());
        assert_eq!(eps[0].address, "10.10.0.5");
        assert_eq!(eps[0].labels["version"], "v1");
        assert_eq!(eps[0].service_account, "bookinfo-reviews");
        assert_eq!(eps[1].service_account, "default");
        let names = svc.client_names("default");
        assert!(
            names.contains(&"reviews".to_owned()) && names.contains(&"reviews.default".to_owned())
        );
        assert!(!svc.client_names("other").contains(&"reviews".to_owned()));
        let served = reg.services_of("10.10.0.6".parse().unwrap());
        assert_eq!(served.len(), 1);
        assert_eq!(
            reg.workload("10.10.0.5".parse().unwrap()).unwrap().labels["version"],
            "v1"
        );
    }

    #[test]
    fn service_entries() {
        let reg = Registry::from_config(&snapshot(
            "apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: googleapis}
spec:
  hosts: ['*.googleapis.com']
  ports: [{number: 443, name: https, protocol: http}]
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.example.com]
  ports: [{number: 5432, name: tcp-pg, protocol: TCP}]
  resolution: STATIC
  endpoints: [{address: 10.1.2.3, ports: {tcp-pg: 6432}, labels: {role: primary}}]
",
        ));
        let g = reg.service("*.googleapis.com").unwrap();
        assert_eq!(g.discovery, Discovery::Passthrough);
        assert_eq!(g.ports[0].protocol, Protocol::Http);
        assert!(g.mesh_external);
        let db = reg.service("db.example.com").unwrap();
        assert_eq!(db.discovery, Discovery::Endpoints);
        let eps = reg.endpoints("db.example.com", 5432);
        assert_eq!((eps[0].address.as_str(), eps[0].port), ("10.1.2.3", 6432));
    }
}
