//! `keelctl expr eval EXPR [--attributes FILE.json]`: what a rule's `match` or an instance's
//! field evaluates to, and why not.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use keel_attributes::{Manifest, Value, compile};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Type-check EXPR against Istio's attributes and evaluate it.
    Eval {
        expr: String,
        /// A JSON object of attribute values, e.g. {"request.path": "/x", "response.code": 200,
        /// "source.labels": {"app": "reviews"}, "response.duration": "2ms"}.
        #[arg(long)]
        attributes: Option<PathBuf>,
    },
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<bool> {
    let Action::Eval { expr, attributes } = &args.action;
    let manifest = Manifest::istio();
    let mut bag: BTreeMap<String, Value> = BTreeMap::new();
    if let Some(path) = attributes {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let Some(obj) = json.as_object() else {
            anyhow::bail!(
                "{}: expected a JSON object of attribute names to values",
                path.display()
            );
        };
        for (name, v) in obj {
            let Some(t) = manifest.get(name) else {
                anyhow::bail!("{}: unknown attribute {name}", path.display());
            };
            let value = Value::from_json(t, v)
                .map_err(|e| anyhow::anyhow!("{}: {name}: {e}", path.display()))?;
            bag.insert(name.clone(), value);
        }
    }
    let program = match compile(expr, &manifest) {
        Ok(p) => p,
        Err(e) => {
            writeln!(err, "error: {expr}")?;
            writeln!(
                err,
                "       {}^ {}",
                " ".repeat(e.column.saturating_sub(1)),
                e.message
            )?;
            return Ok(false);
        }
    };
    match program.eval(&bag) {
        Ok(v) => {
            writeln!(out, "{v} ({})", v.value_type())?;
            Ok(true)
        }
        Err(e) => {
            writeln!(
                err,
                "error: {e} (the expression is a valid {})",
                program.result_type()
            )?;
            Ok(false)
        }
    }
}
