//! Reductions over axes: sum, mean, max, min, prod (with `keepdims`),
//! argmax, the scans cumsum and cumprod, and topk.
//!
//! Sums accumulate in f64 (exact i64 for integer sums). Reducing an empty
//! axis gives the identity: 0 for sum, 1 for prod, NaN for mean (0/0), -inf/+inf for
//! max/min of floats and the type's bounds for integers.

use super::attrs::{Attr, AttrReader};
use super::index::strides;
use super::{arity, EvalCx, OpImpl};
use crate::dim::{normalize_axis, Dim, Shape, TensorType};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// Which reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    /// Product (1 over an empty axis).
    Prod,
}

impl ReduceKind {
    pub const ALL: [ReduceKind; 5] = [
        ReduceKind::Sum,
        ReduceKind::Mean,
        ReduceKind::Max,
        ReduceKind::Min,
        ReduceKind::Prod,
    ];

    /// The op name in the text form.
    pub fn name(self) -> &'static str {
        match self {
            ReduceKind::Sum => "reduce_sum",
            ReduceKind::Mean => "reduce_mean",
            ReduceKind::Max => "reduce_max",
            ReduceKind::Min => "reduce_min",
            ReduceKind::Prod => "reduce_prod",
        }
    }
}

/// A reduction over `axes` (an empty list reduces every axis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reduce {
    pub kind: ReduceKind,
    pub axes: Vec<i64>,
    pub keepdims: bool,
}

/// Normalises and checks a list of axes (no repeats).
pub(crate) fn normalize_axes(name: &str, axes: &[i64], rank: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = normalize_axis(a, rank).map_err(|e| format!("{name}: {e}"))?;
        if out.contains(&n) {
            return Err(format!("{name}: axis {a} is listed twice"));
        }
        out.push(n);
    }
    Ok(out)
}

impl Reduce {
    pub(crate) fn read(kind: ReduceKind, r: &mut AttrReader) -> Result<Reduce, String> {
        Ok(Reduce {
            kind,
            axes: r.ints("axes")?,
            keepdims: r.bool_or("keepdims", false)?,
        })
    }

    fn reduced_axes(&self, rank: usize) -> Result<Vec<usize>, String> {
        if self.axes.is_empty() {
            return Ok((0..rank).collect());
        }
        normalize_axes(self.kind.name(), &self.axes, rank)
    }
}

/// The output shape of a reduction and, for each input element, the flat
/// index of the output element it contributes to.
fn reduce_plan(shape: &[usize], axes: &[usize], keepdims: bool) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if axes.contains(&i) { 1 } else { d })
        .collect();
    let kept_strides = strides(&kept);
    let eff: Vec<usize> = (0..shape.len())
        .map(|i| if axes.contains(&i) { 0 } else { kept_strides[i] })
        .collect();
    let map = super::index::map_with_strides(shape, &eff, 0);
    let out_shape = if keepdims {
        kept.clone()
    } else {
        shape
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect()
    };
    (out_shape, kept, map)
}

fn reduced_type(x: &TensorType, axes: &[usize], keepdims: bool, dtype: DType) -> TensorType {
    let dims: Vec<Dim> = x
        .shape
        .dims()
        .iter()
        .enumerate()
        .filter_map(|(i, d)| match (axes.contains(&i), keepdims) {
            (true, true) => Some(Dim::constant(1)),
            (true, false) => None,
            (false, _) => Some(d.clone()),
        })
        .collect();
    TensorType::new(dtype, Shape(dims))
}

impl OpImpl for Reduce {
    fn name(&self) -> &'static str {
        self.kind.name()
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("axes", Attr::Ints(self.axes.clone())),
            ("keepdims", Attr::Bool(self.keepdims)),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(self.name(), inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool || (self.kind == ReduceKind::Mean && !x.dtype.is_float()) {
            return Err(format!("{} is not defined on {}", self.name(), x.dtype));
        }
        let axes = self.reduced_axes(x.rank())?;
        Ok(vec![reduced_type(x, &axes, self.keepdims, x.dtype)])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axes = self.reduced_axes(x.rank())?;
        let (out_shape, kept, map) = reduce_plan(x.shape(), &axes, self.keepdims);
        let n_out: usize = kept.iter().product();
        let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
        if x.dtype().is_int() {
            let (init, f): (i64, fn(i64, i64) -> i64) = match self.kind {
                ReduceKind::Sum | ReduceKind::Mean => (0, i64::wrapping_add),
                ReduceKind::Max => (crate::tensor::int_range(x.dtype()).0, i64::max),
                ReduceKind::Min => (crate::tensor::int_range(x.dtype()).1, i64::min),
                ReduceKind::Prod => (1, i64::wrapping_mul),
            };
            let mut acc = vec![init; n_out];
            for (v, &o) in x.to_i64_vec().into_iter().zip(&map) {
                acc[o] = f(acc[o], v);
            }
            return Ok(vec![Tensor::from_i64(x.dtype(), &out_shape, &acc)]);
        }
        let (init, f): (f64, fn(f64, f64) -> f64) = match self.kind {
            ReduceKind::Sum | ReduceKind::Mean => (0.0, |a, b| a + b),
            ReduceKind::Max => (f64::NEG_INFINITY, |a, b| {
                if a.is_nan() || b > a || b.is_nan() {
                    b
                } else {
                    a
                }
            }),
            ReduceKind::Min => (f64::INFINITY, |a, b| {
                if a.is_nan() || b < a || b.is_nan() {
                    b
                } else {
                    a
                }
            }),
            ReduceKind::Prod => (1.0, |a, b| a * b),
        };
        let mut acc = vec![init; n_out];
        for (v, &o) in x.to_f64_vec().into_iter().zip(&map) {
            acc[o] = if acc[o].is_nan() { acc[o] } else { f(acc[o], v) };
        }
        if self.kind == ReduceKind::Mean {
            for a in &mut acc {
                *a /= count as f64;
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype(), &out_shape, &acc)])
    }
}

/// Index of the largest element along `axis` (first one on ties; a NaN
/// counts as the largest), as i64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgMax {
    pub axis: i64,
    pub keepdims: bool,
}

impl ArgMax {
    pub(crate) fn read(r: &mut AttrReader) -> Result<ArgMax, String> {
        Ok(ArgMax {
            axis: r.int("axis")?,
            keepdims: r.bool_or("keepdims", false)?,
        })
    }
}

impl OpImpl for ArgMax {
    fn name(&self) -> &'static str {
        "argmax"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("axis", Attr::Int(self.axis)),
            ("keepdims", Attr::Bool(self.keepdims)),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("argmax", inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool {
            return Err("argmax is not defined on bool".into());
        }
        let axis = x.shape.axis(self.axis).map_err(|e| format!("argmax: {e}"))?;
        if x.shape.dims()[axis].is(0) {
            return Err(format!("argmax: axis {} of {x} is empty", self.axis));
        }
        Ok(vec![reduced_type(x, &[axis], self.keepdims, DType::I64)])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let (outer, len, inner) = super::index::around_axis(x.shape(), axis);
        if len == 0 {
            return Err(format!("argmax over an empty axis of {:?}", x.shape()));
        }
        let (fv, iv) = if x.dtype().is_int() {
            (Vec::new(), x.to_i64_vec())
        } else {
            (x.to_f64_vec(), Vec::new())
        };
        // Is element `c` a new best over `b`? (NaN beats everything, once.)
        let better = |b: usize, c: usize| {
            if iv.is_empty() {
                let (b, c) = (fv[b], fv[c]);
                !b.is_nan() && (c > b || c.is_nan())
            } else {
                iv[c] > iv[b]
            }
        };
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| (o * len + k) * inner + i;
                let mut best = 0;
                for k in 1..len {
                    if better(at(best), at(k)) {
                        best = k;
                    }
                }
                out.push(best as i64);
            }
        }
        let (out_shape, _, _) = reduce_plan(x.shape(), &[axis], self.keepdims);
        Ok(vec![Tensor::from_i64(DType::I64, &out_shape, &out)])
    }
}

/// Running sum along `axis` (`torch.cumsum`): element `i` is the sum of
/// elements `0..=i`. Integers wrap like the other integer ops; frontends
/// cast bool inputs to an integer type first (torch sums bools as i64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CumSum {
    pub axis: i64,
}

impl OpImpl for CumSum {
    fn name(&self) -> &'static str {
        "cumsum"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("cumsum", inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool {
            return Err("cumsum is not defined on bool (cast to an integer first)".into());
        }
        x.shape.axis(self.axis).map_err(|e| format!("cumsum: {e}"))?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        scan(inputs[0], self.axis, i64::wrapping_add, |a, b| a + b)
    }
}

/// An inclusive scan along `axis`: element `k` becomes `step(x[k], y[k-1])`;
/// integers through `int` (wrapping), floats in f64 rounded once each.
fn scan(
    x: &Tensor,
    axis: i64,
    int: fn(i64, i64) -> i64,
    float: fn(f64, f64) -> f64,
) -> Result<Vec<Tensor>, String> {
    let axis = normalize_axis(axis, x.rank())?;
    let (outer, len, inner) = super::index::around_axis(x.shape(), axis);
    let at = |o: usize, k: usize, i: usize| (o * len + k) * inner + i;
    if x.dtype().is_int() {
        let mut v = x.to_i64_vec();
        for o in 0..outer {
            for i in 0..inner {
                for k in 1..len {
                    v[at(o, k, i)] = int(v[at(o, k, i)], v[at(o, k - 1, i)]);
                }
            }
        }
        return Ok(vec![Tensor::from_i64(x.dtype(), x.shape(), &v)]);
    }
    let mut v = x.to_f64_vec();
    for o in 0..outer {
        for i in 0..inner {
            for k in 1..len {
                v[at(o, k, i)] = float(v[at(o, k, i)], v[at(o, k - 1, i)]);
            }
        }
    }
    Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
}

/// Running product along `axis` (`torch.cumprod`, ONNX `CumProd`): element
/// `i` is the product of elements `0..=i`. Floats accumulate in f64 and
/// round once per element; integers wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CumProd {
    pub axis: i64,
}

impl OpImpl for CumProd {
    fn name(&self) -> &'static str {
        "cumprod"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("cumprod", inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool {
            return Err("cumprod is not defined on bool (cast to an integer first)".into());
        }
        x.shape.axis(self.axis).map_err(|e| format!("cumprod: {e}"))?;
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        scan(inputs[0], self.axis, i64::wrapping_mul, |a, b| a * b)
    }
}

/// The `k` largest (or smallest) elements along `axis` and their indices
/// (`torch.topk`, ONNX `TopK`). Two outputs: the values, and their
/// positions as i64, both with `axis` set to `k`. Ties keep the lower index
/// first; a NaN counts as larger than everything. `sorted = false` leaves
/// the order unspecified; the reference gives the sorted order either way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopK {
    pub axis: i64,
    pub k: i64,
    pub largest: bool,
    pub sorted: bool,
}

impl TopK {
    pub(crate) fn read(r: &mut AttrReader) -> Result<TopK, String> {
        Ok(TopK {
            axis: r.int_or("axis", -1)?,
            k: r.int("k")?,
            largest: r.bool_or("largest", true)?,
            sorted: r.bool_or("sorted", true)?,
        })
    }
}

impl OpImpl for TopK {
    fn name(&self) -> &'static str {
        "topk"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("axis", Attr::Int(self.axis)),
            ("k", Attr::Int(self.k)),
            ("largest", Attr::Bool(self.largest)),
            ("sorted", Attr::Bool(self.sorted)),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("topk", inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool {
            return Err("topk is not defined on bool".into());
        }
        let axis = x.shape.axis(self.axis).map_err(|e| format!("topk: {e}"))?;
        let extent = &x.shape.dims()[axis];
        if self.k < 0 || extent.as_const().is_some_and(|n| self.k > n) {
            return Err(format!(
                "topk: k = {} is out of range for axis {} of {x}",
                self.k, self.axis
            ));
        }
        let mut dims = x.shape.dims().to_vec();
        dims[axis] = Dim::constant(self.k);
        let values = TensorType::new(x.dtype, Shape(dims.clone()));
        Ok(vec![values, TensorType::new(DType::I64, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let (outer, len, inner) = super::index::around_axis(x.shape(), axis);
        let k = usize::try_from(self.k)
            .ok()
            .filter(|&k| k <= len)
            .ok_or_else(|| format!("topk: k = {} is out of range for extent {len}", self.k))?;
        let (fv, iv) = if x.dtype().is_int() {
            (Vec::new(), x.to_i64_vec())
        } else {
            (x.to_f64_vec(), Vec::new())
        };
        // Ascending order of flat positions, NaN above everything.
        let cmp = |a: usize, b: usize| {
            if iv.is_empty() {
                let (a, b) = (fv[a], fv[b]);
                match (a.is_nan(), b.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ => a.partial_cmp(&b).unwrap_or(std::cmp::Ordering::Equal),
                }
            } else {
                iv[a].cmp(&iv[b])
            }
        };
        let mut flat = Vec::with_capacity(outer * k * inner);
        let mut pos = Vec::with_capacity(outer * k * inner);
        for o in 0..outer {
            // lanes[i] lists the chosen positions along the axis for inner `i`.
            let mut lanes = Vec::with_capacity(inner);
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let mut order: Vec<usize> = (0..len).collect();
                // A stable sort keeps equal elements in index order.
                if self.largest {
                    order.sort_by(|&a, &b| cmp(at(b), at(a)));
                } else {
                    order.sort_by(|&a, &b| cmp(at(a), at(b)));
                }
                order.truncate(k);
                lanes.push(order);
            }
            for j in 0..k {
                for (i, lane) in lanes.iter().enumerate() {
                    flat.push((o * len + lane[j]) * inner + i);
                    pos.push(lane[j] as i64);
                }
            }
        }
        let mut shape = x.shape().to_vec();
        shape[axis] = k;
        Ok(vec![
            x.take_flat(&shape, &flat),
            Tensor::from_i64(DType::I64, &shape, &pos),
        ])
    }
}
