//! Istio 1.0's Mixer model, `config.istio.io/v1alpha2`: rules, instances of templates
//! (metric, logentry, ...), handlers of adapters (prometheus, stdio, fluentd, ...), attribute
//! manifests, and the mixer-client QuotaSpec/QuotaSpecBinding.
//!
//! Instances come in two spellings: 1.0's one kind per template (`kind: metric`) and 1.1's
//! generic `kind: instance` with `compiledTemplate` and `params`; handlers likewise (`kind:
//! prometheus` or `kind: handler` with `compiledAdapter`). Both parse into the same typed
//! params. Template fields are attribute expressions, kept as strings here; the expression
//! language (keel-attributes) type-checks them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostics;
use crate::duration::Duration;
use crate::path::FieldPath;

type Exprs = BTreeMap<String, String>;

// === rule ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// A boolean expression; empty means true. 1.0 also accepted the old name `selector`.
    #[serde(default, alias = "selector", skip_serializing_if = "Option::is_none")]
    pub r#match: Option<String>,
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(
        default,
        alias = "request_header_operations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub request_header_operations: Vec<HeaderOperationTemplate>,
    #[serde(
        default,
        alias = "response_header_operations",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub response_header_operations: Vec<HeaderOperationTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    #[serde(default)]
    pub handler: String,
    #[serde(default)]
    pub instances: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderOperationTemplate {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<HeaderOperation>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderOperation {
    Replace,
    Remove,
    Append,
}

/// Mixer's reference resolution, as the full names (`name.kind.namespace`) a rule's handler or
/// instance reference may mean, most likely first: `a.b.c` as is; `a` as `a.GENERIC.ns`; `a.b`
/// as `a.b.ns` (1.0 style, b is the kind) or `a.GENERIC.b` (1.1 style, b is the namespace).
/// `generic` is `handler` or `instance`; `ns` is the rule's namespace.
pub fn reference_candidates(reference: &str, generic: &str, ns: &str) -> Vec<String> {
    let parts: Vec<&str> = reference.split('.').collect();
    match parts.as_slice() {
        [a] => vec![format!("{a}.{generic}.{ns}")],
        [a, b] => vec![format!("{a}.{b}.{ns}"), format!("{a}.{generic}.{b}")],
        _ => vec![reference.to_owned()],
    }
}

/// Checks an attribute expression against Istio's attribute vocabulary: syntax, attribute
/// names and types. `want` is the type the field needs (`None`: any). An empty expression
/// means the field is unset, as in Mixer; required fields are checked for that separately.
pub fn check_expression(
    d: &mut Diagnostics,
    path: &FieldPath,
    text: &str,
    want: Option<keel_attributes::ValueType>,
) {
    use std::sync::OnceLock;
    if text.trim().is_empty() {
        return;
    }
    static MANIFEST: OnceLock<keel_attributes::Manifest> = OnceLock::new();
    let manifest = MANIFEST.get_or_init(keel_attributes::Manifest::istio);
    match keel_attributes::compile(text, manifest) {
        Err(e) => d.error(
            path,
            format!(
                "invalid expression {text:?}: column {}: {}",
                e.column, e.message
            ),
        ),
        Ok(p) => {
            if let Some(w) = want
                && p.result_type() != w
            {
                d.error(
                    path,
                    format!(
                        "expression {text:?} is {}, this field needs {w}",
                        p.result_type()
                    ),
                );
            }
        }
    }
}

fn check_all<'a>(
    d: &mut Diagnostics,
    path: &FieldPath,
    exprs: impl IntoIterator<Item = (&'a String, &'a String)>,
) {
    for (k, v) in exprs {
        check_expression(d, &path.key(k.clone()), v, None);
    }
}

impl Rule {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        if let Some(m) = &self.r#match {
            if m.trim().is_empty() {
                d.error(
                    &spec.key("match"),
                    "match must not be blank (omit it to match everything)",
                );
            } else {
                check_expression(
                    d,
                    &spec.key("match"),
                    m,
                    Some(keel_attributes::ValueType::Bool),
                );
            }
        }
        for (i, a) in self.actions.iter().enumerate() {
            let p = spec.key("actions").index(i);
            if a.handler.is_empty() {
                d.error(&p.key("handler"), "handler is required");
            }
            if a.instances.is_empty() && self.request_header_operations.is_empty() {
                d.error(&p.key("instances"), "at least one instance is required");
            }
            let mut seen = std::collections::HashSet::new();
            for (j, inst) in a.instances.iter().enumerate() {
                if inst.is_empty() {
                    d.error(
                        &p.key("instances").index(j),
                        "instance name cannot be empty",
                    );
                } else if !seen.insert(inst) {
                    d.error(
                        &p.key("instances").index(j),
                        format!("duplicate instance \"{inst}\""),
                    );
                }
            }
        }
    }
}

// === attributemanifest ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributeManifest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, AttributeInfo>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributeInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, alias = "value_type")]
    pub value_type: ValueType,
}

/// The types of attributes and expressions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ValueType {
    #[default]
    ValueTypeUnspecified,
    String,
    Int64,
    Double,
    Bool,
    Timestamp,
    IpAddress,
    EmailAddress,
    Uri,
    DnsName,
    Duration,
    StringMap,
}

impl AttributeManifest {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        for (name, info) in &self.attributes {
            let p = spec.key("attributes").key(name.clone());
            if !is_attribute_name(name) {
                d.error(
                    &p,
                    format!("\"{name}\" is not a valid attribute name (words of letters, digits and '_' separated by '.' or '-', starting lowercase)"),
                );
            }
            if info.value_type == ValueType::ValueTypeUnspecified {
                d.error(&p.key("valueType"), "valueType is required");
            }
        }
    }
}

/// `IDENT{SEP IDENT}`: IDENT a letter then letters, digits or `_`; SEP `.` or `-`. (Istio's
/// own manifests use `source.serviceAccount`, so capitals are allowed after the first letter.)
fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.split(['.', '-']).all(|ident| {
            let mut b = ident.bytes();
            matches!(b.next(), Some(c) if c.is_ascii_lowercase())
                && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        })
}

// === templates (instances) ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: Exprs,
    #[serde(
        default,
        alias = "monitored_resource_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub monitored_resource_type: Option<String>,
    #[serde(
        default,
        alias = "monitored_resource_dimensions",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub monitored_resource_dimensions: Exprs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: Exprs,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(
        default,
        alias = "monitored_resource_type",
        skip_serializing_if = "Option::is_none"
    )]
    pub monitored_resource_type: Option<String>,
    #[serde(
        default,
        alias = "monitored_resource_dimensions",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub monitored_resource_dimensions: Exprs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListEntry {
    #[serde(default)]
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dimensions: Exprs,
}

/// checknothing and reportnothing: no fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Nothing {}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TraceSpan {
    #[serde(default, alias = "trace_id")]
    pub trace_id: String,
    #[serde(default, alias = "span_id", skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    #[serde(
        default,
        alias = "parent_span_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub parent_span_id: Option<String>,
    #[serde(default, alias = "span_name")]
    pub span_name: String,
    #[serde(default, alias = "start_time")]
    pub start_time: String,
    #[serde(default, alias = "end_time")]
    pub end_time: String,
    #[serde(
        default,
        alias = "span_tags",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub span_tags: Exprs,
    #[serde(
        default,
        rename = "httpStatusCode",
        skip_serializing_if = "Option::is_none"
    )]
    pub http_status_code: Option<String>,
    #[serde(
        default,
        alias = "client_span",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_span: Option<String>,
    #[serde(
        default,
        alias = "rewrite_client_span_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub rewrite_client_span_id: Option<String>,
    #[serde(
        default,
        alias = "source_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub source_name: Option<String>,
    #[serde(default, alias = "source_ip", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(
        default,
        alias = "destination_name",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_name: Option<String>,
    #[serde(
        default,
        alias = "destination_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_ip: Option<String>,
    #[serde(
        default,
        alias = "request_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_size: Option<String>,
    #[serde(
        default,
        alias = "request_total_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub request_total_size: Option<String>,
    #[serde(
        default,
        alias = "response_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_size: Option<String>,
    #[serde(
        default,
        alias = "response_total_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub response_total_size: Option<String>,
    #[serde(
        default,
        alias = "api_protocol",
        skip_serializing_if = "Option::is_none"
    )]
    pub api_protocol: Option<String>,
}

/// The kubernetesenv attribute generator's template (`kind: kubernetes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesTemplate {
    #[serde(default, alias = "source_uid", skip_serializing_if = "Option::is_none")]
    pub source_uid: Option<String>,
    #[serde(default, alias = "source_ip", skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    #[serde(
        default,
        alias = "destination_uid",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_uid: Option<String>,
    #[serde(
        default,
        alias = "destination_ip",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_ip: Option<String>,
    #[serde(
        default,
        alias = "destination_port",
        skip_serializing_if = "Option::is_none"
    )]
    pub destination_port: Option<String>,
    #[serde(
        default,
        alias = "attribute_bindings",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attribute_bindings: Exprs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<AuthzSubject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthzAction>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: Exprs,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzAction {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: Exprs,
}

/// The typed params of an instance, whichever way it was spelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Template {
    Metric(Metric),
    LogEntry(LogEntry),
    ListEntry(ListEntry),
    Quota(Quota),
    CheckNothing,
    ReportNothing,
    TraceSpan(Box<TraceSpan>),
    Kubernetes(KubernetesTemplate),
    Authorization(Authorization),
}

impl Template {
    /// The template names `compiledTemplate` accepts that Keel implements.
    pub const NAMES: &[&str] = &[
        "metric",
        "logentry",
        "listentry",
        "quota",
        "checknothing",
        "reportnothing",
        "tracespan",
        "kubernetes",
        "authorization",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Template::Metric(_) => "metric",
            Template::LogEntry(_) => "logentry",
            Template::ListEntry(_) => "listentry",
            Template::Quota(_) => "quota",
            Template::CheckNothing => "checknothing",
            Template::ReportNothing => "reportnothing",
            Template::TraceSpan(_) => "tracespan",
            Template::Kubernetes(_) => "kubernetes",
            Template::Authorization(_) => "authorization",
        }
    }

    pub fn validate(&self, d: &mut Diagnostics, p: &FieldPath) {
        use keel_attributes::ValueType as T;
        // A required expression, or an optional one, checked for its type.
        let field = |d: &mut Diagnostics,
                     name: &str,
                     v: Option<&String>,
                     want: Option<T>,
                     required: bool| match v {
            Some(v) if !v.trim().is_empty() => check_expression(d, &p.key(name), v, want),
            _ if required => d.error(&p.key(name), format!("{name} is required")),
            _ => {}
        };
        match self {
            Template::Metric(m) => {
                field(d, "value", Some(&m.value), None, true);
                check_all(d, &p.key("dimensions"), &m.dimensions);
                field(
                    d,
                    "monitoredResourceType",
                    m.monitored_resource_type.as_ref(),
                    Some(T::String),
                    false,
                );
                check_all(
                    d,
                    &p.key("monitoredResourceDimensions"),
                    &m.monitored_resource_dimensions,
                );
            }
            Template::LogEntry(l) => {
                check_all(d, &p.key("variables"), &l.variables);
                field(
                    d,
                    "timestamp",
                    l.timestamp.as_ref(),
                    Some(T::Timestamp),
                    false,
                );
                field(d, "severity", l.severity.as_ref(), Some(T::String), false);
                field(
                    d,
                    "monitoredResourceType",
                    l.monitored_resource_type.as_ref(),
                    Some(T::String),
                    false,
                );
                check_all(
                    d,
                    &p.key("monitoredResourceDimensions"),
                    &l.monitored_resource_dimensions,
                );
            }
            Template::ListEntry(l) => field(d, "value", Some(&l.value), None, true),
            Template::Quota(q) => check_all(d, &p.key("dimensions"), &q.dimensions),
            Template::TraceSpan(t) => {
                field(d, "traceId", Some(&t.trace_id), Some(T::String), true);
                field(d, "spanName", Some(&t.span_name), Some(T::String), true);
                field(
                    d,
                    "startTime",
                    Some(&t.start_time),
                    Some(T::Timestamp),
                    true,
                );
                field(d, "endTime", Some(&t.end_time), Some(T::Timestamp), true);
                field(d, "spanId", t.span_id.as_ref(), Some(T::String), false);
                field(
                    d,
                    "parentSpanId",
                    t.parent_span_id.as_ref(),
                    Some(T::String),
                    false,
                );
                field(
                    d,
                    "httpStatusCode",
                    t.http_status_code.as_ref(),
                    Some(T::Int64),
                    false,
                );
                field(
                    d,
                    "clientSpan",
                    t.client_span.as_ref(),
                    Some(T::Bool),
                    false,
                );
                check_all(d, &p.key("spanTags"), &t.span_tags);
            }
            Template::Kubernetes(k) => {
                // attribute_bindings refer to the adapter's output ($out.*), not attributes.
                field(
                    d,
                    "sourceUid",
                    k.source_uid.as_ref(),
                    Some(T::String),
                    false,
                );
                field(
                    d,
                    "sourceIp",
                    k.source_ip.as_ref(),
                    Some(T::IpAddress),
                    false,
                );
                field(
                    d,
                    "destinationUid",
                    k.destination_uid.as_ref(),
                    Some(T::String),
                    false,
                );
                field(
                    d,
                    "destinationIp",
                    k.destination_ip.as_ref(),
                    Some(T::IpAddress),
                    false,
                );
                field(
                    d,
                    "destinationPort",
                    k.destination_port.as_ref(),
                    Some(T::Int64),
                    false,
                );
            }
            Template::Authorization(a) => {
                if let Some(s) = &a.subject {
                    let sp = p.key("subject");
                    for (name, v) in [("user", &s.user), ("groups", &s.groups)] {
                        if let Some(v) = v {
                            check_expression(d, &sp.key(name), v, Some(T::String));
                        }
                    }
                    check_all(d, &sp.key("properties"), &s.properties);
                }
                if let Some(act) = &a.action {
                    let ap = p.key("action");
                    for (name, v) in [
                        ("namespace", &act.namespace),
                        ("service", &act.service),
                        ("method", &act.method),
                        ("path", &act.path),
                    ] {
                        if let Some(v) = v {
                            check_expression(d, &ap.key(name), v, Some(T::String));
                        }
                    }
                    check_all(d, &ap.key("properties"), &act.properties);
                }
            }
            Template::CheckNothing | Template::ReportNothing => {}
        }
    }
}

/// 1.1's generic instance: `compiledTemplate` names the template, `params` holds its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenericInstance {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        alias = "compiled_template",
        skip_serializing_if = "Option::is_none"
    )]
    pub compiled_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(
        default,
        alias = "attribute_bindings",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attribute_bindings: Exprs,
}

// === adapters (handlers) ===

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusParams {
    #[serde(default)]
    pub metrics: Vec<MetricInfo>,
    #[serde(
        default,
        alias = "metrics_expiration_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics_expiration_policy: Option<MetricsExpirationPolicy>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, alias = "instance_name")]
    pub instance_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub kind: MetricKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<BucketsDefinition>,
    #[serde(default, alias = "label_names", skip_serializing_if = "Vec::is_empty")]
    pub label_names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MetricKind {
    #[default]
    Unspecified,
    Gauge,
    Counter,
    Distribution,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketsDefinition {
    #[serde(
        default,
        alias = "linear_buckets",
        skip_serializing_if = "Option::is_none"
    )]
    pub linear_buckets: Option<LinearBuckets>,
    #[serde(
        default,
        alias = "exponential_buckets",
        skip_serializing_if = "Option::is_none"
    )]
    pub exponential_buckets: Option<ExponentialBuckets>,
    #[serde(
        default,
        alias = "explicit_buckets",
        skip_serializing_if = "Option::is_none"
    )]
    pub explicit_buckets: Option<ExplicitBuckets>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinearBuckets {
    #[serde(default, alias = "num_finite_buckets")]
    pub num_finite_buckets: i64,
    #[serde(default)]
    pub width: f64,
    #[serde(default)]
    pub offset: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExponentialBuckets {
    #[serde(default, alias = "num_finite_buckets")]
    pub num_finite_buckets: i64,
    #[serde(default, alias = "growth_factor")]
    pub growth_factor: f64,
    #[serde(default)]
    pub scale: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplicitBuckets {
    #[serde(default)]
    pub bounds: Vec<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsExpirationPolicy {
    #[serde(default, alias = "metrics_expiry_duration")]
    pub metrics_expiry_duration: Option<Duration>,
    #[serde(
        default,
        alias = "expiry_check_interval_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub expiry_check_interval_duration: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
    File,
    RotatedFile,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    #[default]
    Info,
    Warning,
    Error,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StdioParams {
    #[serde(default, alias = "log_stream", skip_serializing_if = "Option::is_none")]
    pub log_stream: Option<LogStream>,
    /// Severity string -> level number (0 info, 1 warning, 2 error); numbers only, as 1.0.
    #[serde(
        default,
        alias = "severity_levels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub severity_levels: BTreeMap<String, i64>,
    #[serde(
        default,
        alias = "metric_level",
        skip_serializing_if = "Option::is_none"
    )]
    pub metric_level: Option<Level>,
    #[serde(
        default,
        alias = "output_as_json",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_as_json: Option<bool>,
    #[serde(
        default,
        alias = "output_level",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_level: Option<Level>,
    #[serde(
        default,
        alias = "output_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub output_path: Option<String>,
    #[serde(
        default,
        alias = "max_megabytes_before_rotation",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_megabytes_before_rotation: Option<i64>,
    #[serde(
        default,
        alias = "max_days_before_rotation",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_days_before_rotation: Option<i64>,
    #[serde(
        default,
        alias = "max_rotated_files",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_rotated_files: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FluentdParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(
        default,
        alias = "integer_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub integer_duration: Option<bool>,
    #[serde(
        default,
        alias = "instance_buffer_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub instance_buffer_size: Option<i64>,
    #[serde(
        default,
        alias = "max_batch_size_bytes",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_batch_size_bytes: Option<i64>,
    #[serde(
        default,
        alias = "push_interval_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub push_interval_duration: Option<Duration>,
    #[serde(
        default,
        alias = "push_timeout_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub push_timeout_duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DenierParams {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RpcStatus>,
    #[serde(
        default,
        alias = "valid_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_duration: Option<Duration>,
    #[serde(
        default,
        alias = "valid_use_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_use_count: Option<i64>,
}

/// google.rpc.Status: `code` is the number (7, not PERMISSION_DENIED).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RpcStatus {
    #[serde(default)]
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<serde_json::Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ListEntryType {
    #[default]
    Strings,
    CaseInsensitiveStrings,
    IpAddresses,
    Regex,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListCheckerParams {
    #[serde(
        default,
        alias = "provider_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub provider_url: Option<String>,
    #[serde(
        default,
        alias = "refresh_interval",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(
        default,
        alias = "caching_interval",
        skip_serializing_if = "Option::is_none"
    )]
    pub caching_interval: Option<Duration>,
    #[serde(
        default,
        alias = "caching_use_count",
        skip_serializing_if = "Option::is_none"
    )]
    pub caching_use_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    #[serde(default, alias = "entry_type", skip_serializing_if = "Option::is_none")]
    pub entry_type: Option<ListEntryType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blacklist: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemQuotaParams {
    #[serde(default)]
    pub quotas: Vec<QuotaLimit>,
    #[serde(
        default,
        alias = "min_deduplication_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_deduplication_duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLimit {
    #[serde(default)]
    pub name: String,
    #[serde(default, alias = "max_amount")]
    pub max_amount: i64,
    #[serde(
        default,
        alias = "valid_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_duration: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<QuotaOverride>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaOverride {
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    #[serde(default, alias = "max_amount")]
    pub max_amount: i64,
    #[serde(
        default,
        alias = "valid_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_duration: Option<Duration>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesEnvParams {
    #[serde(
        default,
        alias = "kubeconfig_path",
        skip_serializing_if = "Option::is_none"
    )]
    pub kubeconfig_path: Option<String>,
    #[serde(
        default,
        alias = "cache_refresh_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_refresh_duration: Option<Duration>,
    #[serde(
        default,
        alias = "cluster_registries_namespace",
        skip_serializing_if = "Option::is_none"
    )]
    pub cluster_registries_namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RbacParams {
    #[serde(
        default,
        alias = "config_store_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub config_store_url: Option<String>,
    #[serde(
        default,
        alias = "cache_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_duration: Option<Duration>,
}

/// The typed params of a handler, whichever way it was spelled.
#[derive(Clone, Debug, PartialEq)]
pub enum Adapter {
    Prometheus(PrometheusParams),
    Stdio(StdioParams),
    Fluentd(FluentdParams),
    Denier(DenierParams),
    ListChecker(ListCheckerParams),
    MemQuota(MemQuotaParams),
    KubernetesEnv(KubernetesEnvParams),
    Rbac(RbacParams),
}

impl Adapter {
    /// The adapter names `compiledAdapter` accepts that Keel implements.
    pub const NAMES: &[&str] = &[
        "prometheus",
        "stdio",
        "fluentd",
        "denier",
        "listchecker",
        "memquota",
        "kubernetesenv",
        "rbac",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Adapter::Prometheus(_) => "prometheus",
            Adapter::Stdio(_) => "stdio",
            Adapter::Fluentd(_) => "fluentd",
            Adapter::Denier(_) => "denier",
            Adapter::ListChecker(_) => "listchecker",
            Adapter::MemQuota(_) => "memquota",
            Adapter::KubernetesEnv(_) => "kubernetesenv",
            Adapter::Rbac(_) => "rbac",
        }
    }

    /// The templates an adapter accepts (Mixer refuses a rule that sends others).
    pub fn supported_templates(&self) -> &'static [&'static str] {
        match self {
            Adapter::Prometheus(_) => &["metric"],
            Adapter::Stdio(_) => &["logentry", "metric"],
            Adapter::Fluentd(_) => &["logentry"],
            Adapter::Denier(_) => &["checknothing", "listentry", "quota"],
            Adapter::ListChecker(_) => &["listentry"],
            Adapter::MemQuota(_) => &["quota"],
            Adapter::KubernetesEnv(_) => &["kubernetes"],
            Adapter::Rbac(_) => &["authorization"],
        }
    }

    pub fn validate(&self, d: &mut Diagnostics, p: &FieldPath) {
        match self {
            Adapter::Prometheus(params) => validate_prometheus(d, p, params),
            Adapter::Stdio(s) => {
                for (sev, level) in &s.severity_levels {
                    if !(0..=2).contains(level) {
                        d.error(
                            &p.key("severityLevels").key(sev.clone()),
                            format!("level {level} is not one of 0 (INFO), 1 (WARNING), 2 (ERROR)"),
                        );
                    }
                }
                let to_file =
                    matches!(s.log_stream, Some(LogStream::File | LogStream::RotatedFile));
                match (&s.output_path, to_file) {
                    (None, true) => d.error(
                        &p.key("outputPath"),
                        "outputPath is required for FILE and ROTATED_FILE streams",
                    ),
                    (Some(_), false) => d.error(
                        &p.key("outputPath"),
                        "outputPath is only used with FILE and ROTATED_FILE streams",
                    ),
                    _ => {}
                }
            }
            Adapter::Fluentd(f) => {
                if let Some(addr) = &f.address {
                    match addr.rsplit_once(':') {
                        Some((host, port))
                            if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                        _ => d.error(
                            &p.key("address"),
                            format!("\"{addr}\" is not a host:port address"),
                        ),
                    }
                }
                for (field, v) in [
                    ("instanceBufferSize", f.instance_buffer_size),
                    ("maxBatchSizeBytes", f.max_batch_size_bytes),
                ] {
                    if let Some(v) = v
                        && v <= 0
                    {
                        d.error(&p.key(field), format!("{field} must be positive (got {v})"));
                    }
                }
            }
            Adapter::Denier(dn) => {
                if let Some(s) = &dn.status
                    && !(0..=16).contains(&s.code)
                {
                    d.error(
                        &p.key("status").key("code"),
                        format!("{} is not a google.rpc.Code (0..16)", s.code),
                    );
                }
            }
            Adapter::ListChecker(l) => {
                if let Some(url) = &l.provider_url
                    && !url.contains("://")
                {
                    d.error(&p.key("providerUrl"), format!("\"{url}\" is not a URL"));
                }
                if let (Some(refresh), Some(ttl)) = (l.refresh_interval, l.ttl)
                    && ttl <= refresh
                {
                    d.error(&p.key("ttl"), "ttl must be greater than refreshInterval");
                }
                if l.entry_type == Some(ListEntryType::Regex) {
                    for (i, o) in l.overrides.iter().enumerate() {
                        if let Err(e) = regex::Regex::new(o) {
                            d.error(&p.key("overrides").index(i), format!("invalid regex: {e}"));
                        }
                    }
                }
            }
            Adapter::MemQuota(m) => {
                for (i, q) in m.quotas.iter().enumerate() {
                    let qp = p.key("quotas").index(i);
                    if q.name.is_empty() {
                        d.error(&qp.key("name"), "quota name is required");
                    }
                    if q.max_amount < 0 {
                        d.error(&qp.key("maxAmount"), "maxAmount must be non-negative");
                    }
                    for (j, o) in q.overrides.iter().enumerate() {
                        if o.max_amount < 0 {
                            d.error(
                                &qp.key("overrides").index(j).key("maxAmount"),
                                "maxAmount must be non-negative",
                            );
                        }
                    }
                }
            }
            Adapter::KubernetesEnv(_) | Adapter::Rbac(_) => {}
        }
    }
}

fn validate_prometheus(d: &mut Diagnostics, p: &FieldPath, params: &PrometheusParams) {
    let mut names = std::collections::HashSet::new();
    for (i, m) in params.metrics.iter().enumerate() {
        let mp = p.key("metrics").index(i);
        if m.instance_name.is_empty() {
            d.error(&mp.key("instanceName"), "instance_name is required (the instance's full name, e.g. requestcount.metric.istio-system)");
        } else if m.instance_name.split('.').count() < 3 {
            d.error(
                &mp.key("instanceName"),
                format!(
                    "instance_name \"{}\" must be fully qualified: NAME.KIND.NAMESPACE",
                    m.instance_name
                ),
            );
        }
        if !m.name.is_empty() {
            if !is_prometheus_name(&m.name) {
                d.error(
                    &mp.key("name"),
                    format!("\"{}\" is not a valid Prometheus metric name", m.name),
                );
            }
            if !names.insert(m.name.as_str()) {
                d.error(
                    &mp.key("name"),
                    format!("duplicate metric name \"{}\"", m.name),
                );
            }
        }
        if m.kind == MetricKind::Unspecified {
            d.error(
                &mp.key("kind"),
                "kind is required: GAUGE, COUNTER or DISTRIBUTION",
            );
        }
        for (j, l) in m.label_names.iter().enumerate() {
            if !is_prometheus_name(l) || l.contains(':') {
                d.error(
                    &mp.key("labelNames").index(j),
                    format!("\"{l}\" is not a valid Prometheus label name"),
                );
            }
        }
        if let Some(b) = &m.buckets {
            let bp = mp.key("buckets");
            let set = [
                b.linear_buckets.is_some(),
                b.exponential_buckets.is_some(),
                b.explicit_buckets.is_some(),
            ]
            .iter()
            .filter(|x| **x)
            .count();
            if set != 1 {
                d.error(&bp, "exactly one of linearBuckets, exponentialBuckets or explicitBuckets is required");
            }
            if m.kind != MetricKind::Distribution {
                d.error(&bp, "buckets are only used by DISTRIBUTION metrics");
            }
            if let Some(l) = &b.linear_buckets {
                if l.num_finite_buckets <= 0 {
                    d.error(
                        &bp.key("linearBuckets").key("numFiniteBuckets"),
                        "numFiniteBuckets must be positive",
                    );
                }
                if l.width <= 0.0 {
                    d.error(
                        &bp.key("linearBuckets").key("width"),
                        "width must be positive",
                    );
                }
            }
            if let Some(e) = &b.exponential_buckets {
                if e.num_finite_buckets <= 0 {
                    d.error(
                        &bp.key("exponentialBuckets").key("numFiniteBuckets"),
                        "numFiniteBuckets must be positive",
                    );
                }
                if e.growth_factor <= 1.0 {
                    d.error(
                        &bp.key("exponentialBuckets").key("growthFactor"),
                        "growthFactor must be greater than 1",
                    );
                }
                if e.scale <= 0.0 {
                    d.error(
                        &bp.key("exponentialBuckets").key("scale"),
                        "scale must be positive",
                    );
                }
            }
            if let Some(x) = &b.explicit_buckets {
                if x.bounds.is_empty() {
                    d.error(
                        &bp.key("explicitBuckets").key("bounds"),
                        "bounds must not be empty",
                    );
                }
                if x.bounds.windows(2).any(|w| w[1] <= w[0]) {
                    d.error(
                        &bp.key("explicitBuckets").key("bounds"),
                        "bounds must increase strictly",
                    );
                }
            }
        }
    }
}

fn is_prometheus_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// 1.1's generic handler: `compiledAdapter` names the adapter, `params` holds its config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenericHandler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        alias = "compiled_adapter",
        skip_serializing_if = "Option::is_none"
    )]
    pub compiled_adapter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<serde_json::Value>,
}

// === QuotaSpec / QuotaSpecBinding (mixer client config, read by pilot) ===

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    #[serde(default)]
    pub rules: Vec<QuotaRule>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaRule {
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<AttributeMatch>,
    #[serde(default)]
    pub quotas: Vec<QuotaCharge>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributeMatch {
    #[serde(default)]
    pub clause: BTreeMap<String, crate::networking::StringMatch>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaCharge {
    #[serde(default)]
    pub quota: String,
    #[serde(default)]
    pub charge: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpecBinding {
    #[serde(default)]
    pub services: Vec<IstioService>,
    #[serde(default, alias = "quota_specs")]
    pub quota_specs: Vec<QuotaSpecReference>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpecReference {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioService {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl QuotaSpec {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        if self.rules.is_empty() {
            d.error(
                &spec.key("rules"),
                "a quota spec must have at least one rule",
            );
        }
        for (i, r) in self.rules.iter().enumerate() {
            let p = spec.key("rules").index(i);
            if r.quotas.is_empty() {
                d.error(
                    &p.key("quotas"),
                    "a quota rule must have at least one quota",
                );
            }
            for (j, q) in r.quotas.iter().enumerate() {
                if q.quota.is_empty() {
                    d.error(
                        &p.key("quotas").index(j).key("quota"),
                        "quota name is required",
                    );
                }
                if q.charge <= 0 {
                    d.error(
                        &p.key("quotas").index(j).key("charge"),
                        "charge must be positive",
                    );
                }
            }
        }
    }
}

impl QuotaSpecBinding {
    pub fn validate(&self, d: &mut Diagnostics, spec: &FieldPath) {
        if self.services.is_empty() {
            d.error(
                &spec.key("services"),
                "a quota spec binding must name at least one service",
            );
        }
        if self.quota_specs.is_empty() {
            d.error(
                &spec.key("quotaSpecs"),
                "a quota spec binding must name at least one quota spec",
            );
        }
        for (i, s) in self.services.iter().enumerate() {
            let p = spec.key("services").index(i);
            match (&s.name, &s.service) {
                (Some(_), Some(_)) | (None, None) => {
                    d.error(&p, "exactly one of name or service is required")
                }
                (None, Some(_)) if s.namespace.is_some() || s.domain.is_some() => d.error(
                    &p,
                    "namespace and domain cannot be set together with service",
                ),
                _ => {}
            }
        }
        for (i, q) in self.quota_specs.iter().enumerate() {
            if q.name.is_empty() {
                d.error(
                    &spec.key("quotaSpecs").index(i).key("name"),
                    "name is required",
                );
            }
        }
    }
}
