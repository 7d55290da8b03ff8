//! Type checking and evaluation: an expression is checked against a manifest once, compiled
//! to a typed tree (constants folded, regular expressions built), and evaluated many times
//! against attribute bags.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::manifest::Manifest;
use crate::syntax::{BinOp, Column, Expr, SyntaxError, parse};
use crate::value::{Value, ValueType, parse_duration, parse_timestamp};

/// Attributes by name.
pub trait Bag {
    fn get(&self, name: &str) -> Option<&Value>;
}

impl Bag for BTreeMap<String, Value> {
    fn get(&self, name: &str) -> Option<&Value> {
        BTreeMap::get(self, name)
    }
}

impl Bag for std::collections::HashMap<String, Value> {
    fn get(&self, name: &str) -> Option<&Value> {
        std::collections::HashMap::get(self, name)
    }
}

/// Why an expression does not compile: where, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct CompileError {
    pub column: Column,
    pub message: String,
}

impl From<SyntaxError> for CompileError {
    fn from(e: SyntaxError) -> Self {
        CompileError {
            column: e.column,
            message: e.message,
        }
    }
}

/// Why an evaluation has no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// An attribute (or map key) the bag does not have; `a | b` falls back on it.
    #[error("lookup failed: '{0}'")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Ip,
    Timestamp,
    DnsName,
    Email,
    Uri,
    Match,
    StartsWith,
    EndsWith,
    ToLower,
    EmptyStringMap,
    Conditional,
}

#[derive(Clone, Debug)]
enum Node {
    Const(Value),
    Attr(String),
    Index(Box<Node>, Box<Node>),
    Default(Box<Node>, Box<Node>),
    Eq(Box<Node>, Box<Node>, bool),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Add(Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
    Matches(regex::Regex, Box<Node>),
    DynMatches(Box<Node>, Box<Node>),
}

/// A checked, compiled expression.
#[derive(Clone, Debug)]
pub struct Program {
    root: Node,
    result: ValueType,
    text: String,
}

impl Program {
    pub fn result_type(&self) -> ValueType {
        self.result
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn eval(&self, bag: &dyn Bag) -> Result<Value, EvalError> {
        eval(&self.root, bag)
    }

    /// Evaluates a boolean program (a rule's `match`); a missing attribute is false, as in
    /// Mixer.
    pub fn eval_bool(&self, bag: &dyn Bag) -> Result<bool, EvalError> {
        match self.eval(bag) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(EvalError::Invalid(format!(
                "{} is not a BOOL",
                other.value_type()
            ))),
            Err(EvalError::Missing(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Parses, checks and compiles `text` against `manifest`.
pub fn compile(text: &str, manifest: &Manifest) -> Result<Program, CompileError> {
    let expr = parse(text)?;
    let (root, result) = check(&expr, manifest)?;
    Ok(Program {
        root,
        result,
        text: text.to_owned(),
    })
}

fn err<T>(column: Column, message: impl Into<String>) -> Result<T, CompileError> {
    Err(CompileError {
        column,
        message: message.into(),
    })
}

fn func(name: &str) -> Option<Func> {
    Some(match name {
        "ip" => Func::Ip,
        "timestamp" => Func::Timestamp,
        "dnsName" => Func::DnsName,
        "email" => Func::Email,
        "uri" => Func::Uri,
        "match" => Func::Match,
        "startsWith" => Func::StartsWith,
        "endsWith" => Func::EndsWith,
        "toLower" => Func::ToLower,
        "emptyStringMap" => Func::EmptyStringMap,
        "conditional" | "conditionalString" => Func::Conditional,
        _ => return None,
    })
}

fn check(e: &Expr, m: &Manifest) -> Result<(Node, ValueType), CompileError> {
    use ValueType as T;
    Ok(match e {
        // A quoted string that reads as a duration is a duration ("0ms", "1.5s").
        Expr::Str(s, _) => match parse_duration(s) {
            Some(d) if s != "0" => (Node::Const(Value::Duration(d)), T::Duration),
            _ => (Node::Const(Value::String(s.clone())), T::String),
        },
        Expr::Int(i, _) => (Node::Const(Value::Int64(*i)), T::Int64),
        Expr::Float(f, _) => (Node::Const(Value::Double(*f)), T::Double),
        Expr::Bool(b, _) => (Node::Const(Value::Bool(*b)), T::Bool),
        Expr::Attr(name, col) => match m.get(name) {
            Some(t) => (Node::Attr(name.clone()), t),
            None => return err(*col, format!("unknown attribute {name}")),
        },
        Expr::Index(base, key, col) => {
            let (b, bt) = check(base, m)?;
            let (k, kt) = check(key, m)?;
            if bt != T::StringMap {
                return err(
                    *col,
                    format!("only STRING_MAP values can be indexed, not {bt}"),
                );
            }
            if kt != T::String {
                return err(
                    key.column(),
                    format!("a map key must be a STRING, not {kt}"),
                );
            }
            (Node::Index(Box::new(b), Box::new(k)), T::String)
        }
        Expr::Not(inner, col) => {
            let (n, t) = check(inner, m)?;
            if t != T::Bool {
                return err(*col, format!("'!' needs a BOOL, not {t}"));
            }
            (Node::Not(Box::new(n)), T::Bool)
        }
        Expr::Binary(op, l, r, col) => {
            let (ln, lt) = check(l, m)?;
            let (rn, rt) = check(r, m)?;
            let (l, r) = (Box::new(ln), Box::new(rn));
            match op {
                BinOp::Or | BinOp::And => {
                    if lt != T::Bool || rt != T::Bool {
                        return err(
                            *col,
                            format!("'{op}' needs BOOL operands, not {lt} and {rt}"),
                        );
                    }
                    (
                        if *op == BinOp::Or {
                            Node::Or(l, r)
                        } else {
                            Node::And(l, r)
                        },
                        T::Bool,
                    )
                }
                BinOp::Eq | BinOp::Ne => {
                    if lt != rt {
                        return err(
                            *col,
                            format!("'{op}' compares values of one type, not {lt} and {rt}"),
                        );
                    }
                    (Node::Eq(l, r, *op == BinOp::Ne), T::Bool)
                }
                BinOp::Default => {
                    if lt != rt {
                        return err(
                            *col,
                            format!("'|' needs both sides of one type, not {lt} and {rt}"),
                        );
                    }
                    (Node::Default(l, r), lt)
                }
                BinOp::Add => {
                    if lt != rt || !matches!(lt, T::Int64 | T::Double | T::String) {
                        return err(
                            *col,
                            format!(
                                "'+' adds INT64, DOUBLE or STRING values of one type, not {lt} and {rt}"
                            ),
                        );
                    }
                    (Node::Add(l, r), lt)
                }
            }
        }
        Expr::Call(name, args, col) => {
            if name == "matches" {
                if args.len() != 2 {
                    return err(*col, "matches takes one argument: \"regex\".matches(value)");
                }
                let (recv, rt) = check(&args[0], m)?;
                let (val, vt) = check(&args[1], m)?;
                if rt != T::String || vt != T::String {
                    return err(
                        *col,
                        format!("matches needs STRING regex and value, not {rt} and {vt}"),
                    );
                }
                return Ok(match recv {
                    Node::Const(Value::String(re)) => match regex::Regex::new(&re) {
                        Ok(r) => (Node::Matches(r, Box::new(val)), T::Bool),
                        Err(e) => {
                            return err(
                                args[0].column(),
                                format!(
                                    "invalid regular expression: {}",
                                    e.to_string().lines().last().unwrap_or("")
                                ),
                            );
                        }
                    },
                    recv => (Node::DynMatches(Box::new(recv), Box::new(val)), T::Bool),
                });
            }
            let Some(f) = func(name) else {
                return err(*col, format!("unknown function {name}"));
            };
            let mut nodes = Vec::with_capacity(args.len());
            let mut types = Vec::with_capacity(args.len());
            for a in args {
                let (n, t) = check(a, m)?;
                nodes.push(n);
                types.push(t);
            }
            let want: Vec<T> = match f {
                Func::Ip
                | Func::Timestamp
                | Func::DnsName
                | Func::Email
                | Func::Uri
                | Func::ToLower => vec![T::String],
                Func::Match | Func::StartsWith | Func::EndsWith => vec![T::String, T::String],
                Func::EmptyStringMap => vec![],
                Func::Conditional => {
                    if types.len() != 3 {
                        return err(
                            *col,
                            format!("{name} takes 3 arguments, not {}", types.len()),
                        );
                    }
                    if types[1] != types[2] {
                        return err(
                            *col,
                            format!(
                                "{name}'s branches must have one type, not {} and {}",
                                types[1], types[2]
                            ),
                        );
                    }
                    if name == "conditionalString" && types[1] != T::String {
                        return err(
                            *col,
                            format!(
                                "conditionalString's branches must be STRING, not {}",
                                types[1]
                            ),
                        );
                    }
                    vec![T::Bool, types[1], types[1]]
                }
            };
            if types.len() != want.len() {
                return err(
                    *col,
                    format!(
                        "{name} takes {} argument(s), not {}",
                        want.len(),
                        types.len()
                    ),
                );
            }
            for (i, (got, w)) in types.iter().zip(&want).enumerate() {
                if got != w {
                    return err(
                        args[i].column(),
                        format!("argument {} of {name} must be {w}, not {got}", i + 1),
                    );
                }
            }
            let result = match f {
                Func::Ip => T::IpAddress,
                Func::Timestamp => T::Timestamp,
                Func::DnsName => T::DnsName,
                Func::Email => T::EmailAddress,
                Func::Uri => T::Uri,
                Func::Match | Func::StartsWith | Func::EndsWith => T::Bool,
                Func::ToLower => T::String,
                Func::EmptyStringMap => T::StringMap,
                Func::Conditional => want[1],
            };
            // Fold conversions of literals, so a bad literal is a compile error.
            if matches!(
                f,
                Func::Ip | Func::Timestamp | Func::DnsName | Func::Email | Func::Uri
            ) && let Node::Const(Value::String(s)) = &nodes[0]
            {
                let v = convert(f, s).map_err(|message| CompileError {
                    column: args[0].column(),
                    message,
                })?;
                return Ok((Node::Const(v), result));
            }
            (Node::Call(f, nodes), result)
        }
    })
}

fn convert(f: Func, s: &str) -> Result<Value, String> {
    match f {
        Func::Ip => s
            .parse::<IpAddr>()
            .map(Value::IpAddress)
            .map_err(|_| format!("\"{s}\" is not an IP address")),
        Func::Timestamp => parse_timestamp(s).map(Value::Timestamp),
        Func::DnsName => {
            let ok = !s.is_empty()
                && s.len() <= 255
                && s.trim_end_matches('.').split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                });
            if ok {
                Ok(Value::DnsName(s.to_owned()))
            } else {
                Err(format!("\"{s}\" is not a DNS name"))
            }
        }
        Func::Email => match s.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.contains('@') =>
            {
                Ok(Value::EmailAddress(s.to_owned()))
            }
            _ => Err(format!("\"{s}\" is not an email address")),
        },
        Func::Uri => match s.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)) =>
            {
                Ok(Value::Uri(s.to_owned()))
            }
            _ => Err(format!("\"{s}\" is not a URI")),
        },
        _ => Err("not a conversion".to_owned()),
    }
}

fn string(v: Value) -> Result<String, EvalError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(EvalError::Invalid(format!(
            "expected a STRING, got {}",
            other.value_type()
        ))),
    }
}

fn boolean(v: Value) -> Result<bool, EvalError> {
    match v {
        Value::Bool(b) => Ok(b),
        other => Err(EvalError::Invalid(format!(
            "expected a BOOL, got {}",
            other.value_type()
        ))),
    }
}

/// `match(s, "prefix*")`, `match(s, "*suffix")`, or equality.
fn glob(s: &str, pattern: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        s.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        s.ends_with(suffix)
    } else {
        s == pattern
    }
}

fn eval(n: &Node, bag: &dyn Bag) -> Result<Value, EvalError> {
    Ok(match n {
        Node::Const(v) => v.clone(),
        Node::Attr(name) => bag
            .get(name)
            .cloned()
            .ok_or_else(|| EvalError::Missing(name.clone()))?,
        Node::Index(base, key) => {
            let key = string(eval(key, bag)?)?;
            match eval(base, bag)? {
                Value::StringMap(m) => Value::String(
                    m.get(&key)
                        .cloned()
                        .ok_or_else(|| EvalError::Missing(format!("[\"{key}\"]")))?,
                ),
                other => {
                    return Err(EvalError::Invalid(format!(
                        "{} cannot be indexed",
                        other.value_type()
                    )));
                }
            }
        }
        Node::Default(a, b) => match eval(a, bag) {
            Err(EvalError::Missing(_)) => eval(b, bag)?,
            other => other?,
        },
        Node::Eq(a, b, negate) => {
            let (a, b) = (eval(a, bag)?, eval(b, bag)?);
            Value::Bool((a == b) != *negate)
        }
        Node::And(a, b) => Value::Bool(boolean(eval(a, bag)?)? && boolean(eval(b, bag)?)?),
        Node::Or(a, b) => Value::Bool(boolean(eval(a, bag)?)? || boolean(eval(b, bag)?)?),
        Node::Not(a) => Value::Bool(!boolean(eval(a, bag)?)?),
        Node::Add(a, b) => match (eval(a, bag)?, eval(b, bag)?) {
            (Value::Int64(x), Value::Int64(y)) => Value::Int64(x.wrapping_add(y)),
            (Value::Double(x), Value::Double(y)) => Value::Double(x + y),
            (Value::String(x), Value::String(y)) => Value::String(x + &y),
            (x, y) => {
                return Err(EvalError::Invalid(format!(
                    "cannot add {} and {}",
                    x.value_type(),
                    y.value_type()
                )));
            }
        },
        Node::Matches(re, v) => Value::Bool(re.is_match(&string(eval(v, bag)?)?)),
        Node::DynMatches(re, v) => {
            let re = string(eval(re, bag)?)?;
            let re = regex::Regex::new(&re)
                .map_err(|e| EvalError::Invalid(format!("invalid regular expression: {e}")))?;
            Value::Bool(re.is_match(&string(eval(v, bag)?)?))
        }
        Node::Call(f, args) => {
            let mut vals = Vec::with_capacity(args.len());
            if *f == Func::Conditional {
                // Only the chosen branch is evaluated.
                let cond = boolean(eval(&args[0], bag)?)?;
                return eval(if cond { &args[1] } else { &args[2] }, bag);
            }
            for a in args {
                vals.push(eval(a, bag)?);
            }
            match f {
                Func::Ip | Func::Timestamp | Func::DnsName | Func::Email | Func::Uri => {
                    let s = string(vals.remove(0))?;
                    convert(*f, &s).map_err(EvalError::Invalid)?
                }
                Func::Match | Func::StartsWith | Func::EndsWith => {
                    let pattern = string(vals.remove(1))?;
                    let s = string(vals.remove(0))?;
                    Value::Bool(match f {
                        Func::Match => glob(&s, &pattern),
                        Func::StartsWith => s.starts_with(&pattern),
                        _ => s.ends_with(&pattern),
                    })
                }
                Func::ToLower => Value::String(string(vals.remove(0))?.to_lowercase()),
                Func::EmptyStringMap => Value::StringMap(BTreeMap::new()),
                Func::Conditional => return Err(EvalError::Invalid("unreachable".into())),
            }
        }
    })
}
