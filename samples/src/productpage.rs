//! productpage: the page people look at. It calls details, then reviews (twice if the first
//! try is not a 200: the retry the fault-injection task relies on), each with a 3 s deadline,
//! forwarding Istio 1.0's trace headers and `end-user` from the signed session only.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, LOCATION, SET_COOKIE};
use hyper::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use tokio::net::TcpListener;

use crate::http::{self, Outbound, Resp, TRACE_HEADERS, Upstream, copy_headers, html, json, serve};
use crate::page::{self, Reviews};
use crate::session::{Sessions, session_cookie};

#[derive(Clone, Debug)]
pub struct Config {
    pub details: Upstream,
    pub reviews: Upstream,
    pub ratings: Upstream,
    /// Each upstream call's deadline (3 s).
    pub timeout: Duration,
    pub sessions: Sessions,
}

/// The session secret when `BOOKINFO_SESSION_SECRET` is not set. Like the original's, it is
/// public: the session only carries a demo user name.
const DEFAULT_SECRET: &[u8] = b"keel-bookinfo-session";

impl Config {
    pub fn from_env() -> Config {
        let secret = std::env::var("BOOKINFO_SESSION_SECRET")
            .map(String::into_bytes)
            .unwrap_or_else(|_| DEFAULT_SECRET.to_vec());
        Config {
            details: Upstream::from_env("details"),
            reviews: Upstream::from_env("reviews"),
            ratings: Upstream::from_env("ratings"),
            timeout: http::scaled(3.0, http::time_scale()),
            sessions: Sessions::new(&secret),
        }
    }
}

/// The session user, if the request carries a valid session cookie.
fn session_user(cfg: &Config, headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session_cookie)
        .and_then(|v| cfg.sessions.user(v))
}

/// Headers for upstream calls: the 1.0 trace list, and `end-user` from the session.
fn upstream_headers(incoming: &HeaderMap, user: Option<&str>) -> HeaderMap {
    let mut h = copy_headers(incoming, TRACE_HEADERS);
    if let Some(u) = user
        && let Ok(v) = HeaderValue::from_str(u)
    {
        h.insert("end-user", v);
    }
    h
}

async fn details(cfg: &Config, id: &str, headers: &HeaderMap) -> Outbound {
    http::get(
        &cfg.details.host,
        cfg.details.port,
        &format!("/details/{id}"),
        headers,
        cfg.timeout,
    )
    .await
}

/// Two tries, the second whenever the first is not a 200; the last outcome counts.
async fn reviews(cfg: &Config, id: &str, headers: &HeaderMap) -> Outbound {
    let path = format!("/reviews/{id}");
    let first = http::get(
        &cfg.reviews.host,
        cfg.reviews.port,
        &path,
        headers,
        cfg.timeout,
    )
    .await;
    if first.ok_json().is_some() {
        return first;
    }
    tracing::info!(outcome = ?first.status(), "reviews failed; trying once more");
    http::get(
        &cfg.reviews.host,
        cfg.reviews.port,
        &path,
        headers,
        cfg.timeout,
    )
    .await
}

async fn ratings(cfg: &Config, id: &str, headers: &HeaderMap) -> Outbound {
    http::get(
        &cfg.ratings.host,
        cfg.ratings.port,
        &format!("/ratings/{id}"),
        headers,
        cfg.timeout,
    )
    .await
}

/// Re-serialises JSON with Python's `", "` and `": "` separators.
pub fn python_json(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(python_json).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_json(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// An API answer: the upstream JSON on success, else its status (500 without one) and `error`.
fn api_answer(outcome: &Outbound, error: &str) -> Resp {
    match outcome.ok_json() {
        Some(v) => json(StatusCode::OK, python_json(&v)),
        None => {
            let status = outcome
                .status()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json(status, python_json(&serde_json::json!({ "error": error })))
        }
    }
}

fn redirect_back(req_headers: &HeaderMap, cookie: String) -> Resp {
    let target = req_headers
        .get(hyper::header::REFERER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("/productpage")
        .to_owned();
    let mut r = html(
        StatusCode::FOUND,
        format!(
            "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 3.2 Final//EN\">\n<title>Redirecting...</title>\n<h1>Redirecting...</h1>\n<p>You should be redirected automatically to target URL: <a href=\"{0}\">{0}</a>.  If not click the link.",
            page::escape(&target)
        ),
    );
    if let Ok(v) = HeaderValue::from_str(&target) {
        r.headers_mut().insert(LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(SET_COOKIE, v);
    }
    r
}

/// The `username` field of a urlencoded form.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (url_decode(k) == name).then(|| url_decode(v))
    })
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn handle(req: Request<Incoming>, cfg: &Config) -> Resp {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let user = session_user(cfg, req.headers());
    let headers = upstream_headers(req.headers(), user.as_deref());
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/" | "/index.html" if get => html(StatusCode::OK, page::index_page()),
        "/health" if get => html(StatusCode::OK, "Product page is healthy"),
        "/login" if method == Method::POST => {
            let req_headers = req.headers().clone();
            let body = http::body_bytes(req).await;
            let name = form_field(&body, "username").unwrap_or_default();
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let cookie = format!(
                "session={}; HttpOnly; Path=/",
                cfg.sessions.issue(&name, now)
            );
            redirect_back(&req_headers, cookie)
        }
        "/logout" if get => redirect_back(
            req.headers(),
            "session=; Expires=Thu, 01-Jan-1970 00:00:00 GMT; Max-Age=0; Path=/".to_owned(),
        ),
        "/productpage" if get => {
            let d = details(cfg, "0", &headers).await;
            let r = reviews(cfg, "0", &headers).await;
            let reviews = match r.ok_json() {
                Some(v) => Reviews::Ok(v),
                None => Reviews::Failed,
            };
            html(
                StatusCode::OK,
                page::product_page(user.as_deref(), d.ok_json().as_ref(), &reviews),
            )
        }
        "/api/v1/products" if get => json(
            StatusCode::OK,
            python_json(
                &serde_json::json!([{ "id": 0, "title": page::TITLE, "descriptionHtml": page::DESCRIPTION }]),
            ),
        ),
        "/" | "/index.html" | "/health" | "/login" | "/logout" | "/productpage"
        | "/api/v1/products" => http::method_not_allowed(),
        p => match p
            .strip_prefix("/api/v1/products/")
            .map(|r| r.split('/').collect::<Vec<_>>())
        {
            Some(_) if !get => http::method_not_allowed(),
            Some(parts) => match parts.as_slice() {
                [id] if !id.is_empty() => api_answer(
                    &details(cfg, id, &headers).await,
                    "Sorry, product details are currently unavailable for this book.",
                ),
                [id, "reviews"] if !id.is_empty() => api_answer(
                    &reviews(cfg, id, &headers).await,
                    "Sorry, product reviews are currently unavailable for this book.",
                ),
                [id, "ratings"] if !id.is_empty() => api_answer(
                    &ratings(cfg, id, &headers).await,
                    "Sorry, product ratings are currently unavailable for this book.",
                ),
                _ => http::not_found(),
            },
            None => http::not_found(),
        },
    }
}

pub async fn run(listener: TcpListener, cfg: Config) {
    let cfg = Arc::new(cfg);
    serve(
        listener,
        Arc::new(move |req| {
            let cfg = cfg.clone();
            async move { handle(req, &cfg).await }
        }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_separators() {
        let v = serde_json::json!({"error": "x", "list": [1, 2]});
        assert_eq!(python_json(&v), "{\"error\": \"x\", \"list\": [1, 2]}");
    }

    #[test]
    fn form_decoding() {
        assert_eq!(
            form_field(b"username=jason&passwd=", "username").as_deref(),
            Some("jason")
        );
        assert_eq!(
            form_field(b"username=a%20b+c", "username").as_deref(),
            Some("a b c")
        );
        assert_eq!(form_field(b"passwd=x", "username"), None);
    }
}
