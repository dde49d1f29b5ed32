//! Eager attention as transformers writes it, into
//! `scaled_dot_product_attention`:
//!
//! `softmax(q·kᵀ·scale + mask, -1)·v`, with the scale multiplied (Llama
//! family) or divided (GPT-2), on the scores or on q, the mask added on
//! either side or absent, and the softmax wrapped in the f32 casts of
//! half-precision models. In the builder:
//!
//! - the scale must be a scalar constant (a tensor scale is a near miss);
//! - `k` and `v` that come out of `repeat_kv` (`unsqueeze` at 2 → `expand` →
//!   `reshape`) are replaced by the kv heads before the repeat (GQA);
//! - a mask that is exactly `triu(full(-inf), 1)`, or the boolean causal
//!   mask made additive, `where(tril(full(true)), 0, -inf)`, over the
//!   scores' last two extents becomes `causal = true`; any other additive
//!   mask (another diagonal, another fill) stays an operand with
//!   `causal = false` (it is never assumed causal).

use egg::Id;
use optc_ir::ops::{
    Expand, Full, Op, Reshape, Scalar, ScaledDotProductAttention, Triangular, Unsqueeze, Where,
};
use optc_ir::DType;

use super::{rule, Builder, Rule};
use crate::fusion::egraph::{find_op, ty, FusionGraph, Node};

/// The kv heads before `repeat_kv`, or the class itself.
fn unrepeat(eg: &FusionGraph, c: Id) -> Id {
    let inner = (|| {
        let r = find_op(eg, c, |o| matches!(o, Op::Reshape(Reshape { .. })))?;
        let e = find_op(eg, r[0], |o| matches!(o, Op::Expand(Expand { .. })))?;
        let u = find_op(
            eg,
            e[0],
            |o| matches!(o, Op::Unsqueeze(Unsqueeze { axes }) if axes == &[2]),
        )?;
        let (kk, out) = (ty(eg, u[0])?, ty(eg, c)?);
        let (kd, od) = (kk.shape.dims(), out.shape.dims());
        // [B, Hkv, S, D] → [B, Hkv*rep, S, D] with the heads repeated in place.
        let heads_ok = match (kd.get(1)?.as_const(), od.get(1)?.as_const()) {
            (Some(a), Some(b)) => a > 0 && b % a == 0,
            _ => false,
        };
        let same_rest = kd.len() == 4 && od.len() == 4 && kd[0] == od[0] && kd[2] == od[2] && kd[3] == od[3];
        (heads_ok && same_rest && kk.dtype == out.dtype).then_some(u[0])
    })();
    inner.unwrap_or(c)
}

/// Is class `mask` a causal mask of shape `[Sq, Sk]` (`Sq = Sk`):
/// `triu(full(-inf), 1)` or `where(tril(full(true)), 0, -inf)`?
fn is_causal(eg: &FusionGraph, mask: Id, sq: &optc_ir::Dim, sk: &optc_ir::Dim) -> bool {
    let shape_ok = ty(eg, mask).is_some_and(|m| m.shape.dims() == [sq.clone(), sk.clone()]);
    shape_ok && sq == sk && (is_triu_neg_inf(eg, mask) || is_where_causal(eg, mask))
}

/// `triu(full(-inf), 1)`: −∞ strictly above the diagonal, 0 elsewhere.
fn is_triu_neg_inf(eg: &FusionGraph, mask: Id) -> bool {
    let Some(t) = find_op(eg, mask, |o| {
        matches!(o, Op::Triangular(Triangular { upper: true, k: 1 }))
    }) else {
        return false;
    };
    find_op(
        eg,
        t[0],
        |o| matches!(o, Op::Full(Full { value: Scalar::Float(v), .. }) if *v == f64::NEG_INFINITY),
    )
    .is_some()
}

/// `where(tril(full(true)), 0, -inf)`: the boolean "may attend" mask of
/// `torch.tril(torch.ones(S, S, dtype=bool))` turned additive.
fn is_where_causal(eg: &FusionGraph, mask: Id) -> bool {
    let Some(w) = find_op(eg, mask, |o| matches!(o, Op::Where(Where))) else {
        return false;
    };
    let (cond, keep, drop) = (w[0], w[1], w[2]);
    if eg[keep].data.scalar != Some(0.0) || eg[drop].data.scalar != Some(f64::NEG_INFINITY) {
        return false;
    }
    let Some(t) = find_op(eg, cond, |o| {
        matches!(o, Op::Triangular(Triangular { upper: false, k: 0 }))
    }) else {
        return false;
    };
    let all_true = |o: &Op| match o {
        Op::Full(Full {
            value,
            dtype: DType::Bool,
            ..
        }) => match value {
            Scalar::Int(v) => *v != 0,
            Scalar::Float(v) => *v != 0.0,
        },
        _ => false,
    };
    find_op(eg, t[0], all_true).is_some()
}

/// The scalar scale of class `s` (`1/s` when the model divides).
fn scale(eg: &FusionGraph, s: Id, divide: bool) -> Option<f64> {
    let v = eg[s].data.scalar?;
    let v = if divide { 1.0 / v } else { v };
    (v.is_finite() && v != 0.0).then(|| format!("{:?}", v as f32).parse().unwrap_or(v))
}

fn fused(
    eg: &mut FusionGraph,
    q: Id,
    k: Id,
    v: Id,
    s: f64,
    mask: Option<Id>,
    k_bshd: bool,
) -> Option<(Op, Vec<Id>)> {
    // `k` is in [B, S, H, D] layout when canonicalize composed the head
    // transpose with kᵀ (perm [0, 2, 3, 1]): put it back in [B, H, S, D].
    let k = if k_bshd {
        if ty(eg, k)?.rank() != 4 {
            return None;
        }
        let op = Op::Transpose(optc_ir::ops::Transpose {
            perm: vec![0, 2, 1, 3],
        });
        let key = eg.analysis.key(op);
        eg.add(Node::Op(key, vec![k]))
    } else {
        k
    };
    let qt = ty(eg, q)?;
    let kt = ty(eg, k)?;
    let r = qt.rank();
    if r < 3 || kt.rank() != r {
        return None;
    }
    let (sq, sk) = (&qt.shape.dims()[r - 2], &kt.shape.dims()[r - 2]);
    let (causal, mask) = match mask {
        Some(m) if is_causal(eg, m, sq, sk) => (true, None),
        other => (false, other),
    };
    let mut args = vec![q, unrepeat(eg, k), unrepeat(eg, v)];
    args.extend(mask);
    let op = Op::Attention(ScaledDotProductAttention {
        causal,
        scale: Some(s),
    });
    Some((op, args))
}

/// Builder for a pattern with a mask (`?q ?k ?v ?s ?m`); `DIV` when the
/// model divides by the scale, `BSHD` when k is in [B, S, H, D] layout.
fn with_mask<const DIV: bool, const BSHD: bool>(eg: &mut FusionGraph, x: &[Id]) -> Option<(Op, Vec<Id>)> {
    let s = scale(eg, x[3], DIV)?;
    fused(eg, x[0], x[1], x[2], s, Some(x[4]), BSHD)
}

/// Builder for a pattern without a mask (`?q ?k ?v ?s`).
fn no_mask<const DIV: bool, const BSHD: bool>(eg: &mut FusionGraph, x: &[Id]) -> Option<(Op, Vec<Id>)> {
    let s = scale(eg, x[3], DIV)?;
    fused(eg, x[0], x[1], x[2], s, None, BSHD)
}

pub fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    let vars = ["?q", "?k", "?v", "?s", "?m"];
    // kᵀ of k in [B, H, S, D] (rank 4 or 3), or of k in [B, S, H, D].
    for perm in ["[0,1,3,2]", "[0,2,1]", "[0,2,3,1]"] {
        let bshd = perm == "[0,2,3,1]";
        let kt = format!("(transpose{{perm={perm}}} ?k)");
        // (scores expression, divide?)
        let scored = [
            (format!("(mul (matmul ?q {kt}) ?s)"), false),
            (format!("(mul ?s (matmul ?q {kt}))"), false),
            (format!("(matmul (mul ?q ?s) {kt})"), false),
            (format!("(div (matmul ?q {kt}) ?s)"), true),
        ];
        for (si, (scores, divide)) in scored.iter().enumerate() {
            let masked = [format!("(add {scores} ?m)"), format!("(add ?m {scores})")];
            for casts in [None, Some("bf16"), Some("f16")] {
                let soft = |x: &str| match casts {
                    None => format!("(softmax{{axis=-1}} {x})"),
                    Some(dt) => format!("(cast{{to={dt}}} (softmax{{axis=-1}} (cast{{to=f32}} {x})))"),
                };
                for (mi, m) in masked.iter().enumerate() {
                    let pat = format!("(matmul {} ?v)", soft(m));
                    let name = format!("attn-{perm}-{si}-{mi}-{}", casts.unwrap_or("plain"));
                    let b: Builder = match (*divide, bshd) {
                        (false, false) => with_mask::<false, false>,
                        (true, false) => with_mask::<true, false>,
                        (false, true) => with_mask::<false, true>,
                        (true, true) => with_mask::<true, true>,
                    };
                    out.push(rule(&name, &pat, &vars, b));
                }
                let pat = format!("(matmul {} ?v)", soft(scores));
                let name = format!("attn-{perm}-{si}-nomask-{}", casts.unwrap_or("plain"));
                let b: Builder = match (*divide, bshd) {
                    (false, false) => no_mask::<false, false>,
                    (true, false) => no_mask::<true, false>,
                    (false, true) => no_mask::<false, true>,
                    (true, true) => no_mask::<true, true>,
                };
                out.push(rule(&name, &pat, &vars[..4], b));
            }
        }
    }
    out
}
