//! `cast_weights`: weight-only half precision. Every f32 weight matrix read
//! by a `linear` (as its weights) or an `embedding` (as its table) is
//! stored in f16 or bf16 instead, behind an explicit `cast` back to f32:
//!
//! ```text
//! %3: f32[B, S, 64] = linear(%2, @w)            # before, @w: f32[64, 64]
//! %0: f32[64, 64] = cast(@w.f16) {to = f32}      # after,  @w.f16: f16[64, 64]
//! %3: f32[B, S, 64] = linear(%2, %0)
//! ```
//!
//! The rounding is the only change in meaning and the graph states it, so
//! `--check-passes` measures it. Backends that read half weights directly
//! (the CPU target's `linear` and `embedding`) see through the cast and
//! stream half the bytes; memory-bound decode steps get up to twice as
//! fast. The new weights are lazy `Cast` views: nothing is converted until
//! a backend materialises them.
//!
//! Options: `dtype` (`"f16"`, the default, or `"bf16"`), `min_elements`
//! (smaller weights stay f32; default 4096).

use std::collections::BTreeMap;

use optc_ir::ops::{Cast, Op};
use optc_ir::{DType, Graph, NodeKind, TensorType, Value, View};

use crate::{Pass, PassContext, PassError, PassReport};

/// Stores linear and embedding weights in half precision.
pub struct CastWeights;

const NAME: &str = "cast_weights";

impl Pass for CastWeights {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "store f32 linear/embedding weights in f16 or bf16 behind an explicit cast (weight-only quantisation)"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let dtype = match cx.options.get("dtype") {
            None => DType::F16,
            Some(toml::Value::String(s)) if s == "f16" => DType::F16,
            Some(toml::Value::String(s)) if s == "bf16" => DType::BF16,
            Some(v) => {
                return Err(PassError::Option {
                    pass: NAME.into(),
                    message: format!("option 'dtype' must be \"f16\" or \"bf16\", found {v}"),
                })
            }
        };
        let min = cx.int_option(NAME, "min_elements", 4096)?.max(0) as usize;
        let mut casts: BTreeMap<String, Value> = BTreeMap::new();
        let mut rewritten = 0;
        for w in g.weights().to_vec() {
            let NodeKind::Weight { name, key } = g.node(w).kind.clone() else {
                continue;
            };
            let ty = g.node(w).outputs[0].clone();
            let numel = ty
                .shape
                .as_consts()
                .map_or(0, |d| d.iter().product::<i64>() as usize);
            if ty.dtype != DType::F32 || numel < min {
                continue;
            }
            let users: Vec<(optc_ir::NodeId, u32)> = g
                .users(Value::of(w))
                .into_iter()
                .filter(|&(u, slot)| {
                    matches!(
                        (g.node(u).op(), slot),
                        (Some(Op::Linear(_)), 1) | (Some(Op::Embedding(_)), 0)
                    )
                })
                .collect();
            if users.is_empty() {
                continue;
            }
            let suffix = if dtype == DType::F16 { "f16" } else { "bf16" };
            let new_key = format!("{key}.{suffix}");
            if !cx.weights.contains(&new_key) {
                cx.weights
                    .add_view(
                        &new_key,
                        View::Cast {
                            source: key.clone(),
                            dtype,
                        },
                    )
                    .map_err(|e| PassError::Failed {
                        pass: NAME.into(),
                        message: format!("weight @{name}: {e}"),
                    })?;
            }
            let half = g.add_weight(
                format!("{name}.{suffix}"),
                new_key.clone(),
                TensorType::new(dtype, ty.shape.clone()),
            );
            let back = g.add_op(Op::Cast(Cast { to: DType::F32 }), &[half], vec![ty.clone()], None);
            casts.insert(name.clone(), Value::of(back));
            for (u, slot) in users {
                g.set_operand(u, slot, Value::of(back));
            }
            if g.users(Value::of(w)).is_empty() && !g.outputs().iter().any(|o| o.value == Value::of(w)) {
                g.remove_node(w);
            }
            rewritten += 1;
        }
        let mut r = PassReport::with_rewrites(rewritten);
        if rewritten > 0 {
            r.notes.push(format!("{rewritten} weights stored as {dtype}"));
        }
        Ok(r)
    }
}
