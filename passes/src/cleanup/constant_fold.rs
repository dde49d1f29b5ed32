//! Constant folding: an op whose operands are all constants, and whose
//! results have a constant shape of at most `max_elements` elements (option,
//! default 4096), is evaluated with the reference semantics and replaced by
//! `constant` ops. Large results stay as ops: the graph text must stay small.

use optc_ir::ops::{Constant, EvalCx, Op};
use optc_ir::{Bindings, Graph, Value};

use super::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Evaluates ops on constants at compile time.
pub struct ConstantFold;

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
            let node = g.node(n);
            let op = node.op().expect("op_order yields ops");
            if matches!(op, Op::Constant(_)) {
                continue;
            }
            let sizes: Option<Vec<i64>> = node
                .outputs
                .iter()
                .map(|t| t.shape.as_consts().map(|d| d.iter().product::<i64>()))
                .collect();
            let Some(sizes) = sizes else { continue };
            if sizes.iter().sum::<i64>() as usize > limit {
                continue;
            }
            let operands = g.operands(n);
            let consts: Option<Vec<_>> = operands
                .iter()
                .map(|v| match g.node(v.node).op() {
                    Some(Op::Constant(c)) => Some(c.value.clone()),
                    _ => None,
                })
                .collect();
            let Some(consts) = consts else { continue };
            let refs: Vec<_> = consts.iter().collect();
            // An op that fails on these constants (say, an index out of
            // range) is left for run time to report.
            let Ok(results) = op.eval(&refs, &ecx) else {
                continue;
            };
            let loc = node.loc.clone();
            let types = node.outputs.clone();
            for (i, (t, ty)) in results.into_iter().zip(types).enumerate() {
                let c = g.add_op(Op::Constant(Constant { value: t }), &[], vec![ty], loc.clone());
                g.replace_all_uses(
                    Value {
                        node: n,
                        index: i as u32,
                    },
                    Value::of(c),
                );
            }
            g.remove_node(n);
            folded += 1;
        }
        Ok(PassReport::with_rewrites(folded))
    }
}
