//! Neural-network building blocks: softmax, embedding lookup, and the fused
//! forms of normalisation and rotary embedding. Frontends emit softmax and
//! embedding as traced; they never emit `layer_norm`, `rms_norm` or `rope`
//! (they emit the plain ops those stand for): fusion passes introduce them,
//! and these reference semantics define what the fusions must keep.

use super::index::{around_axis, broadcast_map};
use super::indexing::take;
use super::{arity, same_dtype, want_float, EvalCx, OpImpl};
use crate::dim::{broadcast_shapes, normalize_axis, Dim, Shape, TensorType};
use crate::ops::attrs::Attr;
use crate::tensor::Tensor;

/// `softmax` / `log_softmax` along `axis`, computed stably in f64 (the max
/// is subtracted first, so large inputs do not overflow). A slice that is
/// all `-inf` gives NaN, as in torch (attention handles fully masked rows
/// itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Softmax {
    pub axis: i64,
    pub log: bool,
}

impl OpImpl for Softmax {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(self.name(), inputs, 1)?;
        want_float(self.name(), "operand", &inputs[0])?;
        inputs[0]
            .shape
            .axis(self.axis)
            .map_err(|e| format!("{}: {e}", self.name()))?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let (outer, len, inner) = around_axis(x.shape(), axis);
        let mut v = x.to_f64_vec();
        for o in 0..outer {
            for i in 0..inner {
                let at = |k: usize| (o * len + k) * inner + i;
                let max = (0..len).map(|k| v[at(k)]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..len).map(|k| (v[at(k)] - max).exp()).sum();
                for k in 0..len {
                    let e = v[at(k)] - max;
                    v[at(k)] = if self.log { e - sum.ln() } else { e.exp() / sum };
                }
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}

/// Checks that an optional affine operand has exactly the normalised shape.
fn check_affine(name: &str, what: &str, x: &TensorType, p: &TensorType, axis: usize) -> Result<(), String> {
    same_dtype(name, x, p)?;
    if p.shape.dims() != &x.shape.dims()[axis..] {
        return Err(format!(
            "{name}: {what} {p} must have the normalised shape {}",
            Shape(x.shape.dims()[axis..].to_vec())
        ));
    }
    Ok(())
}

/// Runs `f` on every normalised group (the trailing axes from `axis`) in f64.
fn per_group(x: &Tensor, axis: usize, mut f: impl FnMut(&mut [f64])) -> Vec<f64> {
    let group: usize = x.shape()[axis..].iter().product();
    let mut v = x.to_f64_vec();
    if group > 0 {
        for chunk in v.chunks_mut(group) {
            f(chunk);
        }
    }
    v
}

/// LayerNorm over the trailing axes from `axis`:
/// `(x - mean) / sqrt(var + eps) * scale + bias` (biased variance);
/// operands `x[, scale[, bias]]`.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerNorm {
    pub axis: i64,
    pub eps: f64,
}

impl OpImpl for LayerNorm {
    fn name(&self) -> &'static str {
        "layer_norm"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis)), ("eps", Attr::Float(self.eps))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        if !(1..=3).contains(&inputs.len()) {
            return Err(format!(
                "layer_norm takes 1 to 3 operands (x[, scale[, bias]]) but got {}",
                inputs.len()
            ));
        }
        let x = &inputs[0];
        want_float("layer_norm", "operand", x)?;
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(format!("layer_norm: eps must be >= 0, got {}", self.eps));
        }
        let axis = x.shape.axis(self.axis).map_err(|e| format!("layer_norm: {e}"))?;
        for (p, what) in inputs[1..].iter().zip(["scale", "bias"]) {
            check_affine("layer_norm", what, x, p, axis)?;
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let scale = inputs.get(1).map(|t| t.to_f64_vec());
        let bias = inputs.get(2).map(|t| t.to_f64_vec());
        let v = per_group(x, axis, |g| {
            let n = g.len() as f64;
            let mean = g.iter().sum::<f64>() / n;
            let var = g.iter().map(|e| (e - mean) * (e - mean)).sum::<f64>() / n;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (k, e) in g.iter_mut().enumerate() {
                *e = (*e - mean) * inv * scale.as_ref().map_or(1.0, |s| s[k])
                    + bias.as_ref().map_or(0.0, |b| b[k]);
            }
        });
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}

/// RMSNorm over the trailing axes from `axis`:
/// `x / sqrt(mean(x²) + eps) * weight`; operands `x[, weight]`.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNorm {
    pub axis: i64,
    pub eps: f64,
}

impl OpImpl for RmsNorm {
    fn name(&self) -> &'static str {
        "rms_norm"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis)), ("eps", Attr::Float(self.eps))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        if !(1..=2).contains(&inputs.len()) {
            return Err(format!(
                "rms_norm takes 1 or 2 operands (x[, weight]) but got {}",
                inputs.len()
            ));
        }
        let x = &inputs[0];
        want_float("rms_norm", "operand", x)?;
        if self.eps.is_nan() || self.eps < 0.0 {
            return Err(format!("rms_norm: eps must be >= 0, got {}", self.eps));
        }
        let axis = x.shape.axis(self.axis).map_err(|e| format!("rms_norm: {e}"))?;
        if let Some(w) = inputs.get(1) {
            check_affine("rms_norm", "weight", x, w, axis)?;
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let axis = normalize_axis(self.axis, x.rank())?;
        let w = inputs.get(1).map(|t| t.to_f64_vec());
        let v = per_group(x, axis, |g| {
            let ms = g.iter().map(|e| e * e).sum::<f64>() / g.len() as f64;
            let inv = 1.0 / (ms + self.eps).sqrt();
            for (k, e) in g.iter_mut().enumerate() {
                *e *= inv * w.as_ref().map_or(1.0, |w| w[k]);
            }
        });
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}

/// Residual add fused with RMSNorm: `add_rms_norm(x, residual[, weight])`
/// returns `(s, rms_norm(s, weight))` with `s = x + residual`. The sum is
/// rounded to the dtype before it is normalised, exactly as the unfused
/// `add` then `rms_norm` compute; the operands have one type.
#[derive(Clone, Debug, PartialEq)]
pub struct AddRmsNorm {
    pub axis: i64,
    pub eps: f64,
}

impl OpImpl for AddRmsNorm {
    fn name(&self) -> &'static str {
        "add_rms_norm"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("axis", Attr::Int(self.axis)), ("eps", Attr::Float(self.eps))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        if !(2..=3).contains(&inputs.len()) {
            return Err(format!(
                "add_rms_norm takes 2 or 3 operands (x, residual[, weight]) but got {}",
                inputs.len()
            ));
        }
        if inputs[0] != inputs[1] {
            return Err(format!(
                "add_rms_norm needs x and residual of one type, got {} and {}",
                inputs[0], inputs[1]
            ));
        }
        let norm = RmsNorm {
            axis: self.axis,
            eps: self.eps,
        };
        let mut args = vec![inputs[0].clone()];
        args.extend(inputs.get(2).cloned());
        let out = norm
            .infer(&args)
            .map_err(|e| e.replace("rms_norm", "add_rms_norm"))?;
        Ok(vec![inputs[0].clone(), out[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (x, r) = (inputs[0], inputs[1]);
        let sum: Vec<f64> = x
            .to_f64_vec()
            .into_iter()
            .zip(r.to_f64_vec())
            .map(|(a, b)| a + b)
            .collect();
        let s = Tensor::from_f64(x.dtype(), x.shape(), &sum);
        let norm = RmsNorm {
            axis: self.axis,
            eps: self.eps,
        };
        let mut args = vec![&s];
        args.extend(inputs.get(2).copied());
        let n = norm.eval(&args, cx)?.remove(0);
        Ok(vec![s, n])
    }
}

/// Rotary position embedding: `rope(x, cos, sin)` computes
/// `x·cos + rotate(x)·sin` on the first R channels of the last axis, where R
/// is the last extent of `cos`/`sin` (R < head size leaves the rest as is:
/// partial rotary). `rotate` is `rotate_half` (`[-x₂, x₁]`, the Llama/NeoX
/// layout) or, when `interleaved`, pairwise (`(x₀, x₁) → (-x₁, x₀)`, the
/// GPT-J layout). `cos`/`sin` carry one value per rotated channel, read as
/// `cos[k]` for channel `k` (for rotate_half, the `cat(freqs, freqs)` tables
/// Hugging Face builds; for interleaved, the `repeat_interleave`d ones) and
/// broadcast against `x`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rope {
    pub interleaved: bool,
}

impl OpImpl for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("interleaved", Attr::Bool(self.interleaved))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("rope", inputs, 3)?;
        let (x, cos, sin) = (&inputs[0], &inputs[1], &inputs[2]);
        want_float("rope", "operand", x)?;
        same_dtype("rope", x, cos)?;
        same_dtype("rope", x, sin)?;
        if cos != sin {
            return Err(format!("rope: cos {cos} and sin {sin} must have one type"));
        }
        if x.rank() == 0 || cos.rank() == 0 {
            return Err(format!("rope needs operands of rank >= 1, got {x} and {cos}"));
        }
        let d = &x.shape.dims()[x.rank() - 1];
        let r = &cos.shape.dims()[cos.rank() - 1];
        let fits = match (r.as_const(), d.as_const()) {
            (Some(r), Some(d)) => r % 2 == 0 && r <= d && r > 0,
            (Some(r), None) => r % 2 == 0 && r > 0,
            _ => r == d,
        };
        if !fits {
            return Err(format!(
                "rope: cos/sin last extent {r} must be even and at most the head size {d}"
            ));
        }
        let xl = Shape(x.shape.dims()[..x.rank() - 1].to_vec());
        let cl = Shape(cos.shape.dims()[..cos.rank() - 1].to_vec());
        match broadcast_shapes(&xl, &cl) {
            Ok(s) if s == xl => {}
            _ => return Err(format!("rope: cos/sin {cos} do not broadcast to {x}")),
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (x, cos, sin) = (inputs[0], inputs[1], inputs[2]);
        let d = x.shape()[x.rank() - 1];
        let r = cos.shape()[cos.rank() - 1];
        if r > d || r % 2 != 0 {
            return Err(format!("rope: rotary extent {r} does not fit head size {d}"));
        }
        let rows = x.numel() / d.max(1);
        // Map each row of x to its row of cos/sin by broadcasting the leading dims.
        let lead = &x.shape()[..x.rank() - 1];
        let cos_rows = broadcast_map(&cos.shape()[..cos.rank() - 1], lead);
        let (xv, cv, sv) = (x.to_f64_vec(), cos.to_f64_vec(), sin.to_f64_vec());
        let mut out = xv.clone();
        let half = r / 2;
        for row in 0..rows {
            let xr = &xv[row * d..row * d + d];
            let c = &cv[cos_rows[row] * r..cos_rows[row] * r + r];
            let s = &sv[cos_rows[row] * r..cos_rows[row] * r + r];
            for k in 0..r {
                let rot = if self.interleaved {
                    if k % 2 == 0 {
                        -xr[k + 1]
                    } else {
                        xr[k - 1]
                    }
                } else if k < half {
                    -xr[k + half]
                } else {
                    xr[k - half]
                };
                out[row * d + k] = xr[k] * c[k] + rot * s[k];
            }
        }
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &out)])
    }
}

/// `swiglu(gate, up)`: `silu(gate) * up`, the gated MLP activation of the
/// Llama family, computed in f64 and rounded once. Operands have one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwiGlu;

impl OpImpl for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("swiglu", inputs, 2)?;
        want_float("swiglu", "gate", &inputs[0])?;
        if inputs[0] != inputs[1] {
            return Err(format!(
                "swiglu needs gate and up of one type, got {} and {}",
                inputs[0], inputs[1]
            ));
        }
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (g, u) = (inputs[0], inputs[1]);
        let v: Vec<f64> = g
            .to_f64_vec()
            .into_iter()
            .zip(u.to_f64_vec())
            .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
            .collect();
        Ok(vec![Tensor::from_f64(g.dtype(), g.shape(), &v)])
    }
}

/// Embedding lookup `embedding(weight[V, D], ids)` → `ids.shape + [D]`
/// (the operand order of `aten::embedding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedding;

impl OpImpl for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("embedding", inputs, 2)?;
        let (w, ids) = (&inputs[0], &inputs[1]);
        if w.rank() != 2 {
            return Err(format!("embedding needs a [vocab, dim] table, got {w}"));
        }
        if !ids.dtype.is_index() {
            return Err(format!("embedding needs i32 or i64 ids, got {ids}"));
        }
        let mut dims: Vec<Dim> = ids.shape.dims().to_vec();
        dims.push(w.shape.dims()[1].clone());
        Ok(vec![TensorType::new(w.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        Ok(vec![take(inputs[0], inputs[1], 0, false, "embedding")?])
    }
}
