//! keel-servicegraph: Istio 1.0's servicegraph endpoints over Prometheus (see the library).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use keel_addons::prom::Prometheus;

#[derive(Debug, Parser)]
#[command(
    name = "keel-servicegraph",
    version,
    about = "The service graph, from Prometheus"
)]
struct Args {
    /// Where to serve (Istio's servicegraph port is 8088).
    #[arg(long, default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Prometheus, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:9090")]
    prometheus: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let prom = match Prometheus::parse(&args.prometheus) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprintln!("keel-servicegraph: --prometheus: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let listener = match keel_samples::http::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel-servicegraph: {e}");
            return std::process::ExitCode::from(69);
        }
    };
    eprintln!(
        "keel-servicegraph: serving on {} (Prometheus at {})",
        args.listen, args.prometheus
    );
    keel_samples::http::serve(
        listener,
        Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
            let prom = prom.clone();
            async move {
                let path = req.uri().path().to_owned();
                let query = req.uri().query().unwrap_or("").to_owned();
                keel_addons::serve::servicegraph(&prom, &path, &query).await
            }
        }),
    )
    .await;
    std::process::ExitCode::SUCCESS
}
