//! Ops that select or join parts of tensors: slice, concat, split, gather,
//! index_select, gather_elements and scatter_elements.

use super::attrs::{Attr, AttrReader};
use super::index::{around_axis, map_with_strides, strides};
use super::{arity, EvalCx, OpImpl};
use crate::dim::{normalize_axis, Dim, Shape, TensorType};
use crate::tensor::Tensor;

/// Python slice `x[start:end:step]` along one axis, with Python's clamping of
/// out-of-range bounds and negative bounds counted from the end. `end`
/// omitted means "to the end" (or the beginning for a negative step).
///
/// On a symbolic dim the output extent must be expressible without clamping:
/// the step must be 1, and the extent is taken as written (`x[2:]` of `S` is
/// `S-2`, `x[-3:]` is `3`); the interpreter checks it at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub axis: i64,
    pub start: i64,
    pub end: Option<i64>,
    pub step: i64,
}

impl Slice {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Slice, String> {
        Ok(Slice {
            axis: r.int("axis")?,
            start: r.int_or("start", 0)?,
            end: r.opt_int("end")?,
            step: r.int_or("step", 1)?,
        })
    }

    /// Python's `slice.indices`: first index and element count for extent `n`.
    pub fn indices(&self, n: usize) -> (i64, usize) {
        let n = n as i64;
        let step = self.step;
        let clamp = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
        let (lo, hi) = if step > 0 { (0, n) } else { (-1, n - 1) };
        let norm = |v: i64| {
            if v < 0 {
                clamp(v + n, lo, hi)
            } else {
                clamp(v, lo, hi)
            }
        };
        let start = norm(self.start);
        let end = match self.end {
            Some(e) => norm(e),
            None => {
                if step > 0 {
                    n
                } else {
                    -1
                }
            }
        };
        let (s, e, st) = (start as i128, end as i128, step as i128);
        let count = if st > 0 {
            if e > s {
                (e - s + st - 1) / st
            } else {
                0
            }
        } else if s > e {
            (s - e - st - 1) / -st
        } else {
            0
        };
        (start, count as usize)
    }

    fn symbolic_extent(&self, d: &Dim) -> Result<Dim, String> {
        if let Some(n) = d.as_const() {
            return Ok(Dim::constant(self.indices(n.max(0) as usize).1 as i64));
        }
        if self.step != 1 {
            return Err(format!(
                "slice: step {} on symbolic dim {d} is not supported",
                self.step
            ));
        }
        let (s, e) = (self.start, self.end);
        let c = Dim::constant;
        Ok(match (s >= 0, e) {
            (true, None) => d - &c(s),
            (false, None) => c(s.saturating_neg()),
            (true, Some(e)) if e >= 0 => c(e.saturating_sub(s).max(0)),
            (true, Some(e)) => &(d + &c(e)) - &c(s),
            (false, Some(e)) if e < 0 => c(e.saturating_sub(s).max(0)),
            (false, Some(_)) => {
                return Err(format!(
                    "slice: start {s} with end {e:?} on symbolic dim {d} has no static extent"
                ))
            }
        })
    }
}

impl OpImpl for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = vec![("axis", Attr::Int(self.axis)), ("start", Attr::Int(self.start))];
        if let Some(e) = self.end {
            a.push(("end", Attr::Int(e)));
        }
        a.push(("step", Attr::Int(self.step)));
        a
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("slice", inputs, 1)?;
        if self.step == 0 {
            return Err("slice: step must not be 0".into());
        }
        let x = &inputs[0];
        let axis = x.shape.axis(self.axis).map_err(|e| format!("slice: {e}"))?;
        let mut dims = x.shape.dims().to_vec();
        dims[axis] = self.symbolic_extent(&dims[axis])?;
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let (start, count) = self.indices(x.shape()[axis]);
        let st = strides(x.shape());
        let mut shape = x.shape().to_vec();
        shape[axis] = count;
        let base = if count == 0 { 0 } else { start as usize * st[axis] };
        let mut vst: Vec<isize> = st.iter().map(|&s| s as isize).collect();
        vst[axis] *= self.step as isize;
        // Strides may be negative; build the map with signed arithmetic.
        let n: usize = shape.iter().product();
        let mut idx = Vec::with_capacity(n);
        let out_st = strides(&shape);
        for flat in 0..n {
            let mut off = base as isize;
            let mut rem = flat;
            for d in 0..shape.len() {
                let i = rem / out_st[d];
                rem %= out_st[d];
                off += i as isize * vst[d];
            }
            idx.push(off as usize);
        }
        Ok(vec![x.take_flat(&shape, &idx)])
    }
}

/// Joins tensors of one dtype along `axis`; other dims must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Concat {
    pub axis: i64,
}

impl OpImpl for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let first = inputs.first().ok_or("concat needs at least one operand")?;
        let axis = first.shape.axis(self.axis).map_err(|e| format!("concat: {e}"))?;
        let mut total = Dim::constant(0);
        for t in inputs {
            if t.dtype != first.dtype || t.rank() != first.rank() {
                return Err(format!(
                    "concat: operands {first} and {t} differ in dtype or rank"
                ));
            }
            for (i, (a, b)) in first.shape.dims().iter().zip(t.shape.dims()).enumerate() {
                if i != axis && a != b {
                    return Err(format!(
                        "concat: operands {first} and {t} differ outside axis {}",
                        self.axis
                    ));
                }
            }
            total = &total + &t.shape.dims()[axis];
        }
        let mut dims = first.shape.dims().to_vec();
        dims[axis] = total;
        Ok(vec![TensorType::new(first.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let first = inputs[0];
        let axis = normalize_axis(self.axis, first.rank())?;
        let (outer, _, inner) = around_axis(first.shape(), axis);
        let lens: Vec<usize> = inputs.iter().map(|t| t.shape()[axis]).collect();
        let total: usize = lens.iter().sum();
        // Join every operand's elements into one flat buffer, then pick.
        let mut bases = Vec::new();
        let mut n = 0;
        for t in inputs {
            bases.push(n);
            n += t.numel();
        }
        let mut idx = Vec::with_capacity(outer * total * inner);
        for o in 0..outer {
            for (t, &len) in lens.iter().enumerate() {
                for k in 0..len * inner {
                    idx.push(bases[t] + o * len * inner + k);
                }
            }
        }
        let mut shape = first.shape().to_vec();
        shape[axis] = total;
        Ok(vec![Tensor::join_flat(inputs).take_flat(&shape, &idx)])
    }
}

/// Splits along `axis` into pieces of the given sizes (which must add up to
/// the extent); one output per size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    pub axis: i64,
    pub sizes: Vec<Dim>,
}

impl OpImpl for Split {
    fn name(&self) -> &'static str {
        "split"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis)), ("sizes", Attr::dims(&self.sizes))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("split", inputs, 1)?;
        let x = &inputs[0];
        let axis = x.shape.axis(self.axis).map_err(|e| format!("split: {e}"))?;
        if self.sizes.is_empty() {
            return Err("split needs at least one size".into());
        }
        super::no_negative_dims("split", "sizes", &self.sizes)?;
        let total = self.sizes.iter().fold(Dim::constant(0), |a, s| &a + s);
        if total != x.shape.dims()[axis] {
            return Err(format!(
                "split: sizes add up to {total} but axis {} of {x} is {}",
                self.axis,
                x.shape.dims()[axis]
            ));
        }
        Ok(self
            .sizes
            .iter()
            .map(|s| {
                let mut dims = x.shape.dims().to_vec();
                dims[axis] = s.clone();
                TensorType::new(x.dtype, Shape(dims))
            })
            .collect())
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let sizes: Vec<usize> = self.sizes.iter().map(|d| cx.dim(d)).collect::<Result<_, _>>()?;
        if sizes.iter().sum::<usize>() != x.shape()[axis] {
            return Err(format!(
                "split: sizes {sizes:?} do not add up to axis {axis} of {:?}",
                x.shape()
            ));
        }
        let mut start = 0i64;
        let mut out = Vec::new();
        for s in sizes {
            let sl = Slice {
                axis: axis as i64,
                start,
                end: Some(start + s as i64),
                step: 1,
            };
            out.extend(sl.eval(&[x], cx)?);
            start += s as i64;
        }
        Ok(out)
    }
}

/// Index operands must be i32 or i64.
fn want_indices(name: &str, t: &TensorType) -> Result<(), String> {
    if !t.dtype.is_index() {
        return Err(format!("{name} needs i32 or i64 indices, got {t}"));
    }
    Ok(())
}

/// `take` along an axis: output shape is `data[:axis] + indices.shape +
/// data[axis+1:]`. Negative indices count from the end when `wrap` is set
/// (gather) and are errors otherwise (embedding); out-of-range indices are
/// an error.
pub(crate) fn take(
    data: &Tensor,
    indices: &Tensor,
    axis: usize,
    wrap: bool,
    what: &str,
) -> Result<Tensor, String> {
    let (outer, len, inner) = around_axis(data.shape(), axis);
    let mut picked = Vec::new();
    for i in indices.to_i64_vec() {
        let j = if i < 0 && wrap { i + len as i64 } else { i };
        if j < 0 || j >= len as i64 {
            return Err(format!("{what}: index {i} is out of range for extent {len}"));
        }
        picked.push(j as usize);
    }
    let mut idx = Vec::with_capacity(outer * picked.len() * inner);
    for o in 0..outer {
        for &p in &picked {
            for k in 0..inner {
                idx.push((o * len + p) * inner + k);
            }
        }
    }
    let mut shape = data.shape()[..axis].to_vec();
    shape.extend(indices.shape());
    shape.extend(&data.shape()[axis + 1..]);
    Ok(data.take_flat(&shape, &idx))
}

/// numpy `take(data, indices, axis)` (ONNX `Gather`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gather {
    pub axis: i64,
}

impl OpImpl for Gather {
    fn name(&self) -> &'static str {
        "gather"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("gather", inputs, 2)?;
        let (data, idx) = (&inputs[0], &inputs[1]);
        want_indices("gather", idx)?;
        let axis = data.shape.axis(self.axis).map_err(|e| format!("gather: {e}"))?;
        let mut dims = data.shape.dims()[..axis].to_vec();
        dims.extend(idx.shape.dims().iter().cloned());
        dims.extend(data.shape.dims()[axis + 1..].iter().cloned());
        Ok(vec![TensorType::new(data.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let axis = normalize_axis(self.axis, inputs[0].rank())?;
        Ok(vec![take(inputs[0], inputs[1], axis, true, "gather")?])
    }
}

/// `torch.index_select`: picks entries along `axis` with a 1-D index list
/// (indices must lie in `0..extent`; negative ones are errors, as in torch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexSelect {
    pub axis: i64,
}

impl OpImpl for IndexSelect {
    fn name(&self) -> &'static str {
        "index_select"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("index_select", inputs, 2)?;
        let (data, idx) = (&inputs[0], &inputs[1]);
        want_indices("index_select", idx)?;
        if idx.rank() != 1 {
            return Err(format!("index_select needs 1-D indices, got {idx}"));
        }
        let axis = data
            .shape
            .axis(self.axis)
            .map_err(|e| format!("index_select: {e}"))?;
        let mut dims = data.shape.dims().to_vec();
        dims[axis] = idx.shape.dims()[0].clone();
        Ok(vec![TensorType::new(data.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let axis = normalize_axis(self.axis, inputs[0].rank())?;
        Ok(vec![take(inputs[0], inputs[1], axis, false, "index_select")?])
    }
}

/// Checks the operand shapes of the element-wise indexing ops: `indices` has
/// the rank of `data`, and off `axis` each extent is at most `data`'s (equal
/// when symbolic). Returns the normalised axis.
fn elementwise_indices(name: &str, data: &TensorType, idx: &TensorType, axis: i64) -> Result<usize, String> {
    want_indices(name, idx)?;
    if idx.rank() != data.rank() {
        return Err(format!(
            "{name} needs indices of the rank of data, got {idx} for {data}"
        ));
    }
    let axis = data.shape.axis(axis).map_err(|e| format!("{name}: {e}"))?;
    for (i, (d, k)) in data.shape.dims().iter().zip(idx.shape.dims()).enumerate() {
        let fits = match (d.as_const(), k.as_const()) {
            (Some(d), Some(k)) => k <= d,
            _ => d == k,
        };
        if i != axis && !fits {
            return Err(format!(
                "{name}: indices {idx} exceed data {data} off axis {axis}"
            ));
        }
    }
    Ok(axis)
}

/// For every element of `indices` (row-major), the flat index of the data
/// element it addresses: its own coordinates, with the one on `axis`
/// replaced by the index value (negative values wrap once).
fn element_targets(data: &Tensor, indices: &Tensor, axis: usize, name: &str) -> Result<Vec<usize>, String> {
    let ds = strides(data.shape());
    let len = data.shape()[axis];
    for (i, (&k, &d)) in indices.shape().iter().zip(data.shape()).enumerate() {
        if i != axis && k > d {
            return Err(format!(
                "{name}: indices of shape {:?} exceed data of shape {:?}",
                indices.shape(),
                data.shape()
            ));
        }
    }
    let mut eff = ds.clone();
    eff[axis] = 0;
    let base = map_with_strides(indices.shape(), &eff, 0);
    base.into_iter()
        .zip(indices.to_i64_vec())
        .map(|(b, i)| {
            let j = if i < 0 { i + len as i64 } else { i };
            if j < 0 || j >= len as i64 {
                return Err(format!("{name}: index {i} is out of range for extent {len}"));
            }
            Ok(b + j as usize * ds[axis])
        })
        .collect()
}

/// `torch.gather` (ONNX `GatherElements`): `out[..., i, ...] = data[...,
/// indices[..., i, ...], ...]` with the index replacing the coordinate on
/// `axis`. The output has the shape of `indices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatherElements {
    pub axis: i64,
}

impl OpImpl for GatherElements {
    fn name(&self) -> &'static str {
        "gather_elements"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("gather_elements", inputs, 2)?;
        let (data, idx) = (&inputs[0], &inputs[1]);
        elementwise_indices("gather_elements", data, idx, self.axis)?;
        Ok(vec![TensorType::new(data.dtype, idx.shape.clone())])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (data, idx) = (inputs[0], inputs[1]);
        let axis = normalize_axis(self.axis, data.rank())?;
        let at = element_targets(data, idx, axis, "gather_elements")?;
        Ok(vec![data.take_flat(idx.shape(), &at)])
    }
}

/// How `scatter_elements` combines an update with the value it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScatterReduction {
    /// The update replaces the value.
    None,
    Add,
    Mul,
    Max,
    Min,
}

impl ScatterReduction {
    pub const ALL: [ScatterReduction; 5] = [
        ScatterReduction::None,
        ScatterReduction::Add,
        ScatterReduction::Mul,
        ScatterReduction::Max,
        ScatterReduction::Min,
    ];

    /// The spelling in the text form (and in ONNX).
    pub fn name(self) -> &'static str {
        match self {
            ScatterReduction::None => "none",
            ScatterReduction::Add => "add",
            ScatterReduction::Mul => "mul",
            ScatterReduction::Max => "max",
            ScatterReduction::Min => "min",
        }
    }
}

/// The inverse of `gather_elements` (torch `scatter`/`scatter_reduce`, ONNX
/// `ScatterElements`): a copy of `data` where each update is combined into
/// the element its index addresses. Updates apply in row-major order, so
/// with `none` the last of duplicate indices wins. Floats combine in f64 and
/// round once; integers wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScatterElements {
    pub axis: i64,
    pub reduction: ScatterReduction,
}

impl ScatterElements {
    pub(crate) fn read(r: &mut AttrReader) -> Result<ScatterElements, String> {
        let axis = r.int("axis")?;
        let reduction = match r.string("reduction")? {
            None => ScatterReduction::None,
            Some(s) => *ScatterReduction::ALL
                .iter()
                .find(|k| k.name() == s)
                .ok_or_else(|| {
                    format!("scatter_elements: reduction must be none, add, mul, max or min, got {s:?}")
                })?,
        };
        Ok(ScatterElements { axis, reduction })
    }
}

impl OpImpl for ScatterElements {
    fn name(&self) -> &'static str {
        "scatter_elements"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("axis", Attr::Int(self.axis)),
            ("reduction", Attr::Str(self.reduction.name().into())),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("scatter_elements", inputs, 3)?;
        let (data, idx, upd) = (&inputs[0], &inputs[1], &inputs[2]);
        elementwise_indices("scatter_elements", data, idx, self.axis)?;
        super::same_dtype("scatter_elements", data, upd)?;
        if upd.shape != idx.shape {
            return Err(format!(
                "scatter_elements needs updates shaped like indices, got {upd} for {idx}"
            ));
        }
        if data.dtype == crate::dtype::DType::Bool && self.reduction != ScatterReduction::None {
            return Err(format!(
                "scatter_elements: reduction {} is not defined on bool",
                self.reduction.name()
            ));
        }
        Ok(vec![data.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (data, idx, upd) = (inputs[0], inputs[1], inputs[2]);
        let axis = normalize_axis(self.axis, data.rank())?;
        if upd.shape() != idx.shape() {
            return Err(format!(
                "scatter_elements: updates of shape {:?} for indices of shape {:?}",
                upd.shape(),
                idx.shape()
            ));
        }
        let at = element_targets(data, idx, axis, "scatter_elements")?;
        let n = data.numel();
        if self.reduction == ScatterReduction::None {
            // Each output element picks data or its last update (exact copy).
            let mut pick: Vec<usize> = (0..n).collect();
            for (k, &t) in at.iter().enumerate() {
                pick[t] = n + k;
            }
            return Ok(vec![
                Tensor::join_flat(&[data, upd]).take_flat(data.shape(), &pick)
            ]);
        }
        if data.dtype().is_int() {
            let f: fn(i64, i64) -> i64 = match self.reduction {
                ScatterReduction::Add => i64::wrapping_add,
                ScatterReduction::Mul => i64::wrapping_mul,
                ScatterReduction::Max => i64::max,
                _ => i64::min,
            };
            let mut v = data.to_i64_vec();
            for (u, &t) in upd.to_i64_vec().into_iter().zip(&at) {
                v[t] = f(v[t], u);
            }
            return Ok(vec![Tensor::from_i64(data.dtype(), data.shape(), &v)]);
        }
        let f: fn(f64, f64) -> f64 = match self.reduction {
            ScatterReduction::Add => |a, b| a + b,
            ScatterReduction::Mul => |a, b| a * b,
            // NaN propagates, as numpy's maximum/minimum do.
            ScatterReduction::Max => |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.max(b)
                }
            },
            _ => |a, b| {
                if a.is_nan() || b.is_nan() {
                    f64::NAN
                } else {
                    a.min(b)
                }
            },
        };
        let mut v = data.to_f64_vec();
        for (u, &t) in upd.to_f64_vec().into_iter().zip(&at) {
            v[t] = f(v[t], u);
        }
        Ok(vec![Tensor::from_f64(data.dtype(), data.shape(), &v)])
    }
}
