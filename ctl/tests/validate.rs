//! `keelctl validate` end to end: the real binary, files, directories and stdin, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn keelctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keelctl"))
}

#[test]
fn a_valid_directory_exits_zero_and_lists_every_resource() {
    let dir = shared().join("istio-samples/1.0/samples/bookinfo/networking");
    let out = keelctl()
        .args(["validate", "-f"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("VirtualService default/reviews"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Gateway default/bookinfo-gateway"),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.ends_with("invalid; 0 errors, 0 warnings"),
        "{summary}"
    );
    assert!(summary.contains(" 0 invalid"), "{summary}");
}

#[test]
fn an_invalid_document_on_stdin_exits_one_with_its_location() {
    let mut child = keelctl()
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            b"apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  http:
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 60
    - destination:
        host: reviews
        subset: v2
      weight: 30
",
        )
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "<stdin>:8:5: error: document 1 (VirtualService default/reviews): spec.http[0].route: route weights add up to 90, they must add up to 100"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "1 documents: 0 valid, 1 invalid; 1 error, 0 warnings"
    );
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = keelctl()
        .args(["validate", "-f", "/nonexistent/vs.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/vs.yaml: no such file or directory"),
        "{stderr}"
    );
}
