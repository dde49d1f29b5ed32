//! Layout ops that move or reinterpret elements without computing on them:
//! reshape, transpose, unsqueeze, squeeze, expand, and triu/tril masking.

use super::attrs::Attr;
use super::index::{broadcast_map, map_with_strides, strides};
use super::reduce::normalize_axes;
use super::{arity, EvalCx, OpImpl};
use crate::dim::{Dim, Shape, TensorType};
use crate::tensor::Tensor;

/// Reinterprets the elements (row-major) with a new shape of the same size.
/// The target is fully resolved (frontends turn `-1` into a dim); the two
/// element counts must be provably equal as polynomials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reshape {
    pub shape: Vec<Dim>,
}

impl OpImpl for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("shape", Attr::dims(&self.shape))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("reshape", inputs, 1)?;
        let x = &inputs[0];
        let target = Shape(self.shape.clone());
        super::no_negative_dims("reshape", "shape", &self.shape)?;
        let (a, b) = match (x.shape.numel(), target.numel()) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Err(format!(
                    "reshape: {x} -> {target}: element counts are too complex to compare"
                ))
            }
        };
        if a != b {
            return Err(format!(
                "reshape: cannot reshape {x} ({a} elements) to {target} ({b} elements)"
            ));
        }
        Ok(vec![TensorType::new(x.dtype, target)])
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let shape = cx.shape(&self.shape)?;
        let x = inputs[0];
        if shape.iter().product::<usize>() != x.numel() {
            return Err(format!("reshape: cannot reshape {:?} to {shape:?}", x.shape()));
        }
        Ok(vec![x.reshape(&shape)])
    }
}

/// Permutes the axes: output axis `i` is input axis `perm[i]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transpose {
    pub perm: Vec<i64>,
}

impl Transpose {
    fn checked_perm(&self, rank: usize) -> Result<Vec<usize>, String> {
        let p = normalize_axes("transpose", &self.perm, rank)?;
        if p.len() != rank {
            return Err(format!(
                "transpose: perm {:?} is not a permutation of {rank} axes",
                self.perm
            ));
        }
        Ok(p)
    }
}

impl OpImpl for Transpose {
    fn name(&self) -> &'static str {
        "transpose"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("perm", Attr::Ints(self.perm.clone()))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("transpose", inputs, 1)?;
        let x = &inputs[0];
        let p = self.checked_perm(x.rank())?;
        let dims = p.iter().map(|&i| x.shape.dims()[i].clone()).collect();
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let p = self.checked_perm(x.rank())?;
        let st = strides(x.shape());
        let shape: Vec<usize> = p.iter().map(|&i| x.shape()[i]).collect();
        let pst: Vec<usize> = p.iter().map(|&i| st[i]).collect();
        Ok(vec![x.take_flat(&shape, &map_with_strides(&shape, &pst, 0))])
    }
}

/// Inserts size-1 axes; `axes` index the output (negative counts from its end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsqueeze {
    pub axes: Vec<i64>,
}

impl Unsqueeze {
    fn out_dims<T: Clone>(&self, dims: &[T], one: T) -> Result<Vec<T>, String> {
        let rank = dims.len() + self.axes.len();
        let axes = normalize_axes("unsqueeze", &self.axes, rank)?;
        let mut it = dims.iter();
        Ok((0..rank)
            .map(|i| {
                if axes.contains(&i) {
                    one.clone()
                } else {
                    it.next().expect("count").clone()
                }
            })
            .collect())
    }
}

impl OpImpl for Unsqueeze {
    fn name(&self) -> &'static str {
        "unsqueeze"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axes", Attr::Ints(self.axes.clone()))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("unsqueeze", inputs, 1)?;
        if self.axes.is_empty() {
            return Err("unsqueeze needs at least one axis".into());
        }
        let x = &inputs[0];
        Ok(vec![TensorType::new(
            x.dtype,
            Shape(self.out_dims(x.shape.dims(), Dim::constant(1))?),
        )])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        Ok(vec![x.reshape(&self.out_dims(x.shape(), 1)?)])
    }
}

/// Removes the listed axes, which must have extent 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Squeeze {
    pub axes: Vec<i64>,
}

impl OpImpl for Squeeze {
    fn name(&self) -> &'static str {
        "squeeze"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axes", Attr::Ints(self.axes.clone()))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("squeeze", inputs, 1)?;
        let x = &inputs[0];
        if self.axes.is_empty() {
            return Err("squeeze needs at least one axis".into());
        }
        let axes = normalize_axes("squeeze", &self.axes, x.rank())?;
        for &a in &axes {
            if !x.shape.dims()[a].is(1) {
                return Err(format!("squeeze: axis {a} of {x} is not 1"));
            }
        }
        let dims = x
            .shape
            .dims()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d.clone())
            .collect();
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axes = normalize_axes("squeeze", &self.axes, x.rank())?;
        let shape: Vec<usize> = x
            .shape()
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, &d)| d)
            .collect();
        Ok(vec![x.reshape(&shape)])
    }
}

/// Broadcasts to `shape` (numpy rules: the input aligns to the right and
/// each of its dims equals the target's or is 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expand {
    pub shape: Vec<Dim>,
}

impl OpImpl for Expand {
    fn name(&self) -> &'static str {
        "expand"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("shape", Attr::dims(&self.shape))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("expand", inputs, 1)?;
        super::no_negative_dims("expand", "shape", &self.shape)?;
        let x = &inputs[0];
        let target = Shape(self.shape.clone());
        let off = target.rank().checked_sub(x.rank());
        let ok = off.is_some_and(|off| {
            x.shape
                .dims()
                .iter()
                .enumerate()
                .all(|(i, d)| d.is(1) || *d == target.dims()[off + i])
        });
        if !ok {
            return Err(format!("expand: cannot broadcast {x} to {target}"));
        }
        Ok(vec![TensorType::new(x.dtype, target)])
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let shape = cx.shape(&self.shape)?;
        let off = shape
            .len()
            .checked_sub(x.rank())
            .ok_or("expand: target rank is smaller")?;
        for (i, &d) in x.shape().iter().enumerate() {
            if d != 1 && d != shape[off + i] {
                return Err(format!("expand: cannot broadcast {:?} to {shape:?}", x.shape()));
            }
        }
        Ok(vec![x.take_flat(&shape, &broadcast_map(x.shape(), &shape))])
    }
}

/// `triu`/`tril` over the last two axes: keeps elements with `j - i >= k`
/// (upper) or `j - i <= k` (lower) and zeroes the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Triangular {
    pub upper: bool,
    pub k: i64,
}

impl OpImpl for Triangular {
    fn name(&self) -> &'static str {
        if self.upper {
            "triu"
        } else {
            "tril"
        }
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("k", Attr::Int(self.k))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(self.name(), inputs, 1)?;
        if inputs[0].rank() < 2 {
            return Err(format!("{} needs rank >= 2, got {}", self.name(), inputs[0]));
        }
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let r = x.rank();
        let (rows, cols) = (x.shape()[r - 2], x.shape()[r - 1]);
        let mut v = x.to_f64_vec();
        for (idx, e) in v.iter_mut().enumerate() {
            let i = (idx / cols.max(1)) % rows.max(1);
            let j = idx % cols.max(1);
            let d = j as i64 - i as i64;
            let keep = if self.upper { d >= self.k } else { d <= self.k };
            if !keep {
                *e = 0.0;
            }
        }
        if x.dtype().is_int() {
            let iv = x.to_i64_vec();
            let out: Vec<i64> = iv
                .iter()
                .zip(&v)
                .map(|(&a, &b)| if b == 0.0 { 0 } else { a })
                .collect();
            return Ok(vec![Tensor::from_i64(x.dtype(), x.shape(), &out)]);
        }
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}
