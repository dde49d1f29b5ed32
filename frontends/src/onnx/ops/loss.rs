//! Classification losses: `NegativeLogLikelihoodLoss` and
//! `SoftmaxCrossEntropyLoss`, with the class picked by a one-hot compare
//! against `arange(C)` (no gather of run-time indices needed).

use optc_ir::ops::{
    Arange, BinaryKind as B, CompareKind as C, Reduce, ReduceKind as K, Softmax, UnaryKind as U,
};
use optc_ir::{DType, Dim, Op};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::{binary, compare, unary, want_float, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("NegativeLogLikelihoodLoss", nll_loss),
    ("SoftmaxCrossEntropyLoss", softmax_cross_entropy),
];

fn sum(cx: &mut Cx, x: &Val, axes: Vec<i64>) -> Result<Val, NodeError> {
    cx.op(
        Op::Reduce(Reduce {
            kind: K::Sum,
            axes,
            keepdims: false,
        }),
        std::slice::from_ref(x),
    )
}

/// The per-element loss `-x[n, t, ...]·w[t]` (0 where `t == ignore_index`)
/// and the weights that count for the mean.
fn nll(cx: &mut Cx, n: &NodeCx, x: &Val, target: &Val, weight: Option<Val>) -> R {
    let reduction = n.string("reduction", "mean")?;
    let ignore = n.opt_int("ignore_index")?;
    want_float(n, x)?;
    if x.rank() < 2 || target.rank() + 1 != x.rank() {
        return Err(format!(
            "input {} and target {} do not fit [N, C, ...] / [N, ...]",
            x.ty, target.ty
        )
        .into());
    }
    let classes = x.dims()[1].clone();
    let dt = x.dtype();
    // one_hot[n, c, ...] = (target[n, ...] == c)
    let t = cx.cast(target, DType::I64)?;
    let mut tdims = t.dims().to_vec();
    tdims.insert(1, Dim::constant(1));
    let t1 = cx.reshape(&t, tdims)?;
    let ar = cx.op(
        Op::Arange(Arange {
            start: Dim::constant(0),
            end: classes.clone(),
            step: 1,
            dtype: DType::I64,
        }),
        &[],
    )?;
    let mut adims = vec![Dim::constant(1); x.rank()];
    adims[1] = classes.clone();
    let ar = cx.reshape(&ar, adims.clone())?;
    let hot = compare(cx, C::Equal, &t1, &ar)?;
    let hot = cx.cast(&hot, dt)?;
    let picked = binary(cx, B::Mul, x, &hot)?;
    let picked = sum(cx, &picked, vec![1])?;
    // Weight of each element's class (1 without weights), 0 where ignored.
    let mut w = match weight {
        Some(wv) => {
            let wv = cx.reshape(&wv, adims)?;
            let wh = binary(cx, B::Mul, &hot, &wv)?;
            sum(cx, &wh, vec![1])?
        }
        None => cx.op(
            Op::Full(optc_ir::ops::Full {
                shape: picked.dims().to_vec(),
                value: optc_ir::ops::Scalar::Float(1.0),
                dtype: dt,
            }),
            &[],
        )?,
    };
    if let Some(ii) = ignore {
        let iv = cx.scalar(ii as f64, DType::I64);
        let keep = compare(cx, C::NotEqual, &t, &iv)?;
        let keep = cx.cast(&keep, dt)?;
        w = binary(cx, B::Mul, &w, &keep)?;
    }
    let loss = binary(cx, B::Mul, &picked, &w)?;
    let loss = unary(cx, U::Neg, &loss)?;
    let out = match reduction.as_str() {
        "none" => loss,
        "sum" => sum(cx, &loss, vec![])?,
        "mean" => {
            let total = sum(cx, &loss, vec![])?;
            let count = sum(cx, &w, vec![])?;
            binary(cx, B::Div, &total, &count)?
        }
        r => return Err(format!("reduction must be none, sum or mean, got {r:?}").into()),
    };
    Ok(vec![out])
}

fn nll_loss(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, t) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let w = cx.opt_input(n, 2)?;
    nll(cx, n, &x, &t, w)
}

fn softmax_cross_entropy(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, t) = (cx.input(n, 0)?, cx.input(n, 1)?);
    want_float(n, &x)?;
    let w = cx.opt_input(n, 2)?;
    let logp = cx.op(
        Op::Softmax(Softmax { axis: 1, log: true }),
        std::slice::from_ref(&x),
    )?;
    let mut out = nll(cx, n, &logp, &t, w)?;
    out.push(logp);
    Ok(out)
}
