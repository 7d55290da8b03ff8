//! Attribute values and their types.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The types of attributes and expressions (Istio's `ValueType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ValueType {
    String,
    Int64,
    Double,
    Bool,
    Timestamp,
    IpAddress,
    EmailAddress,
    DnsName,
    Uri,
    Duration,
    StringMap,
}

impl ValueType {
    pub fn parse(name: &str) -> Option<ValueType> {
        Some(match name {
            "STRING" => ValueType::String,
            "INT64" => ValueType::Int64,
            "DOUBLE" => ValueType::Double,
            "BOOL" => ValueType::Bool,
            "TIMESTAMP" => ValueType::Timestamp,
            "IP_ADDRESS" => ValueType::IpAddress,
            "EMAIL_ADDRESS" => ValueType::EmailAddress,
            "DNS_NAME" => ValueType::DnsName,
            "URI" => ValueType::Uri,
            "DURATION" => ValueType::Duration,
            "STRING_MAP" => ValueType::StringMap,
            _ => return None,
        })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueType::String => "STRING",
            ValueType::Int64 => "INT64",
            ValueType::Double => "DOUBLE",
            ValueType::Bool => "BOOL",
            ValueType::Timestamp => "TIMESTAMP",
            ValueType::IpAddress => "IP_ADDRESS",
            ValueType::EmailAddress => "EMAIL_ADDRESS",
            ValueType::DnsName => "DNS_NAME",
            ValueType::Uri => "URI",
            ValueType::Duration => "DURATION",
            ValueType::StringMap => "STRING_MAP",
        })
    }
}

/// A typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    String(String),
    Int64(i64),
    Double(f64),
    Bool(bool),
    Timestamp(SystemTime),
    IpAddress(IpAddr),
    EmailAddress(String),
    DnsName(String),
    Uri(String),
    Duration(Duration),
    StringMap(BTreeMap<String, String>),
}

impl Value {
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::String(_) => ValueType::String,
            Value::Int64(_) => ValueType::Int64,
            Value::Double(_) => ValueType::Double,
            Value::Bool(_) => ValueType::Bool,
            Value::Timestamp(_) => ValueType::Timestamp,
            Value::IpAddress(_) => ValueType::IpAddress,
            Value::EmailAddress(_) => ValueType::EmailAddress,
            Value::DnsName(_) => ValueType::DnsName,
            Value::Uri(_) => ValueType::Uri,
            Value::Duration(_) => ValueType::Duration,
            Value::StringMap(_) => ValueType::StringMap,
        }
    }

    /// Reads a JSON value as an attribute of type `t` (for `keelctl expr eval --attributes`
    /// and tests): strings for durations ("1.5s"), timestamps (RFC 3339 UTC) and addresses.
    pub fn from_json(t: ValueType, v: &serde_json::Value) -> Result<Value, String> {
        let s = || {
            v.as_str()
                .ok_or_else(|| format!("expected a string for {t}, got {v}"))
        };
        Ok(match t {
            ValueType::String => Value::String(s()?.to_owned()),
            ValueType::Int64 => Value::Int64(
                v.as_i64()
                    .ok_or_else(|| format!("expected an integer, got {v}"))?,
            ),
            ValueType::Double => Value::Double(
                v.as_f64()
                    .ok_or_else(|| format!("expected a number, got {v}"))?,
            ),
            ValueType::Bool => Value::Bool(
                v.as_bool()
                    .ok_or_else(|| format!("expected true or false, got {v}"))?,
            ),
            ValueType::Timestamp => Value::Timestamp(parse_timestamp(s()?)?),
            ValueType::IpAddress => Value::IpAddress(
                s()?.parse()
                    .map_err(|_| format!("\"{}\" is not an IP address", s().unwrap_or_default()))?,
            ),
            ValueType::EmailAddress => Value::EmailAddress(s()?.to_owned()),
            ValueType::DnsName => Value::DnsName(s()?.to_owned()),
            ValueType::Uri => Value::Uri(s()?.to_owned()),
            ValueType::Duration => Value::Duration(
                parse_duration(s()?)
                    .ok_or_else(|| format!("\"{}\" is not a duration", s().unwrap_or_default()))?,
            ),
            ValueType::StringMap => {
                let obj = v
                    .as_object()
                    .ok_or_else(|| format!("expected an object of strings, got {v}"))?;
                let mut m = BTreeMap::new();
                for (k, val) in obj {
                    m.insert(
                        k.clone(),
                        val.as_str()
                            .ok_or_else(|| format!("map value {k} is not a string"))?
                            .to_owned(),
                    );
                }
                Value::StringMap(m)
            }
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) | Value::EmailAddress(s) | Value::DnsName(s) | Value::Uri(s) => {
                f.write_str(s)
            }
            Value::Int64(i) => write!(f, "{i}"),
            Value::Double(d) => write!(f, "{d}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Timestamp(t) => f.write_str(&format_timestamp(*t)),
            Value::IpAddress(ip) => write!(f, "{ip}"),
            Value::Duration(d) => f.write_str(&format_duration(*d)),
            Value::StringMap(m) => {
                let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                write!(f, "map[{}]", parts.join(" "))
            }
        }
    }
}

/// Go's `time.ParseDuration` for non-negative durations: `1.5s`, `100ms`, `1h2m`, `0`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if n == 0 {
            return None;
        }
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += num * scale;
        rest = &rest[u..];
    }
    Some(Duration::from_secs_f64(total))
}

/// Go's duration format: `2.245269ms`, `1.5s`, `1m30s`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let trim = |x: String| {
        if x.contains('.') {
            x.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            x
        }
    };
    if nanos < 1_000 {
        return format!("{nanos}ns");
    }
    if nanos < 1_000_000 {
        return trim(format!("{:.3}", nanos as f64 / 1e3)) + "µs";
    }
    if nanos < 1_000_000_000 {
        return trim(format!("{:.6}", nanos as f64 / 1e6)) + "ms";
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let frac = d.subsec_nanos();
    let sec = trim(format!("{s}.{frac:09}")) + "s";
    match (h, m) {
        (0, 0) => sec,
        (0, m) => format!("{m}m{sec}"),
        (h, m) => format!("{h}h{m}m{sec}"),
    }
}

/// RFC 3339 timestamps in UTC (`2017-01-01T00:00:00Z`, fractions and offsets allowed).
pub fn parse_timestamp(s: &str) -> Result<SystemTime, String> {
    let err = || format!("\"{s}\" is not an RFC 3339 timestamp");
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(err());
    }
    let num =
        |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok()).ok_or_else(err);
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        let padded = format!("{frac:0<9}");
        nanos = padded
            .get(..9)
            .and_then(|x| x.parse().ok())
            .ok_or_else(err)?;
    }
    let offset: i64 = match s.get(i..) {
        Some("Z") | Some("z") => 0,
        Some(o) if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let oh: i64 = o[1..3].parse().map_err(|_| err())?;
            let om: i64 = o[4..6].parse().map_err(|_| err())?;
            sign * (oh * 3600 + om * 60)
        }
        _ => return Err(err()),
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return Err(err());
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (yy, mm) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Ok(base + Duration::from_nanos(nanos.unsigned_abs()))
}

pub fn format_timestamp(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => (
            -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            0,
        ),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{}", format!("{nanos:09}").trim_end_matches('0'))
    };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_like_go() {
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0ms"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1h2m"), Some(Duration::from_secs(3720)));
        assert_eq!(parse_duration("twice"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(
            format_duration(Duration::from_nanos(2_245_269)),
            "2.245269ms"
        );
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn timestamps_round_trip() {
        for s in [
            "2017-01-01T00:00:00Z",
            "2018-11-26T09:00:46.541292Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(format_timestamp(parse_timestamp(s).unwrap()), s);
        }
        assert_eq!(
            parse_timestamp("2017-01-01T01:00:00+01:00").unwrap(),
            parse_timestamp("2017-01-01T00:00:00Z").unwrap()
        );
        assert!(parse_timestamp("yesterday").is_err());
    }
}
