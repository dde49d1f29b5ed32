//! Ops that select or join parts of tensors: slice, concat, split, gather
//! and index_select.

use super::attrs::{Attr, AttrReader};
use super::index::{around_axis, strides};
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
