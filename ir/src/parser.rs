//! Parser of the text form (see `printer`). Errors carry `line:column` and
//! say what was expected; no input makes it panic (it is fuzzed).
//!
//! Values may be used before the line that defines them, so the text can
//! express any graph, including broken ones (cycles, wrong types) that the
//! verifier then reports: parsing checks syntax and names, the verifier
//! checks meaning.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::dim::{Dim, Shape, TensorType};
use crate::dtype::DType;
use crate::graph::{Graph, NodeId, Value};
use crate::lexer::{lex, Local, Spanned, Tok};
use crate::ops::{Attr, Op};

/// A syntax or name error at a position in the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// Nesting limit for lists and parenthesised expressions.
const MAX_DEPTH: usize = 64;

/// Words that are never symbols inside dims and attribute values.
const RESERVED: [&str; 5] = ["true", "false", "nan", "inf", "loc"];

/// Whether a symbol name can be written in the text form: an identifier
/// (letters, digits, `_`, `.`, not starting with a digit) that is neither a
/// dtype name nor one of `true false nan inf loc`.
pub fn is_valid_symbol(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && !RESERVED.contains(&s)
        && s.parse::<DType>().is_err()
}

/// A value reference as written, with its position.
#[derive(Clone)]
enum Ref {
    Local(Local),
    Global(String),
}

/// Something as written, with its line and column.
type Located<T> = (T, (usize, usize));

struct OpStmt {
    defs: Vec<(Local, TensorType, (usize, usize))>,
    op: Op,
    args: Vec<(Ref, (usize, usize))>,
    loc: Option<String>,
}

struct Parser {
    toks: Vec<Spanned>,
    pos: usize,
    depth: usize,
}

fn ref_text(r: &Ref) -> String {
    match r {
        Ref::Local(Local::Num(n)) => format!("%{n}"),
        Ref::Local(Local::Named(s)) => format!("%{s}"),
        Ref::Global(s) => format!("@{s}"),
    }
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos].tok
    }

    fn here(&self) -> (usize, usize) {
        let t = &self.toks[self.pos];
        (t.line, t.col)
    }

    fn bump(&mut self) -> Tok {
        let t = self.toks[self.pos].tok.clone();
        if self.pos + 1 < self.toks.len() {
            self.pos += 1;
        }
        t
    }

    fn err_at(&self, at: (usize, usize), message: impl Into<String>) -> ParseError {
        ParseError {
            line: at.0,
            col: at.1,
            message: message.into(),
        }
    }

    fn expected(&self, what: &str) -> ParseError {
        self.err_at(
            self.here(),
            format!("expected {what}, found {}", self.peek().describe()),
        )
    }

    fn is(&self, p: &str) -> bool {
        matches!(self.peek(), Tok::Punct(q) if *q == p)
    }

    fn eat(&mut self, p: &str) -> bool {
        if self.is(p) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, p: &str) -> Result<(), ParseError> {
        if self.eat(p) {
            Ok(())
        } else {
            Err(self.expected(&format!("'{p}'")))
        }
    }

    fn keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        match self.peek() {
            Tok::Ident(s) if s == kw => {
                self.bump();
                Ok(())
            }
            _ => Err(self.expected(&format!("'{kw}'"))),
        }
    }

    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_at(self.here(), format!("nesting deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }

    /// Comma-separated items up to `close` (which is consumed).
    fn list<T>(
        &mut self,
        close: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Vec<T>, ParseError> {
        let mut out = Vec::new();
        if self.eat(close) {
            return Ok(out);
        }
        loop {
            out.push(item(self)?);
            if self.eat(close) {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.expected(&format!("',' or '{close}'")));
            }
        }
    }

    fn dtype(&mut self) -> Result<DType, ParseError> {
        let at = self.here();
        match self.bump() {
            Tok::Ident(s) => s.parse::<DType>().map_err(|e| self.err_at(at, e)),
            t => Err(self.err_at(at, format!("expected a dtype, found {}", t.describe()))),
        }
    }

    fn ty(&mut self) -> Result<TensorType, ParseError> {
        let dtype = self.dtype()?;
        self.expect("[")?;
        let dims = self.list("]", |p| p.dim())?;
        Ok(TensorType::new(dtype, Shape(dims)))
    }

    fn dim(&mut self) -> Result<Dim, ParseError> {
        let mut d = self.term()?;
        loop {
            let at = self.here();
            if self.eat("+") {
                d = &d + &self.term()?;
            } else if self.eat("-") {
                d = &d - &self.term()?;
            } else {
                return Ok(d);
            }
            if d.term_count() > Dim::MAX_TERMS {
                return Err(self.err_at(
                    at,
                    format!("dimension expression has more than {} terms", Dim::MAX_TERMS),
                ));
            }
        }
    }

    fn term(&mut self) -> Result<Dim, ParseError> {
        let mut d = self.factor()?;
        loop {
            let at = self.here();
            if !self.eat("*") {
                return Ok(d);
            }
            d = d.checked_mul(&self.factor()?).ok_or_else(|| {
                self.err_at(
                    at,
                    format!("dimension expression has more than {} terms", Dim::MAX_TERMS),
                )
            })?;
        }
    }

    fn factor(&mut self) -> Result<Dim, ParseError> {
        let at = self.here();
        match self.bump() {
            Tok::Int(n) => i64::try_from(n)
                .map(Dim::constant)
                .map_err(|_| self.err_at(at, format!("integer {n} is too large"))),
            Tok::Ident(s) if !RESERVED.contains(&s.as_str()) && s.parse::<DType>().is_err() => {
                Ok(Dim::sym(s))
            }
            Tok::Punct("-") => {
                // i64::MIN has no positive counterpart to negate.
                if self.peek() == &Tok::Int(1u64 << 63) {
                    self.bump();
                    return Ok(Dim::constant(i64::MIN));
                }
                self.enter()?;
                let d = self.factor()?;
                self.depth -= 1;
                Ok(-&d)
            }
            Tok::Punct("(") => {
                self.enter()?;
                let d = self.dim()?;
                self.expect(")")?;
                self.depth -= 1;
                Ok(d)
            }
            t => Err(self.err_at(at, format!("expected a dimension, found {}", t.describe()))),
        }
    }

    /// One attribute value.
    fn attr(&mut self) -> Result<Attr, ParseError> {
        let at = self.here();
        match self.peek().clone() {
            Tok::Punct("[") => {
                self.bump();
                self.enter()?;
                let items = self.list("]", |p| p.attr())?;
                self.depth -= 1;
                list_attr(items).map_err(|e| self.err_at(at, e))
            }
            Tok::Str(s) => {
                self.bump();
                Ok(Attr::Str(s))
            }
            Tok::Float(x) => {
                self.bump();
                Ok(Attr::Float(x))
            }
            Tok::Ident(s) if s == "true" || s == "false" => {
                self.bump();
                Ok(Attr::Bool(s == "true"))
            }
            Tok::Ident(s) if s == "nan" || s == "inf" => {
                self.bump();
                Ok(Attr::Float(if s == "nan" { f64::NAN } else { f64::INFINITY }))
            }
            Tok::Ident(s) if s.parse::<DType>().is_ok() => {
                self.bump();
                Ok(Attr::DType(s.parse::<DType>().expect("checked")))
            }
            Tok::Punct("-") => {
                // A negative float or -inf; anything else is a dim expression.
                match &self.toks[(self.pos + 1).min(self.toks.len() - 1)].tok {
                    Tok::Float(x) => {
                        let x = -x;
                        self.bump();
                        self.bump();
                        Ok(Attr::Float(x))
                    }
                    Tok::Ident(s) if s == "inf" => {
                        self.bump();
                        self.bump();
                        Ok(Attr::Float(f64::NEG_INFINITY))
                    }
                    _ => Ok(Attr::dim(&self.dim()?)),
                }
            }
            Tok::Int(_) | Tok::Ident(_) | Tok::Punct("(") => Ok(Attr::dim(&self.dim()?)),
            t => Err(self.err_at(at, format!("expected an attribute value, found {}", t.describe()))),
        }
    }

    fn value_ref(&mut self) -> Result<(Ref, (usize, usize)), ParseError> {
        let at = self.here();
        match self.bump() {
            Tok::Local(l) => Ok((Ref::Local(l), at)),
            Tok::Global(g) => Ok((Ref::Global(g), at)),
            t => Err(self.err_at(
                at,
                format!("expected a value (%name or @weight), found {}", t.describe()),
            )),
        }
    }

    fn param(&mut self) -> Result<(String, TensorType, (usize, usize)), ParseError> {
        let at = self.here();
        let name = match self.bump() {
            Tok::Local(Local::Named(n)) => n,
            t => {
                return Err(self.err_at(
                    at,
                    format!("expected a named value like %ids, found {}", t.describe()),
                ))
            }
        };
        self.expect(":")?;
        Ok((name, self.ty()?, at))
    }

    fn op_stmt(&mut self) -> Result<OpStmt, ParseError> {
        let mut defs = Vec::new();
        loop {
            let at = self.here();
            let l = match self.bump() {
                Tok::Local(l) => l,
                t => return Err(self.err_at(at, format!("expected a statement, found {}", t.describe()))),
            };
            self.expect(":")?;
            defs.push((l, self.ty()?, at));
            if !self.eat(",") {
                break;
            }
        }
        self.expect("=")?;
        let at = self.here();
        let name = match self.bump() {
            Tok::Ident(s) => s,
            t => return Err(self.err_at(at, format!("expected an op name, found {}", t.describe()))),
        };
        self.expect("(")?;
        let args = self.list(")", |p| p.value_ref())?;
        let mut attrs = BTreeMap::new();
        if self.eat("{") {
            let entries = self.list("}", |p| {
                let at = p.here();
                let key = match p.bump() {
                    Tok::Ident(s) => s,
                    t => {
                        return Err(
                            p.err_at(at, format!("expected an attribute name, found {}", t.describe()))
                        )
                    }
                };
                p.expect("=")?;
                Ok((key, p.attr()?, at))
            })?;
            for (k, v, kat) in entries {
                if attrs.insert(k.clone(), v).is_some() {
                    return Err(self.err_at(kat, format!("attribute '{k}' is given twice")));
                }
            }
        }
        let op = Op::from_attrs(&name, attrs).map_err(|e| self.err_at(at, e))?;
        let mut loc = None;
        if matches!(self.peek(), Tok::Ident(s) if s == "loc") {
            self.bump();
            self.expect("(")?;
            let at = self.here();
            match self.bump() {
                Tok::Str(s) => loc = Some(s),
                t => return Err(self.err_at(at, format!("expected a string, found {}", t.describe()))),
            }
            self.expect(")")?;
        }
        Ok(OpStmt { defs, op, args, loc })
    }
}

/// Combines list items into one list attribute.
fn list_attr(items: Vec<Attr>) -> Result<Attr, String> {
    if items.iter().all(|a| matches!(a, Attr::Int(_))) {
        return Ok(Attr::Ints(
            items
                .into_iter()
                .map(|a| if let Attr::Int(i) = a { i } else { 0 })
                .collect(),
        ));
    }
    if items.iter().all(|a| matches!(a, Attr::Int(_) | Attr::Float(_))) {
        return Ok(Attr::Floats(
            items
                .into_iter()
                .map(|a| match a {
                    Attr::Int(i) => i as f64,
                    Attr::Float(x) => x,
                    _ => 0.0,
                })
                .collect(),
        ));
    }
    if items.iter().all(|a| matches!(a, Attr::Int(_) | Attr::Dim(_))) {
        return Ok(Attr::Dims(
            items
                .into_iter()
                .map(|a| match a {
                    Attr::Int(i) => Dim::constant(i),
                    Attr::Dim(d) => d,
                    _ => Dim::constant(0),
                })
                .collect(),
        ));
    }
    Err("a list must hold only numbers or only dims".into())
}

/// Parses the text form into a graph (syntax and names only; run the
/// verifier to check types and structure).
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        depth: 0,
    };
    p.keyword("graph")?;
    let at = p.here();
    let name = match p.bump() {
        Tok::Ident(s) | Tok::Str(s) => s,
        t => return Err(p.err_at(at, format!("expected the graph name, found {}", t.describe()))),
    };
    p.expect("(")?;
    let params = p.list(")", |p| p.param())?;
    p.expect("->")?;
    p.expect("(")?;
    let results = p.list(")", |p| p.param())?;
    p.expect("{")?;

    let mut g = Graph::new(name);
    let mut locals: HashMap<Local, Value> = HashMap::new();
    let mut globals: HashMap<String, Value> = HashMap::new();
    for (n, ty, at) in params {
        let key = Local::Named(n.clone());
        if locals.contains_key(&key) {
            return Err(p.err_at(at, format!("input %{n} is declared twice")));
        }
        let v = g.add_input(n, ty);
        locals.insert(key, v);
    }

    let mut pending: Vec<(NodeId, Vec<Located<Ref>>)> = Vec::new();
    let mut returns = None;
    let close_at = loop {
        match p.peek().clone() {
            Tok::Punct("}") => {
                let at = p.here();
                p.bump();
                break at;
            }
            Tok::Ident(s) if s == "weight" => {
                p.bump();
                let at = p.here();
                let wname = match p.bump() {
                    Tok::Global(n) => n,
                    t => {
                        return Err(p.err_at(
                            at,
                            format!("expected a weight name like @w, found {}", t.describe()),
                        ))
                    }
                };
                p.expect(":")?;
                let ty = p.ty()?;
                p.expect("=")?;
                let kat = p.here();
                let key = match p.bump() {
                    Tok::Str(k) => k,
                    t => {
                        return Err(p.err_at(
                            kat,
                            format!("expected the weight's key as a string, found {}", t.describe()),
                        ))
                    }
                };
                if globals.contains_key(&wname) {
                    return Err(p.err_at(at, format!("weight @{wname} is declared twice")));
                }
                let v = g.add_weight(wname.clone(), key, ty);
                globals.insert(wname, v);
            }
            Tok::Ident(s) if s == "return" => {
                let at = p.here();
                if returns.is_some() {
                    return Err(p.err_at(at, "a graph has one return"));
                }
                p.bump();
                let mut refs = Vec::new();
                if !p.is("}") {
                    loop {
                        refs.push(p.value_ref()?);
                        if !p.eat(",") {
                            break;
                        }
                    }
                }
                returns = Some((refs, at));
                if !p.is("}") {
                    return Err(p.expected("'}' after return"));
                }
            }
            Tok::Eof => return Err(p.expected("'}'")),
            _ => {
                let stmt = p.op_stmt()?;
                let types = stmt.defs.iter().map(|(_, t, _)| t.clone()).collect();
                let id = g.add_op(stmt.op, &[], types, stmt.loc);
                for (i, (l, _, at)) in stmt.defs.into_iter().enumerate() {
                    let v = Value {
                        node: id,
                        index: i as u32,
                    };
                    if locals.insert(l.clone(), v).is_some() {
                        return Err(
                            p.err_at(at, format!("value {} is defined twice", ref_text(&Ref::Local(l))))
                        );
                    }
                }
                pending.push((id, stmt.args));
            }
        }
    };
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.expected("end of input after the graph"));
    }

    let resolve = |r: &Ref, at: (usize, usize)| -> Result<Value, ParseError> {
        let found = match r {
            Ref::Local(l) => locals.get(l),
            Ref::Global(s) => globals.get(s),
        };
        found.copied().ok_or_else(|| ParseError {
            line: at.0,
            col: at.1,
            message: format!("{} is not defined", ref_text(r)),
        })
    };
    for (id, args) in &pending {
        for (slot, (r, at)) in args.iter().enumerate() {
            let v = resolve(r, *at)?;
            g.add_edge(v, *id, slot as u32);
        }
    }
    let (refs, rat) =
        returns.ok_or_else(|| p.err_at(close_at, "expected 'return' before the closing '}'"))?;
    if refs.len() != results.len() {
        return Err(p.err_at(
            rat,
            format!(
                "return gives {} value(s) but the graph declares {} output(s)",
                refs.len(),
                results.len()
            ),
        ));
    }
    for ((name, ty, _), (r, at)) in results.into_iter().zip(refs) {
        let v = resolve(&r, at)?;
        g.add_output(name, v, ty);
    }
    Ok(g)
}

/// Parses a lone type such as `f32[B, S, 64]` (handy for builders and tests).
pub fn parse_type(text: &str) -> Result<TensorType, ParseError> {
    let mut p = Parser {
        toks: lex(text)?,
        pos: 0,
        depth: 0,
    };
    let t = p.ty()?;
    if !matches!(p.peek(), Tok::Eof) {
        return Err(p.expected("end of the type"));
    }
    Ok(t)
}
