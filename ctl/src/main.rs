//! keelctl: the command line for Keel. The logic lives in the library (`keelctl::run`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keelctl::Cli::parse();
    match keelctl::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
