//! keel-galley: see the library for everything it does.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let args = keel_galley::Args::parse();
    keel_galley::init_tracing(&args.log_format);
    match keel_galley::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-galley: {e}");
            // 64: a start-up configuration error (sysexits EX_USAGE), as linkerd does.
            ExitCode::from(64)
        }
    }
}
