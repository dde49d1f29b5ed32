//! LayerNorm written out, into `layer_norm(x, w, b) {axis = -1, eps}`:
//!
//! `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) * w + b` (the textbook
//! form, and what a Python `LayerNorm` written by hand traces to), also with
//! `* rsqrt(...)` instead of `/ sqrt(...)`, and without the `+ b` or
//! `* w`. Means are over the last axis with `keepdim`. Conditions: the
//! exponent is the constant 2, `eps` a scalar constant, and `w`/`b` have
//! exactly the last extent of `x`. (`nn.LayerNorm` already traces to one
//! `layer_norm` op, which frontends keep.)

use egg::Id;
use optc_ir::ops::{LayerNorm, Op};

use super::{rule, Builder, Rule};
use crate::fusion::egraph::{scalar_is, ty, FusionGraph};

fn affine_ok(eg: &FusionGraph, x: Id, p: Id) -> bool {
    match (ty(eg, x), ty(eg, p)) {
        (Some(xt), Some(pt)) => {
            pt.rank() == 1 && xt.shape.dims().last() == pt.shape.dims().first() && xt.dtype == pt.dtype
        }
        _ => false,
    }
}

/// `?x ?two ?eps [?w [?b]]` → `layer_norm(x[, w[, b]])`.
fn build(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, two, eps) = (v[0], v[1], v[2]);
    if !scalar_is(eg, two, 2.0, 0.0) {
        return None;
    }
    let eps = eg[eps].data.scalar?;
    let eps = format!("{:?}", eps as f32).parse::<f64>().unwrap_or(eps);
    if v[3..].iter().any(|&p| !affine_ok(eg, x, p)) {
        return None;
    }
    let mut args = vec![x];
    args.extend_from_slice(&v[3..]);
    Some((Op::LayerNorm(LayerNorm { axis: -1, eps }), args))
}

pub fn rules() -> Vec<Rule> {
    let mean = |e: &str| format!("(reduce_mean{{axes=[-1],keepdims=true}} {e})");
    let centred = format!("(sub ?x {})", mean("?x"));
    let var = mean(&format!("(pow {centred} ?two)"));
    let normed = [
        format!("(div {centred} (sqrt (add {var} ?eps)))"),
        format!("(mul {centred} (rsqrt (add {var} ?eps)))"),
    ];
    let b: Builder = build;
    let mut out = Vec::new();
    for (i, n) in normed.iter().enumerate() {
        out.push(rule(
            &format!("layernorm-{i}-wb"),
            &format!("(add (mul {n} ?w) ?b)"),
            &["?x", "?two", "?eps", "?w", "?b"],
            b,
        ));
        out.push(rule(
            &format!("layernorm-{i}-w"),
            &format!("(mul {n} ?w)"),
            &["?x", "?two", "?eps", "?w"],
            b,
        ));
        out.push(rule(&format!("layernorm-{i}"), n, &["?x", "?two", "?eps"], b));
    }
    out
}
