//! keelctl's commands. Each command writes to the writers it is given, so tests can drive
//! them without a terminal; `run` wires them to stdout/stderr and maps outcomes to exit codes
//! the way kubectl does (0 success, 1 failure).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use keel_galley::client;
pub mod cmd;
pub mod context;
pub mod jsonpath;
pub mod output;
pub use keel_local::prometheus;

#[derive(Parser, Debug)]
#[command(
    name = "keelctl",
    version,
    about = "Keel: Istio's service mesh, in Rust"
)]
pub struct Cli {
    /// Galley's address (default: $KEEL_GALLEY, the context file, or 127.0.0.1:9093).
    #[arg(long, global = true)]
    pub galley: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or update resources from files (all or nothing).
    Apply(cmd::apply::Args),
    /// Show resources.
    Get(cmd::get::Args),
    /// Delete resources by file or by kind and name.
    Delete(cmd::delete::Args),
    /// Edit a resource in your editor; it is validated when you save.
    Edit(cmd::edit::Args),
    /// Add, change or remove labels.
    Label(cmd::label::Args),
    /// Show or set where keelctl finds galley.
    Context(cmd::context::Args),
    /// Every proxy connected to pilot, and whether it is in sync (CDS, LDS, EDS, RDS).
    ProxyStatus(cmd::proxy::StatusArgs),
    /// A proxy's configuration from its admin API: clusters, listeners, routes, endpoints.
    ProxyConfig(cmd::proxy::ConfigArgs),
    /// Check configuration files the way Keel's control plane will, without applying them.
    Validate(cmd::validate::Args),
    /// Mixer's expression language: `keelctl expr eval EXPR [--attributes FILE.json]`.
    Expr(cmd::expr::Args),
    /// Start the local mesh (root): galley, pilot, mixer, prometheus and the ingress gateway
    /// on this machine; pods run from the Deployments you apply.
    Up(cmd::local::UpArgs),
    /// Stop the local mesh and remove everything it made.
    Down(cmd::local::DownArgs),
    /// The local mesh: components, pods, readiness, the gateway URL and endpoints.
    Status(cmd::local::StatusArgs),
    /// A pod's container log, or a component's (galley, pilot, mixer, ingressgateway, ...).
    Logs(cmd::local::LogsArgs),
    /// Forward local ports to a pod (local mesh), until interrupted.
    PortForward(cmd::forward::Args),
}

/// kubectl takes `-n NS` before the verb (`kubectl -n istio-system get pods`); keelctl's
/// commands take it after. Moves a leading `-n NS` / `--namespace NS` / `--namespace=NS`
/// behind the command name so both orders work.
pub fn hoist_namespace(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let take = match args.get(1).and_then(|a| a.to_str()) {
        Some("-n" | "--namespace") if args.len() > 3 => 2,
        Some(a) if a.starts_with("--namespace=") && args.len() > 2 => 1,
        _ => return args,
    };
    let flag: Vec<_> = args.drain(1..1 + take).collect();
    let at = 2.min(args.len());
    for (i, f) in flag.into_iter().enumerate() {
        args.insert(at + i, f);
    }
    args
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    let mut stdin = std::io::stdin().lock();
    let ok = match &cli.command {
        Command::Validate(args) => cmd::validate::run(args, &mut stdin, &mut out, &mut err)?,
        Command::Context(args) => cmd::context::run(args, cli.galley.as_deref(), &mut out)?,
        Command::Expr(args) => cmd::expr::run(args, &mut out, &mut err)?,
        Command::Up(args) => cmd::local::up(args, &mut out, &mut err)?,
        Command::Down(args) => cmd::local::down(args, &mut out, &mut err)?,
        Command::Status(args) => cmd::local::status(args, &mut out, &mut err)?,
        Command::Logs(args) => cmd::local::logs(args, &mut out, &mut err)?,
        command => {
            let client = client::GalleyClient::new(&context::galley_addr(cli.galley.as_deref())?);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                match command {
                    Command::Apply(a) => {
                        cmd::apply::run(a, &client, &mut stdin, &mut out, &mut err).await
                    }
                    Command::Get(a) => cmd::get::run(a, &client, &mut out, &mut err).await,
                    Command::Delete(a) => {
                        cmd::delete::run(a, &client, &mut stdin, &mut out, &mut err).await
                    }
                    Command::Edit(a) => cmd::edit::run(a, &client, &mut out, &mut err).await,
                    Command::Label(a) => cmd::label::run(a, &client, &mut out, &mut err).await,
                    Command::ProxyStatus(a) => cmd::proxy::status(a, &mut out, &mut err).await,
                    Command::ProxyConfig(a) => cmd::proxy::config(a, &mut out, &mut err).await,
                    Command::PortForward(a) => {
                        cmd::forward::run(a, &client, &mut out, &mut err).await
                    }
                    Command::Validate(_)
                    | Command::Context(_)
                    | Command::Expr(_)
                    | Command::Up(_)
                    | Command::Down(_)
                    | Command::Status(_)
                    | Command::Logs(_) => Ok(true),
                }
            })?
        }
    };
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoisted(args: &[&str]) -> Vec<String> {
        hoist_namespace(args.iter().map(|a| (*a).into()).collect())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_leading_namespace_moves_behind_the_command() {
        assert_eq!(
            hoisted(&["keelctl", "-n", "istio-system", "get", "svc"]),
            ["keelctl", "get", "-n", "istio-system", "svc"]
        );
        assert_eq!(
            hoisted(&["keelctl", "--namespace=x", "logs", "p"]),
            ["keelctl", "logs", "--namespace=x", "p"]
        );
        assert_eq!(
            hoisted(&["keelctl", "get", "-n", "a"]),
            ["keelctl", "get", "-n", "a"]
        );
        assert_eq!(hoisted(&["keelctl", "-n"]), ["keelctl", "-n"]);
    }
}
