//! Attention: `scaled_dot_product_attention` with grouped-query heads.

use super::attrs::Attr;
use super::index::{broadcast_map, strides};
use super::{same_dtype, want_float, EvalCx, OpImpl};
use crate::dim::{broadcast_shapes, Shape, TensorType};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// `softmax(q·kᵀ·scale + mask)·v` per head.
///
/// Operands `q[.., Hq, Sq, D]`, `k[.., Hkv, Sk, D]`, `v[.., Hkv, Sk, Dv]` and
/// an optional mask broadcastable to `[.., Hq, Sq, Sk]`: additive (the dtype
/// of `q`) or bool (true = may attend). Leading dims of q, k and v are equal.
/// Grouped-query attention: `Hq` is a multiple of `Hkv` and query head `h`
/// reads kv head `h / (Hq / Hkv)`. `scale` defaults to `1/sqrt(D)`. `causal`
/// lets query `i` see keys `j <= i + (Sk - Sq)` (aligned to the bottom right,
/// so a decode step sees the whole cache; equal to torch's `is_causal` when
/// `Sq == Sk`). A query that sees no key at all outputs zeros.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaledDotProductAttention {
    pub causal: bool,
    pub scale: Option<f64>,
}

impl OpImpl for ScaledDotProductAttention {
    fn name(&self) -> &'static str {
        "scaled_dot_product_attention"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = vec![("causal", Attr::Bool(self.causal))];
        if let Some(s) = self.scale {
            a.push(("scale", Attr::Float(s)));
        }
        a
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let name = self.name();
        if !(3..=4).contains(&inputs.len()) {
            return Err(format!(
                "{name} takes 3 or 4 operands (q, k, v[, mask]) but got {}",
                inputs.len()
            ));
        }
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        want_float(name, "query", q)?;
        same_dtype(name, q, k)?;
        same_dtype(name, q, v)?;
        let r = q.rank();
        if r < 3 || k.rank() != r || v.rank() != r {
            return Err(format!(
                "{name} needs q, k, v of one rank >= 3, got {q}, {k}, {v}"
            ));
        }
        let (qd, kd, vd) = (q.shape.dims(), k.shape.dims(), v.shape.dims());
        if qd[..r - 3] != kd[..r - 3] || qd[..r - 3] != vd[..r - 3] {
            return Err(format!("{name}: leading dims of q {q}, k {k} and v {v} differ"));
        }
        if kd[r - 3] != vd[r - 3] || kd[r - 2] != vd[r - 2] {
            return Err(format!("{name}: k {k} and v {v} differ in heads or length"));
        }
        if qd[r - 1] != kd[r - 1] {
            return Err(format!("{name}: q {q} and k {k} differ in head size"));
        }
        super::grouped_heads(name, &qd[r - 3], &kd[r - 3])?;
        if let Some(s) = self.scale {
            if !s.is_finite() {
                return Err(format!("{name}: scale must be finite, got {s}"));
            }
        }
        let mut out = qd.to_vec();
        out[r - 1] = vd[r - 1].clone();
        let scores = {
            let mut s = qd.to_vec();
            s[r - 1] = kd[r - 2].clone();
            Shape(s)
        };
        if let Some(m) = inputs.get(3) {
            if m.dtype != DType::Bool && m.dtype != q.dtype {
                return Err(format!("{name}: mask {m} must be bool or {}", q.dtype));
            }
            match broadcast_shapes(&m.shape, &scores) {
                Ok(s) if s == scores => {}
                _ => return Err(format!("{name}: mask {m} does not broadcast to scores {scores}")),
            }
        }
        Ok(vec![TensorType::new(q.dtype, Shape(out))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
        let r = q.rank();
        let (hq, sq, d) = (q.shape()[r - 3], q.shape()[r - 2], q.shape()[r - 1]);
        let (hkv, sk, dv) = (k.shape()[r - 3], k.shape()[r - 2], v.shape()[r - 1]);
        if hkv == 0 || hq % hkv != 0 {
            return Err(format!("{hq} query heads are not a multiple of {hkv} kv heads"));
        }
        let group = hq / hkv;
        let batch: usize = q.shape()[..r - 3].iter().product();
        let scale = self.scale.unwrap_or(1.0 / (d as f64).sqrt());
        let mut score_shape = q.shape().to_vec();
        score_shape[r - 1] = sk;
        let mask = match inputs.get(3) {
            Some(m) => {
                let map = broadcast_map(m.shape(), &score_shape);
                let vals = if m.dtype() == DType::Bool {
                    m.to_bool_vec()
                        .into_iter()
                        .map(|b| if b { 0.0 } else { f64::NEG_INFINITY })
                        .collect()
                } else {
                    m.to_f64_vec()
                };
                Some((map, vals))
            }
            None => None,
        };
        let score_strides = strides(&score_shape);
        let (qv, kv, vv) = (q.to_f64_vec(), k.to_f64_vec(), v.to_f64_vec());
        let mut out = vec![0f64; batch * hq * sq * dv];
        let mut p = vec![0f64; sk];
        for b in 0..batch {
            for h in 0..hq {
                let kh = h / group;
                let qbase = (b * hq + h) * sq * d;
                let kbase = (b * hkv + kh) * sk * d;
                let vbase = (b * hkv + kh) * sk * dv;
                for i in 0..sq {
                    let mut max = f64::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        let visible = !self.causal || j + sq <= i + sk;
                        let mut s = if visible {
                            let qi = &qv[qbase + i * d..qbase + (i + 1) * d];
                            let kj = &kv[kbase + j * d..kbase + (j + 1) * d];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale
                        } else {
                            f64::NEG_INFINITY
                        };
                        if let Some((map, vals)) = &mask {
                            let flat = (b * hq + h) * score_strides[r - 3] + i * score_strides[r - 2] + j;
                            s += vals[map[flat]];
                        }
                        *pj = s;
                        max = max.max(s);
                    }
                    let o = &mut out[((b * hq + h) * sq + i) * dv..((b * hq + h) * sq + i + 1) * dv];
                    if max == f64::NEG_INFINITY {
                        continue; // no visible key: zeros
                    }
                    let mut sum = 0.0;
                    for pj in p.iter_mut() {
                        *pj = (*pj - max).exp();
                        sum += *pj;
                    }
                    for (j, pj) in p.iter().enumerate() {
                        let w = pj / sum;
                        for (oc, vc) in o.iter_mut().zip(&vv[vbase + j * dv..vbase + (j + 1) * dv]) {
                            *oc += w * vc;
                        }
                    }
                }
            }
        }
        let mut shape = q.shape().to_vec();
        shape[r - 1] = dv;
        Ok(vec![Tensor::from_f64(q.dtype(), &shape, &out)])
    }
}
