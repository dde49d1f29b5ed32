//! Normalisations and softmax-like ops. Where the IR has the op (softmax,
//! layer_norm, rms_norm) it is used directly; the rest are built from IR
//! reductions and arithmetic, as the ONNX function bodies define them.

use optc_ir::ops::{
    ArgMax, BinaryKind as B, CompareKind as C, LayerNorm, Reduce, ReduceKind as K, RmsNorm, Softmax,
    UnaryKind as U,
};
use optc_ir::{DType, Dim, Op};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::{axis, binary, compare, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("Softmax", |cx, n| softmax(cx, n, Flavor::Soft)),
    ("LogSoftmax", |cx, n| softmax(cx, n, Flavor::Log)),
    ("Hardmax", |cx, n| softmax(cx, n, Flavor::Hard)),
    ("LayerNormalization", layer_norm),
    ("RMSNormalization", rms_norm),
    ("BatchNormalization", batch_norm),
    ("InstanceNormalization", instance_norm),
    ("GroupNormalization", group_norm),
    ("LpNormalization", lp_norm),
    ("MeanVarianceNormalization", mean_variance_norm),
];

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Soft,
    Log,
    Hard,
}

fn softmax(cx: &mut Cx, n: &NodeCx, f: Flavor) -> R {
    let x = cx.input(n, 0)?;
    let old = n.opset < 13;
    let a = axis(n.int("axis", if old { 1 } else { -1 })?, x.rank())?;
    // Before opset 13 the input is viewed as 2-D [prod(..axis), prod(axis..)].
    let (v, ax) = if old && a + 1 != x.rank() {
        let (lo, hi) = x.dims().split_at(a);
        let p = |d: &[Dim]| d.iter().fold(Dim::constant(1), |acc, e| &acc * e);
        (cx.reshape(&x, vec![p(lo), p(hi)])?, 1)
    } else {
        (x.clone(), a)
    };
    let y = match f {
        Flavor::Soft | Flavor::Log => {
            want_float(n, &v)?;
            cx.op(
                Op::Softmax(Softmax {
                    axis: ax as i64,
                    log: f == Flavor::Log,
                }),
                std::slice::from_ref(&v),
            )?
        }
        Flavor::Hard => hardmax(cx, &v, ax)?,
    };
    Ok(vec![cx.reshape(&y, x.dims().to_vec())?])
}

/// One-hot of the first maximum along `a`.
fn hardmax(cx: &mut Cx, x: &Val, a: usize) -> Result<Val, NodeError> {
    let idx = cx.op(
        Op::ArgMax(ArgMax {
            axis: a as i64,
            keepdims: true,
        }),
        std::slice::from_ref(x),
    )?;
    let extent = x.dims()[a].clone();
    let ar = cx.op(
        Op::Arange(optc_ir::ops::Arange {
            start: Dim::constant(0),
            end: extent.clone(),
            step: 1,
            dtype: DType::I64,
        }),
        &[],
    )?;
    let mut dims = vec![Dim::constant(1); x.rank()];
    dims[a] = extent;
    let ar = cx.reshape(&ar, dims)?;
    let hot = compare(cx, C::Equal, &idx, &ar)?;
    cx.cast(&hot, x.dtype())
}

fn mean_over(cx: &mut Cx, x: &Val, axes: Vec<i64>) -> Result<Val, NodeError> {
    cx.op(
        Op::Reduce(Reduce {
            kind: K::Mean,
            axes,
            keepdims: true,
        }),
        std::slice::from_ref(x),
    )
}

/// `(x - mean) / sqrt(var + eps)` over `axes`, plus mean and 1/std.
fn standardize(cx: &mut Cx, x: &Val, axes: Vec<i64>, eps: f64) -> Result<(Val, Val, Val), NodeError> {
    let mean = mean_over(cx, x, axes.clone())?;
    let d = binary(cx, B::Sub, x, &mean)?;
    let sq = binary(cx, B::Mul, &d, &d)?;
    let var = mean_over(cx, &sq, axes)?;
    let var = with_scalar(cx, B::Add, &var, eps)?;
    let inv = unary(cx, U::Rsqrt, &var)?;
    let y = binary(cx, B::Mul, &d, &inv)?;
    Ok((y, mean, inv))
}

/// The compute dtype for `stash_type` (1 = f32; values below f32 widen).
fn stash(n: &NodeCx, x: &Val) -> Result<DType, NodeError> {
    let code = n.int("stash_type", 1)?;
    let s = super::dtype_attr(code)?;
    Ok(if x.dtype() == DType::F64 { DType::F64 } else { s })
}

fn layer_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let eps = n.float("epsilon", 1e-5)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let a = axis(n.int("axis", -1)?, x.rank())?;
    let scale = cx.input(n, 1)?;
    let bias = cx.opt_input(n, 2)?;
    let stash_t = stash(n, &x)?;
    let norm_dims = &x.dims()[a..];
    let extra_outputs = n.node.output.iter().skip(1).any(|o| !o.is_empty());
    let exact = |v: &Val| v.dims() == norm_dims && v.dtype() == x.dtype();
    if !extra_outputs && exact(&scale) && bias.as_ref().is_none_or(exact) {
        let mut args = vec![x, scale];
        args.extend(bias);
        return Ok(vec![
            cx.op(Op::LayerNorm(LayerNorm { axis: a as i64, eps }), &args)?
        ]);
    }
    let xs = cx.cast(&x, stash_t)?;
    let axes: Vec<i64> = (a as i64..x.rank() as i64).collect();
    let (y, mean, inv) = standardize(cx, &xs, axes, eps)?;
    let y = cx.cast(&y, x.dtype())?;
    let mut y = binary(cx, B::Mul, &y, &scale)?;
    if let Some(b) = bias {
        y = binary(cx, B::Add, &y, &b)?;
    }
    Ok(vec![y, mean, inv])
}

fn rms_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let eps = n.float("epsilon", 1e-5)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let a = axis(n.int("axis", -1)?, x.rank())?;
    let scale = cx.input(n, 1)?;
    let stash_t = stash(n, &x)?;
    if scale.dims() == &x.dims()[a..] && scale.dtype() == x.dtype() {
        return Ok(vec![
            cx.op(Op::RmsNorm(RmsNorm { axis: a as i64, eps }), &[x, scale])?
        ]);
    }
    let xs = cx.cast(&x, stash_t)?;
    let sq = binary(cx, B::Mul, &xs, &xs)?;
    let ms = mean_over(cx, &sq, (a as i64..x.rank() as i64).collect())?;
    let ms = with_scalar(cx, B::Add, &ms, eps)?;
    let inv = unary(cx, U::Rsqrt, &ms)?;
    let y = binary(cx, B::Mul, &xs, &inv)?;
    let y = cx.cast(&y, x.dtype())?;
    Ok(vec![binary(cx, B::Mul, &y, &scale)?])
}

/// A per-channel vector `[C]` shaped to broadcast against `[N, C, ...]`.
fn per_channel(cx: &mut Cx, v: &Val, rank: usize) -> Result<Val, NodeError> {
    let mut dims = vec![Dim::constant(1); rank];
    if rank > 1 {
        dims[1] = v.dims().first().cloned().unwrap_or(Dim::constant(1));
    }
    cx.reshape(v, dims)
}

fn batch_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let eps = n.float("epsilon", 1e-5)?;
    let momentum = n.float("momentum", 0.9)?;
    let training = n.int("training_mode", 0)? != 0;
    if n.has("spatial") && n.int("spatial", 1)? != 1 {
        return unsupported("BatchNormalization spatial=0 is not supported");
    }
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let r = x.rank();
    let scale = cx.input(n, 1)?;
    let bias = cx.input(n, 2)?;
    let mean = cx.input(n, 3)?;
    let var = cx.input(n, 4)?;
    let [scale, bias, mean, var] = [scale, bias, mean, var].map(|v| per_channel(cx, &v, r));
    let (scale, bias, mean, var) = (scale?, bias?, mean?, var?);
    // Training mode normalises with the batch's statistics (mean and
    // population variance over every axis but the channels) and also
    // returns the running statistics blended with `momentum`.
    let (use_mean, use_var, running) = if training {
        let axes: Vec<i64> = (0..r as i64).filter(|&a| a != 1).collect();
        let bmean = mean_over(cx, &x, axes.clone())?;
        let d = binary(cx, B::Sub, &x, &bmean)?;
        let sq = binary(cx, B::Mul, &d, &d)?;
        let bvar = mean_over(cx, &sq, axes)?;
        let blend = |cx: &mut Cx, old: &Val, new: &Val| -> Result<Val, NodeError> {
            let a = with_scalar(cx, B::Mul, old, momentum)?;
            let b = with_scalar(cx, B::Mul, new, 1.0 - momentum)?;
            let s = binary(cx, B::Add, &a, &b)?;
            let channels = n_channels(old);
            cx.reshape(&s, vec![channels])
        };
        let rm = blend(cx, &mean, &bmean)?;
        let rv = blend(cx, &var, &bvar)?;
        (bmean, bvar, vec![rm, rv])
    } else {
        (mean, var, vec![])
    };
    let d = binary(cx, B::Sub, &x, &use_mean)?;
    let v = with_scalar(cx, B::Add, &use_var, eps)?;
    let inv = unary(cx, U::Rsqrt, &v)?;
    let y = binary(cx, B::Mul, &d, &inv)?;
    let y = binary(cx, B::Mul, &y, &scale)?;
    let mut outs = vec![binary(cx, B::Add, &y, &bias)?];
    outs.extend(running);
    Ok(outs)
}

/// The channel extent of a per-channel value `[1, C, 1, …]`.
fn n_channels(v: &Val) -> Dim {
    v.dims().get(1).cloned().unwrap_or(Dim::constant(1))
}

fn instance_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let eps = n.float("epsilon", 1e-5)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let r = x.rank();
    let (scale, bias) = (cx.input(n, 1)?, cx.input(n, 2)?);
    let (y, _, _) = standardize(cx, &x, (2..r as i64).collect(), eps)?;
    let scale = per_channel(cx, &scale, r)?;
    let bias = per_channel(cx, &bias, r)?;
    let y = binary(cx, B::Mul, &y, &scale)?;
    Ok(vec![binary(cx, B::Add, &y, &bias)?])
}

fn group_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let eps = n.float("epsilon", 1e-5)?;
    let groups = n.req_int("num_groups")?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let stash_t = stash(n, &x)?;
    let (scale, bias) = (cx.input(n, 1)?, cx.input(n, 2)?);
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        return Err("input must have rank >= 2".into());
    }
    let g = Dim::constant(groups);
    let rest = dims[1..].iter().fold(Dim::constant(1), |a, d| &a * d);
    let per = rest
        .div_exact(&g)
        .ok_or("channels are not divisible by num_groups")?;
    let xs = cx.cast(&x, stash_t)?;
    let grouped = cx.reshape(&xs, vec![dims[0].clone(), g.clone(), per])?;
    let (y, _, _) = standardize(cx, &grouped, vec![2], eps)?;
    let y = cx.reshape(&y, dims.clone())?;
    let y = cx.cast(&y, x.dtype())?;
    // Opset 18 takes scale/bias per group, 21 per channel.
    let expand = |cx: &mut Cx, v: &Val| -> Result<Val, NodeError> {
        if v.dims().first() == Some(&g) && dims[1] != g {
            let c = dims[1].clone();
            let k = c
                .div_exact(&g)
                .ok_or("channels are not divisible by num_groups")?;
            let v2 = cx.reshape(v, vec![g.clone(), Dim::constant(1)])?;
            let v2 = super::shape::expand_to(cx, &v2, vec![g.clone(), k])?;
            let v2 = cx.reshape(&v2, vec![c])?;
            per_channel(cx, &v2, dims.len())
        } else {
            per_channel(cx, v, dims.len())
        }
    };
    let scale = expand(cx, &scale)?;
    let bias = expand(cx, &bias)?;
    let y = binary(cx, B::Mul, &y, &scale)?;
    Ok(vec![binary(cx, B::Add, &y, &bias)?])
}

fn lp_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let a = axis(n.int("axis", -1)?, x.rank())? as i64;
    let p = n.int("p", 2)?;
    let sum = |cx: &mut Cx, v: &Val| {
        cx.op(
            Op::Reduce(Reduce {
                kind: K::Sum,
                axes: vec![a],
                keepdims: true,
            }),
            std::slice::from_ref(v),
        )
    };
    let norm = match p {
        1 => {
            let ab = unary(cx, U::Abs, &x)?;
            sum(cx, &ab)?
        }
        2 => {
            let sq = binary(cx, B::Mul, &x, &x)?;
            let s = sum(cx, &sq)?;
            unary(cx, U::Sqrt, &s)?
        }
        p => return Err(format!("p must be 1 or 2, got {p}").into()),
    };
    // A zero norm gives zero (not NaN), as the reference does.
    let zero = cx.scalar(0.0, x.dtype());
    let is_zero = compare(cx, C::Equal, &norm, &zero)?;
    let one = cx.scalar(1.0, x.dtype());
    let safe = super::select(cx, &is_zero, &one, &norm)?;
    Ok(vec![binary(cx, B::Div, &x, &safe)?])
}

fn mean_variance_norm(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let axes = n.opt_ints("axes")?.unwrap_or_else(|| vec![0, 2, 3]);
    let mean = mean_over(cx, &x, axes.clone())?;
    let d = binary(cx, B::Sub, &x, &mean)?;
    let sq = binary(cx, B::Mul, &d, &d)?;
    let var = mean_over(cx, &sq, axes)?;
    let sd = unary(cx, U::Sqrt, &var)?;
    let sd = with_scalar(cx, B::Add, &sd, 1e-9)?;
    Ok(vec![binary(cx, B::Div, &d, &sd)?])
}
