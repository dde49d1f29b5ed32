//! `paged_attention`: attention of a flat batch of tokens from many
//! sequences over a paged KV cache, writing the new keys and values first.
//!
//! This is the op `insert_kv_cache` puts where the model had
//! `scaled_dot_product_attention`: one step of a serving engine, where
//! prefill chunks and decode tokens of different sequences share one call.

use super::attrs::{Attr, AttrReader};
use super::{want_float, EvalCx, OpImpl};
use crate::dim::{Dim, Shape, TensorType};
use crate::tensor::Tensor;

/// Operands, in order: `q[T, Hq, D]`, `k[T, Hkv, D]`, `v[T, Hkv, Dv]` (the
/// step's new tokens), `k_cache[NB, BS, Hkv, D]`, `v_cache[NB, BS, Hkv, Dv]`
/// (blocks of `BS` token slots), and integer metadata: `positions[T]` (each
/// token's position in its sequence), `seq_starts[Q+1]` (tokens
/// `seq_starts[s]..seq_starts[s+1]` belong to sequence `s`),
/// `context_lens[Q]` (tokens of each sequence in the cache after this
/// step), `block_tables[Q, M]` (block ids of each sequence, in order) and
/// `slot_mapping[T]` (cache slot `block * BS + offset` each new token is
/// written to; negative skips the write, for padding).
///
/// Results: the attention output `[T, Hq, Dv]` and both caches with the new
/// tokens written. Every new token is written before any is read, so a
/// query at position `p` of sequence `s` attends, causally, over the keys
/// at positions `0..=p` of `s` (only `p - window < j` with a `window`),
/// read through the block table: position `j` lives in slot
/// `block_tables[s][j / BS] * BS + j % BS`. Query head `h` reads kv head
/// `h / (Hq / Hkv)` (grouped-query attention); `scale` defaults to
/// `1/sqrt(D)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PagedAttention {
    pub scale: Option<f64>,
    pub window: Option<i64>,
}

impl PagedAttention {
    pub(crate) fn read(r: &mut AttrReader) -> Result<PagedAttention, String> {
        Ok(PagedAttention {
            scale: r.opt_float("scale")?,
            window: r.opt_int("window")?,
        })
    }
}

const NAMES: [&str; 10] = [
    "q",
    "k",
    "v",
    "k_cache",
    "v_cache",
    "positions",
    "seq_starts",
    "context_lens",
    "block_tables",
    "slot_mapping",
];

fn dims_eq(name: &str, what: &str, a: &Dim, b: &Dim) -> Result<(), String> {
    if a != b {
        return Err(format!("{name}: {what} differ ({a} vs {b})"));
    }
    Ok(())
}

impl OpImpl for PagedAttention {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = Vec::new();
        if let Some(s) = self.scale {
            a.push(("scale", Attr::Float(s)));
        }
        if let Some(w) = self.window {
            a.push(("window", Attr::Int(w)));
        }
        a
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let name = self.name();
        if inputs.len() != NAMES.len() {
            return Err(format!(
                "{name} takes {} operands ({}) but got {}",
                NAMES.len(),
                NAMES.join(", "),
                inputs.len()
            ));
        }
        let ranks = [3, 3, 3, 4, 4, 1, 1, 1, 2, 1];
        for ((t, r), n) in inputs.iter().zip(ranks).zip(NAMES) {
            if t.rank() != r {
                return Err(format!("{name}: {n} must have rank {r}, got {t}"));
            }
        }
        let (q, k, v, kc, vc) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]);
        want_float(name, "query", q)?;
        for (t, n) in [(k, "k"), (v, "v"), (kc, "k_cache"), (vc, "v_cache")] {
            if t.dtype != q.dtype {
                return Err(format!("{name}: {n} {t} must have the dtype of q {q}"));
            }
        }
        for (t, n) in inputs[5..].iter().zip(&NAMES[5..]) {
            if !t.dtype.is_int() {
                return Err(format!("{name}: {n} must be integer, got {t}"));
            }
        }
        let d = |t: &TensorType, i: usize| t.shape.dims()[i].clone();
        let tokens = d(q, 0);
        for (t, n) in [
            (k, "k"),
            (v, "v"),
            (&inputs[5], "positions"),
            (&inputs[9], "slot_mapping"),
        ] {
            dims_eq(name, &format!("token counts of q and {n}"), &tokens, &d(t, 0))?;
        }
        dims_eq(name, "kv heads of k and v", &d(k, 1), &d(v, 1))?;
        dims_eq(name, "head sizes of q and k", &d(q, 2), &d(k, 2))?;
        dims_eq(name, "kv heads of k and k_cache", &d(k, 1), &d(kc, 2))?;
        dims_eq(name, "kv heads of v and v_cache", &d(v, 1), &d(vc, 2))?;
        dims_eq(name, "head sizes of k and k_cache", &d(k, 2), &d(kc, 3))?;
        dims_eq(name, "head sizes of v and v_cache", &d(v, 2), &d(vc, 3))?;
        dims_eq(name, "blocks of k_cache and v_cache", &d(kc, 0), &d(vc, 0))?;
        dims_eq(name, "block sizes of k_cache and v_cache", &d(kc, 1), &d(vc, 1))?;
        let seqs = d(&inputs[7], 0);
        dims_eq(
            name,
            "sequence counts of context_lens and block_tables",
            &seqs,
            &d(&inputs[8], 0),
        )?;
        dims_eq(
            name,
            "seq_starts length and sequence count + 1",
            &d(&inputs[6], 0),
            &(&seqs + &Dim::constant(1)),
        )?;
        let hq = d(q, 1);
        super::grouped_heads(name, &hq, &d(k, 1))?;
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return Err(format!("{name}: scale must be finite, got {s}"));
            }
        }
        if let Some(w) = self.window {
            if w < 1 {
                return Err(format!("{name}: window must be at least 1, got {w}"));
            }
        }
        let out = TensorType::new(q.dtype, Shape(vec![tokens, hq, d(v, 2)]));
        Ok(vec![out, kc.clone(), vc.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (q, k, v, kc, vc) = (inputs[0], inputs[1], inputs[2], inputs[3], inputs[4]);
        let [t_n, hq, d] = [q.shape()[0], q.shape()[1], q.shape()[2]];
        let [hkv, dv] = [k.shape()[1], v.shape()[2]];
        let [nb, bs] = [kc.shape()[0], kc.shape()[1]];
        let meta = |i: usize| inputs[i].to_i64_vec();
        let (positions, starts, ctx, tables, slots) = (meta(5), meta(6), meta(7), meta(8), meta(9));
        let max_blocks = inputs[8].shape()[1];
        if hkv == 0 || hq % hkv != 0 {
            return Err(format!("{hq} query heads are not a multiple of {hkv} kv heads"));
        }
        let group = hq / hkv;
        let (qv, kv, vv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec());
        let (mut kcv, mut vcv) = (kc.to_f64_vec(), vc.to_f64_vec());
        let slots_total = nb * bs;

        // Write every new token's key and value into its slot.
        for (t, &slot) in slots.iter().enumerate() {
            if slot < 0 {
                continue;
            }
            let slot = slot as usize;
            if slot >= slots_total {
                return Err(format!(
                    "slot_mapping[{t}] = {slot} is outside the cache ({nb} blocks of {bs})"
                ));
            }
            kcv[slot * hkv * d..(slot + 1) * hkv * d].copy_from_slice(&kv[t * hkv * d..(t + 1) * hkv * d]);
            vcv[slot * hkv * dv..(slot + 1) * hkv * dv]
                .copy_from_slice(&vv[t * hkv * dv..(t + 1) * hkv * dv]);
        }

        // Which sequence each token belongs to.
        if starts.first() != Some(&0) || starts.last() != Some(&(t_n as i64)) {
            return Err(format!(
                "seq_starts must run from 0 to the token count {t_n}, got {starts:?}"
            ));
        }
        let mut seq_of = vec![0usize; t_n];
        for s in 0..ctx.len() {
            let (a, b) = (starts[s], starts[s + 1]);
            if b < a {
                return Err(format!("seq_starts must not decrease, got {starts:?}"));
            }
            for x in &mut seq_of[a as usize..b as usize] {
                *x = s;
            }
        }

        let scale = self.scale.unwrap_or(1.0 / (d as f64).sqrt());
        let mut out = vec![0f64; t_n * hq * dv];
        let mut p = Vec::new();
        for t in 0..t_n {
            let s = seq_of[t];
            let pos = positions[t];
            if pos < 0 || pos >= ctx[s] {
                return Err(format!(
                    "token {t} has position {pos} outside its sequence's context of {}",
                    ctx[s]
                ));
            }
            let first = match self.window {
                Some(w) => (pos - w + 1).max(0),
                None => 0,
            };
            // Slots of the visible keys.
            let mut key_slots = Vec::with_capacity((pos - first + 1) as usize);
            for j in first..=pos {
                let (bi, off) = ((j as usize) / bs, (j as usize) % bs);
                if bi >= max_blocks {
                    return Err(format!(
                        "sequence {s} needs block {bi} for position {j} but its block table has {max_blocks}"
                    ));
                }
                let block = tables[s * max_blocks + bi];
                if block < 0 || block as usize >= nb {
                    return Err(format!(
                        "block_tables[{s}][{bi}] = {block} is outside the cache of {nb} blocks"
                    ));
                }
                key_slots.push(block as usize * bs + off);
            }
            for h in 0..hq {
                let kh = h / group;
                let qi = &qv[(t * hq + h) * d..(t * hq + h + 1) * d];
                p.clear();
                let mut max = f64::NEG_INFINITY;
                for &slot in &key_slots {
                    let kj = &kcv[(slot * hkv + kh) * d..(slot * hkv + kh + 1) * d];
                    let sc = qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale;
                    max = max.max(sc);
                    p.push(sc);
                }
                let sum: f64 = p
                    .iter_mut()
                    .map(|x| {
                        *x = (*x - max).exp();
                        *x
                    })
                    .sum();
                let o = &mut out[(t * hq + h) * dv..(t * hq + h + 1) * dv];
                for (&w, &slot) in p.iter().zip(&key_slots) {
                    let vj = &vcv[(slot * hkv + kh) * dv..(slot * hkv + kh + 1) * dv];
                    for (oc, vc) in o.iter_mut().zip(vj) {
                        *oc += w / sum * vc;
                    }
                }
            }
        }
        Ok(vec![
            Tensor::from_f64(q.dtype(), &[t_n, hq, dv], &out),
            Tensor::from_f64(kc.dtype(), kc.shape(), &kcv),
            Tensor::from_f64(vc.dtype(), vc.shape(), &vcv),
        ])
    }
}
