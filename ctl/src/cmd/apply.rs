//! `keelctl apply -f FILE|DIR|-`: create or update, all or nothing, validated by galley.

use std::io::{Read, Write};
use std::path::PathBuf;

use keel_config::Kind;

use crate::client::{ClientError, GalleyClient, Outcome};
use crate::output::kind_ref;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A file, a directory, or - for standard input; may be repeated.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for documents that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Validate and report what would change, without changing anything.
    #[arg(long)]
    pub dry_run: bool,
}

/// `virtualservice.networking.istio.io/reviews`
pub fn outcome_ref(o: &Outcome) -> String {
    let kind = Kind::lookup(&format!("{}.{}", o.kind, o.group))
        .or_else(|| Kind::lookup(&o.kind))
        .map(kind_ref)
        .unwrap_or_else(|| o.kind.to_ascii_lowercase());
    format!("{kind}/{}", o.name)
}

pub async fn run(
    args: &Args,
    client: &GalleyClient,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let sources = crate::cmd::input::read_sources(&args.files, stdin)?;
    match client.apply(&sources, &args.namespace, args.dry_run).await {
        Ok(resp) => {
            for w in &resp.warnings {
                writeln!(err, "{w}")?;
            }
            let suffix = if args.dry_run { " (dry run)" } else { "" };
            for o in &resp.results {
                writeln!(out, "{} {}{suffix}", outcome_ref(o), o.action)?;
            }
            Ok(true)
        }
        Err(e) => {
            report(&e, err)?;
            Ok(false)
        }
    }
}

/// Prints a refused request: every diagnostic for invalid input, kubectl's line otherwise.
pub fn report(e: &ClientError, err: &mut dyn Write) -> anyhow::Result<()> {
    match e {
        ClientError::Api {
            status: 422,
            message,
            details,
        } => {
            for d in details {
                writeln!(err, "{d}")?;
            }
            writeln!(err, "error: {message}")?;
        }
        other => writeln!(err, "{}", other.kubectl_line())?,
    }
    Ok(())
}
