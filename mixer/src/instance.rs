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
    /// checknothing: the request itself is what is checked.
    CheckNothing,
    /// listentry: the value a list checker looks up.
    ListEntry { value: Value },
    /// quota: the dimensions a quota is counted by.
    Quota { dimensions: BTreeMap<String, Value> },
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
    CheckNothing,
    ListEntry {
        value: Program,
    },
    Quota {
        dimensions: Vec<(String, Program)>,
    },
    /// Templates Keel resolves but does not build (tracespan, kubernetes, authorization).
    NotBuilt,
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
            Template::CheckNothing => BuilderKind::CheckNothing,
            Template::ListEntry(l) => BuilderKind::ListEntry {
                value: field("value".to_owned(), &l.value)?,
            },
            Template::Quota(q) => BuilderKind::Quota {
                dimensions: fields("dimensions", &q.dimensions)?,
            },
            _ => BuilderKind::NotBuilt,
        };
        Ok(InstanceBuilder {
            name,
            template: template.name(),
            kind,
        })
    }

    /// Whether the instance is for checks and quotas (built by [`crate::policy`]), not reports.
    pub fn is_policy(&self) -> bool {
        matches!(
            self.kind,
            BuilderKind::CheckNothing | BuilderKind::ListEntry { .. } | BuilderKind::Quota { .. }
        )
    }

    /// Builds the instance for `bag`; `None` for templates Keel does not build. A
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
            BuilderKind::CheckNothing => InstanceBody::CheckNothing,
            BuilderKind::ListEntry { value } => InstanceBody::ListEntry {
                value: value.eval(bag).map_err(|e| err("value", e))?,
            },
            BuilderKind::Quota { dimensions } => InstanceBody::Quota {
                dimensions: eval_all("dimensions", dimensions)?,
            },
            BuilderKind::NotBuilt => return Ok(None),
        };
        Ok(Some(Instance {
            name: self.name.clone(),
            body,
        }))
    }
}
