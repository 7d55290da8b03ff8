//! keel-pilot: see the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = keel_pilot::server::Args::parse();
    keel_pilot::init_tracing(&args.log_format);
    match keel_pilot::server::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-pilot: {e}");
            ExitCode::from(64)
        }
    }
}
