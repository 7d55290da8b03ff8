//! HTTP/2 (h2c, prior knowledge) load for `cargo xtask bench proxy`: the same open-loop
//! method as the benchmark's HTTP/1.1 generator (`xtask bench-load`), over 16 HTTP/2
//! connections with one request in flight on each, latency from the scheduled send time.
//!
//! Usage: h2_load ADDR HOST RATE WARMUP_MS DURATION_MS (RATE 0: closed loop, as fast as
//! possible). Prints `requests errors`, then one latency (µs) per line, as `bench-load`.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

const CONNECTIONS: u32 = 16;

struct Run {
    addr: SocketAddr,
    host: String,
    rate: u32,
    warmup: Duration,
    duration: Duration,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    requests: u64,
    errors: u64,
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, host, rate, warmup, duration] = args.as_slice() else {
        return Err("usage: h2_load ADDR HOST RATE WARMUP_MS DURATION_MS".into());
    };
    let run = std::sync::Arc::new(Run {
        addr: addr.parse()?,
        host: host.clone(),
        rate: rate.parse()?,
        warmup: Duration::from_millis(warmup.parse()?),
        duration: Duration::from_millis(duration.parse()?),
    });
    let start = Instant::now() + Duration::from_millis(100);
    // A thread per connection, each with a runtime of its own, waiting for its next send
    // with the system's sleep: tokio's timer ticks in milliseconds, and a send late by up
    // to one would count as the proxies' latency.
    let threads: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let run = run.clone();
            std::thread::spawn(move || -> Result<Tally, String> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                Ok(connection(&runtime, &run, c, start))
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in threads {
        let one = t.join().map_err(|_| "a load thread panicked")??;
        all.latencies_us.extend(one.latencies_us);
        all.requests += one.requests;
        all.errors += one.errors;
    }
    let mut out = String::with_capacity(all.latencies_us.len() * 4 + 32);
    out.push_str(&format!("{} {}\n", all.requests, all.errors));
    for v in &all.latencies_us {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    std::io::stdout().write_all(out.as_bytes())?;
    Ok(())
}

async fn connect(addr: SocketAddr) -> Option<SendRequest<Empty<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, uri: &str) -> bool {
    let Ok(req) = Request::get(uri).body(Empty::new()) else {
        return false;
    };
    match sender.send_request(req).await {
        Ok(r) if r.status() == 200 => r.into_body().collect().await.is_ok(),
        _ => false,
    }
}

/// One connection's schedule: request k is due at start + offset + k * interval.
fn connection(runtime: &tokio::runtime::Runtime, run: &Run, c: u32, start: Instant) -> Tally {
    let mut tally = Tally::default();
    let interval = if run.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(f64::from(CONNECTIONS) / f64::from(run.rate))
    };
    let offset = interval.mul_f64(f64::from(c) / f64::from(CONNECTIONS));
    let end = start + run.warmup + run.duration;
    let measured_from = start + run.warmup;
    let mut sender = runtime.block_on(connect(run.addr));
    let uri = format!("http://{}/bench", run.host);
    let mut k: u32 = 0;
    loop {
        let scheduled = if run.rate == 0 {
            Instant::now()
        } else {
            start + offset + interval * k
        };
        k += 1;
        if scheduled >= end {
            break;
        }
        let now = Instant::now();
        if scheduled > now {
            std::thread::sleep(scheduled - now);
        }
        let ok = match sender.as_mut() {
            None => false,
            Some(s) => runtime.block_on(get(s, &uri)),
        };
        let done = Instant::now();
        if scheduled >= measured_from {
            // As `bench-load`: every request of the window counts, failed ones as errors.
            tally.requests += 1;
            if ok {
                let us = done.saturating_duration_since(scheduled).as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
            } else {
                tally.errors += 1;
            }
        }
        if !ok {
            // A failed connection is replaced (its requests count as errors).
            sender = runtime.block_on(connect(run.addr));
        }
    }
    tally
}
