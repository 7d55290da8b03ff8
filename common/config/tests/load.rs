//! Loading behaviours beyond single documents: JSON input, `kind: List`, snake_case field
//! names, default namespaces, and the cross-reference warnings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use keel_config::{Kind, Severity, Spec, load_str};

#[test]
fn json_and_lists_load_like_yaml() {
    let json = r#"{"apiVersion": "v1", "kind": "List", "items": [
      {"apiVersion": "networking.istio.io/v1alpha3", "kind": "DestinationRule",
       "metadata": {"name": "reviews"},
       "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}},
      {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bookinfo", "labels": {"istio-injection": "enabled"}}}
    ]}"#;
    let report = load_str("list.json", json, Some("default"));
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    assert_eq!(report.resources.len(), 2);
    assert_eq!(report.resources[0].namespace(), "default");
    // Cluster-scoped kinds get no namespace.
    assert_eq!(report.resources[1].kind, Kind::Namespace);
    assert_eq!(report.resources[1].namespace(), "");
}

#[test]
fn an_error_inside_a_list_names_the_item() {
    let yaml = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: networking.istio.io/v1alpha3\n  kind: DestinationRule\n  metadata:\n    name: reviews\n  spec:\n    hots: reviews\n";
    let report = load_str("list.yaml", yaml, None);
    let errors: Vec<_> = report.errors().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        [
            "list.yaml:9:5: error: document 1 (DestinationRule reviews): items[0].spec.hots: unknown field \"hots\""
        ]
    );
}

#[test]
fn snake_case_and_camel_case_names_are_both_accepted() {
    let yaml = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  traffic_policy:
    connection_pool:
      http:
        http1_max_pending_requests: 10
        maxRequestsPerConnection: 1
    outlier_detection:
      consecutive_errors: 5
      baseEjectionTime: 30s
";
    let report = load_str("dr.yaml", yaml, None);
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    let Spec::DestinationRule(dr) = &report.resources[0].spec else {
        panic!()
    };
    let tp = dr.traffic_policy.as_ref().unwrap();
    let http = tp.connection_pool.as_ref().unwrap().http.as_ref().unwrap();
    assert_eq!(http.http1_max_pending_requests, Some(10));
    assert_eq!(http.max_requests_per_connection, Some(1));
    let od = tp.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_errors, Some(5));
    assert_eq!(od.base_ejection_time.unwrap().as_std().as_secs(), 30);
}

#[test]
fn references_that_resolve_to_nothing_are_warnings() {
    let yaml = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels: {version: v1}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts: [reviews]
  gateways: [bookinfo-gateway, mesh]
  http:
  - route:
    - destination:
        host: reviews.default.svc.cluster.local
        subset: v1
      weight: 50
    - destination:
        host: reviews
        subset: v9
      weight: 50
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: other-gateway
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ['*']
";
    let report = load_str("refs.yaml", yaml, Some("default"));
    assert!(report.is_ok(), "warnings do not refuse a document");
    let warnings: Vec<_> = report.warnings().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "refs.yaml:26:9: warning: document 2 (VirtualService default/reviews): spec.http[0].route[1].destination.subset: subset \"v9\" is not defined by DestinationRule default/reviews",
            "refs.yaml:17:14: warning: document 2 (VirtualService default/reviews): spec.gateways[0]: gateway \"bookinfo-gateway\" is not defined here",
        ]
    );
    assert!(report.warnings().all(|w| w.severity == Severity::Warning));
}

#[test]
fn old_deployment_groups_get_their_defaults() {
    let yaml = "apiVersion: extensions/v1beta1
kind: Deployment
metadata:
  name: details-v1
spec:
  replicas: 1
  template:
    metadata:
      labels: {app: details, version: v1}
    spec:
      containers:
      - name: details
        image: istio/examples-bookinfo-details-v1:1.8.0
        ports:
        - containerPort: 9080
";
    let report = load_str("d.yaml", yaml, Some("default"));
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    let Spec::Deployment(d) = &report.resources[0].spec else {
        panic!()
    };
    let sel = d
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(sel.get("app").map(String::as_str), Some("details"));
    // The document as written is kept for `get -o yaml`.
    assert_eq!(report.resources[0].raw["apiVersion"], "extensions/v1beta1");
}
