//! `authentication.istio.io/v1alpha1` Policy (namespaced) and MeshPolicy (cluster-scoped), and
//! `rbac.istio.io/v1alpha1` ServiceRole, ServiceRoleBinding and RbacConfig, as Istio 1.0 had
//! them.

use serde::{Deserialize, Deserializer, Serialize};

use crate::diagnostic::Diagnostics;
use crate::networking::PortSelector;
use crate::path::FieldPath;
use crate::validation::{check_port, is_dns1123_label};

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAuthenticationMethod>,
    #[serde(
        default,
        alias = "peer_is_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub peer_is_optional: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginAuthenticationMethod>,
    #[serde(
        default,
        alias = "origin_is_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub origin_is_optional: Option<bool>,
    #[serde(
        default,
        alias = "principal_binding",
        skip_serializing_if = "Option::is_none"
    )]
    pub principal_binding: Option<PrincipalBinding>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSelector>,
}

/// One way to authenticate the peer. `mtls: {}` and a bare `mtls:` (null) both select mutual
/// TLS in STRICT mode, so presence of the key matters, not its value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationMethod {
    #[serde(
        default,
        deserialize_with = "present_even_if_null",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtls: Option<MutualTls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
}

fn present_even_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<MutualTls>, D::Error> {
    Ok(Some(
        Option::<MutualTls>::deserialize(d)?.unwrap_or_default(),
    ))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MutualTls {
    #[serde(default, alias = "allow_tls", skip_serializing_if = "Option::is_none")]
    pub allow_tls: Option<bool>,
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginAuthenticationMethod {
    #[serde(default)]
    pub jwt: Jwt,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Jwt {
    #[serde(default)]
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    #[serde(default, alias = "jwks_uri", skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<String>,
    #[serde(default, alias = "jwt_headers", skip_serializing_if = "Vec::is_empty")]
    pub jwt_headers: Vec<String>,
    #[serde(default, alias = "jwt_params", skip_serializing_if = "Vec::is_empty")]
    pub jwt_params: Vec<String>,
    #[serde(
        default,
        alias = "trigger_rules",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub trigger_rules: Vec<TriggerRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerRule {
    #[serde(
        default,
        alias = "excluded_paths",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub excluded_paths: Vec<AuthnStringMatch>,
    #[serde(
        default,
        alias = "included_paths",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub included_paths: Vec<AuthnStringMatch>,
}

/// The authentication API's string match also has `suffix`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthnStringMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PrincipalBinding {
    #[default]
    UsePeer,
    UseOrigin,
}

impl Policy {
    /// `mesh` is true for MeshPolicy. Istio's naming rules: a policy without targets is the
    /// namespace (or mesh) default and must be called `default`, and the reverse.
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath, name: &str, mesh: bool) {
        if mesh {
            if name != "default" {
                d.error(
                    &FieldPath::parse("metadata.name"),
                    format!("cluster-scoped authentication policy name must be \"default\", found \"{name}\""),
                );
            }
            if !self.targets.is_empty() {
                d.error(
                    &spec.key("targets"),
                    "cluster-scoped authentication policy must not have targets",
                );
            }
        } else if self.targets.is_empty() && name != "default" {
            d.error(
                &FieldPath::parse("metadata.name"),
                format!("authentication policy with no target rules must be named \"default\", found \"{name}\""),
            );
        } else if !self.targets.is_empty() && name == "default" {
            d.error(
                &spec.key("targets"),
                "authentication policy with name \"default\" must not have any target rules",
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            let p = spec.key("targets").index(i);
            if !is_dns1123_label(&t.name) {
                d.error(
                    &p.key("name"),
                    format!("target name \"{}\" must be a valid label", t.name),
                );
            }
            for (j, port) in t.ports.iter().enumerate() {
                let pp = p.key("ports").index(j);
                match (&port.number, &port.name) {
                    (Some(n), _) => check_port(d, &pp.key("number"), i64::from(*n)),
                    (None, Some(n)) if is_dns1123_label(n) => {}
                    (None, Some(n)) => {
                        d.error(&pp.key("name"), format!("invalid port name \"{n}\""))
                    }
                    (None, None) => d.error(&pp, "port number or name is required"),
                }
            }
        }
        let mut issuers = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let p = spec.key("peers").index(i);
            match (&peer.mtls, &peer.jwt) {
                (Some(_), Some(_)) => d.error(&p, "only one of mtls and jwt may be set"),
                (None, None) => d.error(&p, "one of mtls or jwt is required"),
                _ => {}
            }
            if let Some(jwt) = &peer.jwt {
                check_jwt(d, &p.key("jwt"), jwt, &mut issuers);
            }
        }
        for (i, origin) in self.origins.iter().enumerate() {
            check_jwt(
                d,
                &spec.key("origins").index(i).key("jwt"),
                &origin.jwt,
                &mut issuers,
            );
        }
    }
}

fn check_jwt<'a>(
    d: &mut Diagnostics,
    path: &FieldPath,
    jwt: &'a Jwt,
    issuers: &mut std::collections::HashSet<&'a str>,
) {
    if jwt.issuer.is_empty() {
        d.error(&path.key("issuer"), "issuer must be set");
    } else if !issuers.insert(jwt.issuer.as_str()) {
        d.error(
            &path.key("issuer"),
            format!("jwt with issuer \"{}\" already defined", jwt.issuer),
        );
    }
    for (i, a) in jwt.audiences.iter().enumerate() {
        if a.is_empty() {
            d.error(
                &path.key("audiences").index(i),
                "audience must be non-empty string",
            );
        }
    }
    if let Some(uri) = &jwt.jwks_uri
        && !(uri.starts_with("http://") || uri.starts_with("https://"))
    {
        d.error(
            &path.key("jwksUri"),
            format!("URI scheme of \"{uri}\" is not supported (use http or https)"),
        );
    }
    for (i, h) in jwt.jwt_headers.iter().enumerate() {
        if h.is_empty() {
            d.error(
                &path.key("jwtHeaders").index(i),
                "location header must be non-empty string",
            );
        }
    }
    for (i, h) in jwt.jwt_params.iter().enumerate() {
        if h.is_empty() {
            d.error(
                &path.key("jwtParams").index(i),
                "location query must be non-empty string",
            );
        }
    }
}

// === rbac.istio.io/v1alpha1 ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRole {
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessRule {
    #[serde(default)]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<RoleConstraint>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleConstraint {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoleBinding {
    #[serde(default)]
    pub subjects: Vec<Subject>,
    #[serde(default, alias = "role_ref")]
    pub role_ref: RoleRef,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RbacMode {
    #[default]
    Off,
    On,
    OnWithInclusion,
    OnWithExclusion,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RbacConfig {
    #[serde(default)]
    pub mode: RbacMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inclusion: Option<RbacTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusion: Option<RbacTarget>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RbacTarget {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

impl ServiceRole {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        if self.rules.is_empty() {
            d.error(&spec.key("rules"), "at least 1 rule must be specified");
        }
        for (i, r) in self.rules.iter().enumerate() {
            let p = spec.key("rules").index(i);
            if r.services.is_empty() {
                d.error(
                    &p.key("services"),
                    "at least 1 service must be specified for rule",
                );
            }
            for (j, c) in r.constraints.iter().enumerate() {
                let cp = p.key("constraints").index(j);
                if c.key.is_empty() {
                    d.error(&cp.key("key"), "key cannot be empty");
                }
                if c.values.is_empty() {
                    d.error(&cp.key("values"), "at least 1 value must be specified");
                }
            }
        }
    }
}

impl ServiceRoleBinding {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        if self.subjects.is_empty() {
            d.error(
                &spec.key("subjects"),
                "at least 1 subject must be specified",
            );
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if s.user.is_none() && s.group.is_none() && s.properties.is_empty() {
                d.error(
                    &spec.key("subjects").index(i),
                    "at least 1 of user, group or properties must be specified",
                );
            }
        }
        if self.role_ref.kind != "ServiceRole" {
            d.error(
                &spec.key("roleRef").key("kind"),
                format!(
                    "kind set to \"{}\", the only supported value is \"ServiceRole\"",
                    self.role_ref.kind
                ),
            );
        }
        if self.role_ref.name.is_empty() {
            d.error(&spec.key("roleRef").key("name"), "name cannot be empty");
        }
    }
}

impl RbacConfig {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath, name: &str) {
        if name != "default" {
            d.error(
                &FieldPath::parse("metadata.name"),
                format!("RbacConfig must be named \"default\", found \"{name}\""),
            );
        }
        if self.mode == RbacMode::OnWithInclusion && self.inclusion.is_none() {
            d.error(
                &spec.key("inclusion"),
                "inclusion cannot be null (use 'inclusion: {}' for none)",
            );
        }
        if self.mode == RbacMode::OnWithExclusion && self.exclusion.is_none() {
            d.error(
                &spec.key("exclusion"),
                "exclusion cannot be null (use 'exclusion: {}' for none)",
            );
        }
    }
}
