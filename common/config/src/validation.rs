//! Validators shared by every kind: names, hosts, labels, ports, percentages.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::diagnostic::Diagnostics;
use crate::path::FieldPath;

/// A DNS-1123 label (letters of either case accepted, as Istio did): 1..63 characters of
/// `[A-Za-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// A Kubernetes object name: a lowercase DNS-1123 subdomain.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| is_dns1123_label(l) && l.bytes().all(|c| !c.is_ascii_uppercase()))
}

/// A fully qualified domain name (or a short name: one label is fine).
pub fn validate_fqdn(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    if s.len() > 255 {
        return Err(format!("domain name \"{s}\" too long (max 255)"));
    }
    for label in s.split('.') {
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name \"{s}\" invalid (label \"{label}\" invalid)"
            ));
        }
    }
    Ok(())
}

/// A host that may start with a wildcard label (`*.example.com`, `*`), or an IP address.
pub fn validate_wildcard_domain(s: &str) -> Result<(), String> {
    if s == "*" || s.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if s.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    if s.len() > 255 {
        return Err(format!("domain name \"{s}\" too long (max 255)"));
    }
    let (first, rest) = match s.split_once('.') {
        Some((f, r)) => (f, Some(r)),
        None => (s, None),
    };
    let first_ok = match first.strip_prefix('*') {
        Some("") => true,
        Some(after) => is_dns1123_label(after.strip_prefix('-').unwrap_or(after)),
        None => is_dns1123_label(first),
    };
    if !first_ok {
        return Err(format!(
            "domain name \"{s}\" invalid (label \"{first}\" invalid)"
        ));
    }
    if let Some(rest) = rest {
        validate_fqdn(rest).map_err(|_| {
            let bad = rest
                .split('.')
                .find(|l| !is_dns1123_label(l))
                .unwrap_or(rest);
            format!("domain name \"{s}\" invalid (label \"{bad}\" invalid)")
        })?;
    }
    Ok(())
}

/// A Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name ≤ 63 characters of
/// `[A-Za-z0-9_.-]` starting and ending alphanumeric.
pub fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    is_label_value(name) && !name.is_empty()
}

/// A Kubernetes label value: empty, or ≤ 63 characters of `[A-Za-z0-9_.-]` starting and
/// ending alphanumeric.
pub fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

pub fn check_labels(d: &mut Diagnostics, path: &FieldPath, labels: &BTreeMap<String, String>) {
    for (k, v) in labels {
        let p = path.key(k.clone());
        if !is_label_key(k) {
            d.error(&p, format!("invalid label key \"{k}\""));
        }
        if !is_label_value(v) {
            d.error(&p, format!("invalid label value \"{v}\""));
        }
    }
}

pub fn check_port(d: &mut Diagnostics, path: &FieldPath, n: i64) {
    if !(1..=65535).contains(&n) {
        d.error(
            path,
            format!("port number {n} must be in the range 1..65535"),
        );
    }
}

pub fn check_percent_i64(d: &mut Diagnostics, path: &FieldPath, v: i64) {
    if !(0..=100).contains(&v) {
        d.error(path, format!("percentage {v} is not in range 0..100"));
    }
}

pub fn check_percent_f64(d: &mut Diagnostics, path: &FieldPath, v: f64) {
    if !(0.0..=100.0).contains(&v) {
        d.error(path, format!("percentage {v} is not in range 0..100"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "*.googleapis.com",
            "*",
            "10.0.0.1",
            "::1",
            "*-svc.example.com",
        ] {
            assert!(validate_wildcard_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-a.b", "a.*.b", "foo_bar.com", "a.b."] {
            assert!(validate_wildcard_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert!(is_label_key("app"));
        assert!(is_label_key("istio.io/rev"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("-app"));
        assert!(!is_label_key(""));
        assert!(is_label_value(""));
        assert!(is_label_value("v1"));
        assert!(!is_label_value("v1!"));
        assert!(!is_label_value(&"a".repeat(64)));
    }
}
