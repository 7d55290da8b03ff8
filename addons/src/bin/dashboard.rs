//! keel-dashboard: the Istio Mesh Dashboard over Prometheus (see the library).

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use keel_addons::prom::Prometheus;

#[derive(Debug, Parser)]
#[command(
    name = "keel-dashboard",
    version,
    about = "The Istio mesh dashboard, from Prometheus"
)]
struct Args {
    /// Where to serve (Grafana's port is 3000).
    #[arg(long, default_value = "127.0.0.1:3000")]
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
            eprintln!("keel-dashboard: --prometheus: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    let listener = match keel_samples::http::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel-dashboard: {e}");
            return std::process::ExitCode::from(69);
        }
    };
    eprintln!(
        "keel-dashboard: serving on {} (Prometheus at {})",
        args.listen, args.prometheus
    );
    keel_samples::http::serve(
        listener,
        Arc::new(move |req: hyper::Request<hyper::body::Incoming>| {
            let prom = prom.clone();
            async move {
                let path = req.uri().path().to_owned();
                keel_addons::serve::dashboard(&prom, &path).await
            }
        }),
    )
    .await;
    std::process::ExitCode::SUCCESS
}
