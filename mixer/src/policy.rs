//! Checks and quotas: what Istio 1.0's Mixer answered to a proxy's Check call.
//!
//! A check's attribute bag goes through the same rules as reports ([`Plan::dispatch_check`]):
//! matching rules hand checknothing and listentry instances to their handlers (denier,
//! listchecker), and quota instances to memquota. Which quotas a request asks for comes from
//! the QuotaSpecBindings of its destination service and their QuotaSpecs' rules, as Istio's
//! mixer client computed them in the proxy. The first handler that says no decides the
//! answer; quotas are only charged when every check passed.
//!
//! Everything except [`MemQuota`]'s counters is pure: time is passed in.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use keel_attributes::{Bag, Value};
use keel_config::mixer::{
    Adapter, DenierParams, ListCheckerParams, ListEntryType, MemQuotaParams, QuotaSpec,
    QuotaSpecBinding,
};
use keel_config::networking::StringMatch;
use keel_config::{Resource, Spec};

use crate::instance::{Instance, InstanceBody};
use crate::plan::Plan;

/// google.rpc.Code numbers Mixer answers with.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNAVAILABLE: i32 = 14;
}

/// A check's answer: a google.rpc status with the message Mixer would give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub code: i32,
    pub message: String,
}

impl Verdict {
    pub fn ok() -> Verdict {
        Verdict {
            code: code::OK,
            message: String::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.code == code::OK
    }

    /// The HTTP status Istio's proxies answered a denied request with (google.rpc code to
    /// HTTP, as Istio's mixer client mapped them).
    pub fn http_status(&self) -> u16 {
        match self.code {
            0 => 200,
            1 => 499,
            3 | 9 | 11 => 400,
            4 => 504,
            5 => 404,
            6 | 10 => 409,
            7 => 403,
            8 => 429,
            12 => 501,
            14 => 503,
            16 => 401,
            _ => 500,
        }
    }

    /// The body Istio 1.0's proxies sent with a denial: `CODE_NAME:message`.
    pub fn body(&self) -> String {
        format!("{}:{}", code_name(self.code), self.message)
    }
}

/// google.rpc.Code's name for `code`.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The denier: always its configured status (Istio's default is FAILED_PRECONDITION).
pub fn denier(handler: &str, params: &DenierParams) -> Verdict {
    let (code, message) = match &params.status {
        Some(s) => (
            i32::try_from(s.code).unwrap_or(code::PERMISSION_DENIED),
            s.message.clone().unwrap_or_default(),
        ),
        None => (9, String::new()),
    };
    if code == code::OK {
        return Verdict::ok();
    }
    Verdict {
        code,
        message: format!("{handler}:{message}"),
    }
}

/// The list checker: the entry looked up in `overrides`, as a whitelist (absent: NOT_FOUND)
/// or a blacklist (present: PERMISSION_DENIED). Lists from `providerUrl` are not fetched;
/// [`problems`] says so when the config is installed.
pub fn listchecker(handler: &str, params: &ListCheckerParams, entry: &Value) -> Verdict {
    let value = entry.to_string();
    let kind = params.entry_type.unwrap_or_default();
    let found = params.overrides.iter().any(|o| match kind {
        ListEntryType::Strings => *o == value,
        ListEntryType::CaseInsensitiveStrings => o.eq_ignore_ascii_case(&value),
        ListEntryType::IpAddresses => ip_in(o, &value),
        ListEntryType::Regex => regex::Regex::new(&format!("^(?:{o})$"))
            .map(|r| r.is_match(&value))
            .unwrap_or(false),
    });
    let blacklist = params.blacklist.unwrap_or(false);
    match (blacklist, found) {
        (false, true) | (true, false) => Verdict::ok(),
        (false, false) => Verdict {
            code: code::NOT_FOUND,
            message: format!("{handler}:{value} is not whitelisted"),
        },
        (true, true) => Verdict {
            code: code::PERMISSION_DENIED,
            message: format!("{handler}:{value} is blacklisted"),
        },
    }
}

/// `value` is the address `entry` names, or inside the CIDR block it names.
fn ip_in(entry: &str, value: &str) -> bool {
    let Ok(ip) = value.parse::<std::net::IpAddr>() else {
        return false;
    };
    match entry.split_once('/') {
        None => entry.parse::<std::net::IpAddr>().is_ok_and(|e| e == ip),
        Some((net, bits)) => {
            let (Ok(net), Ok(bits)) = (net.parse::<std::net::IpAddr>(), bits.parse::<u32>()) else {
                return false;
            };
            match (net, ip) {
                (std::net::IpAddr::V4(n), std::net::IpAddr::V4(i)) if bits <= 32 => {
                    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                    u32::from(n) & mask == u32::from(i) & mask
                }
                (std::net::IpAddr::V6(n), std::net::IpAddr::V6(i)) if bits <= 128 => {
                    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                    u128::from(n) & mask == u128::from(i) & mask
                }
                _ => false,
            }
        }
    }
}

/// Config the policy path cannot honour, named when it is installed.
pub fn problems(plan: &Plan) -> Vec<crate::plan::Problem> {
    plan.handlers
        .iter()
        .filter_map(|h| match &h.adapter {
            Adapter::ListChecker(p) if p.provider_url.is_some() => Some(crate::plan::Problem {
                resource: h.name.to_string(),
                message:
                    "providerUrl: lists are not fetched by Keel yet; only overrides are checked"
                        .into(),
            }),
            _ => None,
        })
        .collect()
}

/// The quotas a request asks for, `(quota name, charge)`: every QuotaSpec bound to the
/// destination service (by name and namespace, or `service: '*'`), each of its rules whose
/// matches hold (no match: always).
pub fn requested_quotas<'a>(
    resources: impl IntoIterator<Item = &'a Resource> + Clone,
    bag: &dyn Bag,
) -> Vec<(String, i64)> {
    let dest = |name: &str| match bag.get(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    let host = dest("destination.service.host");
    let (svc_name, svc_ns) = (
        dest("destination.service.name"),
        dest("destination.service.namespace"),
    );
    let specs: HashMap<(String, String), &QuotaSpec> = resources
        .clone()
        .into_iter()
        .filter_map(|r| match &r.spec {
            Spec::QuotaSpec(q) => Some(((r.namespace().to_owned(), r.name().to_owned()), q)),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for r in resources {
        let Spec::QuotaSpecBinding(b) = &r.spec else {
            continue;
        };
        if !binds(b, r.namespace(), host, svc_name, svc_ns) {
            continue;
        }
        for reference in &b.quota_specs {
            let ns = reference.namespace.as_deref().unwrap_or(r.namespace());
            let Some(spec) = specs.get(&(ns.to_owned(), reference.name.clone())) else {
                continue;
            };
            for rule in &spec.rules {
                let holds = rule.matches.is_empty()
                    || rule.matches.iter().any(|m| {
                        m.clause
                            .iter()
                            .all(|(attr, sm)| bag.get(attr).is_some_and(|v| string_match(sm, v)))
                    });
                if holds {
                    out.extend(
                        rule.quotas
                            .iter()
                            .map(|q| (q.quota.clone(), q.charge.max(1))),
                    );
                }
            }
        }
    }
    out
}

fn binds(
    b: &QuotaSpecBinding,
    binding_ns: &str,
    host: Option<&String>,
    name: Option<&String>,
    namespace: Option<&String>,
) -> bool {
    b.services.iter().any(|s| {
        if s.service.as_deref() == Some("*") {
            return true;
        }
        let ns = s.namespace.as_deref().unwrap_or(binding_ns);
        match (&s.name, name, namespace) {
            (Some(n), Some(dn), Some(dns)) if n == dn && ns == dns => true,
            (Some(n), _, _) => {
                host.is_some_and(|h| *h == format!("{n}.{ns}.svc.cluster.local") || h == n)
            }
            _ => false,
        }
    })
}

fn string_match(m: &StringMatch, v: &Value) -> bool {
    let s = v.to_string();
    if let Some(e) = &m.exact {
        return s == *e;
    }
    if let Some(p) = &m.prefix {
        return s.starts_with(p.as_str());
    }
    if let Some(r) = &m.regex {
        return regex::Regex::new(&format!("^(?:{r})$")).is_ok_and(|re| re.is_match(&s));
    }
    false
}

/// Memquota's counters: a rolling window per (handler, quota, dimensions).
#[derive(Debug, Default)]
pub struct MemQuota {
    windows: Mutex<HashMap<String, VecDeque<(Instant, i64)>>>,
}

/// Keys past this many are swept of empty windows before a new one is added.
const MAX_WINDOWS: usize = 100_000;

impl MemQuota {
    /// Takes `amount` from the quota `instance` is counted against, all or nothing; true
    /// when granted. The limit is the first override whose dimensions all equal the
    /// instance's, else the quota's own; no limit configured for the instance: granted.
    pub fn alloc(
        &self,
        handler: &str,
        params: &MemQuotaParams,
        instance: &Instance,
        amount: i64,
        now: Instant,
    ) -> bool {
        let InstanceBody::Quota { dimensions } = &instance.body else {
            return true;
        };
        let Some(limit) = params.quotas.iter().find(|q| q.name == *instance.name) else {
            return true;
        };
        let (max, window) = limit
            .overrides
            .iter()
            .find(|o| {
                o.dimensions
                    .iter()
                    .all(|(k, want)| dimensions.get(k).is_some_and(|v| v.to_string() == *want))
            })
            .map(|o| (o.max_amount, o.valid_duration.map(|d| d.0)))
            .unwrap_or((limit.max_amount, limit.valid_duration.map(|d| d.0)));
        let key = format!(
            "{handler}\u{0}{}\u{0}{}",
            instance.name,
            dims_key(dimensions)
        );
        let Ok(mut windows) = self.windows.lock() else {
            return true;
        };
        if windows.len() >= MAX_WINDOWS && !windows.contains_key(&key) {
            windows.retain(|_, w| {
                w.retain(|(t, _)| !expired(*t, window, now));
                !w.is_empty()
            });
        }
        let w = windows.entry(key).or_default();
        // No validDuration: the amount is held for good (a plain allocation).
        while w.front().is_some_and(|(t, _)| expired(*t, window, now)) {
            w.pop_front();
        }
        let used: i64 = w.iter().map(|(_, a)| a).sum();
        if used + amount > max {
            return false;
        }
        w.push_back((now, amount));
        true
    }
}

fn expired(t: Instant, window: Option<Duration>, now: Instant) -> bool {
    window.is_some_and(|d| now.saturating_duration_since(t) >= d)
}

fn dims_key(d: &BTreeMap<String, Value>) -> String {
    d.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\u{1}")
}

/// Runs a check: `bag` through `plan`'s rules, each check handler asked in rule order, and,
/// when all pass, the requested quotas charged. The first refusal is the answer.
pub fn check(
    plan: &Plan,
    bag: &dyn Bag,
    quotas: &[(String, i64)],
    memquota: &MemQuota,
    now: Instant,
) -> (Verdict, crate::plan::Outcome) {
    let names: Vec<&str> = quotas.iter().map(|(n, _)| n.as_str()).collect();
    let outcome = plan.dispatch_check(bag, &names);
    for d in &outcome.dispatches {
        let h = &plan.handlers[d.handler];
        for i in &d.instances {
            let v = match (&h.adapter, &i.body) {
                (
                    Adapter::Denier(p),
                    InstanceBody::CheckNothing | InstanceBody::ListEntry { .. },
                ) => denier(&h.name, p),
                (Adapter::ListChecker(p), InstanceBody::ListEntry { value }) => {
                    listchecker(&h.name, p, value)
                }
                _ => Verdict::ok(),
            };
            if !v.is_ok() {
                return (v, outcome);
            }
        }
    }
    for d in &outcome.dispatches {
        let h = &plan.handlers[d.handler];
        for i in &d.instances {
            let InstanceBody::Quota { .. } = &i.body else {
                continue;
            };
            let short = i.name.split('.').next().unwrap_or("");
            let amount = quotas
                .iter()
                .find(|(n, _)| *n == *i.name || n == short)
                .map_or(1, |(_, a)| *a);
            let granted = match &h.adapter {
                Adapter::MemQuota(p) => memquota.alloc(&h.name, p, i, amount, now),
                Adapter::Denier(p) => denier(&h.name, p).is_ok(),
                _ => true,
            };
            if !granted {
                return (
                    Verdict {
                        code: code::RESOURCE_EXHAUSTED,
                        message: format!("Quota is exhausted for: {short}"),
                    },
                    outcome,
                );
            }
        }
    }
    (Verdict::ok(), outcome)
}
