//! Instances: a template's fields, compiled, and what they evaluate to for one attribute bag.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use keel_attributes::{Bag, CompileError, EvalError, Manifest, Program, Value, compile};
use keel_config::mixer::Template;

/// One instance, built for one report.
#[derive(Clone, Debug, PartialEq)]
pub struct Instance {
    /// The instance's full name, `newlog.logentry.istio-system`.
    pub name: Arc<str>,
    pub body: InstanceBody,
}

#[derive(Clone, Debug, PartialEq)]
pub enum InstanceBody {
    Metric {
        value: Value,
        dimensions: BTreeMap<String, Value>,
    },
    LogEntry {
        variables: BTreeMap<String, Value>,
        timestamp: SystemTime,
        severity: String,
    },
}

/// Why an instance was not built for a bag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("instance {instance}: {field}: {error}")]
pub struct BuildError {
    pub instance: Arc<str>,
    pub field: String,
    pub error: EvalError,
}

/// A template field that does not compile (galley checks them first, so this means the
/// manifest changed under the config).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {error}")]
pub struct FieldError {
    pub field: String,
    pub error: CompileError,
}

/// A template with its fields compiled.
#[derive(Debug)]
pub struct InstanceBuilder {
    pub name: Arc<str>,
    pub template: &'static str,
    kind: BuilderKind,
}

#[derive(Debug)]
enum BuilderKind {
    Metric {
        value: Program,
        dimensions: Vec<(String, Program)>,
    },
    LogEntry {
        variables: Vec<(String, Program)>,
        timestamp: Option<Program>,
        severity: Option<Program>,
    },
    /// Templates for checks and quotas (listentry, quota, ...): resolved and wired, built by
    /// the policy path rather than reports.
    NotForReports,
}

impl InstanceBuilder {
    pub fn compile(
        name: Arc<str>,
        template: &Template,
        manifest: &Manifest,
    ) -> Result<InstanceBuilder, FieldError> {
        let field = |f: String, text: &str| {
            compile(text, manifest).map_err(|error| FieldError { field: f, error })
        };
        let fields = |prefix: &str, m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, text)| Ok((k.clone(), field(format!("{prefix}.{k}"), text)?)))
                .collect::<Result<Vec<_>, FieldError>>()
        };
        let optional = |f: &str, text: &Option<String>| match text.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => field(f.to_owned(), t).map(Some),
        };
        let kind = match template {
            Template::Metric(m) => BuilderKind::Metric {
                value: field("value".to_owned(), &m.value)?,
                dimensions: fields("dimensions", &m.dimensions)?,
            },
            Template::LogEntry(l) => BuilderKind::LogEntry {
                variables: fields("variables", &l.variables)?,
                timestamp: optional("timestamp", &l.timestamp)?,
                severity: optional("severity", &l.severity)?,
            },
            _ => BuilderKind::NotForReports,
        };
        Ok(InstanceBuilder {
            name,
            template: template.name(),
            kind,
        })
    }

    /// Builds the instance for `bag`; `None` for templates that reports do not build. A
    /// field whose attributes are missing fails the whole instance, as in Mixer: configs say
    /// `| "unknown"` where a value may be absent.
    pub fn build(&self, bag: &dyn Bag) -> Result<Option<Instance>, BuildError> {
        let err = |field: &str, error| BuildError {
            instance: self.name.clone(),
            field: field.to_owned(),
            error,
        };
        let eval_all = |prefix: &str, fields: &[(String, Program)]| {
            let mut out = BTreeMap::new();
            for (k, p) in fields {
                let v = p.eval(bag).map_err(|e| err(&format!("{prefix}.{k}"), e))?;
                out.insert(k.clone(), v);
            }
            Ok(out)
        };
        let body = match &self.kind {
            BuilderKind::Metric { value, dimensions } => InstanceBody::Metric {
                value: value.eval(bag).map_err(|e| err("value", e))?,
                dimensions: eval_all("dimensions", dimensions)?,
            },
            BuilderKind::LogEntry {
                variables,
                timestamp,
                severity,
            } => InstanceBody::LogEntry {
                variables: eval_all("variables", variables)?,
                timestamp: match timestamp {
                    Some(p) => match p.eval(bag).map_err(|e| err("timestamp", e))? {
                        Value::Timestamp(t) => t,
                        other => {
                            return Err(err(
                                "timestamp",
                                EvalError::Invalid(format!(
                                    "{} is not a TIMESTAMP",
                                    other.value_type()
                                )),
                            ));
                        }
                    },
                    None => SystemTime::now(),
                },
                severity: match severity {
                    Some(p) => p.eval(bag).map_err(|e| err("severity", e))?.to_string(),
                    None => String::new(),
                },
            },
            BuilderKind::NotForReports => return Ok(None),
        };
        Ok(Some(Instance {
            name: self.name.clone(),
            body,
        }))
    }
}
