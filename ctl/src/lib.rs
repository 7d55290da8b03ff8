//! keelctl's commands. Each command writes to the writers it is given, so tests can drive
//! them without a terminal; `run` wires them to stdout/stderr and maps outcomes to exit codes
//! the way kubectl does (0 success, 1 failure).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod cmd;

#[derive(Parser, Debug)]
#[command(
    name = "keelctl",
    version,
    about = "Keel: Istio's service mesh, in Rust"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check configuration files the way Keel's control plane will, without applying them.
    Validate(cmd::validate::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate(args) => {
            let stdout = std::io::stdout();
            let stderr = std::io::stderr();
            let ok = cmd::validate::run(
                &args,
                &mut std::io::stdin().lock(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            )?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
