//! Rotary embedding in the `rotate_half` form transformers writes, into
//! `rope(x, cos, sin) {interleaved = false}`:
//!
//! `x * cos + cat(-x[..., h:], x[..., :h]) * sin`, in any operand order of
//! the `add` and the two `mul`s. The slices are checked in the builder (their
//! bounds depend on the head size): the second half `x[..., h:]` and the
//! first half `x[..., :h]` of the same `x`, with `2h` the head size and the
//! last extent of `cos`/`sin`.
//!
//! Partial rotary (Phi-3 with `partial_rotary_factor < 1`):
//! `cat(rope(x[..., :r], cos, sin), x[..., r:])` becomes `rope(x, cos, sin)`
//! (the IR op rotates the first `r` channels, `r` the last extent of `cos`).
//! The interleaved GPT-J form is not matched yet.

use egg::Id;
use optc_ir::ops::{Op, Rope, Slice};

use super::{rule, Rule};
use crate::fusion::egraph::{ty, FusionGraph, Node};

/// Does class `c` hold `slice(x) {axis = -1, start, end, step = 1}`?
fn has_slice(eg: &FusionGraph, c: Id, x: Id, start: i64, end: Option<i64>) -> bool {
    let x = eg.find(x);
    eg[c].nodes.iter().any(|n| match n {
        Node::Op(k, ch) if ch.len() == 1 && eg.find(ch[0]) == x => matches!(
            eg.analysis.ops.get(k),
            Some(Op::Slice(Slice { axis: -1, start: s, end: e, step: 1 })) if *s == start && *e == end
        ),
        _ => false,
    })
}

fn build(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, cos, sin, hi, lo) = (v[0], v[1], v[2], v[3], v[4]);
    let (xt, ct, st) = (ty(eg, x)?, ty(eg, cos)?, ty(eg, sin)?);
    let d = xt.shape.dims().last()?.as_const()?;
    if ct != st || ct.shape.dims().last()?.as_const()? != d || d % 2 != 0 {
        return None;
    }
    let h = d / 2;
    if !(has_slice(eg, hi, x, h, None) && has_slice(eg, lo, x, 0, Some(h))) {
        return None;
    }
    Some((Op::Rope(Rope { interleaved: false }), vec![x, cos, sin]))
}

/// `?rot ?pass`: `rot` holds `rope(x[..., :r], cos, sin)`, `pass` is `x[..., r:]`.
fn build_partial(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (rot, pass) = (v[0], v[1]);
    let (x_rot, cos, sin) = eg[rot].nodes.iter().find_map(|n| match n {
        Node::Op(k, ch)
            if ch.len() == 3
                && matches!(
                    eg.analysis.ops.get(k),
                    Some(Op::Rope(Rope { interleaved: false }))
                ) =>
        {
            Some((ch[0], ch[1], ch[2]))
        }
        _ => None,
    })?;
    let r = ty(eg, cos)?.shape.dims().last()?.as_const()?;
    // x_rot is x[..., :r] and pass is x[..., r:] of the same x.
    let x = eg[x_rot].nodes.iter().find_map(|n| match n {
        Node::Op(k, ch) if ch.len() == 1 => match eg.analysis.ops.get(k) {
            Some(Op::Slice(Slice {
                axis: -1,
                start: 0,
                end: Some(e),
                step: 1,
            })) if *e == r => Some(ch[0]),
            _ => None,
        },
        _ => None,
    })?;
    if !has_slice(eg, pass, x, r, None) {
        return None;
    }
    Some((Op::Rope(Rope { interleaved: false }), vec![x, cos, sin]))
}

pub fn rules() -> Vec<Rule> {
    let mut out = vec![rule(
        "rope-partial",
        "(concat{axis=-1} ?rot ?pass)",
        &["?rot", "?pass"],
        build_partial,
    )];
    let rot = "(concat{axis=-1} (neg ?hi) ?lo)";
    for (i, a) in ["(mul ?x ?cos)", "(mul ?cos ?x)"].iter().enumerate() {
        for (j, b) in [format!("(mul {rot} ?sin)"), format!("(mul ?sin {rot})")]
            .iter()
            .enumerate()
        {
            for (k, pat) in [format!("(add {a} {b})"), format!("(add {b} {a})")]
                .iter()
                .enumerate()
            {
                out.push(rule(
                    &format!("rope-half-{i}{j}{k}"),
                    pat,
                    &["?x", "?cos", "?sin", "?hi", "?lo"],
                    build,
                ));
            }
        }
    }
    out
}
