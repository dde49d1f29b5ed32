//! Rotary embedding, into `rope`. The `rotate_half` form transformers
//! writes becomes `rope(x, cos, sin) {interleaved = false}`:
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
//!
//! Interleaved (GPT-J's `rotate_every_two`): `x * cos + flatten(stack(
//! -x[..., 1::2], x[..., ::2], -1)) * sin`, traced as `reshape(concat(
//! unsqueeze(neg(odd), -1), unsqueeze(even, -1)))`, becomes
//! `rope(x, cos, sin) {interleaved = true}`.

use egg::Id;
use optc_ir::ops::{Concat, Op, Rope, Slice, UnaryKind, Unsqueeze};

use super::{rule, Rule};
use crate::fusion::egraph::{find_op, ty, FusionGraph, Node};

/// Is `axis` the last axis of class `x`'s value (`-1` or `rank - 1`, as
/// frontends spell it either way)?
fn last_axis(eg: &FusionGraph, x: Id, axis: i64) -> bool {
    axis == -1 || ty(eg, x).is_some_and(|t| axis == t.rank() as i64 - 1)
}

/// Is `end` the end of the last axis of `x` (`None`, or an end at or past
/// its extent)?
fn to_end(eg: &FusionGraph, x: Id, end: Option<i64>) -> bool {
    match end {
        None => true,
        Some(e) => ty(eg, x)
            .and_then(|t| t.shape.dims().last()?.as_const())
            .is_some_and(|n| e >= n),
    }
}

/// Does class `c` hold `slice(x) {axis = last, start, end, step = 1}`
/// (`end = None` also matching an explicit end at the extent)?
fn has_slice(eg: &FusionGraph, c: Id, x: Id, start: i64, end: Option<i64>) -> bool {
    let x = eg.find(x);
    eg[c].nodes.iter().any(|n| match n {
        Node::Op(k, ch) if ch.len() == 1 && eg.find(ch[0]) == x => match eg.analysis.ops.get(k) {
            Some(Op::Slice(Slice {
                axis,
                start: s,
                end: e,
                step: 1,
            })) if last_axis(eg, x, *axis) && *s == start => match end {
                None => to_end(eg, x, *e),
                Some(_) => *e == end,
            },
            _ => false,
        },
        _ => false,
    })
}

/// Is class `rot` `cat(-x[..., h:], x[..., :h])` (rotate_half)?
fn is_rotate_half(eg: &FusionGraph, rot: Id, x: Id, h: i64) -> bool {
    let concat_last = |o: &Op| matches!(o, Op::Concat(Concat { axis }) if last_axis(eg, rot, *axis));
    let Some(parts) = find_op(eg, rot, concat_last) else {
        return false;
    };
    if parts.len() != 2 {
        return false;
    }
    let neg = find_op(eg, parts[0], |o| matches!(o, Op::Unary(UnaryKind::Neg)));
    neg.is_some_and(|n| has_slice(eg, n[0], x, h, None)) && has_slice(eg, parts[1], x, 0, Some(h))
}

/// Is class `rot` `flatten(stack(-x[..., 1::2], x[..., ::2]))` (GPT-J's
/// rotate_every_two: `reshape(concat(unsqueeze(-odd, -1), unsqueeze(even, -1)))`)?
fn is_rotate_every_two(eg: &FusionGraph, rot: Id, x: Id) -> bool {
    let x = eg.find(x);
    let strided = |c: Id, start: i64| {
        eg[c].nodes.iter().any(|n| match n {
            Node::Op(k, ch) if ch.len() == 1 && eg.find(ch[0]) == x => matches!(
                eg.analysis.ops.get(k),
                Some(Op::Slice(Slice { axis: -1, start: s, end: None, step: 2 })) if *s == start
            ),
            _ => false,
        })
    };
    let unsq = |c: Id| {
        find_op(
            eg,
            c,
            |o| matches!(o, Op::Unsqueeze(Unsqueeze { axes }) if axes == &[-1]),
        )
        .map(|u| u[0])
    };
    let check = || -> Option<bool> {
        let r = find_op(eg, rot, |o| matches!(o, Op::Reshape(_)))?;
        let parts = find_op(eg, r[0], |o| matches!(o, Op::Concat(Concat { axis: -1 })))?;
        if parts.len() != 2 {
            return Some(false);
        }
        let neg_odd = unsq(parts[0])?;
        let even = unsq(parts[1])?;
        let odd = find_op(eg, neg_odd, |o| matches!(o, Op::Unary(UnaryKind::Neg)))?[0];
        Some(strided(odd, 1) && strided(even, 0))
    };
    check().unwrap_or(false)
}

fn build(eg: &mut FusionGraph, v: &[Id]) -> Option<(Op, Vec<Id>)> {
    let (x, cos, sin, rot) = (v[0], v[1], v[2], v[3]);
    let (xt, ct, st) = (ty(eg, x)?, ty(eg, cos)?, ty(eg, sin)?);
    let d = xt.shape.dims().last()?.as_const()?;
    if ct != st || ct.shape.dims().last()?.as_const()? != d || d % 2 != 0 || ty(eg, rot)? != xt {
        return None;
    }
    let interleaved = if is_rotate_half(eg, rot, x, d / 2) {
        false
    } else if is_rotate_every_two(eg, rot, x) {
        true
    } else {
        return None;
    };
    Some((Op::Rope(Rope { interleaved }), vec![x, cos, sin]))
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
    for (i, a) in ["(mul ?x ?cos)", "(mul ?cos ?x)"].iter().enumerate() {
        for (j, b) in ["(mul ?rot ?sin)", "(mul ?sin ?rot)"].iter().enumerate() {
            for (k, pat) in [format!("(add {a} {b})"), format!("(add {b} {a})")]
                .iter()
                .enumerate()
            {
                out.push(rule(
                    &format!("rope-{i}{j}{k}"),
                    pat,
                    &["?x", "?cos", "?sin", "?rot"],
                    build,
                ));
            }
        }
    }
    out
}
