//! Reading `-f FILE|DIR|-` arguments into named sources.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::client::Source;

/// Every file named (directories: their .yaml/.yml/.json files, recursively, sorted; `-`:
/// standard input).
pub fn read_sources(files: &[PathBuf], stdin: &mut dyn Read) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .context("reading standard input")?;
            sources.push(Source {
                name: "<stdin>".to_owned(),
                text,
            });
        } else if f.is_dir() {
            let mut found = Vec::new();
            walk(f, &mut found)?;
            found.sort();
            for p in found {
                sources.push(read_file(&p)?);
            }
        } else if f.exists() {
            sources.push(read_file(f)?);
        } else {
            anyhow::bail!("the path \"{}\" does not exist", f.display());
        }
    }
    Ok(sources)
}

fn read_file(p: &Path) -> anyhow::Result<Source> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Source {
        name: p.display().to_string(),
        text,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = entry?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            out.push(p);
        }
    }
    Ok(())
}
