//! keel-mixer: see the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = keel_mixer::server::Args::parse();
    keel_pilot::init_tracing(&args.log_format);
    match keel_mixer::server::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-mixer: {e}");
            ExitCode::from(64)
        }
    }
}
