//! kubectl's `-o jsonpath=TEMPLATE`, the part walkthroughs use: text with `{...}`
//! expressions made of `.field`, `['field']`, `[N]` (negative from the end), `[*]`,
//! `[?(@.path=="value")]` (also `!=`, and `@.path` alone for "has it"), and string
//! literals such as `{"\n"}`. Several results print separated by spaces, as kubectl does.

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("error parsing jsonpath {template}: {reason}")]
pub struct JsonPathError {
    pub template: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    All,
    Filter {
        path: Vec<Step>,
        /// None: the field only has to exist.
        test: Option<(bool, String)>,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Path(Vec<Step>),
}

fn parse_path(expr: &str) -> Result<Vec<Step>, String> {
    let b = expr.as_bytes();
    let mut i = 0;
    let mut steps = Vec::new();
    // A leading `$` or `@` names the root.
    if i < b.len() && (b[i] == b'$' || b[i] == b'@') {
        i += 1;
    }
    while i < b.len() {
        match b[i] {
            b'.' => {
                i += 1;
                let start = i;
                while i < b.len() && b[i] != b'.' && b[i] != b'[' {
                    i += 1;
                }
                if start == i {
                    return Err(format!("empty field name at {start}"));
                }
                steps.push(Step::Field(expr[start..i].to_owned()));
            }
            b'[' => {
                let close = matching_bracket(expr, i).ok_or("unclosed [")?;
                let inner = expr[i + 1..close].trim();
                i = close + 1;
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(filter) =
                    inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')'))
                {
                    steps.push(parse_filter(filter.trim())?);
                } else if let Some(name) = quoted(inner) {
                    steps.push(Step::Field(name));
                } else {
                    let n: i64 = inner
                        .parse()
                        .map_err(|_| format!("unsupported subscript [{inner}]"))?;
                    steps.push(Step::Index(n));
                }
            }
            c => return Err(format!("unexpected '{}' at {i}", c as char)),
        }
    }
    Ok(steps)
}

fn matching_bracket(s: &str, open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s[open..].char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[') => depth += 1,
            (None, ']') => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + i);
                }
            }
            _ => {}
        }
    }
    None
}

fn quoted(s: &str) -> Option<String> {
    let s = s.trim();
    ['"', '\''].iter().find_map(|q| {
        s.strip_prefix(*q)
            .and_then(|r| r.strip_suffix(*q))
            .map(str::to_owned)
    })
}

fn parse_filter(f: &str) -> Result<Step, String> {
    for (op, eq) in [("==", true), ("!=", false)] {
        if let Some((lhs, rhs)) = f.split_once(op) {
            let value = quoted(rhs).unwrap_or_else(|| rhs.trim().to_owned());
            return Ok(Step::Filter {
                path: parse_path(lhs.trim())?,
                test: Some((eq, value)),
            });
        }
    }
    Ok(Step::Filter {
        path: parse_path(f)?,
        test: None,
    })
}

fn parse(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let close = rest[open..]
            .find('}')
            .map(|c| open + c)
            .ok_or("unclosed {")?;
        let expr = rest[open + 1..close].trim();
        if let Some(text) = quoted(expr) {
            parts.push(Part::Text(text.replace("\\n", "\n").replace("\\t", "\t")));
        } else if expr.starts_with("range") || expr == "end" {
            return Err("{range} is not supported; use [*]".into());
        } else {
            parts.push(Part::Path(parse_path(expr)?));
        }
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn apply<'a>(steps: &[Step], v: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![v];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f)),
                Step::Index(n) => {
                    if let Some(a) = v.as_array() {
                        let len = a.len() as i64;
                        let i = if *n < 0 { len + n } else { *n };
                        next.extend(usize::try_from(i).ok().and_then(|i| a.get(i)));
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter { path, test } => {
                    if let Some(a) = v.as_array() {
                        next.extend(a.iter().filter(|item| {
                            let found = apply(path, item);
                            match test {
                                None => !found.is_empty(),
                                Some((eq, want)) => {
                                    let hit = found.iter().any(|f| scalar(f) == *want);
                                    hit == *eq
                                }
                            }
                        }));
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Renders `template` against `value`.
pub fn render(template: &str, value: &Value) -> Result<String, JsonPathError> {
    let err = |reason: String| JsonPathError {
        template: template.to_owned(),
        reason,
    };
    let parts = parse(template).map_err(err)?;
    let mut out = String::new();
    for p in parts {
        match p {
            Part::Text(t) => out.push_str(&t),
            Part::Path(steps) => {
                let found: Vec<String> = apply(&steps, value).into_iter().map(scalar).collect();
                out.push_str(&found.join(" "));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_walkthroughs_lookups() {
        let svc = json!({"spec": {"ports": [
            {"name": "http2", "port": 80, "nodePort": 31380},
            {"name": "https", "port": 443, "nodePort": 31390},
        ]}});
        assert_eq!(
            render(r#"{.spec.ports[?(@.name=="http2")].nodePort}"#, &svc).unwrap(),
            "31380"
        );
        assert_eq!(
            render("{.spec.ports[?(@.name=='https')].nodePort}", &svc).unwrap(),
            "31390"
        );
        let list = json!({"kind": "List", "items": [
            {"metadata": {"name": "prometheus-abc"}},
            {"metadata": {"name": "prometheus-def"}},
        ]});
        assert_eq!(
            render("{.items[0].metadata.name}", &list).unwrap(),
            "prometheus-abc"
        );
        assert_eq!(
            render("{.items[-1].metadata.name}", &list).unwrap(),
            "prometheus-def"
        );
        assert_eq!(
            render(r#"{.items[*].metadata.name}{"\n"}"#, &list).unwrap(),
            "prometheus-abc prometheus-def\n"
        );
        assert_eq!(
            render("name: {.items[1]['metadata'].name}!", &list).unwrap(),
            "name: prometheus-def!"
        );
        assert_eq!(
            render(r#"{.spec.ports[?(@.name!="http2")].port}"#, &svc).unwrap(),
            "443"
        );
        assert_eq!(
            render("{.spec.ports[?(@.nodePort)].name}", &svc).unwrap(),
            "http2 https"
        );
        assert_eq!(render("{.missing.field}", &svc).unwrap(), "");
    }

    #[test]
    fn bad_templates_say_why() {
        let v = json!({});
        assert!(
            render("{.a", &v)
                .unwrap_err()
                .to_string()
                .contains("unclosed {")
        );
        assert!(
            render("{.a[}", &v)
                .unwrap_err()
                .to_string()
                .contains("unclosed [")
        );
        assert!(
            render("{range .items[*]}{end}", &v)
                .unwrap_err()
                .to_string()
                .contains("range")
        );
    }
}
