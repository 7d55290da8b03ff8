//! The stdio adapter: log entries as lines, JSON by default, the way Mixer's stdio adapter
//! wrote them: `{"level":"warn","time":"…","instance":"newlog.logentry.istio-system", …}` with
//! the variables after, in name order.

use std::fmt::Write as _;
use std::time::SystemTime;

use keel_attributes::Value;
use keel_config::mixer::{Level, LogStream, StdioParams};

use crate::instance::{Instance, InstanceBody};

/// A formatted line and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub stream: LogStream,
    /// For FILE and ROTATED_FILE: `outputPath`.
    pub path: Option<String>,
    /// For ROTATED_FILE: when to rotate and what to keep.
    pub rotation: Option<super::rotate::Rotation>,
    pub text: String,
}

/// The level a severity maps to: `severityLevels` first (0 info, 1 warning, 2 error), then
/// the usual names, else info.
pub fn level_of(params: &StdioParams, severity: &str) -> Level {
    if let Some(n) = params.severity_levels.get(severity) {
        return match n {
            1 => Level::Warning,
            n if *n >= 2 => Level::Error,
            _ => Level::Info,
        };
    }
    match severity.to_ascii_lowercase().as_str() {
        "warning" | "warn" => Level::Warning,
        "error" | "critical" | "alert" | "emergency" => Level::Error,
        _ => Level::Info,
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Info => "info",
        Level::Warning => "warn",
        Level::Error => "error",
    }
}

fn rank(l: Level) -> u8 {
    match l {
        Level::Info => 0,
        Level::Warning => 1,
        Level::Error => 2,
    }
}

/// Formats one log entry; `None` when it is not a log entry or is below `outputLevel`.
pub fn format(params: &StdioParams, instance: &Instance) -> Option<Line> {
    let InstanceBody::LogEntry {
        variables,
        timestamp,
        severity,
    } = &instance.body
    else {
        return None;
    };
    let level = level_of(params, severity);
    if rank(level) < rank(params.output_level.unwrap_or(Level::Info)) {
        return None;
    }
    let time = time_micros(*timestamp);
    let mut text = String::new();
    if params.output_as_json.unwrap_or(true) {
        let _ = write!(
            text,
            "{{\"level\":\"{}\",\"time\":{},\"instance\":{}",
            level_name(level),
            json_str(&time),
            json_str(&instance.name)
        );
        for (k, v) in variables {
            let _ = write!(text, ",{}:{}", json_str(k), to_json(v));
        }
        text.push('}');
    } else {
        // Console form: time, level, instance, then the variables as JSON.
        let mut vars = String::from("{");
        for (i, (k, v)) in variables.iter().enumerate() {
            if i > 0 {
                vars.push(',');
            }
            let _ = write!(vars, "{}:{}", json_str(k), to_json(v));
        }
        vars.push('}');
        let _ = write!(
            text,
            "{time}\t{}\t{}\t{vars}",
            level_name(level),
            instance.name
        );
    }
    let stream = params.log_stream.unwrap_or_default();
    Some(Line {
        stream,
        path: match stream {
            LogStream::File | LogStream::RotatedFile => params.output_path.clone(),
            _ => None,
        },
        rotation: (stream == LogStream::RotatedFile).then(|| super::rotate::Rotation::of(params)),
        text,
    })
}

/// A variable as JSON: numbers and booleans as themselves, maps as objects, everything else
/// (durations as `2.245269ms`, timestamps, addresses) as its string form.
pub fn to_json(v: &Value) -> String {
    let j = match v {
        Value::Int64(i) => serde_json::Value::from(*i),
        Value::Double(d) => serde_json::Value::from(*d),
        Value::Bool(b) => serde_json::Value::from(*b),
        Value::StringMap(m) => serde_json::Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect(),
        ),
        other => serde_json::Value::from(other.to_string()),
    };
    j.to_string()
}

fn json_str(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// RFC 3339 in UTC with microseconds, as Mixer's logs show (`2018-11-26T09:00:46.541292Z`).
pub fn time_micros(t: SystemTime) -> String {
    let full = keel_attributes::value::format_timestamp(t);
    // format_timestamp trims trailing zeros; pad or cut the fraction to six digits.
    let Some(base) = full.strip_suffix('Z') else {
        return full;
    };
    let (secs, frac) = base.split_once('.').unwrap_or((base, ""));
    let mut frac: String = frac.chars().take(6).collect();
    while frac.len() < 6 {
        frac.push('0');
    }
    format!("{secs}.{frac}Z")
}
