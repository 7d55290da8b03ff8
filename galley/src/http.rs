//! Galley's HTTP API (what keelctl speaks), readiness, metrics and debug endpoints.
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/apply?namespace=NS&source=NAME&dryRun=true` | body: YAML/JSON documents; create or update all, or none |
//! | `POST /v1/delete?namespace=NS&source=NAME` | body: documents; delete what they name, all or none |
//! | `GET /v1/resources/KIND?namespace=NS&selector=SEL` | list (no namespace: all namespaces) |
//! | `GET /v1/resources/KIND/NS/NAME` | one object (`-` as NS for cluster-scoped kinds) |
//! | `DELETE /v1/resources/KIND/NS/NAME` | delete one |
//! | `GET /v1/watch/KIND?namespace=NS&selector=SEL` | JSON lines of ADDED/MODIFIED/DELETED events, first the current objects |
//! | `GET /v1/files` | files in the config directory that have problems |
//! | `GET /ready`, `GET /metrics`, `GET /debug/syncz` | readiness, Prometheus, ADS subscribers |
//!
//! For apply and delete, a body of content type `application/vnd.keel.sources+json` holds
//! several files at once, `{"sources": [{"name": FILE, "text": TEXT}, ...]}`, handled as one
//! unit. Errors are `{"error": MESSAGE, "details": [...]}` with 400, 404, 409, 422 or 500.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use keel_config::{Kind, LabelSelector, ResourceKey};
use keel_xds::status::SyncRegistry;
use serde_json::json;

use crate::core::{ApiError, Galley, Source};

const MAX_BODY: usize = 16 << 20;

/// What the HTTP handlers share.
#[derive(Debug)]
pub struct HttpState {
    pub galley: Galley,
    pub ready: AtomicBool,
    pub syncs: Arc<SyncRegistry>,
}

type Body = BoxBody<Bytes, Infallible>;
type Resp = Response<Body>;

fn json_response(status: u16, value: &serde_json::Value) -> Resp {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text_response(status: StatusCode, body: String, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

fn error_response(e: &ApiError) -> Resp {
    json_response(
        e.status(),
        &json!({ "error": e.to_string(), "details": e.details() }),
    )
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_kind(text: &str) -> Result<Kind, ApiError> {
    Kind::lookup(text).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "the server doesn't have a resource type \"{text}\""
        ))
    })
}

const SOURCES_TYPE: &str = "application/vnd.keel.sources+json";

/// The request's input files: a sources envelope, or the body as one file named `source`.
async fn body_sources(req: Request<Incoming>, source: String) -> Result<Vec<Source>, ApiError> {
    let envelope = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(SOURCES_TYPE));
    let text = body_text(req).await?;
    if envelope {
        #[derive(serde::Deserialize)]
        struct Envelope {
            sources: Vec<Source>,
        }
        let e: Envelope = serde_json::from_str(&text)
            .map_err(|e| ApiError::BadRequest(format!("invalid {SOURCES_TYPE} body: {e}")))?;
        Ok(e.sources)
    } else {
        Ok(vec![Source { name: source, text }])
    }
}

async fn body_text(req: Request<Incoming>) -> Result<String, ApiError> {
    let collected = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::BadRequest(format!("reading the request body: {e}")))?;
    String::from_utf8(collected.to_bytes().to_vec())
        .map_err(|_| ApiError::BadRequest("the request body is not UTF-8 text".to_owned()))
}

/// Routes one request.
pub async fn handle(state: Arc<HttpState>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let result = match (&method, segments.as_slice()) {
        (&Method::GET, ["ready"]) => {
            return Ok(if state.ready.load(Ordering::Acquire) {
                text_response(StatusCode::OK, "ok\n".into(), "text/plain")
            } else {
                text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready\n".into(),
                    "text/plain",
                )
            });
        }
        (&Method::GET, ["metrics"]) => {
            state.galley.file_problems();
            return Ok(text_response(
                StatusCode::OK,
                state.galley.metrics.encode(),
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ));
        }
        (&Method::GET, ["debug", "syncz"]) => Ok(syncz(&state.syncs)),
        (&Method::POST, ["v1", "apply"]) => apply(state.clone(), req).await,
        (&Method::POST, ["v1", "delete"]) => delete_documents(state.clone(), req).await,
        (&Method::GET, ["v1", "files"]) => Ok(files(&state)),
        (&Method::GET, ["v1", "watch", kind]) => watch(&state, &req, kind),
        (&Method::GET, ["v1", "resources", kind]) => list(&state, &req, kind),
        (&Method::GET, ["v1", "resources", kind, ns, name]) => key(kind, ns, name)
            .and_then(|k| state.galley.get(&k))
            .map(|r| json_response(200, &r.to_value())),
        (&Method::DELETE, ["v1", "resources", kind, ns, name]) => match key(kind, ns, name) {
            Ok(k) => {
                let st = state.clone();
                blocking(move || st.galley.delete(&[k]))
                    .await
                    .map(|o| json_response(200, &json!({ "results": o })))
            }
            Err(e) => Err(e),
        },
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: {method} {path}"
        ))),
    };
    Ok(result.unwrap_or_else(|e| error_response(&e)))
}

fn key(kind: &str, ns: &str, name: &str) -> Result<ResourceKey, ApiError> {
    let kind = parse_kind(kind)?;
    let namespace = if kind.is_namespaced() && ns != "-" {
        ns.to_owned()
    } else {
        String::new()
    };
    Ok(ResourceKey {
        kind,
        namespace,
        name: name.to_owned(),
    })
}

/// Runs store writes (locks, fsyncs) off the async workers that serve ADS and the API.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("the write task failed: {e}")))?
}

async fn apply(state: Arc<HttpState>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = query(&req);
    let namespace = q
        .get("namespace")
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let source = q
        .get("source")
        .cloned()
        .unwrap_or_else(|| "<request>".to_owned());
    let dry_run = q.get("dryRun").is_some_and(|v| v == "true");
    let sources = body_sources(req, source).await?;
    let st = state.clone();
    let (outcomes, warnings) =
        blocking(move || st.galley.apply(&sources, &namespace, dry_run)).await?;
    for o in &outcomes {
        tracing::info!(kind = %o.kind, namespace = %o.namespace, name = %o.name, action = %o.action, dry_run, "apply");
    }
    Ok(json_response(
        200,
        &json!({ "results": outcomes, "warnings": warnings }),
    ))
}

async fn delete_documents(state: Arc<HttpState>, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = query(&req);
    let namespace = q
        .get("namespace")
        .cloned()
        .unwrap_or_else(|| "default".to_owned());
    let source = q
        .get("source")
        .cloned()
        .unwrap_or_else(|| "<request>".to_owned());
    let sources = body_sources(req, source).await?;
    let st = state.clone();
    let outcomes = blocking(move || st.galley.delete_documents(&sources, &namespace)).await?;
    Ok(json_response(200, &json!({ "results": outcomes })))
}

fn list(state: &HttpState, req: &Request<Incoming>, kind: &str) -> Result<Resp, ApiError> {
    let kind = parse_kind(kind)?;
    let q = query(req);
    let selector = LabelSelector::parse(q.get("selector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let namespace = q.get("namespace").filter(|_| kind.is_namespaced());
    let items: Vec<_> = state
        .galley
        .list(kind, namespace.map(String::as_str), &selector)
        .iter()
        .map(|r| r.to_value())
        .collect();
    let problems: Vec<String> = state
        .galley
        .file_problems()
        .iter()
        .flat_map(|f| f.errors.iter().map(ToString::to_string))
        .collect();
    Ok(json_response(
        200,
        &json!({ "kind": kind.name(), "items": items, "fileErrors": problems }),
    ))
}

/// Streams changes to resources of `kind` as JSON lines, `{"type": "ADDED"|"MODIFIED"|
/// "DELETED", "object": ...}`, starting with every current one as ADDED (kubectl's watch
/// events). The stream lasts until the client goes away.
fn watch(state: &HttpState, req: &Request<Incoming>, kind: &str) -> Result<Resp, ApiError> {
    let kind = parse_kind(kind)?;
    let q = query(req);
    let selector = LabelSelector::parse(q.get("selector").map(String::as_str).unwrap_or(""))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let namespace = q.get("namespace").filter(|_| kind.is_namespaced()).cloned();
    let mut snapshots = keel_config::store::ConfigStore::subscribe(state.galley.store.as_ref());
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let wanted = move |r: &keel_config::Resource| {
        r.kind == kind
            && namespace.as_deref().is_none_or(|ns| r.namespace() == ns)
            && selector.matches(r.labels())
    };
    tokio::spawn(async move {
        let line = |kind: &str, obj: serde_json::Value| {
            let mut v =
                serde_json::to_vec(&json!({ "type": kind, "object": obj })).unwrap_or_default();
            v.push(b'\n');
            Bytes::from(v)
        };
        let mut last = snapshots.borrow_and_update().clone();
        for r in last.resources.values().filter(|r| wanted(r)) {
            if tx.send(line("ADDED", r.to_value())).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
            let next = snapshots.borrow_and_update().clone();
            for change in next.diff(&last) {
                let event = match &change {
                    keel_config::store::Change::Added(r) if wanted(r) => {
                        line("ADDED", r.to_value())
                    }
                    keel_config::store::Change::Updated(r) if wanted(r) => {
                        line("MODIFIED", r.to_value())
                    }
                    keel_config::store::Change::Deleted(key) => match last.get(key) {
                        Some(old) if wanted(old) => line("DELETED", old.to_value()),
                        _ => continue,
                    },
                    _ => continue,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
            last = next;
        }
    });
    let stream =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
            Ok::<_, Infallible>(Frame::data(b))
        });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json-seq"),
    );
    Ok(r)
}

fn files(state: &HttpState) -> Resp {
    let files: Vec<_> = state
        .galley
        .file_problems()
        .iter()
        .map(|f| {
            json!({
                "path": f.path.display().to_string(),
                "resources": f.resources.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "errors": f.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })
        })
        .collect();
    json_response(200, &json!({ "files": files }))
}

fn syncz(syncs: &SyncRegistry) -> Resp {
    let streams: Vec<_> = syncs
        .streams()
        .iter()
        .map(|s| {
            let types: serde_json::Map<String, serde_json::Value> = s
                .types
                .iter()
                .map(|(t, st)| {
                    (
                        t.clone(),
                        json!({
                            "sent": st.sent_version,
                            "acked": st.acked_version,
                            "nacked": st.nacked.as_ref().map(|(v, r)| json!({"version": v, "reason": r})),
                            "pushes": st.pushes,
                        }),
                    )
                })
                .collect();
            json!({ "node": s.node_id, "stream": s.id, "types": types })
        })
        .collect();
    json_response(200, &json!({ "subscribers": streams }))
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_query_values() {
        assert_eq!(
            percent_decode("app%3Dreviews%2Cversion%21%3Dv1"),
            "app=reviews,version!=v1"
        );
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
