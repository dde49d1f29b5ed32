//! Ops that make tensors from attributes alone: arange, full, constant.

use super::attrs::{Attr, AttrReader};
use super::{arity, EvalCx, OpImpl};
use crate::dim::{Dim, Shape, TensorType};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// A number attribute that keeps whether it was written as an int, so i64
/// fills are exact and floats keep every bit (NaN equals itself here).
#[derive(Clone, Copy, Debug)]
pub enum Scalar {
    Int(i64),
    Float(f64),
}

impl PartialEq for Scalar {
    fn eq(&self, o: &Scalar) -> bool {
        match (self, o) {
            (Scalar::Int(a), Scalar::Int(b)) => a == b,
            (Scalar::Float(a), Scalar::Float(b)) => a.to_bits() == b.to_bits(),
            _ => false,
        }
    }
}

impl Scalar {
    fn attr(self) -> Attr {
        match self {
            Scalar::Int(i) => Attr::Int(i),
            Scalar::Float(x) => Attr::Float(x),
        }
    }

    fn from_attr(a: Attr) -> Scalar {
        match a {
            Attr::Int(i) => Scalar::Int(i),
            Attr::Float(x) => Scalar::Float(x),
            _ => unreachable!("AttrReader::number returns numbers"),
        }
    }
}

/// `start, start+step, ...` below `end` (above it for a negative step).
/// With symbolic bounds the step must be 1 and the length is `end - start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arange {
    pub start: Dim,
    pub end: Dim,
    pub step: i64,
    pub dtype: DType,
}

impl Arange {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Arange, String> {
        Ok(Arange {
            start: r.dim("start")?,
            end: r.dim("end")?,
            step: r.int_or("step", 1)?,
            dtype: r.dtype("dtype")?,
        })
    }

    fn len_of(start: i64, end: i64, step: i64) -> i64 {
        let (span, step) = (end as i128 - start as i128, step as i128);
        let n = if (step > 0 && span <= 0) || (step < 0 && span >= 0) {
            0
        } else {
            (span + step - step.signum()) / step
        };
        n.min(i64::MAX as i128) as i64
    }
}

impl OpImpl for Arange {
    fn name(&self) -> &'static str {
        "arange"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("start", Attr::dim(&self.start)),
            ("end", Attr::dim(&self.end)),
            ("step", Attr::Int(self.step)),
            ("dtype", Attr::DType(self.dtype)),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("arange", inputs, 0)?;
        if self.step == 0 {
            return Err("arange: step must not be 0".into());
        }
        if self.dtype == DType::Bool {
            return Err("arange cannot produce bool".into());
        }
        let len = match (self.start.as_const(), self.end.as_const()) {
            (Some(s), Some(e)) => Dim::constant(Arange::len_of(s, e, self.step)),
            _ if self.step == 1 => &self.end - &self.start,
            _ => {
                return Err(format!(
                    "arange: step {} with symbolic bounds {}..{} is not supported",
                    self.step, self.start, self.end
                ))
            }
        };
        Ok(vec![TensorType::new(self.dtype, Shape(vec![len]))])
    }

    fn eval(&self, _: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let s = self.start.eval(cx.bindings)?;
        let e = self.end.eval(cx.bindings)?;
        let n = Arange::len_of(s, e, self.step).max(0) as usize;
        super::check_size(&[n])?;
        let v: Vec<i64> = (0..n as i64).map(|i| s + i * self.step).collect();
        Ok(vec![Tensor::from_i64(self.dtype, &[n], &v)])
    }
}

/// A tensor of one repeated value.
#[derive(Clone, Debug, PartialEq)]
pub struct Full {
    pub shape: Vec<Dim>,
    pub value: Scalar,
    pub dtype: DType,
}

impl Full {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Full, String> {
        Ok(Full {
            shape: r.dims("shape")?,
            value: Scalar::from_attr(r.number("value")?),
            dtype: r.dtype("dtype")?,
        })
    }
}

impl OpImpl for Full {
    fn name(&self) -> &'static str {
        "full"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("shape", Attr::dims(&self.shape)),
            ("value", self.value.attr()),
            ("dtype", Attr::DType(self.dtype)),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("full", inputs, 0)?;
        super::no_negative_dims("full", "shape", &self.shape)?;
        Ok(vec![TensorType::new(self.dtype, Shape(self.shape.clone()))])
    }

    fn eval(&self, _: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let shape = cx.shape(&self.shape)?;
        let n = shape.iter().product();
        Ok(vec![match self.value {
            Scalar::Int(i) => Tensor::from_i64(self.dtype, &shape, &vec![i; n]),
            Scalar::Float(x) => Tensor::from_f64(self.dtype, &shape, &vec![x; n]),
        }])
    }
}

/// A literal tensor stored in the graph (small: masks, scalars, tables).
#[derive(Clone, Debug, PartialEq)]
pub struct Constant {
    pub value: Tensor,
}

impl Constant {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Constant, String> {
        let dtype = r.dtype("dtype")?;
        let shape = r.ints("shape")?;
        let (floats, ints) = r.numbers("value")?;
        let shape: Vec<usize> = shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| format!("constant: negative dim {d}")))
            .collect::<Result<_, _>>()?;
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| format!("constant: shape {shape:?} is too large"))?;
        if floats.len() != n {
            return Err(format!(
                "constant: shape {shape:?} needs {n} values but {} were given",
                floats.len()
            ));
        }
        let all_ints = ints.len() == floats.len();
        let value = if all_ints && !dtype.is_float() {
            Tensor::from_i64(dtype, &shape, &ints)
        } else if !dtype.is_float() {
            return Err(format!("constant: {dtype} values must be integers"));
        } else {
            Tensor::from_f64(dtype, &shape, &floats)
        };
        Ok(Constant { value })
    }
}

impl OpImpl for Constant {
    fn name(&self) -> &'static str {
        "constant"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let v = &self.value;
        let values = if v.dtype() == DType::F64 {
            Attr::Floats(v.to_f64_vec())
        } else if v.dtype().is_float() {
            // Every float dtype is a subset of f32: write each value as the
            // shortest decimal that reads back to the same f32.
            Attr::Floats(
                v.to_f32_vec()
                    .into_iter()
                    .map(|x| format!("{x:?}").parse::<f64>().unwrap_or(x as f64))
                    .collect(),
            )
        } else {
            Attr::Ints(v.to_i64_vec())
        };
        vec![
            ("dtype", Attr::DType(v.dtype())),
            ("shape", Attr::Ints(v.shape().iter().map(|&d| d as i64).collect())),
            ("value", values),
        ]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("constant", inputs, 0)?;
        let shape: Vec<i64> = self.value.shape().iter().map(|&d| d as i64).collect();
        Ok(vec![TensorType::new(self.value.dtype(), Shape::of(&shape))])
    }

    fn eval(&self, _: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        Ok(vec![self.value.clone()])
    }
}
