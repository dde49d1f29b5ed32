//! `sink_rope_transposes`: `transpose(rope(transpose(x, P), cos, sin), P⁻¹)`
//! becomes `rope(x, transpose(cos, P⁻¹), transpose(sin, P⁻¹))`.
//!
//! The step graph of `insert_kv_cache` moves Q and K to heads-first for
//! rope and straight back to tokens-first for `paged_attention`: two copies
//! of every Q and K per layer. Rope works on the last axis with cos/sin
//! broadcast over the leading ones, so it runs as well in the tokens-first
//! layout, with cos/sin permuted instead (small tensors, shared by every
//! layer once `cse` merges them).
//!
//! Rewritten only when `P` keeps the last axis in place, the two
//! transposes are inverses, and neither the inner transpose nor the rope
//! has another reader.

use optc_ir::ops::{Op, Reshape, Transpose};
use optc_ir::{Dim, Graph, NodeId, TensorType, Value};

use crate::cleanup::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Moves the transposes around rope onto its cos/sin operands.
pub struct SinkRopeTransposes;

fn perm_of(g: &Graph, n: NodeId) -> Option<Vec<usize>> {
    let Some(Op::Transpose(t)) = g.node(n).op() else {
        return None;
    };
    let r = g.node(n).outputs[0].rank();
    let p: Vec<usize> = t
        .perm
        .iter()
        .map(|&a| if a < 0 { a + r as i64 } else { a })
        .map(|a| usize::try_from(a).ok().filter(|&a| a < r))
        .collect::<Option<_>>()?;
    Some(p)
}

/// The only reader of `v`, if `v` has one and is not a graph output.
fn sole_user(g: &Graph, v: Value) -> Option<NodeId> {
    let users = g.users(v);
    match users.as_slice() {
        [(u, _)] if !g.outputs().iter().any(|o| o.value == v) => Some(*u),
        _ => None,
    }
}

impl SinkRopeTransposes {
    /// `c` (rank ≤ r) unsqueezed to rank `r`, then permuted by `q`.
    fn permuted(g: &mut Graph, c: Value, r: usize, q: &[usize], loc: Option<String>) -> Option<Value> {
        let ty = g.value_type(c)?.clone();
        if ty.rank() > r {
            return None;
        }
        let mut dims: Vec<Dim> = vec![Dim::from(1); r - ty.rank()];
        dims.extend(ty.shape.dims().iter().cloned());
        let mut v = c;
        if ty.rank() < r {
            let t = TensorType::new(ty.dtype, dims.clone());
            let n = g.add_op(
                Op::Reshape(Reshape { shape: dims.clone() }),
                &[c],
                vec![t],
                loc.clone(),
            );
            v = Value::of(n);
        }
        let out: Vec<Dim> = q.iter().map(|&i| dims[i].clone()).collect();
        let n = g.add_op(
            Op::Transpose(Transpose {
                perm: q.iter().map(|&i| i as i64).collect(),
            }),
            &[v],
            vec![TensorType::new(ty.dtype, out)],
            loc,
        );
        Some(Value::of(n))
    }
}

impl Pass for SinkRopeTransposes {
    fn name(&self) -> &str {
        "sink_rope_transposes"
    }

    fn description(&self) -> &str {
        "run rope in its input's layout: transpose(rope(transpose(x))) with inverse perms becomes rope(x) with permuted cos/sin"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let mut rewrites = 0;
        for n in op_order(g) {
            if !g.contains(n) {
                continue;
            }
            let Some(Op::Rope(rope)) = g.node(n).op().cloned() else {
                continue;
            };
            let ops = g.operands(n);
            let inner = ops[0].node;
            let Some(p) = perm_of(g, inner) else { continue };
            let r = p.len();
            if r == 0 || p[r - 1] != r - 1 || sole_user(g, ops[0]) != Some(n) {
                continue;
            }
            let Some(outer) = sole_user(g, Value::of(n)) else {
                continue;
            };
            let Some(q) = perm_of(g, outer) else { continue };
            if q.len() != r || (0..r).any(|i| p[q[i]] != i) {
                continue;
            }
            let x = g.operands(inner)[0];
            let loc = g.node(n).loc.clone();
            let (Some(c), Some(s)) = (
                Self::permuted(g, ops[1], r, &q, loc.clone()),
                Self::permuted(g, ops[2], r, &q, loc.clone()),
            ) else {
                continue;
            };
            let out_ty = g.node(outer).outputs[0].clone();
            let fused = g.add_op(Op::Rope(rope), &[x, c, s], vec![out_ty], loc);
            g.replace_all_uses(Value::of(outer), Value::of(fused));
            g.remove_node(outer);
            g.remove_node(n);
            g.remove_node(inner);
            rewrites += 1;
        }
        Ok(PassReport::with_rewrites(rewrites))
    }
}
