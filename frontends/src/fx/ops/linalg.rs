//! Matrix products: `linear`, `matmul`/`mm`/`bmm`, and `addmm` (GPT-2's
//! Conv1D), which stays a product plus a bias add as torch wrote it.

use optc_ir::ops::{BinaryKind, Linear, MatMul, Op};
use optc_ir::Value;

use super::{one, Lower};
use crate::fx::import::Cx;
use crate::fx::schema::Node;

type R = Result<Vec<Value>, String>;

fn linear(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "input")?;
    let w = cx.tensor(n, "weight")?;
    let mut args = vec![x, w];
    args.extend(cx.opt_tensor(n, "bias")?);
    one(cx.op(Op::Linear(Linear), &args)?)
}

fn product(cx: &mut Cx, n: &Node, rhs: &str) -> R {
    let a = cx.tensor(n, "self")?;
    let b = cx.tensor(n, rhs)?;
    one(cx.op(Op::MatMul(MatMul), &[a, b])?)
}

fn matmul(cx: &mut Cx, n: &Node) -> R {
    product(cx, n, "other")
}

fn mm(cx: &mut Cx, n: &Node) -> R {
    product(cx, n, "mat2")
}

/// Scales `v` by a Python number unless it is 1.
fn scaled(cx: &mut Cx, n: &Node, name: &str, v: Value) -> Result<Value, String> {
    match cx.number(n, name)? {
        Some(s) if s.as_f64() != 1.0 => {
            let c = cx.constant(s, cx.ty(v).dtype)?;
            cx.op(Op::Binary(BinaryKind::Mul), &[v, c])
        }
        _ => Ok(v),
    }
}

/// `addmm(self, mat1, mat2, beta, alpha)`: `beta * self + alpha * mat1 @ mat2`.
fn addmm(cx: &mut Cx, n: &Node) -> R {
    let bias = cx.tensor(n, "self")?;
    let a = cx.tensor(n, "mat1")?;
    let b = cx.tensor(n, "mat2")?;
    let p = cx.op(Op::MatMul(MatMul), &[a, b])?;
    let p = scaled(cx, n, "alpha", p)?;
    let bias = scaled(cx, n, "beta", bias)?;
    one(cx.op(Op::Binary(BinaryKind::Add), &[p, bias])?)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.linear.default", linear),
    ("aten.matmul.default", matmul),
    ("aten.mm.default", mm),
    ("aten.bmm.default", mm),
    ("aten.addmm.default", addmm),
];
