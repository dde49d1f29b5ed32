//! Symbolic dimensions and shapes.
//!
//! A [`Dim`] is a polynomial with integer coefficients over named symbols
//! (`B`, `S`, `2*H`, `S+P-1`, `B*S`), kept in a canonical expanded form so
//! that two dims are equal exactly when their canonical forms are. Affine
//! expressions are the common case; products such as `B*S` appear when a
//! graph flattens batch and sequence. Symbols are bound from the shapes of the
//! graph inputs at run time.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{Add, Mul, Neg, Sub};

use crate::dtype::DType;

/// Values of the symbols of a graph for one run.
pub type Bindings = BTreeMap<String, i64>;

/// A product of symbols (sorted, with repetition); empty for the constant term.
type Monomial = Vec<String>;

/// One dimension: a constant, a symbol, or a polynomial of symbols.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dim {
    /// Sorted by monomial, no zero coefficients: the canonical form.
    terms: Vec<(Monomial, i64)>,
}

impl Dim {
    /// A constant dimension.
    pub fn constant(n: i64) -> Dim {
        Dim::from_terms(vec![(Vec::new(), n)])
    }

    /// A named symbol.
    pub fn sym(name: impl Into<String>) -> Dim {
        Dim::from_terms(vec![(vec![name.into()], 1)])
    }

    fn from_terms(terms: Vec<(Monomial, i64)>) -> Dim {
        let mut map: BTreeMap<Monomial, i64> = BTreeMap::new();
        for (mut m, c) in terms {
            m.sort();
            // Wrapping: dims this large are nonsense, but must not panic
            // (evaluation uses checked arithmetic and reports overflow).
            let e = map.entry(m).or_insert(0);
            *e = e.wrapping_add(c);
        }
        Dim {
            terms: map.into_iter().filter(|(_, c)| *c != 0).collect(),
        }
    }

    /// Most terms a dim may have. Products of sums grow combinatorially, so
    /// text and shapes that would exceed this are rejected instead of
    /// expanded (the parser and reshape use [`Dim::checked_mul`]).
    pub const MAX_TERMS: usize = 64;

    /// Product, or `None` when the expanded result would have more than
    /// [`Dim::MAX_TERMS`] terms or a term of degree above 16.
    pub fn checked_mul(&self, o: &Dim) -> Option<Dim> {
        if self.terms.len().saturating_mul(o.terms.len()) > Dim::MAX_TERMS * Dim::MAX_TERMS {
            return None;
        }
        let degree = |d: &Dim| d.terms.iter().map(|(m, _)| m.len()).max().unwrap_or(0);
        if degree(self) + degree(o) > 16 {
            return None;
        }
        let p = self * o;
        (p.terms.len() <= Dim::MAX_TERMS).then_some(p)
    }

    /// How many terms the canonical polynomial has.
    pub fn term_count(&self) -> usize {
        self.terms.len()
    }

    /// The value if the dim does not depend on any symbol.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.as_slice() {
            [] => Some(0),
            [(m, c)] if m.is_empty() => Some(*c),
            _ => None,
        }
    }

    /// The symbol name if the dim is exactly one symbol.
    pub fn as_sym(&self) -> Option<&str> {
        match self.terms.as_slice() {
            [(m, 1)] if m.len() == 1 => Some(&m[0]),
            _ => None,
        }
    }

    /// True if the dim is the constant `n`.
    pub fn is(&self, n: i64) -> bool {
        self.as_const() == Some(n)
    }

    /// Every symbol the dim mentions.
    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.iter().flat_map(|(m, _)| m.iter().map(String::as_str))
    }

    /// Evaluates the dim with concrete symbol values.
    pub fn eval(&self, bindings: &Bindings) -> Result<i64, String> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut v = *c;
            for s in m {
                let x = bindings
                    .get(s)
                    .ok_or_else(|| format!("symbol {s} is not bound"))?;
                v = v.checked_mul(*x).ok_or_else(|| format!("dim {self} overflows"))?;
            }
            total = total
                .checked_add(v)
                .ok_or_else(|| format!("dim {self} overflows"))?;
        }
        Ok(total)
    }

    /// Exact division by a single-term divisor (a constant times symbols),
    /// e.g. `(B*S*64) / 64 = B*S`; `None` when it does not divide evenly.
    pub fn div_exact(&self, divisor: &Dim) -> Option<Dim> {
        let [(dm, dc)] = divisor.terms.as_slice() else {
            return None;
        };
        let mut out = Vec::new();
        for (m, c) in &self.terms {
            if c % dc != 0 {
                return None;
            }
            let mut rest = m.clone();
            for s in dm {
                let pos = rest.iter().position(|r| r == s)?;
                rest.remove(pos);
            }
            out.push((rest, c / dc));
        }
        Some(Dim::from_terms(out))
    }

    /// The terms of the canonical form: each a product of symbols (empty
    /// for the constant term) and its coefficient. Exporters rebuild a dim
    /// from these as arithmetic on run-time shapes.
    pub fn terms(&self) -> impl Iterator<Item = (&[String], i64)> {
        self.terms.iter().map(|(m, c)| (m.as_slice(), *c))
    }

    /// If the dim is `a*X + b` for one symbol `X`, returns `(X, a, b)`: used
    /// to bind a symbol from an input dimension written as an expression.
    pub fn as_linear(&self) -> Option<(&str, i64, i64)> {
        let mut sym = None;
        let mut offset = 0;
        for (m, c) in &self.terms {
            match m.len() {
                0 => offset = *c,
                1 if sym.is_none() => sym = Some((m[0].as_str(), *c)),
                _ => return None,
            }
        }
        sym.map(|(s, a)| (s, a, offset))
    }
}

impl Dim {
    /// The dim with symbols replaced by dims (others kept): how a pass
    /// re-expresses a graph over new symbols, e.g. `B -> 1, S -> T` when
    /// the KV-cache pass flattens a batch into one row of tokens.
    pub fn substitute(&self, map: &BTreeMap<String, Dim>) -> Dim {
        let mut out = Dim::constant(0);
        for (m, c) in &self.terms {
            let mut term = Dim::constant(*c);
            for s in m {
                let f = map.get(s).cloned().unwrap_or_else(|| Dim::sym(s.clone()));
                term = &term * &f;
            }
            out = &out + &term;
        }
        out
    }
}

impl Shape {
    /// Every dim substituted (see [`Dim::substitute`]).
    pub fn substitute(&self, map: &BTreeMap<String, Dim>) -> Shape {
        Shape(self.0.iter().map(|d| d.substitute(map)).collect())
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Dim {
        Dim::constant(n)
    }
}

impl From<i32> for Dim {
    fn from(n: i32) -> Dim {
        Dim::constant(n as i64)
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Dim {
        Dim::constant(n as i64)
    }
}

impl From<&str> for Dim {
    fn from(s: &str) -> Dim {
        Dim::sym(s)
    }
}

impl Add for &Dim {
    type Output = Dim;
    fn add(self, o: &Dim) -> Dim {
        Dim::from_terms(self.terms.iter().chain(&o.terms).cloned().collect())
    }
}

impl Neg for &Dim {
    type Output = Dim;
    fn neg(self) -> Dim {
        Dim::from_terms(
            self.terms
                .iter()
                .map(|(m, c)| (m.clone(), c.wrapping_neg()))
                .collect(),
        )
    }
}

impl Sub for &Dim {
    type Output = Dim;
    fn sub(self, o: &Dim) -> Dim {
        self + &(-o)
    }
}

impl Mul for &Dim {
    type Output = Dim;
    fn mul(self, o: &Dim) -> Dim {
        let mut terms = Vec::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &o.terms {
                let mut m = ma.clone();
                m.extend(mb.iter().cloned());
                terms.push((m, ca.wrapping_mul(*cb)));
            }
        }
        Dim::from_terms(terms)
    }
}

macro_rules! owned_ops {
    ($($tr:ident $f:ident),*) => {$(
        impl $tr for Dim {
            type Output = Dim;
            fn $f(self, o: Dim) -> Dim { (&self).$f(&o) }
        }
    )*};
}
owned_ops!(Add add, Sub sub, Mul mul);

impl fmt::Display for Dim {
    /// Canonical text: symbol terms by decreasing degree, then the constant,
    /// e.g. `B*S`, `2*H`, `S+P-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        let mut order: Vec<&(Monomial, i64)> = self.terms.iter().collect();
        order.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        for (i, (m, c)) in order.iter().enumerate() {
            let c = *c;
            if i > 0 {
                f.write_str(if c < 0 { "-" } else { "+" })?;
            } else if c < 0 {
                f.write_str("-")?;
            }
            let mag = c.unsigned_abs();
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                f.write_str(&m.join("*"))?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// The dims of a tensor, outermost first.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(pub Vec<Dim>);

impl Shape {
    /// A shape of constant dims.
    pub fn of(dims: &[i64]) -> Shape {
        Shape(dims.iter().map(|&d| Dim::constant(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.0.len()
    }

    pub fn dims(&self) -> &[Dim] {
        &self.0
    }

    /// The product of all dims (1 for a scalar); `None` when the expanded
    /// polynomial would be too large (see [`Dim::checked_mul`]).
    pub fn numel(&self) -> Option<Dim> {
        self.0
            .iter()
            .try_fold(Dim::constant(1), |acc, d| acc.checked_mul(d))
    }

    /// Constant extents, if no dim depends on a symbol.
    pub fn as_consts(&self) -> Option<Vec<i64>> {
        self.0.iter().map(Dim::as_const).collect()
    }

    /// Concrete extents for one run.
    pub fn eval(&self, bindings: &Bindings) -> Result<Vec<usize>, String> {
        self.0
            .iter()
            .map(|d| {
                let v = d.eval(bindings)?;
                usize::try_from(v).map_err(|_| format!("dim {d} evaluates to {v}, which is negative"))
            })
            .collect()
    }

    /// Normalises a possibly negative axis against this rank.
    pub fn axis(&self, axis: i64) -> Result<usize, String> {
        normalize_axis(axis, self.rank())
    }
}

impl From<Vec<Dim>> for Shape {
    fn from(v: Vec<Dim>) -> Shape {
        Shape(v)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Normalises `axis` (negative counts from the end) for a tensor of `rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if (0..r).contains(&a) {
        Ok(a as usize)
    } else {
        Err(format!("axis {axis} is out of range for rank {rank}"))
    }
}

/// The static type of a value: element type and (symbolic) shape.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TensorType {
    pub dtype: DType,
    pub shape: Shape,
}

impl TensorType {
    pub fn new(dtype: DType, shape: impl Into<Shape>) -> TensorType {
        TensorType {
            dtype,
            shape: shape.into(),
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.rank()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.dtype, self.shape)
    }
}

impl fmt::Debug for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// Numpy broadcasting of two symbolic shapes. Two dims agree when they are
/// equal or one of them is the constant 1; symbolic dims that differ (`S`
/// against `T`) are rejected because nothing proves they match.
pub fn broadcast_shapes(a: &Shape, b: &Shape) -> Result<Shape, String> {
    let rank = a.rank().max(b.rank());
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = (i + a.rank()).checked_sub(rank).map(|j| &a.0[j]);
        let db = (i + b.rank()).checked_sub(rank).map(|j| &b.0[j]);
        let d = match (da, db) {
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (Some(x), Some(y)) if x == y => x.clone(),
            (Some(x), Some(y)) if x.is(1) => y.clone(),
            (Some(x), Some(y)) if y.is(1) => x.clone(),
            _ => return Err(format!("shapes {a} and {b} do not broadcast")),
        };
        out.push(d);
    }
    Ok(Shape(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Dim {
        Dim::sym(x)
    }

    #[test]
    fn canonical_forms() {
        let d = &(&s("S") + &Dim::constant(3)) - &Dim::constant(1);
        assert_eq!(d.to_string(), "S+2");
        let p = &s("S") * &s("B");
        assert_eq!(p.to_string(), "B*S");
        assert_eq!(
            &p * &Dim::constant(2),
            &(&s("B") * &s("S")) + &(&s("S") * &s("B"))
        );
        assert_eq!((&s("S") - &s("S")).as_const(), Some(0));
        assert_eq!(
            (&Dim::constant(0) - &(&s("H") * &Dim::constant(2))).to_string(),
            "-2*H"
        );
        assert_eq!((&s("S") - &Dim::constant(1)).to_string(), "S-1");
    }

    #[test]
    fn eval_and_division() {
        let d = &(&s("B") * &s("S")) * &Dim::constant(64);
        let mut b = Bindings::new();
        b.insert("B".into(), 2);
        b.insert("S".into(), 5);
        assert_eq!(d.eval(&b).unwrap(), 640);
        assert_eq!(d.div_exact(&Dim::constant(64)).unwrap().to_string(), "B*S");
        assert_eq!(d.div_exact(&s("S")).unwrap().to_string(), "64*B");
        assert!(d.div_exact(&Dim::constant(3)).is_none());
        assert!(s("T").eval(&b).unwrap_err().contains("symbol T is not bound"));
    }

    #[test]
    fn broadcasting() {
        let a = Shape(vec![s("B"), Dim::constant(1), Dim::constant(4)]);
        let b = Shape(vec![s("S"), Dim::constant(1)]);
        assert_eq!(broadcast_shapes(&a, &b).unwrap().to_string(), "[B, S, 4]");
        let c = Shape(vec![s("T"), Dim::constant(4)]);
        let e = broadcast_shapes(&b, &c).unwrap_err();
        assert_eq!(e, "shapes [S, 1] and [T, 4] do not broadcast");
        let z = Shape::of(&[0, 3]);
        assert_eq!(
            broadcast_shapes(&z, &Shape::of(&[1, 3])).unwrap(),
            Shape::of(&[0, 3])
        );
    }
}
