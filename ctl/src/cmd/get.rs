//! `keelctl get KIND [NAME...] [-n NS | -A] [-l SELECTOR] [-o yaml|json|wide|name] [-L KEY]`.

use std::io::Write;

use keel_config::Kind;
use serde_json::{Value, json};

use crate::client::{ClientError, GalleyClient};
use crate::output::{TableOptions, kind_ref, table};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The kind: name, plural or short name (vs, dr, gw, se, svc, deploy, ns, po, ...).
    pub kind: String,
    /// Names to get; all when none.
    pub names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Label selector, e.g. `app=reviews,version!=v1`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Output: yaml, json, wide or name (default: a table).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Show these labels as columns.
    #[arg(short = 'L', long = "label-columns", value_delimiter = ',')]
    pub label_columns: Vec<String>,
    #[arg(long)]
    pub show_labels: bool,
    /// After listing, keep printing changes as they happen.
    #[arg(short = 'w', long)]
    pub watch: bool,
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
    let format = args.output.as_deref().unwrap_or("");
    let jsonpath = format.strip_prefix("jsonpath=");
    if jsonpath.is_none() && !matches!(format, "" | "yaml" | "json" | "wide" | "name") {
        writeln!(
            err,
            "error: unable to match a printer suitable for the output format \"{format}\", allowed formats are: json,jsonpath,name,wide,yaml"
        )?;
        return Ok(false);
    }
    let ns = if kind.is_namespaced() {
        args.namespace.as_str()
    } else {
        ""
    };
    if args.watch {
        return watch(args, kind, ns, client, out, err).await;
    }
    let mut items = Vec::new();
    let mut ok = true;
    if args.names.is_empty() {
        let namespace = (!args.all_namespaces && kind.is_namespaced()).then_some(ns);
        match client
            .list(
                &args.kind,
                namespace,
                args.selector.as_deref().unwrap_or(""),
            )
            .await
        {
            Ok(list) => {
                for e in &list.file_errors {
                    writeln!(err, "warning: {e}")?;
                }
                items = list.items;
            }
            Err(e) => {
                writeln!(err, "{}", e.kubectl_line())?;
                return Ok(false);
            }
        }
        if items.is_empty() && matches!(format, "" | "wide") {
            if kind.is_namespaced() && !args.all_namespaces {
                writeln!(err, "No resources found in {ns} namespace.")?;
            } else {
                writeln!(err, "No resources found")?;
            }
            return Ok(true);
        }
    } else {
        for name in &args.names {
            match client.get(&args.kind, ns, name).await {
                Ok(v) => items.push(v),
                Err(e @ ClientError::Api { status: 404, .. }) => {
                    writeln!(err, "{}", e.kubectl_line())?;
                    ok = false;
                }
                Err(e) => {
                    writeln!(err, "{}", e.kubectl_line())?;
                    return Ok(false);
                }
            }
        }
    }
    let single = args.names.len() == 1 && items.len() == 1;
    if let Some(template) = jsonpath {
        let value = if single {
            items[0].clone()
        } else {
            as_list(items)
        };
        match crate::jsonpath::render(template, &value) {
            Ok(text) => write!(out, "{text}")?,
            Err(e) => {
                writeln!(err, "error: {e}")?;
                return Ok(false);
            }
        }
        return Ok(ok);
    }
    match format {
        "yaml" | "json" => {
            let value = if single {
                items[0].clone()
            } else {
                as_list(items)
            };
            if format == "yaml" {
                write!(out, "{}", keel_config::yaml::to_yaml(&value))?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            }
        }
        "name" => {
            for i in &items {
                writeln!(
                    out,
                    "{}/{}",
                    kind_ref(kind),
                    i.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                )?;
            }
        }
        _ => {
            if !items.is_empty() {
                let opts = TableOptions {
                    all_namespaces: args.all_namespaces,
                    wide: format == "wide",
                    label_columns: args.label_columns.clone(),
                    show_labels: args.show_labels,
                };
                write!(out, "{}", table(kind, &items, &opts))?;
            }
        }
    }
    Ok(ok)
}

/// `get -w`: a row per event, the header once; `-o name|json|yaml` print each object.
async fn watch(
    args: &Args,
    kind: Kind,
    ns: &str,
    client: &GalleyClient,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<bool> {
    let namespace = (!args.all_namespaces && kind.is_namespaced()).then_some(ns);
    let opts = TableOptions {
        all_namespaces: args.all_namespaces,
        wide: args.output.as_deref() == Some("wide"),
        label_columns: args.label_columns.clone(),
        show_labels: args.show_labels,
    };
    let mut header_done = false;
    let mut write_err = None;
    let result = client
        .watch(
            &args.kind,
            namespace,
            args.selector.as_deref().unwrap_or(""),
            |_event, obj| {
                let text = match args.output.as_deref() {
                    Some("name") => format!(
                        "{}/{}\n",
                        kind_ref(kind),
                        obj.pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                    ),
                    Some("json") => format!(
                        "{}\n",
                        serde_json::to_string_pretty(obj).unwrap_or_default()
                    ),
                    Some("yaml") => format!("---\n{}", keel_config::yaml::to_yaml(obj)),
                    _ => {
                        let t = table(kind, std::slice::from_ref(obj), &opts);
                        let mut lines = t.lines();
                        let header = lines.next().unwrap_or("");
                        let row = lines.next().unwrap_or("");
                        let text = if header_done {
                            format!("{row}\n")
                        } else {
                            format!("{header}\n{row}\n")
                        };
                        header_done = true;
                        text
                    }
                };
                match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => true,
                    Err(e) => {
                        write_err = Some(e);
                        false
                    }
                }
            },
        )
        .await;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    match result {
        Ok(()) => Ok(true),
        Err(e) => {
            writeln!(err, "{}", e.kubectl_line())?;
            Ok(false)
        }
    }
}

fn as_list(items: Vec<Value>) -> Value {
    json!({ "apiVersion": "v1", "kind": "List", "items": items, "metadata": { "resourceVersion": "" } })
}
