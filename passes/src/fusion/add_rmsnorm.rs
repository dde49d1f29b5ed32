//! `fuse_add_rmsnorm`: a residual `add` whose sum feeds an `rms_norm` becomes
//! one `add_rms_norm`, which returns both the sum (for the next residual)
//! and its normalisation: one kernel reads the two activations once instead
//! of writing the sum and reading it back.
//!
//! Fused: `rms_norm(add(a, b), w)` where `a`, `b` and the sum have one type
//! (no broadcasting). The sum's other users read the first result.

use optc_ir::ops::{AddRmsNorm, BinaryKind, Op, RmsNorm};
use optc_ir::{Graph, Value};

use crate::cleanup::op_order;
use crate::{Pass, PassContext, PassError, PassReport};

/// Fuses residual adds into the RMSNorms that read them.
pub struct FuseAddRmsNorm;

impl Pass for FuseAddRmsNorm {
    fn name(&self) -> &str {
        "fuse_add_rmsnorm"
    }

    fn description(&self) -> &str {
        "fuse a residual add into the rms_norm that reads it (add_rms_norm returns sum and norm)"
    }

    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let mut fused = 0;
        for n in op_order(g) {
            if !g.contains(n) {
                continue;
            }
            let Some(Op::RmsNorm(RmsNorm { axis, eps })) = g.node(n).op().cloned() else {
                continue;
            };
            let ops = g.operands(n);
            let sum = ops[0];
            if sum.index != 0 || g.node(sum.node).op() != Some(&Op::Binary(BinaryKind::Add)) {
                continue;
            }
            let ab = g.operands(sum.node);
            let sum_ty = g.node(sum.node).outputs[0].clone();
            if g.value_type(ab[0]) != Some(&sum_ty) || g.value_type(ab[1]) != Some(&sum_ty) {
                continue;
            }
            let mut args = vec![ab[0], ab[1]];
            args.extend(ops.get(1).copied());
            let norm_ty = g.node(n).outputs[0].clone();
            let loc = g.node(n).loc.clone();
            let f = g.add_op(
                Op::AddRmsNorm(AddRmsNorm { axis, eps }),
                &args,
                vec![sum_ty, norm_ty],
                loc,
            );
            g.replace_all_uses(sum, Value { node: f, index: 0 });
            g.replace_all_uses(Value::of(n), Value { node: f, index: 1 });
            g.remove_node(n);
            if g.users(sum).is_empty() && !g.outputs().iter().any(|o| o.value == sum) {
                g.remove_node(sum.node);
            }
            fused += 1;
        }
        Ok(PassReport::with_rewrites(fused))
    }
}
