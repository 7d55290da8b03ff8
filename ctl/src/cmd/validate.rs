//! `keelctl validate -f FILE|DIR|-`: every document checked, every problem located.
//!
//! Prints one line per accepted resource, every error and warning with its file, line,
//! document, field and reason, and a summary. Succeeds only if every document is valid.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use keel_config::Loader;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A file, a directory (every .yaml, .yml and .json file under it), or - for stdin.
    /// May be given more than once.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for resources that do not name one.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Print only problems and the summary.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Returns whether every document was valid.
pub fn run(
    args: &Args,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let mut loader = Loader::new().default_namespace(&args.namespace);
    for f in &args.files {
        if f.as_os_str() == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("reading standard input")?;
            loader.add_str("<stdin>", &text);
        } else if !f.exists() {
            anyhow::bail!("{}: no such file or directory", f.display());
        } else {
            loader.add_path(f);
        }
    }
    let report = loader.finish();
    if !args.quiet {
        for o in report.outcomes.iter().filter(|o| o.accepted) {
            let file = o.origin.file.as_deref().unwrap_or("<input>");
            let doc = o.origin.document.unwrap_or(0);
            let what = o.key.as_ref().map(ToString::to_string).unwrap_or_default();
            writeln!(out, "valid: {file}: document {doc}: {what}")?;
        }
    }
    for d in &report.diagnostics {
        writeln!(err, "{d}")?;
    }
    let valid = report.outcomes.iter().filter(|o| o.accepted).count();
    let invalid = report.outcomes.len() - valid;
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    writeln!(
        out,
        "{} documents: {valid} valid, {invalid} invalid; {errors} {}, {warnings} {}",
        report.outcomes.len(),
        plural(errors, "error", "errors"),
        plural(warnings, "warning", "warnings"),
    )?;
    Ok(report.is_ok())
}

fn plural<'a>(n: usize, one: &'a str, many: &'a str) -> &'a str {
    if n == 1 { one } else { many }
}
