//! Where galley is: `--galley`, else `$KEEL_GALLEY`, else the context file
//! `$KEEL_HOME/context.json` (default `~/.keel`), else galley's default local address.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const DEFAULT_GALLEY: &str = "http://127.0.0.1:9093";
pub const DEFAULT_PILOT: &str = "http://127.0.0.1:8080";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub galley: Option<String>,
    /// Pilot's debug address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pilot: Option<String>,
}

pub fn keel_home() -> PathBuf {
    if let Some(h) = std::env::var_os("KEEL_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".keel")
}

pub fn context_path() -> PathBuf {
    keel_home().join("context.json")
}

/// Reads the context file; a missing file is an empty context.
pub fn load() -> anyhow::Result<Context> {
    let path = context_path();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a valid keel context: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Context::default()),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the context file (atomically: temp file, then rename).
pub fn save(ctx: &Context) -> anyhow::Result<()> {
    let path = context_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(ctx)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

/// The galley address to use.
pub fn galley_addr(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(f) = flag {
        return Ok(f.to_owned());
    }
    if let Ok(env) = std::env::var("KEEL_GALLEY")
        && !env.is_empty()
    {
        return Ok(env);
    }
    Ok(load()?.galley.unwrap_or_else(|| DEFAULT_GALLEY.to_owned()))
}

/// Pilot's debug address: `--pilot`, else `$KEEL_PILOT`, else the context file, else the
/// local default.
pub fn pilot_addr(flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(f) = flag {
        return Ok(f.to_owned());
    }
    if let Ok(env) = std::env::var("KEEL_PILOT")
        && !env.is_empty()
    {
        return Ok(env);
    }
    Ok(load()?.pilot.unwrap_or_else(|| DEFAULT_PILOT.to_owned()))
}
