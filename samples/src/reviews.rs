//! reviews v1/v2/v3, one program: v1 has no ratings, v2 black stars, v3 red stars.
//!
//! v2 waits 10 s for ratings, v3 (any colour but black) 2.5 s. A ratings failure of any kind
//! (non-200, missing reviewer, timeout, refused connection) gives each review the rating error
//! and a 200: the later, fixed behaviour Keel's samples keep (see the spec's decisions).

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{HeaderMap, Request, StatusCode};
use tokio::net::TcpListener;

use crate::http::{self, Resp, TRACE_HEADERS, Upstream, copy_headers, json, not_found, serve};

#[derive(Clone, Debug)]
pub struct Config {
    pub enable_ratings: bool,
    pub star_color: String,
    pub ratings: Upstream,
    pub ratings_timeout: Duration,
}

impl Config {
    /// From `ENABLE_RATINGS` (Java's `Boolean.valueOf`), `STAR_COLOR` (default black),
    /// `RATINGS_HOSTNAME`/`SERVICES_DOMAIN`/`RATINGS_SERVICE_PORT`.
    pub fn from_env() -> Config {
        let enable_ratings =
            std::env::var("ENABLE_RATINGS").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        let star_color = std::env::var("STAR_COLOR").unwrap_or_else(|_| "black".to_owned());
        Config::new(
            enable_ratings,
            &star_color,
            Upstream::from_env("ratings"),
            http::time_scale(),
        )
    }

    pub fn new(enable_ratings: bool, star_color: &str, ratings: Upstream, scale: f64) -> Config {
        let secs = if star_color == "black" { 10.0 } else { 2.5 };
        Config {
            enable_ratings,
            star_color: star_color.to_owned(),
            ratings,
            ratings_timeout: http::scaled(secs, scale),
        }
    }
}

const REVIEWS: [(&str, &str); 2] = [
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.",
    ),
];

/// The rating part of one review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rating {
    None,
    Stars(i64, String),
    Unavailable,
}

/// The JSON body, byte for byte as the original built it by hand.
pub fn reviews_body(product_id: &str, ratings: &[Rating; 2]) -> String {
    let mut out = format!("{{\"id\": \"{product_id}\",\"reviews\": [");
    for (i, ((reviewer, text), rating)) in REVIEWS.iter().zip(ratings).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            "{{  \"reviewer\": \"{reviewer}\",  \"text\": \"{text}\""
        ));
        match rating {
            Rating::None => {}
            Rating::Stars(n, color) => out.push_str(&format!(
                ", \"rating\": {{\"stars\": {n}, \"color\": \"{color}\"}}"
            )),
            Rating::Unavailable => out.push_str(
                ", \"rating\": {\"error\": \"Ratings service is currently unavailable\"}",
            ),
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

async fn fetch_ratings(cfg: &Config, product_id: &str, incoming: &HeaderMap) -> [Rating; 2] {
    let mut headers = copy_headers(incoming, TRACE_HEADERS);
    if let Some(user) = incoming.get("end-user") {
        headers.insert("end-user", user.clone());
    }
    headers.insert(
        hyper::header::ACCEPT,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let path = format!("/ratings/{product_id}");
    let answer = http::get(
        &cfg.ratings.host,
        cfg.ratings.port,
        &path,
        &headers,
        cfg.ratings_timeout,
    )
    .await;
    let json = answer.ok_json();
    if json.is_none() {
        tracing::info!(outcome = ?answer.status(), "ratings unavailable");
    }
    let stars = |reviewer: &str| {
        json.as_ref()
            .and_then(|j| j.get("ratings")?.get(reviewer)?.as_i64())
            .map_or(Rating::Unavailable, |n| {
                Rating::Stars(n, cfg.star_color.clone())
            })
    };
    [stars("Reviewer1"), stars("Reviewer2")]
}

pub async fn handle(req: Request<Incoming>, cfg: &Config) -> Resp {
    let path = req.uri().path().to_owned();
    if path == "/health" {
        return json(StatusCode::OK, "{\"status\": \"Reviews is healthy\"}");
    }
    let Some(id) = path.strip_prefix("/reviews/") else {
        return not_found();
    };
    // JAX-RS: the id must be an int, else no route matches; it is used as parsed ("007" is 7).
    let Ok(id) = id.parse::<i32>() else {
        return not_found();
    };
    let id = id.to_string();
    let ratings = if cfg.enable_ratings {
        fetch_ratings(cfg, &id, req.headers()).await
    } else {
        [Rating::None, Rating::None]
    };
    json(StatusCode::OK, reviews_body(&id, &ratings))
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
    fn bodies_have_the_original_sizes() {
        assert_eq!(reviews_body("0", &[Rating::None, Rating::None]).len(), 295);
        let black = [
            Rating::Stars(5, "black".into()),
            Rating::Stars(4, "black".into()),
        ];
        assert_eq!(reviews_body("0", &black).len(), 379);
        let red = [
            Rating::Stars(5, "red".into()),
            Rating::Stars(4, "red".into()),
        ];
        assert_eq!(reviews_body("0", &red).len(), 375);
        assert_eq!(
            reviews_body("0", &[Rating::Unavailable, Rating::Unavailable]).len(),
            425
        );
    }

    #[test]
    fn v1_body_is_exact() {
        assert_eq!(
            reviews_body("0", &[Rating::None, Rating::None]),
            "{\"id\": \"0\",\"reviews\": [{  \"reviewer\": \"Reviewer1\",  \"text\": \"An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!\"},{  \"reviewer\": \"Reviewer2\",  \"text\": \"Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare.\"}]}"
        );
    }
}
