//! The Mixer model end to end without I/O: config -> plan -> instances -> adapters, with the
//! walkthrough's telemetry config and Istio's own 1.1 sample.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use keel_attributes::{Manifest, Value};
use keel_config::Resource;
use keel_config::mixer::{Level, StdioParams};
use keel_mixer::adapter::{prometheus::Exporter, stdio};
use keel_mixer::{InstanceBody, Plan};

fn load(text: &str) -> Vec<Resource> {
    let report = keel_config::load_str("test.yaml", text, Some("istio-system"));
    let errors: Vec<String> = report.errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    report.resources
}

fn load_file(rel: &str) -> Vec<Resource> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    load(&text)
}

/// A report as the destination sidecar of details would make it for productpage's call.
fn report(
    source_app: &str,
    destination_app: &str,
    code: i64,
    size: i64,
) -> BTreeMap<String, Value> {
    let mut bag = BTreeMap::new();
    let s = |v: &str| Value::String(v.to_owned());
    let labels = |app: &str| {
        Value::StringMap(BTreeMap::from([
            ("app".to_owned(), app.to_owned()),
            ("version".to_owned(), "v1".to_owned()),
        ]))
    };
    bag.insert("source.labels".to_owned(), labels(source_app));
    bag.insert("destination.labels".to_owned(), labels(destination_app));
    bag.insert(
        "source.service".to_owned(),
        s(&format!("{source_app}.default.svc.cluster.local")),
    );
    bag.insert(
        "destination.service".to_owned(),
        s(&format!("{destination_app}.default.svc.cluster.local")),
    );
    bag.insert(
        "source.workload.name".to_owned(),
        s(&format!("{source_app}-v1")),
    );
    bag.insert(
        "destination.workload.name".to_owned(),
        s(&format!("{destination_app}-v1")),
    );
    bag.insert("destination.namespace".to_owned(), s("default"));
    bag.insert("context.reporter.kind".to_owned(), s("inbound"));
    bag.insert("response.code".to_owned(), Value::Int64(code));
    bag.insert("response.size".to_owned(), Value::Int64(size));
    bag.insert(
        "response.duration".to_owned(),
        Value::Duration(Duration::from_nanos(2_245_269)),
    );
    bag.insert(
        "request.time".to_owned(),
        Value::Timestamp(UNIX_EPOCH + Duration::from_micros(1_543_222_846_541_292)),
    );
    bag
}

fn handler_index(plan: &Plan, name: &str) -> usize {
    plan.handlers
        .iter()
        .position(|h| &*h.name == name)
        .unwrap_or_else(|| panic!("no handler {name}: {:?}", plan.handlers))
}

#[test]
fn walkthrough_telemetry_resolves_and_counts_twice() {
    let resources = load_file("samples/bookinfo/telemetry/new_telemetry.yaml");
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    assert_eq!(plan.rule_count(), 2);
    let prom = handler_index(&plan, "doublehandler.prometheus.istio-system");
    let stdio_h = handler_index(&plan, "newhandler.stdio.istio-system");

    let mut exporter = Exporter::new();
    assert!(exporter.configure(&plan.handlers).is_empty());
    let n = 7;
    for i in 0..n {
        let bag = if i % 2 == 0 {
            report("productpage", "details", 200, 178)
        } else {
            report("reviews", "ratings", 200, 48)
        };
        let outcome = plan.dispatch(&bag);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert_eq!(outcome.dispatches.len(), 2, "{:?}", outcome.dispatches);
        for d in &outcome.dispatches {
            if d.handler == prom {
                let errors = exporter.record(&plan.handlers[prom].name, &d.instances);
                assert!(errors.is_empty(), "{errors:?}");
            } else {
                assert_eq!(d.handler, stdio_h);
            }
        }
    }
    let text = exporter.render();
    assert!(
        text.contains("# TYPE istio_double_request_count counter\n"),
        "{text}"
    );
    let pp = "istio_double_request_count{source=\"productpage.default.svc.cluster.local\",destination=\"details.default.svc.cluster.local\",message=\"twice the fun!\"} 8\n";
    let rv = "istio_double_request_count{source=\"reviews.default.svc.cluster.local\",destination=\"ratings.default.svc.cluster.local\",message=\"twice the fun!\"} 6\n";
    assert!(text.contains(pp), "{text}");
    assert!(text.contains(rv), "{text}");
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("istio_double_request_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 2.0 * n as f64);
}

#[test]
fn walkthrough_log_entry_prints_like_mixer() {
    let resources = load_file("samples/bookinfo/telemetry/new_telemetry.yaml");
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    let stdio_h = handler_index(&plan, "newhandler.stdio.istio-system");
    let keel_config::mixer::Adapter::Stdio(params) = &plan.handlers[stdio_h].adapter else {
        panic!("newhandler is not stdio");
    };
    let mut bag = report("productpage", "details", 200, 178);
    bag.insert("source.user".to_owned(), Value::String("jason".to_owned()));
    let outcome = plan.dispatch(&bag);
    let d = outcome
        .dispatches
        .iter()
        .find(|d| d.handler == stdio_h)
        .expect("stdio dispatch");
    assert_eq!(d.instances.len(), 1);
    let line = stdio::format(params, &d.instances[0]).expect("a line");
    assert_eq!(
        line.text,
        r#"{"level":"warn","time":"2018-11-26T09:00:46.541292Z","instance":"newlog.logentry.istio-system","destination":"details","latency":"2.245269ms","responseCode":200,"responseSize":178,"source":"productpage","user":"jason"}"#
    );
    // Defaults fill in what the report lacks.
    let mut bare = report("reviews", "ratings", 200, 48);
    bare.remove("response.duration");
    let outcome = plan.dispatch(&bare);
    let d = outcome
        .dispatches
        .iter()
        .find(|d| d.handler == stdio_h)
        .expect("stdio dispatch");
    let line = stdio::format(params, &d.instances[0]).expect("a line");
    assert!(line.text.contains(r#""latency":"0s""#), "{}", line.text);
    assert!(line.text.contains(r#""user":"unknown""#), "{}", line.text);
    assert!(line.text.contains(r#""responseSize":48"#), "{}", line.text);
}

#[test]
fn istio_generic_kinds_resolve_by_short_name() {
    let resources =
        load_file("../shared/istio-samples/1.1.3/samples/bookinfo/telemetry/metrics.yaml");
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut exporter = Exporter::new();
    assert!(exporter.configure(&plan.handlers).is_empty());
    let outcome = plan.dispatch(&report("productpage", "details", 200, 178));
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(outcome.dispatches.len(), 1);
    let d = &outcome.dispatches[0];
    let errors = exporter.record(&plan.handlers[d.handler].name, &d.instances);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(exporter.render().contains(
        "istio_double_request_count{reporter=\"server\",source=\"productpage-v1\",destination=\"details-v1\",message=\"twice the fun!\"} 2\n"
    ), "{}", exporter.render());
}

const BROKEN: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: metric
metadata: {name: count, namespace: istio-system}
spec:
  value: "1"
  dimensions:
    path: request.path
---
apiVersion: config.istio.io/v1alpha2
kind: prometheus
metadata: {name: prom, namespace: istio-system}
spec:
  metrics:
  - name: hits
    instance_name: count.metric.istio-system
    kind: COUNTER
    label_names: [path]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: missing, namespace: istio-system}
spec:
  actions:
  - handler: nosuch.prometheus
    instances: [count.metric]
  - handler: prom.prometheus
    instances: [count.metric, ghost.metric]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: local, namespace: team}
spec:
  match: request.path == "/x"
  actions:
  - handler: prom.prometheus.istio-system
    instances: [count.metric.istio-system]
"#;

#[test]
fn unresolved_references_are_named_and_left_out() {
    let resources = load(BROKEN);
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    let problems: Vec<String> = plan.problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(
        problems,
        vec![
            "missing.rule.istio-system: actions[0].handler: handler \"nosuch.prometheus\" is not defined; the action is left out".to_owned(),
            "missing.rule.istio-system: actions[1].instances[1]: instance \"ghost.metric\" is not defined; it is left out".to_owned(),
        ]
    );
    // The sound part still works.
    let mut bag = BTreeMap::new();
    bag.insert("request.path".to_owned(), Value::String("/x".to_owned()));
    bag.insert(
        "destination.namespace".to_owned(),
        Value::String("default".to_owned()),
    );
    let outcome = plan.dispatch(&bag);
    assert_eq!(outcome.dispatches.len(), 1);
    // Only the global rule: `local` lives in namespace team and the destination is default.
    assert_eq!(outcome.dispatches[0].instances.len(), 1);
    bag.insert(
        "destination.namespace".to_owned(),
        Value::String("team".to_owned()),
    );
    let outcome = plan.dispatch(&bag);
    assert_eq!(outcome.dispatches[0].instances.len(), 2);
    bag.insert("request.path".to_owned(), Value::String("/y".to_owned()));
    assert_eq!(plan.dispatch(&bag).dispatches[0].instances.len(), 1);
    // A missing attribute without a default fails the instance, and says which field.
    bag.remove("request.path");
    let outcome = plan.dispatch(&bag);
    assert!(outcome.dispatches.is_empty());
    assert_eq!(outcome.errors.len(), 1);
    assert_eq!(
        outcome.errors[0].to_string(),
        "instance count.metric.istio-system: dimensions.path: lookup failed: 'request.path'"
    );
}

const DISTRIBUTION: &str = r#"
apiVersion: config.istio.io/v1alpha2
kind: metric
metadata: {name: latency, namespace: istio-system}
spec:
  value: response.duration
  dimensions:
    code: response.code
---
apiVersion: config.istio.io/v1alpha2
kind: prometheus
metadata: {name: prom, namespace: istio-system}
spec:
  metrics:
  - name: request_duration_seconds
    instance_name: latency.metric.istio-system
    kind: DISTRIBUTION
    label_names: [code]
    buckets:
      explicit_buckets:
        bounds: [0.01, 0.1, 1]
---
apiVersion: config.istio.io/v1alpha2
kind: rule
metadata: {name: r, namespace: istio-system}
spec:
  actions:
  - handler: prom.prometheus
    instances: [latency.metric]
"#;

fn observe(plan: &Plan, exporter: &mut Exporter, millis: u64) {
    let mut bag = BTreeMap::new();
    bag.insert("response.code".to_owned(), Value::Int64(200));
    bag.insert(
        "response.duration".to_owned(),
        Value::Duration(Duration::from_millis(millis)),
    );
    for d in plan.dispatch(&bag).dispatches {
        assert!(
            exporter
                .record(&plan.handlers[d.handler].name, &d.instances)
                .is_empty()
        );
    }
}

#[test]
fn distributions_fill_cumulative_buckets_and_survive_unchanged_reconfiguration() {
    let resources = load(DISTRIBUTION);
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut exporter = Exporter::new();
    assert!(exporter.configure(&plan.handlers).is_empty());
    for ms in [5, 50, 50, 500, 5000] {
        observe(&plan, &mut exporter, ms);
    }
    let text = exporter.render();
    for want in [
        "# TYPE istio_request_duration_seconds histogram\n",
        "istio_request_duration_seconds_bucket{code=\"200\",le=\"0.01\"} 1\n",
        "istio_request_duration_seconds_bucket{code=\"200\",le=\"0.1\"} 3\n",
        "istio_request_duration_seconds_bucket{code=\"200\",le=\"1\"} 4\n",
        "istio_request_duration_seconds_bucket{code=\"200\",le=\"+Inf\"} 5\n",
        "istio_request_duration_seconds_sum{code=\"200\"} 5.605\n",
        "istio_request_duration_seconds_count{code=\"200\"} 5\n",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    // The same config again: series are kept.
    let again = Plan::build(&load(DISTRIBUTION), "istio-system", &Manifest::istio());
    assert!(exporter.configure(&again.handlers).is_empty());
    assert!(exporter.render().contains("_count{code=\"200\"} 5\n"));
    // Different buckets: the metric starts over.
    let changed = DISTRIBUTION.replace("[0.01, 0.1, 1]", "[0.5, 2]");
    let plan2 = Plan::build(&load(&changed), "istio-system", &Manifest::istio());
    assert!(exporter.configure(&plan2.handlers).is_empty());
    let text = exporter.render();
    assert!(!text.contains("_count{"), "{text}");
    observe(&plan2, &mut exporter, 1000);
    assert!(
        exporter
            .render()
            .contains("istio_request_duration_seconds_bucket{code=\"200\",le=\"2\"} 1\n")
    );
    // Galley refuses decreasing bounds; the exporter still names them rather than guess.
    let bad = DISTRIBUTION.replace("[0.01, 0.1, 1]", "[1, 0.5]");
    let report = keel_config::load_str("bad.yaml", &bad, Some("istio-system"));
    assert!(
        report.errors().any(|d| d.to_string().contains("bounds")),
        "{:?}",
        report.diagnostics
    );
    let mut handlers = plan2.handlers.clone();
    let keel_config::mixer::Adapter::Prometheus(params) = &mut handlers[0].adapter else {
        panic!("not prometheus");
    };
    params.metrics[0].buckets = Some(keel_config::mixer::BucketsDefinition {
        explicit_buckets: Some(keel_config::mixer::ExplicitBuckets {
            bounds: vec![1.0, 0.5],
        }),
        ..Default::default()
    });
    let problems = exporter.configure(&handlers);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0]
            .to_string()
            .starts_with("prom.prometheus.istio-system: metrics[0].buckets:"),
        "{problems:?}"
    );
    assert!(!exporter.render().contains("istio_request_duration_seconds"));
}

#[test]
fn stdio_levels_and_console_form() {
    let params = StdioParams {
        severity_levels: BTreeMap::from([("warning".to_owned(), 1), ("bad".to_owned(), 2)]),
        output_as_json: Some(false),
        output_level: Some(Level::Warning),
        ..StdioParams::default()
    };
    assert_eq!(stdio::level_of(&params, "warning"), Level::Warning);
    assert_eq!(stdio::level_of(&params, "bad"), Level::Error);
    assert_eq!(stdio::level_of(&params, "ERROR"), Level::Error);
    assert_eq!(stdio::level_of(&params, "whatever"), Level::Info);
    let entry = |severity: &str| keel_mixer::Instance {
        name: "l.logentry.istio-system".into(),
        body: InstanceBody::LogEntry {
            variables: BTreeMap::from([("code".to_owned(), Value::Int64(503))]),
            timestamp: UNIX_EPOCH + Duration::from_secs(1_543_222_846),
            severity: severity.to_owned(),
        },
    };
    assert_eq!(
        stdio::format(&params, &entry("info")),
        None,
        "below outputLevel"
    );
    let line = stdio::format(&params, &entry("bad")).expect("error line");
    assert_eq!(
        line.text,
        "2018-11-26T09:00:46.000000Z\terror\tl.logentry.istio-system\t{\"code\":503}"
    );
}

#[test]
fn default_telemetry_gives_istio_standard_metrics_for_both_reporters() {
    let resources = load_file("install/telemetry.yaml");
    let plan = Plan::build(&resources, "istio-system", &Manifest::istio());
    assert!(plan.problems.is_empty(), "{:?}", plan.problems);
    let mut exporter = Exporter::new();
    assert!(exporter.configure(&plan.handlers).is_empty());
    let send = |exporter: &mut Exporter, bag: &BTreeMap<String, Value>| {
        let outcome = plan.dispatch(bag);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert!(
            outcome.match_errors.is_empty(),
            "{:?}",
            outcome.match_errors
        );
        for d in &outcome.dispatches {
            let errors = exporter.record(&plan.handlers[d.handler].name, &d.instances);
            assert!(errors.is_empty(), "{errors:?}");
        }
        outcome.dispatches.len()
    };
    let mut http = report("productpage", "details", 200, 178);
    http.insert("context.protocol".to_owned(), Value::String("http".into()));
    http.insert(
        "destination.service.host".to_owned(),
        Value::String("details.default.svc.cluster.local".into()),
    );
    http.insert(
        "destination.service.name".to_owned(),
        Value::String("details".into()),
    );
    http.insert(
        "destination.service.namespace".to_owned(),
        Value::String("default".into()),
    );
    http.insert(
        "destination.workload.namespace".to_owned(),
        Value::String("default".into()),
    );
    http.insert(
        "source.workload.namespace".to_owned(),
        Value::String("default".into()),
    );
    http.insert("request.size".to_owned(), Value::Int64(0));
    // Both ends report the same call: three from the server side, two from the client side.
    for _ in 0..3 {
        assert_eq!(send(&mut exporter, &http), 2, "prometheus and stdio");
    }
    let mut client_side = http.clone();
    client_side.insert(
        "context.reporter.kind".to_owned(),
        Value::String("outbound".into()),
    );
    for _ in 0..2 {
        send(&mut exporter, &client_side);
    }
    // A health probe is not counted.
    let mut probe = http.clone();
    probe.insert(
        "request.useragent".to_owned(),
        Value::String("kube-probe/1.30".into()),
    );
    assert_eq!(send(&mut exporter, &probe), 1, "stdio only");

    let text = exporter.render();
    let labels = |reporter: &str, policy: &str| {
        format!(
            "{{reporter=\"{reporter}\",source_workload=\"productpage-v1\",source_workload_namespace=\"default\",source_principal=\"unknown\",source_app=\"productpage\",source_version=\"v1\",destination_workload=\"details-v1\",destination_workload_namespace=\"default\",destination_principal=\"unknown\",destination_app=\"details\",destination_version=\"v1\",destination_service=\"details.default.svc.cluster.local\",destination_service_name=\"details\",destination_service_namespace=\"default\",request_protocol=\"http\",response_code=\"200\",connection_security_policy=\"{policy}\"}}"
        )
    };
    let server = labels("destination", "none");
    let client = labels("source", "unknown");
    assert!(
        text.contains(&format!("istio_requests_total{server} 3\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("istio_requests_total{client} 2\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("istio_request_duration_seconds_count{server} 3\n")),
        "{text}"
    );
    // 2.245269ms falls in the 5ms bucket, the first one.
    let bucket = server.replacen('}', ",le=\"0.005\"}", 1);
    assert!(
        text.contains(&format!(
            "istio_request_duration_seconds_bucket{bucket} 3\n"
        )),
        "{text}"
    );
    // 178 bytes: above 100, within 1000.
    let le100 = server.replacen('}', ",le=\"100\"}", 1);
    let le1000 = server.replacen('}', ",le=\"1000\"}", 1);
    assert!(
        text.contains(&format!("istio_response_bytes_bucket{le100} 0\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("istio_response_bytes_bucket{le1000} 3\n")),
        "{text}"
    );

    let mut tcp = report("reviews", "ratings", 0, 0);
    tcp.insert("context.protocol".to_owned(), Value::String("tcp".into()));
    tcp.insert("connection.sent.bytes".to_owned(), Value::Int64(1000));
    tcp.insert("connection.received.bytes".to_owned(), Value::Int64(10));
    send(&mut exporter, &tcp);
    send(&mut exporter, &tcp);
    let text = exporter.render();
    let sent: f64 = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(sent, 2000.0, "{text}");
    assert!(
        !text.contains(
            "istio_requests_total{reporter=\"destination\",source_workload=\"reviews-v1\""
        )
    );
}
