//! Outer products as broadcast multiplies. Hugging Face's rotary embedding
//! computes its angles as `inv_freq[r, 1] @ positions[1, T]`, transposes
//! them and concatenates the result with itself, so a step starts with a
//! GEMM, a transpose and a copy before `cos` and `sin`. This pass rewrites:
//!
//! - `matmul(a[…, M, 1], b[…, 1, N])` → `mul(a, b)` (broadcast; a matmul with
//!   K = 1 computes `0 + a·b`, which differs from `a·b` only when the
//!   product is -0, where it gives +0);
//! - `transpose(x ∘ y)` (the op's only reader) → `transpose(x) ∘
//!   transpose(y)` when one operand is a constant (its transpose folds)
//!   and the other's transpose only moves axes of extent 1 (a view);
//! - `concat(p·c, p·c, …)` along an axis where `p` has extent 1 and the
//!   constant `c` does not broadcast → `p · concat(c, c, …)` (folds).
//!
//! Both of the latter are exact. The angles are then one broadcast
//! multiply of the positions by a constant row.

use optc_ir::ops::{BinaryKind, Concat, EvalCx, Op, Transpose};
use optc_ir::{Bindings, Dim, Graph, NodeId, TensorType, Value};

use super::{constant_fold::fold_node, op_order, remove_dead};
use crate::{Pass, PassContext, PassError, PassReport};

/// Rewrites outer products and what moves them around into broadcast
/// multiplies (see the module docs).
pub struct SimplifyOuterProducts;

fn ty(g: &Graph, v: Value) -> Option<&TensorType> {
    g.value_type(v)
}

fn is_constant(g: &Graph, v: Value) -> bool {
    matches!(g.node(v.node).op(), Some(Op::Constant(_)))
}

fn is_one(d: &Dim) -> bool {
    d.as_const() == Some(1)
}

/// Whether transposing a value of `dims` by `perm` keeps the order of
/// its axes longer than 1 (so it moves only axes of extent 1: a view).
fn moves_only_unit_axes(dims: &[Dim], perm: &[usize]) -> bool {
    let kept: Vec<usize> = perm.iter().copied().filter(|&p| !is_one(&dims[p])).collect();
    kept.windows(2).all(|w| w[0] < w[1])
}

/// Adds `op` over `operands` in `at`'s place in the order, typed by
/// inference, folded when its operands are constants.
fn add_folded(g: &mut Graph, at: NodeId, op: Op, operands: &[Value], loc: Option<String>) -> Option<Value> {
    let types: Option<Vec<TensorType>> = operands.iter().map(|&v| ty(g, v).cloned()).collect();
    let outs = op.infer(&types?).ok()?;
    let n = g.add_op_at(at, op, operands, outs, loc);
    let bindings = Bindings::new();
    let cx = EvalCx { bindings: &bindings };
    Some(fold_node(g, n, usize::MAX, &cx, true).unwrap_or(Value::of(n)))
}

/// `matmul(a[…, M, 1], b[…, 1, N])` → `mul(a, b)`: the batch dims
/// broadcast alike (operands of equal rank, at least 2; a rank-1 matmul
/// operand means something else).
fn outer_product(g: &mut Graph, n: NodeId) -> Option<NodeId> {
    let ops = g.operands(n);
    let (a, b) = (ty(g, ops[0])?, ty(g, ops[1])?);
    let float = a.dtype.is_float() && a.dtype == b.dtype;
    let (ad, bd) = (a.shape.dims(), b.shape.dims());
    let r = ad.len();
    if !float || r < 2 || bd.len() != r || !is_one(&ad[r - 1]) || !is_one(&bd[r - 2]) {
        return None;
    }
    let node = g.node(n);
    let (outs, loc) = (node.outputs.clone(), node.loc.clone());
    Some(g.add_op_at(n, Op::Binary(BinaryKind::Mul), &ops, outs, loc))
}

/// `transpose(x ∘ y)` → `transpose(x) ∘ transpose(y)`, one side constant,
/// the other moved only along axes of extent 1.
fn transpose_through(g: &mut Graph, n: NodeId, t: &Transpose) -> Option<NodeId> {
    let inner = g.operands(n)[0];
    let Some(Op::Binary(kind)) = g.node(inner.node).op().cloned() else {
        return None;
    };
    if g.users(inner).len() != 1 {
        return None;
    }
    let ops = g.operands(inner.node);
    let rank = ty(g, inner)?.shape.rank();
    let perm: Vec<usize> = t
        .perm
        .iter()
        .map(|&p| usize::try_from((p + rank as i64) % rank as i64).ok())
        .collect::<Option<_>>()?;
    let ranks_match = ops
        .iter()
        .all(|&v| ty(g, v).is_some_and(|t| t.shape.rank() == rank));
    let view = |v: Value| ty(g, v).is_some_and(|t| moves_only_unit_axes(t.shape.dims(), &perm));
    let one_side = (is_constant(g, ops[0]) && view(ops[1])) || (is_constant(g, ops[1]) && view(ops[0]));
    if !ranks_match || !one_side {
        return None;
    }
    let loc = g.node(n).loc.clone();
    let moved: Option<Vec<Value>> = ops
        .iter()
        .map(|&v| add_folded(g, n, Op::Transpose(t.clone()), &[v], loc.clone()))
        .collect();
    let outs = g.node(n).outputs.clone();
    Some(g.add_op_at(n, Op::Binary(kind), &moved?, outs, loc))
}

/// `concat(p·c, …, p·c)` → `p · concat(c, …, c)` along an axis where `p`
/// has extent 1 and the constant `c` has the product's extent.
fn concat_of_one_product(g: &mut Graph, n: NodeId, c: &Concat) -> Option<NodeId> {
    let ops = g.operands(n);
    let x = ops[0];
    if ops.len() < 2 || ops.iter().any(|&v| v != x) || g.users(x).len() != ops.len() {
        return None;
    }
    if !matches!(g.node(x.node).op(), Some(Op::Binary(BinaryKind::Mul))) {
        return None;
    }
    let xt = ty(g, x)?;
    let rank = xt.shape.rank() as i64;
    let axis = usize::try_from((c.axis + rank) % rank).ok()?;
    let extent = xt.shape.dims()[axis].clone();
    let factors = g.operands(x.node);
    let ci = factors.iter().position(|&v| is_constant(g, v))?;
    let (cv, pv) = (factors[ci], factors[1 - ci]);
    let (ct, pt) = (ty(g, cv)?, ty(g, pv)?);
    if ct.shape.rank() as i64 != rank || pt.shape.rank() as i64 != rank {
        return None;
    }
    if ct.shape.dims()[axis] != extent || !is_one(&pt.shape.dims()[axis]) {
        return None;
    }
    let loc = g.node(n).loc.clone();
    let joined = add_folded(g, n, Op::Concat(c.clone()), &vec![cv; ops.len()], loc.clone())?;
    let operands = if ci == 0 { [joined, pv] } else { [pv, joined] };
    let outs = g.node(n).outputs.clone();
    Some(g.add_op_at(n, Op::Binary(BinaryKind::Mul), &operands, outs, loc))
}

impl Pass for SimplifyOuterProducts {
    fn name(&self) -> &str {
        "simplify_outer_products"
    }

    fn description(&self) -> &str {
        "K = 1 matmuls as broadcast multiplies; transposes and self-concats of them moved onto constants"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let mut rewrites = 0;
        // Each rewrite removes a matmul, transpose or concat of a product;
        // the bound only guards against a rule that would undo another.
        for _ in 0..16 {
            let mut changed = false;
            for n in op_order(g) {
                if !g.contains(n) {
                    continue;
                }
                let new = match g.node(n).op().cloned() {
                    Some(Op::MatMul(_)) => outer_product(g, n),
                    Some(Op::Transpose(t)) => transpose_through(g, n, &t),
                    Some(Op::Concat(c)) => concat_of_one_product(g, n, &c),
                    _ => None,
                };
                let Some(new) = new else { continue };
                g.replace_all_uses(Value::of(n), Value::of(new));
                g.remove_node(n);
                rewrites += 1;
                changed = true;
            }
            if !changed {
                break;
            }
        }
        if rewrites > 0 {
            remove_dead(g);
        }
        Ok(PassReport::with_rewrites(rewrites))
    }
}
