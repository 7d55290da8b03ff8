//! Galley's acceptance: round trips for every sample kind across restarts, all-or-nothing
//! applies, conflicts between concurrent writers, whole snapshots for subscribers, hand-edited
//! files, and durability of acknowledged applies across SIGKILL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use keel_config::store::DirectoryStore;
use keel_config::{LabelSelector, ResourceKey, Spec, load_str};
use keel_galley::core::{ApiError, Galley, Source};
use keel_galley::metrics::Metrics;

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("keel-galley-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn galley(dir: &Path) -> Galley {
    Galley::new(
        Arc::new(DirectoryStore::open(dir, "default").unwrap()),
        Arc::new(Metrics::new()),
    )
}

fn src(name: &str, text: &str) -> Vec<Source> {
    vec![Source {
        name: name.into(),
        text: text.into(),
    }]
}

/// Every document of every sample file whose kind Keel serves, one text each.
fn sample_documents() -> Vec<(String, String)> {
    let root = shared().join("istio-samples");
    let mut files = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    walk(&root, &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        if text.contains("{{") {
            continue; // the Helm template; keel-config's tests render it
        }
        let report = load_str("x", &text, Some("default"));
        for r in report.resources {
            let mut v = r.to_value();
            v["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
            docs.push((
                format!("{} ({})", f.display(), r.key()),
                serde_json::to_string(&v).unwrap(),
            ));
        }
    }
    docs
}

#[test]
fn every_sample_kind_round_trips_across_restarts() {
    let tmp = TempDir::new("roundtrip");
    let docs = sample_documents();
    assert!(
        docs.len() > 250,
        "expected the sample corpus, got {} documents",
        docs.len()
    );
    let mut keys = std::collections::BTreeMap::new();
    {
        let g = galley(&tmp.0);
        for (name, text) in &docs {
            let (outcomes, _) = g.apply(&src(name, text), "default", false).unwrap();
            for o in outcomes {
                // Later samples reuse names (bookinfo.yaml in three eras): last one wins.
                let key = ResourceKey {
                    kind: keel_config::Kind::lookup(&format!("{}.{}", o.kind, o.group)).unwrap(),
                    namespace: o.namespace,
                    name: o.name,
                };
                keys.insert(key, text.clone());
            }
        }
    }
    let kinds: std::collections::BTreeSet<_> = keys.keys().map(|k| k.kind).collect();
    assert!(kinds.len() >= 25, "only {} kinds exercised", kinds.len());

    // Restart: everything is there, as applied.
    let g = galley(&tmp.0);
    let strip = |mut v: serde_json::Value| {
        let m = v["metadata"].as_object_mut().unwrap();
        m.remove("resourceVersion");
        m.remove("creationTimestamp");
        v
    };
    for (key, text) in &keys {
        let got = g.get(key).unwrap();
        let want = load_str("want", text, Some("default")).resources.remove(0);
        assert_eq!(
            strip(got.to_value()),
            strip(want.to_value()),
            "{key} changed across a restart"
        );
        assert!(
            got.metadata.creation_timestamp.is_some(),
            "{key} has no creationTimestamp"
        );
    }

    // Edit (read, modify, write back with the resourceVersion) every one.
    for key in keys.keys() {
        let mut v = g.get(key).unwrap().to_value();
        v["metadata"]["labels"]["edited"] = serde_json::json!("yes");
        let (o, _) = g
            .apply(&src("edit", &v.to_string()), "default", false)
            .unwrap();
        assert_eq!(o[0].action, "configured", "{key}");
    }
    drop(g);
    let g = galley(&tmp.0);
    for key in keys.keys() {
        assert_eq!(
            g.get(key)
                .unwrap()
                .labels()
                .get("edited")
                .map(String::as_str),
            Some("yes"),
            "{key}"
        );
    }

    // Delete every one; after a restart they stay gone.
    let all: Vec<_> = keys.keys().cloned().collect();
    g.delete(&all).unwrap();
    drop(g);
    let g = galley(&tmp.0);
    for key in keys.keys() {
        assert!(
            matches!(g.get(key), Err(ApiError::NotFound(_))),
            "{key} came back"
        );
    }
}

#[test]
fn an_invalid_third_document_changes_nothing() {
    let tmp = TempDir::new("third");
    let g = galley(&tmp.0);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../common/config/tests/fixtures/invalid/third-document-invalid.yaml"),
    )
    .unwrap();
    let err = g
        .apply(&src("three.yaml", &text), "default", false)
        .unwrap_err();
    let ApiError::Invalid { diagnostics } = &err else {
        panic!("expected an invalid-config error, got {err}")
    };
    assert_eq!(
        diagnostics,
        &[
            "three.yaml:33:7: error: document 3 (VirtualService default/c): spec.http[0].route[0].weight: percentage 101 is not in range 0..100"
        ]
    );
    assert_eq!(err.status(), 422);
    let none = LabelSelector::default();
    assert!(
        g.list(keel_config::Kind::VirtualService, None, &none)
            .is_empty()
    );
    assert!(
        std::fs::read_dir(&tmp.0).unwrap().next().is_none(),
        "nothing may be written"
    );
}

#[test]
fn concurrent_writers_do_not_lose_updates() {
    let tmp = TempDir::new("conflict");
    let g = Arc::new(galley(&tmp.0));
    let vs = |subset: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {{host: reviews, subset: {subset}}}\n"
        )
    };
    g.apply(&src("a", &vs("v1")), "default", false).unwrap();
    let key = ResourceKey {
        kind: keel_config::Kind::VirtualService,
        namespace: "default".into(),
        name: "reviews".into(),
    };
    // Both writers read the same version, then race to write.
    let base = g.get(&key).unwrap().to_value();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let handles: Vec<_> = ["v2", "v3"]
        .into_iter()
        .map(|subset| {
            let (g, barrier, mut v) = (g.clone(), barrier.clone(), base.clone());
            std::thread::spawn(move || {
                v["spec"]["http"][0]["route"][0]["destination"]["subset"] =
                    serde_json::json!(subset);
                barrier.wait();
                (
                    subset,
                    g.apply(&src(subset, &v.to_string()), "default", false),
                )
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<_> = results
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|(s, _)| *s)
        .collect();
    let losers: Vec<_> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert_eq!(winners.len(), 1, "exactly one writer wins");
    assert_eq!(losers.len(), 1);
    assert_eq!(losers[0].status(), 409, "{}", losers[0]);
    assert!(
        losers[0].to_string().contains("has been modified"),
        "{}",
        losers[0]
    );
    let Spec::VirtualService(now) = &g.get(&key).unwrap().spec else {
        panic!()
    };
    assert_eq!(
        now.http[0].route[0].destination.subset.as_deref(),
        Some(winners[0])
    );
}

#[test]
fn a_hand_placed_invalid_file_is_reported_and_the_last_good_version_stays() {
    let tmp = TempDir::new("hand");
    let file = tmp.0.join("mine.yaml");
    let good = "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: ratings\nspec:\n  host: ratings\n  subsets:\n  - name: v1\n    labels: {version: v1}\n";
    std::fs::write(&file, good).unwrap();
    let g = galley(&tmp.0);
    let key = ResourceKey {
        kind: keel_config::Kind::DestinationRule,
        namespace: "default".into(),
        name: "ratings".into(),
    };
    assert!(g.get(&key).is_ok());
    std::fs::write(&file, good.replace("name: v1", "name: V_1")).unwrap();
    g.store.refresh();
    let problems = g.file_problems();
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].errors[0]
            .to_string()
            .contains("mine.yaml:8:5: error"),
        "{}",
        problems[0].errors[0]
    );
    let Spec::DestinationRule(dr) = &g.get(&key).unwrap().spec else {
        panic!()
    };
    assert_eq!(
        dr.subsets[0].name, "v1",
        "the last good version stays in force"
    );
    // Applying through the API over a file with errors is refused, not silently merged.
    let err = g
        .apply(
            &src("api", &good.replace("name: v1", "name: v2")),
            "default",
            false,
        )
        .unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_a_50_document_apply_whole_or_not_at_all() {
    let tmp = TempDir::new("snapshot");
    let running = keel_galley::start(&keel_galley::Args {
        config_dir: tmp.0.clone(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        default_namespace: "default".into(),
        rescan_ms: 50,
        log_format: "text".into(),
    })
    .await
    .unwrap();
    let vs_type = keel_config::Kind::VirtualService.type_url();
    let dr_type = keel_config::Kind::DestinationRule.type_url();
    let mut config = keel_xds::client::ClientConfig::new(
        format!("http://{}", running.grpc_addr),
        "test-subscriber",
        vec![vs_type.clone(), dr_type.clone()],
    );
    config.consistent = true;
    let (mut rx, _task) = keel_xds::client::spawn(config, keel_xds::client::AcceptAll);
    let counts = move |s: &keel_xds::client::ClientState| {
        (
            s.types.get(&vs_type).map_or(0, |t| t.resources.len()),
            s.types.get(&dr_type).map_or(0, |t| t.resources.len()),
        )
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        while !rx.borrow_and_update().synced {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    let observer = tokio::spawn(async move {
        let mut seen = vec![];
        loop {
            let c = counts(&rx.borrow_and_update());
            seen.push(c);
            if c == (25, 25) {
                return seen;
            }
            if tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .is_err()
            {
                return seen;
            }
        }
    });
    let mut docs = Vec::new();
    for i in 0..25 {
        docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: svc-{i}\nspec:\n  hosts: [svc-{i}]\n  http:\n  - route:\n    - destination: {{host: svc-{i}, subset: v1}}\n"));
        docs.push(format!("apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: svc-{i}\nspec:\n  host: svc-{i}\n  subsets:\n  - name: v1\n    labels: {{version: v1}}\n"));
    }
    let (outcomes, _) = running
        .state
        .galley
        .apply(&src("fifty.yaml", &docs.join("---\n")), "default", false)
        .unwrap();
    assert_eq!(outcomes.len(), 50);
    let seen = observer.await.unwrap();
    assert_eq!(
        seen.last(),
        Some(&(25, 25)),
        "the subscriber never saw the apply: {seen:?}"
    );
    assert!(
        seen.iter().all(|c| *c == (0, 0) || *c == (25, 25)),
        "the subscriber saw half an apply: {seen:?}"
    );
    running.shutdown();
}

/// A minimal HTTP/1.1 exchange, so this test needs no client library.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: galley\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_galley(dir: &Path, http_addr: SocketAddr) -> std::process::Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keel-galley"))
        .arg("--config-dir")
        .arg(dir)
        .arg("--http-addr")
        .arg(http_addr.to_string())
        .arg("--grpc-addr")
        .arg(free_port().to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if matches!(http(http_addr, "GET", "/ready", ""), Ok((200, _))) {
            return child;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("galley did not become ready");
}

#[test]
fn every_acknowledged_apply_survives_sigkill() {
    let tmp = TempDir::new("sigkill");
    let addr = free_port();
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let mut child = spawn_galley(&tmp.0, addr);
        // Apply until galley is killed under us, from another thread, mid-stream.
        let killer = {
            let pid = child.id();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150 + 100 * round));
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            })
        };
        for i in 0.. {
            let name = format!("r{round}-{i}");
            let doc = format!(
                "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n---\napiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: {name}\nspec:\n  host: {name}\n"
            );
            match http(addr, "POST", "/v1/apply?namespace=default", &doc) {
                Ok((200, _)) => acknowledged.push(name),
                Ok((code, body)) => panic!("apply failed with {code}: {body}"),
                Err(_) => break, // galley is gone
            }
        }
        killer.join().unwrap();
        let _ = child.wait();
    }
    assert!(
        acknowledged.len() > 3,
        "too few applies to mean anything: {}",
        acknowledged.len()
    );
    let mut child = spawn_galley(&tmp.0, addr);
    for name in &acknowledged {
        for kind in ["vs", "dr"] {
            let (code, body) = http(
                addr,
                "GET",
                &format!("/v1/resources/{kind}/default/{name}"),
                "",
            )
            .unwrap();
            assert_eq!(
                code, 200,
                "{kind} {name} was acknowledged but is gone after SIGKILL: {body}"
            );
        }
    }
    // Nothing half-written: every file in the directory loads.
    let (code, body) = http(addr, "GET", "/v1/files", "").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("\"files\": []"),
        "files with problems after crashes: {body}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_new_resource_never_overwrites_a_file_that_holds_another() {
    let tmp = TempDir::new("collide");
    let dir = tmp.0.join("default/virtualservices");
    std::fs::create_dir_all(&dir).unwrap();
    // A hand-made file at the path galley would use for `reviews`, holding `ratings`.
    let ratings = "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: ratings\nspec:\n  hosts: [ratings]\n  http:\n  - route:\n    - destination: {host: ratings}\n";
    std::fs::write(dir.join("reviews.yaml"), ratings).unwrap();
    let g = galley(&tmp.0);
    let reviews = ratings.replace("ratings", "reviews");
    let err = g.apply(&src("r", &reviews), "default", false).unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("reviews.yaml")).unwrap(),
        ratings
    );
}
