//! Reductions (`mean`, `sum`, `amax`, `amin`, `argmax`) and scans
//! (`cumsum`, `diff`).

use optc_ir::ops::{ArgMax, BinaryKind, CompareKind, Concat, CumSum, Op, Reduce, ReduceKind, Slice};
use optc_ir::{DType, Value};

use super::{one, Lower};
use crate::fx::import::Cx;
use crate::fx::schema::Node;

type R = Result<Vec<Value>, String>;

/// The accumulation dtype: the `dtype` argument, else i64 for sums of
/// integers and bools (torch's rule), else the input's.
fn sum_dtype(cx: &Cx, n: &Node, x: Value, sums: bool) -> Result<DType, String> {
    let d = cx.ty(x).dtype;
    Ok(match cx.opt_dtype(n, "dtype")? {
        Some(t) => t,
        None if sums && !d.is_float() => DType::I64,
        None => d,
    })
}

fn reduce(cx: &mut Cx, n: &Node, kind: ReduceKind) -> R {
    let x = cx.tensor(n, "self")?;
    let dt = sum_dtype(cx, n, x, kind == ReduceKind::Sum)?;
    let x = cx.cast(x, dt)?;
    let axes = cx.ints(n, "dim", Some(&[]))?;
    let keepdims = cx.bool(n, "keepdim", Some(false))?;
    one(cx.op(Op::Reduce(Reduce { kind, axes, keepdims }), &[x])?)
}

fn mean(cx: &mut Cx, n: &Node) -> R {
    reduce(cx, n, ReduceKind::Mean)
}

fn sum(cx: &mut Cx, n: &Node) -> R {
    reduce(cx, n, ReduceKind::Sum)
}

fn amax(cx: &mut Cx, n: &Node) -> R {
    reduce(cx, n, ReduceKind::Max)
}

fn amin(cx: &mut Cx, n: &Node) -> R {
    reduce(cx, n, ReduceKind::Min)
}

fn argmax(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let keepdims = cx.bool(n, "keepdim", Some(false))?;
    match cx.opt_int(n, "dim")? {
        Some(axis) => one(cx.op(Op::ArgMax(ArgMax { axis, keepdims }), &[x])?),
        None => Err("argmax over the flattened tensor (no dim) is not supported".into()),
    }
}

fn cumsum(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dt = sum_dtype(cx, n, x, true)?;
    let x = cx.cast(x, dt)?;
    let axis = cx.int(n, "dim", None)?;
    one(cx.op(Op::CumSum(CumSum { axis }), &[x])?)
}

/// `diff(self, n=1, dim=-1, prepend, append)`: `y[i] = x[i+1] - x[i]` over
/// `cat(prepend, x, append)`; for bool, `x[i+1] != x[i]` as torch does.
fn diff(cx: &mut Cx, n: &Node) -> R {
    let order = cx.int(n, "n", Some(1))?;
    if order != 1 {
        return Err(format!("diff of order {order} is not supported"));
    }
    let axis = cx.int(n, "dim", Some(-1))?;
    let mut parts = Vec::new();
    parts.extend(cx.opt_tensor(n, "prepend")?);
    parts.push(cx.tensor(n, "self")?);
    parts.extend(cx.opt_tensor(n, "append")?);
    let x = if parts.len() == 1 {
        parts[0]
    } else {
        cx.op(Op::Concat(Concat { axis }), &parts)?
    };
    let hi = cx.op(
        Op::Slice(Slice {
            axis,
            start: 1,
            end: None,
            step: 1,
        }),
        &[x],
    )?;
    let lo = cx.op(
        Op::Slice(Slice {
            axis,
            start: 0,
            end: Some(-1),
            step: 1,
        }),
        &[x],
    )?;
    if cx.ty(x).dtype == DType::Bool {
        return one(cx.op(Op::Compare(CompareKind::NotEqual), &[hi, lo])?);
    }
    one(cx.op(Op::Binary(BinaryKind::Sub), &[hi, lo])?)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.mean.dim", mean),
    ("aten.mean.default", mean),
    ("aten.sum.dim_IntList", sum),
    ("aten.sum.default", sum),
    ("aten.amax.default", amax),
    ("aten.amin.default", amin),
    ("aten.argmax.default", argmax),
    ("aten.cumsum.default", cumsum),
    ("aten.diff.default", diff),
];
