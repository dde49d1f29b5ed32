//! RMSNorm as transformers writes it, into `rms_norm`:
//!
//! `w * (x * rsqrt(mean(x², axis -1, keepdim) + eps))`, in either operand
//! order of each `mul` and `add`, and with the f32 upcast of half-precision
//! models: `w * cast_DT(xf * rsqrt(mean(xf²) + eps))` with `xf = cast_f32(x)`.
//! Conditions: the exponent is the constant 2, `eps` a scalar constant, and
//! `w` has exactly the normalised (last) extent of `x`.

use egg::Id;
use optc_ir::ops::{Op, RmsNorm};

use super::{rule, Rule};
use crate::fusion::egraph::{scalar_is, ty, FusionGraph};

/// `?x ?w ?two ?eps` → `rms_norm(x, w)`.
fn build(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, w, two, eps) = (v[0], v[1], v[2], v[3]);
    if !scalar_is(eg, two, 2.0, 0.0) {
        return None;
    }
    // The constant is a float of the model (f32 at most): write it as the
    // shortest decimal of that float (1e-5, not 9.999999747378752e-6).
    let eps = eg[eps].data.scalar?;
    let eps = format!("{:?}", eps as f32).parse::<f64>().unwrap_or(eps);
    let (xt, wt) = (ty(eg, x)?, ty(eg, w)?);
    if wt.rank() != 1 || xt.shape.dims().last() != wt.shape.dims().first() {
        return None;
    }
    Some((Op::RmsNorm(RmsNorm { axis: -1, eps }), vec![x, w]))
}

/// Every spelling: operand orders of the three commutative ops, with and
/// without the half-precision casts.
pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    let mean = |x: &str| format!("(reduce_mean{{axes=[-1],keepdims=true}} (pow {x} ?two))");
    for (cast_in, cast_out) in [
        ("?x".to_string(), None),
        ("(cast{to=f32} ?x)".to_string(), Some("bf16")),
        ("(cast{to=f32} ?x)".to_string(), Some("f16")),
    ] {
        for add_first in [true, false] {
            let var = if add_first {
                format!("(add {} ?eps)", mean(&cast_in))
            } else {
                format!("(add ?eps {})", mean(&cast_in))
            };
            let inv = format!("(rsqrt {var})");
            for x_first in [true, false] {
                let normed = if x_first {
                    format!("(mul {cast_in} {inv})")
                } else {
                    format!("(mul {inv} {cast_in})")
                };
                let normed = match cast_out {
                    Some(dt) => format!("(cast{{to={dt}}} {normed})"),
                    None => normed,
                };
                for w_first in [true, false] {
                    let pat = if w_first {
                        format!("(mul ?w {normed})")
                    } else {
                        format!("(mul {normed} ?w)")
                    };
                    let name = format!(
                        "rmsnorm-{}-{}{}{}",
                        cast_out.unwrap_or("plain"),
                        if add_first { "a" } else { "b" },
                        if x_first { "a" } else { "b" },
                        if w_first { "a" } else { "b" }
                    );
                    out.push(rule(&name, &pat, &["?x", "?w", "?two", "?eps"], build));
                }
            }
        }
    }
    out
}
