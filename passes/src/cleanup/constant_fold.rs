//! Constant folding: an op whose operands are all constants, and whose
//! results have a constant shape of at most `max_elements` elements (option,
//! default 4096), is evaluated with the reference semantics and replaced by
//! `constant` ops. Large results stay as ops: the graph text must stay small.

use optc_ir::ops::{Constant, EvalCx, Op};
use optc_ir::{Bindings, Graph, NodeId, Value};

use super::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Evaluates ops on constants at compile time.
pub struct ConstantFold;

/// Evaluates op `n` when its operands are all constants and its results
/// have at most `limit` elements, replacing it by `constant` ops (in its
/// place in the topological order with `in_place`); returns the value
/// that replaces its first result.
pub(crate) fn fold_node(
    g: &mut Graph,
    n: NodeId,
    limit: usize,
    ecx: &EvalCx,
    in_place: bool,
) -> Option<Value> {
    let node = g.node(n);
    let op = node.op()?;
    if matches!(op, Op::Constant(_)) {
        return None;
    }
    let sizes: Vec<i64> = node
        .outputs
        .iter()
        .map(|t| t.shape.as_consts().map(|d| d.iter().product::<i64>()))
        .collect::<Option<_>>()?;
    if sizes.iter().sum::<i64>() as usize > limit {
        return None;
    }
    let consts: Vec<_> = g
        .operands(n)
        .iter()
        .map(|v| match g.node(v.node).op() {
            Some(Op::Constant(c)) => Some(c.value.clone()),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let refs: Vec<_> = consts.iter().collect();
    // An op that fails on these constants (say, an index out of range) is
    // left for run time to report.
    let results = op.eval(&refs, ecx).ok()?;
    let loc = node.loc.clone();
    let types = node.outputs.clone();
    let mut first = None;
    for (i, (t, ty)) in results.into_iter().zip(types).enumerate() {
        let op = Op::Constant(Constant { value: t });
        let c = if in_place {
            g.add_op_at(n, op, &[], vec![ty], loc.clone())
        } else {
            g.add_op(op, &[], vec![ty], loc.clone())
        };
        g.replace_all_uses(
            Value {
                node: n,
                index: i as u32,
            },
            Value::of(c),
        );
        first.get_or_insert(Value::of(c));
    }
    g.remove_node(n);
    first
}

impl Pass for ConstantFold {
    fn name(&self) -> &str {
        "constant_fold"
    }

    fn description(&self) -> &str {
        "evaluate ops whose operands are all constants (small results only)"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let limit = cx.int_option(self.name(), "max_elements", 4096)?.max(0) as usize;
        let bindings = Bindings::new();
        let ecx = EvalCx { bindings: &bindings };
        let mut folded = 0;
        for n in op_order(g) {
            if fold_node(g, n, limit, &ecx, false).is_some() {
                folded += 1;
            }
        }
        Ok(PassReport::with_rewrites(folded))
    }
}
