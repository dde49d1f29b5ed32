//! Neural-network ops torch keeps whole in an exported graph: embedding,
//! layer/RMS norm, softmax, and scaled-dot-product attention.

use optc_ir::ops::{Embedding, LayerNorm, Op, RmsNorm, ScaledDotProductAttention, Softmax};
use optc_ir::{DType, Value};

use super::{one, Lower};
use crate::fx::import::Cx;
use crate::fx::schema::Node;

type R = Result<Vec<Value>, String>;

fn embedding(cx: &mut Cx, n: &Node) -> R {
    let w = cx.tensor(n, "weight")?;
    let ids = cx.tensor(n, "indices")?;
    one(cx.op(Op::Embedding(Embedding), &[w, ids])?)
}

/// The first normalized axis, checking `normalized_shape` against the
/// input's trailing dims.
fn norm_axis(cx: &Cx, n: &Node, x: Value) -> Result<i64, String> {
    let shape = cx.ints(n, "normalized_shape", None)?;
    let ty = cx.ty(x);
    let dims = ty.shape.dims();
    if shape.is_empty() || shape.len() > dims.len() {
        return Err(format!("normalized_shape {shape:?} does not fit {ty}"));
    }
    let tail = &dims[dims.len() - shape.len()..];
    if tail.iter().zip(&shape).any(|(d, &s)| !d.is(s)) {
        return Err(format!(
            "normalized_shape {shape:?} is not the trailing dims of {ty}"
        ));
    }
    Ok(-(shape.len() as i64))
}

fn layer_norm(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "input")?;
    let axis = norm_axis(cx, n, x)?;
    let eps = cx.float(n, "eps", Some(1e-5))?;
    let mut args = vec![x];
    let (w, b) = (cx.opt_tensor(n, "weight")?, cx.opt_tensor(n, "bias")?);
    match (w, b) {
        (Some(w), b) => {
            args.push(w);
            args.extend(b);
        }
        (None, None) => {}
        (None, Some(_)) => return Err("layer_norm with a bias but no weight is not supported".into()),
    }
    one(cx.op(Op::LayerNorm(LayerNorm { axis, eps }), &args)?)
}

/// `rms_norm(input, normalized_shape, weight, eps)`; without `eps` torch
/// uses the dtype's machine epsilon.
fn rms_norm(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "input")?;
    let axis = norm_axis(cx, n, x)?;
    let eps = match cx.opt_float(n, "eps")? {
        Some(e) => e,
        None => match cx.ty(x).dtype {
            DType::F16 => 9.765625e-4,
            DType::BF16 => 7.8125e-3,
            _ => f32::EPSILON as f64,
        },
    };
    let mut args = vec![x];
    args.extend(cx.opt_tensor(n, "weight")?);
    one(cx.op(Op::RmsNorm(RmsNorm { axis, eps }), &args)?)
}

fn softmax_like(cx: &mut Cx, n: &Node, log: bool) -> R {
    let x = cx.tensor(n, "self")?;
    let dt = match cx.opt_dtype(n, "dtype")? {
        Some(d) => d,
        None if cx.bool(n, "half_to_float", Some(false))? => DType::F32,
        None => cx.ty(x).dtype,
    };
    let x = cx.cast(x, dt)?;
    let axis = cx.int(n, "dim", None)?;
    one(cx.op(Op::Softmax(Softmax { axis, log }), &[x])?)
}

fn softmax(cx: &mut Cx, n: &Node) -> R {
    softmax_like(cx, n, false)
}

fn log_softmax(cx: &mut Cx, n: &Node) -> R {
    softmax_like(cx, n, true)
}

/// `scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal,
/// scale, enable_gqa)`. torch's `is_causal` aligns the mask top-left and
/// the IR's bottom-right; they agree when the query and key lengths are
/// the same dim, which is required.
fn sdpa(cx: &mut Cx, n: &Node) -> R {
    let q = cx.tensor(n, "query")?;
    let k = cx.tensor(n, "key")?;
    let v = cx.tensor(n, "value")?;
    let p = cx.float(n, "dropout_p", Some(0.0))?;
    if p != 0.0 {
        return Err(format!("dropout_p = {p} (inference needs 0)"));
    }
    let causal = cx.bool(n, "is_causal", Some(false))?;
    let mask = cx.opt_tensor(n, "attn_mask")?;
    if causal {
        if mask.is_some() {
            return Err("is_causal together with attn_mask".into());
        }
        let (qt, kt) = (cx.ty(q), cx.ty(k));
        let (qd, kd) = (qt.shape.dims(), kt.shape.dims());
        if qd.len() < 2 || kd.len() < 2 || qd[qd.len() - 2] != kd[kd.len() - 2] {
            return Err(format!(
                "is_causal with query {qt} and key {kt} of different lengths (torch aligns the mask top-left)"
            ));
        }
    }
    let scale = cx.opt_float(n, "scale")?;
    let mut args = vec![q, k, v];
    args.extend(mask);
    one(cx.op(Op::Attention(ScaledDotProductAttention { causal, scale }), &args)?)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.embedding.default", embedding),
    ("aten.layer_norm.default", layer_norm),
    ("aten.rms_norm.default", rms_norm),
    ("aten.softmax.int", softmax),
    ("aten._softmax.default", softmax),
    ("aten.log_softmax.int", log_softmax),
    ("aten._log_softmax.default", log_softmax),
    ("aten.scaled_dot_product_attention.default", sdpa),
];
