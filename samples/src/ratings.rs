//! ratings v1: two reviewers' stars. `SERVICE_VERSION=v-faulty` answers half the requests
//! with 503 and `v-delayed` delays half by 7 s, like Istio's test images.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::http::{Resp, json, serve};

/// Which ratings this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    V1,
    Faulty,
    Delayed,
}

impl Flavor {
    pub fn from_env() -> Flavor {
        match std::env::var("SERVICE_VERSION").as_deref() {
            Ok("v-faulty") => Flavor::Faulty,
            Ok("v-delayed") => Flavor::Delayed,
            _ => Flavor::V1,
        }
    }
}

pub fn ratings_body(id: i64) -> String {
    format!("{{\"id\":{id},\"ratings\":{{\"Reviewer1\":5,\"Reviewer2\":4}}}}")
}

/// JavaScript's `parseInt` on the text after the last `/` of the raw URL.
fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim_start();
    let (neg, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let v: i64 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// Every other request fails for the faulty and delayed flavours (a coin that cannot run
/// streaks, so tests see both outcomes).
fn unlucky(counter: &AtomicU64) -> bool {
    counter.fetch_add(1, Ordering::Relaxed) % 2 == 1
}

pub async fn handle(req: Request<Incoming>, flavor: Flavor, counter: &AtomicU64) -> Resp {
    let path = req.uri().path();
    let raw = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(path)
        .to_owned();
    if req.method() == Method::GET && path == "/health" {
        return json(StatusCode::OK, "{\"status\":\"Ratings is healthy\"}");
    }
    let is_ratings = path.starts_with("/ratings/")
        && path["/ratings/".len()..]
            .bytes()
            .all(|b| b.is_ascii_digit());
    if req.method() == Method::GET && path.starts_with("/ratings/") {
        if !is_ratings || path.len() == "/ratings/".len() {
            return json(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"please provide numeric product ID\"}",
            );
        }
        let id = raw.rsplit('/').next().and_then(parse_int);
        let Some(id) = id else {
            return json(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"please provide numeric product ID\"}",
            );
        };
        match flavor {
            Flavor::Faulty if unlucky(counter) => {
                return json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "{\"error\":\"Service unavailable\"}",
                );
            }
            Flavor::Delayed if unlucky(counter) => tokio::time::sleep(Duration::from_secs(7)).await,
            _ => {}
        }
        let mut r = json(StatusCode::OK, ratings_body(id));
        r.headers_mut().remove(hyper::header::CONTENT_TYPE);
        r.headers_mut().insert(
            hyper::header::HeaderName::from_static("content-type"),
            hyper::header::HeaderValue::from_static("application/json"),
        );
        return r;
    }
    let mut r = Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

pub async fn run(listener: TcpListener, flavor: Flavor) {
    let counter = Arc::new(AtomicU64::new(0));
    serve(
        listener,
        Arc::new(move |req| {
            let counter = counter.clone();
            async move { handle(req, flavor, &counter).await }
        }),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_48_bytes() {
        assert_eq!(ratings_body(0).len(), 48);
    }

    #[test]
    fn parses_like_javascript() {
        assert_eq!(parse_int("0"), Some(0));
        assert_eq!(parse_int("12?x=1"), Some(12));
        assert_eq!(parse_int("abc"), None);
    }
}
