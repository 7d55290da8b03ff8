//! `keelctl proxy-status` (from pilot's /debug/syncz) and `keelctl proxy-config` (from a
//! proxy's admin /config_dump, the same for Envoy and keel-proxy).

use std::io::Write;

use serde_json::Value;

use crate::client::GalleyClient;
use crate::output::render;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Pilot's debug address (default: $KEEL_PILOT, the context file, or 127.0.0.1:8080).
    #[arg(long)]
    pub pilot: Option<String>,
    /// Output: table (default) or json.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

const TYPES: [(&str, &str); 4] = [
    ("CDS", "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
    (
        "LDS",
        "type.googleapis.com/envoy.config.listener.v3.Listener",
    ),
    (
        "EDS",
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
    ),
    (
        "RDS",
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    ),
];

/// SYNCED when the proxy ACKed what it was last sent, NOT SENT when nothing was sent, STALE
/// otherwise (a push not yet ACKed, or NACKed: the proxy keeps its last good config).
pub fn sync_state(t: Option<&Value>) -> &'static str {
    let Some(t) = t else { return "NOT SENT" };
    let sent = t.get("sent").filter(|v| !v.is_null());
    match sent {
        None => "NOT SENT",
        Some(s) if t.get("acked") == Some(s) && t.get("nacked").is_none_or(Value::is_null) => {
            "SYNCED"
        }
        Some(_) => "STALE",
    }
}

/// The short proxy name istioctl shows: `POD.NAMESPACE` from `TYPE~IP~POD.NS~DOMAIN`.
fn proxy_name(node: &str) -> String {
    node.split('~').nth(2).unwrap_or(node).to_owned()
}

pub async fn status(
    args: &StatusArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let addr = crate::context::pilot_addr(args.pilot.as_deref())?;
    let client = GalleyClient::new(&addr);
    let syncz = match client.get_raw("/debug/syncz").await {
        Ok(v) => v,
        Err(e) => {
            writeln!(err, "{}", e.to_string().replace("galley", "pilot"))?;
            return Ok(false);
        }
    };
    if args.output.as_deref() == Some("json") {
        writeln!(out, "{}", serde_json::to_string_pretty(&syncz)?)?;
        return Ok(true);
    }
    let mut rows = vec![vec![
        "PROXY".to_owned(),
        "CDS".into(),
        "LDS".into(),
        "EDS".into(),
        "RDS".into(),
        "PILOT".into(),
    ]];
    let mut proxies: Vec<&Value> = syncz
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    proxies.sort_by_key(|p| {
        p.get("proxy")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    });
    for p in proxies {
        let node = p.get("proxy").and_then(Value::as_str).unwrap_or("");
        let mut row = vec![proxy_name(node)];
        for (_, url) in TYPES {
            row.push(sync_state(p.get("types").and_then(|t| t.get(url))).to_owned());
        }
        row.push("keel-pilot".into());
        rows.push(row);
    }
    if rows.len() == 1 {
        writeln!(err, "No proxies are connected to pilot at {addr}")?;
        return Ok(true);
    }
    write!(out, "{}", render(&rows))?;
    Ok(true)
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// What to show: clusters, listeners, routes, endpoints, bootstrap, all.
    pub section: String,
    /// The pod whose proxy to ask, `POD` or `POD.NAMESPACE` (local mesh).
    pub pod: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The proxy's admin address (host:port), e.g. 127.0.0.1:15000, instead of a pod.
    #[arg(long)]
    pub admin: Option<String>,
    /// Output: table (default) or json.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
}

fn config_type(section: &str) -> Option<&'static str> {
    Some(match section {
        "clusters" | "cluster" | "c" => "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
        "listeners" | "listener" | "l" => "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
        "routes" | "route" | "r" => "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
        "endpoints" | "endpoint" | "ep" => "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        "bootstrap" | "b" => "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
        _ => return None,
    })
}

/// The dynamic resources of one config_dump section, unwrapped.
fn dynamic(section: &Value, list: &str, inner: &str) -> Vec<Value> {
    section
        .get(list)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.get(inner).cloned()).collect())
        .unwrap_or_default()
}

/// A local-mesh pod's proxy answers on 127.0.0.1:15000 inside the pod's network namespace,
/// as on Kubernetes (where istioctl port-forwards): keelctl runs itself there to ask.
fn in_pod(
    args: &ConfigArgs,
    pod: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let (name, namespace) = pod
        .split_once('.')
        .unwrap_or((pod, args.namespace.as_str()));
    let status = match crate::cmd::local::read_status() {
        Ok(s) => s,
        Err(e) => {
            writeln!(err, "error: {e}")?;
            return Ok(false);
        }
    };
    let Some(found) = status
        .pods
        .iter()
        .find(|p| p.name == name && p.namespace == namespace)
    else {
        writeln!(err, "error: pod {name} not found in namespace {namespace}")?;
        return Ok(false);
    };
    if !found.sidecar {
        writeln!(err, "error: pod {namespace}/{name} has no proxy")?;
        return Ok(false);
    }
    let netns = format!(
        "{}{namespace}.{name}",
        keel_local::net::NetConfig::default().netns_prefix
    );
    let me = std::env::current_exe()?;
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &netns])
        .arg(me)
        .args(["proxy-config", &args.section, "--admin"])
        .arg(format!("127.0.0.1:{}", keel_local::bootstrap::ADMIN_PORT));
    if let Some(o) = &args.output {
        cmd.args(["-o", o]);
    }
    let result = cmd.output()?;
    out.write_all(&result.stdout)?;
    err.write_all(&result.stderr)?;
    Ok(result.status.success())
}

pub async fn config(
    args: &ConfigArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let want = if args.section == "all" {
        None
    } else {
        config_type(&args.section)
    };
    if args.section != "all" && want.is_none() {
        writeln!(
            err,
            "error: unknown section \"{}\" (clusters, listeners, routes, endpoints, bootstrap, all)",
            args.section
        )?;
        return Ok(false);
    }
    let admin = match (&args.admin, &args.pod) {
        (Some(a), _) => a.clone(),
        (None, Some(pod)) => return in_pod(args, pod, out, err),
        (None, None) => {
            writeln!(
                err,
                "error: name a pod (POD or POD.NAMESPACE) or give --admin HOST:PORT"
            )?;
            return Ok(false);
        }
    };
    let client = GalleyClient::new(&admin);
    let path = if want == config_type("endpoints") {
        "/config_dump?include_eds"
    } else {
        "/config_dump"
    };
    let dump = match client.get_raw(path).await {
        Ok(v) => v,
        Err(e) => {
            writeln!(
                err,
                "error: cannot read the proxy's config_dump at {admin}: {e}"
            )?;
            return Ok(false);
        }
    };
    let configs: Vec<Value> = dump
        .get("configs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let section = want.and_then(|w| {
        configs
            .iter()
            .find(|c| c.get("@type").and_then(Value::as_str) == Some(w))
            .cloned()
    });
    if args.output.as_deref() == Some("json") || want.is_none() {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(section.as_ref().unwrap_or(&dump))?
        )?;
        return Ok(true);
    }
    let section = section.unwrap_or(Value::Null);
    let mut rows: Vec<Vec<String>> = Vec::new();
    match args.section.as_str() {
        "clusters" | "cluster" | "c" => {
            rows.push(vec![
                "SERVICE FQDN".into(),
                "PORT".into(),
                "SUBSET".into(),
                "DIRECTION".into(),
                "TYPE".into(),
            ]);
            for c in dynamic(&section, "dynamic_active_clusters", "cluster") {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("");
                let parts: Vec<&str> = name.split('|').collect();
                let kind = c
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("EDS")
                    .to_owned();
                rows.push(match parts.as_slice() {
                    [dir, port, subset, host] => vec![
                        (*host).into(),
                        (*port).into(),
                        (*subset).into(),
                        (*dir).into(),
                        kind,
                    ],
                    _ => vec![name.into(), "-".into(), "-".into(), "-".into(), kind],
                });
            }
        }
        "listeners" | "listener" | "l" => {
            rows.push(vec!["ADDRESS".into(), "PORT".into(), "NAME".into()]);
            for l in dynamic(&section, "dynamic_listeners", "active_state") {
                let l = l.get("listener").cloned().unwrap_or(Value::Null);
                let sa = l
                    .pointer("/address/socket_address")
                    .cloned()
                    .unwrap_or(Value::Null);
                rows.push(vec![
                    sa.get("address")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    sa.get("port_value")
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    l.get("name").and_then(Value::as_str).unwrap_or("").into(),
                ]);
            }
        }
        "routes" | "route" | "r" => {
            rows.push(vec![
                "NAME".into(),
                "VIRTUAL HOSTS".into(),
                "DOMAINS (first)".into(),
            ]);
            for r in dynamic(&section, "dynamic_route_configs", "route_config") {
                let vhosts = r
                    .get("virtual_hosts")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let first = vhosts
                    .first()
                    .and_then(|v| {
                        v.get("domains")?
                            .as_array()?
                            .first()?
                            .as_str()
                            .map(str::to_owned)
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    r.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    vhosts.len().to_string(),
                    first,
                ]);
            }
        }
        "endpoints" | "endpoint" | "ep" => {
            rows.push(vec!["ENDPOINT".into(), "CLUSTER".into()]);
            for e in dynamic(&section, "dynamic_endpoint_configs", "endpoint_config") {
                let cluster = e
                    .get("cluster_name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                for group in e
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    for lb in group
                        .get("lb_endpoints")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default()
                    {
                        let sa = lb
                            .pointer("/endpoint/address/socket_address")
                            .cloned()
                            .unwrap_or(Value::Null);
                        rows.push(vec![
                            format!(
                                "{}:{}",
                                sa.get("address").and_then(Value::as_str).unwrap_or(""),
                                sa.get("port_value")
                                    .map(|p| p.to_string())
                                    .unwrap_or_default()
                            ),
                            cluster.clone(),
                        ]);
                    }
                }
            }
        }
        _ => {
            writeln!(out, "{}", serde_json::to_string_pretty(&section)?)?;
            return Ok(true);
        }
    }
    write!(out, "{}", render(&rows))?;
    Ok(true)
}
