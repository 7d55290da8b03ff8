//! Diagnostics: what is wrong with a piece of configuration, and exactly where.
//!
//! Every problem Keel reports about configuration (a YAML syntax error, an unknown field, a
//! weight sum, a subset nobody defines) is a [`Diagnostic`] naming the file, the document,
//! the line and column, the field path and the reason, in the one format compilers use:
//!
//! ```text
//! reviews.yaml:14:9: error: document 2 (VirtualService default/reviews): spec.http[0].route: weights add up to 90, they must add up to 100
//! ```

use std::fmt;
use std::sync::Arc;

use crate::path::FieldPath;
use crate::yaml::{Pos, YamlDocument};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// The document is refused.
    Error,
    /// Accepted, but probably not what the author meant (a reference that resolves to nothing).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// Where a document came from: a file name (or `<stdin>`), and its 1-based index there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: Option<Arc<str>>,
    pub document: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Option<Arc<str>>,
    /// 1-based index of the document in its file.
    pub document: Option<usize>,
    /// `Kind namespace/name` when known.
    pub resource: Option<String>,
    pub pos: Option<Pos>,
    /// The field the problem is about; the root path for whole-document problems.
    pub path: FieldPath,
    pub message: String,
}

impl Diagnostic {
    pub fn error(path: FieldPath, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, path, message)
    }

    pub fn warning(path: FieldPath, message: impl Into<String>) -> Self {
        Self::new(Severity::Warning, path, message)
    }

    fn new(severity: Severity, path: FieldPath, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            file: None,
            document: None,
            resource: None,
            pos: None,
            path,
            message: message.into(),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Fills in the source location from the document the path points into.
    pub(crate) fn locate(mut self, origin: &Origin, doc: Option<&YamlDocument>) -> Self {
        self.file = origin.file.clone();
        self.document = origin.document;
        if self.pos.is_none() {
            self.pos = doc.map(|d| d.position_of(&self.path));
        }
        self
    }

    pub(crate) fn with_resource(mut self, resource: Option<&str>) -> Self {
        if self.resource.is_none() {
            self.resource = resource.map(str::to_owned);
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<input>");
        match self.pos {
            Some(p) => write!(f, "{file}:{}:{}: ", p.line, p.column)?,
            None => write!(f, "{file}: ")?,
        }
        write!(f, "{}: ", self.severity)?;
        match (self.document, &self.resource) {
            (Some(n), Some(r)) => write!(f, "document {n} ({r}): ")?,
            (Some(n), None) => write!(f, "document {n}: ")?,
            (None, Some(r)) => write!(f, "{r}: ")?,
            (None, None) => {}
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Collects diagnostics while walking a typed spec; paths are relative to the document root.
#[derive(Debug, Default)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn error(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.items.push(Diagnostic::error(path.clone(), message));
    }

    pub fn warning(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.items.push(Diagnostic::warning(path.clone(), message));
    }

    pub fn push(&mut self, d: Diagnostic) {
        self.items.push(d);
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(Diagnostic::is_error)
    }

    pub fn into_vec(self) -> Vec<Diagnostic> {
        self.items
    }

    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter()
    }
}
