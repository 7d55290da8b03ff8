//! The four Bookinfo services on loopback, checked against the spec (../shared/spec/bookinfo.md)
//! and, for the page, against Istio 1.0's golden pages' markers and structure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::{HeaderMap, StatusCode};
use keel_samples::http::{self, Upstream};
use keel_samples::session::Sessions;
use keel_samples::{details, productpage, ratings, reviews};

fn shared() -> PathBuf {
    std::env::var_os("KEEL_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
}

async fn listener() -> (tokio::net::TcpListener, Upstream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (
        l,
        Upstream {
            host: "127.0.0.1".into(),
            port,
        },
    )
}

async fn start_details() -> Upstream {
    let (l, u) = listener().await;
    tokio::spawn(details::run(l));
    u
}

async fn start_ratings() -> Upstream {
    let (l, u) = listener().await;
    tokio::spawn(ratings::run(l, ratings::Flavor::V1));
    u
}

async fn start_reviews(version: &str, ratings: Upstream, scale: f64) -> Upstream {
    let (l, u) = listener().await;
    let cfg = match version {
        "v1" => reviews::Config::new(false, "black", ratings, scale),
        "v2" => reviews::Config::new(true, "black", ratings, scale),
        _ => reviews::Config::new(true, "red", ratings, scale),
    };
    tokio::spawn(reviews::run(l, cfg));
    u
}

const SECRET: &[u8] = b"test-secret";

async fn start_productpage(
    details: Upstream,
    reviews: Upstream,
    ratings: Upstream,
    timeout: Duration,
) -> Upstream {
    let (l, u) = listener().await;
    let cfg = productpage::Config {
        details,
        reviews,
        ratings,
        timeout,
        sessions: Sessions::new(SECRET),
    };
    tokio::spawn(productpage::run(l, cfg));
    u
}

/// An address where nothing listens.
fn nowhere() -> Upstream {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Upstream {
        host: "127.0.0.1".into(),
        port,
    }
}

/// What a capturing upstream saw.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    headers: HeaderMap,
}

/// An upstream that records requests and answers `status`/`body` after `delay`.
async fn capture(
    status: u16,
    body: &'static str,
    delay: Duration,
) -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let (l, u) = listener().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(http::serve(
        l,
        Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(Seen {
                    path: req.uri().path().to_owned(),
                    headers: req.headers().clone(),
                });
                tokio::time::sleep(delay).await;
                http::json(StatusCode::from_u16(status).unwrap(), body)
            }
        }),
    ));
    (u, seen)
}

async fn fetch(u: &Upstream, path: &str, headers: &[(&str, &str)]) -> (u16, HeaderMap, String) {
    let addr: SocketAddr = format!("{}:{}", u.host, u.port).parse().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .uri(path)
        .header("host", "bookinfo");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(
            b.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

async fn post_form(
    u: &Upstream,
    path: &str,
    form: &str,
    headers: &[(&str, &str)],
) -> (u16, HeaderMap, String) {
    let addr: SocketAddr = format!("{}:{}", u.host, u.port).parse().unwrap();
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "bookinfo")
        .header("content-type", "application/x-www-form-urlencoded");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let resp = send
        .send_request(
            b.body(http_body_util::Full::new(bytes::Bytes::from(
                form.to_owned(),
            )))
            .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

const DETAILS_0: &str = "{\"id\":0,\"author\":\"William Shakespeare\",\"year\":1595,\"type\":\"paperback\",\"pages\":200,\"publisher\":\"PublisherA\",\"language\":\"English\",\"ISBN-10\":\"1234567890\",\"ISBN-13\":\"123-1234567890\"}";
const RATINGS_0: &str = "{\"id\":0,\"ratings\":{\"Reviewer1\":5,\"Reviewer2\":4}}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn details_and_ratings_answer_as_specified() {
    let d = start_details().await;
    assert_eq!(fetch(&d, "/details/0", &[]).await.2, DETAILS_0);
    let (s, h, b) = fetch(&d, "/details/abc", &[]).await;
    assert_eq!(
        (s, b.as_str()),
        (400, "{\"error\":\"please provide numeric product id\"}")
    );
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        fetch(&d, "/health", &[]).await.2,
        "{\"status\":\"Details is healthy\"}"
    );
    assert_eq!(fetch(&d, "/nothing", &[]).await.0, 404);

    let r = start_ratings().await;
    assert_eq!(fetch(&r, "/ratings/0", &[]).await.2, RATINGS_0);
    assert_eq!(
        fetch(&r, "/ratings/abc", &[]).await.2,
        "{\"error\":\"please provide numeric product ID\"}"
    );
    assert_eq!(
        fetch(&r, "/health", &[]).await.2,
        "{\"status\":\"Ratings is healthy\"}"
    );
    let (s, _, b) = fetch(&r, "/other", &[]).await;
    assert_eq!((s, b.as_str()), (404, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_versions_and_ratings_failures() {
    let ratings = start_ratings().await;
    let (cap, seen) = capture(200, RATINGS_0, Duration::ZERO).await;
    let v1 = start_reviews("v1", cap.clone(), 1.0).await;
    let body = fetch(&v1, "/reviews/0", &[]).await.2;
    assert_eq!(body.len(), 295);
    assert!(!body.contains("rating"));
    assert!(seen.lock().unwrap().is_empty(), "v1 must not call ratings");

    let v2 = start_reviews("v2", ratings.clone(), 1.0).await;
    let body = fetch(&v2, "/reviews/0", &[]).await.2;
    assert_eq!(body.len(), 379);
    assert!(
        body.contains("\"rating\": {\"stars\": 5, \"color\": \"black\"}"),
        "{body}"
    );
    let v3 = start_reviews("v3", ratings.clone(), 1.0).await;
    let body = fetch(&v3, "/reviews/0", &[]).await.2;
    assert_eq!(body.len(), 375);
    assert!(
        body.contains("\"rating\": {\"stars\": 4, \"color\": \"red\"}"),
        "{body}"
    );
    assert_eq!(
        fetch(&v3, "/health", &[]).await.2,
        "{\"status\": \"Reviews is healthy\"}"
    );
    assert_eq!(fetch(&v3, "/reviews/abc", &[]).await.0, 404);

    // Ratings refuses connections, or answers 500: each review carries the rating error.
    for upstream in [nowhere(), capture(500, "{}", Duration::ZERO).await.0] {
        let v2 = start_reviews("v2", upstream, 1.0).await;
        let (s, _, body) = fetch(&v2, "/reviews/0", &[]).await;
        assert_eq!((s, body.len()), (200, 425), "{body}");
        assert_eq!(
            body.matches("Ratings service is currently unavailable")
                .count(),
            2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_v3_gives_up_on_ratings_after_2_5s_and_v2_after_10s() {
    // Time scaled by 1/10: v3 waits 0.25 s, v2 1 s, against a ratings that takes 3 s.
    let (slow, _) = capture(200, RATINGS_0, Duration::from_secs(3)).await;
    let v3 = start_reviews("v3", slow.clone(), 0.1).await;
    let t = Instant::now();
    let (s, _, body) = fetch(&v3, "/reviews/0", &[]).await;
    let took = t.elapsed();
    assert_eq!(s, 200);
    assert_eq!(
        body.matches("Ratings service is currently unavailable")
            .count(),
        2
    );
    assert!(
        took >= Duration::from_millis(240) && took < Duration::from_millis(900),
        "v3 took {took:?}"
    );

    let v2 = start_reviews("v2", slow, 0.1).await;
    let t = Instant::now();
    let (_, _, body) = fetch(&v2, "/reviews/0", &[]).await;
    let took = t.elapsed();
    assert_eq!(
        body.matches("Ratings service is currently unavailable")
            .count(),
        2
    );
    assert!(
        took >= Duration::from_millis(990) && took < Duration::from_millis(2500),
        "v2 took {took:?}"
    );
}

const TRACE: &[(&str, &str)] = &[
    ("x-request-id", "req-1"),
    ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
    ("x-b3-spanid", "e457b5a2e4d86bd1"),
    ("x-b3-parentspanid", "05e3ac9a4f6e3b90"),
    ("x-b3-sampled", "1"),
    ("x-b3-flags", "0"),
    ("x-ot-span-context", "ctx"),
];

fn assert_forwarded(h: &HeaderMap, end_user: Option<&str>, what: &str) {
    for (k, v) in TRACE {
        assert_eq!(
            h.get(*k).map(|x| x.to_str().unwrap()),
            Some(*v),
            "{what}: {k}"
        );
    }
    assert_eq!(
        h.get("end-user").map(|x| x.to_str().unwrap()),
        end_user,
        "{what}: end-user"
    );
    assert!(
        h.get("cookie").is_none(),
        "{what}: cookie must not be forwarded"
    );
    assert_ne!(
        h.get("user-agent").map(|x| x.to_str().unwrap()),
        Some("curl/8"),
        "{what}: user-agent"
    );
    assert!(h.get("authorization").is_none(), "{what}: authorization");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_forwarding_matrix() {
    let (details, dseen) = capture(200, DETAILS_0, Duration::ZERO).await;
    let (ratings, rseen) = capture(200, RATINGS_0, Duration::ZERO).await;
    let reviews = start_reviews("v2", ratings.clone(), 1.0).await;
    let pp = start_productpage(details, reviews, ratings.clone(), Duration::from_secs(3)).await;
    let session = Sessions::new(SECRET).issue("jason", 1);
    let cookie = format!("other=1; session={session}");
    let mut headers: Vec<(&str, &str)> = TRACE.to_vec();
    headers.extend([
        ("cookie", cookie.as_str()),
        ("user-agent", "curl/8"),
        ("end-user", "mallory"),
        ("authorization", "Bearer x"),
    ]);
    let (s, _, page) = fetch(&pp, "/productpage", &headers).await;
    assert_eq!(s, 200);
    assert!(page.contains("glyphicon-user"), "logged in page expected");
    // productpage -> details: the 1.0 list, end-user from the session (not the request's).
    let d = dseen.lock().unwrap().clone();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].path, "/details/0");
    assert_forwarded(&d[0].headers, Some("jason"), "productpage->details");
    // reviews -> ratings: the same list, and end-user passed along.
    let r = rseen.lock().unwrap().clone();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].path, "/ratings/0");
    assert_forwarded(&r[0].headers, Some("jason"), "reviews->ratings");
    assert_eq!(r[0].headers["accept"], "application/json");

    // Without a session, an end-user header sent to productpage goes nowhere.
    let mut anon: Vec<(&str, &str)> = TRACE.to_vec();
    anon.push(("end-user", "jason"));
    fetch(&pp, "/productpage", &anon).await;
    let d = dseen.lock().unwrap().clone();
    assert_forwarded(&d[1].headers, None, "anonymous productpage->details");
    // A forged session is no session.
    let forged = format!(
        "session={}",
        Sessions::new(b"not-the-secret").issue("jason", 1)
    );
    fetch(&pp, "/productpage", &[("cookie", forged.as_str())]).await;
    assert!(dseen.lock().unwrap()[2].headers.get("end-user").is_none());

    // The ratings API route forwards the same way.
    fetch(&pp, "/api/v1/products/0/ratings", &headers).await;
    let r = rseen.lock().unwrap().clone();
    assert_forwarded(
        &r.last().unwrap().headers,
        Some("jason"),
        "productpage->ratings",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn productpage_tries_reviews_twice_with_3s_each() {
    // Scaled: 300 ms per attempt against a reviews that hangs 2 s.
    let details = start_details().await;
    let (hanging, seen) = capture(200, "{}", Duration::from_secs(2)).await;
    let pp = start_productpage(
        details.clone(),
        hanging,
        nowhere(),
        Duration::from_millis(300),
    )
    .await;
    let t = Instant::now();
    let (s, _, page) = fetch(&pp, "/productpage", &[]).await;
    let took = t.elapsed();
    assert_eq!(s, 200);
    assert_eq!(seen.lock().unwrap().len(), 2, "two attempts");
    assert!(
        took >= Duration::from_millis(590) && took < Duration::from_millis(1500),
        "took {took:?}"
    );
    assert!(page.contains("Error fetching product reviews!"));
    assert!(page.contains("Sorry, product reviews are currently unavailable for this book."));
    assert!(page.contains("Book Details"));

    // Any non-200 is retried too, at once.
    let (failing, seen) = capture(503, "no", Duration::ZERO).await;
    let pp = start_productpage(details, failing, nowhere(), Duration::from_secs(3)).await;
    let (s, _, body) = fetch(&pp, "/api/v1/products/0/reviews", &[]).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!(s, 503);
    assert_eq!(
        body,
        "{\"error\": \"Sorry, product reviews are currently unavailable for this book.\"}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_logout_and_health() {
    let pp = start_productpage(
        start_details().await,
        start_reviews("v1", nowhere(), 1.0).await,
        nowhere(),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        fetch(&pp, "/health", &[]).await.2,
        "Product page is healthy"
    );
    let (s, h, _) = post_form(
        &pp,
        "/login",
        "username=jason&passwd=",
        &[("referer", "http://gw/productpage")],
    )
    .await;
    assert_eq!(s, 302);
    assert_eq!(h["location"], "http://gw/productpage");
    let set = h["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.starts_with("session=") && set.ends_with("; HttpOnly; Path=/"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let (_, _, page) = fetch(&pp, "/productpage", &[("cookie", cookie.as_str())]).await;
    assert!(
        page.contains("jason  ( <a href=\"logout\">sign out</a> )"),
        "{page}"
    );
    assert!(page.contains("Signed in as jason"));
    // HTML in a user name is escaped.
    let (_, h, _) = post_form(&pp, "/login", "username=%3Cb%3E", &[]).await;
    let c = h["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (_, _, page) = fetch(&pp, "/productpage", &[("cookie", c.as_str())]).await;
    assert!(page.contains("&lt;b&gt;  ( <a href=\"logout\">sign out</a> )"));
    let (s, h, _) = fetch(
        &pp,
        "/logout",
        &[
            ("cookie", cookie.as_str()),
            ("referer", "http://gw/productpage"),
        ],
    )
    .await;
    assert_eq!(s, 302);
    assert_eq!(
        h["set-cookie"],
        "session=; Expires=Thu, 01-Jan-1970 00:00:00 GMT; Max-Age=0; Path=/"
    );
    assert_eq!(fetch(&pp, "/login", &[]).await.0, 405);
    assert_eq!(fetch(&pp, "/nowhere", &[]).await.0, 404);
    let (s, _, body) = fetch(&pp, "/api/v1/products", &[]).await;
    assert_eq!(s, 200);
    assert!(
        body.starts_with("[{") && body.contains("\"title\": \"The Comedy of Errors\""),
        "{body}"
    );
    let (s, _, body) = fetch(&pp, "/api/v1/products/0", &[]).await;
    assert_eq!(s, 200);
    assert!(body.contains("\"ISBN-10\": \"1234567890\""), "{body}");
}

/// Markers whose counts must equal the golden page's.
const MARKERS: &[&str] = &[
    "<title>Simple Bookstore App</title>",
    "The Comedy of Errors",
    "navbar navbar-inverse navbar-static-top",
    "BookInfo Sample",
    "glyphicon glyphicon-star\"",
    "glyphicon-star-empty",
    "glyphicon-star",
    "<font color=\"black\">",
    "<font color=\"red\">",
    "<font color=",
    "Ratings service is currently unavailable",
    "<p><i>Ratings service is currently unavailable</i></p>",
    "Error fetching product reviews!",
    "Sorry, product reviews are currently unavailable for this book.",
    "Error fetching product details!",
    "Sorry, product details are currently unavailable for this book.",
    "Book Details",
    "Book Reviews",
    "glyphicon-user",
    "sign out",
    "Signed in as jason",
    "<blockquote>",
    "<dt>",
    "Reviewer1",
    "Reviewer2",
    "<form method=\"post\" action='login'",
    "name=\"username\"",
    "name=\"passwd\"",
    "<h3 class=\"text-center text-primary\">The Comedy of Errors</h3>",
    "<p>Summary: <a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>",
];

/// Markers that must appear in this order in both pages.
const ORDER: &[&str] = &[
    "<title>",
    "class=\"navbar-brand\"",
    "<!---",
    "<div id=\"login-modal\"",
    "<h3 ",
    "<div class=\"col-md-6\">",
    "</html>",
];

fn compare_with_golden(page: &str, golden_name: &str) {
    let golden = std::fs::read_to_string(
        shared()
            .join("istio-samples/1.0/derived-goldens")
            .join(golden_name),
    )
    .unwrap();
    for m in MARKERS {
        assert_eq!(
            page.matches(m).count(),
            golden.matches(m).count(),
            "marker {m:?} against {golden_name}"
        );
    }
    for doc in [page, golden.as_str()] {
        let positions: Vec<usize> = ORDER
            .iter()
            .map(|m| doc.find(m).unwrap_or(usize::MAX))
            .collect();
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "structure order in {golden_name}: {positions:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_pages_match_the_1_0_goldens() {
    let details = start_details().await;
    let ratings = start_ratings().await;
    let (aborting, _) = capture(500, "fault filter abort", Duration::ZERO).await;
    let t = Duration::from_secs(3);
    let jason = format!("session={}", Sessions::new(SECRET).issue("jason", 1));
    let cases: Vec<(&str, Upstream, Upstream, bool)> = vec![
        (
            "anonymous-v1.html",
            details.clone(),
            start_reviews("v1", ratings.clone(), 1.0).await,
            false,
        ),
        (
            "anonymous-v2.html",
            details.clone(),
            start_reviews("v2", ratings.clone(), 1.0).await,
            false,
        ),
        (
            "anonymous-v3.html",
            details.clone(),
            start_reviews("v3", ratings.clone(), 1.0).await,
            false,
        ),
        (
            "jason-v2.html",
            details.clone(),
            start_reviews("v2", ratings.clone(), 1.0).await,
            true,
        ),
        (
            "jason-v3.html",
            details.clone(),
            start_reviews("v3", ratings.clone(), 1.0).await,
            true,
        ),
        (
            "jason-v2-ratings-unavailable.html",
            details.clone(),
            start_reviews("v2", aborting.clone(), 1.0).await,
            true,
        ),
        (
            "jason-reviews-unavailable.html",
            details.clone(),
            nowhere(),
            true,
        ),
        (
            "anonymous-details-unavailable-v1.html",
            nowhere(),
            start_reviews("v1", ratings.clone(), 1.0).await,
            false,
        ),
    ];
    for (golden, d, r, logged_in) in cases {
        let pp = start_productpage(d, r, ratings.clone(), t).await;
        let headers: Vec<(&str, &str)> = if logged_in {
            vec![("cookie", jason.as_str())]
        } else {
            vec![]
        };
        let (s, h, page) = fetch(&pp, "/productpage", &headers).await;
        assert_eq!(s, 200, "{golden}");
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        compare_with_golden(&page, golden);
    }
}
