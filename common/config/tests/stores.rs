//! The memory and directory stores: all-or-nothing applies, conflicts, watching, and the
//! directory backend's "last good version stays" rule.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_config::store::{Change, ConfigStore, DirectoryStore, MemoryStore, StoreError};

use keel_config::{Kind, LabelSelector, Resource, ResourceKey, load_str};

fn resources(yaml: &str) -> Vec<Resource> {
    let report = load_str("test.yaml", yaml, Some("default"));
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    report.resources
}

fn vs(name: &str, subset: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: {name}\n  labels:\n    app: {name}\nspec:\n  hosts: [{name}]\n  http:\n  - route:\n    - destination:\n        host: {name}\n        subset: {subset}\n"
    )
}

fn key(name: &str) -> ResourceKey {
    ResourceKey {
        kind: Kind::VirtualService,
        namespace: "default".into(),
        name: name.into(),
    }
}

fn subset_of(r: &Resource) -> String {
    match &r.spec {
        keel_config::Spec::VirtualService(v) => {
            v.http[0].route[0].destination.subset.clone().unwrap()
        }
        _ => panic!("not a VirtualService"),
    }
}

#[test]
fn memory_apply_creates_configures_and_leaves_unchanged() {
    let store = MemoryStore::new();
    let out = store.apply(resources(&vs("reviews", "v1"))).unwrap();
    assert_eq!(out[0].action, keel_config::store::ApplyAction::Created);
    let rv1 = out[0].resource_version.clone();
    let out = store.apply(resources(&vs("reviews", "v1"))).unwrap();
    assert_eq!(out[0].action, keel_config::store::ApplyAction::Unchanged);
    assert_eq!(out[0].resource_version, rv1);
    let out = store.apply(resources(&vs("reviews", "v2"))).unwrap();
    assert_eq!(out[0].action, keel_config::store::ApplyAction::Configured);
    assert_ne!(out[0].resource_version, rv1);
    let snap = store.snapshot();
    assert_eq!(subset_of(snap.get(&key("reviews")).unwrap()), "v2");
}

#[test]
fn memory_stale_update_is_a_conflict_and_changes_nothing() {
    let store = MemoryStore::new();
    let rv = store.apply(resources(&vs("reviews", "v1"))).unwrap()[0]
        .resource_version
        .clone();
    // Writer A updates from rv.
    let mut a = resources(&vs("reviews", "v2"));
    a[0].metadata.resource_version = Some(rv.clone());
    store.apply(a).unwrap();
    // Writer B also started from rv: conflict, and the store still shows A's write.
    let mut b = resources(&vs("reviews", "v3"));
    b[0].metadata.resource_version = Some(rv.clone());
    let err = store.apply(b).unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("conflict"), "{err}");
    assert_eq!(
        subset_of(store.snapshot().get(&key("reviews")).unwrap()),
        "v2"
    );
}

#[test]
fn memory_multi_document_apply_is_all_or_nothing() {
    let store = MemoryStore::new();
    let rv = store.apply(resources(&vs("ratings", "v1"))).unwrap()[0]
        .resource_version
        .clone();
    store.apply(resources(&vs("ratings", "v2"))).unwrap();
    let mut batch = resources(&format!(
        "{}---\n{}",
        vs("reviews", "v1"),
        vs("ratings", "v3")
    ));
    batch[1].metadata.resource_version = Some(rv); // stale
    let before = store.snapshot();
    assert!(store.apply(batch).is_err());
    let after = store.snapshot();
    assert_eq!(before.version, after.version);
    assert!(
        after.get(&key("reviews")).is_none(),
        "half of a failed apply leaked"
    );
}

#[tokio::test]
async fn memory_subscribers_see_whole_applies() {
    let store = MemoryStore::new();
    let mut rx = store.subscribe();
    let docs: Vec<String> = (0..50).map(|i| vs(&format!("svc-{i}"), "v1")).collect();
    store.apply(resources(&docs.join("---\n"))).unwrap();
    rx.changed().await.unwrap();
    let snap = rx.borrow_and_update().clone();
    assert_eq!(snap.resources.len(), 50);
    let sel = LabelSelector::parse("app=svc-7").unwrap();
    assert_eq!(
        snap.list(Kind::VirtualService, Some("default"), &sel)
            .count(),
        1
    );
    store.delete(&key("svc-7")).unwrap();
    rx.changed().await.unwrap();
    let newer = rx.borrow_and_update().clone();
    assert_eq!(newer.diff(&snap), vec![Change::Deleted(key("svc-7"))]);
    assert!(matches!(
        store.delete(&key("svc-7")),
        Err(StoreError::NotFound(_))
    ));
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("keel-config-{tag}-{}", std::process::id()));
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

#[test]
fn directory_notices_added_edited_and_deleted_files() {
    let tmp = TempDir::new("edits");
    std::fs::write(tmp.0.join("reviews.yaml"), vs("reviews", "v1")).unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    assert_eq!(store.snapshot().resources.len(), 1);

    std::fs::write(tmp.0.join("ratings.yml"), vs("ratings", "v1")).unwrap();
    assert!(store.refresh());
    assert_eq!(store.snapshot().resources.len(), 2);

    std::fs::write(tmp.0.join("reviews.yaml"), vs("reviews", "v3")).unwrap();
    assert!(store.refresh());
    assert_eq!(
        subset_of(store.snapshot().get(&key("reviews")).unwrap()),
        "v3"
    );

    // Nothing changed: no new snapshot.
    assert!(!store.refresh());

    std::fs::remove_file(tmp.0.join("ratings.yml")).unwrap();
    assert!(store.refresh());
    assert!(store.snapshot().get(&key("ratings")).is_none());
}

/// Rescans skip reading files whose metadata is unchanged once they have settled; an
/// edit of the same size still shows (its timestamps move), as do a rewrite through a new
/// inode and an edit that puts the old modification time back (the change time moves).
#[test]
fn directory_rescans_of_settled_files_still_see_every_edit() {
    let tmp = TempDir::new("settled");
    let path = tmp.0.join("reviews.yaml");
    std::fs::write(&path, vs("reviews", "v1")).unwrap();
    // Past the store's settling time, so its metadata is trusted after the first read.
    std::thread::sleep(Duration::from_millis(3100));
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    assert!(!store.refresh(), "nothing changed");
    let subset = |s: &DirectoryStore| subset_of(s.snapshot().get(&key("reviews")).unwrap());
    assert_eq!(subset(&store), "v1");

    // Same length, in place.
    std::fs::write(&path, vs("reviews", "v2")).unwrap();
    assert!(store.refresh());
    assert_eq!(subset(&store), "v2");

    // Same length, modification time put back to what it was.
    let old = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    assert!(!store.refresh());
    std::fs::write(&path, vs("reviews", "v3")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(old)
        .unwrap();
    assert!(store.refresh());
    assert_eq!(subset(&store), "v3");

    // Renamed over from a temporary file.
    let tmp_file = tmp.0.join(".reviews.yaml.tmp");
    std::fs::write(&tmp_file, vs("reviews", "v4")).unwrap();
    std::fs::rename(&tmp_file, &path).unwrap();
    assert!(store.refresh());
    assert_eq!(subset(&store), "v4");
}

#[test]
fn directory_keeps_the_last_good_version_of_an_invalid_file() {
    let tmp = TempDir::new("invalid");
    let file = tmp.0.join("reviews.yaml");
    std::fs::write(&file, vs("reviews", "v1")).unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    let good = store.snapshot();

    std::fs::write(
        &file,
        vs("reviews", "v1").replace("subset: v1", "subset: v1\n      weight: 300"),
    )
    .unwrap();
    assert!(
        !store.refresh(),
        "an invalid edit must not change what is in force"
    );
    assert_eq!(store.snapshot().version, good.version);
    let states = store.file_states();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].resources, vec![key("reviews")]);
    assert_eq!(states[0].errors.len(), 1);
    let err = states[0].errors[0].to_string();
    assert!(
        err.contains("reviews.yaml:14:7: error") && err.contains("percentage 300"),
        "{err}"
    );

    std::fs::write(&file, vs("reviews", "v2")).unwrap();
    assert!(store.refresh());
    assert!(store.file_states()[0].errors.is_empty());
    assert_eq!(
        subset_of(store.snapshot().get(&key("reviews")).unwrap()),
        "v2"
    );
}

#[test]
fn directory_reports_a_resource_defined_twice() {
    let tmp = TempDir::new("dup");
    std::fs::write(tmp.0.join("a.yaml"), vs("reviews", "v1")).unwrap();
    std::fs::write(tmp.0.join("b.yaml"), vs("reviews", "v2")).unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    assert_eq!(
        subset_of(store.snapshot().get(&key("reviews")).unwrap()),
        "v1"
    );
    let states = store.file_states();
    assert!(states[0].errors.is_empty());
    assert!(
        states[1].errors[0].message.contains("already defined"),
        "{:?}",
        states[1].errors
    );
}

#[tokio::test]
async fn directory_watch_publishes_changes() {
    let tmp = TempDir::new("watch");
    let store = Arc::new(DirectoryStore::open(&tmp.0, "default").unwrap());
    let mut rx = store.subscribe();
    let task = store.clone().watch(Duration::from_millis(20));
    std::fs::write(tmp.0.join("reviews.yaml"), vs("reviews", "v1")).unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("the watcher noticed the new file")
        .unwrap();
    assert!(rx.borrow().get(&key("reviews")).is_some());
    task.abort();
}

#[test]
fn directory_kubernetes_kinds_keep_their_version_while_unchanged() {
    let tmp = TempDir::new("kube-rv");
    std::fs::write(
        tmp.0.join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: details\nspec:\n  ports: [{port: 9080, name: http}]\n  selector: {app: details}\n",
    )
    .unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    let v = store.snapshot().version;
    assert!(
        !store.refresh(),
        "an unchanged Service must not be republished"
    );
    assert!(!store.refresh_settled());
    assert_eq!(store.snapshot().version, v);
}

#[test]
fn directory_hand_edit_under_an_old_version_gets_a_new_one() {
    let tmp = TempDir::new("hand-rv");
    let file = tmp.0.join("reviews.yaml");
    let with_rv = |subset: &str| {
        vs("reviews", subset).replace("  labels:", "  resourceVersion: \"7\"\n  labels:")
    };
    std::fs::write(&file, with_rv("v1")).unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    let rv = |s: &DirectoryStore| {
        s.snapshot()
            .get(&key("reviews"))
            .unwrap()
            .metadata
            .resource_version
            .clone()
            .unwrap()
    };
    assert_eq!(rv(&store), "7");
    // Edited by hand, the recorded version left as it was: the content changed, so must the
    // version (a writer still holding 7 must get a conflict, not overwrite the edit).
    std::fs::write(&file, with_rv("v2")).unwrap();
    assert!(store.refresh());
    assert_ne!(rv(&store), "7");
}

#[test]
fn directory_settled_rescans_skip_a_file_caught_mid_write() {
    let tmp = TempDir::new("settle");
    let file = tmp.0.join("reviews.yaml");
    std::fs::write(&file, vs("reviews", "v1")).unwrap();
    let store = DirectoryStore::open(&tmp.0, "default").unwrap();
    // Truncated by an editor that is about to write the new content.
    std::fs::write(&file, "").unwrap();
    assert!(
        !store.refresh_settled(),
        "one sighting of a changed file is not enough"
    );
    assert!(store.snapshot().get(&key("reviews")).is_some());
    std::fs::write(&file, vs("reviews", "v2")).unwrap();
    assert!(!store.refresh_settled());
    assert!(
        store.refresh_settled(),
        "the same content twice in a row is taken"
    );
    assert_eq!(
        subset_of(store.snapshot().get(&key("reviews")).unwrap()),
        "v2"
    );
}
