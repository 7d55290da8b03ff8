//! The prometheus adapter: metric instances become Prometheus series, served in the text
//! exposition format (Mixer serves them on :42422/metrics).
//!
//! Every prometheus handler's metrics live in one exporter, as in Mixer. Names get the
//! configured namespace prefix (`istio` by default): `double_request_count` is scraped as
//! `istio_double_request_count`. Labels are the configured `label_names`, valued from the
//! instance's dimensions of the same name. A reconfiguration keeps the series of every
//! metric whose definition did not change, so counters survive rule edits.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use keel_attributes::Value;
use keel_config::mixer::{Adapter, BucketsDefinition, MetricKind};

use crate::instance::{Instance, InstanceBody};
use crate::plan::{HandlerConfig, Problem};

/// Prometheus' default histogram buckets, used when a DISTRIBUTION names none.
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, PartialEq)]
struct FamilyDef {
    help: String,
    kind: MetricKind,
    labels: Vec<String>,
    bounds: Vec<f64>,
}

#[derive(Clone, Debug)]
enum Series {
    Scalar(f64),
    Histogram {
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    def: FamilyDef,
    series: HashMap<Vec<String>, Series>,
}

/// Why an instance was not recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("handler {handler} has no metric for instance {instance}")]
    NoMetric { handler: String, instance: String },
    #[error("instance {instance}: value {value} is not a number")]
    NotNumeric { instance: String, value: String },
}

/// All prometheus handlers' metrics.
#[derive(Debug, Default)]
pub struct Exporter {
    families: BTreeMap<String, Family>,
    /// (handler, instance) -> metric name.
    routes: HashMap<(String, String), String>,
}

impl Exporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the prometheus handlers of a new plan. Metrics whose definition is unchanged
    /// keep their series; changed ones start over; ones no handler defines any more go.
    pub fn configure(&mut self, handlers: &[HandlerConfig]) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut defs: BTreeMap<String, (FamilyDef, String)> = BTreeMap::new();
        let mut routes = HashMap::new();
        for h in handlers {
            let Adapter::Prometheus(params) = &h.adapter else {
                continue;
            };
            for (i, m) in params.metrics.iter().enumerate() {
                let prefix = m.namespace.as_deref().unwrap_or("istio");
                let full = if prefix.is_empty() {
                    m.name.clone()
                } else {
                    format!("{prefix}_{}", m.name)
                };
                let bounds = match m.kind {
                    MetricKind::Distribution => match bucket_bounds(m.buckets.as_ref()) {
                        Ok(b) => b,
                        Err(e) => {
                            problems.push(Problem {
                                resource: h.name.to_string(),
                                message: format!("metrics[{i}].buckets: {e}; metric left out"),
                            });
                            continue;
                        }
                    },
                    _ => Vec::new(),
                };
                let def = FamilyDef {
                    help: m.description.clone().unwrap_or_else(|| full.clone()),
                    kind: m.kind,
                    labels: m.label_names.clone(),
                    bounds,
                };
                if let Some((existing, owner)) = defs.get(&full)
                    && *existing != def
                {
                    problems.push(Problem {
                        resource: h.name.to_string(),
                        message: format!(
                            "metrics[{i}]: {full} is already defined differently by {owner}; left out"
                        ),
                    });
                    continue;
                }
                defs.insert(full.clone(), (def, h.name.to_string()));
                routes.insert((h.name.to_string(), m.instance_name.clone()), full);
            }
        }
        self.families
            .retain(|name, f| defs.get(name).is_some_and(|(d, _)| *d == f.def));
        for (name, (def, _)) in defs {
            self.families.entry(name).or_insert_with(|| Family {
                def,
                series: HashMap::new(),
            });
        }
        self.routes = routes;
        problems
    }

    /// Records `instances` for handler `handler` (its full name).
    pub fn record(&mut self, handler: &str, instances: &[Instance]) -> Vec<RecordError> {
        let mut errors = Vec::new();
        for inst in instances {
            let InstanceBody::Metric { value, dimensions } = &inst.body else {
                continue;
            };
            let Some(name) = self
                .routes
                .get(&(handler.to_owned(), inst.name.to_string()))
            else {
                errors.push(RecordError::NoMetric {
                    handler: handler.to_owned(),
                    instance: inst.name.to_string(),
                });
                continue;
            };
            let Some(family) = self.families.get_mut(name) else {
                continue;
            };
            let Some(v) = numeric(value) else {
                errors.push(RecordError::NotNumeric {
                    instance: inst.name.to_string(),
                    value: value.to_string(),
                });
                continue;
            };
            let key: Vec<String> = family
                .def
                .labels
                .iter()
                .map(|l| dimensions.get(l).map(label_value).unwrap_or_default())
                .collect();
            let def = &family.def;
            let series = family.series.entry(key).or_insert_with(|| match def.kind {
                MetricKind::Distribution => Series::Histogram {
                    counts: vec![0; def.bounds.len()],
                    sum: 0.0,
                    count: 0,
                },
                _ => Series::Scalar(0.0),
            });
            match (def.kind, series) {
                (MetricKind::Gauge, Series::Scalar(s)) => *s = v,
                (_, Series::Scalar(s)) => *s += v,
                (_, Series::Histogram { counts, sum, count }) => {
                    for (c, bound) in counts.iter_mut().zip(&def.bounds) {
                        if v <= *bound {
                            *c += 1;
                        }
                    }
                    *sum += v;
                    *count += 1;
                }
            }
        }
        errors
    }

    /// The text exposition format (version 0.0.4), families by name, series by labels.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let kind = match f.def.kind {
                MetricKind::Gauge => "gauge",
                MetricKind::Counter => "counter",
                MetricKind::Distribution => "histogram",
                MetricKind::Unspecified => "untyped",
            };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.def.help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let mut series: Vec<_> = f.series.iter().collect();
            series.sort_by(|a, b| a.0.cmp(b.0));
            for (values, s) in series {
                let labels = label_pairs(&f.def.labels, values);
                match s {
                    Series::Scalar(v) => {
                        let _ = writeln!(out, "{name}{} {}", braces(&labels), number(*v));
                    }
                    Series::Histogram { counts, sum, count } => {
                        for (c, bound) in counts.iter().zip(&f.def.bounds) {
                            let mut l = labels.clone();
                            l.push(format!("le=\"{}\"", number(*bound)));
                            let _ = writeln!(out, "{name}_bucket{} {c}", braces(&l));
                        }
                        let mut l = labels.clone();
                        l.push("le=\"+Inf\"".to_owned());
                        let _ = writeln!(out, "{name}_bucket{} {count}", braces(&l));
                        let _ = writeln!(out, "{name}_sum{} {}", braces(&labels), number(*sum));
                        let _ = writeln!(out, "{name}_count{} {count}", braces(&labels));
                    }
                }
            }
        }
        out
    }
}

/// A DISTRIBUTION's upper bounds (the `+Inf` bucket is implied).
fn bucket_bounds(def: Option<&BucketsDefinition>) -> Result<Vec<f64>, String> {
    let Some(def) = def else {
        return Ok(DEFAULT_BUCKETS.to_vec());
    };
    let bounds: Vec<f64> = if let Some(l) = &def.linear_buckets {
        if l.num_finite_buckets <= 0 || l.width <= 0.0 {
            return Err("linearBuckets needs numFiniteBuckets > 0 and width > 0".to_owned());
        }
        (0..=l.num_finite_buckets)
            .map(|i| l.offset + l.width * i as f64)
            .collect()
    } else if let Some(e) = &def.exponential_buckets {
        if e.num_finite_buckets <= 0 || e.growth_factor <= 1.0 || e.scale <= 0.0 {
            return Err(
                "exponentialBuckets needs numFiniteBuckets > 0, growthFactor > 1 and scale > 0"
                    .to_owned(),
            );
        }
        (0..=e.num_finite_buckets)
            .map(|i| e.scale * e.growth_factor.powi(i32::try_from(i).unwrap_or(i32::MAX)))
            .collect()
    } else if let Some(x) = &def.explicit_buckets {
        if x.bounds.is_empty() || x.bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("explicitBuckets.bounds must be non-empty and increasing".to_owned());
        }
        x.bounds.clone()
    } else {
        DEFAULT_BUCKETS.to_vec()
    };
    Ok(bounds)
}

/// A metric value as a number: integers, doubles, durations (in seconds, as Mixer's
/// Prometheus adapter does), strings that read as numbers.
fn numeric(v: &Value) -> Option<f64> {
    match v {
        Value::Int64(i) => Some(*i as f64),
        Value::Double(d) => Some(*d),
        Value::Duration(d) => Some(d.as_secs_f64()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn label_value(v: &Value) -> String {
    v.to_string()
}

fn label_pairs(names: &[String], values: &[String]) -> Vec<String> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect()
}

fn braces(pairs: &[String]) -> String {
    if pairs.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", pairs.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}
