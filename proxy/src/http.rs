//! The HTTP connection manager: each request finds its virtual host and route, goes
//! through the fault filter, and is forwarded to an endpoint of the route's cluster with the
//! route's timeout and retries, or answered by a redirect or a direct response.
//!
//! Answers keel-proxy makes itself use Envoy's status codes and bodies (`no healthy
//! upstream`, `upstream request timeout`, `fault filter abort`, ...), since applications and
//! tests look for them. Request bodies stream upstream as they arrive, with a copy kept (up
//! to 1 MiB, Envoy's default buffer limit) so that retries and mirrors can send them again
//! (see [`crate::body`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::{BodyError, Downstream, Outgoing, Replay};
use crate::connect::Connector;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::Shared;
use crate::als::HttpEntry;
use crate::authz::Decision;
use crate::breaker::{Breaker, RetryGuard};
use crate::model::{
    Balancer, Cluster, Config, Discovery, Forward, HttpManager, PathMatch, Route, RouteAction,
    RouteAuthz, RouteSource, RouteTable, VirtualHost,
};
use crate::outlier::{Detector, Outcome as OutlierOutcome};

pub type Body = BoxBody<Bytes, BodyError>;

/// How much of a request body is kept for retries and mirrors (Envoy's default buffer limit).
const MAX_BUFFERED_BODY: usize = 1 << 20;
const RETRY_BASE: Duration = Duration::from_millis(25);

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

fn local_reply(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if !body.is_empty() {
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    r
}

/// Counts a request in flight for the drain on SIGTERM.
struct Active<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Active<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> Active<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Active(n)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Upstream state shared by all connections: load balancer positions, connection pools,
/// circuit breakers and outlier detection.
#[derive(Debug, Default)]
pub struct Upstreams {
    next: Mutex<HashMap<String, usize>>,
    /// By cluster name.
    clients: Mutex<HashMap<String, Pool>>,
    client_tls: crate::tls::ClientConfigs,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    pub outliers: Detector,
    /// Requests in flight per (cluster, endpoint), for LEAST_REQUEST.
    in_flight: Arc<Mutex<HashMap<(String, SocketAddr), usize>>>,
    /// RING_HASH rings by cluster, with the endpoints they were built from.
    rings: Mutex<HashMap<String, RingEntry>>,
    /// STRICT_DNS names as last resolved: (name, port, lookup family) -> addresses.
    pub dns: Mutex<HashMap<crate::dns::Name, Vec<SocketAddr>>>,
}

type RingEntry = (Vec<SocketAddr>, Arc<Vec<(u64, SocketAddr)>>);

/// How requests reach a cluster's endpoints.
#[derive(Clone, Debug)]
enum UpstreamClient {
    /// keel-proxy's own HTTP/1.1 client, in the request's task: plaintext HTTP/1.1 clusters.
    H1(Arc<crate::h1::Pool>),
    /// hyper's pooled client: clusters that speak HTTP/2 or originate TLS.
    Hyper(Arc<Client<Connector, Outgoing>>),
}

/// Why an attempt got no response.
enum SendFailure {
    Connect,
    Reset,
    /// A reused connection closed before answering: the request can go again at once.
    Stale,
}

impl UpstreamClient {
    /// Sends `parts`' request to `addr`; `take_headers` lets the request have the headers
    /// instead of a copy (the last attempt).
    async fn send(
        &self,
        addr: SocketAddr,
        parts: &mut hyper::http::request::Parts,
        path: &str,
        take_headers: bool,
        body: Outgoing,
    ) -> Result<Response<Body>, SendFailure> {
        match self {
            UpstreamClient::H1(pool) => {
                match pool
                    .send(addr, &parts.method, path, &parts.headers, body)
                    .await
                {
                    Ok(r) => Ok(r.map(BodyExt::boxed)),
                    Err(crate::h1::SendError::Stale { .. }) => Err(SendFailure::Stale),
                    Err(e) if e.is_connect() => Err(SendFailure::Connect),
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream request failed");
                        Err(SendFailure::Reset)
                    }
                }
            }
            UpstreamClient::Hyper(client) => {
                let Ok(uri) = format!("http://{addr}{path}").parse::<hyper::Uri>() else {
                    return Err(SendFailure::Reset);
                };
                let mut up = Request::new(body);
                *up.method_mut() = parts.method.clone();
                *up.uri_mut() = uri;
                *up.headers_mut() = if take_headers {
                    std::mem::take(&mut parts.headers)
                } else {
                    parts.headers.clone()
                };
                // Boxed: hyper's request future would otherwise double the size of every
                // request's future, HTTP/1.1 ones included.
                match Box::pin(client.request(up)).await {
                    Ok(r) => Ok(r.map(|b| b.map_err(BodyError::from).boxed())),
                    Err(e) if e.is_connect() => Err(SendFailure::Connect),
                    Err(_) => Err(SendFailure::Reset),
                }
            }
        }
    }
}

/// A cluster's connection pool, with the TLS configuration it was built with (a rotated
/// certificate file gives a new configuration, and so a new pool).
#[derive(Debug)]
struct Pool {
    settings: PoolSettings,
    tls: Option<Arc<rustls::ClientConfig>>,
    client: UpstreamClient,
}

/// What a cluster's pool was built with.
#[derive(Debug)]
struct PoolSettings {
    http2: bool,
    connect_timeout: Duration,
    max_requests_per_connection: Option<u32>,
    idle_timeout: Option<Duration>,
    tls: Option<crate::model::ClientTls>,
}

impl PoolSettings {
    fn of(cluster: &Cluster) -> PoolSettings {
        PoolSettings {
            http2: cluster.http2,
            connect_timeout: cluster.connect_timeout,
            max_requests_per_connection: cluster.max_requests_per_connection,
            idle_timeout: cluster.idle_timeout,
            tls: cluster.tls.clone(),
        }
    }

    /// Whether `cluster` still has these settings (compared in place, nothing copied).
    fn fit(&self, cluster: &Cluster) -> bool {
        self.http2 == cluster.http2
            && self.connect_timeout == cluster.connect_timeout
            && self.max_requests_per_connection == cluster.max_requests_per_connection
            && self.idle_timeout == cluster.idle_timeout
            && self.tls == cluster.tls
    }
}

/// One request in flight to an endpoint (counted while held).
#[derive(Debug)]
pub struct InFlight {
    key: (String, SocketAddr),
    counts: Arc<Mutex<HashMap<(String, SocketAddr), usize>>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl Upstreams {
    /// Every endpoint of `cluster`; ORIGINAL_DST clusters have the one the client dialled.
    fn endpoints(
        &self,
        config: &Config,
        cluster: &Cluster,
        original_dst: SocketAddr,
    ) -> Vec<SocketAddr> {
        match cluster.discovery {
            Discovery::OriginalDst => vec![original_dst],
            Discovery::Eds => config
                .endpoints
                .get(&cluster.eds_name)
                .map(|eps| eps.iter().filter_map(|e| e.addr).collect())
                .unwrap_or_default(),
            Discovery::Static => cluster
                .hosts
                .iter()
                .filter_map(|(h, p)| Some(SocketAddr::new(h.parse().ok()?, *p)))
                .collect(),
            // Names resolved by the DNS task (crate::dns); addresses as they are.
            Discovery::StrictDns => {
                let resolved = self.dns.lock().unwrap_or_else(|p| p.into_inner());
                cluster
                    .hosts
                    .iter()
                    .flat_map(|(h, p)| match h.parse() {
                        Ok(ip) => vec![SocketAddr::new(ip, *p)],
                        Err(_) => resolved
                            .get(&(h.clone(), *p, cluster.dns_lookup))
                            .cloned()
                            .unwrap_or_default(),
                    })
                    .collect()
            }
        }
    }

    /// A connection of its own to `addr` (TLS when the cluster says so), for upgraded
    /// requests that leave the pool.
    pub async fn connect(
        &self,
        cluster: &Cluster,
        addr: SocketAddr,
    ) -> Result<TokioIo<crate::connect::Upstream>, crate::body::BodyError> {
        use tower_service::Service;
        let tls = self.tls_config(cluster)?;
        let mut connector = connector(cluster, tls);
        let uri: hyper::Uri = format!("http://{addr}").parse()?;
        Ok(TokioIo::new(connector.call(uri).await?))
    }

    /// An endpoint of `cluster` not ejected by outlier detection (all of them in panic), and
    /// how many endpoints the cluster has.
    pub fn pick(
        &self,
        config: &Config,
        cluster: &Cluster,
        original_dst: SocketAddr,
        hash: Option<u64>,
    ) -> Option<(SocketAddr, usize)> {
        // The common cases without a list built per request: EDS or static endpoints, no
        // outlier detection, round robin or random.
        let simple = cluster.outlier.is_none()
            && matches!(cluster.balancer, Balancer::RoundRobin | Balancer::Random);
        let draw = |size: usize| match cluster.balancer {
            Balancer::Random => (crate::random_u64() % size as u64) as usize,
            _ => self.round_robin(&cluster.name, size),
        };
        if simple && cluster.discovery == Discovery::Eds {
            let eps = config.endpoints.get(&cluster.eds_name)?;
            let size = eps.iter().filter(|e| e.addr.is_some()).count();
            if size == 0 {
                return None;
            }
            let i = draw(size);
            return eps.iter().filter_map(|e| e.addr).nth(i).map(|a| (a, size));
        }
        if simple && cluster.discovery == Discovery::Static && !cluster.hosts.is_empty() {
            // STATIC hosts are addresses; one that is not falls to the general case.
            let size = cluster.hosts.len();
            let (host, port) = &cluster.hosts[draw(size)];
            if let Ok(ip) = host.parse() {
                return Some((SocketAddr::new(ip, *port), size));
            }
        }
        let all = self.endpoints(config, cluster, original_dst);
        let size = all.len();
        let candidates = if cluster.outlier.is_some() {
            self.outliers.healthy(&cluster.name, all, Instant::now())
        } else {
            all
        };
        if candidates.is_empty() {
            return None;
        }
        let i = match cluster.balancer {
            Balancer::RingHash { ring_size } => match hash {
                Some(h) => {
                    let ring = self.ring(&cluster.name, &candidates, ring_size);
                    let owner = crate::ring::lookup(&ring, h);
                    return owner.map(|a| (a, size));
                }
                // Nothing to hash: any endpoint (Envoy picks at random too).
                None => (crate::random_u64() % candidates.len() as u64) as usize,
            },
            Balancer::Random => (crate::random_u64() % candidates.len() as u64) as usize,
            Balancer::LeastRequest => {
                // Two draws with replacement, as Envoy's default choice_count of 2.
                let n = candidates.len() as u64;
                let (x, y) = (
                    (crate::random_u64() % n) as usize,
                    (crate::random_u64() % n) as usize,
                );
                let counts = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let load = |i: usize| {
                    counts
                        .get(&(cluster.name.clone(), candidates[i]))
                        .copied()
                        .unwrap_or(0)
                };
                if load(y) < load(x) { y } else { x }
            }
            Balancer::RoundRobin => self.round_robin(&cluster.name, candidates.len()),
        };
        candidates.get(i).map(|a| (*a, size))
    }

    /// The next position of `cluster`'s round robin over `n` endpoints.
    fn round_robin(&self, cluster: &str, n: usize) -> usize {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        // Looked up by reference: the name is copied once per cluster, not per request.
        let at = match next.get_mut(cluster) {
            Some(at) => at,
            None => next.entry(cluster.to_owned()).or_insert(0),
        };
        let i = *at % n;
        *at = at.wrapping_add(1);
        i
    }

    /// The cluster's connection pool; an error when its TLS settings cannot be loaded.
    /// The cluster's TLS client configuration, when it originates TLS.
    fn tls_config(
        &self,
        cluster: &Cluster,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, crate::tls::TlsError> {
        cluster
            .tls
            .as_ref()
            .map(|t| self.client_tls.get(t))
            .transpose()
    }

    fn client(&self, cluster: &Cluster) -> Result<UpstreamClient, crate::tls::TlsError> {
        let tls = self.tls_config(cluster)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // A changed cluster (settings, or a rotated certificate) gets a pool of its own.
        if let Some(pool) = clients.get(cluster.name.as_str())
            && pool.settings.fit(cluster)
            && pool.tls.as_ref().map(Arc::as_ptr) == tls.as_ref().map(Arc::as_ptr)
        {
            return Ok(pool.client.clone());
        }
        let idle_timeout = cluster.idle_timeout.unwrap_or(Duration::from_secs(60));
        let client = if !cluster.http2 && tls.is_none() {
            UpstreamClient::H1(Arc::new(crate::h1::Pool::new(crate::h1::Settings {
                connect_timeout: cluster.connect_timeout,
                idle_timeout,
                max_requests_per_connection: cluster.max_requests_per_connection,
            })))
        } else {
            let connector = connector(cluster, tls.clone());
            let mut builder = Client::builder(TokioExecutor::new());
            builder.pool_idle_timeout(idle_timeout);
            // Clusters with HTTP/2 protocol options (gRPC services) speak HTTP/2 upstream.
            builder.http2_only(cluster.http2);
            if cluster.max_requests_per_connection == Some(1) {
                builder.pool_max_idle_per_host(0);
            }
            UpstreamClient::Hyper(Arc::new(builder.build(connector)))
        };
        clients.insert(
            cluster.name.clone(),
            Pool {
                settings: PoolSettings::of(cluster),
                tls,
                client: client.clone(),
            },
        );
        Ok(client)
    }

    /// The cluster's ring for these endpoints (rebuilt when they change).
    fn ring(
        &self,
        cluster: &str,
        endpoints: &[SocketAddr],
        size: usize,
    ) -> Arc<Vec<(u64, SocketAddr)>> {
        let mut rings = self.rings.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((eps, ring)) = rings.get(cluster)
            && eps == endpoints
        {
            return ring.clone();
        }
        let ring = Arc::new(crate::ring::build(endpoints, size));
        rings.insert(cluster.to_owned(), (endpoints.to_vec(), ring.clone()));
        ring
    }

    /// Counts a request in flight to `addr` until the guard drops.
    pub fn track(&self, cluster: &str, addr: SocketAddr) -> InFlight {
        let key = (cluster.to_owned(), addr);
        *self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_insert(0) += 1;
        InFlight {
            key,
            counts: self.in_flight.clone(),
        }
    }

    /// The cluster's circuit breaker (a new one when its thresholds change).
    pub fn breaker(&self, cluster: &Cluster) -> Arc<Breaker> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        match breakers.get(&cluster.name) {
            Some(b) if b.limits() == cluster.limits => b.clone(),
            _ => {
                let b = Arc::new(Breaker::new(cluster.limits));
                breakers.insert(cluster.name.clone(), b.clone());
                b
            }
        }
    }
}

/// How to reach a cluster's endpoints: TCP, then TLS with `tls` when the cluster
/// originates it.
fn connector(cluster: &Cluster, tls: Option<Arc<rustls::ClientConfig>>) -> Connector {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(cluster.connect_timeout));
    tcp.set_nodelay(true);
    let sni = cluster.tls.as_ref().map_or("", |t| t.sni.as_str());
    Connector::new(tcp, tls.map(|c| (c, sni)))
}

/// What a downstream connection's requests go to: the listener's connection manager as the
/// configuration has it when each request arrives.
struct ConnectionService {
    shared: Arc<Shared>,
    listener: Arc<str>,
    chain: crate::model::ChainMatch,
    /// The manager the connection was accepted with (kept if the listener goes away).
    accepted: Arc<HttpManager>,
    /// The manager found for the configuration last seen: looked up again only when the
    /// configuration changes.
    current: Mutex<Option<(Arc<Config>, Arc<HttpManager>)>>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl ConnectionService {
    fn new(
        shared: Arc<Shared>,
        listener: &str,
        chain: &crate::model::ChainMatch,
        accepted: Arc<HttpManager>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> ConnectionService {
        ConnectionService {
            shared,
            listener: listener.into(),
            chain: chain.clone(),
            accepted,
            current: Mutex::new(None),
            peer,
            local,
        }
    }

    fn call(
        &self,
        req: Request<Downstream>,
    ) -> impl Future<Output = Response<Body>> + Send + use<> {
        let shared = self.shared.clone();
        let config = shared.config.borrow().clone();
        // Each request takes the listener's connection manager as it is now, so a changed
        // filter chain (policy checks turned off, access logs added) applies to requests on
        // connections accepted before the change too; a removed listener keeps its last.
        let hcm = {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            match &*current {
                Some((seen, hcm)) if Arc::ptr_eq(seen, &config) => hcm.clone(),
                _ => {
                    let found = match config
                        .listeners
                        .get(&*self.listener)
                        .and_then(|l| l.chains.iter().find(|c| c.matcher == self.chain))
                        .map(|c| &c.filter)
                    {
                        Some(crate::model::NetworkFilter::Http(now)) => now.clone(),
                        _ => self.accepted.clone(),
                    };
                    *current = Some((config.clone(), found.clone()));
                    found
                }
            }
        };
        handle(shared, config, hcm, req, self.peer, self.local)
    }

    /// The service for hyper's servers.
    fn into_hyper(
        self: Arc<Self>,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
    > + Clone {
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = self.call(req.map(Downstream::Hyper));
            async move { Ok::<_, Infallible>(response.await) }
        })
    }
}

/// Serves one downstream connection on a TLS listener: HTTP/1.1 (keep-alive, upgrades), or
/// HTTP/2 when negotiated by ALPN or started with its preface, as Envoy's codec_type AUTO.
pub async fn serve_connection<S>(
    shared: Arc<Shared>,
    listener: &str,
    chain: &crate::model::ChainMatch,
    hcm: Arc<HttpManager>,
    stream: S,
    peer: SocketAddr,
    local: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = Arc::new(ConnectionService::new(
        shared, listener, chain, hcm, peer, local,
    ));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service.into_hyper());
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}

/// Serves one plaintext downstream connection: keel-proxy's own HTTP/1.1 server
/// ([`crate::h1::server`]), or hyper's HTTP/2 server when the connection starts with
/// HTTP/2's preface (h2c with prior knowledge).
pub async fn serve_plain_connection(
    shared: Arc<Shared>,
    listener: &str,
    chain: &crate::model::ChainMatch,
    hcm: Arc<HttpManager>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let service = ConnectionService::new(shared, listener, chain, hcm, peer, local);
    let served =
        crate::h1::server::serve(stream, |req| service.call(req.map(Downstream::H1))).await;
    if let crate::h1::server::Served::Http2(io) = served {
        let builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        let conn = builder.serve_connection(TokioIo::new(io), Arc::new(service).into_hyper());
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "downstream HTTP/2 connection ended with an error");
        }
    }
}

/// The virtual host for `host` (lower-case): exact domain, then the longest `*.suffix`,
/// then the longest `prefix*`, then `*` — Envoy's order.
pub fn virtual_host<'a>(table: &'a RouteTable, host: &str) -> Option<&'a VirtualHost> {
    let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        host.to_ascii_lowercase().into()
    } else {
        host.into()
    };
    let host = host.as_ref();
    let mut best_suffix: Option<(&VirtualHost, usize)> = None;
    let mut best_prefix: Option<(&VirtualHost, usize)> = None;
    let mut any = None;
    for vh in &table.virtual_hosts {
        for d in &vh.domains {
            if *d == host {
                return Some(vh);
            }
            if d == "*" {
                any.get_or_insert(vh);
            } else if let Some(suffix) = d.strip_prefix('*') {
                if host.ends_with(suffix)
                    && host.len() > suffix.len()
                    && best_suffix.is_none_or(|(_, n)| suffix.len() > n)
                {
                    best_suffix = Some((vh, suffix.len()));
                }
            } else if let Some(prefix) = d.strip_suffix('*')
                && host.starts_with(prefix)
                && host.len() > prefix.len()
                && best_prefix.is_none_or(|(_, n)| prefix.len() > n)
            {
                best_prefix = Some((vh, prefix.len()));
            }
        }
    }
    best_suffix.or(best_prefix).map(|(v, _)| v).or(any)
}

fn header_value<'a>(
    headers: &'a HeaderMap,
    name: impl hyper::header::AsHeaderName,
) -> Option<std::borrow::Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(std::borrow::Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for v in values {
                joined.push(',');
                joined.push_str(v);
            }
            Some(std::borrow::Cow::Owned(joined))
        }
    }
}

fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// The first route of `vh` that matches the request.
pub fn route_for<'a>(
    vh: &'a VirtualHost,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Option<&'a Route> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    vh.routes.iter().find(|r| {
        let m = &r.matcher;
        let path_ok = match &m.path {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(re) => re.matches(path),
        };
        path_ok
            && m.headers.iter().all(|h| {
                let v = if h.name == ":authority" {
                    header_value(headers, hyper::header::HOST)
                } else {
                    header_value(headers, h.name.as_str())
                };
                h.matches(v.as_deref())
            })
            && m.query.iter().all(
                |(name, matcher)| match (query_value(query, name), matcher) {
                    (None, _) => false,
                    (Some(_), None) => true,
                    (Some(v), Some(mt)) => mt.matches(v),
                },
            )
    })
}

fn hit(fraction: crate::model::Fraction) -> bool {
    fraction.0 >= 1_000_000 || (crate::random_u64() % 1_000_000) < u64::from(fraction.0)
}

/// Header names the request path uses, made once (a `&str` name is parsed and checked on
/// every lookup).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");
const X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");

const HOP_BY_HOP: [HeaderName; 7] = [
    hyper::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    hyper::header::TRANSFER_ENCODING,
    hyper::header::UPGRADE,
    hyper::header::TE,
    hyper::header::TRAILER,
];

/// Removes the hop-by-hop headers. Most messages have none: one pass over the few headers
/// present finds that, instead of a hashed lookup per hop-by-hop name.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        for h in &HOP_BY_HOP {
            headers.remove(h);
        }
    }
}

/// A version 4 UUID in its text form, written without the formatting machinery (one per
/// request).
fn request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let a = crate::random_u64();
    let b = crate::random_u64();
    // 32 hex digits: the version nibble is 4, the variant's top bits are 10.
    let bits = (u128::from(a) << 64 | u128::from(b)) & !(0xf << 76) & !(0x3 << 62)
        | (0x4 << 76)
        | (0x2 << 62);
    let mut out = [0u8; 36];
    let mut digit = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            *slot = b'-';
        } else {
            *slot = HEX[((bits >> (124 - 4 * digit)) & 0xf) as usize];
            digit += 1;
        }
    }
    match HeaderValue::from_bytes(&out) {
        Ok(v) => v,
        // Hex digits and dashes are always a valid header value.
        Err(_) => HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
    }
}

async fn handle(
    shared: Arc<Shared>,
    config: Arc<Config>,
    hcm: Arc<HttpManager>,
    req: Request<Downstream>,
    peer: SocketAddr,
    local: SocketAddr,
) -> Response<Body> {
    let started = Instant::now();
    // What only the access log reads is only taken when there is one.
    let logged = !hcm.access_log.is_empty();
    let start_time = if logged {
        SystemTime::now()
    } else {
        SystemTime::UNIX_EPOCH
    };
    shared.stats.downstream_rq.inc();
    let _active = Active::enter(&shared.active);
    let (mut parts, body) = req.into_parts();
    let body = Replay::new(body, MAX_BUFFERED_BODY);
    // At the edge, a client outside the private address ranges is external (Envoy 1.8's
    // rule, Istio 1.0's): its x-envoy-* headers and request id are not trusted, and its
    // address is passed on as x-envoy-external-address; an internal one is marked so.
    if hcm.use_remote_address {
        if is_internal(peer.ip()) {
            parts
                .headers
                .insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
        } else {
            let untrusted: Vec<HeaderName> = parts
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("x-envoy-"))
                .cloned()
                .collect();
            for k in untrusted {
                parts.headers.remove(k);
            }
            parts.headers.remove(X_REQUEST_ID);
            if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
                parts.headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
            }
        }
    }
    // Request headers every proxy sets (Envoy: x-request-id, x-forwarded-proto; at the edge
    // also x-forwarded-for).
    if !parts.headers.contains_key(X_REQUEST_ID) {
        parts.headers.insert(X_REQUEST_ID, request_id());
    }
    if !parts.headers.contains_key(X_FORWARDED_PROTO) {
        parts
            .headers
            .insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if hcm.use_remote_address {
        let xff = match header_value(&parts.headers, X_FORWARDED_FOR) {
            Some(v) => format!("{v},{}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            parts.headers.insert(X_FORWARDED_FOR, v);
        }
    }
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    // HTTP/2 carries the host as :authority; an HTTP/1.1 upstream needs it as Host.
    if !parts.headers.contains_key(hyper::header::HOST)
        && let Ok(v) = HeaderValue::from_str(&host)
    {
        parts.headers.insert(hyper::header::HOST, v);
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let mut entry = HttpEntry {
        start_time,
        duration: Duration::ZERO,
        method: if logged {
            parts.method.to_string()
        } else {
            String::new()
        },
        path: path_and_query,
        authority: host,
        // Only what the access log sends, and only when there is one.
        request_headers: match &hcm.access_log {
            log if log.is_empty() => Vec::new(),
            log => ["user-agent", "referer", "x-forwarded-for", "x-request-id"]
                .into_iter()
                .chain(
                    log.grpc
                        .iter()
                        .flat_map(|g| g.request_headers.iter().map(String::as_str)),
                )
                .filter_map(|k| {
                    Some((
                        k.to_owned(),
                        parts.headers.get(k)?.to_str().ok()?.to_owned(),
                    ))
                })
                .collect(),
        },
        status: 0,
        protocol: match parts.version {
            hyper::Version::HTTP_2 => "HTTP/2",
            hyper::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        },
        response_flags: String::new(),
        upstream_service_time: None,
        request_bytes: 0,
        response_bytes: 0,
        upstream_cluster: String::new(),
        upstream_address: None,
        downstream_remote: peer,
        downstream_local: local,
    };
    let table = match &hcm.routes {
        RouteSource::Inline(t) => Some(t.clone()),
        RouteSource::Rds(name) => config.routes.get(name).cloned(),
    };
    let response = match table
        .as_deref()
        .and_then(|t| virtual_host(t, &entry.authority))
        .and_then(|vh| route_for(vh, &entry.path, &parts.headers))
    {
        None => {
            shared.stats.no_route.inc();
            flag(&mut entry, "NR");
            local_reply(StatusCode::NOT_FOUND, "")
        }
        Some(route) => {
            // The check's gRPC call is most of a request's future: kept off the stack (and
            // out of every request's future) unless the filter is there.
            let denied = match hcm.ext_authz {
                Some(_) => {
                    Box::pin(authorize(
                        &shared, &config, &hcm, route, &mut parts, peer, local,
                    ))
                    .await
                }
                None => None,
            };
            match denied {
                Some(denied) => denied,
                None => {
                    let cors = route
                        .cors
                        .as_ref()
                        .and_then(|c| Some((c, allowed_origin(c, &parts.headers)?)));
                    let mut r = route_request(
                        &shared,
                        &config,
                        route,
                        parts,
                        body.clone(),
                        local,
                        &mut entry,
                    )
                    .await;
                    if let Some((policy, origin)) = cors {
                        add_cors_headers(r.headers_mut(), policy, &origin, false);
                    }
                    r
                }
            }
        }
    };
    entry.status = response.status().as_u16();
    shared
        .stats
        .observe_response(entry.status, &entry.upstream_cluster);
    if hcm.access_log.is_empty() {
        return response;
    }
    let sink = hcm.access_log.clone();
    // The entry is logged when the response body is done (or dropped): its size is what was
    // sent, chunked bodies included, and its duration runs to the last byte, as Envoy's.
    let mut log = LogOnDone {
        shared: shared.clone(),
        sink,
        entry: Some(entry),
        started,
        bytes: 0,
        request: body,
    };
    response.map(move |b| {
        b.map_frame(move |frame| {
            // The whole guard moves into the body (not just the counter).
            let log = &mut log;
            if let Some(data) = frame.data_ref() {
                log.bytes += data.len() as u64;
            }
            frame
        })
        .boxed()
    })
}

/// Envoy's internal addresses: loopback and the private ranges (RFC 1918, IPv6 unique
/// local).
pub fn is_internal(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        std::net::IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4.is_loopback() || v4.is_private();
            }
            v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00
        }
    }
}

/// Adds one of Envoy's response flags to the entry (`NR`, `UH`, `UF`, ...).
fn flag(entry: &mut HttpEntry, f: &str) {
    if !entry.response_flags.is_empty() {
        entry.response_flags.push(',');
    }
    entry.response_flags.push_str(f);
}

/// Sends a request's access log entry when dropped, with the bytes the body carried.
struct LogOnDone {
    shared: Arc<Shared>,
    sink: crate::model::AccessLog,
    entry: Option<HttpEntry>,
    started: Instant,
    bytes: u64,
    request: Replay,
}

impl Drop for LogOnDone {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.response_bytes = self.bytes;
            entry.request_bytes = self.request.bytes_read();
            entry.duration = self.started.elapsed();
            self.shared.access_logs.log_http(&self.sink, entry);
        }
    }
}

/// The ext_authz filter, when the connection manager has one and the route does not turn it
/// off: `None` lets the request go on (with any headers the service added), `Some` is the
/// answer to send instead.
async fn authorize(
    shared: &Shared,
    config: &Config,
    hcm: &HttpManager,
    route: &Route,
    parts: &mut hyper::http::request::Parts,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<Response<Body>> {
    let filter = hcm.ext_authz.as_ref()?;
    let extensions: &[(String, String)] = match &route.ext_authz {
        RouteAuthz::Disabled => return None,
        RouteAuthz::Check => &[],
        RouteAuthz::CheckWith(ext) => ext,
    };
    let req = crate::authz::check_request(parts, peer, local, extensions);
    match shared.authz.check(config, filter, req).await {
        Decision::Allow { headers } => {
            shared.stats.ext_authz_ok.inc();
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    parts.headers.insert(k, v);
                }
            }
            None
        }
        Decision::Deny {
            status,
            body,
            headers,
        } => {
            shared.stats.ext_authz_denied.inc();
            let mut r = Response::new(full(Bytes::from(body)));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            for (k, v) in headers {
                if let (Ok(k), Ok(v)) = (
                    hyper::header::HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v),
                ) {
                    r.headers_mut().insert(k, v);
                }
            }
            Some(r)
        }
        Decision::Error(reason) => {
            shared.stats.ext_authz_error.inc();
            tracing::debug!(%reason, "authorization service did not answer");
            if filter.failure_mode_allow {
                None
            } else {
                let status =
                    StatusCode::from_u16(filter.status_on_error).unwrap_or(StatusCode::FORBIDDEN);
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = status;
                Some(r)
            }
        }
    }
}

async fn route_request(
    shared: &Shared,
    config: &Config,
    route: &Route,
    mut parts: hyper::http::request::Parts,
    body: Replay,
    local: SocketAddr,
    entry: &mut HttpEntry,
) -> Response<Body> {
    if let Some(fault) = &route.fault {
        if let Some((delay, fraction)) = fault.delay
            && hit(fraction)
        {
            flag(entry, "DI");
            tokio::time::sleep(delay).await;
        }
        if let Some((status, fraction)) = fault.abort
            && hit(fraction)
        {
            flag(entry, "FI");
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return local_reply(status, "fault filter abort");
        }
    }
    // CORS preflights the policy allows are answered here (Envoy's cors filter).
    if let Some(policy) = &route.cors
        && parts.method == hyper::Method::OPTIONS
        && parts.headers.contains_key("access-control-request-method")
        && let Some(origin) = allowed_origin(policy, &parts.headers)
    {
        let mut r = Response::new(full(Bytes::new()));
        add_cors_headers(r.headers_mut(), policy, &origin, true);
        return r;
    }
    let forward = match &route.action {
        RouteAction::Direct { status, body } => {
            let mut r = Response::new(full(body.clone()));
            *r.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return r;
        }
        RouteAction::Redirect { host, path, status } => {
            let host = host.clone().unwrap_or_else(|| entry.authority.clone());
            let path = path.clone().unwrap_or_else(|| entry.path.clone());
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() =
                StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&format!("http://{host}{path}")) {
                r.headers_mut().insert(hyper::header::LOCATION, v);
            }
            return r;
        }
        RouteAction::Forward(f) => f,
    };
    let cluster_name = pick_weighted(&forward.clusters);
    entry.upstream_cluster = cluster_name.to_owned();
    let Some(cluster) = config.clusters.get(cluster_name).cloned() else {
        flag(entry, "NC");
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    if is_websocket_upgrade(&parts.headers) {
        if !forward.websocket {
            // Envoy answers an upgrade the route does not allow with 403.
            return local_reply(StatusCode::FORBIDDEN, "");
        }
        return Box::pin(websocket(
            shared, config, &cluster, route, forward, parts, local, entry,
        ))
        .await;
    }
    // `te: trailers` is end-to-end in practice: gRPC needs it to reach the server.
    let te_trailers = parts
        .headers
        .get(hyper::header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("trailers"));
    remove_hop_by_hop(&mut parts.headers);
    if te_trailers {
        parts
            .headers
            .insert(hyper::header::TE, HeaderValue::from_static("trailers"));
    }
    route_request_headers(&mut parts.headers, route, forward);
    let path = rewrite(&entry.path, route, forward);
    for m in &forward.mirrors {
        if hit(m.fraction) {
            mirror(shared, config, m, &parts, &path, body.clone(), local);
        }
    }
    let (hash, set_cookie) = request_hash(&forward.hash_policy, &parts, entry.downstream_remote);
    let attempt = forward_with_retries(
        shared, config, &cluster, forward, &mut parts, &path, &body, local, hash, entry,
    );
    let mut response = match forward.timeout {
        Some(t) => match tokio::time::timeout(t, attempt).await {
            Ok(r) => r,
            Err(_) => {
                shared.stats.upstream_timeouts.inc();
                flag(entry, "UT");
                local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
        },
        None => attempt.await,
    };
    remove_hop_by_hop(response.headers_mut());
    if let Some(cookie) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&cookie)
    {
        response.headers_mut().append(hyper::header::SET_COOKIE, v);
    }
    for h in &route.response_headers_to_remove {
        response.headers_mut().remove(h.as_str());
    }
    for (k, v) in &route.response_headers_to_add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// `Upgrade: websocket` with `Connection: upgrade` on an HTTP/1.1 request.
fn is_websocket_upgrade(h: &HeaderMap) -> bool {
    let has = |name: &str, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has("upgrade", "websocket") && has("connection", "upgrade")
}

/// The HTTP/1.1 response-head parser, for the fuzz targets.
pub fn fuzz_parse_head(buf: &[u8]) -> bool {
    matches!(crate::h1::parse_head(buf), Ok(Some(_)))
}

/// The downstream server's request-head parser, for the fuzz targets.
pub fn fuzz_parse_request_head(buf: &[u8]) -> bool {
    matches!(crate::h1::server::parse_request_head(buf), Ok(Some(_)))
}

/// [`is_websocket_upgrade`], for the fuzz targets.
pub fn fuzz_is_websocket_upgrade(h: &HeaderMap) -> bool {
    is_websocket_upgrade(h)
}

/// A WebSocket upgrade: the request goes to an endpoint over a connection of its own; a 101
/// answer turns both connections into one byte stream, anything else is relayed as is.
#[allow(clippy::too_many_arguments)]
async fn websocket(
    shared: &Shared,
    config: &Config,
    cluster: &Cluster,
    route: &Route,
    forward: &Forward,
    mut parts: hyper::http::request::Parts,
    local: SocketAddr,
    entry: &mut HttpEntry,
) -> Response<Body> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((addr, _)) = shared.upstreams.pick(config, cluster, local, None) else {
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    entry.upstream_address = Some(addr);
    let on_upgrade = match parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        Some(hyper) => Some(DownstreamUpgrade::Hyper(hyper)),
        None => parts
            .extensions
            .remove::<crate::h1::server::OnUpgrade>()
            .map(DownstreamUpgrade::H1),
    };
    route_request_headers(&mut parts.headers, route, forward);
    let path = rewrite(&entry.path, route, forward);
    shared.stats.upstream_rq.inc();
    let mut upstream = match shared.upstreams.connect(cluster, addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, %addr, error = %e, "upstream connect failed");
            shared.stats.upstream_cx_fail.inc();
            return local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            );
        }
    };
    let mut head = format!("{} {path} HTTP/1.1\r\n", parts.method);
    for (k, v) in &parts.headers {
        head.push_str(k.as_str());
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(v.as_bytes()));
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    if upstream.write_all(head.as_bytes()).await.is_err() {
        return local_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        );
    }
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let head = loop {
        match crate::h1::parse_head(&buf) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "malformed answer to a WebSocket upgrade");
                return local_reply(
                    StatusCode::BAD_GATEWAY,
                    "upstream sent a malformed response",
                );
            }
        }
        if buf.len() > 64 * 1024 {
            return local_reply(StatusCode::BAD_GATEWAY, "upstream response head too large");
        }
        match upstream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                );
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let rest = buf.split_off(head.len);
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    if head.status != StatusCode::SWITCHING_PROTOCOLS {
        // Not upgraded: the answer, with the body the head announced.
        let len = usize::try_from(head.content_length.unwrap_or(0))
            .unwrap_or(usize::MAX)
            .min(MAX_BUFFERED_BODY);
        let mut body = rest;
        while body.len() < len {
            match upstream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        body.truncate(len);
        *response.body_mut() = full(Bytes::from(body));
        return response;
    }
    let Some(on_upgrade) = on_upgrade else {
        return local_reply(StatusCode::BAD_REQUEST, "upgrade failed");
    };
    tokio::spawn(async move {
        match on_upgrade {
            DownstreamUpgrade::Hyper(on_upgrade) => {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                relay(TokioIo::new(upgraded), upstream, &rest, &[]).await;
            }
            DownstreamUpgrade::H1(on_upgrade) => {
                let Some(upgraded) = on_upgrade.upgraded().await else {
                    return;
                };
                relay(upgraded.stream, upstream, &rest, &upgraded.read).await;
            }
        }
    });
    response
}

/// How an upgraded downstream connection is handed over after the 101.
enum DownstreamUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    H1(crate::h1::server::OnUpgrade),
}

/// Bytes both ways between an upgraded connection and its upstream, after what each side
/// sent early (with the 101, with the upgrade request) went to the other.
async fn relay<D, U>(mut downstream: D, mut upstream: U, to_downstream: &[u8], to_upstream: &[u8])
where
    D: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    if !to_downstream.is_empty() && downstream.write_all(to_downstream).await.is_err() {
        return;
    }
    if !to_upstream.is_empty() && upstream.write_all(to_upstream).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
}

/// The request's hash for a ring-hash cluster: the hash policies' values combined as Envoy
/// combines them (rotate left by one, xor); with a cookie policy whose cookie is absent and a
/// ttl, a cookie is made up and returned for the response's Set-Cookie.
pub fn request_hash(
    policies: &[crate::model::HashPolicy],
    parts: &hyper::http::request::Parts,
    peer: SocketAddr,
) -> (Option<u64>, Option<String>) {
    use crate::model::HashPolicy;
    use crate::ring::fnv1a;
    let mut hash: Option<u64> = None;
    let mut set_cookie = None;
    let mut add = |h: u64| {
        hash = Some(hash.map_or(h, |old| old.rotate_left(1) ^ h));
    };
    for p in policies {
        match p {
            HashPolicy::Header(name) => {
                let values: Vec<&[u8]> = parts
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .map(|v| v.as_bytes())
                    .collect();
                if !values.is_empty() {
                    add(fnv1a(&values.join(&b","[..])));
                }
            }
            HashPolicy::Cookie { name, ttl, path } => {
                let found = parts
                    .headers
                    .get_all(hyper::header::COOKIE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(';'))
                    .find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == name).then(|| v.trim_matches('"').to_owned())
                    });
                match (found, ttl) {
                    (Some(v), _) => add(fnv1a(v.as_bytes())),
                    (None, Some(ttl)) => {
                        let value = format!(
                            "{:016x}",
                            fnv1a(format!("{peer}-{}", crate::random_u64()).as_bytes())
                        );
                        add(fnv1a(value.as_bytes()));
                        let mut c = format!("{name}=\"{value}\"; Max-Age={}", ttl.as_secs());
                        if !path.is_empty() {
                            c.push_str(&format!("; Path={path}"));
                        }
                        c.push_str("; HttpOnly");
                        set_cookie = Some(c);
                    }
                    (None, None) => {}
                }
            }
            HashPolicy::QueryParameter(name) => {
                if let Some(v) = parts.uri.query().and_then(|q| {
                    q.split('&').find_map(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        (k == name).then_some(v)
                    })
                }) {
                    add(fnv1a(v.as_bytes()));
                }
            }
            HashPolicy::SourceIp => add(fnv1a(peer.ip().to_string().as_bytes())),
        }
    }
    (hash, set_cookie)
}

/// The request's Origin, when the policy allows it.
fn allowed_origin(policy: &crate::model::Cors, headers: &HeaderMap) -> Option<String> {
    let origin = headers.get(hyper::header::ORIGIN)?.to_str().ok()?;
    policy
        .origins
        .iter()
        .any(|m| m.matches(origin))
        .then(|| origin.to_owned())
}

/// The CORS response headers for an allowed origin; a preflight also gets the methods,
/// headers and max age.
fn add_cors_headers(h: &mut HeaderMap, policy: &crate::model::Cors, origin: &str, preflight: bool) {
    let mut set = |name: &'static str, value: &str| {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(value)
        {
            h.insert(name, v);
        }
    };
    set("access-control-allow-origin", origin);
    if policy.allow_credentials {
        set("access-control-allow-credentials", "true");
    }
    if preflight {
        set("access-control-allow-methods", &policy.allow_methods);
        set("access-control-allow-headers", &policy.allow_headers);
        set("access-control-max-age", &policy.max_age);
    } else {
        set("access-control-expose-headers", &policy.expose_headers);
    }
}

/// `reviews:9080` -> `reviews-shadow:9080`, as Envoy names a mirrored request's host.
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

/// Sends a copy of the request to a mirror cluster and forgets it: its answer is dropped and
/// it never delays or fails the real request.
fn mirror(
    shared: &Shared,
    config: &Config,
    m: &crate::model::Mirror,
    parts: &hyper::http::request::Parts,
    path: &str,
    body: Replay,
    local: SocketAddr,
) {
    let Some(cluster) = config.clusters.get(&m.cluster) else {
        return;
    };
    let Some((addr, _)) = shared.upstreams.pick(config, cluster, local, None) else {
        return;
    };
    let Ok(client) = shared.upstreams.client(cluster) else {
        return;
    };
    let mut up = Request::new(());
    *up.method_mut() = parts.method.clone();
    *up.headers_mut() = parts.headers.clone();
    if m.shadow_suffix
        && let Some(host) = parts
            .headers
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&shadow_host(host))
    {
        up.headers_mut().insert(hyper::header::HOST, v);
    }
    let (mut up, ()) = up.into_parts();
    let path = path.to_owned();
    let timeout = cluster.connect_timeout + Duration::from_secs(30);
    tokio::spawn(async move {
        // The copy goes once the request body is all here (and only if it was all kept:
        // a body past the buffer limit is not mirrored, as Envoy's shadow is not sent then).
        let Ok(Some((data, trailers))) = tokio::time::timeout(timeout, body.complete()).await
        else {
            return;
        };
        let body = Outgoing::whole(data, trailers);
        let sent = client.send(addr, &mut up, &path, true, body);
        if let Ok(Ok(r)) = tokio::time::timeout(timeout, sent).await {
            // Read the answer so the connection can be reused.
            let _ = r.into_body().collect().await;
        }
    });
}

/// The route's request header removals and additions, and its host rewrite.
fn route_request_headers(headers: &mut HeaderMap, route: &Route, forward: &Forward) {
    for h in &route.request_headers_to_remove {
        headers.remove(h.as_str());
    }
    for (k, v) in &route.request_headers_to_add {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k.as_str()), HeaderValue::from_str(v)) {
            headers.insert(k, v);
        }
    }
    if let Some(h) = &forward.host_rewrite
        && let Ok(v) = HeaderValue::from_str(h)
    {
        headers.insert(hyper::header::HOST, v);
    }
}

fn rewrite(path: &str, route: &Route, forward: &Forward) -> String {
    match (&forward.prefix_rewrite, &route.matcher.path) {
        (Some(new), PathMatch::Prefix(old)) if path.starts_with(old.as_str()) => {
            format!("{new}{}", &path[old.len()..])
        }
        (Some(new), PathMatch::Exact(_)) => {
            let query = path
                .split_once('?')
                .map(|(_, q)| format!("?{q}"))
                .unwrap_or_default();
            format!("{new}{query}")
        }
        _ => path.to_owned(),
    }
}

/// One cluster of a weighted list, by weight.
pub fn pick_weighted(clusters: &[(String, u32)]) -> &str {
    let total: u64 = clusters.iter().map(|(_, w)| u64::from(*w)).sum();
    if clusters.len() == 1 || total == 0 {
        return clusters.first().map_or("", |(c, _)| c.as_str());
    }
    let mut n = crate::random_u64() % total;
    for (c, w) in clusters {
        if n < u64::from(*w) {
            return c;
        }
        n -= u64::from(*w);
    }
    clusters.last().map_or("", |(c, _)| c.as_str())
}

enum Attempt {
    Response(Response<Body>),
    ConnectFailure,
    Reset,
    Timeout,
    NoEndpoint,
}

#[allow(clippy::too_many_arguments)]
async fn forward_with_retries(
    shared: &Shared,
    config: &Config,
    cluster: &Cluster,
    forward: &Forward,
    parts: &mut hyper::http::request::Parts,
    path: &str,
    body: &Replay,
    local: SocketAddr,
    hash: Option<u64>,
    entry: &mut HttpEntry,
) -> Response<Body> {
    let client = match shared.upstreams.client(cluster) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, error = %e, "cannot set up TLS to the cluster");
            shared.stats.upstream_cx_fail.inc();
            flag(entry, "UF");
            return local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            );
        }
    };
    let breaker = shared.upstreams.breaker(cluster);
    let retries = forward.retry.as_ref().map(|r| r.num_retries).unwrap_or(0);
    let mut tries = 0;
    // Held while a retry is in flight (circuit breakers bound retries in flight).
    let mut _retry: Option<RetryGuard> = None;
    loop {
        let admitted = match breaker.admit().await {
            Ok(a) => a,
            Err(_) => {
                shared.stats.upstream_overflow.inc();
                flag(entry, "UO");
                let mut r = local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                );
                r.headers_mut()
                    .insert("x-envoy-overflow", HeaderValue::from_static("true"));
                return r;
            }
        };
        let mut picked = None;
        let mut in_flight = None;
        let mut sent_at = None;
        let outcome = match shared.upstreams.pick(config, cluster, local, hash) {
            None => Attempt::NoEndpoint,
            Some((addr, size)) => {
                picked = Some((addr, size));
                // Only LEAST_REQUEST reads the counts; others skip the bookkeeping.
                if cluster.balancer == Balancer::LeastRequest {
                    in_flight = Some(shared.upstreams.track(&cluster.name, addr));
                }
                entry.upstream_address = Some(addr);
                shared.stats.upstream_rq.inc();
                sent_at = Some(Instant::now());
                // The last attempt the policy allows takes the headers; earlier ones send a
                // copy.
                let last = tries >= retries;
                let sent = async {
                    let first = client
                        .send(addr, parts, path, last, Outgoing::Stream(body.attempt()))
                        .await;
                    match first {
                        // The request never reached the application: send it again on a
                        // new connection (not a retry).
                        Err(SendFailure::Stale) if body.replayable() => {
                            client
                                .send(addr, parts, path, last, Outgoing::Stream(body.attempt()))
                                .await
                        }
                        other => other,
                    }
                };
                let result = match forward.retry.as_ref().and_then(|r| r.per_try_timeout) {
                    Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
                    None => Ok(sent.await),
                };
                match result {
                    Err(()) => Attempt::Timeout,
                    Ok(Ok(r)) => Attempt::Response(r),
                    Ok(Err(SendFailure::Connect)) => Attempt::ConnectFailure,
                    Ok(Err(SendFailure::Reset | SendFailure::Stale)) => Attempt::Reset,
                }
            }
        };
        if let (Some(od), Some((addr, size))) = (&cluster.outlier, picked) {
            let seen = match &outcome {
                Attempt::Response(r) => Some(OutlierOutcome::Status(r.status().as_u16())),
                Attempt::ConnectFailure | Attempt::Reset | Attempt::Timeout => {
                    Some(OutlierOutcome::LocalFailure)
                }
                Attempt::NoEndpoint => None,
            };
            if let Some(seen) = seen
                && shared.upstreams.outliers.record(
                    &cluster.name,
                    od,
                    addr,
                    seen,
                    size,
                    Instant::now(),
                )
            {
                shared.stats.outlier_ejections.inc();
                tracing::info!(cluster = %cluster.name, %addr, "endpoint ejected by outlier detection");
            }
        }
        let retry_policy = forward.retry.as_ref();
        let retryable = match (&outcome, retry_policy) {
            (_, None) | (Attempt::NoEndpoint, _) => false,
            (Attempt::Response(r), Some(p)) => {
                let s = r.status().as_u16();
                (p.on_5xx && s >= 500) || (p.on_gateway_error && (502..=504).contains(&s))
            }
            (Attempt::ConnectFailure, Some(p)) => {
                p.on_5xx || p.on_gateway_error || p.on_connect_failure
            }
            (Attempt::Reset | Attempt::Timeout, Some(p)) => p.on_5xx || p.on_gateway_error,
        };
        // A body that outgrew the retry buffer cannot be sent again.
        if retryable && tries < retries && body.replayable() {
            if let Some(guard) = breaker.retry() {
                tries += 1;
                _retry = Some(guard);
                drop(admitted);
                shared.stats.upstream_retries.inc();
                let backoff = RETRY_BASE * (1 << tries.min(4));
                tokio::time::sleep(
                    backoff / 2
                        + Duration::from_millis(
                            crate::random_u64() % (backoff.as_millis() as u64 / 2 + 1),
                        ),
                )
                .await;
                continue;
            }
            shared.stats.upstream_retry_overflow.inc();
        }
        if retryable && retries > 0 {
            flag(entry, "URX");
        }
        return match outcome {
            // The connection stays taken until the response body is done.
            Attempt::Response(r) => {
                let mut r = r.map(|b| {
                    b.map_frame(move |f| {
                        let _held = (&admitted, &in_flight);
                        f
                    })
                    .boxed()
                });
                // Envoy's router says how long the upstream took to answer.
                if let Some(at) = sent_at {
                    let ms = at.elapsed().as_millis() as u64;
                    entry.upstream_service_time = Some(ms);
                    r.headers_mut()
                        .insert(X_ENVOY_UPSTREAM_SERVICE_TIME, HeaderValue::from(ms));
                }
                r
            }
            Attempt::NoEndpoint => {
                flag(entry, "UH");
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            }
            Attempt::ConnectFailure => {
                shared.stats.upstream_cx_fail.inc();
                flag(entry, "UF");
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                )
            }
            Attempt::Reset => {
                flag(entry, "UC");
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                )
            }
            Attempt::Timeout => {
                shared.stats.upstream_timeouts.inc();
                flag(entry, "UT");
                local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{HeaderMatch, Matcher, RouteMatch};

    fn vh(name: &str, domains: &[&str]) -> VirtualHost {
        VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| (*d).to_owned()).collect(),
            routes: Vec::new(),
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_others_kept() {
        let mut h = HeaderMap::new();
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        let untouched = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
        for (k, v) in [
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        remove_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint_unless_drawn_twice() {
        let cluster = Cluster {
            name: "lr".into(),
            discovery: Discovery::Static,
            eds_name: "lr".into(),
            connect_timeout: Duration::from_secs(1),
            balancer: Balancer::LeastRequest,
            hosts: vec![("10.0.0.1".into(), 80), ("10.0.0.2".into(), 80)],
            http2: false,
            limits: crate::model::Limits::default(),
            outlier: None,
            max_requests_per_connection: None,
            idle_timeout: None,
            tls: None,
            dns_lookup: crate::model::DnsLookup::Auto,
            dns_refresh: Duration::from_secs(5),
        };
        let up = Upstreams::default();
        let config = Config::default();
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let busy: SocketAddr = "10.0.0.1:80".parse().unwrap_or_else(|_| unreachable!());
        let _held = up.track("lr", busy);
        let to_busy = (0..400)
            .filter(|_| up.pick(&config, &cluster, local, None).map(|(a, _)| a) == Some(busy))
            .count();
        // Two draws with replacement: the busy endpoint wins only when drawn twice (1/4).
        assert!((40..=160).contains(&to_busy), "{to_busy} of 400");
        drop(_held);
        assert!(
            up.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
        );
    }

    #[test]
    fn request_hashes_follow_the_policies_and_make_up_missing_cookies() {
        use crate::model::HashPolicy;
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap_or_else(|_| unreachable!());
        let parts = |req: hyper::Request<()>| req.into_parts().0;
        let header = [HashPolicy::Header("x-user".into())];
        let a = request_hash(
            &header,
            &parts(
                hyper::Request::get("/")
                    .header("x-user", "jason")
                    .body(())
                    .unwrap_or_default(),
            ),
            peer,
        );
        let b = request_hash(
            &header,
            &parts(
                hyper::Request::get("/")
                    .header("x-user", "jason")
                    .body(())
                    .unwrap_or_default(),
            ),
            "10.0.0.10:1".parse().unwrap_or_else(|_| unreachable!()),
        );
        assert!(
            a.0.is_some() && a.0 == b.0,
            "same header, same hash, any client"
        );
        let none = request_hash(
            &header,
            &parts(hyper::Request::get("/").body(()).unwrap_or_default()),
            peer,
        );
        assert_eq!(none, (None, None));
        let cookie = [HashPolicy::Cookie {
            name: "sticky".into(),
            ttl: Some(Duration::from_secs(60)),
            path: "/".into(),
        }];
        let (h, set) = request_hash(
            &cookie,
            &parts(hyper::Request::get("/").body(()).unwrap_or_default()),
            peer,
        );
        let set = set.unwrap_or_default();
        assert!(
            h.is_some()
                && set.starts_with("sticky=\"")
                && set.ends_with("; Max-Age=60; Path=/; HttpOnly"),
            "{set}"
        );
        // Sent back, the cookie hashes the same way.
        let value = set.split('"').nth(1).unwrap_or_default().to_owned();
        let again = request_hash(
            &cookie,
            &parts(
                hyper::Request::get("/")
                    .header("cookie", format!("a=1; sticky={value}"))
                    .body(())
                    .unwrap_or_default(),
            ),
            peer,
        );
        assert_eq!(again, (h, None));
        let ip = request_hash(
            &[HashPolicy::SourceIp],
            &parts(hyper::Request::get("/").body(()).unwrap_or_default()),
            peer,
        );
        assert!(ip.0.is_some());
    }

    #[test]
    fn mirrored_hosts_get_the_shadow_suffix_before_the_port() {
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("mirror.test"), "mirror.test-shadow");
        assert_eq!(shadow_host("[::1]:80"), "[::1]-shadow:80");
    }

    #[test]
    fn virtual_hosts_match_in_envoys_order() {
        let t = RouteTable {
            name: "9080".into(),
            virtual_hosts: vec![
                vh("any", &["*"]),
                vh("wild", &["*.default.svc.cluster.local"]),
                vh(
                    "reviews",
                    &[
                        "reviews",
                        "reviews:9080",
                        "reviews.default.svc.cluster.local",
                    ],
                ),
                vh("pre", &["rev*"]),
            ],
        };
        let name = |h: &str| virtual_host(&t, h).map(|v| v.name.clone());
        assert_eq!(name("reviews:9080").as_deref(), Some("reviews"));
        assert_eq!(name("REVIEWS").as_deref(), Some("reviews"));
        assert_eq!(
            name("ratings.default.svc.cluster.local").as_deref(),
            Some("wild")
        );
        assert_eq!(name("revolver").as_deref(), Some("pre"));
        assert_eq!(name("example.com").as_deref(), Some("any"));
    }

    fn route(path: PathMatch, headers: Vec<HeaderMatch>) -> Route {
        Route {
            matcher: RouteMatch {
                path,
                headers,
                query: vec![("q".into(), None)],
            },
            action: RouteAction::Direct {
                status: 200,
                body: String::new(),
            },
            fault: None,
            ext_authz: RouteAuthz::Check,
            cors: None,
            request_headers_to_add: vec![],
            request_headers_to_remove: vec![],
            response_headers_to_add: vec![],
            response_headers_to_remove: vec![],
        }
    }

    #[test]
    fn routes_match_path_headers_and_query() {
        let mut v = vh("v", &["*"]);
        v.routes.push(route(
            PathMatch::Prefix("/api".into()),
            vec![HeaderMatch {
                name: "end-user".into(),
                matcher: Some(Matcher::Exact("jason".into())),
                invert: false,
            }],
        ));
        let mut headers = HeaderMap::new();
        assert!(route_for(&v, "/api/x?q=1", &headers).is_none(), "no header");
        headers.insert("end-user", HeaderValue::from_static("jason"));
        assert!(route_for(&v, "/api/x?q=1", &headers).is_some());
        assert!(
            route_for(&v, "/api/x", &headers).is_none(),
            "query parameter missing"
        );
        assert!(route_for(&v, "/other?q", &headers).is_none());
    }

    #[test]
    fn private_and_loopback_clients_are_internal() {
        for internal in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(internal.parse().unwrap()), "{internal}");
        }
        for external in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_internal(external.parse().unwrap()), "{external}");
        }
    }

    #[test]
    fn weights_split_and_request_ids_look_like_uuids() {
        let list = vec![("a".to_owned(), 50), ("b".to_owned(), 50)];
        let a = (0..1000).filter(|_| pick_weighted(&list) == "a").count();
        assert!((350..650).contains(&a), "{a}");
        assert_eq!(pick_weighted(&[("only".into(), 0)]), "only");
        let ids: Vec<String> = (0..100)
            .map(|_| request_id().to_str().unwrap().to_owned())
            .collect();
        for id in &ids {
            let groups: Vec<&str> = id.split('-').collect();
            let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lens, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
                "variant 10: {id}"
            );
        }
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }
}
