//! Pods as network namespaces on a bridge, for real (needs root, as the local mesh does):
//! pods reach each other and the host reaches them; teardown from the record leaves nothing,
//! even after a "crash" and for half-made pods.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_local::dns::{ServiceName, Vips, hosts_file, netns_etc, write_pod_files};
use keel_local::net::{NetConfig, NetError, Network, PodNet};

fn require_root() {
    let out = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "these tests create network namespaces and need root (as `keelctl up` does)"
    );
}

/// A config no other test (or run) uses: names and subnet from a tag and the pid.
fn config(tag: u8) -> NetConfig {
    let id = std::process::id() % 10_000;
    NetConfig {
        bridge: format!("kt{tag}b{id}"),
        gateway: Ipv4Addr::new(10, 250, tag, 1),
        prefix: 24,
        veth_prefix: format!("k{tag}{id}v"),
        netns_prefix: format!("kt{tag}-{id}-"),
    }
}

/// Tears down from the record when a test ends, however it ends (a failed assertion must not
/// leave namespaces behind).
struct Cleanup(NetConfig, std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(n) = Network::open(self.0.clone(), &self.1) {
            let _ = n.teardown();
        }
    }
}

fn netns_list() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

fn links() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned()
}

fn assert_gone(c: &NetConfig) {
    assert!(!netns_list().contains(&c.netns_prefix), "{}", netns_list());
    let l = links();
    assert!(!l.contains(&c.bridge), "{l}");
    assert!(!l.contains(&c.veth_prefix), "{l}");
}

/// Debian's python3 (a version manager's shim may not behave inside `ip netns exec`).
fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A minimal HTTP server inside a pod's namespace, on its address. (Not `http.server`: it
/// looks its address up in DNS when binding, which has nowhere to go inside a pod.)
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve_in(p: &PodNet, port: u16) -> Server {
    let script = format!(
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('{ip}', {port}))\ns.listen(16)\nwhile True:\n    c, _ = s.accept()\n    c.recv(4096)\n    c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok')\n    c.close()\n",
        ip = p.ip
    );
    Server(
        Command::new("ip")
            .args(["netns", "exec", &p.netns, python(), "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// What `getent hosts NAME` answers inside the namespace.
fn getent(netns: &str, name: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "getent", "hosts", name])
        .output()
        .unwrap();
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
}

fn fetch_from(netns: Option<&str>, url: &str) -> bool {
    let script =
        format!("import urllib.request; urllib.request.urlopen('{url}', timeout=1).read()");
    let mut c = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, python(), "-c", &script]);
            c
        }
        None => {
            let mut c = Command::new(python());
            c.args(["-c", &script]);
            c
        }
    };
    c.stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn eventually(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pods_reach_each_other_and_teardown_leaves_nothing() {
    require_root();
    let c = config(1);
    let dir = std::env::temp_dir().join(format!("keel-local-net-1-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("network.json");
    let _cleanup = Cleanup(c.clone(), state.clone());
    let mut net = Network::open(c.clone(), &state).unwrap();
    let a = net.add_pod("productpage-v1-a").unwrap();
    let b = net.add_pod("details-v1-b").unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(10, 250, 1, 2));
    assert_eq!(b.ip, Ipv4Addr::new(10, 250, 1, 3));
    assert!(matches!(
        net.add_pod("details-v1-b"),
        Err(NetError::Exists(_))
    ));
    assert!(matches!(net.add_pod("bad name"), Err(NetError::BadName(_))));

    let server = serve_in(&b, 9080);
    let url = format!("http://{}:9080/", b.ip);
    eventually("pod to pod", || fetch_from(Some(&a.netns), &url));
    assert!(fetch_from(None, &url), "host to pod");
    drop(server);

    // Service names resolve inside the pod to their virtual IPs; unknown names fail at once.
    let mut vips = Vips::default();
    let details = vips
        .assign(&ServiceName {
            namespace: "default".into(),
            name: "details".into(),
        })
        .unwrap();
    write_pod_files(&a.netns, &hosts_file(&a.pod, a.ip, "default", &vips)).unwrap();
    for name in [
        "details",
        "details.default",
        "details.default.svc.cluster.local",
    ] {
        assert_eq!(getent(&a.netns, name), Some(details.to_string()), "{name}");
    }
    let t = Instant::now();
    assert_eq!(getent(&a.netns, "nosuch"), None);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let etc = netns_etc(&a.netns);
    assert!(etc.join("hosts").exists());

    // A removed pod's address is given out again.
    net.remove_pod("productpage-v1-a").unwrap();
    assert!(!netns_list().contains(&a.netns));
    assert!(!etc.exists(), "the pod's /etc files go with it");
    let again = net.add_pod("reviews-v1-c").unwrap();
    assert_eq!(again.ip, a.ip);

    net.teardown().unwrap();
    assert_gone(&c);
    assert!(!state.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn teardown_works_from_the_record_after_a_crash() {
    require_root();
    let c = config(2);
    let dir = std::env::temp_dir().join(format!("keel-local-net-2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("network.json");
    let _cleanup = Cleanup(c.clone(), state.clone());
    {
        let mut net = Network::open(c.clone(), &state).unwrap();
        net.add_pod("ratings-v1-a").unwrap();
        net.add_pod("reviews-v2-b").unwrap();
        // Dropped without teardown: the process "crashed".
    }
    assert!(netns_list().contains(&c.netns_prefix));
    // A pod recorded but never made (a crash between the record and the commands).
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    record["pods"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "pod": "half-made",
            "netns": format!("{}half-made", c.netns_prefix),
            "host_veth": format!("{}99", c.veth_prefix),
            "ip": "10.250.2.99",
        }));
    std::fs::write(&state, record.to_string()).unwrap();

    // `keelctl down` in a new process: only the record to go on.
    let net = Network::open(c.clone(), &state).unwrap();
    assert_eq!(net.state().pods.len(), 3);
    net.teardown().unwrap();
    assert_gone(&c);
    // And again: nothing left to do is not an error.
    Network::open(c.clone(), &state)
        .unwrap()
        .teardown()
        .unwrap();

    // A damaged record is refused with the file named, not guessed at.
    std::fs::write(&state, "{ not json").unwrap();
    let e = Network::open(c, &state).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("state file {}", state.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
