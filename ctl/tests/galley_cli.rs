//! keelctl against a real galley (in process, on loopback): apply/get/delete/edit/label with
//! kubectl-shaped output and exit codes, and a clear error when galley is not there.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

struct Env {
    dir: PathBuf,
    galley: String,
    _running: keel_galley::Running,
    _rt: tokio::runtime::Runtime,
}

impl Env {
    fn start(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("keelctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let running = rt
            .block_on(keel_galley::start(&keel_galley::Args {
                config_dir: dir.join("config"),
                grpc_addr: "127.0.0.1:0".parse().unwrap(),
                http_addr: "127.0.0.1:0".parse().unwrap(),
                default_namespace: "default".into(),
                rescan_ms: 100,
                log_format: "text".into(),
            }))
            .unwrap();
        Env {
            galley: format!("http://{}", running.http_addr),
            dir,
            _running: running,
            _rt: rt,
        }
    }

    fn keelctl(&self, args: &[&str]) -> Output {
        self.keelctl_with(args, &[])
    }

    fn keelctl_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_keelctl"));
        c.arg("--galley")
            .arg(&self.galley)
            .args(args)
            .env("KEEL_HOME", self.dir.join("home"));
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn apply_get_delete_like_kubectl() {
    let env = Env::start("crud");
    let net = shared().join("istio-samples/1.0/samples/bookinfo/networking");
    let dr = net.join("destination-rule-all.yaml");
    let vs = net.join("virtual-service-all-v1.yaml");
    let o = env.keelctl(&[
        "apply",
        "-f",
        dr.to_str().unwrap(),
        "-f",
        vs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("destinationrule.networking.istio.io/reviews created\n"),
        "{out}"
    );
    assert!(
        out.contains("virtualservice.networking.istio.io/ratings created\n"),
        "{out}"
    );

    let o = env.keelctl(&["apply", "-f", vs.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("virtualservice.networking.istio.io/reviews unchanged"),
        "{}",
        stdout(&o)
    );

    let o = env.keelctl(&["get", "vs"]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("HOSTS") && lines[0].ends_with("AGE"),
        "{out}"
    );
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[4].starts_with("reviews ") && lines[4].contains("[\"reviews\"]"),
        "{out}"
    );

    let o = env.keelctl(&["get", "virtualservices", "reviews", "-o", "yaml"]);
    let yaml = stdout(&o);
    assert!(
        yaml.contains("kind: VirtualService") && yaml.contains("subset: v1"),
        "{yaml}"
    );
    assert!(yaml.contains("resourceVersion:"), "{yaml}");

    let o = env.keelctl(&["get", "dr", "-o", "name"]);
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io/details\ndestinationrule.networking.istio.io/productpage\ndestinationrule.networking.istio.io/ratings\ndestinationrule.networking.istio.io/reviews\n"
    );

    let o = env.keelctl(&["get", "vs", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o).trim(),
        "Error from server (NotFound): virtualservices.networking.istio.io \"nope\" not found"
    );

    let o = env.keelctl(&["get", "vs", "-n", "elsewhere"]);
    assert!(o.status.success());
    assert_eq!(
        stderr(&o).trim(),
        "No resources found in elsewhere namespace."
    );

    let o = env.keelctl(&["delete", "-f", vs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("virtualservice.networking.istio.io \"reviews\" deleted"),
        "{}",
        stdout(&o)
    );
    let o = env.keelctl(&["delete", "dr", "reviews", "ratings"]);
    assert_eq!(
        stdout(&o),
        "destinationrule.networking.istio.io \"reviews\" deleted\ndestinationrule.networking.istio.io \"ratings\" deleted\n"
    );
    let o = env.keelctl(&["delete", "dr", "reviews"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("NotFound"), "{}", stderr(&o));
}

#[test]
fn an_invalid_apply_reports_every_error_and_changes_nothing() {
    let env = Env::start("invalid");
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../common/config/tests/fixtures/invalid/third-document-invalid.yaml");
    let o = env.keelctl(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("third-document-invalid.yaml:33:7: error: document 3 (VirtualService default/c): spec.http[0].route[0].weight: percentage 101 is not in range 0..100"), "{err}");
    assert!(err.contains("nothing was applied"), "{err}");
    let o = env.keelctl(&["get", "vs"]);
    assert_eq!(
        stderr(&o).trim(),
        "No resources found in default namespace."
    );
}

#[test]
fn edit_reopens_with_errors_until_the_object_is_valid() {
    let env = Env::start("edit");
    let vs = shared()
        .join("istio-samples/1.0/samples/bookinfo/networking/virtual-service-reviews-50-v3.yaml");
    assert!(
        env.keelctl(&["apply", "-f", vs.to_str().unwrap()])
            .status
            .success()
    );
    // An "editor" that first breaks the weights, then, seeing galley's error, fixes them.
    let editor = env.dir.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\nf=\"$1\"\nif grep -q 'must add up to 100' \"$f\"; then\n  sed -i '0,/weight: 40/s//weight: 30/; s/weight: 40/weight: 70/' \"$f\"\nelse\n  sed -i 's/weight: 50/weight: 40/g' \"$f\"\nfi\n",
    )
    .unwrap();
    let o = env.keelctl_with(
        &["edit", "vs", "reviews"],
        &[("KEEL_EDITOR", &format!("sh {}", editor.display()))],
    );
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(
        stdout(&o),
        "virtualservice.networking.istio.io/reviews edited\n"
    );
    let yaml = stdout(&env.keelctl(&["get", "vs", "reviews", "-o", "yaml"]));
    assert!(
        yaml.contains("weight: 30") && yaml.contains("weight: 70"),
        "{yaml}"
    );

    // Saving without changes is a no-op.
    let o = env.keelctl_with(&["edit", "vs", "reviews"], &[("KEEL_EDITOR", "true")]);
    assert_eq!(stdout(&o), "Edit cancelled, no changes made.\n");
}

#[test]
fn label_and_label_columns() {
    let env = Env::start("label");
    let ns = env.dir.join("ns.yaml");
    std::fs::write(&ns, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: istio-system\n  labels:\n    istio-injection: disabled\n").unwrap();
    assert!(
        env.keelctl(&["apply", "-f", ns.to_str().unwrap()])
            .status
            .success()
    );
    let o = env.keelctl(&["label", "namespace", "default", "istio-injection=enabled"]);
    assert_eq!(stdout(&o), "namespace/default labeled\n", "{}", stderr(&o));
    let o = env.keelctl(&["label", "ns", "istio-system", "istio-injection=enabled"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("already has a value (disabled), and --overwrite is false"),
        "{}",
        stderr(&o)
    );
    // `key=value-` is a value (refused by validation: label values end alphanumeric), never a
    // removal of a key called "key=value".
    let o = env.keelctl(&["label", "ns", "default", "build=v1-"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("metadata.labels.build: invalid label value \"v1-\""),
        "{}",
        stderr(&o)
    );
    let o = env.keelctl(&["get", "ns", "-L", "istio-injection"]);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "STATUS", "AGE", "ISTIO-INJECTION"]
    );
    assert!(
        lines[1].starts_with("default ") && lines[1].ends_with("enabled"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("istio-system ") && lines[2].ends_with("disabled"),
        "{out}"
    );
}

#[test]
fn a_missing_galley_is_a_clear_error_and_the_context_file_is_used() {
    let env = Env::start("context");
    let o = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(["--galley", "127.0.0.1:1", "get", "vs"])
        .env("KEEL_HOME", env.dir.join("home"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("cannot reach galley at http://127.0.0.1:1"),
        "{err}"
    );
    assert!(err.contains("keelctl up"), "{err}");

    // Remember the address; later commands without --galley use it.
    let o = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(["context", "--set-galley", &env.galley])
        .env("KEEL_HOME", env.dir.join("home"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(["get", "gw"])
        .env("KEEL_HOME", env.dir.join("home"))
        .env_remove("KEEL_GALLEY")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).trim(),
        "No resources found in default namespace."
    );
}

#[test]
fn get_watch_prints_changes_as_they_happen() {
    use std::io::BufRead;
    let env = Env::start("watch");
    let net = shared().join("istio-samples/1.0/samples/bookinfo/networking");
    assert!(
        env.keelctl(&[
            "apply",
            "-f",
            net.join("virtual-service-all-v1.yaml").to_str().unwrap()
        ])
        .status
        .success()
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(["--galley", &env.galley, "get", "vs", "-w"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = || {
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("a line from get -w")
    };
    assert!(next().starts_with("NAME"));
    let initial: Vec<String> = (0..4).map(|_| next()).collect();
    assert!(
        initial.iter().any(|l| l.starts_with("reviews ")),
        "{initial:?}"
    );
    // A change shows up as a new row.
    let o = env.keelctl(&[
        "apply",
        "-f",
        net.join("bookinfo-gateway.yaml").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let row = next();
    assert!(
        row.starts_with("bookinfo ") && row.contains("bookinfo-gateway"),
        "{row}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
