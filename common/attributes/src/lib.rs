//! keel-attributes: Istio 1.0's attributes and the Mixer expression language.
//!
//! Attributes are typed values by name (`request.path: STRING`, `response.duration:
//! DURATION`, `source.labels: STRING_MAP`); the [`Manifest`] says which exist and their types.
//! Expressions (`source.labels["app"] | source.service | "unknown"`, `match(request.path,
//! "/api*")`) are parsed ([`syntax`]), type-checked against a manifest and compiled once
//! ([`compile`]), then evaluated against any number of attribute bags. `a | b` takes the
//! first of a and b that is defined; a quoted string that reads as a duration is a duration.

pub mod compile;
pub mod manifest;
pub mod syntax;
pub mod value;

pub use compile::{Bag, CompileError, EvalError, Program, compile};
pub use manifest::Manifest;
pub use value::{Value, ValueType};
