//! Every Istio configuration file and Kubernetes manifest in ../shared/istio-samples (1.0,
//! 1.1.3, current) and every YAML snippet in the walkthrough (../shared/seeds) loads and
//! validates. The few exceptions are listed below with their reasons, and each must still
//! occur (so the list cannot go stale).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_config::{Kind, Loader, Spec};

fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEEL_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// Whole files that are not configuration.
const FILE_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "samples/bookinfo/swagger.yaml",
        "an OpenAPI description of productpage, not a Kubernetes object",
    ),
    (
        "mixer/testdata/config/metrictemplate.yaml",
        "a git symlink stored as its target path text, not YAML content",
    ),
    (
        "mixer/testdata/config/listentrytemplate.yaml",
        "a git symlink stored as its target path text, not YAML content",
    ),
];

/// Kinds that Keel does not serve, with the reason; documents of these kinds must be refused
/// with the "not served" error and nothing else.
const KIND_EXCEPTIONS: &[(&str, &str)] = &[
    (
        "CustomResourceDefinition",
        "Istio's CRD definitions install the kinds into a Kubernetes API server; Keel serves those kinds natively (install/ will generate its own CRDs)",
    ),
    ("Certificate", "cert-manager's API, not Istio's"),
    ("ClusterIssuer", "cert-manager's API, not Istio's"),
    (
        "EnvoyFilter",
        "raw Envoy configuration patches (post-1.0 API) are not supported",
    ),
    (
        "HTTPRoute",
        "the Kubernetes Gateway API (gateway.networking.k8s.io) came after Istio 1.0",
    ),
    (
        "Gateway",
        "the Kubernetes Gateway API's Gateway (gateway.networking.k8s.io), not Istio's",
    ),
    (
        "Ingress",
        "Kubernetes Ingress objects are not read by Keel; Istio's Gateway replaces them",
    ),
];

/// Renders the one Helm template among the samples the way `helm template` would for the
/// default values (namespace istio-system, controlPlaneSecurityEnabled false).
fn render_helm(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("{{- if") || t.starts_with("{{ if") {
            skipping = true;
            continue;
        }
        if t.starts_with("{{- end") || t.starts_with("{{ end") {
            skipping = false;
            continue;
        }
        if !skipping {
            out.push_str(&line.replace("{{ .Release.Namespace }}", "istio-system"));
            out.push('\n');
        }
    }
    out
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

#[test]
fn every_istio_sample_loads_and_validates() {
    let root = shared_dir().join("istio-samples");
    assert!(root.is_dir(), "{} is missing", root.display());
    let mut files = Vec::new();
    yaml_files(&root, &mut files);
    files.sort();
    assert!(
        files.len() > 100,
        "expected the whole sample tree, found {} files",
        files.len()
    );

    let mut file_exceptions_hit = BTreeMap::new();
    let mut kind_exceptions_hit: BTreeMap<&str, usize> = BTreeMap::new();
    let mut accepted_by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut failures = Vec::new();

    for file in &files {
        let rel = file
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if let Some((_, why)) = FILE_EXCEPTIONS
            .iter()
            .find(|(suffix, _)| rel.ends_with(suffix))
        {
            file_exceptions_hit.insert(rel.clone(), *why);
            continue;
        }
        let mut text = std::fs::read_to_string(file).unwrap();
        if text.contains("{{ .Release.Namespace }}") {
            text = render_helm(&text);
        }
        let mut loader = Loader::new().default_namespace("default");
        loader.add_str(&rel, &text);
        let report = loader.finish();
        for d in report.errors() {
            let excepted = KIND_EXCEPTIONS.iter().find(|(kind, _)| {
                d.message
                    .starts_with(&format!("kind \"{kind}\" is not served by Keel"))
            });
            match excepted {
                Some((kind, _)) => *kind_exceptions_hit.entry(kind).or_default() += 1,
                None => failures.push(d.to_string()),
            }
        }
        for r in &report.resources {
            *accepted_by_kind.entry(r.kind).or_default() += 1;
        }
    }

    assert!(
        failures.is_empty(),
        "unexpected errors:\n{}",
        failures.join("\n")
    );
    for (suffix, _) in FILE_EXCEPTIONS {
        assert!(
            file_exceptions_hit.keys().any(|k| k.ends_with(suffix)),
            "file exception {suffix} no longer occurs: remove it"
        );
    }
    for (kind, _) in KIND_EXCEPTIONS {
        assert!(
            kind_exceptions_hit.contains_key(kind),
            "kind exception {kind} no longer occurs: remove it"
        );
    }
    // The samples exercise every Istio 1.0 kind they contain; spot-check the counts so a
    // regression that silently drops documents shows up.
    for (kind, at_least) in [
        (Kind::VirtualService, 40),
        (Kind::DestinationRule, 20),
        (Kind::Gateway, 3),
        (Kind::ServiceEntry, 2),
        (Kind::Deployment, 40),
        (Kind::Service, 30),
        (Kind::ServiceAccount, 10),
        (Kind::Rule, 30),
        (Kind::Metric, 10),
        (Kind::Prometheus, 4),
        (Kind::Instance, 4),
        (Kind::Handler, 4),
        (Kind::ServiceRole, 4),
        (Kind::AttributeManifest, 4),
    ] {
        let n = accepted_by_kind.get(&kind).copied().unwrap_or(0);
        assert!(
            n >= at_least,
            "only {n} {kind} accepted, expected at least {at_least}"
        );
    }
}

/// The YAML blocks of the walkthrough: maximal runs of YAML-looking lines that contain an
/// `apiVersion:` (the prose around them is Chinese text and shell commands).
fn walkthrough_blocks(text: &str) -> Vec<String> {
    let looks_yaml = |l: &str| {
        l.starts_with(' ')
            || l.starts_with('#')
            || l.starts_with("- ")
            || l == "---"
            || l.split_once(':').is_some_and(|(k, _)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_\"./-".contains(&b))
            })
    };
    let mut blocks = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if looks_yaml(line) {
            cur.push_str(line);
            cur.push('\n');
        } else {
            if cur.contains("apiVersion:") {
                blocks.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    if cur.contains("apiVersion:") {
        blocks.push(cur);
    }
    blocks
}

#[test]
fn every_walkthrough_snippet_loads_and_validates() {
    let seeds = shared_dir().join("seeds");
    let mut found = BTreeMap::<Kind, usize>::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&seeds).unwrap().flatten() {
        files.push(entry.path());
    }
    assert!(!files.is_empty(), "no walkthrough in {}", seeds.display());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, block) in walkthrough_blocks(&text).iter().enumerate() {
            let name = format!(
                "{} block {}",
                file.file_name().unwrap().to_string_lossy(),
                i + 1
            );
            let report = keel_config::load_str(&name, block, Some("default"));
            let errors: Vec<_> = report.errors().map(ToString::to_string).collect();
            assert!(
                errors.is_empty(),
                "{name}:\n{}\n---\n{block}",
                errors.join("\n")
            );
            for r in &report.resources {
                *found.entry(r.kind).or_default() += 1;
            }
        }
    }
    // new_telemetry.yaml, logging-stack.yaml, fluentd-istio.yaml and the reviews v3 route.
    assert_eq!(found.get(&Kind::Metric), Some(&1));
    assert_eq!(found.get(&Kind::Prometheus), Some(&1));
    assert_eq!(found.get(&Kind::LogEntry), Some(&2));
    assert_eq!(found.get(&Kind::Stdio), Some(&1));
    assert_eq!(found.get(&Kind::Fluentd), Some(&1));
    assert_eq!(found.get(&Kind::Rule), Some(&3));
    assert_eq!(found.get(&Kind::Namespace), Some(&1));
    assert_eq!(found.get(&Kind::Deployment), Some(&3));
    assert_eq!(found.get(&Kind::Service), Some(&3));
    assert_eq!(found.get(&Kind::ConfigMap), Some(&1));
    assert!(found.get(&Kind::VirtualService).is_some_and(|n| *n >= 1));
}

#[test]
fn walkthrough_telemetry_is_typed_as_written() {
    let text = std::fs::read_dir(shared_dir().join("seeds"))
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    let block = walkthrough_blocks(&text)
        .into_iter()
        .find(|b| b.contains("doublerequestcount"))
        .expect("the new_telemetry.yaml block");
    let report = keel_config::load_str("new_telemetry.yaml", &block, None);
    assert!(report.is_ok());
    let handler = report
        .resources
        .iter()
        .find(|r| r.kind == Kind::Prometheus)
        .unwrap();
    let Spec::Handler(keel_config::mixer::Adapter::Prometheus(p)) = &handler.spec else {
        panic!("not a prometheus handler")
    };
    assert_eq!(p.metrics[0].name, "double_request_count");
    assert_eq!(
        p.metrics[0].instance_name,
        "doublerequestcount.metric.istio-system"
    );
    assert_eq!(
        p.metrics[0].label_names,
        ["source", "destination", "message"]
    );
    let stdio = report
        .resources
        .iter()
        .find(|r| r.kind == Kind::Stdio)
        .unwrap();
    let Spec::Handler(keel_config::mixer::Adapter::Stdio(s)) = &stdio.spec else {
        panic!("not a stdio handler")
    };
    assert_eq!(s.severity_levels.get("warning"), Some(&1));
    assert_eq!(s.output_as_json, Some(true));
    assert_eq!(handler.mixer_fqn(), "doublehandler.prometheus.istio-system");
}
