//! Loading: text (YAML or JSON, many documents) -> typed, validated [`Resource`]s, or
//! diagnostics naming file, document, line, field and reason.
//!
//! A document is accepted only if it has no error; a file's other documents are judged on
//! their own (callers that need all-or-nothing, like `apply`, check [`LoadReport::is_ok`]).
//! After every document is read, references between them are checked (a subset no
//! DestinationRule defines, a rule's missing handler): those are warnings, since the target may
//! already be in the mesh.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Namespace, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::authentication::{Policy, RbacConfig, ServiceRole, ServiceRoleBinding};
use crate::diagnostic::{Diagnostic, Diagnostics, Origin};
use crate::kind::Kind;
use crate::mixer::{self, Adapter, GenericHandler, GenericInstance, Template};
use crate::networking::{
    DestinationRule, Gateway, Protocol, ServiceEntry, VirtualService, WorkloadEntry,
};
use crate::path::FieldPath;
use crate::resource::{Resource, ResourceKey, Spec};
use crate::validation::{check_labels, check_port, is_dns1123_label, is_dns1123_subdomain};
use crate::yaml::{self, YamlDocument};

/// What happened to one document.
#[derive(Clone, Debug)]
pub struct DocumentOutcome {
    pub origin: Origin,
    /// The resource it describes, when that much could be read.
    pub key: Option<ResourceKey>,
    pub accepted: bool,
}

/// The result of loading one or more sources.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Accepted resources, in input order.
    pub resources: Vec<Resource>,
    pub outcomes: Vec<DocumentOutcome>,
    /// Errors and warnings, in input order.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadReport {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| d.is_error())
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics.iter().filter(|d| !d.is_error())
    }

    /// True when every document was accepted.
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }
}

/// Reads sources into a [`LoadReport`].
#[derive(Debug, Default)]
pub struct Loader {
    default_namespace: Option<String>,
    report: LoadReport,
    /// For each accepted resource: where it came from, to place cross-reference warnings.
    places: Vec<(Origin, Arc<YamlDocument>, FieldPath)>,
}

/// Loads one text; see [`Loader`].
pub fn load_str(file: &str, text: &str, default_namespace: Option<&str>) -> LoadReport {
    let mut loader = Loader::new();
    if let Some(ns) = default_namespace {
        loader = loader.default_namespace(ns);
    }
    loader.add_str(file, text);
    loader.finish()
}

impl Loader {
    pub fn new() -> Self {
        Self::default()
    }

    /// The namespace given to namespaced resources that do not name one.
    pub fn default_namespace(mut self, ns: &str) -> Self {
        self.default_namespace = Some(ns.to_owned());
        self
    }

    /// Loads a file, or every `.yaml`, `.yml` and `.json` file under a directory (sorted).
    pub fn add_path(&mut self, path: &Path) {
        if path.is_dir() {
            let mut files = Vec::new();
            collect_files(path, &mut files, &mut self.report.diagnostics);
            files.sort();
            for f in files {
                self.add_file(&f);
            }
        } else {
            self.add_file(path);
        }
    }

    fn add_file(&mut self, path: &Path) {
        let name = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => self.add_str(&name, &text),
            Err(e) => {
                let mut d = Diagnostic::error(FieldPath::root(), format!("cannot read file: {e}"));
                d.file = Some(name.into());
                self.report.diagnostics.push(d);
            }
        }
    }

    /// Loads every document of `text`, reporting under the name `file`.
    pub fn add_str(&mut self, file: &str, text: &str) {
        let file: Arc<str> = file.into();
        let docs = match yaml::parse_documents(text) {
            Ok(docs) => docs,
            Err(e) => {
                let mut d =
                    Diagnostic::error(FieldPath::root(), format!("invalid YAML: {}", e.message));
                d.file = Some(file);
                d.pos = Some(e.pos);
                self.report.diagnostics.push(d);
                return;
            }
        };
        for (i, doc) in docs.into_iter().enumerate() {
            let origin = Origin {
                file: Some(file.clone()),
                document: Some(i + 1),
            };
            let doc = Arc::new(doc);
            if is_list(&doc.value) {
                let items = doc
                    .value
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for (j, item) in items.iter().enumerate() {
                    let base = FieldPath::root().key("items").index(j);
                    self.add_document(&origin, &doc, item, base);
                }
            } else {
                let value = doc.value.clone();
                self.add_document(&origin, &doc, &value, FieldPath::root());
            }
        }
    }

    fn add_document(
        &mut self,
        origin: &Origin,
        doc: &Arc<YamlDocument>,
        value: &Value,
        base: FieldPath,
    ) {
        let ns = self.default_namespace.as_deref();
        let (result, diags) = load_document(value, ns);
        let label = result
            .as_ref()
            .ok()
            .map(|r| r.key().to_string())
            .or_else(|| describe(value, ns));
        let key = result
            .as_ref()
            .ok()
            .map(Resource::key)
            .or_else(|| key_of(value, ns));
        for d in diags {
            let d = Diagnostic {
                path: join(&base, &d.path),
                ..d
            };
            self.report
                .diagnostics
                .push(d.locate(origin, Some(doc)).with_resource(label.as_deref()));
        }
        let accepted = result.is_ok();
        if let Ok(resource) = result {
            self.report.resources.push(resource);
            self.places.push((origin.clone(), doc.clone(), base));
        }
        self.report.outcomes.push(DocumentOutcome {
            origin: origin.clone(),
            key,
            accepted,
        });
    }

    /// Checks references between the loaded resources and returns the report.
    pub fn finish(mut self) -> LoadReport {
        let warnings = cross_check(&self.report.resources);
        for (index, d) in warnings {
            let (origin, doc, base) = &self.places[index];
            let label = self.report.resources[index].key().to_string();
            let d = Diagnostic {
                path: join(base, &d.path),
                ..d
            };
            self.report
                .diagnostics
                .push(d.locate(origin, Some(doc)).with_resource(Some(&label)));
        }
        self.report
    }
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>, diags: &mut Vec<Diagnostic>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            let mut d = Diagnostic::error(FieldPath::root(), format!("cannot read directory: {e}"));
            d.file = Some(dir.display().to_string().into());
            diags.push(d);
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect_files(&p, out, diags);
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
}

fn join(base: &FieldPath, rel: &FieldPath) -> FieldPath {
    let mut p = base.clone();
    for s in rel.segments() {
        match s {
            crate::path::Segment::Key(k) => p.push_key(k.clone()),
            crate::path::Segment::Index(i) => p.push_index(*i),
        }
    }
    p
}

fn is_list(v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some("List") && v.get("items").is_some()
}

/// The namespace a document will be in: its own, else the default for namespaced kinds.
fn namespace_of<'a>(v: &'a Value, default_namespace: Option<&'a str>) -> Option<&'a str> {
    let namespaced = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .zip(v.get("kind").and_then(Value::as_str))
        .and_then(|(a, k)| Kind::from_api(a, k).ok())
        .is_none_or(Kind::is_namespaced);
    if !namespaced {
        return None;
    }
    v.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .or(default_namespace)
}

fn describe(v: &Value, default_namespace: Option<&str>) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match namespace_of(v, default_namespace) {
        Some(ns) => Some(format!("{kind} {ns}/{name}")),
        None => Some(format!("{kind} {name}")),
    }
}

fn key_of(v: &Value, default_namespace: Option<&str>) -> Option<ResourceKey> {
    let kind = Kind::from_api(v.get("apiVersion")?.as_str()?, v.get("kind")?.as_str()?).ok()?;
    Some(ResourceKey {
        kind,
        namespace: namespace_of(v, default_namespace).unwrap_or("").to_owned(),
        name: v
            .pointer("/metadata/name")
            .and_then(Value::as_str)?
            .to_owned(),
    })
}

/// Deserializes `value` into `T`, reporting the first type error and every unknown field
/// (relative to `base`) instead of failing on the first one or ignoring them.
pub(crate) fn deserialize_checked<T: DeserializeOwned>(
    value: &Value,
    base: &FieldPath,
    d: &mut Diagnostics,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut on_ignored = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
    let de = serde_ignored::Deserializer::new(value, &mut on_ignored);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    match result {
        Ok(v) => {
            for path in &unknown {
                let field = match path.segments().last() {
                    Some(crate::path::Segment::Key(k)) => k.clone(),
                    _ => path.to_string(),
                };
                d.error(&join(base, path), format!("unknown field \"{field}\""));
            }
            if unknown.is_empty() { Some(v) } else { None }
        }
        Err(e) => {
            let mut path = base.clone();
            for seg in e.path().iter() {
                match seg {
                    serde_path_to_error::Segment::Map { key } => path.push_key(key.clone()),
                    serde_path_to_error::Segment::Seq { index } => path.push_index(*index),
                    serde_path_to_error::Segment::Enum { .. }
                    | serde_path_to_error::Segment::Unknown => {}
                }
            }
            d.error(&path, clean_serde_message(&e.into_inner().to_string()));
            None
        }
    }
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> FieldPath {
    match p {
        serde_ignored::Path::Root => FieldPath::root(),
        serde_ignored::Path::Seq { parent, index } => ignored_path(parent).index(*index),
        serde_ignored::Path::Map { parent, key } => ignored_path(parent).key(key.clone()),
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// serde's messages are good; drop the backticks so they read like the rest of Keel's.
fn clean_serde_message(m: &str) -> String {
    m.replace('`', "\"")
}

/// Loads one document value into a resource, or says why not.
pub fn load_document(
    value: &Value,
    default_namespace: Option<&str>,
) -> (Result<Resource, ()>, Vec<Diagnostic>) {
    let mut d = Diagnostics::new();
    let result = load_inner(value, default_namespace, &mut d);
    let failed = d.has_errors();
    let result = match result {
        Some(r) if !failed => Ok(r),
        _ => Err(()),
    };
    (result, d.into_vec())
}

fn load_inner(
    value: &Value,
    default_namespace: Option<&str>,
    d: &mut Diagnostics,
) -> Option<Resource> {
    let root = FieldPath::root();
    let Value::Object(map) = value else {
        d.error(
            &root,
            "a document must be a mapping with apiVersion, kind and metadata",
        );
        return None;
    };
    let api_version = match map.get("apiVersion") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            d.error(&root.key("apiVersion"), "apiVersion must be a string");
            return None;
        }
        None => {
            d.error(&root.key("apiVersion"), "apiVersion is required");
            return None;
        }
    };
    let kind_name = match map.get("kind") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            d.error(&root.key("kind"), "kind must be a string");
            return None;
        }
        None => {
            d.error(&root.key("kind"), "kind is required");
            return None;
        }
    };
    let kind = match Kind::from_api(&api_version, &kind_name) {
        Ok(k) => k,
        Err(e) => {
            d.error(&root.key("kind"), e.to_string());
            return None;
        }
    };

    let (spec, mut metadata) = if kind.is_kubernetes() {
        let (spec, meta) = load_kubernetes(kind, value, d)?;
        (spec, meta)
    } else {
        for key in map.keys() {
            if !matches!(
                key.as_str(),
                "apiVersion" | "kind" | "metadata" | "spec" | "status"
            ) {
                d.error(&root.key(key.clone()), format!("unknown field \"{key}\""));
            }
        }
        let metadata: ObjectMeta = match map.get("metadata") {
            Some(m) => deserialize_checked(m, &root.key("metadata"), d)?,
            None => ObjectMeta::default(),
        };
        let name = metadata.name.clone().unwrap_or_default();
        let spec = load_istio(kind, map.get("spec"), &name, d)?;
        (spec, metadata)
    };

    check_metadata(kind, &mut metadata, default_namespace, d);
    let mut resource = Resource {
        kind,
        api_version,
        metadata: metadata.clone(),
        spec,
        raw: value.clone(),
    };
    resource.set_metadata(metadata);
    Some(resource)
}

fn check_metadata(
    kind: Kind,
    m: &mut ObjectMeta,
    default_namespace: Option<&str>,
    d: &mut Diagnostics,
) {
    let meta = FieldPath::root().key("metadata");
    match m.name.as_deref() {
        None | Some("") => d.error(&meta.key("name"), "metadata.name is required"),
        Some(n) if !is_dns1123_subdomain(n) => d.error(
            &meta.key("name"),
            format!("\"{n}\" is not a valid name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ),
        _ => {}
    }
    if kind.is_namespaced() {
        match m.namespace.as_deref() {
            Some(ns) if !(is_dns1123_label(ns) && ns.bytes().all(|b| !b.is_ascii_uppercase())) => d
                .error(
                    &meta.key("namespace"),
                    format!("\"{ns}\" is not a valid namespace name"),
                ),
            Some(_) => {}
            None => m.namespace = default_namespace.map(str::to_owned),
        }
    } else {
        // Cluster-scoped: a namespace means nothing (Kubernetes ignores it too).
        m.namespace = None;
    }
    if let Some(labels) = &m.labels {
        check_labels(d, &meta.key("labels"), labels);
    }
}

fn spec_value(spec: Option<&Value>) -> Value {
    match spec {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(v) => v.clone(),
    }
}

fn load_istio(kind: Kind, spec: Option<&Value>, name: &str, d: &mut Diagnostics) -> Option<Spec> {
    let sp = FieldPath::root().key("spec");
    let v = spec_value(spec);
    macro_rules! typed {
        ($t:ty) => {{
            let s: $t = deserialize_checked(&v, &sp, d)?;
            s
        }};
    }
    Some(match kind {
        Kind::VirtualService => {
            let s = typed!(VirtualService);
            s.validate(d, &sp);
            Spec::VirtualService(s)
        }
        Kind::DestinationRule => {
            let s = typed!(DestinationRule);
            s.validate(d, &sp);
            Spec::DestinationRule(s)
        }
        Kind::Gateway => {
            let s = typed!(Gateway);
            s.validate(d, &sp);
            Spec::Gateway(s)
        }
        Kind::ServiceEntry => {
            let s = typed!(ServiceEntry);
            s.validate(d, &sp);
            Spec::ServiceEntry(s)
        }
        Kind::WorkloadEntry => {
            let s = typed!(WorkloadEntry);
            s.validate(d, &sp);
            Spec::WorkloadEntry(s)
        }
        Kind::Policy | Kind::MeshPolicy => {
            let s = typed!(Policy);
            s.validate(d, &sp, name, kind == Kind::MeshPolicy);
            Spec::Policy(s)
        }
        Kind::ServiceRole => {
            let s = typed!(ServiceRole);
            s.validate(d, &sp);
            Spec::ServiceRole(s)
        }
        Kind::ServiceRoleBinding => {
            let s = typed!(ServiceRoleBinding);
            s.validate(d, &sp);
            Spec::ServiceRoleBinding(s)
        }
        Kind::RbacConfig => {
            let s = typed!(RbacConfig);
            s.validate(d, &sp, name);
            Spec::RbacConfig(s)
        }
        Kind::Rule => {
            let s = typed!(mixer::Rule);
            s.validate(d, &sp);
            Spec::Rule(s)
        }
        Kind::AttributeManifest => {
            let s = typed!(mixer::AttributeManifest);
            s.validate(d, &sp);
            Spec::AttributeManifest(s)
        }
        Kind::QuotaSpec => {
            let s = typed!(mixer::QuotaSpec);
            s.validate(d, &sp);
            Spec::QuotaSpec(s)
        }
        Kind::QuotaSpecBinding => {
            let s = typed!(mixer::QuotaSpecBinding);
            s.validate(d, &sp);
            Spec::QuotaSpecBinding(s)
        }
        Kind::Instance => {
            let g = typed!(GenericInstance);
            let Some(t) = g.compiled_template.as_deref() else {
                d.error(
                    &sp.key("compiledTemplate"),
                    format!(
                        "compiledTemplate is required (Keel runs these templates: {})",
                        Template::NAMES.join(", ")
                    ),
                );
                return None;
            };
            let mut params = g
                .params
                .clone()
                .unwrap_or(Value::Object(serde_json::Map::new()));
            if !g.attribute_bindings.is_empty()
                && let Value::Object(m) = &mut params
            {
                m.insert(
                    "attribute_bindings".to_owned(),
                    serde_json::to_value(&g.attribute_bindings).unwrap_or(Value::Null),
                );
            }
            let template = template_from(t, &params, &sp.key("params"), d).or_else(|| {
                if !Template::NAMES.contains(&t) {
                    d.error(
                        &sp.key("compiledTemplate"),
                        format!(
                            "unknown template \"{t}\" (Keel runs: {})",
                            Template::NAMES.join(", ")
                        ),
                    );
                }
                None
            })?;
            Spec::Instance(template)
        }
        Kind::Handler => {
            let g = typed!(GenericHandler);
            let Some(a) = g.compiled_adapter.as_deref() else {
                d.error(
                    &sp.key("compiledAdapter"),
                    format!(
                        "compiledAdapter is required (Keel runs these adapters: {})",
                        Adapter::NAMES.join(", ")
                    ),
                );
                return None;
            };
            let params = g
                .params
                .clone()
                .unwrap_or(Value::Object(serde_json::Map::new()));
            let adapter = adapter_from(a, &params, &sp.key("params"), d).or_else(|| {
                if !Adapter::NAMES.contains(&a) {
                    d.error(
                        &sp.key("compiledAdapter"),
                        format!(
                            "unknown adapter \"{a}\" (Keel runs: {})",
                            Adapter::NAMES.join(", ")
                        ),
                    );
                }
                None
            })?;
            Spec::Handler(adapter)
        }
        k => {
            if let Some(t) = template_name(k) {
                Spec::Instance(template_from(t, &v, &sp, d)?)
            } else if let Some(a) = adapter_name(k) {
                Spec::Handler(adapter_from(a, &v, &sp, d)?)
            } else {
                d.error(
                    &FieldPath::root().key("kind"),
                    format!("{k} is not an Istio kind"),
                );
                return None;
            }
        }
    })
}

fn template_name(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::Metric => "metric",
        Kind::LogEntry => "logentry",
        Kind::ListEntry => "listentry",
        Kind::Quota => "quota",
        Kind::CheckNothing => "checknothing",
        Kind::ReportNothing => "reportnothing",
        Kind::TraceSpan => "tracespan",
        Kind::KubernetesTemplate => "kubernetes",
        Kind::Authorization => "authorization",
        _ => return None,
    })
}

fn adapter_name(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::Prometheus => "prometheus",
        Kind::Stdio => "stdio",
        Kind::Fluentd => "fluentd",
        Kind::Denier => "denier",
        Kind::ListChecker => "listchecker",
        Kind::MemQuota => "memquota",
        Kind::KubernetesEnv => "kubernetesenv",
        Kind::RbacAdapter => "rbac",
        _ => return None,
    })
}

fn template_from(name: &str, v: &Value, p: &FieldPath, d: &mut Diagnostics) -> Option<Template> {
    let t = match name {
        "metric" => Template::Metric(deserialize_checked(v, p, d)?),
        "logentry" => Template::LogEntry(deserialize_checked(v, p, d)?),
        "listentry" => Template::ListEntry(deserialize_checked(v, p, d)?),
        "quota" => Template::Quota(deserialize_checked(v, p, d)?),
        "checknothing" => {
            let _: mixer::Nothing = deserialize_checked(v, p, d)?;
            Template::CheckNothing
        }
        "reportnothing" => {
            let _: mixer::Nothing = deserialize_checked(v, p, d)?;
            Template::ReportNothing
        }
        "tracespan" => Template::TraceSpan(Box::new(deserialize_checked(v, p, d)?)),
        "kubernetes" => Template::Kubernetes(deserialize_checked(v, p, d)?),
        "authorization" => Template::Authorization(deserialize_checked(v, p, d)?),
        _ => return None,
    };
    t.validate(d, p);
    Some(t)
}

fn adapter_from(name: &str, v: &Value, p: &FieldPath, d: &mut Diagnostics) -> Option<Adapter> {
    let a = match name {
        "prometheus" => Adapter::Prometheus(deserialize_checked(v, p, d)?),
        "stdio" => Adapter::Stdio(deserialize_checked(v, p, d)?),
        "fluentd" => Adapter::Fluentd(deserialize_checked(v, p, d)?),
        "denier" => Adapter::Denier(deserialize_checked(v, p, d)?),
        "listchecker" => Adapter::ListChecker(deserialize_checked(v, p, d)?),
        "memquota" => Adapter::MemQuota(deserialize_checked(v, p, d)?),
        "kubernetesenv" => Adapter::KubernetesEnv(deserialize_checked(v, p, d)?),
        "rbac" => Adapter::Rbac(deserialize_checked(v, p, d)?),
        _ => return None,
    };
    a.validate(d, p);
    Some(a)
}

// === Kubernetes kinds ===

fn load_kubernetes(kind: Kind, value: &Value, d: &mut Diagnostics) -> Option<(Spec, ObjectMeta)> {
    let root = FieldPath::root();
    // k8s-openapi checks apiVersion against its own; older Deployment groups are read as
    // apps/v1, with 1.0-era defaults (a selector from the template's labels) filled in.
    let mut v = value.clone();
    if kind == Kind::Deployment
        && let Value::Object(map) = &mut v
    {
        map.insert("apiVersion".to_owned(), Value::String("apps/v1".to_owned()));
        if let Some(Value::Object(spec)) = map.get_mut("spec")
            && !spec.contains_key("selector")
            && let Some(labels) = spec
                .get("template")
                .and_then(|t| t.pointer("/metadata/labels"))
                .cloned()
        {
            spec.insert(
                "selector".to_owned(),
                serde_json::json!({ "matchLabels": labels }),
            );
        }
    }
    macro_rules! typed {
        ($t:ty, $variant:ident) => {{
            let o: $t = deserialize_checked(&v, &root, d)?;
            let meta = o.metadata.clone();
            (Spec::$variant(Box::new(o)), meta)
        }};
    }
    let (spec, meta) = match kind {
        Kind::Namespace => typed!(Namespace, Namespace),
        Kind::Service => typed!(Service, Service),
        Kind::Deployment => typed!(Deployment, Deployment),
        Kind::Pod => typed!(Pod, Pod),
        Kind::ServiceAccount => typed!(ServiceAccount, ServiceAccount),
        Kind::Endpoints => typed!(Endpoints, Endpoints),
        Kind::ConfigMap => typed!(ConfigMap, ConfigMap),
        Kind::Secret => typed!(Secret, Secret),
        k => {
            d.error(&root.key("kind"), format!("{k} is not a Kubernetes kind"));
            return None;
        }
    };
    match &spec {
        Spec::Service(s) => check_service(d, s),
        Spec::Deployment(dep) => check_deployment(d, dep),
        _ => {}
    }
    Some((spec, meta))
}

fn check_service(d: &mut Diagnostics, s: &Service) {
    let Some(spec) = &s.spec else { return };
    let sp = FieldPath::root().key("spec");
    let mut names = std::collections::HashSet::new();
    let ports = spec.ports.as_deref().unwrap_or_default();
    for (i, port) in ports.iter().enumerate() {
        let p = sp.key("ports").index(i);
        check_port(d, &p.key("port"), i64::from(port.port));
        if let Some(name) = &port.name {
            if !names.insert(name.as_str()) {
                d.error(&p.key("name"), format!("duplicate port name \"{name}\""));
            }
        } else if ports.len() > 1 {
            d.error(
                &p.key("name"),
                "port name is required when a service has more than one port",
            );
        }
    }
    if let Some(sel) = &spec.selector {
        check_labels(d, &sp.key("selector"), sel);
    }
}

fn check_deployment(d: &mut Diagnostics, dep: &Deployment) {
    let Some(spec) = &dep.spec else { return };
    let sp = FieldPath::root().key("spec");
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    if let Some(ml) = &spec.selector.match_labels {
        for (k, v) in ml {
            if labels.get(k) != Some(v) {
                d.error(
                    &sp.key("selector").key("matchLabels").key(k.clone()),
                    format!("selector {k}={v} does not match the template's labels"),
                );
            }
        }
    }
    if let Some(r) = spec.replicas
        && r < 0
    {
        d.error(&sp.key("replicas"), "replicas must be non-negative");
    }
    let containers = spec
        .template
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    let cp = sp.key("template").key("spec").key("containers");
    if containers.is_empty() {
        d.error(&cp, "a pod template needs at least one container");
    }
    for (i, c) in containers.iter().enumerate() {
        if c.image.as_deref().unwrap_or("").is_empty() {
            d.error(&cp.index(i).key("image"), "image is required");
        }
    }
}

// === cross references ===

/// Resolves a host as Istio does: a short name means a service in the config's namespace.
pub fn qualify_host(host: &str, namespace: &str) -> String {
    if host.contains('.') || host == "*" || namespace.is_empty() {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// Reference checks across a set of resources: `(index of resource, warning)`.
pub fn cross_check(resources: &[Resource]) -> Vec<(usize, Diagnostic)> {
    let mut out = Vec::new();
    let mut subsets: HashMap<String, (String, Vec<&str>)> = HashMap::new();
    let mut gateways = std::collections::HashSet::new();
    let mut mixer_names = std::collections::HashSet::new();
    for r in resources {
        match &r.spec {
            Spec::DestinationRule(dr) => {
                let e = subsets
                    .entry(qualify_host(&dr.host, r.namespace()))
                    .or_insert_with(|| (r.key().to_string(), Vec::new()));
                e.1.extend(dr.subsets.iter().map(|s| s.name.as_str()));
            }
            Spec::Gateway(_) => {
                gateways.insert(format!("{}/{}", r.namespace(), r.name()));
            }
            Spec::Instance(_) | Spec::Handler(_) => {
                mixer_names.insert(r.mixer_fqn());
                // 1.1 generic kinds are referred to by name alone.
                mixer_names.insert(format!(
                    "{}.{}.{}",
                    r.name(),
                    if matches!(r.spec, Spec::Instance(_)) {
                        "instance"
                    } else {
                        "handler"
                    },
                    r.namespace()
                ));
            }
            _ => {}
        }
    }
    let has_drs = resources.iter().any(|r| r.kind == Kind::DestinationRule);
    let has_gateways = !gateways.is_empty();
    let has_mixer = !mixer_names.is_empty();
    for (i, r) in resources.iter().enumerate() {
        match &r.spec {
            Spec::VirtualService(vs) => {
                let sp = FieldPath::root().key("spec");
                let mut dests = Vec::new();
                for (h, route) in vs.http.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        dests.push((
                            sp.key("http")
                                .index(h)
                                .key("route")
                                .index(j)
                                .key("destination"),
                            &d.destination,
                        ));
                    }
                }
                for (h, route) in vs.tcp.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        dests.push((
                            sp.key("tcp")
                                .index(h)
                                .key("route")
                                .index(j)
                                .key("destination"),
                            &d.destination,
                        ));
                    }
                }
                for (h, route) in vs.tls.iter().enumerate() {
                    for (j, d) in route.route.iter().enumerate() {
                        dests.push((
                            sp.key("tls")
                                .index(h)
                                .key("route")
                                .index(j)
                                .key("destination"),
                            &d.destination,
                        ));
                    }
                }
                if has_drs {
                    for (path, dest) in dests {
                        let Some(subset) = &dest.subset else { continue };
                        let host = qualify_host(&dest.host, r.namespace());
                        match subsets.get(&host) {
                            Some((_, names)) if names.contains(&subset.as_str()) => {}
                            Some((dr, _)) => out.push((
                                i,
                                Diagnostic::warning(
                                    path.key("subset"),
                                    format!("subset \"{subset}\" is not defined by {dr}"),
                                ),
                            )),
                            None => out.push((
                                i,
                                Diagnostic::warning(
                                    path.key("subset"),
                                    format!("no DestinationRule here defines subset \"{subset}\" of host {host}"),
                                ),
                            )),
                        }
                    }
                }
                if has_gateways {
                    for (g, gw) in vs.gateways.iter().enumerate() {
                        if gw == "mesh" {
                            continue;
                        }
                        let full = match gw.split_once('/') {
                            Some((ns, name)) => format!("{ns}/{name}"),
                            None => match gw.split_once('.') {
                                Some((name, rest)) => {
                                    format!("{}/{name}", rest.split('.').next().unwrap_or(""))
                                }
                                None => format!("{}/{gw}", r.namespace()),
                            },
                        };
                        if !gateways.contains(&full) {
                            out.push((
                                i,
                                Diagnostic::warning(
                                    sp.key("gateways").index(g),
                                    format!("gateway \"{gw}\" is not defined here"),
                                ),
                            ));
                        }
                    }
                }
            }
            Spec::Rule(rule) if has_mixer => {
                let sp = FieldPath::root().key("spec");
                for (a, action) in rule.actions.iter().enumerate() {
                    let ap = sp.key("actions").index(a);
                    if !mixer_ref_found(&action.handler, "handler", r.namespace(), &mixer_names) {
                        out.push((
                            i,
                            Diagnostic::warning(
                                ap.key("handler"),
                                format!("handler \"{}\" is not defined here", action.handler),
                            ),
                        ));
                    }
                    for (j, inst) in action.instances.iter().enumerate() {
                        if !mixer_ref_found(inst, "instance", r.namespace(), &mixer_names) {
                            out.push((
                                i,
                                Diagnostic::warning(
                                    ap.key("instances").index(j),
                                    format!("instance \"{inst}\" is not defined here"),
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn mixer_ref_found(
    reference: &str,
    generic: &str,
    ns: &str,
    names: &std::collections::HashSet<String>,
) -> bool {
    crate::mixer::reference_candidates(reference, generic, ns)
        .iter()
        .any(|c| names.contains(c))
}

/// Protocol of a Kubernetes Service port, from its name (Istio 1.0's rule).
pub fn service_port_protocol(name: Option<&str>) -> Protocol {
    name.map(Protocol::from_port_name).unwrap_or(Protocol::Tcp)
}

/// Labels of a resource's pods for the Kubernetes kinds (used by registries).
pub fn pod_template_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}
