//! Canonicalisation: local identities that are exact for every input, so
//! that later passes see one spelling of each thing. Each rule is a small
//! function from a node to what replaces it:
//!
//! - `cast` to the operand's own dtype → the operand;
//! - `reshape`, `expand` or step-1 `slice` whose result type equals the operand's → the operand;
//! - `transpose` by the identity permutation → the operand;
//! - `reshape(reshape(x))` → `reshape(x)`; `transpose(transpose(x))` → one transpose;
//! - `concat` of one operand → the operand;
//! - `neg(neg(x))` → `x`;
//! - `mul(x, 1)`, `mul(1, x)`, `div(x, 1)` with a constant all-ones operand
//!   that does not change `x`'s type → `x` (exact: `x·1 = x` for every float,
//!   NaN and signed zeros included; `x + 0` is not, since `-0 + 0 = +0`).

use optc_ir::ops::{BinaryKind, Op, Transpose, UnaryKind};
use optc_ir::{Graph, NodeId, Value};

use super::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Applies exact local identities to a fixpoint.
pub struct Canonicalize;

/// What a rule does to a node.
enum Rewrite {
    /// The node's only result is equal to this value.
    Forward(Value),
    /// The node was changed in place (operands or attributes).
    Changed,
}

fn operand(g: &Graph, n: NodeId, slot: usize) -> Value {
    g.operands(n)[slot]
}

fn same_type(g: &Graph, a: Value, n: NodeId) -> bool {
    g.value_type(a) == g.node(n).outputs.first()
}

/// Is `v` a constant whose every element is 1?
fn is_ones(g: &Graph, v: Value) -> bool {
    match g.node(v.node).op() {
        Some(Op::Constant(c)) => c.value.numel() > 0 && c.value.to_f64_vec().iter().all(|&x| x == 1.0),
        _ => false,
    }
}

fn rewrite(g: &mut Graph, n: NodeId) -> Option<Rewrite> {
    let op = g.node(n).op()?.clone();
    let ops = g.operands(n);
    match &op {
        Op::Cast(_) | Op::Reshape(_) | Op::Expand(_) if same_type(g, ops[0], n) => {
            Some(Rewrite::Forward(ops[0]))
        }
        // With step 1, a slice as long as its operand starts at 0: identity.
        // (A negative step keeps the length but reverses.)
        Op::Slice(s) if s.step == 1 && same_type(g, ops[0], n) => Some(Rewrite::Forward(ops[0])),
        Op::Concat(_) if ops.len() == 1 && same_type(g, ops[0], n) => Some(Rewrite::Forward(ops[0])),
        Op::Transpose(t)
            if t.perm.iter().enumerate().all(|(i, &p)| {
                let r = t.perm.len() as i64;
                (p + r) % r == i as i64
            }) =>
        {
            Some(Rewrite::Forward(ops[0]))
        }
        Op::Reshape(_) => {
            let inner = ops[0];
            if let Some(Op::Reshape(_)) = g.node(inner.node).op() {
                let x = operand(g, inner.node, 0);
                g.set_operand(n, 0, x);
                return Some(Rewrite::Changed);
            }
            None
        }
        Op::Transpose(outer) => {
            let inner = ops[0];
            if let Some(Op::Transpose(t1)) = g.node(inner.node).op() {
                let r = outer.perm.len() as i64;
                let norm = |p: i64| ((p + r) % r) as usize;
                let perm: Vec<i64> = outer.perm.iter().map(|&p| (t1.perm[norm(p)] + r) % r).collect();
                let x = operand(g, inner.node, 0);
                g.node_mut(n).kind = optc_ir::NodeKind::Op(Op::Transpose(Transpose { perm }));
                g.set_operand(n, 0, x);
                return Some(Rewrite::Changed);
            }
            None
        }
        Op::Unary(UnaryKind::Neg) => match g.node(ops[0].node).op() {
            Some(Op::Unary(UnaryKind::Neg)) => Some(Rewrite::Forward(operand(g, ops[0].node, 0))),
            _ => None,
        },
        Op::Binary(BinaryKind::Mul) => {
            if is_ones(g, ops[1]) && same_type(g, ops[0], n) {
                Some(Rewrite::Forward(ops[0]))
            } else if is_ones(g, ops[0]) && same_type(g, ops[1], n) {
                Some(Rewrite::Forward(ops[1]))
            } else {
                None
            }
        }
        Op::Binary(BinaryKind::Div) if is_ones(g, ops[1]) && same_type(g, ops[0], n) => {
            Some(Rewrite::Forward(ops[0]))
        }
        _ => None,
    }
}

impl Pass for Canonicalize {
    fn name(&self) -> &str {
        "canonicalize"
    }

    fn description(&self) -> &str {
        "apply exact local identities (no-op casts/reshapes/transposes, chains, x*1)"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let mut rewrites = 0;
        // Each rewrite removes a node or shortens a chain, so this ends; the
        // bound only guards against a rule that would undo another.
        for _ in 0..64 {
            let mut changed = false;
            for n in op_order(g) {
                if !g.contains(n) {
                    continue;
                }
                match rewrite(g, n) {
                    Some(Rewrite::Forward(v)) => {
                        g.replace_all_uses(Value::of(n), v);
                        g.remove_node(n);
                    }
                    Some(Rewrite::Changed) => {}
                    None => continue,
                }
                rewrites += 1;
                changed = true;
            }
            if !changed {
                break;
            }
        }
        Ok(PassReport::with_rewrites(rewrites))
    }
}
