//! `keelctl delete -f FILE` and `keelctl delete KIND NAME [-n NS]`.

use std::io::{Read, Write};
use std::path::PathBuf;

use keel_config::Kind;

use crate::client::GalleyClient;
use crate::cmd::apply::report;
use crate::output::kind_ref;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// KIND NAME... (when not using -f).
    pub target: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub async fn run(
    args: &Args,
    client: &GalleyClient,
    stdin: &mut dyn Read,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let result = if !args.files.is_empty() {
        let sources = crate::cmd::input::read_sources(&args.files, stdin)?;
        client.delete_documents(&sources, &args.namespace).await
    } else {
        let [kind, names @ ..] = args.target.as_slice() else {
            anyhow::bail!(
                "you must provide one or more resources by argument or filename (keelctl delete KIND NAME, or -f FILE)"
            );
        };
        if names.is_empty() {
            anyhow::bail!("resource(s) were provided, but no name was specified");
        }
        let k = Kind::lookup(kind)
            .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type \"{kind}\""))?;
        let mut all = Vec::new();
        let mut failed = None;
        for name in names {
            match client
                .delete(
                    kind,
                    if k.is_namespaced() {
                        &args.namespace
                    } else {
                        ""
                    },
                    name,
                )
                .await
            {
                Ok(o) => all.extend(o),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            Some(e) => {
                print_deleted(&all, out)?;
                Err(e)
            }
            None => Ok(all),
        }
    };
    match result {
        Ok(outcomes) => {
            print_deleted(&outcomes, out)?;
            Ok(true)
        }
        Err(e) => {
            report(&e, err)?;
            Ok(false)
        }
    }
}

fn print_deleted(outcomes: &[crate::client::Outcome], out: &mut dyn Write) -> anyhow::Result<()> {
    for o in outcomes {
        let kind = Kind::lookup(&o.kind)
            .map(kind_ref)
            .unwrap_or_else(|| o.kind.to_ascii_lowercase());
        writeln!(out, "{kind} \"{}\" deleted", o.name)?;
    }
    Ok(())
}
