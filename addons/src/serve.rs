//! The two add-ons' HTTP answers, as functions of the request (tests call them in process;
//! the binaries serve them).

use std::collections::BTreeMap;

use hyper::StatusCode;
use keel_samples::http::{Resp, html, json, respond};

use crate::dashboard::{self, Mesh};
use crate::graph::{self, Graph, Options};
use crate::prom::Prometheus;

/// The service graph for `options`: HTTP and TCP hops.
pub async fn build_graph(prom: &Prometheus, options: &Options) -> Result<Graph, String> {
    let mut g = Graph::default();
    let reqs = prom
        .query(&graph::requests_query(options))
        .await
        .map_err(|e| e.to_string())?;
    g.add_samples(&reqs, "reqs/sec");
    let tcp = prom
        .query(&graph::tcp_query(options))
        .await
        .map_err(|e| e.to_string())?;
    g.add_samples(&tcp, "bytes/sec");
    Ok(g)
}

/// Servicegraph's endpoints: `/graph`, `/d3graph`, `/dotgraph`, `/dotviz`,
/// `/force/forcegraph.html` (and `/` to it).
pub async fn servicegraph(prom: &Prometheus, path: &str, query: &str) -> Resp {
    let text = |status, body: String| respond(status, "text/plain; charset=utf-8", body);
    match path {
        "/" => {
            let mut r = respond(StatusCode::FOUND, "text/plain", "");
            if let Ok(v) = hyper::header::HeaderValue::from_str("/force/forcegraph.html") {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            return r;
        }
        "/force/forcegraph.html" => return html(StatusCode::OK, graph::FORCE_PAGE),
        "/healthz" => return text(StatusCode::OK, "ok\n".into()),
        "/graph" | "/d3graph" | "/dotgraph" | "/dotviz" => {}
        _ => return keel_samples::http::not_found(),
    }
    let options = match Options::from_query(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let g = match build_graph(prom, &options).await {
        Ok(g) => g,
        Err(e) => return text(StatusCode::BAD_GATEWAY, format!("{e}\n")),
    };
    match path {
        "/graph" => json(StatusCode::OK, g.to_json().to_string()),
        "/d3graph" => json(StatusCode::OK, g.to_d3_json().to_string()),
        "/dotgraph" => text(StatusCode::OK, g.to_dot()),
        _ => html(StatusCode::OK, graph::dotviz_page(&g)),
    }
}

/// Runs every dashboard query (in turn: Prometheus answers them in microseconds).
pub async fn mesh(prom: &Prometheus) -> Mesh {
    let mut results = BTreeMap::new();
    for (key, q) in dashboard::QUERIES {
        results.insert(*key, prom.query(q).await.map_err(|e| e.to_string()));
    }
    Mesh::from_results(&results)
}

/// The dashboard: `/dashboard/db/istio-mesh-dashboard` (and `/` to it), `/api/mesh` (the
/// same figures as JSON), `/api/health`.
pub async fn dashboard(prom: &Prometheus, path: &str) -> Resp {
    match path {
        "/" => {
            let mut r = respond(StatusCode::FOUND, "text/plain", "");
            if let Ok(v) =
                hyper::header::HeaderValue::from_str("/dashboard/db/istio-mesh-dashboard")
            {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            r
        }
        "/dashboard/db/istio-mesh-dashboard" => {
            html(StatusCode::OK, dashboard::page(&mesh(prom).await))
        }
        "/api/mesh" => json(
            StatusCode::OK,
            serde_json::to_string_pretty(&mesh(prom).await).unwrap_or_default(),
        ),
        "/api/health" => json(StatusCode::OK, "{\"database\":\"ok\"}"),
        _ => keel_samples::http::not_found(),
    }
}
