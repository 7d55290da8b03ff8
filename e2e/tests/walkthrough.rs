//! The user's walkthrough, end to end, on the local mesh: `keelctl up`, Bookinfo from Istio's
//! own 1.0 files and then from Keel's samples, every check of bookinfo.md part C (smoke,
//! request routing, fault delay, the fix by editing the VirtualService, abort, traffic
//! shifting), the walkthrough's telemetry (new_telemetry.yaml, Prometheus, mixer's log), its
//! EFK step (logging-stack.yaml and fluentd-istio.yaml, taken from the walkthrough itself),
//! Istio 1.0's policy tasks (denial, rate limit), the dashboard and the service graph,
//! restarts, rolls, and `keelctl down` leaving nothing behind.
//!
//! Needs root (network namespaces, iptables), Envoy and the built binaries: `cargo xtask
//! test` provides all three. One mesh per data plane; the scenarios run in sequence inside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use keel_e2e::{Client, Mesh, Variant, eventually, prom_query, repo, shared, variant};
use serde_json::Value;

const JASON: &str = "jason";
const PROPAGATION: Duration = Duration::from_secs(30);

fn require_machine() {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    });
    assert!(
        root,
        "the walkthrough needs root (network namespaces, iptables): run it with `cargo xtask test` as root"
    );
}

/// Anonymous product pages until `ok` holds for `n` in a row.
fn settle(gw: &str, what: &str, n: usize, ok: impl Fn(&str) -> bool) -> Result<()> {
    let mut streak = 0;
    eventually(what, PROPAGATION, || {
        let r = Client::new(gw).get("/productpage", &[])?;
        if r.status == 200 && ok(&r.body) {
            streak += 1;
        } else {
            streak = 0;
        }
        Ok((streak >= n).then_some(()))
    })
}

fn logged_in(gw: &str, user: &str) -> Result<Client> {
    let mut c = Client::new(gw);
    let r = c.login(user)?;
    ensure!(
        r.status == 302 || r.status == 200,
        "login as {user}: {}",
        r.status
    );
    ensure!(
        !c.cookies.is_empty(),
        "login as {user} set no session cookie"
    );
    Ok(c)
}

/// The first pod whose name starts with `prefix` (default namespace).
fn pod_named(mesh: &Mesh, prefix: &str) -> Result<String> {
    let status = mesh.status()?;
    status["pods"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["namespace"] == "default"
                    && p["name"].as_str().is_some_and(|n| n.starts_with(prefix))
            })
        })
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no pod {prefix}* in the status"))
}

/// `curl` run inside a pod's network namespace (what `kubectl exec POD -- curl` does): its
/// traffic is the pod's, captured by the sidecar when there is one.
fn curl_in_pod(pod: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("keel-default.{pod}"),
            "curl",
            "-s",
            "-m",
            "10",
        ])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn count(page: &str, needle: &str) -> usize {
    page.matches(needle).count()
}

fn bookinfo_up(mesh: &Mesh, dir: &Path) -> Result<String> {
    mesh.apply(&dir.join("platform/kube/bookinfo.yaml"))?;
    mesh.apply(&dir.join("networking/bookinfo-gateway.yaml"))?;
    mesh.apply(&dir.join("networking/destination-rule-all.yaml"))?;
    // The walkthrough's way to the gateway port: the Service's http2 node port.
    let port = mesh.keelctl(&[
        "-n",
        "istio-system",
        "get",
        "service",
        "istio-ingressgateway",
        "-o",
        r#"jsonpath={.spec.ports[?(@.name=="http2")].nodePort}"#,
    ])?;
    ensure!(
        port.ok && port.stdout == "31380",
        "the http2 node port: {port:?}"
    );
    let gw = mesh.gateway()?;
    ensure!(
        gw == format!("127.0.0.1:{}", port.stdout),
        "gateway_url {gw}"
    );
    eventually("every Bookinfo pod ready", Duration::from_secs(90), || {
        let s = mesh.status()?;
        let pods = s["pods"].as_array().cloned().unwrap_or_default();
        let bookinfo = pods.iter().filter(|p| p["namespace"] == "default").count();
        let ready = pods.iter().all(|p| p["ready"] == true);
        Ok((bookinfo == 6 && ready).then_some(()))
    })?;
    settle(&gw, "the product page through the gateway", 3, |p| {
        p.contains("<title>Simple Bookstore App</title>")
    })?;
    Ok(gw)
}

/// C.0: the page, and all three reviews versions without a VirtualService.
fn smoke(gw: &str) -> Result<()> {
    let mut seen = Vec::new();
    for _ in 0..30 {
        let r = Client::new(gw).get("/productpage", &[])?;
        ensure!(r.status == 200, "productpage answered {}", r.status);
        ensure!(r.body.contains("<title>Simple Bookstore App</title>"));
        ensure!(r.body.contains("The Comedy of Errors"));
        let v = variant(&r.body);
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    for v in [Variant::V1, Variant::V2, Variant::V3] {
        ensure!(
            seen.contains(&v),
            "30 pages without a route never showed {v:?}: {seen:?}"
        );
    }
    Ok(())
}

/// C.0 inside the mesh: names resolve in pods (short, name.ns, FQDN) and each service
/// answers through the sidecars.
fn smoke_in_mesh(mesh: &Mesh) -> Result<()> {
    let pp = pod_named(mesh, "productpage-v1-")?;
    for host in [
        "details",
        "details.default",
        "details.default.svc.cluster.local",
    ] {
        let body = curl_in_pod(&pp, &[&format!("http://{host}:9080/details/0")])?;
        ensure!(
            body.contains("\"author\":\"William Shakespeare\""),
            "details via {host}: {body}"
        );
    }
    let ratings = curl_in_pod(&pp, &["http://ratings:9080/ratings/0"])?;
    ensure!(
        ratings == "{\"id\":0,\"ratings\":{\"Reviewer1\":5,\"Reviewer2\":4}}",
        "ratings: {ratings}"
    );
    for svc in ["details", "reviews", "ratings", "productpage"] {
        let health = curl_in_pod(&pp, &[&format!("http://{svc}:9080/health")])?;
        ensure!(!health.is_empty(), "{svc}/health answered nothing");
    }
    // The mesh config's accessLogFile (/dev/stdout): the sidecar's own log has the call in
    // Envoy's default format (Envoy flushes its file logs every 10 s).
    eventually(
        "the details call in productpage's istio-proxy log",
        Duration::from_secs(30),
        || {
            let log = mesh.keelctl(&["logs", &pp, "-c", "istio-proxy"])?.stdout;
            Ok(log
                .lines()
                .any(|l| {
                    l.contains("\"GET /details/0 HTTP/1.1\" 200 - 0 ")
                        && l.contains("\"details:9080\"")
                })
                .then_some(()))
        },
    )?;
    Ok(())
}

/// C.1: all-v1, then jason to v2.
fn request_routing(mesh: &Mesh, gw: &str, net: &Path) -> Result<()> {
    mesh.apply(&net.join("virtual-service-all-v1.yaml"))?;
    settle(gw, "all-v1 in force", 10, |p| variant(p) == Variant::V1)?;
    let mut normal = logged_in(gw, "normal-user")?;
    for _ in 0..20 {
        let anon = Client::new(gw).get("/productpage", &[])?;
        ensure!(!anon.body.contains("glyphicon-star") && !anon.body.contains("<font color"));
        let user = normal.get("/productpage", &[])?;
        ensure!(
            variant(&user.body) == Variant::V1,
            "normal-user not on v1 under all-v1"
        );
    }

    mesh.apply(&net.join("virtual-service-reviews-test-v2.yaml"))?;
    let mut jason = logged_in(gw, JASON)?;
    eventually("jason routed to v2", PROPAGATION, || {
        Ok((variant(&jason.get("/productpage", &[])?.body) == Variant::V2).then_some(()))
    })?;
    for _ in 0..10 {
        let page = jason.get("/productpage", &[])?.body;
        ensure!(variant(&page) == Variant::V2, "a jason page was not v2");
        ensure!(count(&page, "<font color=\"black\">") == 2);
        ensure!(count(&page, "glyphicon glyphicon-star\"") == 9);
        ensure!(count(&page, "glyphicon-star-empty") == 1);
    }
    let mut capital = logged_in(gw, "Jason")?;
    for _ in 0..5 {
        ensure!(variant(&Client::new(gw).get("/productpage", &[])?.body) == Variant::V1);
        ensure!(variant(&normal.get("/productpage", &[])?.body) == Variant::V1);
        ensure!(
            variant(&capital.get("/productpage", &[])?.body) == Variant::V1,
            "the match is case-sensitive: Jason stays on v1"
        );
        let header_only = Client::new(gw).get("/productpage", &[("end-user", JASON)])?;
        ensure!(
            variant(&header_only.body) == Variant::V1,
            "end-user sent straight to the gateway is not forwarded by productpage"
        );
    }
    let mut out = logged_in(gw, JASON)?;
    out.get("/logout", &[])?;
    ensure!(
        variant(&out.get("/productpage", &[])?.body) == Variant::V1,
        "after logout: v1"
    );
    // Inside the mesh, the header alone routes.
    let pp = pod_named(mesh, "productpage-v1-")?;
    let jason_json = curl_in_pod(
        &pp,
        &["-H", "end-user: jason", "http://reviews:9080/reviews/0"],
    )?;
    ensure!(
        jason_json.contains("\"color\": \"black\""),
        "reviews for end-user jason: {jason_json}"
    );
    let plain = curl_in_pod(&pp, &["http://reviews:9080/reviews/0"])?;
    ensure!(
        plain.contains("Reviewer1") && !plain.contains("rating"),
        "reviews without the header: {plain}"
    );
    Ok(())
}

/// C.2: a 7 s delay for jason on ratings; productpage gives up on reviews after ≈6 s.
fn fault_delay(mesh: &Mesh, gw: &str, net: &Path) -> Result<()> {
    mesh.apply(&net.join("virtual-service-ratings-test-delay.yaml"))?;
    let mut jason = logged_in(gw, JASON)?;
    eventually("the delay in force", Duration::from_secs(60), || {
        Ok(
            (variant(&jason.get("/productpage", &[])?.body) == Variant::ReviewsUnavailable)
                .then_some(()),
        )
    })?;
    let r = jason.get("/productpage", &[])?;
    ensure!(r.status == 200, "the delayed page answered {}", r.status);
    let secs = r.elapsed.as_secs_f64();
    ensure!(
        (5.0..=8.0).contains(&secs),
        "jason's delayed page took {secs:.2} s, not ≈6 s"
    );
    ensure!(r.body.contains("Error fetching product reviews!"));
    ensure!(
        r.body
            .contains("Sorry, product reviews are currently unavailable for this book.")
    );
    ensure!(r.body.contains("Book Details"));
    let anon = Client::new(gw).get("/productpage", &[])?;
    ensure!(
        anon.elapsed < Duration::from_secs(3),
        "anonymous took {:?}",
        anon.elapsed
    );
    ensure!(variant(&anon.body) == Variant::V1 && !anon.body.contains("Error fetching"));
    Ok(())
}

/// `keelctl edit KIND NAME` with a sed script as the editor, as the seed does by hand.
fn edit(mesh: &Mesh, kind: &str, name: &str, sed: &str) -> Result<()> {
    let editor = format!("sed -i -e '{sed}'");
    let out = mesh.keelctl_env(&["edit", kind, name], &[("KEEL_EDITOR", &editor)])?;
    ensure!(
        out.ok,
        "keelctl edit {kind} {name}: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// C.3, the seed's variant: jason moved to v3 by editing the VirtualService; v3's 2.5 s
/// ratings timeout beats a 7 s and a 2.8 s delay (reviews shown, ratings unavailable, ≈2.5 s);
/// a 2 s delay shows red stars.
fn fix_with_v3(mesh: &Mesh, gw: &str) -> Result<()> {
    edit(
        mesh,
        "virtualservice",
        "reviews",
        "s/subset: v2/subset: v3/",
    )?;
    let mut jason = logged_in(gw, JASON)?;
    let ratings_unavailable = |p: &str| {
        count(p, "Ratings service is currently unavailable") == 2
            && !p.contains("Error fetching product reviews")
            && p.contains("Reviewer1")
    };
    eventually(
        "jason on v3 with ratings timing out",
        Duration::from_secs(60),
        || Ok(ratings_unavailable(&jason.get("/productpage", &[])?.body).then_some(())),
    )?;
    edit(
        mesh,
        "virtualservice",
        "ratings",
        "s/fixedDelay: 7s/fixedDelay: 2.8s/",
    )?;
    let fixed = mesh.keelctl(&["get", "virtualservice", "ratings", "-o", "yaml"])?;
    ensure!(
        fixed.stdout.contains("2.8s"),
        "the edit did not take: {}",
        fixed.stdout
    );
    std::thread::sleep(Duration::from_secs(2));
    let r = jason.get("/productpage", &[])?;
    let secs = r.elapsed.as_secs_f64();
    ensure!(
        ratings_unavailable(&r.body),
        "with 2.8 s: reviews without ratings"
    );
    ensure!(
        (2.3..=3.5).contains(&secs),
        "with 2.8 s the page took {secs:.2} s, not ≈2.5 s"
    );
    edit(
        mesh,
        "virtualservice",
        "ratings",
        "s/fixedDelay: 2.8s/fixedDelay: 2s/",
    )?;
    let page = eventually("red stars with a 2 s delay", PROPAGATION, || {
        let r = jason.get("/productpage", &[])?;
        Ok((variant(&r.body) == Variant::V3).then_some(r))
    })?;
    let secs = page.elapsed.as_secs_f64();
    ensure!(
        (2.0..3.0).contains(&secs),
        "the 2 s delay page took {secs:.2} s"
    );
    ensure!(count(&page.body, "<font color=\"red\">") == 2);
    let anon = Client::new(gw).get("/productpage", &[])?;
    ensure!(variant(&anon.body) == Variant::V1 && anon.elapsed < Duration::from_secs(1));
    Ok(())
}

/// C.4: ratings aborted for jason: at once, reviews without ratings.
fn fault_abort(mesh: &Mesh, gw: &str, net: &Path) -> Result<()> {
    mesh.apply(&net.join("virtual-service-reviews-test-v2.yaml"))?;
    mesh.apply(&net.join("virtual-service-ratings-test-abort.yaml"))?;
    let mut jason = logged_in(gw, JASON)?;
    let page = eventually("the abort in force", PROPAGATION, || {
        let r = jason.get("/productpage", &[])?;
        let aborted = count(
            &r.body,
            "<p><i>Ratings service is currently unavailable</i></p>",
        ) == 2
            && r.elapsed < Duration::from_secs(1);
        Ok(aborted.then_some(r))
    })?;
    ensure!(page.status == 200);
    ensure!(!page.body.contains("glyphicon-star") && !page.body.contains("<font color"));
    ensure!(page.body.contains("Reviewer1") && page.body.contains("Reviewer2"));
    let anon = Client::new(gw).get("/productpage", &[])?;
    ensure!(variant(&anon.body) == Variant::V1);
    ensure!(
        !anon
            .body
            .contains("Ratings service is currently unavailable")
    );
    let api = jason.get("/api/v1/products/0/ratings", &[])?;
    ensure!(api.status == 500, "ratings API as jason: {}", api.status);
    ensure!(
        api.body
            .contains("Sorry, product ratings are currently unavailable for this book.")
    );
    let pp = pod_named(mesh, "productpage-v1-")?;
    let code = |headers: &[&str]| -> Result<String> {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(headers);
        args.push("http://ratings:9080/ratings/0");
        curl_in_pod(&pp, &args)
    };
    ensure!(
        code(&["-H", "end-user: jason"])? == "500",
        "the abort inside the mesh"
    );
    ensure!(code(&[])? == "200", "ratings without the header");
    Ok(())
}

/// C.5: all-v1, then 50/50 v1/v3, then all v3.
fn traffic_shifting(mesh: &Mesh, gw: &str, net: &Path) -> Result<()> {
    mesh.apply(&net.join("virtual-service-all-v1.yaml"))?;
    settle(gw, "all-v1 again", 10, |p| variant(p) == Variant::V1)?;
    for _ in 0..20 {
        ensure!(
            !Client::new(gw)
                .get("/productpage", &[])?
                .body
                .contains("glyphicon-star")
        );
    }
    mesh.apply(&net.join("virtual-service-reviews-50-v3.yaml"))?;
    eventually("the 50/50 split in force", PROPAGATION, || {
        Ok((variant(&Client::new(gw).get("/productpage", &[])?.body) == Variant::V3).then_some(()))
    })?;
    // Let every proxy take the new routes before counting.
    std::thread::sleep(Duration::from_secs(1));
    let (mut v1, mut v3) = (0, 0);
    for _ in 0..100 {
        match variant(&Client::new(gw).get("/productpage", &[])?.body) {
            Variant::V1 => v1 += 1,
            Variant::V3 => v3 += 1,
            other => bail!("a {other:?} page under the 50/50 split"),
        }
    }
    ensure!(
        (35..=65).contains(&v3),
        "50/50 gave {v1} v1 and {v3} v3 of 100"
    );
    mesh.apply(&net.join("virtual-service-reviews-v3.yaml"))?;
    settle(gw, "all traffic on v3", 10, |p| variant(p) == Variant::V3)?;
    for _ in 0..20 {
        let p = Client::new(gw).get("/productpage", &[])?.body;
        ensure!(count(&p, "<font color=\"red\">") == 2, "a page not on v3");
    }
    Ok(())
}

/// The walkthrough's routing tasks on one copy of the samples.
fn walkthrough(mesh: &Mesh, dir: &Path) -> Result<()> {
    let net = dir.join("networking");
    let gw = bookinfo_up(mesh, dir)?;
    smoke(&gw)?;
    smoke_in_mesh(mesh)?;
    request_routing(mesh, &gw, &net)?;
    fault_delay(mesh, &gw, &net)?;
    fix_with_v3(mesh, &gw)?;
    fault_abort(mesh, &gw, &net)?;
    traffic_shifting(mesh, &gw, &net)?;
    proxies_in_sync(mesh)?;
    Ok(())
}

/// `keelctl proxy-status` all SYNCED; `proxy-config routes` shows the VirtualService applied.
fn proxies_in_sync(mesh: &Mesh) -> Result<()> {
    eventually("every proxy SYNCED", PROPAGATION, || {
        let out = mesh.keelctl(&["proxy-status"])?;
        let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
        Ok(
            (rows.len() == 7 && rows.iter().all(|r| r.matches("SYNCED").count() == 4))
                .then_some(()),
        )
    })?;
    let status = mesh.status()?;
    let productpage = status["pods"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("productpage-v1-"))
            })
        })
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no productpage pod in the status"))?;
    let routes = mesh.keelctl(&["proxy-config", "routes", &productpage, "-o", "json"])?;
    ensure!(routes.ok, "proxy-config routes: {}", routes.stderr);
    ensure!(
        routes
            .stdout
            .contains("outbound|9080|v3|reviews.default.svc.cluster.local"),
        "the reviews-v3 VirtualService is not in productpage's routes"
    );
    Ok(())
}

/// Removes one copy of the samples (its routes and its workloads).
fn bookinfo_down(mesh: &Mesh, dir: &Path) -> Result<()> {
    let net = dir.join("networking");
    for f in [
        "virtual-service-all-v1.yaml",
        "destination-rule-all.yaml",
        "bookinfo-gateway.yaml",
    ] {
        mesh.delete(&net.join(f))?;
    }
    mesh.delete(&dir.join("platform/kube/bookinfo.yaml"))?;
    eventually("Bookinfo's pods gone", Duration::from_secs(60), || {
        let s = mesh.status()?;
        let left = s["pods"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["namespace"] == "default").count())
            .unwrap_or(0);
        Ok((left == 0).then_some(()))
    })
}

fn mixer_metrics() -> Result<String> {
    Ok(Client::new("127.0.0.1:15014").get("/metrics", &[])?.body)
}

fn reports_received() -> Result<f64> {
    Ok(mixer_metrics()?
        .lines()
        .filter(|l| l.starts_with("mixer_reports_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// Waits until mixer's report count holds still for 3 s (proxies flush every second).
fn quiet_reports() -> Result<f64> {
    let mut last = (reports_received()?, std::time::Instant::now());
    eventually("reports to settle", Duration::from_secs(60), || {
        let now = reports_received()?;
        if now != last.0 {
            last = (now, std::time::Instant::now());
        }
        Ok((last.1.elapsed() >= Duration::from_secs(3)).then_some(now))
    })
}

fn double_in_exporter() -> Result<f64> {
    Ok(Client::new("127.0.0.1:42422")
        .get("/metrics", &[])?
        .body
        .lines()
        .filter(|l| l.starts_with("istio_double_request_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// `istio_requests_total` from mixer's adapter, by (reporter, source_app, destination_app).
type ByHop = std::collections::BTreeMap<(String, String, String), f64>;

/// `metric` from mixer's adapter, summed by (reporter, source_app, destination_app).
fn by_hop(metric: &str) -> Result<ByHop> {
    let text = Client::new("127.0.0.1:42422").get("/metrics", &[])?.body;
    let mut out = std::collections::BTreeMap::new();
    let prefix = format!("{metric}{{");
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        let label = |name: &str| {
            line.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_owned()
        };
        let v: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry((
            label("reporter"),
            label("source_app"),
            label("destination_app"),
        ))
        .or_insert(0.0) += v;
    }
    Ok(out)
}

/// C.6: new_telemetry.yaml, Prometheus, mixer's JSON log; istio_requests_total per hop.
fn telemetry(mesh: &Mesh, gw: &str) -> Result<()> {
    mesh.apply(&repo().join("samples/bookinfo/telemetry/new_telemetry.yaml"))?;
    eventually("mixer running the new rules", PROPAGATION, || {
        let c = Client::new("127.0.0.1:15014")
            .get("/debug/configz", &[])?
            .body;
        Ok(
            (c.contains("doublehandler.prometheus") && c.contains("newhandler.stdio"))
                .then_some(()),
        )
    })?;
    let prom = mesh.status()?["endpoints"]["prometheus"]
        .as_str()
        .map(|u| u.trim_start_matches("http://").to_owned())
        .ok_or_else(|| anyhow::anyhow!("prometheus is not running (apt-get install prometheus)"))?;
    let before = quiet_reports()?;
    // Reports of the last scenario may have arrived after the rules were installed; they
    // counted too. Mixer's own exporter says how many, without a scrape's delay.
    let double_before = double_in_exporter()?;
    let hops_before = by_hop("istio_requests_total")?;
    let durations_before = by_hop("istio_request_duration_seconds_count")?;
    let logs_before = mesh
        .keelctl(&["logs", "mixer"])?
        .stdout
        .matches("newlog.logentry.istio-system")
        .count();
    let n = 10;
    for _ in 0..n {
        ensure!(Client::new(gw).get("/productpage", &[])?.status == 200);
    }
    let after = quiet_reports()?;
    let reports = after - before;
    // Under reviews-v3 each page is four hops (gateway→productpage, productpage→details,
    // productpage→reviews, reviews→ratings), each reported by both ends.
    ensure!(
        reports == f64::from(8 * n),
        "{reports} reports for {n} pages, expected {}",
        8 * n
    );
    let hops_after = by_hop("istio_requests_total")?;
    let durations_after = by_hop("istio_request_duration_seconds_count")?;
    for (src, dst) in [
        ("istio-ingressgateway", "productpage"),
        ("productpage", "details"),
        ("productpage", "reviews"),
        ("reviews", "ratings"),
    ] {
        for reporter in ["source", "destination"] {
            let key = (reporter.to_owned(), src.to_owned(), dst.to_owned());
            let delta = hops_after.get(&key).copied().unwrap_or(0.0)
                - hops_before.get(&key).copied().unwrap_or(0.0);
            ensure!(
                delta == f64::from(n),
                "istio_requests_total {key:?} grew by {delta}, not {n}"
            );
            let observed = durations_after.get(&key).copied().unwrap_or(0.0)
                - durations_before.get(&key).copied().unwrap_or(0.0);
            ensure!(
                observed == f64::from(n),
                "istio_request_duration_seconds {key:?} observed {observed} requests, not {n}"
            );
        }
    }
    // Prometheus scrapes every 5 s; everything since the rule was installed counts twice.
    let double = eventually(
        "istio_double_request_count in Prometheus",
        Duration::from_secs(60),
        || {
            let series = prom_query(&prom, "istio_double_request_count")?;
            let total: f64 = series.iter().map(|(_, v)| v).sum();
            Ok((total == double_before + 2.0 * reports).then_some(series))
        },
    )?;
    for (labels, _) in &double {
        ensure!(labels["message"] == "twice the fun!", "labels: {labels}");
        ensure!(labels.get("source").is_some() && labels.get("destination").is_some());
    }
    let log = mesh.keelctl(&["logs", "mixer"])?.stdout;
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("newlog.logentry.istio-system"))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        lines.len() - logs_before == reports as usize,
        "{} log lines for {reports} reports",
        lines.len() - logs_before
    );
    for l in &lines {
        ensure!(l["level"] == "warn", "{l}");
        for field in [
            "source",
            "user",
            "destination",
            "responseCode",
            "responseSize",
            "latency",
        ] {
            ensure!(l.get(field).is_some(), "no {field} in {l}");
        }
    }
    let size_for = |dst: &str| {
        lines
            .iter()
            .find(|l| {
                l["destination"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(dst))
            })
            .map(|l| l["responseSize"].clone())
    };
    ensure!(
        size_for("details") == Some(Value::from(178)),
        "details' size: {:?}",
        size_for("details")
    );
    ensure!(
        size_for("ratings") == Some(Value::from(48)),
        "ratings' size: {:?}",
        size_for("ratings")
    );
    Ok(())
}

/// The walkthrough's dashboard and service graph steps: after traffic, servicegraph on 8088
/// draws every Bookinfo hop with a rate, in all its forms, and the mesh dashboard on 3000
/// shows volume, success rate and latency per service.
fn dashboards(mesh: &Mesh) -> Result<()> {
    let status = mesh.status()?;
    let endpoint = |name: &str| -> Result<String> {
        status["endpoints"][name]
            .as_str()
            .map(|u| u.trim_start_matches("http://").to_owned())
            .ok_or_else(|| anyhow::anyhow!("no {name} endpoint in the status"))
    };
    let graph_url = endpoint("servicegraph")?;
    let (graph_addr, force_path) = graph_url.split_once('/').unwrap_or((&graph_url, ""));
    let graph = eventually(
        "every hop in the service graph",
        Duration::from_secs(60),
        || {
            let r = Client::new(graph_addr).get("/graph?time_horizon=5m&filter_empty=true", &[])?;
            let g: Value = serde_json::from_str(&r.body)?;
            let rate = |src: &str, dst: &str| -> f64 {
                g["edges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["source"] == src && e["target"] == dst)
                    .filter_map(|e| e["labels"]["reqs/sec"].as_str()?.parse::<f64>().ok())
                    .sum()
            };
            let hops = [
                (
                    "istio-ingressgateway (istio-ingressgateway)",
                    "productpage (productpage-v1)",
                ),
                ("productpage (productpage-v1)", "details (details-v1)"),
                ("productpage (productpage-v1)", "reviews (reviews-v3)"),
                ("reviews (reviews-v3)", "ratings (ratings-v1)"),
            ];
            Ok(hops.iter().all(|(s, d)| rate(s, d) > 0.0).then_some(g))
        },
    )?;
    ensure!(
        graph["nodes"]["details (details-v1)"].is_object(),
        "{graph}"
    );
    let d3: Value = serde_json::from_str(&Client::new(graph_addr).get("/d3graph", &[])?.body)?;
    ensure!(
        d3["links"].as_array().is_some_and(|l| !l.is_empty()) && d3["nodes"][0]["name"].is_string(),
        "{d3}"
    );
    let dot = Client::new(graph_addr).get("/dotgraph", &[])?.body;
    ensure!(
        dot.contains("\"productpage_(productpage-v1)\" -> \"details_(details-v1)\""),
        "{dot}"
    );
    let viz = Client::new(graph_addr).get("/dotviz", &[])?.body;
    ensure!(
        viz.contains("<svg") && viz.contains("ratings (ratings-v1)"),
        "{viz}"
    );
    let force = Client::new(graph_addr).get(&format!("/{force_path}"), &[])?;
    ensure!(force.status == 200 && force.body.contains("/d3graph"));
    let bad = Client::new(graph_addr).get("/graph?time_horizon=soon", &[])?;
    ensure!(
        bad.status == 400 && bad.body.contains("time_horizon"),
        "{}",
        bad.body
    );

    let dash_url = endpoint("dashboard")?;
    let (dash_addr, dash_path) = dash_url.split_once('/').unwrap_or((&dash_url, ""));
    let page = Client::new(dash_addr).get(&format!("/{dash_path}"), &[])?;
    ensure!(page.status == 200 && page.body.contains("Global Request Volume"));
    let m: Value = serde_json::from_str(&Client::new(dash_addr).get("/api/mesh", &[])?.body)?;
    ensure!(m["errors"].as_array().is_some_and(Vec::is_empty), "{m}");
    ensure!(m["volume"].as_f64().is_some_and(|v| v > 0.0), "{m}");
    ensure!(
        m["success"].as_f64().is_some_and(|v| v > 0.0 && v <= 1.0),
        "{m}"
    );
    let pp = &m["http_services"]["productpage.default.svc.cluster.local"];
    ensure!(pp["volume"].as_f64().is_some_and(|v| v > 0.0), "{m}");
    ensure!(
        pp["p50_seconds"].as_f64().is_some_and(|v| v > 0.0)
            && pp["p99_seconds"].as_f64() >= pp["p50_seconds"].as_f64(),
        "{m}"
    );

    // The walkthrough's lookups and port-forwards: components are host-network pods in
    // istio-system under Istio's labels.
    let pod_by_label = |label: &str| -> Result<String> {
        let out = mesh.keelctl(&[
            "-n",
            "istio-system",
            "get",
            "pod",
            "-l",
            label,
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])?;
        ensure!(
            out.ok && !out.stdout.is_empty(),
            "no pod -l {label}: {}",
            out.stderr
        );
        Ok(out.stdout.trim().to_owned())
    };
    // "Check that Prometheus and Grafana are running": their services exist.
    for svc in ["prometheus", "grafana"] {
        let out = mesh.keelctl(&["-n", "istio-system", "get", "svc", svc])?;
        ensure!(
            out.ok
                && out
                    .stdout
                    .lines()
                    .nth(1)
                    .is_some_and(|l| l.starts_with(svc)),
            "get svc {svc}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let grafana = pod_by_label("app=grafana")?;
    let (_same, line) =
        mesh.keelctl_background(&["-n", "istio-system", "port-forward", &grafana, "3000:3000"])?;
    ensure!(line.contains("listens there already"), "{line}");
    let servicegraph = pod_by_label("app=servicegraph")?;
    let (_fwd, line) = mesh.keelctl_background(&[
        "-n",
        "istio-system",
        "port-forward",
        &servicegraph,
        "18088:8088",
    ])?;
    ensure!(line == "Forwarding from 127.0.0.1:18088 -> 8088", "{line}");
    ensure!(Client::new("127.0.0.1:18088").get("/graph", &[])?.status == 200);
    let productpage = pod_named(mesh, "productpage-v1-")?;
    let (_pp, line) = mesh.keelctl_background(&["port-forward", &productpage, "19080:9080"])?;
    ensure!(line == "Forwarding from 127.0.0.1:19080 -> 9080", "{line}");
    ensure!(
        Client::new("127.0.0.1:19080")
            .get("/productpage", &[])?
            .status
            == 200
    );
    let telemetry = pod_by_label("istio-mixer-type=telemetry")?;
    let logs = mesh.keelctl(&["-n", "istio-system", "logs", &telemetry, "-c", "mixer"])?;
    ensure!(
        logs.ok && logs.stdout.contains("accesslog.logentry.istio-system"),
        "{}",
        logs.stderr
    );
    Ok(())
}

/// A YAML block of the user's walkthrough (../shared/seeds), by what precedes and follows it.
fn seed_block(after: &str, before: &str) -> Result<String> {
    for e in std::fs::read_dir(shared().join("seeds"))? {
        let text = std::fs::read_to_string(e?.path())?;
        if let Some(start) = text.find(after).map(|i| i + after.len()) {
            let len = text[start..]
                .find(before)
                .ok_or_else(|| anyhow::anyhow!("no {before:?} after {after:?} in the seed"))?;
            return Ok(text[start..start + len].to_owned());
        }
    }
    bail!("no seed has {after:?}")
}

/// Lines keel-fluentd printed for the walkthrough's `newlog` entries, in the current (or the
/// previous) run of the fluentd-es container.
fn fluentd_lines(mesh: &Mesh, previous: bool) -> Result<Vec<Value>> {
    let mut args = vec!["-n", "logging", "logs", "deploy/fluentd-es"];
    if previous {
        args.push("--previous");
    }
    let out = mesh.keelctl(&args)?;
    if previous && !out.ok {
        return Ok(Vec::new());
    }
    ensure!(out.ok, "keelctl logs deploy/fluentd-es: {}", out.stderr);
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_once(" newlog.logentry.istio-system: "))
        .filter_map(|(_, json)| serde_json::from_str(json).ok())
        .collect())
}

/// The walkthrough's EFK step: its logging-stack.yaml (fluentd-es runs as keel-fluentd;
/// Elasticsearch and Kibana have no local program and say so) and its fluentd-istio.yaml
/// verbatim: mixer reaches `fluentd-es.logging:24224` by the service's VIP, every report
/// arrives as one record, and none is lost while fluentd restarts.
fn logs_to_fluentd(mesh: &Mesh, gw: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("keel-e2e-efk-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let stack = dir.join("logging-stack.yaml");
    std::fs::write(
        &stack,
        seed_block("kubectl apply -f logging-stack.yaml\n", "\n现在有一个")?,
    )?;
    let to_fluentd = dir.join("fluentd-istio.yaml");
    std::fs::write(
        &to_fluentd,
        seed_block(
            "即可让istio实现日志自动生成和收集。\n",
            "kubectl apply -f fluentd-istio.yaml",
        )?,
    )?;
    mesh.apply(&stack)?;
    let pod = eventually("fluentd-es running", Duration::from_secs(30), || {
        let out = mesh.keelctl(&["get", "pods", "-n", "logging"])?.stdout;
        Ok(out
            .lines()
            .find(|l| l.starts_with("fluentd-es-") && l.contains("Running"))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned))
    })?;
    // The runtime takes the stack's pods one by one: fluentd running does not mean the
    // other two have been looked at yet.
    eventually(
        "Elasticsearch and Kibana reported as not runnable here",
        Duration::from_secs(30),
        || {
            let problems = mesh.status()?["problems"].to_string();
            Ok((problems.contains("elasticsearch-oss:6.1.1")
                && problems.contains("kibana-oss:6.1.1"))
            .then_some(()))
        },
    )?;
    mesh.apply(&to_fluentd)?;
    eventually("mixer running the fluentd rule", PROPAGATION, || {
        let c = Client::new("127.0.0.1:15014")
            .get("/debug/configz", &[])?
            .body;
        Ok(c.contains("handler.fluentd").then_some(()))
    })?;
    let count = |mesh: &Mesh| -> Result<usize> {
        Ok(fluentd_lines(mesh, true)?.len() + fluentd_lines(mesh, false)?.len())
    };
    let before = quiet_reports()?;
    let lines_before = count(mesh)?;
    for _ in 0..5 {
        ensure!(Client::new(gw).get("/productpage", &[])?.status == 200);
    }
    let reports = quiet_reports()? - before;
    ensure!(
        reports == 40.0,
        "{reports} reports for 5 pages under reviews-v3"
    );
    eventually("every report in fluentd", Duration::from_secs(30), || {
        Ok((count(mesh)? == lines_before + 40).then_some(()))
    })?;
    let lines = fluentd_lines(mesh, false)?;
    let details = lines
        .iter()
        .find(|l| l["destination"] == "details")
        .ok_or_else(|| anyhow::anyhow!("no record for details: {lines:?}"))?;
    ensure!(
        details["responseSize"] == 178
            && details["source"] == "productpage"
            && details["responseCode"] == 200
            && details["severity"] == "info"
            && details["latency"]
                .as_str()
                .is_some_and(|l| l.ends_with('s')),
        "{details}"
    );

    // fluentd goes away (killed, restarted by the supervisor); what mixer sends meanwhile
    // waits in its buffer and arrives after the restart.
    let netns = format!("keel-logging.{pod}");
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &netns])
        .output()?;
    let fluentd = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "keel-fluentd")
        })
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no keel-fluentd process in {netns}"))?;
    let lines_before = count(mesh)?;
    std::process::Command::new("kill")
        .args(["-9", &fluentd])
        .status()?;
    for _ in 0..5 {
        ensure!(Client::new(gw).get("/productpage", &[])?.status == 200);
    }
    eventually(
        "every report in fluentd after its restart",
        Duration::from_secs(30),
        || {
            let previous = fluentd_lines(mesh, true)?.len();
            let current = fluentd_lines(mesh, false)?.len();
            Ok((previous + current == lines_before + 40 && current > 0).then_some(()))
        },
    )?;
    mesh.delete(&to_fluentd)?;
    mesh.delete(&stack)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Istio 1.0's policy tasks through mixer's checks (on by default, as in Istio 1.0):
/// mixer-rule-deny-label.yaml keeps reviews-v3 from ratings (403 with Istio's body; the page
/// says ratings are unavailable), and mixer-rule-productpage-ratelimit.yaml limits
/// productpage to 2 pages per 5 s (the third gets 429).
fn policy(mesh: &Mesh, gw: &str) -> Result<()> {
    let dir = shared().join("istio-samples/1.0/samples/bookinfo/policy");
    let deny = dir.join("mixer-rule-deny-label.yaml");
    mesh.apply(&deny)?;
    settle(gw, "ratings denied to reviews v3", 3, |p| {
        p.contains("Ratings service is currently unavailable")
    })?;
    let reviews = pod_named(mesh, "reviews-v3-")?;
    let answer = curl_in_pod(
        &reviews,
        &["-w", " %{http_code}", "http://ratings:9080/ratings/0"],
    )?;
    ensure!(
        answer == "PERMISSION_DENIED:denyreviewsv3handler.denier.default:Not allowed 403",
        "reviews-v3 -> ratings: {answer}"
    );
    // Istio's switch: disablePolicyChecks in the mesh config turns checks off (the rule
    // stays but nobody asks), and back on.
    let mesh_config = |disable: bool| -> Result<()> {
        let out = mesh.keelctl(&["-n", "istio-system", "get", "cm", "istio", "-o", "json"])?;
        ensure!(out.ok, "get cm istio: {}", out.stderr);
        let mut cm: Value = serde_json::from_str(&out.stdout)?;
        let text = cm["data"]["mesh"].as_str().unwrap_or_default().replace(
            &format!("disablePolicyChecks: {}", !disable),
            &format!("disablePolicyChecks: {disable}"),
        );
        cm["data"]["mesh"] = Value::from(text);
        let file = std::env::temp_dir().join(format!("keel-e2e-mesh-{}.json", std::process::id()));
        std::fs::write(&file, cm.to_string())?;
        let applied = mesh.apply(&file);
        let _ = std::fs::remove_file(&file);
        applied
    };
    mesh_config(true)?;
    settle(gw, "ratings back with policy checks off", 3, |p| {
        variant(p) == Variant::V3
    })?;
    mesh_config(false)?;
    settle(gw, "ratings denied again with checks on", 3, |p| {
        p.contains("Ratings service is currently unavailable")
    })?;
    mesh.delete(&deny)?;
    settle(gw, "ratings allowed again", 3, |p| {
        variant(p) == Variant::V3
    })?;

    let limit = dir.join("mixer-rule-productpage-ratelimit.yaml");
    let limit_arg = limit.display().to_string();
    // As published for 1.0 the rule has no namespace, lands in `default` and names a handler
    // in istio-system, which Istio 1.0 did not resolve either (istio/istio#10368): keelctl
    // says so, and the fix is to apply it to istio-system.
    let out = mesh.keelctl(&["apply", "-f", &limit_arg])?;
    ensure!(
        out.ok
            && out
                .stderr
                .contains("handler \"handler.memquota\" is not defined here"),
        "the unresolved handler should be reported: {}",
        out.stderr
    );
    let out = mesh.keelctl(&["delete", "-f", &limit_arg])?;
    ensure!(out.ok, "{}", out.stderr);
    let out = mesh.keelctl(&["-n", "istio-system", "apply", "-f", &limit_arg])?;
    ensure!(out.ok, "{}", out.stderr);
    eventually("the quota in effect", PROPAGATION, || {
        Ok((Client::new(gw).get("/productpage", &[])?.status == 429).then_some(()))
    })?;
    // A fresh window: two pages, then the quota's answer.
    std::thread::sleep(Duration::from_millis(5200));
    let mut statuses = Vec::new();
    let mut last = String::new();
    for _ in 0..3 {
        let r = Client::new(gw).get("/productpage", &[])?;
        statuses.push(r.status);
        last = r.body;
    }
    ensure!(statuses == [200, 200, 429], "statuses {statuses:?}");
    ensure!(
        last == "RESOURCE_EXHAUSTED:Quota is exhausted for: requestcount",
        "429 body: {last}"
    );
    let out = mesh.keelctl(&["-n", "istio-system", "delete", "-f", &limit_arg])?;
    ensure!(out.ok, "{}", out.stderr);
    settle(gw, "pages unlimited again", 5, |p| {
        variant(p) == Variant::V3
    })?;
    Ok(())
}

/// A crashed container restarts (counted); an edited Deployment rolls its pods.
fn restarts_and_rolls(mesh: &Mesh, gw: &str) -> Result<()> {
    let status = mesh.status()?;
    let ratings = status["pods"]
        .as_array()
        .and_then(|ps| {
            ps.iter().find(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("ratings-v1-"))
            })
        })
        .and_then(|p| p["name"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no ratings pod"))?;
    let netns = format!("keel-default.{ratings}");
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", &netns])
        .output()?;
    let app = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("bookinfo-rating"))
        })
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no ratings process in {netns}"))?;
    std::process::Command::new("kill")
        .args(["-9", &app])
        .status()?;
    eventually(
        "ratings restarted and counted",
        Duration::from_secs(30),
        || {
            let out = mesh.keelctl(&["get", "pods"])?.stdout;
            let row = out
                .lines()
                .find(|l| l.starts_with(&ratings))
                .unwrap_or("")
                .to_owned();
            let cols: Vec<&str> = row.split_whitespace().collect();
            Ok(
                (cols.get(1) == Some(&"2/2") && cols.get(3).is_some_and(|r| *r != "0"))
                    .then_some(()),
            )
        },
    )?;
    let previous = mesh.keelctl(&["logs", &ratings, "--previous"])?;
    ensure!(
        previous.ok && previous.stdout.contains("listening"),
        "logs --previous: {}",
        previous.stderr
    );
    settle(gw, "the page after the restart", 3, |p| {
        variant(p) == Variant::V3
    })?;

    edit(
        mesh,
        "deployment",
        "ratings-v1",
        "s/replicas: 1/replicas: 2/",
    )?;
    eventually("two ratings pods", Duration::from_secs(30), || {
        let out = mesh.keelctl(&["get", "pods", "-l", "app=ratings"])?.stdout;
        Ok((out.lines().skip(1).filter(|l| l.contains("2/2")).count() == 2).then_some(()))
    })?;
    settle(gw, "the page with two ratings pods", 5, |p| {
        variant(p) == Variant::V3
    })?;
    Ok(())
}

/// Istio 1.0's "securing gateways with HTTPS": the certificate as the
/// `istio-ingressgateway-certs` Secret, a Gateway server on 443 with `tls.mode: SIMPLE` and
/// the mounted file paths; the product page answers over HTTPS on 31390 (and still on 80).
fn https_gateway(mesh: &Mesh) -> Result<()> {
    let dir = mesh.home.join("tls");
    std::fs::create_dir_all(&dir)?;
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bookinfo.example",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()?;
    ensure!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let indent = |p: &str| -> Result<String> {
        Ok(std::fs::read_to_string(dir.join(p))?
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect())
    };
    let secret = dir.join("secret.yaml");
    std::fs::write(
        &secret,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: istio-ingressgateway-certs, namespace: istio-system}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent("cert.pem")?,
            indent("key.pem")?
        ),
    )?;
    mesh.apply(&secret)?;
    // The secret is mounted before the server that needs it, as on Kubernetes.
    eventually(
        "the certificate mounted in the gateway pod",
        Duration::from_secs(20),
        || {
            let found = std::fs::read_dir("/etc/netns")?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("keel-istio-system.")
                })
                .any(|e| e.path().join("istio/ingressgateway-certs/tls.crt").exists());
            Ok(found.then_some(()))
        },
    )?;
    let gateway = dir.join("gateway.yaml");
    std::fs::write(
        &gateway,
        "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: bookinfo-gateway}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: ['*']\n  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: /etc/istio/ingressgateway-certs/tls.crt, privateKey: /etc/istio/ingressgateway-certs/tls.key}\n    hosts: ['*']\n",
    )?;
    mesh.apply(&gateway)?;
    let port = mesh.keelctl(&[
        "-n",
        "istio-system",
        "get",
        "service",
        "istio-ingressgateway",
        "-o",
        r#"jsonpath={.spec.ports[?(@.name=="https")].nodePort}"#,
    ])?;
    ensure!(port.stdout == "31390", "the https node port: {port:?}");
    let url = format!("https://127.0.0.1:{}/productpage", port.stdout);
    let page = eventually("the product page over HTTPS", PROPAGATION, || {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-m", "10", &url])
            .output()?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(body
            .contains("<title>Simple Bookstore App</title>")
            .then_some(body))
    })?;
    ensure!(page.contains("The Comedy of Errors"));
    let plain = Client::new(&mesh.gateway()?).get("/productpage", &[])?;
    ensure!(plain.status == 200, "HTTP still answers: {}", plain.status);
    Ok(())
}

/// A pod without a sidecar (opted out) runs a program from the user's image table and still
/// reaches Services through their virtual IPs (the host's kube-proxy-style rules).
fn pod_without_sidecar(mesh: &Mesh) -> Result<()> {
    let ns = mesh
        .keelctl(&["get", "ns", "-L", "istio-injection"])?
        .stdout;
    ensure!(
        ns.lines()
            .any(|l| l.starts_with("default") && l.trim_end().ends_with("enabled")),
        "default is labelled for injection: {ns}"
    );
    let file = mesh.home.join("sleep.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sleep}\nspec:\n  selector: {matchLabels: {app: sleep}}\n  template:\n    metadata:\n      labels: {app: sleep}\n      annotations: {sidecar.istio.io/inject: \"false\"}\n    spec:\n      containers:\n      - {name: sleep, image: e2e/sleep:1}\n",
    )?;
    mesh.apply(&file)?;
    let pod = eventually("the sleep pod running", Duration::from_secs(30), || {
        let s = mesh.status()?;
        let found = s["pods"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| {
                    p["name"].as_str().is_some_and(|n| n.starts_with("sleep-"))
                        && p["ready"] == true
                })
                .cloned()
        });
        Ok(found)
    })?;
    ensure!(pod["sidecar"] == false && pod["containers"].as_array().map(Vec::len) == Some(1));
    let name = pod["name"].as_str().unwrap_or_default().to_owned();
    let body = eventually(
        "details through its VIP without a sidecar",
        Duration::from_secs(20),
        || {
            let b = curl_in_pod(&name, &["http://details:9080/details/0"])?;
            Ok(b.contains("William Shakespeare").then_some(b))
        },
    )?;
    ensure!(body.contains("\"id\":0"), "{body}");
    mesh.delete(&file)?;
    Ok(())
}

/// After the runtime is killed (no clean stop), `keelctl down` still removes everything.
fn down_after_a_crash(proxy: &str) -> Result<()> {
    let mesh = Mesh::up(proxy)?;
    mesh.apply(&repo().join("samples/bookinfo/platform/kube/bookinfo.yaml"))?;
    eventually("pods running", Duration::from_secs(60), || {
        let s = mesh.status()?;
        let n = s["pods"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["ready"] == true).count())
            .unwrap_or(0);
        Ok((n == 7).then_some(()))
    })?;
    let pid = mesh.status()?["pid"].as_u64().unwrap_or(0).to_string();
    std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()?;
    // SIGKILL lands asynchronously: poll until status sees the runtime gone.
    eventually(
        "keelctl status to report the crash",
        Duration::from_secs(10),
        || {
            let status = mesh.keelctl(&["status"])?;
            Ok((!status.ok && status.stdout.contains("failed")).then_some(()))
        },
    )?;
    let down = mesh.down()?;
    ensure!(
        down.ok,
        "keelctl down after a crash: {}{}",
        down.stdout,
        down.stderr
    );
    nothing_left()?;
    // SIGKILL takes effect asynchronously; zombies (not yet reaped by init) do not count.
    eventually(
        "no process of the mesh left",
        Duration::from_secs(10),
        || Ok(mesh_processes().is_empty().then_some(())),
    )
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", mesh_processes()))?;
    Ok(())
}

/// Live processes of a mesh: Keel's components and Bookinfo.
fn mesh_processes() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            pid.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            let comm = comm.trim();
            let ours = comm.starts_with("bookinfo-") || comm.starts_with("keel-");
            (ours && state != 'Z').then(|| format!("{pid} {comm}"))
        })
        .collect()
}

fn nothing_left() -> Result<()> {
    let run = |cmd: &[&str]| -> Result<String> {
        let o = std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .output()?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let netns = run(&["ip", "netns", "list"])?;
    ensure!(!netns.contains("keel-"), "namespaces left: {netns}");
    let links = run(&["ip", "link"])?;
    ensure!(
        !links.contains("keel0") && !links.contains("keelv"),
        "interfaces left: {links}"
    );
    let rules = run(&["iptables-save"])?;
    ensure!(!rules.contains("KEEL"), "iptables rules left: {rules}");
    let routes = run(&["ip", "route"])?;
    ensure!(!routes.contains("240.240."), "routes left: {routes}");
    Ok(())
}

/// One local mesh at a time (fixed ports, one bridge), also under plain `cargo test`.
static ONE_MESH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_all(proxy: &str) -> Result<()> {
    let _one = ONE_MESH.lock().unwrap_or_else(|p| p.into_inner());
    require_machine();
    let istio: PathBuf = shared().join("istio-samples/1.0/samples/bookinfo");
    let keel: PathBuf = repo().join("samples/bookinfo");
    // The gateway's certificate directory needs /etc/istio; the runtime creates it when
    // missing and must remove it again.
    let etc_istio_before = Path::new("/etc/istio").exists();
    let mesh = Mesh::up_with_images(
        proxy,
        "images:\n- image: e2e/sleep\n  command: [sleep, \"3600\"]\n",
    )?;
    walkthrough(&mesh, &istio)?;
    bookinfo_down(&mesh, &istio)?;
    walkthrough(&mesh, &keel)?;
    https_gateway(&mesh)?;
    let gw = mesh.gateway()?;
    telemetry(&mesh, &gw)?;
    dashboards(&mesh)?;
    logs_to_fluentd(&mesh, &gw)?;
    policy(&mesh, &gw)?;
    restarts_and_rolls(&mesh, &gw)?;
    pod_without_sidecar(&mesh)?;
    let down = mesh.down()?;
    ensure!(down.ok, "keelctl down: {}{}", down.stdout, down.stderr);
    drop(mesh);
    nothing_left()?;
    ensure!(
        etc_istio_before || !Path::new("/etc/istio").exists(),
        "/etc/istio left behind"
    );
    down_after_a_crash(proxy)
}

#[test]
fn walkthrough_on_envoy() -> Result<()> {
    run_all("envoy")
}

#[test]
fn walkthrough_on_keel_proxy() -> Result<()> {
    run_all("keel")
}
