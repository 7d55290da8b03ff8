//! `keelctl label KIND NAME key=value... [key-] [--overwrite]`: a read-modify-write that
//! carries the resourceVersion, so a concurrent change is a conflict, never a lost update.

use std::io::Write;

use keel_config::Kind;
use serde_json::Value;

use crate::client::{GalleyClient, Source};
use crate::cmd::apply::report;
use crate::output::kind_ref;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub kind: String,
    pub name: String,
    /// `key=value` to set, `key-` to remove.
    #[arg(required = true)]
    pub labels: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Allow replacing a label that already has a value.
    #[arg(long)]
    pub overwrite: bool,
}

pub async fn run(
    args: &Args,
    client: &GalleyClient,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let Some(kind) = Kind::lookup(&args.kind) else {
        writeln!(
            err,
            "error: the server doesn't have a resource type \"{}\"",
            args.kind
        )?;
        return Ok(false);
    };
    let ns = if kind.is_namespaced() {
        args.namespace.as_str()
    } else {
        ""
    };
    let mut obj = match client.get(&args.kind, ns, &args.name).await {
        Ok(v) => v,
        Err(e) => {
            writeln!(err, "{}", e.kubectl_line())?;
            return Ok(false);
        }
    };
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        anyhow::bail!("galley returned an object without metadata");
    };
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if !labels.is_object() {
        *labels = Value::Object(Default::default());
    }
    let Some(labels) = labels.as_object_mut() else {
        anyhow::bail!("labels are not a map");
    };
    let mut changed = false;
    for l in &args.labels {
        // `key=value` first: a value may end in '-' (version=v1-); `key-` has no '='.
        if let Some((k, v)) = l.split_once('=') {
            match labels.get(k).and_then(Value::as_str) {
                Some(old) if old == v => {}
                Some(old) if !args.overwrite => {
                    writeln!(
                        err,
                        "error: '{k}' already has a value ({old}), and --overwrite is false"
                    )?;
                    return Ok(false);
                }
                _ => {
                    labels.insert(k.to_owned(), Value::String(v.to_owned()));
                    changed = true;
                }
            }
        } else if let Some(key) = l.strip_suffix('-') {
            changed |= labels.remove(key).is_some();
        } else {
            writeln!(
                err,
                "error: invalid label spec: {l} (use key=value or key-)"
            )?;
            return Ok(false);
        }
    }
    let what = format!("{}/{}", kind_ref(kind), args.name);
    if !changed {
        writeln!(out, "{what} not labeled")?;
        return Ok(true);
    }
    let source = Source {
        name: format!("{what} (label)"),
        text: serde_json::to_string(&obj)?,
    };
    match client.apply(&[source], &args.namespace, false).await {
        Ok(_) => {
            writeln!(out, "{what} labeled")?;
            Ok(true)
        }
        Err(e) => {
            report(&e, err)?;
            Ok(false)
        }
    }
}
