//! Keel's Bookinfo YAML: valid, and meaning the same as Istio's 1.0 files of the same names.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_config::{Kind, Resource, ResourceKey, Spec, load_str};

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn ours() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bookinfo")
}

fn load(path: &Path) -> BTreeMap<ResourceKey, Resource> {
    let text = std::fs::read_to_string(path).unwrap();
    let report = load_str(&path.display().to_string(), &text, Some("default"));
    let problems: Vec<_> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    report.resources.into_iter().map(|r| (r.key(), r)).collect()
}

#[test]
fn networking_files_match_istio_1_0_by_name_and_meaning() {
    let istio = shared().join("istio-samples/1.0/samples/bookinfo/networking");
    let mut names: Vec<_> = std::fs::read_dir(&istio)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 20);
    for name in &names {
        let mine = ours().join("networking").join(name);
        assert!(
            mine.exists(),
            "samples/bookinfo/networking/{name} is missing"
        );
        let (a, b) = (load(&istio.join(name)), load(&mine));
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{name}: resources differ"
        );
        for (key, theirs) in &a {
            assert_eq!(
                theirs.spec, b[key].spec,
                "{name}: {key} means something else"
            );
        }
    }
}

#[test]
fn platform_manifest_deploys_the_same_workloads() {
    let istio =
        load(&shared().join("istio-samples/1.0/samples/bookinfo/platform/kube/bookinfo.yaml"));
    let mine = load(&ours().join("platform/kube/bookinfo.yaml"));
    let of_kind = |m: &BTreeMap<ResourceKey, Resource>, k: Kind| {
        m.keys()
            .filter(|key| key.kind == k)
            .map(|key| key.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of_kind(&istio, Kind::Service),
        of_kind(&mine, Kind::Service)
    );
    assert_eq!(
        of_kind(&istio, Kind::Deployment),
        of_kind(&mine, Kind::Deployment)
    );
    assert_eq!(of_kind(&mine, Kind::ServiceAccount).len(), 4);
    for r in mine.values() {
        match &r.spec {
            Spec::Service(s) => {
                let ports = s.spec.as_ref().unwrap().ports.as_ref().unwrap();
                assert_eq!(
                    (ports[0].port, ports[0].name.as_deref()),
                    (9080, Some("http")),
                    "{}",
                    r.key()
                );
            }
            Spec::Deployment(d) => {
                let spec = d.spec.as_ref().unwrap();
                let labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .unwrap()
                    .labels
                    .as_ref()
                    .unwrap();
                let (app, version) = (labels["app"].as_str(), labels["version"].as_str());
                assert_eq!(r.name(), format!("{app}-{version}"));
                let c = &spec.template.spec.as_ref().unwrap().containers[0];
                assert_eq!(
                    c.image.as_deref(),
                    Some(format!("keel/bookinfo-{app}:0.1").as_str())
                );
                let env: BTreeMap<_, _> = c
                    .env
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| (e.name, e.value.unwrap_or_default()))
                    .collect();
                let expect: &[(&str, &str)] = match (app, version) {
                    ("reviews", "v1") => &[("ENABLE_RATINGS", "false")],
                    ("reviews", "v2") => &[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "black")],
                    ("reviews", "v3") => &[("ENABLE_RATINGS", "true"), ("STAR_COLOR", "red")],
                    _ => &[],
                };
                let expect: BTreeMap<String, String> = expect
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect();
                assert_eq!(env, expect, "{}", r.key());
            }
            _ => {}
        }
    }
}

/// The walkthrough's YAML blocks (see keel-config's sample tests for the same extraction).
fn walkthrough_block(containing: &str) -> String {
    let dir = shared().join("seeds");
    let text: String = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
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
    let mut cur = String::new();
    for line in text.lines() {
        if looks_yaml(line) {
            cur.push_str(line);
            cur.push('\n');
        } else {
            if cur.contains(containing) {
                return cur;
            }
            cur.clear();
        }
    }
    assert!(
        cur.contains(containing),
        "no walkthrough block contains {containing}"
    );
    cur
}

#[test]
fn telemetry_files_mean_what_the_walkthrough_applies() {
    for (file, marker) in [
        ("new_telemetry.yaml", "doublerequestcount"),
        ("fluentd-istio.yaml", "fluentd-es.logging"),
    ] {
        let mine = load(&ours().join("telemetry").join(file));
        let block = walkthrough_block(marker);
        let theirs: BTreeMap<_, _> = load_str("walkthrough", &block, Some("default"))
            .resources
            .into_iter()
            .map(|r| (r.key(), r))
            .collect();
        assert_eq!(
            mine.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{file}"
        );
        for (key, r) in &theirs {
            assert_eq!(r.spec, mine[key].spec, "{file}: {key}");
        }
    }
}
