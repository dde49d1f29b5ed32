//! `quantize_int8`: weight-only int8 with one f32 scale per block of 32
//! values along the input axis (the Q8_0 layout of llama.cpp). Every f32
//! `linear` weight `[N, K]` becomes, explicitly in the graph,
//!
//! ```text
//! weight @w.q8: i8[N, K/32, 32] = "w.q8"
//! weight @w.q8scale: f32[N, K/32, 1] = "w.q8scale"
//! %0: f32[N, K/32, 32] = cast(@w.q8) {to = f32}
//! %1: f32[N, K/32, 32] = mul(%0, @w.q8scale)
//! %2: f32[N, K] = reshape(%1) {shape = [N, K]}
//! %3: f32[B, S, N] = linear(%x, %2)
//! ```
//!
//! with `scale = max|w| / 127` per block and `q = round(w / scale)`. The
//! interpreter computes exactly that dequantisation; the CPU target
//! recognises the chain and keeps the weights at ~1.06 bytes per value,
//! which is what memory-bound decode steps stream. Only f32 weights are
//! quantised (a checkpoint stored in bf16/f16 keeps its dtype: the chain
//! would need a second rounding the kernels do not do), and only weights
//! whose `K` is a multiple of the block.
//!
//! Options: `min_elements` (smaller weights stay as they are; default 4096).
//! The quantised tensors are computed when the pass runs and kept in the
//! weight store.

use optc_ir::ops::{BinaryKind, Cast, Op, Reshape};
use optc_ir::{DType, Dim, Graph, NodeKind, Shape, Tensor, TensorType, Value};

use crate::{Pass, PassContext, PassError, PassReport};

/// Values per scale.
pub const BLOCK: usize = 32;

/// Stores linear weights as int8 blocks with f32 scales.
pub struct QuantizeInt8;

const NAME: &str = "quantize_int8";

/// `(q, scales)` of row-major `w` with rows of `k` (a multiple of `BLOCK`).
pub fn quantize(w: &[f32], k: usize) -> (Vec<i64>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut s = Vec::with_capacity(w.len() / BLOCK);
    for row in w.chunks(k) {
        for b in row.chunks(BLOCK) {
            let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            s.push(scale);
            for &v in b {
                let x = if scale > 0.0 {
                    (v / scale).round().clamp(-127.0, 127.0)
                } else {
                    0.0
                };
                q.push(x as i64);
            }
        }
    }
    (q, s)
}

impl Pass for QuantizeInt8 {
    fn name(&self) -> &str {
        NAME
    }

    fn description(&self) -> &str {
        "store f32 linear weights as int8 with an f32 scale per 32 values (Q8_0 layout), dequantised explicitly in the graph"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassContext) -> Result<PassReport, PassError> {
        let min = cx.int_option(NAME, "min_elements", 4096)?.max(0) as usize;
        let fail = |message: String| PassError::Failed {
            pass: NAME.into(),
            message,
        };
        let mut done = 0;
        let mut skipped_dtype = 0;
        for w in g.weights().to_vec() {
            let NodeKind::Weight { name, key } = g.node(w).kind.clone() else {
                continue;
            };
            let ty = g.node(w).outputs[0].clone();
            let Some([n, k]) = ty.shape.as_consts().and_then(|d| <[i64; 2]>::try_from(d).ok()) else {
                continue;
            };
            let (n, k) = (n as usize, k as usize);
            let users: Vec<(optc_ir::NodeId, u32)> = g
                .users(Value::of(w))
                .into_iter()
                .filter(|&(u, slot)| slot == 1 && matches!(g.node(u).op(), Some(Op::Linear(_))))
                .collect();
            if users.is_empty() || n * k < min || k % BLOCK != 0 {
                continue;
            }
            if ty.dtype != DType::F32 {
                skipped_dtype += 1;
                continue;
            }
            let t = cx
                .weights
                .get(&key)
                .map_err(|e| fail(format!("weight @{name}: {e}")))?;
            let (q, s) = quantize(&t.to_f32_vec(), k);
            let nb = k / BLOCK;
            let (qkey, skey) = (format!("{key}.q8"), format!("{key}.q8scale"));
            for (key, t) in [
                (&qkey, Tensor::from_i64(DType::I8, &[n, nb, BLOCK], &q)),
                (&skey, Tensor::from_f32(DType::F32, &[n, nb, 1], &s)),
            ] {
                if !cx.weights.contains(key) {
                    cx.weights
                        .insert(key.clone(), t)
                        .map_err(|e| fail(format!("weight @{name}: {e}")))?;
                }
            }
            let dims = |c: [usize; 3]| Shape(c.iter().map(|&d| Dim::from(d)).collect());
            let qw = g.add_weight(
                format!("{name}.q8"),
                qkey,
                TensorType::new(DType::I8, dims([n, nb, BLOCK])),
            );
            let sw = g.add_weight(
                format!("{name}.q8scale"),
                skey,
                TensorType::new(DType::F32, dims([n, nb, 1])),
            );
            let blocks = TensorType::new(DType::F32, dims([n, nb, BLOCK]));
            let c = g.add_op(
                Op::Cast(Cast { to: DType::F32 }),
                &[qw],
                vec![blocks.clone()],
                None,
            );
            let m = g.add_op(
                Op::Binary(BinaryKind::Mul),
                &[Value::of(c), sw],
                vec![blocks],
                None,
            );
            let r = g.add_op(
                Op::Reshape(Reshape {
                    shape: vec![Dim::from(n), Dim::from(k)],
                }),
                &[Value::of(m)],
                vec![ty.clone()],
                None,
            );
            for (u, slot) in users {
                g.set_operand(u, slot, Value::of(r));
            }
            if g.users(Value::of(w)).is_empty() && !g.outputs().iter().any(|o| o.value == Value::of(w)) {
                g.remove_node(w);
            }
            done += 1;
        }
        let mut r = PassReport::with_rewrites(done);
        if done > 0 {
            r.notes.push(format!(
                "{done} linear weights stored as int8 (blocks of {BLOCK})"
            ));
        }
        if skipped_dtype > 0 {
            r.notes.push(format!(
                "{skipped_dtype} weights left alone: only f32 weights are quantised"
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quantisation_round_trips_within_half_a_step() {
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.0) / 7.0).collect();
        let (q, s) = super::quantize(&w, 64);
        for (i, v) in w.iter().enumerate() {
            let back = q[i] as f32 * s[i / 32];
            assert!((back - v).abs() <= s[i / 32] / 2.0 + 1e-6, "{v} -> {back}");
        }
        assert_eq!(q.iter().map(|x| x.abs()).max(), Some(127));
    }
}
