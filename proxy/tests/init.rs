//! `keel-proxy init` in a network namespace of its own: the capture goes in, applying it
//! again changes nothing, `--remove` takes it out. Needs root and iptables (`cargo xtask
//! test` runs as root and installs iptables).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::process::Command;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn in_ns(ns: &str, program: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The nat table's rules (`-A` lines), without counters or comments.
fn nat_rules(ns: &str) -> Vec<String> {
    let (ok, out, err) = in_ns(ns, "iptables-save", &["-t", "nat"]);
    assert!(ok, "iptables-save: {err}");
    out.lines()
        .filter(|l| l.starts_with("-A ") || l.starts_with(':'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
        .collect()
}

#[test]
fn init_captures_idempotently_and_removes() {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    });
    assert!(
        root,
        "needs root (network namespaces, iptables): run `cargo xtask test` as root"
    );
    let ns = Netns(format!("keel-init-{}", std::process::id()));
    let added = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(added.success());
    let proxy = env!("CARGO_BIN_EXE_keel-proxy");

    let (ok, _, err) = in_ns(&ns.0, proxy, &["init", "--inbound-ports", "9080,9443"]);
    assert!(ok, "keel-proxy init: {err}");
    let first = nat_rules(&ns.0);
    let joined = first.join("\n");
    for want in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 9080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 9443 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(joined.contains(want), "no {want:?} in\n{joined}");
    }

    // Again: the same table, nothing doubled.
    let (ok, _, err) = in_ns(&ns.0, proxy, &["init", "--inbound-ports", "9080,9443"]);
    assert!(ok, "second init: {err}");
    assert_eq!(nat_rules(&ns.0), first);

    // Removed: no capture chain or jump left.
    let (ok, _, err) = in_ns(&ns.0, proxy, &["init", "--remove"]);
    assert!(ok, "init --remove: {err}");
    let left = nat_rules(&ns.0).join("\n");
    assert!(!left.contains("ISTIO"), "left behind:\n{left}");

    // A dry run prints and changes nothing.
    let (ok, out, _) = in_ns(
        &ns.0,
        proxy,
        &["init", "--inbound-ports", "80", "--dry-run"],
    );
    assert!(ok && out.contains("--dport 80 -j ISTIO_IN_REDIRECT"));
    assert!(!nat_rules(&ns.0).join("\n").contains("ISTIO"));
}
