//! The expression language's syntax: Go's expression syntax, as Mixer used it.
//!
//! ```text
//! or      := and  ("||" and)*
//! and     := eq   ("&&" eq)*
//! eq      := add  (("==" | "!=") add)*
//! add     := unary (("|" | "+") unary)*
//! unary   := "!" unary | postfix
//! postfix := primary ("[" or "]" | "." IDENT "(" args ")")*
//! primary := STRING | INT | FLOAT | true | false | IDENT ("." IDENT)* ["(" args ")"] | "(" or ")"
//! ```
//!
//! A dotted name is an attribute (`source.labels`), unless its last part is a method of the
//! language (`source.name.startsWith("x")` calls `startsWith` on `source.name`).

use std::fmt;

/// Where in the text something is: a 1-based column (expressions are one line).
pub type Column = usize;

#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Str(String, Column),
    Int(i64, Column),
    Float(f64, Column),
    Bool(bool, Column),
    Attr(String, Column),
    /// `f(args)`, or `recv.f(args)` with `recv` first in `args`.
    Call(String, Vec<Expr>, Column),
    Index(Box<Expr>, Box<Expr>, Column),
    Binary(BinOp, Box<Expr>, Box<Expr>, Column),
    Not(Box<Expr>, Column),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    /// `a | b`: the first of a and b that is defined.
    Default,
    Add,
}

impl fmt::Display for BinOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinOp::Or => "||",
            BinOp::And => "&&",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Default => "|",
            BinOp::Add => "+",
        })
    }
}

impl Expr {
    pub fn column(&self) -> Column {
        match self {
            Expr::Str(_, c)
            | Expr::Int(_, c)
            | Expr::Float(_, c)
            | Expr::Bool(_, c)
            | Expr::Attr(_, c)
            | Expr::Call(_, _, c)
            | Expr::Index(_, _, c)
            | Expr::Binary(_, _, _, c)
            | Expr::Not(_, c) => *c,
        }
    }
}

/// A syntax error at a column.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct SyntaxError {
    pub column: Column,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Str(String),
    Int(i64),
    Float(f64),
    Ident(String),
    Op(&'static str),
    End,
}

/// The methods a dotted name may end in.
pub const METHODS: &[&str] = &["matches", "startsWith", "endsWith"];

fn lex(text: &str) -> Result<Vec<(Tok, Column)>, SyntaxError> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let col = |i: usize| {
        text[..chars.get(i).map_or(text.len(), |c| c.0)]
            .chars()
            .count()
            + 1
    };
    while i < chars.len() {
        let c = chars[i].1;
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '"' || c == '`' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&(_, ch)) = chars.get(i) else {
                    return Err(SyntaxError {
                        column: col(start),
                        message: "unterminated string".into(),
                    });
                };
                i += 1;
                if ch == quote {
                    break;
                }
                if ch == '\\' && quote == '"' {
                    let Some(&(_, e)) = chars.get(i) else {
                        return Err(SyntaxError {
                            column: col(start),
                            message: "unterminated string".into(),
                        });
                    };
                    i += 1;
                    s.push(match e {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        '\\' => '\\',
                        '"' => '"',
                        other => {
                            return Err(SyntaxError {
                                column: col(i - 2),
                                message: format!("unknown escape \\{other}"),
                            });
                        }
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push((Tok::Str(s), col(start)));
            continue;
        }
        if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].1.is_ascii_digit() || chars[i].1 == '.') {
                i += 1;
            }
            let lit: String = chars[start..i].iter().map(|c| c.1).collect();
            let tok = if lit.contains('.') {
                Tok::Float(lit.parse().map_err(|_| SyntaxError {
                    column: col(start),
                    message: format!("bad number {lit}"),
                })?)
            } else {
                Tok::Int(lit.parse().map_err(|_| SyntaxError {
                    column: col(start),
                    message: format!("bad number {lit}"),
                })?)
            };
            out.push((tok, col(start)));
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == '$' {
            while i < chars.len()
                && (chars[i].1.is_alphanumeric() || chars[i].1 == '_' || chars[i].1 == '$')
            {
                i += 1;
            }
            out.push((
                Tok::Ident(chars[start..i].iter().map(|c| c.1).collect()),
                col(start),
            ));
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())]
            .iter()
            .map(|c| c.1)
            .collect();
        let op: &'static str = match two.as_str() {
            "||" => "||",
            "&&" => "&&",
            "==" => "==",
            "!=" => "!=",
            _ => match c {
                '|' => "|",
                '+' => "+",
                '!' => "!",
                '(' => "(",
                ')' => ")",
                '[' => "[",
                ']' => "]",
                '.' => ".",
                ',' => ",",
                '-' => "-",
                _ => {
                    return Err(SyntaxError {
                        column: col(start),
                        message: format!("unexpected character '{c}'"),
                    });
                }
            },
        };
        i += op.len();
        out.push((Tok::Op(op), col(start)));
    }
    out.push((Tok::End, text.chars().count() + 1));
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, Column)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn col(&self) -> Column {
        self.toks[self.pos.min(self.toks.len() - 1)].1
    }

    fn bump(&mut self) -> (Tok, Column) {
        let t = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        self.pos += 1;
        t
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            column: self.col(),
            message: message.into(),
        })
    }

    fn expect(&mut self, op: &'static str) -> Result<(), SyntaxError> {
        if self.peek() == &Tok::Op(op) {
            self.bump();
            Ok(())
        } else {
            let found = describe(self.peek());
            self.err(format!("expected '{op}', found {found}"))
        }
    }

    fn binary(
        &mut self,
        ops: &[(&'static str, BinOp)],
        next: fn(&mut Parser) -> Result<Expr, SyntaxError>,
    ) -> Result<Expr, SyntaxError> {
        let mut left = next(self)?;
        while let Some((_, op)) = ops
            .iter()
            .find(|(s, _)| matches!(self.peek(), Tok::Op(o) if o == s))
        {
            let col = self.col();
            self.bump();
            let right = next(self)?;
            left = Expr::Binary(*op, Box::new(left), Box::new(right), col);
        }
        Ok(left)
    }

    fn or(&mut self) -> Result<Expr, SyntaxError> {
        self.binary(&[("||", BinOp::Or)], Parser::and)
    }

    fn and(&mut self) -> Result<Expr, SyntaxError> {
        self.binary(&[("&&", BinOp::And)], Parser::eq)
    }

    fn eq(&mut self) -> Result<Expr, SyntaxError> {
        self.binary(&[("==", BinOp::Eq), ("!=", BinOp::Ne)], Parser::add)
    }

    fn add(&mut self) -> Result<Expr, SyntaxError> {
        self.binary(&[("|", BinOp::Default), ("+", BinOp::Add)], Parser::unary)
    }

    fn unary(&mut self) -> Result<Expr, SyntaxError> {
        if self.peek() == &Tok::Op("!") {
            let col = self.col();
            self.bump();
            return Ok(Expr::Not(Box::new(self.unary()?), col));
        }
        if self.peek() == &Tok::Op("-") {
            let col = self.col();
            self.bump();
            return match self.bump() {
                (Tok::Int(i), _) => Ok(Expr::Int(-i, col)),
                (Tok::Float(f), _) => Ok(Expr::Float(-f, col)),
                _ => Err(SyntaxError {
                    column: col,
                    message: "'-' must precede a number".into(),
                }),
            };
        }
        self.postfix()
    }

    fn args(&mut self) -> Result<Vec<Expr>, SyntaxError> {
        self.expect("(")?;
        let mut args = Vec::new();
        if self.peek() != &Tok::Op(")") {
            loop {
                args.push(self.or()?);
                if self.peek() == &Tok::Op(",") {
                    self.bump();
                } else {
                    break;
                }
            }
        }
        self.expect(")")?;
        Ok(args)
    }

    fn postfix(&mut self) -> Result<Expr, SyntaxError> {
        let mut e = self.primary()?;
        loop {
            match self.peek() {
                Tok::Op("[") => {
                    let col = self.col();
                    self.bump();
                    let key = self.or()?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(key), col);
                }
                Tok::Op(".") => {
                    let col = self.col();
                    self.bump();
                    let (Tok::Ident(m), _) = self.bump() else {
                        return Err(SyntaxError {
                            column: col,
                            message: "expected a method name after '.'".into(),
                        });
                    };
                    let mut args = vec![e];
                    args.extend(self.args()?);
                    e = Expr::Call(m, args, col);
                }
                _ => return Ok(e),
            }
        }
    }

    fn primary(&mut self) -> Result<Expr, SyntaxError> {
        let (tok, col) = self.bump();
        match tok {
            Tok::Str(s) => Ok(Expr::Str(s, col)),
            Tok::Int(i) => Ok(Expr::Int(i, col)),
            Tok::Float(f) => Ok(Expr::Float(f, col)),
            Tok::Ident(first) => {
                if first == "true" || first == "false" {
                    return Ok(Expr::Bool(first == "true", col));
                }
                let mut parts = vec![first];
                while self.peek() == &Tok::Op(".") {
                    // `a.b.startsWith(...)`: stop before a method so postfix handles it.
                    let next = self.toks.get(self.pos + 1).map(|t| &t.0);
                    let after = self.toks.get(self.pos + 2).map(|t| &t.0);
                    if let Some(Tok::Ident(m)) = next
                        && METHODS.contains(&m.as_str())
                        && after == Some(&Tok::Op("("))
                    {
                        break;
                    }
                    self.bump();
                    match self.bump() {
                        (Tok::Ident(p), _) => parts.push(p),
                        (t, c) => {
                            return Err(SyntaxError {
                                column: c,
                                message: format!(
                                    "expected a name after '.', found {}",
                                    describe(&t)
                                ),
                            });
                        }
                    }
                }
                if self.peek() == &Tok::Op("(") {
                    if parts.len() > 1 {
                        return self.err(format!("'{}' is not a function", parts.join(".")));
                    }
                    let args = self.args()?;
                    return Ok(Expr::Call(parts.remove(0), args, col));
                }
                Ok(Expr::Attr(parts.join("."), col))
            }
            Tok::Op("(") => {
                let e = self.or()?;
                self.expect(")")?;
                Ok(e)
            }
            t => Err(SyntaxError {
                column: col,
                message: format!("unexpected {}", describe(&t)),
            }),
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::Int(i) => format!("number {i}"),
        Tok::Float(f) => format!("number {f}"),
        Tok::Ident(i) => format!("'{i}'"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::End => "the end of the expression".to_owned(),
    }
}

/// Parses an expression.
pub fn parse(text: &str) -> Result<Expr, SyntaxError> {
    let toks = lex(text)?;
    let mut p = Parser { toks, pos: 0 };
    if p.peek() == &Tok::End {
        return p.err("empty expression");
    }
    let e = p.or()?;
    if p.peek() != &Tok::End {
        let found = describe(p.peek());
        return p.err(format!("unexpected {found} after the expression"));
    }
    Ok(e)
}
