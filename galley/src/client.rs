//! The HTTP client for galley's API: keelctl and the local mesh runtime use it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::Value;

/// What went wrong talking to galley.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach galley at {addr}: {reason}\n(is the mesh running? start it with `keelctl up`, or point keelctl at galley with --galley ADDR)"
    )]
    Unreachable { addr: String, reason: String },
    /// Galley refused the request; `status` is its HTTP status.
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        details: Vec<String>,
    },
    #[error("unexpected answer from galley at {addr}: {reason}")]
    Protocol { addr: String, reason: String },
}

impl ClientError {
    /// kubectl's `Error from server (Reason): ...` line for API errors.
    pub fn kubectl_line(&self) -> String {
        match self {
            ClientError::Api {
                status, message, ..
            } => {
                let reason = match status {
                    404 => "NotFound",
                    409 => "Conflict",
                    422 => "Invalid",
                    400 => "BadRequest",
                    _ => "InternalError",
                };
                format!("Error from server ({reason}): {message}")
            }
            other => format!("error: {other}"),
        }
    }
}

/// One resource's outcome, as galley reports it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub kind: String,
    pub group: String,
    pub namespace: String,
    pub name: String,
    pub action: String,
    pub resource_version: String,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ApplyResponse {
    pub results: Vec<Outcome>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListResponse {
    pub items: Vec<Value>,
    #[serde(default)]
    pub file_errors: Vec<String>,
}

const SOURCES_TYPE: &str = "application/vnd.keel.sources+json";

/// One input file: its name (as diagnostics will show it) and text.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub text: String,
}

fn envelope(sources: &[Source]) -> String {
    serde_json::json!({ "sources": sources }).to_string()
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    details: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct GalleyClient {
    base: String,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl GalleyClient {
    /// `addr` is `host:port` or `http://host:port`.
    pub fn new(addr: &str) -> Self {
        let base = if addr.starts_with("http://") {
            addr.trim_end_matches('/').to_owned()
        } else {
            format!("http://{}", addr.trim_end_matches('/'))
        };
        GalleyClient {
            base,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Value, ClientError> {
        let uri = format!("{}{path_and_query}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header("content-type", SOURCES_TYPE)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol {
                addr: self.base.clone(),
                reason: e.to_string(),
            })?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| ClientError::Unreachable {
                addr: self.base.clone(),
                reason: "no answer within 30s".to_owned(),
            })?
            .map_err(|e| ClientError::Unreachable {
                addr: self.base.clone(),
                reason: root_cause(&e),
            })?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Protocol {
                addr: self.base.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if status >= 400 {
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
                error: String::from_utf8_lossy(&bytes).into_owned(),
                details: vec![],
            });
            return Err(ClientError::Api {
                status,
                message: body.error,
                details: body.details,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            addr: self.base.clone(),
            reason: e.to_string(),
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, v: Value) -> Result<T, ClientError> {
        serde_json::from_value(v).map_err(|e| ClientError::Protocol {
            addr: self.base.clone(),
            reason: e.to_string(),
        })
    }

    /// Applies every document of every source as one unit.
    pub async fn apply(
        &self,
        sources: &[Source],
        namespace: &str,
        dry_run: bool,
    ) -> Result<ApplyResponse, ClientError> {
        let q = format!("/v1/apply?namespace={}&dryRun={dry_run}", enc(namespace));
        let v = self.call(Method::POST, &q, Some(envelope(sources))).await?;
        self.decode(v)
    }

    /// Deletes what the documents of every source name, as one unit.
    pub async fn delete_documents(
        &self,
        sources: &[Source],
        namespace: &str,
    ) -> Result<Vec<Outcome>, ClientError> {
        let q = format!("/v1/delete?namespace={}", enc(namespace));
        let v = self.call(Method::POST, &q, Some(envelope(sources))).await?;
        self.decode::<ApplyResponse>(v).map(|r| r.results)
    }

    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Outcome>, ClientError> {
        let ns = if namespace.is_empty() { "-" } else { namespace };
        let v = self
            .call(
                Method::DELETE,
                &format!("/v1/resources/{}/{}/{}", enc(kind), enc(ns), enc(name)),
                None,
            )
            .await?;
        self.decode::<ApplyResponse>(v).map(|r| r.results)
    }

    /// GET any path that answers JSON (pilot's debug endpoints, a proxy's admin API).
    pub async fn get_raw(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
    }

    pub async fn get(&self, kind: &str, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let ns = if namespace.is_empty() { "-" } else { namespace };
        self.call(
            Method::GET,
            &format!("/v1/resources/{}/{}/{}", enc(kind), enc(ns), enc(name)),
            None,
        )
        .await
    }

    pub async fn list(
        &self,
        kind: &str,
        namespace: Option<&str>,
        selector: &str,
    ) -> Result<ListResponse, ClientError> {
        let mut q = format!("/v1/resources/{}?selector={}", enc(kind), enc(selector));
        if let Some(ns) = namespace {
            q.push_str(&format!("&namespace={}", enc(ns)));
        }
        let v = self.call(Method::GET, &q, None).await?;
        self.decode(v)
    }
}

impl GalleyClient {
    /// Follows changes to `kind`: calls `on_event(type, object)` for each event (the current
    /// objects first, as ADDED) until it returns false or the stream ends.
    pub async fn watch(
        &self,
        kind: &str,
        namespace: Option<&str>,
        selector: &str,
        mut on_event: impl FnMut(&str, &Value) -> bool,
    ) -> Result<(), ClientError> {
        let mut q = format!(
            "{}/v1/watch/{}?selector={}",
            self.base,
            enc(kind),
            enc(selector)
        );
        if let Some(ns) = namespace {
            q.push_str(&format!("&namespace={}", enc(ns)));
        }
        let unreachable = |reason: String| ClientError::Unreachable {
            addr: self.base.clone(),
            reason,
        };
        let req = Request::builder()
            .uri(&q)
            .body(Full::new(Bytes::new()))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| unreachable(root_cause(&e)))?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status >= 400 {
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let e: ErrorBody = serde_json::from_slice(&bytes).unwrap_or(ErrorBody {
                error: String::from_utf8_lossy(&bytes).into_owned(),
                details: vec![],
            });
            return Err(ClientError::Api {
                status,
                message: e.error,
                details: e.details,
            });
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| unreachable(e.to_string()))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let Ok(event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
                if !on_event(kind, event.get("object").unwrap_or(&Value::Null)) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
