//! details v1: the book's static details.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use tokio::net::TcpListener;

use crate::http::{Resp, json, not_found, serve};

/// The body of `/details/<id>` for the parsed `id`.
pub fn details_body(id: i64) -> String {
    format!(
        "{{\"id\":{id},\"author\":\"William Shakespeare\",\"year\":1595,\"type\":\"paperback\",\"pages\":200,\"publisher\":\"PublisherA\",\"language\":\"English\",\"ISBN-10\":\"1234567890\",\"ISBN-13\":\"123-1234567890\"}}"
    )
}

/// Parses an id the way the original's Ruby `Integer()` did: decimal, or `0x` hex, or a
/// leading-zero octal, with an optional sign.
fn parse_ruby_integer(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    // Digits only after the prefix: `from_str_radix` alone would take a second sign.
    let (digits, radix) =
        if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            (hex, 16)
        } else if body.len() > 1 && body.starts_with('0') {
            (&body[1..], 8)
        } else {
            (body, 10)
        };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i64::from_str_radix(digits, radix).ok()?;
    if neg { v.checked_neg() } else { Some(v) }
}

pub async fn handle(req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_owned();
    if !matches!(*req.method(), Method::GET | Method::HEAD | Method::POST) {
        return not_found();
    }
    if path == "/health" {
        return json(StatusCode::OK, "{\"status\":\"Details is healthy\"}");
    }
    if path == "/details" || path.starts_with("/details/") {
        let last = path.rsplit('/').next().unwrap_or("");
        return match parse_ruby_integer(last).filter(|_| path != "/details") {
            Some(id) => json(StatusCode::OK, details_body(id)),
            None => json(
                StatusCode::BAD_REQUEST,
                "{\"error\":\"please provide numeric product id\"}",
            ),
        };
    }
    not_found()
}

pub async fn run(listener: TcpListener) {
    serve(listener, Arc::new(handle)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_178_bytes_for_id_0() {
        assert_eq!(details_body(0).len(), 178);
    }

    #[test]
    fn ids_parse_like_ruby() {
        assert_eq!(parse_ruby_integer("0"), Some(0));
        assert_eq!(parse_ruby_integer("12"), Some(12));
        assert_eq!(parse_ruby_integer("010"), Some(8));
        assert_eq!(parse_ruby_integer("0x1f"), Some(31));
        assert_eq!(parse_ruby_integer("abc"), None);
        assert_eq!(parse_ruby_integer("0x-1f"), None);
        assert_eq!(parse_ruby_integer("0-7"), None);
        assert_eq!(parse_ruby_integer("-0x8000000000000000"), None);
        assert_eq!(parse_ruby_integer("09"), None);
        assert_eq!(parse_ruby_integer(""), None);
    }
}
