//! The pure translation, checked directly: Istio's Bookinfo config in, Envoy resources out.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{RouteAction, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault;
use keel_config::store::Snapshot;
use keel_pilot::proxy::Proxy;
use keel_pilot::snapshot::{
    CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, Mesh, ROUTE_TYPE, proxy_snapshot,
};
use prost::Message;

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

fn bookinfo(extra: &[&str]) -> Mesh {
    let samples = shared().join("istio-samples/1.0/samples/bookinfo");
    let mut texts =
        vec![std::fs::read_to_string(samples.join("platform/kube/bookinfo.yaml")).unwrap()];
    texts.push(
        std::fs::read_to_string(samples.join("networking/destination-rule-all.yaml")).unwrap(),
    );
    texts.push(std::fs::read_to_string(samples.join("networking/bookinfo-gateway.yaml")).unwrap());
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
        texts.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {app}-{v}, labels: {{app: {app}, version: {v}}}}}\nspec:\n  containers: [{{name: {app}, image: x}}]\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n",
            i + 1
        ));
    }
    texts.push("apiVersion: v1\nkind: Pod\nmetadata: {name: gw, namespace: istio-system, labels: {istio: ingressgateway}}\nspec:\n  containers: [{name: p, image: x}]\nstatus: {phase: Running, podIP: 10.0.0.100}\n".to_owned());
    for e in extra {
        // A file of the samples' networking directory, or a document given inline.
        if e.contains('\n') {
            texts.push((*e).to_owned());
        } else {
            texts.push(std::fs::read_to_string(samples.join("networking").join(e)).unwrap());
        }
    }
    let mut resources = std::collections::BTreeMap::new();
    for t in texts {
        let report = keel_config::load_str("t.yaml", &t, Some("default"));
        assert!(report.is_ok(), "{:?}", report.diagnostics);
        for r in report.resources {
            resources.insert(r.key(), Arc::new(r));
        }
    }
    Mesh::new(Snapshot {
        version: 1,
        resources,
    })
}

fn decode<M: Message + Default>(snap: &keel_xds::XdsSnapshot, type_url: &str, name: &str) -> M {
    let any = snap.types[type_url].get(name).unwrap_or_else(|| {
        panic!(
            "no {type_url} named {name}: {:?}",
            snap.types[type_url]
                .iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        )
    });
    M::decode(any.value.as_slice()).unwrap()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

fn sidecar() -> Proxy {
    Proxy::parse("sidecar~10.0.0.3~reviews-v1.default~default.svc.cluster.local").unwrap()
}

fn route_action(rc: &RouteConfiguration, vhost_contains: &str, i: usize) -> RouteAction {
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name.contains(vhost_contains))
        .unwrap();
    match vh.routes[i].action.clone().unwrap() {
        Action::Route(a) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

#[test]
fn sidecar_clusters_endpoints_and_listeners() {
    let mesh = bookinfo(&[]);
    let snap = proxy_snapshot(&mesh, &sidecar());
    let names: Vec<&str> = snap.types[CLUSTER_TYPE]
        .iter()
        .map(|(k, _)| k)
        .map(|k| &**k)
        .collect();
    for want in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v3|reviews.default.svc.cluster.local",
        "outbound|9080|v2-mysql|ratings.default.svc.cluster.local",
        "inbound|9080||reviews.default.svc.cluster.local",
        "BlackHoleCluster",
        "PassthroughCluster",
    ] {
        assert!(names.contains(&want), "missing cluster {want}: {names:?}");
    }
    let cla: ClusterLoadAssignment = decode(
        &snap,
        ENDPOINT_TYPE,
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    );
    let eps = &cla.endpoints[0].lb_endpoints;
    assert_eq!(eps.len(), 1, "only the v2 pod");
    let all: ClusterLoadAssignment = decode(
        &snap,
        ENDPOINT_TYPE,
        "outbound|9080||reviews.default.svc.cluster.local",
    );
    assert_eq!(all.endpoints[0].lb_endpoints.len(), 3);

    let outbound: Listener = decode(&snap, LISTENER_TYPE, "virtualOutbound");
    assert_eq!(outbound.use_original_dst.map(|b| b.value), Some(true));
    let port: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_9080");
    assert_eq!(port.bind_to_port.map(|b| b.value), Some(false));
    let _inbound: Listener = decode(&snap, LISTENER_TYPE, "10.0.0.3_9080");
    let _capture: Listener = decode(&snap, LISTENER_TYPE, "virtualInbound");
}

#[test]
fn sidecar_routes_default_and_from_virtual_services() {
    // No VirtualService: every version, round robin.
    let snap = proxy_snapshot(&bookinfo(&[]), &sidecar());
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with(REVIEWS))
        .unwrap();
    for d in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default.svc",
        REVIEWS,
        "reviews.default.svc.cluster.local:9080",
    ] {
        assert!(
            vh.domains.iter().any(|x| x == d),
            "domain {d} missing: {:?}",
            vh.domains
        );
    }
    let a = route_action(&rc, REVIEWS, 0);
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!(
            "outbound|9080||{REVIEWS}"
        )))
    );

    // jason to v2, the rest to v1, in that order.
    let snap = proxy_snapshot(
        &bookinfo(&["virtual-service-reviews-test-v2.yaml"]),
        &sidecar(),
    );
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with(REVIEWS))
        .unwrap();
    let m = vh.routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.headers[0].name, "end-user");
    assert_eq!(
        route_action(&rc, REVIEWS, 0).cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!(
            "outbound|9080|v2|{REVIEWS}"
        )))
    );
    assert_eq!(
        route_action(&rc, REVIEWS, 1).cluster_specifier,
        Some(ClusterSpecifier::Cluster(format!(
            "outbound|9080|v1|{REVIEWS}"
        )))
    );

    // A weighted split.
    let snap = proxy_snapshot(
        &bookinfo(&["virtual-service-reviews-50-v3.yaml"]),
        &sidecar(),
    );
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "9080");
    let Some(ClusterSpecifier::WeightedClusters(w)) =
        route_action(&rc, REVIEWS, 0).cluster_specifier
    else {
        panic!("expected weighted clusters")
    };
    let got: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        got,
        [
            (format!("outbound|9080|v1|{REVIEWS}"), 50),
            (format!("outbound|9080|v3|{REVIEWS}"), 50)
        ]
    );
}

#[test]
fn faults_become_the_fault_filters_route_config() {
    let snap = proxy_snapshot(
        &bookinfo(&["virtual-service-ratings-test-delay.yaml"]),
        &sidecar(),
    );
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with("ratings."))
        .unwrap();
    let fault: HttpFault = Message::decode(
        vh.routes[0].typed_per_filter_config["envoy.filters.http.fault"]
            .value
            .as_slice(),
    )
    .unwrap();
    let delay = fault.delay.unwrap();
    assert_eq!(delay.percentage.unwrap().numerator, 1_000_000);
    let Some(FaultDelaySecifier::FixedDelay(d)) = delay.fault_delay_secifier else {
        panic!()
    };
    assert_eq!(d.seconds, 7);
    assert!(
        vh.routes[1].typed_per_filter_config.is_empty(),
        "only jason's route is delayed"
    );
}

#[test]
fn destination_rule_policies_reach_the_clusters() {
    let snap = proxy_snapshot(&bookinfo(&["destination-rule-reviews.yaml"]), &sidecar());
    // destination-rule-reviews replaces destination-rule-all's `reviews` (same name): RANDOM,
    // for the host's cluster and every subset's.
    for subset in ["", "v1", "v3"] {
        let c: Cluster = decode(
            &snap,
            CLUSTER_TYPE,
            &format!("outbound|9080|{subset}|{REVIEWS}"),
        );
        assert_eq!(c.lb_policy, LbPolicy::Random as i32, "subset {subset:?}");
    }
    let other: Cluster = decode(
        &snap,
        CLUSTER_TYPE,
        "outbound|9080|v1|ratings.default.svc.cluster.local",
    );
    assert_eq!(other.lb_policy, LbPolicy::RoundRobin as i32);
}

#[test]
fn gateways_get_their_servers_and_bound_routes() {
    let gw =
        Proxy::parse("router~10.0.0.100~gw.istio-system~istio-system.svc.cluster.local").unwrap();
    let snap = proxy_snapshot(&bookinfo(&[]), &gw);
    let l: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_80");
    assert_eq!(l.bind_to_port, None, "gateway listeners bind");
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "http.80");
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["*"]);
    let paths: Vec<String> = vh
        .routes
        .iter()
        .map(
            |r| match r.r#match.as_ref().unwrap().path_specifier.clone().unwrap() {
                PathSpecifier::Path(p) => format!("={p}"),
                PathSpecifier::Prefix(p) => format!("{p}*"),
                other => format!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(
        paths,
        ["=/productpage", "=/login", "=/logout", "/api/v1/products*"]
    );
    let a = route_action(&rc, "*", 0);
    assert_eq!(
        a.cluster_specifier,
        Some(ClusterSpecifier::Cluster(
            "outbound|9080||productpage.default.svc.cluster.local".into()
        ))
    );
    // Mesh-only VirtualServices do not leak into the gateway.
    let sidecar_only = proxy_snapshot(&bookinfo(&["virtual-service-all-v1.yaml"]), &gw);
    let rc: RouteConfiguration = decode(&sidecar_only, ROUTE_TYPE, "http.80");
    assert_eq!(rc.virtual_hosts.len(), 1);
}

#[test]
fn cors_consistent_hash_and_tls_origination() {
    let mut mesh = bookinfo(&[]);
    let extra = "apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      consistentHash: {httpHeaderName: x-user}
    tls: {mode: SIMPLE, sni: ratings.example}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings, subset: v1}}]
    corsPolicy:
      allowOrigin: [https://bookinfo.example]
      allowMethods: [GET, POST]
      maxAge: 24h
";
    let report = keel_config::load_str("extra.yaml", extra, Some("default"));
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    let mut resources = mesh.config.resources.clone();
    for r in report.resources {
        resources.insert(r.key(), Arc::new(r));
    }
    mesh = Mesh::new(Snapshot {
        version: 2,
        resources,
    });
    let snap = proxy_snapshot(&mesh, &sidecar());
    let c: Cluster = decode(
        &snap,
        CLUSTER_TYPE,
        "outbound|9080|v1|ratings.default.svc.cluster.local",
    );
    assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
    assert_eq!(
        c.transport_socket.unwrap().name,
        "envoy.transport_sockets.tls"
    );
    let rc: RouteConfiguration = decode(&snap, ROUTE_TYPE, "9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name.starts_with("ratings."))
        .unwrap();
    let Some(Action::Route(a)) = vh.routes[0].action.clone() else {
        panic!()
    };
    assert_eq!(a.hash_policy.len(), 1);
    let cors: envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy =
        Message::decode(
            vh.routes[0].typed_per_filter_config["envoy.filters.http.cors"]
                .value
                .as_slice(),
        )
        .unwrap();
    assert_eq!(cors.allow_methods, "GET,POST");
    assert_eq!(cors.max_age, "86400");
}

#[test]
fn a_new_pod_changes_only_the_endpoints() {
    let mesh = bookinfo(&[]);
    let before = proxy_snapshot(&mesh, &sidecar());
    let mut resources = mesh.config.resources.clone();
    let report = keel_config::load_str(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews-v2-b, labels: {app: reviews, version: v2}}\nspec:\n  containers: [{name: reviews, image: x}]\nstatus: {phase: Running, podIP: 10.0.0.50}\n",
        Some("default"),
    );
    for r in report.resources {
        resources.insert(r.key(), Arc::new(r));
    }
    let after = proxy_snapshot(
        &Mesh::new(Snapshot {
            version: 2,
            resources,
        }),
        &sidecar(),
    );
    for t in [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE] {
        assert_eq!(
            before.types[t].version, after.types[t].version,
            "{t} must not be pushed"
        );
    }
    assert_ne!(
        before.types[ENDPOINT_TYPE].version,
        after.types[ENDPOINT_TYPE].version
    );
    let cla: ClusterLoadAssignment = decode(
        &after,
        ENDPOINT_TYPE,
        "outbound|9080|v2|reviews.default.svc.cluster.local",
    );
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 2);
}

/// The access log config of a listener's first filter (HTTP connection manager).
fn access_log_names(l: &Listener) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!("no typed config");
    };
    let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    hcm.access_log
        .iter()
        .map(|log| {
            let Some(
                envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType::TypedConfig(
                    a,
                ),
            ) = &log.config_type
            else {
                panic!("no access log config");
            };
            let c = HttpGrpcAccessLogConfig::decode(a.value.as_slice()).unwrap();
            let common = c.common_config.unwrap();
            let cluster = match common.grpc_service.unwrap().target_specifier.unwrap() {
                TargetSpecifier::EnvoyGrpc(g) => g.cluster_name,
                other => panic!("{other:?}"),
            };
            (common.log_name, cluster)
        })
        .collect()
}

#[test]
fn telemetry_sends_access_logs_to_mixer_named_by_reporter() {
    let plain = bookinfo(&[]);
    let snap = proxy_snapshot(&plain, &sidecar());
    assert!(access_log_names(&decode(&snap, LISTENER_TYPE, "0.0.0.0_9080")).is_empty());
    assert!(!snap.types[CLUSTER_TYPE].contains("mixer_telemetry"));

    let mesh = bookinfo(&[]).with_telemetry(Some(("istio-telemetry.istio-system".into(), 9091)));
    let snap = proxy_snapshot(&mesh, &sidecar());
    let c: Cluster = decode(&snap, CLUSTER_TYPE, "mixer_telemetry");
    let cla = c.load_assignment.unwrap();
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    assert!(
        !c.typed_extension_protocol_options.is_empty(),
        "gRPC needs HTTP/2 upstream options"
    );
    assert_eq!(
        access_log_names(&decode(&snap, LISTENER_TYPE, "0.0.0.0_9080")),
        [("outbound".to_owned(), "mixer_telemetry".to_owned())]
    );
    assert_eq!(
        access_log_names(&decode(&snap, LISTENER_TYPE, "10.0.0.3_9080")),
        [("inbound".to_owned(), "mixer_telemetry".to_owned())]
    );
    assert!(keel_pilot::server::parse_host_port("nope").is_err());
    assert!(keel_pilot::server::parse_host_port("mixer:0").is_err());
    assert_eq!(
        keel_pilot::server::parse_host_port("127.0.0.1:9091"),
        Ok(("127.0.0.1".to_owned(), 9091))
    );
}

/// The HTTP filters of a listener's connection manager, by name, and its inline routes.
fn hcm_of(
    l: &Listener,
) -> envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager{
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    let Some(ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type else {
        panic!("no typed config");
    };
    envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(any.value.as_slice()).unwrap()
}

#[test]
fn policy_checks_every_inbound_request_naming_the_service() {
    use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
        ExtAuthz, ExtAuthzPerRoute, ext_authz, ext_authz_per_route,
    };
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
    let names = |l: &Listener| -> Vec<String> {
        hcm_of(l)
            .http_filters
            .iter()
            .map(|f| f.name.clone())
            .collect()
    };
    // Off: no filter, no cluster.
    let snap = proxy_snapshot(&bookinfo(&[]), &sidecar());
    assert!(
        !names(&decode(&snap, LISTENER_TYPE, "10.0.0.3_9080"))
            .contains(&"envoy.filters.http.ext_authz".to_owned())
    );
    assert!(!snap.types[CLUSTER_TYPE].contains("mixer_policy"));

    let mesh = bookinfo(&[]).with_policy(Some(("istio-policy.istio-system".into(), 9091)));
    let snap = proxy_snapshot(&mesh, &sidecar());
    let c: Cluster = decode(&snap, CLUSTER_TYPE, "mixer_policy");
    assert!(
        !c.typed_extension_protocol_options.is_empty(),
        "gRPC needs HTTP/2"
    );
    // Inbound: ext_authz first, failing closed with 503.
    let inbound = hcm_of(&decode(&snap, LISTENER_TYPE, "10.0.0.3_9080"));
    assert_eq!(inbound.http_filters[0].name, "envoy.filters.http.ext_authz");
    let Some(ConfigType::TypedConfig(a)) = &inbound.http_filters[0].config_type else {
        panic!("no ext_authz config");
    };
    let authz = ExtAuthz::decode(a.value.as_slice()).unwrap();
    assert!(!authz.failure_mode_allow);
    assert_eq!(authz.status_on_error.unwrap().code, 503);
    match authz.services.unwrap() {
        ext_authz::Services::GrpcService(g) => match g.target_specifier.unwrap() {
            envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(
                e,
            ) => {
                assert_eq!(e.cluster_name, "mixer_policy")
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // The inbound route tells mixer which service is called.
    let Some(RouteSpecifier::RouteConfig(rc)) = inbound.route_specifier else {
        panic!("inbound routes are inline");
    };
    let per_route =
        &rc.virtual_hosts[0].routes[0].typed_per_filter_config["envoy.filters.http.ext_authz"];
    let settings = match ExtAuthzPerRoute::decode(per_route.value.as_slice())
        .unwrap()
        .r#override
    {
        Some(ext_authz_per_route::Override::CheckSettings(s)) => s,
        other => panic!("{other:?}"),
    };
    assert!(
        settings.context_extensions["destination.service.host"]
            .ends_with(".default.svc.cluster.local")
    );
    // Outbound (client side) is not checked, as in Istio 1.0's defaults.
    assert!(
        !names(&decode(&snap, LISTENER_TYPE, "0.0.0.0_9080"))
            .contains(&"envoy.filters.http.ext_authz".to_owned())
    );
}

#[test]
fn the_mesh_config_map_turns_policy_checks_off_and_on() {
    let has_authz = |mesh: &Mesh| {
        let snap = proxy_snapshot(mesh, &sidecar());
        snap.types[CLUSTER_TYPE].contains("mixer_policy")
    };
    let cm = |mesh: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\ndata:\n  mesh: |-\n{}",
            mesh.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        )
    };
    let flag = Some(("10.88.0.1".to_owned(), 9091));
    // The flag alone: on.
    let (m, problem) = bookinfo(&[]).with_policy(flag.clone()).with_mesh_config();
    assert!(has_authz(&m) && problem.is_none());
    // Istio's switch in the ConfigMap wins over the flag.
    let off = cm("disablePolicyChecks: true\nmixerReportServer: 10.88.0.1:9091");
    let (m, problem) = bookinfo(&[&off])
        .with_policy(flag.clone())
        .with_mesh_config();
    assert!(!has_authz(&m) && problem.is_none());
    assert_eq!(m.telemetry, Some(("10.88.0.1".to_owned(), 9091)));
    // Turned on by the ConfigMap alone, with its check server.
    let on = cm("disablePolicyChecks: false\nmixerCheckServer: 10.0.0.9:9091");
    let (m, _) = bookinfo(&[&on]).with_mesh_config();
    assert_eq!(m.policy, Some(("10.0.0.9".to_owned(), 9091)));
    assert!(has_authz(&m));
    // A mesh config that does not parse changes nothing and says why.
    let bad = cm("disablePolicyChecks: maybe");
    let (m, problem) = bookinfo(&[&bad]).with_policy(flag).with_mesh_config();
    assert!(has_authz(&m));
    assert!(problem.is_some_and(|p| p.contains("disablePolicyChecks")));
    // accessLogFile: every listener's connection manager logs to it in Envoy's default
    // format; a relative path is refused.
    let logged = cm("accessLogFile: /dev/stdout");
    let (m, problem) = bookinfo(&[&logged]).with_mesh_config();
    assert!(problem.is_none());
    let snap = proxy_snapshot(&m, &sidecar());
    // The access log is nested in each connection manager's encoded config.
    let needle = b"envoy.extensions.access_loggers.file.v3.FileAccessLog";
    let with_file_log = snap.types[LISTENER_TYPE]
        .iter()
        .map(|(_, v)| v)
        .filter(|l| l.value.windows(needle.len()).any(|w| w == needle))
        .count();
    assert!(with_file_log > 0, "no file access log in the listeners");
    let relative = cm("accessLogFile: logs/access.log");
    let (m, problem) = bookinfo(&[&relative]).with_mesh_config();
    assert!(problem.is_some_and(|p| p.contains("accessLogFile")));
    assert_eq!(m.access_log_file, None);
}

#[test]
fn https_gateway_servers_terminate_tls_with_their_certificate_files() {
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    let tls_gateway = "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: secure, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: /etc/istio/ingressgateway-certs/tls.crt, privateKey: /etc/istio/ingressgateway-certs/tls.key}\n    hosts: ['*']\n  - port: {number: 8443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: ['*']\n";
    let gw =
        Proxy::parse("router~10.0.0.100~gw.istio-system~istio-system.svc.cluster.local").unwrap();
    let snap = proxy_snapshot(&bookinfo(&[tls_gateway]), &gw);
    let l: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_443");
    let ts = l.filter_chains[0].transport_socket.clone().unwrap();
    let Some(ConfigType::TypedConfig(any)) = ts.config_type else {
        panic!("no TLS config")
    };
    let ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
    let common = ctx.common_tls_context.unwrap();
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    let cert = &common.tls_certificates[0];
    let file = |d: &Option<envoy_types::pb::envoy::config::core::v3::DataSource>| match d
        .as_ref()
        .and_then(|d| d.specifier.clone())
    {
        Some(Specifier::Filename(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        file(&cert.certificate_chain),
        "/etc/istio/ingressgateway-certs/tls.crt"
    );
    assert_eq!(
        file(&cert.private_key),
        "/etc/istio/ingressgateway-certs/tls.key"
    );
    // PASSTHROUGH with no tls route bound: nothing to forward, so no listener.
    assert!(!snap.types[LISTENER_TYPE].contains("0.0.0.0_8443"),);
    let _: RouteConfiguration = decode(&snap, ROUTE_TYPE, "http.443");
}

#[test]
fn gateways_pass_tls_through_by_sni_and_tell_https_servers_apart_by_name() {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
    let config = "apiVersion: networking.istio.io/v1alpha3\nkind: Gateway\nmetadata: {name: edge, namespace: istio-system}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 443, name: https-a, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: /a.crt, privateKey: /a.key}\n    hosts: [a.example.com]\n  - port: {number: 443, name: https-b, protocol: HTTPS}\n    tls: {mode: SIMPLE, serverCertificate: /b.crt, privateKey: /b.key}\n    hosts: [b.example.com]\n  - port: {number: 8443, name: tls, protocol: TLS}\n    tls: {mode: PASSTHROUGH}\n    hosts: [nginx.example.com]\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: ['*']\n---\napiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: l4, namespace: default}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/edge]\n  tls:\n  - match: [{port: 8443, sniHosts: [nginx.example.com]}]\n    route: [{destination: {host: productpage, port: {number: 9080}}}]\n  tcp:\n  - match: [{port: 31400}]\n    route:\n    - {destination: {host: reviews, subset: v1}, weight: 0}\n    - {destination: {host: ratings}, weight: 100}\n";
    let gw =
        Proxy::parse("router~10.0.0.100~gw.istio-system~istio-system.svc.cluster.local").unwrap();
    let snap = proxy_snapshot(&bookinfo(&[config]), &gw);
    let tcp_cluster = |l: &Listener, i: usize| {
        let f = &l.filter_chains[i].filters[0];
        let Some(envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
            any,
        )) = &f.config_type
        else {
            panic!("no typed config")
        };
        match TcpProxy::decode(any.value.as_slice())
            .unwrap()
            .cluster_specifier
        {
            Some(ClusterSpecifier::Cluster(c)) => c,
            other => panic!("{other:?}"),
        }
    };
    // Two HTTPS servers on 443: a chain per server, chosen by SNI, each with its certificate.
    let https: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_443");
    assert_eq!(
        https.listener_filters[0].name,
        "envoy.filters.listener.tls_inspector"
    );
    let names: Vec<Vec<String>> = https
        .filter_chains
        .iter()
        .map(|c| c.filter_chain_match.clone().unwrap().server_names)
        .collect();
    assert_eq!(names, [["a.example.com"], ["b.example.com"]]);
    assert!(
        https
            .filter_chains
            .iter()
            .all(|c| c.transport_socket.is_some())
    );
    // PASSTHROUGH: the SNI picks the chain, which proxies TCP to the route's destination.
    let pass: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_8443");
    assert_eq!(pass.listener_filters.len(), 1);
    assert_eq!(
        pass.filter_chains[0]
            .filter_chain_match
            .clone()
            .unwrap()
            .server_names,
        ["nginx.example.com"]
    );
    assert!(pass.filter_chains[0].transport_socket.is_none());
    assert_eq!(
        tcp_cluster(&pass, 0),
        "outbound|9080||productpage.default.svc.cluster.local"
    );
    // TCP: the zero-weight destination is left out (Envoy takes weights of 1 or more).
    let tcp: Listener = decode(&snap, LISTENER_TYPE, "0.0.0.0_31400");
    assert!(tcp.listener_filters.is_empty());
    assert_eq!(
        tcp_cluster(&tcp, 0),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
}

/// A new configuration reuses the previous one's resources where they come out the same:
/// the ADS server then tells them unchanged by pointer and sends only what changed.
#[test]
fn a_new_configuration_keeps_unchanged_resources_shared() {
    const ENDPOINT_TYPE: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    const LISTENER_TYPE: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    let before = bookinfo(&[]);
    let first = proxy_snapshot(&before, &sidecar());
    let entry = "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {name: ext}\nspec:\n  hosts: [ext.example.com]\n  ports: [{number: 80, name: http, protocol: HTTP}]\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{address: 192.0.2.7}]\n";
    let after = bookinfo(&[entry]).reusing(&before);
    let second = proxy_snapshot(&after, &sidecar());
    let same = |type_url: &str, name: &str| {
        Arc::ptr_eq(&first.types[type_url][name], &second.types[type_url][name])
    };
    let reviews = "outbound|9080|v1|reviews.default.svc.cluster.local";
    assert!(
        same(CLUSTER_TYPE, reviews),
        "an unchanged cluster is shared"
    );
    assert!(same(
        ENDPOINT_TYPE,
        "outbound|9080||reviews.default.svc.cluster.local"
    ));
    assert!(same(LISTENER_TYPE, "0.0.0.0_9080"));
    let new = "outbound|80||ext.example.com";
    assert!(second.types[CLUSTER_TYPE].contains(new));
    assert!(!first.types[CLUSTER_TYPE].contains(new));
    assert_ne!(
        first.types[CLUSTER_TYPE].version,
        second.types[CLUSTER_TYPE].version
    );
    // Without reuse the same content comes in new allocations.
    let fresh = proxy_snapshot(&bookinfo(&[entry]), &sidecar());
    assert!(!Arc::ptr_eq(
        &first.types[CLUSTER_TYPE][reviews],
        &fresh.types[CLUSTER_TYPE][reviews]
    ));
}

/// A configuration replaced before any proxy was computed from it (within the debounce)
/// passes on what it would have reused: the one after it still shares unchanged resources
/// with what proxies hold.
#[test]
fn a_skipped_configuration_does_not_break_reuse() {
    let held = bookinfo(&[]);
    let first = proxy_snapshot(&held, &sidecar());
    let entry = |name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1alpha3\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example.com]\n  ports: [{{number: 80, name: http, protocol: HTTP}}]\n  resolution: STATIC\n  location: MESH_EXTERNAL\n  endpoints: [{{address: 192.0.2.7}}]\n"
        )
    };
    let (a, b) = (entry("a"), entry("b"));
    let skipped = bookinfo(&[&a]).reusing(&held);
    let next = bookinfo(&[&a, &b]).reusing(&skipped);
    let second = proxy_snapshot(&next, &sidecar());
    let reviews = "outbound|9080|v1|reviews.default.svc.cluster.local";
    assert!(Arc::ptr_eq(
        &first.types[CLUSTER_TYPE][reviews],
        &second.types[CLUSTER_TYPE][reviews]
    ));
    assert!(second.types[CLUSTER_TYPE].contains("outbound|80||b.example.com"));
}
