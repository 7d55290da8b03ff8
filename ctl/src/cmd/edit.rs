//! `keelctl edit KIND NAME`: open the object in `$KUBE_EDITOR`/`$EDITOR` (default vi),
//! validate on save, and reopen with the errors on top when galley refuses it, like kubectl.

use std::io::Write;
use std::path::Path;

use keel_config::Kind;

use crate::client::{ClientError, GalleyClient, Source};
use crate::output::kind_ref;

#[derive(clap::Args, Debug)]
pub struct Args {
    pub kind: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,
# and an empty file will abort the edit. If an error occurs while saving this file will be
# reopened with the relevant failures.
#
";

/// The editor command: `$KUBE_EDITOR`, `$EDITOR`, or vi.
fn editor() -> String {
    ["KEEL_EDITOR", "KUBE_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".to_owned())
}

fn run_editor(path: &Path) -> anyhow::Result<()> {
    // Through the shell, so an editor given with arguments ("code --wait") works.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} \"$1\"", editor()))
        .arg("keelctl-edit")
        .arg(path)
        .status()?;
    if !status.success() {
        anyhow::bail!("the editor exited with {status}");
    }
    Ok(())
}

/// The file without comment lines: what is sent, and what "unchanged" compares.
fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
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
    let obj = match client.get(&args.kind, ns, &args.name).await {
        Ok(v) => v,
        Err(e) => {
            writeln!(err, "{}", e.kubectl_line())?;
            return Ok(false);
        }
    };
    let what = format!("{}/{}", kind_ref(kind), args.name);
    let original = keel_config::yaml::to_yaml(&obj);
    let path = std::env::temp_dir().join(format!(
        "keelctl-edit-{}-{}.yaml",
        std::process::id(),
        args.name
    ));
    let mut errors: Vec<String> = Vec::new();
    let mut body = original.clone();
    let mut last_failed: Option<String> = None;
    loop {
        let mut text = HEADER.to_owned();
        for e in &errors {
            text.push_str(&format!("# {e}\n"));
        }
        if !errors.is_empty() {
            text.push_str("#\n");
        }
        text.push_str(&body);
        std::fs::write(&path, &text)?;
        run_editor(&path)?;
        let edited = std::fs::read_to_string(&path)?;
        let content = strip_comments(&edited);
        if content.trim().is_empty() {
            let _ = std::fs::remove_file(&path);
            writeln!(err, "Edit cancelled, saved file was empty.")?;
            return Ok(true);
        }
        if content == strip_comments(&original) {
            let _ = std::fs::remove_file(&path);
            writeln!(out, "Edit cancelled, no changes made.")?;
            return Ok(true);
        }
        if last_failed.as_deref() == Some(content.as_str()) {
            writeln!(err, "error: Edit cancelled, no valid changes were saved.")?;
            writeln!(
                err,
                "A copy of your changes has been stored to \"{}\"",
                path.display()
            )?;
            return Ok(false);
        }
        let source = Source {
            name: format!("{what} (edit)"),
            text: content.clone(),
        };
        match client.apply(&[source], &args.namespace, false).await {
            Ok(_) => {
                let _ = std::fs::remove_file(&path);
                writeln!(out, "{what} edited")?;
                return Ok(true);
            }
            Err(ClientError::Api {
                status: 422 | 400,
                message,
                details,
            }) => {
                errors = details;
                errors.push(message);
                body = content.clone() + "\n";
                last_failed = Some(content);
            }
            Err(e) => {
                writeln!(err, "{}", e.kubectl_line())?;
                writeln!(
                    err,
                    "A copy of your changes has been stored to \"{}\"",
                    path.display()
                )?;
                return Ok(false);
            }
        }
    }
}
