//! Field paths inside a document (`spec.http[0].route[1].weight`), the one format every
//! diagnostic uses, and the key normalisation that lets a path written with the canonical
//! (lowerCamelCase) field names find the line of a field the user spelled in snake_case.

use std::fmt;

/// One step into a document: a mapping key or a sequence index.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// A path from the document root to a field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct FieldPath {
    segments: Vec<Segment>,
}

impl FieldPath {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn push_key(&mut self, key: impl Into<String>) {
        self.segments.push(Segment::Key(key.into()));
    }

    pub fn push_index(&mut self, index: usize) {
        self.segments.push(Segment::Index(index));
    }

    pub fn pop(&mut self) {
        self.segments.pop();
    }

    /// A new path one key deeper.
    pub fn key(&self, key: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.push_key(key);
        p
    }

    /// A new path one index deeper.
    pub fn index(&self, index: usize) -> Self {
        let mut p = self.clone();
        p.push_index(index);
        p
    }

    /// The parent path, or `None` at the root.
    pub fn parent(&self) -> Option<Self> {
        if self.segments.is_empty() {
            return None;
        }
        let mut p = self.clone();
        p.pop();
        Some(p)
    }

    /// Parses the display form back (`a.b[2].c`); keys containing `.` or `[` are not
    /// representable, which is fine for the lookups this is used for.
    pub fn parse(text: &str) -> Self {
        let mut path = Self::root();
        for part in text.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                path.push_key(key);
            }
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    path.push_index(i);
                }
                rest = &rest[close + 1..];
            }
        }
        path
    }

    /// The same path with every key in lowerCamelCase: the lookup key of the position index.
    pub(crate) fn normalized(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&lower_camel(k));
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.segments {
            match seg {
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// `snake_case` -> `snakeCase`; already camel keys pass through unchanged.
pub(crate) fn lower_camel(key: &str) -> String {
    if !key.contains('_') {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' {
            upper = !out.is_empty();
            continue;
        }
        if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let mut p = FieldPath::root();
        p.push_key("spec");
        p.push_key("http");
        p.push_index(0);
        p.push_key("route");
        p.push_index(12);
        p.push_key("weight");
        assert_eq!(p.to_string(), "spec.http[0].route[12].weight");
        assert_eq!(FieldPath::parse("spec.http[0].route[12].weight"), p);
    }

    #[test]
    fn normalizes_snake_case_keys() {
        assert_eq!(lower_camel("instance_name"), "instanceName");
        assert_eq!(
            lower_camel("http1_max_pending_requests"),
            "http1MaxPendingRequests"
        );
        assert_eq!(
            lower_camel("consecutive_5xx_errors"),
            "consecutive5xxErrors"
        );
        assert_eq!(lower_camel("outputAsJson"), "outputAsJson");
        let p = FieldPath::parse("spec.metrics[0].label_names");
        assert_eq!(p.normalized(), "spec.metrics[0].labelNames");
    }
}
