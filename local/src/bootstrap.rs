//! The bootstrap an Envoy sidecar or gateway starts from, as Istio's sidecar agent wrote it:
//! the node id pilot recognises (`sidecar~IP~POD.NS~NS.svc.cluster.local`), ADS to pilot,
//! the admin API on loopback 15000, and Prometheus stats on 15090.

use std::net::SocketAddr;

use serde_json::{Value, json};

pub const ADMIN_PORT: u16 = 15000;
pub const STATS_PORT: u16 = 15090;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sidecar,
    /// A gateway; Istio's node type for it is `router`.
    Router,
}

/// The node id pilot parses.
pub fn node_id(role: Role, ip: &str, pod: &str, namespace: &str) -> String {
    let kind = match role {
        Role::Sidecar => "sidecar",
        Role::Router => "router",
    };
    format!("{kind}~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local")
}

/// Envoy's bootstrap (JSON is YAML; Envoy reads either).
pub fn envoy_bootstrap(node_id: &str, service_cluster: &str, pilot: SocketAddr) -> Value {
    let socket =
        |ip: String, port: u16| json!({"socket_address": {"address": ip, "port_value": port}});
    json!({
        "node": {"id": node_id, "cluster": service_cluster},
        "admin": {"address": socket("127.0.0.1".into(), ADMIN_PORT)},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(pilot.ip().to_string(), pilot.port())}}]}],
                    },
                },
                {
                    "name": "prometheus_stats",
                    "type": "STATIC",
                    "connect_timeout": "0.25s",
                    "load_assignment": {
                        "cluster_name": "prometheus_stats",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket("127.0.0.1".into(), ADMIN_PORT)}}]}],
                    },
                },
            ],
            "listeners": [{
                "name": "prometheus_stats",
                "address": socket("0.0.0.0".into(), STATS_PORT),
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "stats",
                        "route_config": {"virtual_hosts": [{
                            "name": "backend",
                            "domains": ["*"],
                            "routes": [{"match": {"prefix": "/stats/prometheus"}, "route": {"cluster": "prometheus_stats"}}],
                        }]},
                        "http_filters": [{
                            "name": "envoy.filters.http.router",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                        }],
                    },
                }]}],
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_what_pilot_expects() {
        assert_eq!(
            node_id(Role::Sidecar, "10.88.0.5", "reviews-v1-abc", "default"),
            "sidecar~10.88.0.5~reviews-v1-abc.default~default.svc.cluster.local"
        );
        assert!(node_id(Role::Router, "10.88.0.2", "gw", "istio-system").starts_with("router~"));
    }

    #[test]
    fn bootstrap_points_at_pilot_and_serves_stats() {
        let b = envoy_bootstrap("sidecar~x", "reviews", "10.88.0.1:15010".parse().unwrap());
        let xds = &b["static_resources"]["clusters"][0];
        assert_eq!(xds["name"], "xds-grpc");
        let addr = &xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(
            (addr["address"].as_str(), addr["port_value"].as_u64()),
            (Some("10.88.0.1"), Some(15010))
        );
        assert_eq!(
            b["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"],
            15090
        );
        assert_eq!(
            b["admin"]["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
    }
}
