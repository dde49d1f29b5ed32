//! Op attributes: the values the text form writes between `{}` and the
//! checked reader that turns them into typed op fields.

use std::collections::BTreeMap;
use std::fmt;

use crate::dim::Dim;
use crate::dtype::DType;

/// One attribute value as the text form spells it.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    DType(DType),
    /// A symbolic dimension (constants are written as `Int`).
    Dim(Dim),
    Ints(Vec<i64>),
    Floats(Vec<f64>),
    Dims(Vec<Dim>),
}

impl Attr {
    /// What kind of value this is, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Attr::Int(_) => "int",
            Attr::Float(_) => "float",
            Attr::Bool(_) => "bool",
            Attr::Str(_) => "string",
            Attr::DType(_) => "dtype",
            Attr::Dim(_) => "dim",
            Attr::Ints(_) => "int list",
            Attr::Floats(_) => "float list",
            Attr::Dims(_) => "dim list",
        }
    }

    /// A dim list attribute, written with constants as ints where possible.
    pub fn dims(dims: &[Dim]) -> Attr {
        match dims.iter().map(Dim::as_const).collect::<Option<Vec<_>>>() {
            Some(ints) => Attr::Ints(ints),
            None => Attr::Dims(dims.to_vec()),
        }
    }

    /// A single dim attribute, written as an int when constant.
    pub fn dim(d: &Dim) -> Attr {
        match d.as_const() {
            Some(n) => Attr::Int(n),
            None => Attr::Dim(d.clone()),
        }
    }
}

/// Prints a float so that parsing it back gives the same bits, and so that it
/// never looks like an int (`1.0`, `1e-5`, `nan`, `-inf`).
pub fn fmt_float(x: f64) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        let s = format!("{x:?}");
        if s.contains(['.', 'e', 'E']) {
            s
        } else {
            format!("{s}.0")
        }
    }
}

impl fmt::Display for Attr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T>(f: &mut fmt::Formatter<'_>, v: &[T], one: impl Fn(&T) -> String) -> fmt::Result {
            let items: Vec<String> = v.iter().map(one).collect();
            write!(f, "[{}]", items.join(", "))
        }
        match self {
            Attr::Int(i) => write!(f, "{i}"),
            Attr::Float(x) => f.write_str(&fmt_float(*x)),
            Attr::Bool(b) => write!(f, "{b}"),
            Attr::Str(s) => write!(f, "{s:?}"),
            Attr::DType(d) => write!(f, "{d}"),
            Attr::Dim(d) => write!(f, "{d}"),
            Attr::Ints(v) => list(f, v, |i| i.to_string()),
            Attr::Floats(v) => list(f, v, |x| fmt_float(*x)),
            Attr::Dims(v) => list(f, v, |d| d.to_string()),
        }
    }
}

/// Reads the attributes of one op, checking kinds, and rejects unknown or
/// missing ones by name.
pub struct AttrReader<'a> {
    op: &'a str,
    attrs: BTreeMap<String, Attr>,
    read: Vec<&'static str>,
}

impl<'a> AttrReader<'a> {
    pub fn new(op: &'a str, attrs: BTreeMap<String, Attr>) -> Self {
        AttrReader {
            op,
            attrs,
            read: Vec::new(),
        }
    }

    fn take(&mut self, name: &'static str) -> Option<Attr> {
        self.read.push(name);
        self.attrs.remove(name)
    }

    fn wrong(&self, name: &str, expected: &str, found: &Attr) -> String {
        format!(
            "attribute '{name}' of {}: expected {expected}, found {} {found}",
            self.op,
            found.kind()
        )
    }

    fn missing(&self, name: &str) -> String {
        format!("{} needs attribute '{name}'", self.op)
    }

    pub fn opt_int(&mut self, name: &'static str) -> Result<Option<i64>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Int(i)) => Ok(Some(i)),
            Some(a) => Err(self.wrong(name, "int", &a)),
        }
    }

    pub fn int(&mut self, name: &'static str) -> Result<i64, String> {
        self.opt_int(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn int_or(&mut self, name: &'static str, default: i64) -> Result<i64, String> {
        Ok(self.opt_int(name)?.unwrap_or(default))
    }

    pub fn opt_float(&mut self, name: &'static str) -> Result<Option<f64>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Float(x)) => Ok(Some(x)),
            Some(Attr::Int(i)) => Ok(Some(i as f64)),
            Some(a) => Err(self.wrong(name, "float", &a)),
        }
    }

    pub fn float(&mut self, name: &'static str) -> Result<f64, String> {
        self.opt_float(name)?.ok_or_else(|| self.missing(name))
    }

    pub fn bool_or(&mut self, name: &'static str, default: bool) -> Result<bool, String> {
        match self.take(name) {
            None => Ok(default),
            Some(Attr::Bool(b)) => Ok(b),
            Some(a) => Err(self.wrong(name, "bool", &a)),
        }
    }

    pub fn string(&mut self, name: &'static str) -> Result<Option<String>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(Attr::Str(s)) => Ok(Some(s)),
            Some(a) => Err(self.wrong(name, "string", &a)),
        }
    }

    pub fn dtype(&mut self, name: &'static str) -> Result<DType, String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(Attr::DType(d)) => Ok(d),
            Some(a) => Err(self.wrong(name, "dtype", &a)),
        }
    }

    pub fn ints(&mut self, name: &'static str) -> Result<Vec<i64>, String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(Attr::Ints(v)) => Ok(v),
            Some(a) => Err(self.wrong(name, "int list", &a)),
        }
    }

    pub fn dim(&mut self, name: &'static str) -> Result<Dim, String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(Attr::Int(i)) => Ok(Dim::constant(i)),
            Some(Attr::Dim(d)) => Ok(d),
            Some(a) => Err(self.wrong(name, "dim", &a)),
        }
    }

    pub fn dims(&mut self, name: &'static str) -> Result<Vec<Dim>, String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(Attr::Ints(v)) => Ok(v.into_iter().map(Dim::constant).collect()),
            Some(Attr::Dims(v)) => Ok(v),
            Some(a) => Err(self.wrong(name, "dim list", &a)),
        }
    }

    /// A number list (ints or floats) plus whether every entry was an int.
    pub fn numbers(&mut self, name: &'static str) -> Result<(Vec<f64>, Vec<i64>), String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(Attr::Ints(v)) => Ok((v.iter().map(|&i| i as f64).collect(), v)),
            Some(Attr::Floats(v)) => Ok((v, Vec::new())),
            Some(a) => Err(self.wrong(name, "number list", &a)),
        }
    }

    /// A number (int or float), keeping which.
    pub fn number(&mut self, name: &'static str) -> Result<Attr, String> {
        match self.take(name) {
            None => Err(self.missing(name)),
            Some(a @ (Attr::Int(_) | Attr::Float(_))) => Ok(a),
            Some(a) => Err(self.wrong(name, "number", &a)),
        }
    }

    /// Fails if any attribute was not read by the op.
    pub fn finish(self) -> Result<(), String> {
        if let Some(name) = self.attrs.keys().next() {
            let known = if self.read.is_empty() {
                "it takes none".to_string()
            } else {
                format!("expected one of: {}", self.read.join(", "))
            };
            return Err(format!("unknown attribute '{name}' for {} ({known})", self.op));
        }
        Ok(())
    }
}
