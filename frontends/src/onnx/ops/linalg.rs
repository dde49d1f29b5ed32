//! Matrix products.

use optc_ir::ops::{BinaryKind as B, MatMul};
use optc_ir::Op;

use super::super::import::{Cx, NodeCx};
use super::shape::transpose_to;
use super::{binary, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("MatMul", matmul), ("Gemm", gemm)];

fn matmul(cx: &mut Cx, n: &NodeCx) -> R {
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    Ok(vec![cx.op(Op::MatMul(MatMul), &[a, b])?])
}

/// `alpha·A'·B' + beta·C` with optional transposes.
fn gemm(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let beta = n.float("beta", 1.0)?;
    let ta = n.int("transA", 0)? != 0;
    let tb = n.int("transB", 0)? != 0;
    if n.opset < 7 && n.has("broadcast") {
        return Err("the opset < 7 broadcast attribute is not supported".into());
    }
    let (mut a, mut b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    if a.rank() != 2 || b.rank() != 2 {
        return Err(format!("A and B must be 2-D, got ranks {} and {}", a.rank(), b.rank()).into());
    }
    if ta {
        a = transpose_to(cx, &a, vec![1, 0])?;
    }
    if tb {
        b = transpose_to(cx, &b, vec![1, 0])?;
    }
    let mut y = cx.op(Op::MatMul(MatMul), &[a, b])?;
    if alpha != 1.0 {
        y = with_scalar(cx, B::Mul, &y, alpha)?;
    }
    if let Some(c) = cx.opt_input(n, 2)? {
        let c = if beta != 1.0 {
            with_scalar(cx, B::Mul, &c, beta)?
        } else {
            c
        };
        y = binary(cx, B::Add, &y, &c)?;
    }
    Ok(vec![y])
}
