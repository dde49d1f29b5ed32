//! Tensor factories: `arange`, `full`/`ones`/`zeros`, their `new_*` and
//! `*_like` forms, and `scalar_tensor`. The dtype is the one torch recorded
//! (its defaults: i64 for integer ranges, f32 for floats).

use optc_ir::ops::{Arange, Full, Op, Scalar};
use optc_ir::{DType, Dim, Value};

use super::{one, Lower};
use crate::fx::import::{Cx, Num};
use crate::fx::schema::{Argument, Node};

type R = Result<Vec<Value>, String>;

fn arange(cx: &mut Cx, n: &Node) -> R {
    let float = ["start", "end", "step"]
        .iter()
        .any(|a| matches!(cx.arg(n, a), Some(Argument::AsFloat(_))));
    let dtype = match cx.opt_dtype(n, "dtype")? {
        Some(d) => d,
        None if float => DType::F32,
        None => DType::I64,
    };
    let bound = |cx: &Cx, name: &str, default: Option<Dim>| -> Result<Dim, String> {
        match cx.arg(n, name) {
            Some(Argument::AsFloat(f)) if f.fract() == 0.0 => Ok(Dim::constant(*f as i64)),
            Some(Argument::AsFloat(f)) => {
                Err(format!("arange with the fractional {name} {f} is not supported"))
            }
            _ => cx.dim(n, name, default),
        }
    };
    let start = bound(cx, "start", Some(Dim::constant(0)))?;
    let end = bound(cx, "end", None)?;
    let step = bound(cx, "step", Some(Dim::constant(1)))?;
    let step = step.as_const().ok_or("arange with a symbolic step")?;
    one(cx.op(
        Op::Arange(Arange {
            start,
            end,
            step,
            dtype,
        }),
        &[],
    )?)
}

/// The factory's dtype: the `dtype` argument, else `self`'s for the
/// `new_*`/`*_like` forms, else torch's default for the fill value.
fn fill_dtype(cx: &Cx, n: &Node, value: Num) -> Result<DType, String> {
    if let Some(d) = cx.opt_dtype(n, "dtype")? {
        return Ok(d);
    }
    if cx.arg(n, "self").is_some() {
        return Ok(cx.ty(cx.tensor(n, "self")?).dtype);
    }
    Ok(match value {
        Num::Bool(_) => DType::Bool,
        Num::Int(_) if cx.arg(n, "fill_value").is_some() => DType::I64,
        _ => DType::F32,
    })
}

fn fill(cx: &mut Cx, n: &Node, shape: Vec<Dim>, value: Num) -> R {
    let dtype = fill_dtype(cx, n, value)?;
    let value = match value {
        Num::Float(f) if dtype.is_float() => Scalar::Float(f),
        Num::Float(f) if f.fract() == 0.0 => Scalar::Int(f as i64),
        Num::Float(f) => return Err(format!("fill value {f} for a {dtype} tensor")),
        Num::Int(i) if dtype.is_float() => Scalar::Float(i as f64),
        Num::Int(i) => Scalar::Int(i),
        Num::Bool(b) if dtype.is_float() => Scalar::Float(b as i64 as f64),
        Num::Bool(b) => Scalar::Int(b as i64),
    };
    one(cx.op(Op::Full(Full { shape, value, dtype }), &[])?)
}

fn fill_value(cx: &Cx, n: &Node) -> Result<Num, String> {
    cx.number(n, "fill_value")?
        .ok_or_else(|| "fill_value is not a number".into())
}

fn full(cx: &mut Cx, n: &Node) -> R {
    let shape = cx.dims(n, "size")?;
    let v = fill_value(cx, n)?;
    fill(cx, n, shape, v)
}

fn ones(cx: &mut Cx, n: &Node) -> R {
    let shape = cx.dims(n, "size")?;
    fill(cx, n, shape, Num::Int(1))
}

fn zeros(cx: &mut Cx, n: &Node) -> R {
    let shape = cx.dims(n, "size")?;
    fill(cx, n, shape, Num::Int(0))
}

fn new_full(cx: &mut Cx, n: &Node) -> R {
    let shape = cx.dims(n, "size")?;
    let v = fill_value(cx, n)?;
    fill(cx, n, shape, v)
}

fn like_shape(cx: &Cx, n: &Node) -> Result<Vec<Dim>, String> {
    let x = cx.tensor(n, "self")?;
    Ok(cx.ty(x).shape.dims().to_vec())
}

fn full_like(cx: &mut Cx, n: &Node) -> R {
    let shape = like_shape(cx, n)?;
    let v = fill_value(cx, n)?;
    fill(cx, n, shape, v)
}

fn ones_like(cx: &mut Cx, n: &Node) -> R {
    let shape = like_shape(cx, n)?;
    fill(cx, n, shape, Num::Int(1))
}

fn zeros_like(cx: &mut Cx, n: &Node) -> R {
    let shape = like_shape(cx, n)?;
    fill(cx, n, shape, Num::Int(0))
}

fn scalar_tensor(cx: &mut Cx, n: &Node) -> R {
    let dtype = cx.opt_dtype(n, "dtype")?.unwrap_or(DType::F32);
    let v = cx.number(n, "s")?.ok_or("scalar_tensor of a non-number")?;
    one(cx.constant(v, dtype)?)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.arange.default", arange),
    ("aten.arange.start", arange),
    ("aten.arange.start_step", arange),
    ("aten.full.default", full),
    ("aten.ones.default", ones),
    ("aten.zeros.default", zeros),
    ("aten.new_ones.default", ones),
    ("aten.new_zeros.default", zeros),
    ("aten.new_full.default", new_full),
    ("aten.full_like.default", full_like),
    ("aten.ones_like.default", ones_like),
    ("aten.zeros_like.default", zeros_like),
    ("aten.scalar_tensor.default", scalar_tensor),
];
