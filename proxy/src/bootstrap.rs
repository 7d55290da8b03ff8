//! The bootstrap keel-proxy starts from: the same Envoy bootstrap (JSON) the sidecar agent
//! writes for Envoy. keel-proxy reads the part it needs — the node, the admin address, the
//! ADS cluster's address — and refuses what it would otherwise ignore.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    pub node_id: String,
    pub node_cluster: String,
    pub admin: SocketAddr,
    /// `http://IP:PORT` of the ADS server (pilot).
    pub ads: String,
    /// `ads_config.api_type: DELTA_GRPC`: incremental xDS.
    pub delta: bool,
    /// The Prometheus stats listener (`prometheus_stats`, Istio's 15090), when configured.
    pub stats: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
#[error("bootstrap {path}: {reason}")]
pub struct BootstrapError {
    pub path: String,
    pub reason: String,
}

fn socket(v: &Value) -> Option<SocketAddr> {
    let sa = v.get("socket_address")?;
    let ip = sa.get("address")?.as_str()?.parse().ok()?;
    let port = u16::try_from(sa.get("port_value")?.as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Bootstrap {
    pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let err = |reason: String| BootstrapError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| err(format!("not JSON (keel-proxy reads JSON bootstraps): {e}")))?;
        Bootstrap::from_json(&v).map_err(err)
    }

    pub fn from_json(v: &Value) -> Result<Bootstrap, String> {
        let node_id = v
            .pointer("/node/id")
            .and_then(Value::as_str)
            .ok_or("node.id is missing")?
            .to_owned();
        let node_cluster = v
            .pointer("/node/cluster")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let admin = v
            .pointer("/admin/address")
            .and_then(socket)
            .ok_or("admin.address.socket_address is missing or not IP:port")?;
        let grpc = v
            .pointer("/dynamic_resources/ads_config/grpc_services/0/envoy_grpc/cluster_name")
            .and_then(Value::as_str)
            .ok_or(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name is missing",
            )?;
        let delta = match v
            .pointer("/dynamic_resources/ads_config/api_type")
            .and_then(Value::as_str)
        {
            Some("GRPC") => false,
            Some("DELTA_GRPC") => true,
            other => {
                return Err(format!(
                    "dynamic_resources.ads_config.api_type: GRPC or DELTA_GRPC, not {other:?}"
                ));
            }
        };
        let clusters = v
            .pointer("/static_resources/clusters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ads_cluster = clusters
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(grpc))
            .ok_or_else(|| format!("static_resources.clusters: no cluster \"{grpc}\" for ADS"))?;
        let ads = ads_cluster
            .pointer("/load_assignment/endpoints/0/lb_endpoints/0/endpoint/address")
            .and_then(socket)
            .ok_or_else(|| format!("cluster \"{grpc}\": the first endpoint is not IP:port"))?;
        let mut stats = None;
        for (i, l) in v
            .pointer("/static_resources/listeners")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            match l.get("name").and_then(Value::as_str) {
                Some("prometheus_stats") => stats = l.get("address").and_then(socket),
                other => {
                    return Err(format!(
                        "static_resources.listeners[{i}] ({}): only the prometheus_stats listener is supported",
                        other.unwrap_or("unnamed")
                    ));
                }
            }
        }
        Ok(Bootstrap {
            node_id,
            node_cluster,
            admin,
            ads: format!("http://{ads}"),
            delta,
            stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Value {
        json!({
            "node": {"id": "sidecar~10.88.0.5~r.default~default.svc.cluster.local", "cluster": "reviews"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 15000}}},
            "dynamic_resources": {"ads_config": {"api_type": "GRPC", "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}},
            "static_resources": {
                "clusters": [{"name": "xds-grpc", "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "10.88.0.1", "port_value": 15010}}}}]}]}}],
                "listeners": [{"name": "prometheus_stats", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15090}}}]
            }
        })
    }

    #[test]
    fn reads_the_node_admin_ads_and_stats() {
        let b = Bootstrap::from_json(&sample()).unwrap();
        assert_eq!(b.ads, "http://10.88.0.1:15010");
        assert_eq!(b.admin.port(), 15000);
        assert_eq!(b.stats.map(|s| s.port()), Some(15090));
        assert_eq!(b.node_cluster, "reviews");
    }

    #[test]
    fn refuses_what_it_would_ignore() {
        let mut v = sample();
        v["dynamic_resources"]["ads_config"]["api_type"] = json!("DELTA_GRPC");
        assert!(Bootstrap::from_json(&v).unwrap().delta);
        v["dynamic_resources"]["ads_config"]["api_type"] = json!("REST");
        assert!(Bootstrap::from_json(&v).unwrap_err().contains("api_type"));
        let mut v = sample();
        v["static_resources"]["listeners"][0]["name"] = json!("other");
        assert!(
            Bootstrap::from_json(&v)
                .unwrap_err()
                .contains("listeners[0] (other)")
        );
    }
}
