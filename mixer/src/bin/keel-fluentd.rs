//! keel-fluentd: what a fluentd pod with `<source> @type forward </source>` and
//! `<match **> @type stdout </match>` would do, for the local mesh, where fluentd's images do
//! not run. Accepts Fluentd's Forward protocol (see `keel_mixer::forward`) and prints every
//! event as fluentd's out_stdout does (`TIME TAG: {JSON}`), before acknowledging it, so
//! `keelctl logs -n logging deploy/fluentd-es` shows what mixer shipped.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "keel-fluentd", version, about)]
struct Args {
    /// Where in_forward listens (fluentd's default port is 24224).
    #[arg(long, default_value = "0.0.0.0:24224", env = "KEEL_FLUENTD_BIND")]
    bind: SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.bind).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keel-fluentd: cannot listen on {}: {e}", args.bind);
            return ExitCode::from(69);
        }
    };
    eprintln!("keel-fluentd: forward input listening on {}", args.bind);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("keel-fluentd: accept failed: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let deliver = |events: Vec<keel_mixer::forward::Event>| {
                let mut out = std::io::stdout().lock();
                for e in &events {
                    let _ = writeln!(out, "{}", keel_mixer::forward::stdout_line(e));
                }
                // Flushed before the ack goes out: an acknowledged event is in the log.
                let _ = out.flush();
            };
            if let Err(e) = keel_mixer::forward::serve_connection(stream, deliver).await {
                eprintln!("keel-fluentd: connection from {peer} closed: {e}");
            }
        });
    }
}
