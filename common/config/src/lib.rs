//! keel-config: Istio's configuration, typed.
//!
//! Text comes in (YAML or JSON, many documents per file), [`load`] turns each document into a
//! typed [`Resource`] after checking it with Istio's validation rules, and every problem comes
//! back as a [`Diagnostic`] naming the file, document, line, field path and reason. Nothing
//! here does network I/O: galley, pilot and mixer build on these types, and the stores in
//! [`store`] hold what was accepted.
//!
//! Data flow: `yaml` (text -> value tree + positions) -> `load` (value -> typed spec via
//! serde, unknown fields reported) -> `validate` (per kind) -> cross-reference warnings.

pub mod authentication;
pub mod diagnostic;
pub mod duration;
pub mod kind;
pub mod load;
pub mod mixer;
pub mod networking;
pub mod path;
pub mod resource;
pub mod selector;
pub mod store;
pub mod validation;
pub mod yaml;

pub use diagnostic::{Diagnostic, Diagnostics, Origin, Severity};
pub use kind::Kind;
pub use load::{LoadReport, Loader, load_str};
pub use path::FieldPath;
pub use resource::{Resource, ResourceKey, Spec};
pub use selector::LabelSelector;
