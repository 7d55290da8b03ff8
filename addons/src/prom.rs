//! Prometheus' instant-query API (`GET /api/v1/query?query=...`): vectors and scalars.

use std::collections::BTreeMap;
use std::time::Duration;

/// One sample of an instant vector.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("prometheus at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("prometheus answered {status} to {query:?}: {body}")]
    Status {
        query: String,
        status: u16,
        body: String,
    },
    #[error("prometheus' answer to {query:?} is not an instant vector: {reason}")]
    Shape { query: String, reason: String },
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The samples of an API answer (`resultType` vector or scalar).
pub fn parse(query: &str, body: &[u8]) -> Result<Vec<Sample>, PromError> {
    let shape = |reason: String| PromError::Shape {
        query: query.to_owned(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| shape(format!("not JSON: {e}")))?;
    if v["status"] != "success" {
        return Err(shape(format!("status {}: {}", v["status"], v["error"])));
    }
    let number = |pair: &serde_json::Value| -> Result<f64, PromError> {
        pair.get(1)
            .and_then(|s| s.as_str())
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or_else(|| shape(format!("bad value {pair}")))
    };
    match v["data"]["resultType"].as_str() {
        Some("vector") => v["data"]["result"]
            .as_array()
            .ok_or_else(|| shape("no result".into()))?
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Sample {
                    labels,
                    value: number(&r["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: number(&v["data"]["result"])?,
        }]),
        other => Err(shape(format!("result type {other:?}"))),
    }
}

/// Where Prometheus answers.
#[derive(Clone, Debug)]
pub struct Prometheus {
    pub host: String,
    pub port: u16,
}

impl Prometheus {
    /// From `HOST:PORT` (an `http://` prefix is allowed).
    pub fn parse(addr: &str) -> Result<Prometheus, String> {
        let a = addr.trim_start_matches("http://").trim_end_matches('/');
        let (host, port) = a
            .rsplit_once(':')
            .ok_or_else(|| format!("{addr:?} is not HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{addr:?}: {port:?} is not a port"))?;
        Ok(Prometheus {
            host: host.to_owned(),
            port,
        })
    }

    /// Runs an instant query.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, PromError> {
        let path = format!("/api/v1/query?query={}", encode(query));
        match keel_samples::http::get(
            &self.host,
            self.port,
            &path,
            &hyper::HeaderMap::new(),
            Duration::from_secs(10),
        )
        .await
        {
            keel_samples::http::Outbound::Response { status: 200, body } => parse(query, &body),
            keel_samples::http::Outbound::Response { status, body } => Err(PromError::Status {
                query: query.to_owned(),
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
            keel_samples::http::Outbound::Failed(reason) => Err(PromError::Unreachable {
                addr: format!("{}:{}", self.host, self.port),
                reason,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn queries_are_encoded_and_answers_parsed() {
        assert_eq!(
            encode("sum(rate(a{b=\"c\"}[5m]))"),
            "sum%28rate%28a%7Bb%3D%22c%22%7D%5B5m%5D%29%29"
        );
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"source_app":"productpage"},"value":[1764000000.1,"0.5"]}]}}"#;
        let s = parse("q", body).unwrap();
        assert_eq!(s[0].labels["source_app"], "productpage");
        assert_eq!(s[0].value, 0.5);
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}}"#;
        assert!(parse("q", scalar).unwrap()[0].value.is_nan());
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert!(
            parse("q", bad)
                .unwrap_err()
                .to_string()
                .contains("parse error")
        );
        assert!(Prometheus::parse("http://127.0.0.1:9090/").is_ok());
        assert!(Prometheus::parse("nope").is_err());
    }
}
