//! Reductions, arg-reductions and scans.

use optc_ir::ops::{
    ArgMax, BinaryKind as B, Concat, CumProd, CumSum, Full, Reduce, ReduceKind as K, Scalar, UnaryKind as U,
};
use optc_ir::{DType, Op, Tensor};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::shape::slice_axis;
use super::{axis, binary, dim_axis, unary, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("ReduceSum", |cx, n| reduce(cx, n, Kind::Plain(K::Sum), 13)),
    ("ReduceMean", |cx, n| reduce(cx, n, Kind::Plain(K::Mean), 18)),
    ("ReduceMax", |cx, n| reduce(cx, n, Kind::Plain(K::Max), 18)),
    ("ReduceMin", |cx, n| reduce(cx, n, Kind::Plain(K::Min), 18)),
    ("ReduceProd", |cx, n| reduce(cx, n, Kind::Plain(K::Prod), 18)),
    ("ReduceL1", |cx, n| reduce(cx, n, Kind::L1, 18)),
    ("ReduceL2", |cx, n| reduce(cx, n, Kind::L2, 18)),
    ("ReduceSumSquare", |cx, n| reduce(cx, n, Kind::SumSquare, 18)),
    ("ReduceLogSum", |cx, n| reduce(cx, n, Kind::LogSum, 18)),
    ("ReduceLogSumExp", |cx, n| reduce(cx, n, Kind::LogSumExp, 18)),
    ("ArgMax", |cx, n| arg(cx, n, false)),
    ("ArgMin", |cx, n| arg(cx, n, true)),
    ("CumSum", cumsum),
    ("CumProd", cumprod),
];

/// The ONNX reductions: IR reductions, some with a map before or after.
#[derive(Clone, Copy)]
enum Kind {
    Plain(K),
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

fn reduce(cx: &mut Cx, n: &NodeCx, kind: Kind, axes_input_since: i64) -> R {
    let keepdims = n.int("keepdims", 1)? != 0;
    let noop = n.int("noop_with_empty_axes", 0)? != 0;
    let x = cx.input(n, 0)?;
    let axes = if n.opset < axes_input_since {
        n.opt_ints("axes")?
    } else {
        cx.static_ints(n, 1)?
    };
    let axes = axes.unwrap_or_default();
    if axes.is_empty() && noop {
        return Ok(vec![x]);
    }
    for &a in &axes {
        axis(a, x.rank())?;
    }
    let red = |cx: &mut Cx, k: K, v: &Val| -> Result<Val, NodeError> {
        cx.op(
            Op::Reduce(Reduce {
                kind: k,
                axes: axes.clone(),
                keepdims,
            }),
            std::slice::from_ref(v),
        )
    };
    let y = match kind {
        Kind::Plain(k @ (K::Max | K::Min)) if x.dtype() == DType::Bool => {
            // any / all: through u8.
            let b = cx.cast(&x, DType::U8)?;
            let r = red(cx, k, &b)?;
            cx.cast(&r, DType::Bool)?
        }
        Kind::Plain(K::Mean) if !x.dtype().is_float() => {
            // Integer mean: sum, then divide (truncating, as the reference's
            // cast back does).
            let s = red(cx, K::Sum, &x)?;
            let count: i64 = reduced_count(&x, &axes)?;
            with_scalar(cx, B::Div, &s, count as f64)?
        }
        Kind::Plain(k) => red(cx, k, &x)?,
        Kind::L1 => {
            let a = unary(cx, U::Abs, &x)?;
            red(cx, K::Sum, &a)?
        }
        Kind::L2 => {
            let sq = binary(cx, B::Mul, &x, &x)?;
            let s = red(cx, K::Sum, &sq)?;
            if x.dtype().is_float() {
                unary(cx, U::Sqrt, &s)?
            } else {
                let f = cx.cast(&s, DType::F64)?;
                let r = unary(cx, U::Sqrt, &f)?;
                cx.cast(&r, x.dtype())?
            }
        }
        Kind::SumSquare => {
            let sq = binary(cx, B::Mul, &x, &x)?;
            red(cx, K::Sum, &sq)?
        }
        Kind::LogSum => {
            let s = red(cx, K::Sum, &x)?;
            unary(cx, U::Log, &s)?
        }
        Kind::LogSumExp => {
            // max + log(sum(exp(x - max))), with the max kept finite so an
            // all -inf slice gives -inf rather than NaN.
            let m = cx.op(
                Op::Reduce(Reduce {
                    kind: K::Max,
                    axes: axes.clone(),
                    keepdims: true,
                }),
                std::slice::from_ref(&x),
            )?;
            let zero = cx.scalar(0.0, x.dtype());
            let finite = binary(cx, B::Sub, &m, &m)?;
            let ok = super::compare(cx, optc_ir::ops::CompareKind::Equal, &finite, &zero)?;
            let m = super::select(cx, &ok, &m, &zero)?;
            let d = binary(cx, B::Sub, &x, &m)?;
            let e = unary(cx, U::Exp, &d)?;
            let s = red(cx, K::Sum, &e)?;
            let l = unary(cx, U::Log, &s)?;
            let m = if keepdims { m } else { red(cx, K::Max, &m)? };
            binary(cx, B::Add, &l, &m)?
        }
    };
    Ok(vec![y])
}

fn reduced_count(x: &Val, axes: &[i64]) -> Result<i64, NodeError> {
    let r = x.rank();
    let picked: Vec<usize> = if axes.is_empty() {
        (0..r).collect()
    } else {
        axes.iter().map(|&a| dim_axis(a, r)).collect::<Result<_, _>>()?
    };
    picked
        .iter()
        .map(|&a| {
            x.dims()[a]
                .as_const()
                .ok_or_else(|| NodeError::Unsupported("integer mean over a symbolic axis".into()))
        })
        .product()
}

/// Reverses one axis.
fn flip(cx: &mut Cx, x: &Val, a: usize) -> Result<Val, NodeError> {
    slice_axis(cx, x, a, -1, i64::MIN, -1)
}

fn arg(cx: &mut Cx, n: &NodeCx, min: bool) -> R {
    let x = cx.input(n, 0)?;
    let a = axis(n.int("axis", 0)?, x.rank())?;
    if x.rank() == 0 {
        return Err(format!(
            "{} needs a tensor of rank 1 or more, got {}",
            n.node.op_type, x.ty
        )
        .into());
    }
    let keepdims = n.int("keepdims", 1)? != 0;
    let last = n.int("select_last_index", 0)? != 0;
    let mut v = x.clone();
    if min {
        // An order-reversing map: negation for floats, bitwise not for
        // integers (no overflow at the type's minimum).
        v = if x.dtype().is_float() {
            unary(cx, U::Neg, &v)?
        } else {
            let ones = cx.konst(Tensor::from_i64(x.dtype(), &[], &[-1]));
            binary(cx, B::BitXor, &v, &ones)?
        };
    }
    if last {
        v = flip(cx, &v, a)?;
    }
    let mut idx = cx.op(
        Op::ArgMax(ArgMax {
            axis: a as i64,
            keepdims,
        }),
        &[v],
    )?;
    if last {
        let extent = x.dims()[a].clone();
        let top = match extent.as_const() {
            Some(e) => cx.scalar((e - 1) as f64, DType::I64),
            None => {
                let d = cx.dims_val(vec![&extent - &optc_ir::Dim::constant(1)]);
                cx.reshape(&d, vec![])?
            }
        };
        idx = binary(cx, B::Sub, &top, &idx)?;
    }
    Ok(vec![idx])
}

/// What CumSum and CumProd share: the input, the axis (a static input),
/// and the `exclusive` and `reverse` flags.
fn scan_operands(cx: &mut Cx, n: &NodeCx) -> Result<(Val, usize, bool, bool), NodeError> {
    let exclusive = n.int("exclusive", 0)? != 0;
    let reverse = n.int("reverse", 0)? != 0;
    let x = cx.input(n, 0)?;
    let a = cx.static_ints(n, 1)?.ok_or("axis missing")?;
    let a = axis(*a.first().ok_or("axis is empty")?, x.rank())?;
    if x.rank() == 0 {
        return Err(format!(
            "{} needs a tensor of rank 1 or more, got {}",
            n.node.op_type, x.ty
        )
        .into());
    }
    Ok((x, a, exclusive, reverse))
}

fn cumsum(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, a, exclusive, reverse) = scan_operands(cx, n)?;
    let mut v = x.clone();
    if reverse {
        v = flip(cx, &v, a)?;
    }
    let mut y = cx.op(Op::CumSum(CumSum { axis: a as i64 }), std::slice::from_ref(&v))?;
    if exclusive {
        y = binary(cx, B::Sub, &y, &v)?;
    }
    if reverse {
        y = flip(cx, &y, a)?;
    }
    Ok(vec![y])
}

/// `CumProd`: the IR's `cumprod`, on the reversed axis for `reverse`; for
/// `exclusive` the input is shifted one step along the axis with a 1 in
/// front (a product cannot be undone by division when an element is 0).
fn cumprod(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, a, exclusive, reverse) = scan_operands(cx, n)?;
    let mut v = x.clone();
    if reverse {
        v = flip(cx, &v, a)?;
    }
    if exclusive && !x.dims()[a].is(0) {
        let mut dims = x.dims().to_vec();
        dims[a] = optc_ir::Dim::constant(1);
        let value = if x.dtype().is_float() {
            Scalar::Float(1.0)
        } else {
            Scalar::Int(1)
        };
        let one = cx.op(
            Op::Full(Full {
                shape: dims,
                value,
                dtype: x.dtype(),
            }),
            &[],
        )?;
        let head = slice_axis(cx, &v, a, 0, -1, 1)?;
        v = cx.op(Op::Concat(Concat { axis: a as i64 }), &[one, head])?;
    }
    let mut y = cx.op(Op::CumProd(CumProd { axis: a as i64 }), &[v])?;
    if reverse {
        y = flip(cx, &y, a)?;
    }
    Ok(vec![y])
}
