//! `keelctl expr eval`: values with types, errors with the column, attributes from a file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Command;

fn keelctl(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_keelctl"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn evaluates_with_attributes_from_a_file() {
    let dir = std::env::temp_dir().join(format!("keelctl-expr-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let attrs = dir.join("attrs.json");
    std::fs::write(
        &attrs,
        r#"{"request.path": "/ratings/0", "response.code": 200, "source.labels": {"app": "reviews"}, "response.duration": "2.5ms", "source.ip": "10.0.0.5"}"#,
    )
    .unwrap();
    let a = attrs.to_str().unwrap();
    for (expr, want) in [
        (
            "source.labels[\"app\"] | source.service | \"unknown\"",
            "reviews (STRING)\n",
        ),
        ("response.duration | \"0ms\"", "2.5ms (DURATION)\n"),
        (
            "match(request.path, \"/ratings*\") && response.code == 200",
            "true (BOOL)\n",
        ),
        ("source.ip == ip(\"10.0.0.5\")", "true (BOOL)\n"),
    ] {
        let (code, out, err) = keelctl(&["expr", "eval", expr, "--attributes", a]);
        assert_eq!((code, out.as_str()), (0, want), "{expr}: {err}");
    }
    let (code, _, err) = keelctl(&["expr", "eval", "response.code == \"200\""]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "error: response.code == \"200\"\n                     ^ '==' compares values of one type, not INT64 and STRING\n"
    );
    let (code, _, err) = keelctl(&["expr", "eval", "source.principal == \"x\""]);
    assert_eq!(code, 1);
    assert!(err.contains("lookup failed: 'source.principal'"), "{err}");
    std::fs::write(&attrs, r#"{"no.such": 1}"#).unwrap();
    let (code, _, err) = keelctl(&["expr", "eval", "true", "--attributes", a]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown attribute no.such"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
