//! The admin API (loopback 15000), the stats listener (15090) and the readiness port (15021,
//! `/healthz/ready`, ready once the first configuration is applied): `/ready`,
//! `/config_dump` in Envoy's shape (what `keelctl proxy-config` reads), `/clusters`,
//! `/stats/prometheus`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::model::{Config, Discovery, NetworkFilter, PathMatch, RouteAction};
use crate::{ProxyError, Shared};

/// Which of the proxy's own HTTP surfaces a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Surface {
    Admin,
    Stats,
    Readiness,
}

pub async fn start(
    shared: Arc<Shared>,
    readiness: Option<SocketAddr>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, ProxyError> {
    let mut tasks = Vec::new();
    let mut addrs = vec![(shared.bootstrap.admin, "admin API", Surface::Admin)];
    if let Some(s) = shared.bootstrap.stats {
        addrs.push((s, "stats listener", Surface::Stats));
    }
    if let Some(r) = readiness {
        addrs.push((r, "readiness port", Surface::Readiness));
    }
    for (addr, what, full) in addrs {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            // Probes are the kubelet's business; the proxy itself works without them.
            Err(e) if full == Surface::Readiness => {
                tracing::warn!(%addr, error = %e, "no readiness port");
                continue;
            }
            Err(source) => return Err(ProxyError::Bind { addr, what, source }),
        };
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let shared = shared.clone();
                            async move {
                                let path = req.uri().path().to_owned();
                                let (status, ctype, body) =
                                    if path == "/logging" && full == Surface::Admin {
                                        logging(req.method(), req.uri().query().unwrap_or(""))
                                    } else {
                                        answer(&shared, &path, full)
                                    };
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() =
                                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                                if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
                                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                                }
                                Ok::<_, Infallible>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }
    Ok(tasks)
}

/// Sets the log filter at run time (`level` is an `EnvFilter` directive); installed by
/// `main`, which owns the subscriber.
pub type LogControl = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static LOG_CONTROL: std::sync::OnceLock<(LogControl, std::sync::Mutex<String>)> =
    std::sync::OnceLock::new();

/// Lets `/logging` change the log level; `current` is the filter in force.
pub fn set_log_control(control: LogControl, current: &str) {
    let _ = LOG_CONTROL.set((control, std::sync::Mutex::new(current.to_owned())));
}

/// Envoy's `/logging`: GET shows the level, POST `?level=L` sets it for everything
/// (trace, debug, info, warning/warn, error, critical, off).
fn logging(method: &hyper::Method, query: &str) -> (u16, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    let Some((control, current)) = LOG_CONTROL.get() else {
        return (
            503,
            text,
            "logging cannot be changed in this process\n".into(),
        );
    };
    let shown = || {
        format!(
            "active loggers:\n  all: {}\n",
            current.lock().map(|c| c.clone()).unwrap_or_default()
        )
    };
    if method == hyper::Method::GET {
        return (200, text, shown());
    }
    if method != hyper::Method::POST {
        return (405, text, "use GET or POST\n".into());
    }
    let level = query.split('&').find_map(|kv| kv.strip_prefix("level="));
    let Some(level) = level else {
        return (
            400,
            text,
            "usage: POST /logging?level=(trace|debug|info|warning|error|critical|off)\n".into(),
        );
    };
    let directive = match level {
        "trace" | "debug" | "info" | "error" | "off" => level,
        "warning" | "warn" => "warn",
        "critical" => "error",
        other => {
            return (400, text, format!("unknown level {other:?}\n"));
        }
    };
    match control(directive) {
        Ok(()) => {
            if let Ok(mut c) = current.lock() {
                directive.clone_into(&mut c);
            }
            (200, text, shown())
        }
        Err(e) => (500, text, format!("{e}\n")),
    }
}

fn answer(shared: &Shared, path: &str, surface: Surface) -> (u16, &'static str, String) {
    let text = "text/plain; charset=utf-8";
    let full = surface == Surface::Admin;
    match (path, full) {
        ("/healthz/ready", _) if surface == Surface::Readiness => {
            if shared.xds.borrow().synced {
                (200, text, String::new())
            } else {
                (
                    503,
                    text,
                    "waiting for the first configuration
"
                    .into(),
                )
            }
        }
        (_, _) if surface == Surface::Readiness => (
            404,
            text,
            "not found
"
            .into(),
        ),
        ("/stats/prometheus", _) => (200, "text/plain; version=0.0.4", shared.stats.encode()),
        ("/ready", true) => {
            // Ready once the control plane has sent every type at least once.
            if shared.xds.borrow().synced {
                (200, text, "LIVE\n".into())
            } else {
                (503, text, "PRE_INITIALIZING\n".into())
            }
        }
        ("/config_dump", true) => {
            let dump = config_dump(&shared.config.borrow());
            (
                200,
                "application/json",
                serde_json::to_string_pretty(&dump).unwrap_or_default(),
            )
        }
        ("/clusters", true) => (200, text, clusters_text(&shared.config.borrow())),
        ("/stats", true) => (200, text, shared.stats.encode()),
        _ => (404, text, "not found\n".into()),
    }
}

fn socket(a: SocketAddr) -> Value {
    json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}})
}

/// The running configuration in the shape of Envoy's `/config_dump`.
pub fn config_dump(c: &Config) -> Value {
    let clusters: Vec<Value> = c
        .clusters
        .values()
        .map(|cl| {
            let kind = match cl.discovery {
                Discovery::Eds => "EDS",
                Discovery::Static => "STATIC",
                Discovery::StrictDns => "STRICT_DNS",
                Discovery::OriginalDst => "ORIGINAL_DST",
            };
            json!({"cluster": {"name": cl.name, "type": kind, "connect_timeout": format!("{}s", cl.connect_timeout.as_secs_f64())}})
        })
        .collect();
    let listeners: Vec<Value> = c
        .listeners
        .values()
        .map(|l| {
            let chains: Vec<Value> = l
                .chains
                .iter()
                .map(|c| {
                    let filter = match &c.filter {
                        NetworkFilter::Http(_) => "envoy.filters.network.http_connection_manager",
                        NetworkFilter::Tcp(_) => "envoy.filters.network.tcp_proxy",
                    };
                    let mut m = serde_json::Map::new();
                    if let Some(p) = c.matcher.destination_port {
                        m.insert("destination_port".into(), json!(p));
                    }
                    if !c.matcher.server_names.is_empty() {
                        m.insert("server_names".into(), json!(c.matcher.server_names));
                    }
                    if let Some(t) = &c.matcher.transport_protocol {
                        m.insert("transport_protocol".into(), json!(t));
                    }
                    if !c.matcher.application_protocols.is_empty() {
                        m.insert(
                            "application_protocols".into(),
                            json!(c.matcher.application_protocols),
                        );
                    }
                    json!({"filter_chain_match": m, "filters": [{"name": filter}]})
                })
                .collect();
            let listener_filters: Vec<Value> = if l.inspect_tls {
                vec![json!({"name": "envoy.filters.listener.tls_inspector"})]
            } else {
                Vec::new()
            };
            json!({"name": l.name, "active_state": {"listener": {
                "name": l.name,
                "address": socket(l.address),
                "bind_to_port": l.bind,
                "use_original_dst": l.use_original_dst,
                "listener_filters": listener_filters,
                "filter_chains": chains,
            }}})
        })
        .collect();
    let routes: Vec<Value> = c
        .routes
        .values()
        .map(|t| {
            let vhosts: Vec<Value> = t
                .virtual_hosts
                .iter()
                .map(|vh| {
                    let routes: Vec<Value> = vh
                        .routes
                        .iter()
                        .map(|r| {
                            let m = match &r.matcher.path {
                                PathMatch::Prefix(p) => json!({"prefix": p}),
                                PathMatch::Exact(p) => json!({"path": p}),
                                PathMatch::Regex(_) => json!({"safe_regex": {}}),
                            };
                            let action = match &r.action {
                                RouteAction::Forward(f) if f.clusters.len() == 1 => {
                                    json!({"route": {"cluster": f.clusters[0].0}})
                                }
                                RouteAction::Forward(f) => json!({"route": {"weighted_clusters": {"clusters":
                                    f.clusters.iter().map(|(n, w)| json!({"name": n, "weight": w})).collect::<Vec<_>>()}}}),
                                RouteAction::Redirect { status, .. } => json!({"redirect": {"response_code": status}}),
                                RouteAction::Direct { status, .. } => json!({"direct_response": {"status": status}}),
                            };
                            let mut v = json!({"match": m});
                            if let (Some(obj), Value::Object(a)) = (v.as_object_mut(), action) {
                                obj.extend(a);
                            }
                            v
                        })
                        .collect();
                    json!({"name": vh.name, "domains": vh.domains, "routes": routes})
                })
                .collect();
            json!({"route_config": {"name": t.name, "virtual_hosts": vhosts}})
        })
        .collect();
    let endpoints: Vec<Value> = c
        .endpoints
        .iter()
        .map(|(name, eps)| {
            let lb: Vec<Value> = eps
                .iter()
                .map(|e| json!({"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}))
                .collect();
            json!({"endpoint_config": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb}]}})
        })
        .collect();
    json!({"configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump", "dynamic_active_clusters": clusters},
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump", "dynamic_listeners": listeners},
        {"@type": "type.googleapis.com/envoy.admin.v3.RoutesConfigDump", "dynamic_route_configs": routes},
        {"@type": "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump", "dynamic_endpoint_configs": endpoints},
    ]})
}

fn clusters_text(c: &Config) -> String {
    let mut out = String::new();
    for cl in c.clusters.values() {
        if let Some(eps) = c.endpoints.get(&cl.eds_name) {
            for e in eps.iter() {
                out.push_str(&format!(
                    "{}::{}:{}::health_flags::healthy\n",
                    cl.name, e.host, e.port
                ));
            }
        }
        for (h, p) in &cl.hosts {
            out.push_str(&format!("{}::{h}:{p}::health_flags::healthy\n", cl.name));
        }
    }
    out
}
