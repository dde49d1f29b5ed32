//! ONNX `LinearAttention` (opset 27): the recurrent form of linear
//! attention (`linear`, `gated`, `delta`, `gated_delta` update rules),
//! unrolled over the static sequence length into IR matmuls and
//! elementwise ops. As in the reference, everything is computed in f32 on
//! `[B, H, T, D]` views; the state is `[B, H_kv, d_k, d_v]`, and GQA reads
//! it for `q_num_heads / kv_num_heads` consecutive query heads.

use optc_ir::ops::{BinaryKind as B, Concat, Full, MatMul, Scalar, UnaryKind as U};
use optc_ir::{DType, Dim, Op};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::{slice_axis, transpose_to};
use super::{binary, static_dim, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("LinearAttention", linear_attention)];

/// The packed width of a `[B, T, H·D]` input divided by `heads`.
fn per_head(x: &Val, heads: i64, what: &str) -> Result<i64, NodeError> {
    let w = static_dim(&x.dims()[2], &format!("{what} width"))?;
    if w % heads != 0 {
        return Err(format!("{what} width {w} is not divisible by {heads} heads").into());
    }
    Ok(w / heads)
}

/// `[B, T, H·D]` → `[B, H, T, D]`.
fn unpack(cx: &mut Cx, x: &Val, heads: i64, d: i64) -> Result<Val, NodeError> {
    let (b, t) = (x.dims()[0].clone(), x.dims()[1].clone());
    let y = cx.reshape(x, vec![b, t, Dim::constant(heads), Dim::constant(d)])?;
    transpose_to(cx, &y, vec![0, 2, 1, 3])
}

fn linear_attention(cx: &mut Cx, n: &NodeCx) -> R {
    let _chunk = n.int("chunk_size", 64)?; // a tuning hint: no effect on the result
    let hq = n.req_int("q_num_heads")?;
    let hkv = n.req_int("kv_num_heads")?;
    let scale = n.float("scale", 0.0)?;
    let rule = n.string("update_rule", "gated_delta")?;
    let (gating, delta) = match rule.as_str() {
        "linear" => (false, false),
        "gated" => (true, false),
        "delta" => (false, true),
        "gated_delta" => (true, true),
        r => return Err(format!("update_rule '{r}' is not one of linear, gated, delta, gated_delta").into()),
    };
    if hq <= 0 || hkv <= 0 || hq % hkv != 0 {
        return Err(format!("q_num_heads {hq} must be a positive multiple of kv_num_heads {hkv}").into());
    }
    let (q, k, v) = (cx.input(n, 0)?, cx.input(n, 1)?, cx.input(n, 2)?);
    want_float(n, &q)?;
    let past = cx.opt_input(n, 3)?;
    let decay = cx.opt_input(n, 4)?;
    let beta = cx.opt_input(n, 5)?;
    if gating != decay.is_some() {
        return Err(format!(
            "update_rule '{rule}' {} the decay input",
            if gating { "requires" } else { "forbids" }
        )
        .into());
    }
    if delta != beta.is_some() {
        return Err(format!(
            "update_rule '{rule}' {} the beta input",
            if delta { "requires" } else { "forbids" }
        )
        .into());
    }
    for (name, x) in [("query", &q), ("key", &k), ("value", &v)] {
        if x.rank() != 3 {
            return Err(format!("{name} must be [B, T, H*D], not {}", x.ty).into());
        }
    }
    let out_dt = q.dtype();
    let (b, t) = (q.dims()[0].clone(), static_dim(&q.dims()[1], "sequence length")?);
    // Unrolled step by step: refuse sequences that would explode the graph.
    super::checked_product(&[t], super::UNROLL_LIMIT, "LinearAttention sequence length")?;
    let dk = per_head(&q, hq, "query")?;
    let dv = per_head(&v, hkv, "value")?;
    if per_head(&k, hkv, "key")? != dk {
        return Err(format!("key {} does not hold {hkv} heads of size {dk}", k.ty).into());
    }
    let group = hq / hkv;
    let f32_of = |cx: &mut Cx, x: &Val| cx.cast(x, DType::F32);
    let q = f32_of(cx, &q)?;
    let q4 = unpack(cx, &q, hq, dk)?;
    let k = f32_of(cx, &k)?;
    let k4 = unpack(cx, &k, hkv, dk)?;
    let v = f32_of(cx, &v)?;
    let v4 = unpack(cx, &v, hkv, dv)?;
    // exp(decay) as [B, H_kv, T, 1] (per head) or [B, H_kv, T, d_k].
    let gate = match &decay {
        None => None,
        Some(g) => {
            if g.rank() != 3 {
                return Err(format!("decay must be 3-D, not {}", g.ty).into());
            }
            let last = static_dim(&g.dims()[2], "decay width")?;
            let width = if last == hkv {
                1
            } else if last == hkv * dk {
                dk
            } else {
                return Err(format!(
                    "decay width {last} must be kv_num_heads ({hkv}) or kv_num_heads*d_k ({})",
                    hkv * dk
                )
                .into());
            };
            let g = f32_of(cx, g)?;
            let g4 = unpack(cx, &g, hkv, width)?;
            Some(unary(cx, U::Exp, &g4)?)
        }
    };
    // beta as [B, H_kv or 1, T, 1].
    let beta4 = match &beta {
        None => None,
        Some(bt) => {
            if bt.rank() != 3 {
                return Err(format!("beta must be 3-D, not {}", bt.ty).into());
            }
            let last = static_dim(&bt.dims()[2], "beta width")?;
            if last != hkv && last != 1 {
                return Err(format!("beta width {last} must be kv_num_heads ({hkv}) or 1").into());
            }
            let bt = f32_of(cx, bt)?;
            Some(unpack(cx, &bt, last, 1)?)
        }
    };
    let state_dims = vec![
        b.clone(),
        Dim::constant(hkv),
        Dim::constant(dk),
        Dim::constant(dv),
    ];
    let (mut state, state_dt) = match past {
        Some(p) => {
            if p.dims() != state_dims.as_slice() {
                return Err(format!("past_state is {} but must be [B, {hkv}, {dk}, {dv}]", p.ty).into());
            }
            (f32_of(cx, &p)?, p.dtype())
        }
        None => {
            let z = cx.op(
                Op::Full(Full {
                    shape: state_dims,
                    value: Scalar::Float(0.0),
                    dtype: DType::F32,
                }),
                &[],
            )?;
            (z, out_dt)
        }
    };
    let scale = if scale == 0.0 {
        1.0 / (dk as f64).sqrt()
    } else {
        scale
    };
    let mm = |cx: &mut Cx, a: &Val, b: &Val| cx.op(Op::MatMul(MatMul), &[a.clone(), b.clone()]);
    let mut outs = Vec::new();
    for i in 0..t {
        let step = |cx: &mut Cx, x: &Val| slice_axis(cx, x, 2, i, i + 1, 1);
        let q_t = step(cx, &q4)?; // [B, Hq, 1, dk]
        let k_t = step(cx, &k4)?; // [B, Hkv, 1, dk]
        let mut v_t = step(cx, &v4)?; // [B, Hkv, 1, dv]
        if let Some(g) = &gate {
            let g_t = step(cx, g)?;
            let g_t = transpose_to(cx, &g_t, vec![0, 1, 3, 2])?; // [B, Hkv, dk|1, 1]
            state = binary(cx, B::Mul, &state, &g_t)?;
        }
        if let Some(bt) = &beta4 {
            // v_t ← β_t · (v_t − Sᵀ k_t)
            let got = mm(cx, &k_t, &state)?;
            let d = binary(cx, B::Sub, &v_t, &got)?;
            let b_t = step(cx, bt)?;
            v_t = binary(cx, B::Mul, &b_t, &d)?;
        }
        // S ← S + k_t ⊗ v_t
        let k_col = transpose_to(cx, &k_t, vec![0, 1, 3, 2])?;
        let outer = binary(cx, B::Mul, &k_col, &v_t)?;
        state = binary(cx, B::Add, &state, &outer)?;
        // o_t = scale · q_t S, the query heads of one KV head together.
        let qg = cx.reshape(
            &q_t,
            vec![
                b.clone(),
                Dim::constant(hkv),
                Dim::constant(group),
                Dim::constant(dk),
            ],
        )?;
        let o = mm(cx, &qg, &state)?;
        let o = cx.reshape(
            &o,
            vec![b.clone(), Dim::constant(hq), Dim::constant(1), Dim::constant(dv)],
        )?;
        outs.push(with_scalar(cx, B::Mul, &o, scale)?);
    }
    let y = match outs.len() {
        0 => {
            return unsupported("LinearAttention with an empty sequence is not supported");
        }
        1 => outs.remove(0),
        _ => cx.op(Op::Concat(Concat { axis: 2 }), &outs)?,
    };
    let y = transpose_to(cx, &y, vec![0, 2, 1, 3])?;
    let width = hq
        .checked_mul(dv)
        .ok_or_else(|| NodeError::Invalid(format!("{hq} heads of width {dv} overflow")))?;
    let y = cx.reshape(&y, vec![b, Dim::constant(t), Dim::constant(width)])?;
    let y = cx.cast(&y, out_dt)?;
    let present = cx.cast(&state, state_dt)?;
    Ok(vec![y, present])
}
