//! From configuration to pods: what should run, as a Deployment controller and a kubelet
//! would decide it. Pure; the runtime does the starting and stopping.
//!
//! - Every Deployment gives `replicas` (default 1) pods named `DEPLOYMENT-HASH-SUFFIX`,
//!   where HASH identifies the pod template: editing the template gives new names, so the
//!   runtime starts the new pods and stops the old ones (a roll).
//! - A pod gets a sidecar when its namespace is labelled `istio-injection=enabled` and the
//!   pod template does not say `sidecar.istio.io/inject: "false"` (Istio's webhook policy).
//! - Containers' images become programs through the [`ImageTable`].

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Container;
use keel_config::store::Snapshot;
use keel_config::{Kind, Spec};
use serde_json::{Value, json};

use crate::images::ImageTable;

pub const INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";
pub const INJECTION_LABEL: &str = "istio-injection";
/// Marks the Pod objects the runtime writes to galley, so they are told from a user's.
pub const MANAGED_BY: &str = "keel.dev/managed-by";

/// One container to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    /// Program (not yet looked up) and arguments.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub ports: Vec<u16>,
    /// Named container ports, for Services' named `targetPort`s.
    pub named_ports: BTreeMap<String, u16>,
}

/// One pod to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub deployment: String,
    pub template_hash: String,
    pub labels: BTreeMap<String, String>,
    pub service_account: String,
    pub containers: Vec<ContainerPlan>,
    pub inject: bool,
}

impl PodPlan {
    /// The ports the pod's containers declare: what the sidecar captures inbound.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().copied())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A Deployment that cannot run, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanProblem {
    /// `namespace/name`
    pub deployment: String,
    pub reason: String,
}

impl std::fmt::Display for PlanProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "deployment {}: {}", self.deployment, self.reason)
    }
}

/// Namespaces labelled for injection.
fn injected_namespaces(snap: &Snapshot) -> Vec<String> {
    snap.resources
        .values()
        .filter(|r| r.kind == Kind::Namespace)
        .filter(|r| {
            r.labels()
                .get(INJECTION_LABEL)
                .is_some_and(|v| v == "enabled")
        })
        .map(|r| r.name().to_owned())
        .collect()
}

/// Every pod the configuration asks for, in a stable order, and the Deployments that cannot
/// run. Pure.
pub fn desired_pods(snap: &Snapshot, images: &ImageTable) -> (Vec<PodPlan>, Vec<PlanProblem>) {
    let injected = injected_namespaces(snap);
    let mut pods = Vec::new();
    let mut problems = Vec::new();
    for r in snap.resources.values() {
        let Spec::Deployment(dep) = &r.spec else {
            continue;
        };
        let inject_ns = injected.iter().any(|n| n == r.namespace());
        match deployment_pods(r.namespace(), r.name(), dep, images, inject_ns) {
            Ok(mut p) => pods.append(&mut p),
            Err(reason) => problems.push(PlanProblem {
                deployment: format!("{}/{}", r.namespace(), r.name()),
                reason,
            }),
        }
    }
    (pods, problems)
}

fn deployment_pods(
    namespace: &str,
    name: &str,
    dep: &Deployment,
    images: &ImageTable,
    inject_namespace: bool,
) -> Result<Vec<PodPlan>, String> {
    let spec = dep.spec.as_ref().ok_or("has no spec")?;
    let replicas = spec.replicas.unwrap_or(1);
    let replicas = u32::try_from(replicas).map_err(|_| "spec.replicas is negative")?;
    let template = &spec.template;
    let meta = template.metadata.clone().unwrap_or_default();
    let pod_spec = template
        .spec
        .as_ref()
        .ok_or("spec.template.spec is missing")?;
    let template_json = serde_json::to_string(template).map_err(|e| e.to_string())?;
    let template_hash = template_hash(&template_json);
    let inject = inject_namespace
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(INJECT_ANNOTATION))
            .is_none_or(|v| v != "false");
    let mut containers = Vec::new();
    for (i, c) in pod_spec.containers.iter().enumerate() {
        containers.push(
            container_plan(c, images)
                .map_err(|e| format!("spec.template.spec.containers[{i}] ({}): {e}", c.name))?,
        );
    }
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert("pod-template-hash".into(), template_hash.clone());
    let service_account = pod_spec
        .service_account_name
        .clone()
        .or_else(|| pod_spec.service_account.clone())
        .unwrap_or_else(|| "default".into());
    Ok((0..replicas)
        .map(|i| PodPlan {
            namespace: namespace.to_owned(),
            name: pod_name(namespace, name, &template_hash, i),
            deployment: name.to_owned(),
            template_hash: template_hash.clone(),
            labels: labels.clone(),
            service_account: service_account.clone(),
            containers: containers.clone(),
            inject,
        })
        .collect())
}

/// A template's hash, in Kubernetes' alphabet.
pub fn template_hash(template: &str) -> String {
    safe_encode(fnv1a(template.as_bytes()), 10)
}

/// The name of a Deployment's `index`th pod: `DEPLOYMENT-HASH-SUFFIX`, as a ReplicaSet names
/// its pods (the suffix is derived, not random, so names survive a runtime restart).
pub fn pod_name(namespace: &str, deployment: &str, template_hash: &str, index: u32) -> String {
    let seed = format!("{namespace}/{deployment}/{template_hash}/{index}");
    let suffix = safe_encode(fnv1a(seed.as_bytes()), 5);
    format!("{deployment}-{template_hash}-{suffix}")
}

fn container_plan(c: &Container, images: &ImageTable) -> Result<ContainerPlan, String> {
    let image = c.image.clone().ok_or("has no image")?;
    let entry = images.lookup(&image).map_err(|e| e.to_string())?;
    // As on Kubernetes: `command` replaces the entrypoint (and its arguments), `args`
    // follow it.
    let mut argv = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.clone(),
        _ => entry.command.clone(),
    };
    argv.extend(c.args.iter().flatten().cloned());
    let mut env = entry.env.clone();
    for (i, e) in c.env.iter().flatten().enumerate() {
        match (&e.value, &e.value_from) {
            (Some(v), _) => {
                env.insert(e.name.clone(), v.clone());
            }
            (None, Some(from)) => {
                let field = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .ok_or_else(|| {
                        format!(
                            "env[{i}] ({}): only fieldRef is supported by the local mesh",
                            e.name
                        )
                    })?;
                // Resolved when the pod starts (its address is not known yet).
                env.insert(e.name.clone(), format!("$(keel.field:{field})"));
            }
            (None, None) => {
                env.insert(e.name.clone(), String::new());
            }
        }
    }
    let ports = c
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter_map(|p| u16::try_from(p.container_port).ok())
        .collect();
    let named_ports = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    Ok(ContainerPlan {
        name: c.name.clone(),
        image,
        argv,
        env,
        ports,
        named_ports,
    })
}

/// The pod's own facts a `fieldRef` may name.
pub fn resolve_field(value: &str, pod: &PodPlan, ip: &str) -> Result<String, String> {
    let Some(field) = value
        .strip_prefix("$(keel.field:")
        .and_then(|v| v.strip_suffix(')'))
    else {
        return Ok(value.to_owned());
    };
    Ok(match field {
        "metadata.name" => pod.name.clone(),
        "metadata.namespace" => pod.namespace.clone(),
        "status.podIP" => ip.to_owned(),
        "spec.serviceAccountName" => pod.service_account.clone(),
        "spec.nodeName" => "local".to_owned(),
        other => {
            return Err(format!(
                "fieldRef {other} is not supported by the local mesh"
            ));
        }
    })
}

/// How one container is doing, as the runtime sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub running: bool,
    pub ready: bool,
    pub restarts: u32,
    /// Why it is not running (`CrashLoopBackOff`, `ContainerCreating`).
    pub waiting_reason: Option<String>,
}

/// A control-plane component shown as a host-network Pod in istio-system, the way Istio 1.0's
/// components were pods there: `get pod -l app=prometheus`, `port-forward` and `logs` find
/// them. Host-network pods are no mesh workloads (pilot and mixer leave them out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentPod {
    /// The Pod's name.
    pub name: &'static str,
    /// The component (its log is `keelctl logs COMPONENT`).
    pub component: &'static str,
    pub container: &'static str,
    pub labels: &'static [(&'static str, &'static str)],
}

/// The annotation naming a component Pod's component.
pub const COMPONENT: &str = "keel.dev/component";

/// Istio 1.0's names and labels for the components the local mesh runs.
pub const COMPONENT_PODS: &[ComponentPod] = &[
    ComponentPod {
        name: "istio-galley-local",
        component: "galley",
        container: "validator",
        labels: &[("app", "galley"), ("istio", "galley")],
    },
    ComponentPod {
        name: "istio-pilot-local",
        component: "pilot",
        container: "discovery",
        labels: &[("app", "pilot"), ("istio", "pilot")],
    },
    ComponentPod {
        name: "istio-telemetry-local",
        component: "mixer",
        container: "mixer",
        labels: &[
            ("app", "telemetry"),
            ("istio", "mixer"),
            ("istio-mixer-type", "telemetry"),
        ],
    },
    ComponentPod {
        name: "istio-policy-local",
        component: "mixer",
        container: "mixer",
        labels: &[
            ("app", "policy"),
            ("istio", "mixer"),
            ("istio-mixer-type", "policy"),
        ],
    },
    ComponentPod {
        name: "prometheus-local",
        component: "prometheus",
        container: "prometheus",
        labels: &[("app", "prometheus")],
    },
    ComponentPod {
        name: "servicegraph-local",
        component: "servicegraph",
        container: "servicegraph",
        labels: &[("app", "servicegraph")],
    },
    ComponentPod {
        name: "grafana-local",
        component: "dashboard",
        container: "grafana",
        labels: &[("app", "grafana")],
    },
];

/// The Pod object of a component listening on `ports` of the host's loopback.
pub fn component_pod_object(
    c: &ComponentPod,
    ports: &[u16],
    start_time: &str,
    running: bool,
    restarts: u32,
) -> Value {
    let labels: BTreeMap<&str, &str> = c.labels.iter().copied().collect();
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"containerPort": p, "hostPort": p}))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": c.name,
            "namespace": "istio-system",
            "labels": labels,
            "annotations": {MANAGED_BY: "keel-local", COMPONENT: c.component},
        },
        "spec": {
            "hostNetwork": true,
            "nodeName": "local",
            "containers": [{"name": c.container, "image": format!("keel/{}", c.component), "ports": ports}],
        },
        "status": {
            "phase": if running { "Running" } else { "Pending" },
            "podIP": "127.0.0.1",
            "hostIP": "127.0.0.1",
            "startTime": start_time,
            "containerStatuses": [{
                "name": c.container,
                "image": format!("keel/{}", c.component),
                "ready": running,
                "restartCount": restarts,
                "state": if running {
                    json!({"running": {"startedAt": start_time}})
                } else {
                    json!({"waiting": {"reason": "CrashLoopBackOff"}})
                },
            }],
        },
    })
}

/// The Pod object the runtime records in galley: what `keelctl get pods` shows and what
/// pilot and mixer read (address, labels, service account).
pub fn pod_object(
    pod: &PodPlan,
    ip: &str,
    host_ip: &str,
    start_time: &str,
    containers: &[ContainerState],
) -> Value {
    let all_running = containers.iter().all(|c| c.running);
    let all_ready = containers.iter().all(|c| c.ready);
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let state = if c.running {
                json!({"running": {"startedAt": start_time}})
            } else {
                json!({"waiting": {"reason": c.waiting_reason.clone().unwrap_or_else(|| "ContainerCreating".into())}})
            };
            json!({
                "name": c.name,
                "image": c.image,
                "ready": c.ready,
                "restartCount": c.restarts,
                "state": state,
            })
        })
        .collect();
    let spec_containers: Vec<Value> = containers
        .iter()
        .map(|c| {
            let ports: Vec<Value> = pod
                .containers
                .iter()
                .find(|p| p.name == c.name)
                .map(|p| {
                    p.ports
                        .iter()
                        .map(|port| json!({"containerPort": port}))
                        .collect()
                })
                .unwrap_or_default();
            json!({"name": c.name, "image": c.image, "ports": ports})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "labels": pod.labels,
            "annotations": {MANAGED_BY: "keel-local"},
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": pod.deployment,
                "uid": format!("{}/{}", pod.namespace, pod.deployment),
            }],
        },
        "spec": {
            "serviceAccountName": pod.service_account,
            "nodeName": "local",
            "containers": spec_containers,
        },
        "status": {
            "phase": if all_running { "Running" } else { "Pending" },
            "podIP": ip,
            "hostIP": host_ip,
            "startTime": start_time,
            "conditions": [{"type": "Ready", "status": if all_ready && all_running { "True" } else { "False" }}],
            "containerStatuses": statuses,
        },
    })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Kubernetes' alphabet for generated names (no vowels, no look-alikes).
fn safe_encode(mut h: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let n = ALPHABET.len() as u64;
    (0..len)
        .map(|_| {
            let c = ALPHABET[(h % n) as usize] as char;
            h /= n;
            c
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn snapshot(yaml: &str) -> Snapshot {
        let report = keel_config::load_str("t.yaml", yaml, Some("default"));
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

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio-injection: enabled}}\n";

    fn deployment(name: &str, replicas: u32, image: &str, extra_meta: &str) -> String {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata:\n      labels: {{app: {name}, version: v1}}\n{extra_meta}    spec:\n      serviceAccountName: bookinfo-{name}\n      containers:\n      - name: {name}\n        image: {image}\n        args: [\"9080\"]\n        env: [{{name: A, value: b}}, {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]\n        ports: [{{containerPort: 9080}}]\n"
        )
    }

    #[test]
    fn deployments_become_named_injected_pods_with_programs() {
        let yaml = format!(
            "{NS}{}{}",
            deployment("reviews", 2, "istio/examples-bookinfo-reviews-v3:1.8.0", ""),
            deployment(
                "details",
                1,
                "keel/bookinfo-details:0.1",
                "      annotations: {sidecar.istio.io/inject: \"false\"}\n"
            )
        );
        let images = ImageTable::builtin("/x".into());
        let (pods, problems) = desired_pods(&snapshot(&yaml), &images);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(pods.len(), 3);
        let reviews: Vec<_> = pods.iter().filter(|p| p.deployment == "reviews").collect();
        assert_eq!(reviews.len(), 2);
        assert_ne!(reviews[0].name, reviews[1].name);
        assert!(
            reviews[0]
                .name
                .starts_with(&format!("reviews-{}-", reviews[0].template_hash))
        );
        assert!(reviews.iter().all(|p| p.inject));
        let c = &reviews[0].containers[0];
        assert_eq!(c.argv, ["bookinfo-reviews", "9080"]);
        assert_eq!(c.env["STAR_COLOR"], "red");
        assert_eq!(c.env["A"], "b");
        assert_eq!(
            resolve_field(&c.env["POD"], reviews[0], "10.88.0.2").unwrap(),
            reviews[0].name
        );
        assert_eq!(reviews[0].service_account, "bookinfo-reviews");
        assert_eq!(reviews[0].ports(), [9080]);
        assert_eq!(reviews[0].labels["app"], "reviews");
        let details = pods.iter().find(|p| p.deployment == "details").unwrap();
        assert!(!details.inject, "the pod opted out of injection");
    }

    #[test]
    fn a_template_change_renames_pods_and_an_unknown_image_is_a_problem() {
        let images = ImageTable::builtin("/x/images.yaml".into());
        let a = desired_pods(
            &snapshot(&deployment("ratings", 1, "keel/bookinfo-ratings:0.1", "")),
            &images,
        )
        .0;
        let again = desired_pods(
            &snapshot(&deployment("ratings", 1, "keel/bookinfo-ratings:0.1", "")),
            &images,
        )
        .0;
        let b = desired_pods(
            &snapshot(&deployment("ratings", 1, "keel/bookinfo-ratings:0.2", "")),
            &images,
        )
        .0;
        assert_eq!(a[0].name, again[0].name, "names are stable");
        assert_ne!(a[0].name, b[0].name, "a new template is a new pod");
        assert!(!a[0].inject, "no labelled namespace, no sidecar");
        let (pods, problems) = desired_pods(
            &snapshot(&deployment("x", 1, "example/unknown:1", "")),
            &images,
        );
        assert!(pods.is_empty());
        assert_eq!(problems[0].deployment, "default/x");
        assert!(
            problems[0].reason.contains("containers[0] (x)")
                && problems[0].reason.contains("example/unknown"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn pod_objects_carry_what_pilot_and_kubectl_read() {
        let images = ImageTable::builtin("/x".into());
        let (pods, _) = desired_pods(
            &snapshot(&format!(
                "{NS}{}",
                deployment("details", 1, "keel/bookinfo-details", "")
            )),
            &images,
        );
        let states = [ContainerState {
            name: "details".into(),
            image: "keel/bookinfo-details".into(),
            running: true,
            ready: true,
            restarts: 2,
            waiting_reason: None,
        }];
        let obj = pod_object(
            &pods[0],
            "10.88.0.7",
            "10.88.0.1",
            "2026-01-01T00:00:00Z",
            &states,
        );
        let (res, diags) = keel_config::load::load_document(&obj, None);
        assert!(res.is_ok(), "{diags:?}");
        assert_eq!(obj["status"]["podIP"], "10.88.0.7");
        assert_eq!(obj["status"]["phase"], "Running");
        assert_eq!(obj["status"]["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(obj["metadata"]["labels"]["app"], "details");
    }
}
