//! Checks and quotas with Istio 1.0's own policy samples: the denier that keeps reviews-v3
//! from ratings, the memquota that rate-limits productpage through a QuotaSpecBinding, a
//! whitelist; bags made from ext_authz requests the way a sidecar sends them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, check_response};
use keel_attributes::{Manifest, Value};
use keel_config::Resource;
use keel_config::store::Snapshot;
use keel_mixer::Plan;
use keel_mixer::check::{SERVICE_HOST_EXTENSION, check_attributes, response};
use keel_mixer::policy::{MemQuota, Verdict, check, requested_quotas};
use keel_pilot::registry::Registry;

fn istio_policy(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/istio-samples/1.0/samples/bookinfo/policy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn load(text: &str, namespace: &str) -> Vec<Resource> {
    let report = keel_config::load_str("policy.yaml", text, Some(namespace));
    let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    report.resources
}

/// Bookinfo's services and one pod per workload: 10.0.0.N.
const PODS: &[(&str, &str, &str)] = &[
    ("productpage", "v1", "10.0.0.1"),
    ("reviews", "v2", "10.0.0.2"),
    ("reviews", "v3", "10.0.0.3"),
    ("ratings", "v1", "10.0.0.4"),
];

fn registry() -> Registry {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut texts = vec![
        std::fs::read_to_string(root.join("samples/bookinfo/platform/kube/bookinfo.yaml")).unwrap(),
    ];
    for (app, v, ip) in PODS {
        texts.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}-5d8f7c9b4-x2x9z, labels: {{app: {app}, version: {v}, pod-template-hash: 5d8f7c9b4}}}}\nspec:\n  containers: [{{name: {app}, image: x}}]\nstatus: {{phase: Running, podIP: {ip}}}\n"
        ));
    }
    let mut resources = BTreeMap::new();
    for t in texts {
        for r in load(&t, "default") {
            resources.insert(r.key(), Arc::new(r));
        }
    }
    Registry::from_config(&Snapshot {
        version: 1,
        resources,
    })
}

fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_owned(),
            port_specifier: Some(
                envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(
                    port,
                ),
            ),
            ..Default::default()
        })),
    })
}

/// What the destination's sidecar asks mixer for a call from `from` to `to` (pod IPs).
fn request(from: &str, to: &str, service: &str, path: &str, xff: &str) -> CheckRequest {
    let mut headers = HashMap::from([
        (":authority".to_owned(), format!("{service}:9080")),
        ("user-agent".to_owned(), "curl/8".to_owned()),
    ]);
    if !xff.is_empty() {
        headers.insert("x-forwarded-for".to_owned(), xff.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: addr(from, 40000),
                ..Default::default()
            }),
            destination: Some(Peer {
                address: addr(to, 9080),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: format!("{service}:9080"),
                    headers,
                    size: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: HashMap::from([(
                SERVICE_HOST_EXTENSION.to_owned(),
                format!("{service}.default.svc.cluster.local"),
            )]),
            ..Default::default()
        }),
    }
}

struct Mixer {
    resources: Vec<Resource>,
    plan: Plan,
    registry: Registry,
    quota: MemQuota,
}

impl Mixer {
    fn new(resources: Vec<Resource>) -> Mixer {
        let plan = Plan::build(resources.iter(), "istio-system", &Manifest::istio());
        assert!(plan.problems.is_empty(), "{:?}", plan.problems);
        Mixer {
            resources,
            plan,
            registry: registry(),
            quota: MemQuota::default(),
        }
    }

    fn check(&self, req: &CheckRequest, now: Instant) -> Verdict {
        let bag = check_attributes(req, &self.registry);
        let quotas = requested_quotas(self.resources.iter(), &bag);
        check(&self.plan, &bag, &quotas, &self.quota, now).0
    }
}

#[test]
fn the_denier_keeps_reviews_v3_from_ratings_and_nothing_else() {
    let m = Mixer::new(load(&istio_policy("mixer-rule-deny-label.yaml"), "default"));
    let now = Instant::now();
    let v3 = m.check(
        &request("10.0.0.3", "10.0.0.4", "ratings", "/ratings/0", ""),
        now,
    );
    assert_eq!(v3.http_status(), 403);
    assert_eq!(
        v3.body(),
        "PERMISSION_DENIED:denyreviewsv3handler.denier.default:Not allowed"
    );
    let v2 = m.check(
        &request("10.0.0.2", "10.0.0.4", "ratings", "/ratings/0", ""),
        now,
    );
    assert!(v2.is_ok(), "{v2:?}");
    // v3 calling anything else is fine.
    let other = m.check(
        &request("10.0.0.3", "10.0.0.1", "productpage", "/", ""),
        now,
    );
    assert!(other.is_ok(), "{other:?}");

    // The ext_authz answer carries Istio's status and body.
    let r = response(&v3);
    assert_eq!(r.status.as_ref().unwrap().code, 7);
    match r.http_response {
        Some(check_response::HttpResponse::DeniedResponse(d)) => {
            assert_eq!(d.status.unwrap().code, 403);
            assert!(d.body.starts_with("PERMISSION_DENIED:"));
        }
        other => panic!("{other:?}"),
    }
    // Reports never reach the denier.
    let bag = check_attributes(
        &request("10.0.0.3", "10.0.0.4", "ratings", "/ratings/0", ""),
        &m.registry,
    );
    assert!(m.plan.dispatch(&bag).dispatches.is_empty());
}

#[test]
fn memquota_limits_productpage_by_its_quota_spec_binding() {
    let m = Mixer::new(load(
        &istio_policy("mixer-rule-productpage-ratelimit.yaml"),
        "istio-system",
    ));
    let t0 = Instant::now();
    let page = |xff: &str| request("10.0.0.9", "10.0.0.1", "productpage", "/productpage", xff);
    let bag = check_attributes(&page("1.2.3.4"), &m.registry);
    assert_eq!(
        requested_quotas(m.resources.iter(), &bag),
        vec![("requestcount".to_owned(), 1)]
    );
    // The override for productpage: 2 per 5 s, per source (x-forwarded-for).
    assert!(m.check(&page("1.2.3.4"), t0).is_ok());
    assert!(
        m.check(&page("1.2.3.4"), t0 + Duration::from_millis(10))
            .is_ok()
    );
    let third = m.check(&page("1.2.3.4"), t0 + Duration::from_millis(20));
    assert_eq!(third.http_status(), 429);
    assert_eq!(
        third.body(),
        "RESOURCE_EXHAUSTED:Quota is exhausted for: requestcount"
    );
    // Another source has its own count.
    assert!(
        m.check(&page("5.6.7.8"), t0 + Duration::from_millis(30))
            .is_ok()
    );
    // The window rolls: 5 s after the first, one more is allowed, not two.
    let later = t0 + Duration::from_secs(5);
    assert!(m.check(&page("1.2.3.4"), later).is_ok());
    assert!(!m.check(&page("1.2.3.4"), later).is_ok());
    // Services without a binding ask for no quota and are never limited.
    let ratings = request("10.0.0.2", "10.0.0.4", "ratings", "/ratings/0", "1.2.3.4");
    let bag = check_attributes(&ratings, &m.registry);
    assert!(requested_quotas(m.resources.iter(), &bag).is_empty());
    for i in 0..10 {
        assert!(m.check(&ratings, t0 + Duration::from_millis(i)).is_ok());
    }
}

#[test]
fn a_whitelist_refuses_what_it_does_not_list() {
    let yaml = r#"
apiVersion: config.istio.io/v1alpha2
kind: listchecker
metadata: {name: versions, namespace: istio-system}
spec:
  overrides: ["v1", "v2"]
  blacklist: false
---
apiVersion: config.istio.io/v1alpha2
kind: listentry
metadata: {name: sourceversion, namespace: istio-system}
spec:
  value: source.labels["version"]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: checkversion, namespace: istio-system}
spec:
  match: destination.labels["app"] == "ratings"
  actions:
  - handler: versions.listchecker
    instances: [sourceversion.listentry]
"#;
    let m = Mixer::new(load(yaml, "istio-system"));
    let now = Instant::now();
    assert!(
        m.check(&request("10.0.0.2", "10.0.0.4", "ratings", "/", ""), now)
            .is_ok()
    );
    let v3 = m.check(&request("10.0.0.3", "10.0.0.4", "ratings", "/", ""), now);
    assert_eq!(v3.http_status(), 404);
    assert_eq!(
        v3.body(),
        "NOT_FOUND:versions.listchecker.istio-system:v3 is not whitelisted"
    );
}

#[test]
fn a_check_bag_has_both_workloads_and_the_request() {
    let reg = registry();
    let bag = check_attributes(
        &request(
            "10.0.0.3",
            "10.0.0.4",
            "ratings",
            "/ratings/0?x=1",
            "9.9.9.9",
        ),
        &reg,
    );
    let s = |k: &str| match bag.get(k) {
        Some(Value::String(s)) => s.clone(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(s("source.workload.name"), "reviews-v3");
    assert_eq!(s("destination.workload.name"), "ratings-v1");
    assert_eq!(s("destination.service.name"), "ratings");
    assert_eq!(s("destination.service.namespace"), "default");
    assert_eq!(s("request.path"), "/ratings/0?x=1");
    assert_eq!(s("request.method"), "GET");
    assert_eq!(s("request.useragent"), "curl/8");
    assert_eq!(s("context.reporter.kind"), "inbound");
    match bag.get("request.headers") {
        Some(Value::StringMap(h)) => assert_eq!(h["x-forwarded-for"], "9.9.9.9"),
        other => panic!("{other:?}"),
    }
    match bag.get("source.labels") {
        Some(Value::StringMap(l)) => assert_eq!(l["version"], "v3"),
        other => panic!("{other:?}"),
    }
}

fn keel_sample(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../samples/bookinfo/policy")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn keels_policy_samples_deny_and_limit_as_their_comments_say() {
    let deny = Mixer::new(load(&keel_sample("deny-reviews-v3.yaml"), "default"));
    let now = Instant::now();
    let v3 = deny.check(
        &request("10.0.0.3", "10.0.0.4", "ratings", "/ratings/0", ""),
        now,
    );
    assert_eq!(
        (v3.http_status(), v3.body().as_str()),
        (
            403,
            "PERMISSION_DENIED:deny-reviews-v3.denier.default:reviews v3 may not call ratings"
        )
    );
    assert!(
        deny.check(
            &request("10.0.0.2", "10.0.0.4", "ratings", "/ratings/0", ""),
            now
        )
        .is_ok()
    );

    // Applied without a namespace: everything says istio-system itself.
    let limit = Mixer::new(load(&keel_sample("productpage-ratelimit.yaml"), "default"));
    let page = request(
        "10.0.0.9",
        "10.0.0.1",
        "productpage",
        "/productpage",
        "1.2.3.4",
    );
    assert!(limit.check(&page, now).is_ok());
    assert!(limit.check(&page, now).is_ok());
    let third = limit.check(&page, now);
    assert_eq!(
        (third.http_status(), third.body().as_str()),
        (429, "RESOURCE_EXHAUSTED:Quota is exhausted for: pagequota")
    );
    assert!(limit.check(&page, now + Duration::from_secs(5)).is_ok());
}
