//! keelctl: the command line for Keel. The logic lives in the library (`keelctl::run`).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keelctl::Cli::parse_from(keelctl::hoist_namespace(std::env::args_os().collect()));
    match keelctl::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
