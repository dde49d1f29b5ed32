//! ONNX `SwiGLU` (opset 28): `Swish_alpha(A) · B` with
//! `Swish_alpha(a) = a · sigmoid(alpha · a)`, built from IR elementwise ops
//! in the reference's order (the IR `swiglu` op has no `alpha` and is left
//! to the fusion pass).

use optc_ir::ops::{BinaryKind as B, UnaryKind as U};

use super::super::import::{Cx, NodeCx};
use super::{binary, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("SwiGLU", swiglu)];

/// `a · sigmoid(alpha · a) · b`; the spec forbids broadcasting, so the two
/// inputs must have one type.
fn swiglu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    want_float(n, &a)?;
    if a.ty != b.ty {
        return Err(format!(
            "SwiGLU inputs must have one type (no broadcasting), got {} and {}",
            a.ty, b.ty
        )
        .into());
    }
    let z = if alpha == 1.0 {
        a.clone()
    } else {
        with_scalar(cx, B::Mul, &a, alpha)?
    };
    let s = unary(cx, U::Sigmoid, &z)?;
    let g = binary(cx, B::Mul, &a, &s)?;
    Ok(vec![binary(cx, B::Mul, &g, &b)?])
}
