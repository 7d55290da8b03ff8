//! The resolved configuration: rules with compiled `match`es, actions pointing at handlers,
//! instances compiled. Built whole from a config snapshot; a new snapshot builds a new plan,
//! so config changes apply without a restart and a report sees one plan or the other.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use keel_attributes::{Bag, Manifest, Program, Value, compile};
use keel_config::mixer::{Adapter, reference_candidates};
use keel_config::{Resource, Spec};

use crate::instance::{BuildError, Instance, InstanceBuilder};

/// Something in the config that the plan could not use, and what was left out because of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The resource at fault, `doubleprom.rule.istio-system`.
    pub resource: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.resource, self.message)
    }
}

/// A configured handler: its full name and adapter params.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerConfig {
    pub name: Arc<str>,
    pub adapter: Adapter,
}

#[derive(Debug)]
struct CompiledRule {
    name: Arc<str>,
    namespace: String,
    matcher: Option<Program>,
    actions: Vec<CompiledAction>,
}

#[derive(Debug)]
struct CompiledAction {
    handler: usize,
    instances: Vec<Arc<InstanceBuilder>>,
}

/// What one report produced for one handler.
#[derive(Clone, Debug, PartialEq)]
pub struct Dispatch {
    /// Index into [`Plan::handlers`].
    pub handler: usize,
    pub instances: Vec<Instance>,
}

/// The outcome of running a bag through the plan.
#[derive(Debug, Default)]
pub struct Outcome {
    pub dispatches: Vec<Dispatch>,
    /// Instances that could not be built (a missing attribute without a `|` default, ...).
    pub errors: Vec<BuildError>,
    /// Rules whose `match` failed to evaluate (as opposed to evaluating to false).
    pub match_errors: Vec<(Arc<str>, String)>,
}

/// Rules, handlers and instances resolved against each other.
#[derive(Debug, Default)]
pub struct Plan {
    pub handlers: Vec<HandlerConfig>,
    rules: Vec<CompiledRule>,
    /// Everything that was left out, with reasons; empty for a sound config.
    pub problems: Vec<Problem>,
}

impl Plan {
    /// Resolves `resources` (any kinds; non-Mixer ones are ignored). Rules in
    /// `config_namespace` (Istio's `istio-system`) apply to every report; rules elsewhere only
    /// to reports whose `destination.namespace` is theirs.
    pub fn build<'a>(
        resources: impl IntoIterator<Item = &'a Resource>,
        config_namespace: &str,
        manifest: &Manifest,
    ) -> Plan {
        let mut plan = Plan::default();
        let mut handlers: HashMap<String, usize> = HashMap::new();
        let mut instances: HashMap<String, Result<Arc<InstanceBuilder>, String>> = HashMap::new();
        let mut rule_docs = Vec::new();
        let mut compiled = Vec::new();
        for r in resources {
            match &r.spec {
                Spec::Handler(adapter) => {
                    let name: Arc<str> = r.mixer_fqn().into();
                    handlers.insert(name.to_string(), plan.handlers.len());
                    plan.handlers.push(HandlerConfig {
                        name,
                        adapter: adapter.clone(),
                    });
                }
                Spec::Instance(template) => {
                    let name: Arc<str> = r.mixer_fqn().into();
                    let built = InstanceBuilder::compile(name.clone(), template, manifest)
                        .map(Arc::new)
                        .map_err(|e| e.to_string());
                    if let Err(e) = &built {
                        plan.problems.push(Problem {
                            resource: name.to_string(),
                            message: format!("{e}; the instance is not built"),
                        });
                    }
                    instances.insert(name.to_string(), built);
                }
                Spec::Rule(rule) => rule_docs.push((r, rule)),
                _ => {}
            }
        }
        for (r, rule) in rule_docs {
            let name: Arc<str> = r.mixer_fqn().into();
            let mut problem = |message: String| {
                plan.problems.push(Problem {
                    resource: name.to_string(),
                    message,
                })
            };
            let matcher = match rule.r#match.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(text) => match compile(text, manifest) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        problem(format!("match: {e}; the rule is left out"));
                        continue;
                    }
                },
            };
            let mut actions = Vec::new();
            for (a, action) in rule.actions.iter().enumerate() {
                let handler = reference_candidates(&action.handler, "handler", r.namespace())
                    .iter()
                    .find_map(|c| handlers.get(c).copied());
                let Some(handler) = handler else {
                    problem(format!(
                        "actions[{a}].handler: handler \"{}\" is not defined; the action is left out",
                        action.handler
                    ));
                    continue;
                };
                let adapter = &plan.handlers[handler].adapter;
                let mut built = Vec::new();
                for (i, reference) in action.instances.iter().enumerate() {
                    let found = reference_candidates(reference, "instance", r.namespace())
                        .iter()
                        .find_map(|c| instances.get(c));
                    match found {
                        None => problem(format!(
                            "actions[{a}].instances[{i}]: instance \"{reference}\" is not defined; it is left out"
                        )),
                        Some(Err(_)) => problem(format!(
                            "actions[{a}].instances[{i}]: instance \"{reference}\" does not compile; it is left out"
                        )),
                        Some(Ok(b)) if !adapter.supported_templates().contains(&b.template) => {
                            problem(format!(
                                "actions[{a}].instances[{i}]: adapter {} does not take {} instances; it is left out",
                                adapter.name(),
                                b.template
                            ))
                        }
                        Some(Ok(b)) => built.push(b.clone()),
                    }
                }
                if !built.is_empty() {
                    actions.push(CompiledAction {
                        handler,
                        instances: built,
                    });
                }
            }
            compiled.push(CompiledRule {
                name: name.clone(),
                namespace: r.namespace().to_owned(),
                matcher,
                actions,
            });
        }
        // Rules keep config order, so dispatch order is stable across rebuilds.
        plan.rules = rules_into(compiled, config_namespace);
        plan
    }

    /// Runs a report's `bag` through every rule: which handlers get which instances.
    pub fn dispatch(&self, bag: &dyn Bag) -> Outcome {
        self.run(bag, |b| !b.is_policy())
    }

    /// Runs a check's `bag` through every rule: the check instances (checknothing,
    /// listentry) of matching rules, and the quota instances among `quotas` (names as a
    /// QuotaSpec gives them: `requestcount`, or the full `requestcount.quota.istio-system`).
    pub fn dispatch_check(&self, bag: &dyn Bag, quotas: &[&str]) -> Outcome {
        self.run(bag, |b| {
            if b.template == "quota" {
                let short = b.name.split('.').next().unwrap_or("");
                quotas.iter().any(|q| *q == &*b.name || *q == short)
            } else {
                b.is_policy()
            }
        })
    }

    fn run(&self, bag: &dyn Bag, wanted: impl Fn(&InstanceBuilder) -> bool) -> Outcome {
        let mut out = Outcome::default();
        let mut per_handler: BTreeMap<usize, Vec<Instance>> = BTreeMap::new();
        let destination_ns = match bag.get("destination.namespace") {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        };
        for rule in &self.rules {
            if !rule.namespace.is_empty() && Some(rule.namespace.as_str()) != destination_ns {
                continue;
            }
            if let Some(m) = &rule.matcher {
                match m.eval_bool(bag) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        out.match_errors.push((rule.name.clone(), e.to_string()));
                        continue;
                    }
                }
            }
            for action in &rule.actions {
                for b in action.instances.iter().filter(|b| wanted(b)) {
                    match b.build(bag) {
                        Ok(Some(i)) => per_handler.entry(action.handler).or_default().push(i),
                        Ok(None) => {}
                        Err(e) => out.errors.push(e),
                    }
                }
            }
        }
        out.dispatches = per_handler
            .into_iter()
            .map(|(handler, instances)| Dispatch { handler, instances })
            .collect();
        out
    }

    /// The number of rules in effect.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Rules of the config namespace are global: their scope is recorded as empty.
fn rules_into(mut rules: Vec<CompiledRule>, config_namespace: &str) -> Vec<CompiledRule> {
    for r in &mut rules {
        if r.namespace == config_namespace {
            r.namespace.clear();
        }
    }
    rules
}
