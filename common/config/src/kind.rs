//! Every kind Keel knows: its API group and accepted versions, plural and short names (as
//! `kubectl` and `istioctl` users type them), and whether it lives in a namespace.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    // networking.istio.io
    VirtualService,
    DestinationRule,
    Gateway,
    ServiceEntry,
    WorkloadEntry,
    // authentication.istio.io
    Policy,
    MeshPolicy,
    // rbac.istio.io
    ServiceRole,
    ServiceRoleBinding,
    RbacConfig,
    // config.istio.io: core
    Rule,
    AttributeManifest,
    Instance,
    Handler,
    // config.istio.io: templates (1.0 instance kinds)
    Metric,
    LogEntry,
    ListEntry,
    Quota,
    CheckNothing,
    ReportNothing,
    TraceSpan,
    KubernetesTemplate,
    Authorization,
    // config.istio.io: adapters (1.0 handler kinds)
    Prometheus,
    Stdio,
    Fluentd,
    Denier,
    ListChecker,
    MemQuota,
    KubernetesEnv,
    RbacAdapter,
    // config.istio.io: mixer client
    QuotaSpec,
    QuotaSpecBinding,
    // Kubernetes
    Namespace,
    Service,
    Deployment,
    Pod,
    ServiceAccount,
    Endpoints,
    ConfigMap,
    Secret,
}

/// What a kind is called and where it lives.
#[derive(Clone, Copy, Debug)]
pub struct KindInfo {
    pub kind: Kind,
    /// The `kind:` string.
    pub name: &'static str,
    /// API group; empty for the Kubernetes core group.
    pub group: &'static str,
    /// Accepted versions; the first is the preferred one.
    pub versions: &'static [&'static str],
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
}

const NET: &[&str] = &["v1alpha3", "v1beta1", "v1"];
const V1ALPHA1: &[&str] = &["v1alpha1"];
const V1ALPHA2: &[&str] = &["v1alpha2"];
const CORE: &[&str] = &["v1"];

macro_rules! kinds {
    ($( $kind:ident => $name:literal, $group:literal, $versions:expr, $plural:literal, [$($short:literal),*], $ns:literal; )*) => {
        pub const KINDS: &[KindInfo] = &[
            $( KindInfo {
                kind: Kind::$kind,
                name: $name,
                group: $group,
                versions: $versions,
                plural: $plural,
                short_names: &[$($short),*],
                namespaced: $ns,
            }, )*
        ];
    };
}

kinds! {
    VirtualService => "VirtualService", "networking.istio.io", NET, "virtualservices", ["vs"], true;
    DestinationRule => "DestinationRule", "networking.istio.io", NET, "destinationrules", ["dr"], true;
    Gateway => "Gateway", "networking.istio.io", NET, "gateways", ["gw"], true;
    ServiceEntry => "ServiceEntry", "networking.istio.io", NET, "serviceentries", ["se"], true;
    WorkloadEntry => "WorkloadEntry", "networking.istio.io", NET, "workloadentries", ["we"], true;
    Policy => "Policy", "authentication.istio.io", V1ALPHA1, "policies", [], true;
    MeshPolicy => "MeshPolicy", "authentication.istio.io", V1ALPHA1, "meshpolicies", [], false;
    ServiceRole => "ServiceRole", "rbac.istio.io", V1ALPHA1, "serviceroles", [], true;
    ServiceRoleBinding => "ServiceRoleBinding", "rbac.istio.io", V1ALPHA1, "servicerolebindings", [], true;
    RbacConfig => "RbacConfig", "rbac.istio.io", V1ALPHA1, "rbacconfigs", [], true;
    Rule => "rule", "config.istio.io", V1ALPHA2, "rules", [], true;
    AttributeManifest => "attributemanifest", "config.istio.io", V1ALPHA2, "attributemanifests", [], true;
    Instance => "instance", "config.istio.io", V1ALPHA2, "instances", [], true;
    Handler => "handler", "config.istio.io", V1ALPHA2, "handlers", [], true;
    Metric => "metric", "config.istio.io", V1ALPHA2, "metrics", [], true;
    LogEntry => "logentry", "config.istio.io", V1ALPHA2, "logentries", [], true;
    ListEntry => "listentry", "config.istio.io", V1ALPHA2, "listentries", [], true;
    Quota => "quota", "config.istio.io", V1ALPHA2, "quotas", [], true;
    CheckNothing => "checknothing", "config.istio.io", V1ALPHA2, "checknothings", [], true;
    ReportNothing => "reportnothing", "config.istio.io", V1ALPHA2, "reportnothings", [], true;
    TraceSpan => "tracespan", "config.istio.io", V1ALPHA2, "tracespans", [], true;
    KubernetesTemplate => "kubernetes", "config.istio.io", V1ALPHA2, "kuberneteses", [], true;
    Authorization => "authorization", "config.istio.io", V1ALPHA2, "authorizations", [], true;
    Prometheus => "prometheus", "config.istio.io", V1ALPHA2, "prometheuses", [], true;
    Stdio => "stdio", "config.istio.io", V1ALPHA2, "stdios", [], true;
    Fluentd => "fluentd", "config.istio.io", V1ALPHA2, "fluentds", [], true;
    Denier => "denier", "config.istio.io", V1ALPHA2, "deniers", [], true;
    ListChecker => "listchecker", "config.istio.io", V1ALPHA2, "listcheckers", [], true;
    MemQuota => "memquota", "config.istio.io", V1ALPHA2, "memquotas", [], true;
    KubernetesEnv => "kubernetesenv", "config.istio.io", V1ALPHA2, "kubernetesenvs", [], true;
    RbacAdapter => "rbac", "config.istio.io", V1ALPHA2, "rbacs", [], true;
    QuotaSpec => "QuotaSpec", "config.istio.io", V1ALPHA2, "quotaspecs", [], true;
    QuotaSpecBinding => "QuotaSpecBinding", "config.istio.io", V1ALPHA2, "quotaspecbindings", [], true;
    Namespace => "Namespace", "", CORE, "namespaces", ["ns"], false;
    Service => "Service", "", CORE, "services", ["svc"], true;
    Deployment => "Deployment", "apps", &["v1", "v1beta2", "v1beta1"], "deployments", ["deploy"], true;
    Pod => "Pod", "", CORE, "pods", ["po"], true;
    ServiceAccount => "ServiceAccount", "", CORE, "serviceaccounts", ["sa"], true;
    Endpoints => "Endpoints", "", CORE, "endpoints", ["ep"], true;
    ConfigMap => "ConfigMap", "", CORE, "configmaps", ["cm"], true;
    Secret => "Secret", "", CORE, "secrets", [], true;
}

/// Why an `apiVersion`/`kind` pair was not recognised.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error(
        "kind \"{kind}\" is not served by Keel (apiVersion {api_version}); Keel serves Istio's networking, authentication, rbac and Mixer (config.istio.io) kinds and the Kubernetes kinds {kube}"
    )]
    Unknown {
        kind: String,
        api_version: String,
        kube: &'static str,
    },
    #[error("kind {kind} is not served in apiVersion \"{api_version}\" (use {expected})")]
    WrongVersion {
        kind: &'static str,
        api_version: String,
        expected: String,
    },
}

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        KINDS.iter().find(|i| i.kind == self).unwrap_or(&KINDS[0])
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn is_namespaced(self) -> bool {
        self.info().namespaced
    }

    pub fn is_kubernetes(self) -> bool {
        let g = self.info().group;
        g.is_empty() || g == "apps"
    }

    /// The preferred `apiVersion` string.
    pub fn api_version(self) -> String {
        let info = self.info();
        if info.group.is_empty() {
            info.versions[0].to_owned()
        } else {
            format!("{}/{}", info.group, info.versions[0])
        }
    }

    /// The type URL galley serves this kind under, e.g.
    /// `networking.istio.io/v1alpha3/VirtualService` or `core/v1/Service`.
    pub fn type_url(self) -> String {
        let info = self.info();
        let group = if info.group.is_empty() {
            "core"
        } else {
            info.group
        };
        format!("{group}/{}/{}", info.versions[0], info.name)
    }

    /// Resolves a document's `apiVersion` and `kind`.
    pub fn from_api(api_version: &str, kind: &str) -> Result<Kind, KindError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        // Deployments in the old groups are the same object for what Keel reads.
        let group = match (group, kind) {
            ("extensions", "Deployment") => "apps",
            (g, _) => g,
        };
        let Some(info) = KINDS.iter().find(|i| i.name == kind && i.group == group) else {
            return Err(KindError::Unknown {
                kind: kind.to_owned(),
                api_version: api_version.to_owned(),
                kube: "Namespace, Service, Deployment, Pod, ServiceAccount, Endpoints, ConfigMap and Secret",
            });
        };
        let version_ok = info.versions.contains(&version)
            || (api_version == "extensions/v1beta1" && info.kind == Kind::Deployment);
        if !version_ok {
            let expected = info
                .versions
                .iter()
                .map(|v| {
                    if info.group.is_empty() {
                        (*v).to_owned()
                    } else {
                        format!("{}/{v}", info.group)
                    }
                })
                .collect::<Vec<_>>()
                .join(" or ");
            return Err(KindError::WrongVersion {
                kind: info.name,
                api_version: api_version.to_owned(),
                expected,
            });
        }
        Ok(info.kind)
    }

    /// Resolves what a user typed on the command line: the kind, its plural, a short name,
    /// or `kind.group`, case-insensitively (`vs`, `virtualservice`, `VirtualServices`).
    pub fn lookup(text: &str) -> Option<Kind> {
        let t = text.to_ascii_lowercase();
        let (t, group) = match t.split_once('.') {
            Some((k, g)) => (k.to_owned(), Some(g.to_owned())),
            None => (t, None),
        };
        let matches = |i: &&KindInfo| {
            (i.name.eq_ignore_ascii_case(&t)
                || i.plural == t
                || i.short_names.contains(&t.as_str()))
                && group.as_deref().is_none_or(|g| i.group.starts_with(g))
        };
        // Prefer Istio's Gateway over nothing else; names are unique except for that case.
        KINDS.iter().find(matches).map(|i| i.kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_api_versions() {
        assert_eq!(
            Kind::from_api("networking.istio.io/v1alpha3", "VirtualService"),
            Ok(Kind::VirtualService)
        );
        assert_eq!(
            Kind::from_api("networking.istio.io/v1", "Gateway"),
            Ok(Kind::Gateway)
        );
        assert_eq!(
            Kind::from_api("config.istio.io/v1alpha2", "metric"),
            Ok(Kind::Metric)
        );
        assert_eq!(
            Kind::from_api("extensions/v1beta1", "Deployment"),
            Ok(Kind::Deployment)
        );
        assert_eq!(Kind::from_api("v1", "Service"), Ok(Kind::Service));
        assert!(matches!(
            Kind::from_api("networking.istio.io/v2", "VirtualService"),
            Err(KindError::WrongVersion { .. })
        ));
        assert!(matches!(
            Kind::from_api("gateway.networking.k8s.io/v1", "HTTPRoute"),
            Err(KindError::Unknown { .. })
        ));
    }

    #[test]
    fn resolves_command_line_names() {
        assert_eq!(Kind::lookup("vs"), Some(Kind::VirtualService));
        assert_eq!(Kind::lookup("VirtualServices"), Some(Kind::VirtualService));
        assert_eq!(Kind::lookup("dr"), Some(Kind::DestinationRule));
        assert_eq!(Kind::lookup("gw"), Some(Kind::Gateway));
        assert_eq!(Kind::lookup("se"), Some(Kind::ServiceEntry));
        assert_eq!(Kind::lookup("svc"), Some(Kind::Service));
        assert_eq!(Kind::lookup("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::lookup("ns"), Some(Kind::Namespace));
        assert_eq!(Kind::lookup("po"), Some(Kind::Pod));
        assert_eq!(Kind::lookup("metrics"), Some(Kind::Metric));
        assert_eq!(Kind::lookup("rule"), Some(Kind::Rule));
        assert_eq!(Kind::lookup("nonsense"), None);
    }

    #[test]
    fn type_urls() {
        assert_eq!(
            Kind::VirtualService.type_url(),
            "networking.istio.io/v1alpha3/VirtualService"
        );
        assert_eq!(Kind::Service.type_url(), "core/v1/Service");
        assert_eq!(Kind::Deployment.type_url(), "apps/v1/Deployment");
    }
}
