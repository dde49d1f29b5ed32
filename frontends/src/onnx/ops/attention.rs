//! ONNX `Attention` (opsets 23–25) as IR matmul/softmax chains, following
//! the operator's function body: √scale on Q and K, optional KV-cache
//! concat, GQA by repeating KV heads, softcap, an additive bias built from
//! the mask, causal frontier and sliding window (per batch for an external
//! cache given by `nonpad_kv_seqlen`, which also masks the padded keys),
//! softmax (optionally in another precision), and zeroed rows where every
//! key is masked. The `fuse_attention` pass can then recognise the common
//! forms.

use optc_ir::ops::{
    BinaryKind as B, CompareKind as C, Concat, MatMul, Reduce, ReduceKind, Softmax, UnaryKind as U,
};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::shape::{expand_to, transpose_to};
use super::{binary, compare, select, static_dim, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("Attention", attention)];

/// `[B, S, H·D]` → `[B, H, S, D]`.
fn split_heads(cx: &mut Cx, x: &Val, heads: i64) -> Result<Val, NodeError> {
    let [b, s, hd] = x.dims() else {
        return Err("3-D inputs must be [batch, seq, hidden]".into());
    };
    let d = hd
        .div_exact(&Dim::constant(heads))
        .ok_or_else(|| NodeError::Invalid(format!("hidden size {hd} is not divisible by {heads} heads")))?;
    let y = cx.reshape(x, vec![b.clone(), s.clone(), Dim::constant(heads), d])?;
    transpose_to(cx, &y, vec![0, 2, 1, 3])
}

fn attention(cx: &mut Cx, n: &NodeCx) -> R {
    let is_causal = n.int("is_causal", 0)? != 0;
    let q_heads = n.opt_int("q_num_heads")?;
    let kv_heads = n.opt_int("kv_num_heads")?;
    let scale = n.opt_float("scale")?;
    let softcap = n.float("softcap", 0.0)?;
    let mode = n.int("qk_matmul_output_mode", 0)?;
    let precision = n.opt_int("softmax_precision")?;
    let left = n.int("left_window_size", -1)?;
    let right = n.int("right_window_size", -1)?;
    let (mut q, mut k, mut v) = (cx.input(n, 0)?, cx.input(n, 1)?, cx.input(n, 2)?);
    want_float(n, &q)?;
    let mask = cx.opt_input(n, 3)?;
    let past_k = cx.opt_input(n, 4)?;
    let past_v = cx.opt_input(n, 5)?;
    let nonpad = cx.opt_input(n, 6)?;
    if past_k.is_some() != past_v.is_some() {
        return Err("past_key and past_value must be given together".into());
    }
    if nonpad.is_some() && past_k.is_some() {
        return Err("nonpad_kv_seqlen cannot be combined with past_key/past_value".into());
    }
    let three_d = q.rank() == 3;
    if three_d {
        let (Some(hq), Some(hkv)) = (q_heads, kv_heads) else {
            return Err("3-D inputs need q_num_heads and kv_num_heads".into());
        };
        q = split_heads(cx, &q, hq)?;
        k = split_heads(cx, &k, hkv)?;
        v = split_heads(cx, &v, hkv)?;
    } else if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err("Q, K and V must all be 3-D or all 4-D".into());
    }
    let dt = q.dtype();
    let head = static_dim(&q.dims()[3], "head size")?;
    let scale = scale.unwrap_or(1.0 / (head as f64).sqrt()).sqrt();
    // Round √scale to the input type first, as the function body does.
    let scale = Tensor::from_f64(dt, &[], &[scale]).to_f64_vec()[0];
    let mut past_len = 0;
    if let (Some(pk), Some(pv)) = (&past_k, &past_v) {
        if pk.rank() != 4 || pv.rank() != 4 {
            return Err(format!(
                "past_key and past_value must be 4-D, not of ranks {} and {}",
                pk.rank(),
                pv.rank()
            )
            .into());
        }
        past_len = static_dim(&pk.dims()[2], "past length")?;
        k = cx.op(Op::Concat(Concat { axis: 2 }), &[pk.clone(), k])?;
        v = cx.op(Op::Concat(Concat { axis: 2 }), &[pv.clone(), v])?;
    }
    let (present_k, present_v) = (k.clone(), v.clone());
    let sq = static_dim(&q.dims()[2], "query length")?;
    let skv = static_dim(&k.dims()[2], "key length")?;
    // The mask structure is built at import time: bound its size.
    super::checked_product(
        &[sq, skv],
        super::IMPORT_TABLE_LIMIT,
        "attention query × key length",
    )?;
    let hq = static_dim(&q.dims()[1], "head count")?;
    let hkv = static_dim(&k.dims()[1], "KV head count")?;
    if hq != hkv {
        if hkv == 0 || hq % hkv != 0 {
            return Err(format!("{hq} query heads are not a multiple of {hkv} KV heads").into());
        }
        let g = hq / hkv;
        for t in [&mut k, &mut v] {
            let d = t.dims().to_vec();
            let five = vec![
                d[0].clone(),
                d[1].clone(),
                Dim::constant(1),
                d[2].clone(),
                d[3].clone(),
            ];
            let y = cx.reshape(t, five.clone())?;
            let mut big = five;
            big[2] = Dim::constant(g);
            let y = expand_to(cx, &y, big)?;
            *t = cx.reshape(
                &y,
                vec![d[0].clone(), Dim::constant(hq), d[2].clone(), d[3].clone()],
            )?;
        }
    }
    // The additive bias: mask (padded to the key length), causal frontier,
    // sliding window.
    let neg_inf = cx.scalar(f64::NEG_INFINITY, dt);
    let zero = cx.scalar(0.0, dt);
    let mut bias: Option<Val> = None;
    if let Some(m) = mask {
        let m = pad_mask(cx, &m, skv)?;
        let m = if m.dtype() == DType::Bool {
            select(cx, &m, &zero, &neg_inf)?
        } else {
            m
        };
        bias = Some(m);
    }
    if let Some(lens) = &nonpad {
        // External cache: the causal frontier and window are per batch, and
        // keys past each batch's valid length are masked.
        let c = external_cache_bias(cx, lens, sq, skv, is_causal, left, right, dt)?;
        bias = Some(match bias {
            Some(b) => binary(cx, B::Add, &b, &c)?,
            None => c,
        });
    }
    let mut allowed: Vec<bool> = vec![true; (sq * skv) as usize];
    let mut structural = false;
    for i in 0..sq {
        for j in 0..skv {
            let p = i + past_len;
            let mut ok = true;
            if is_causal && j > p {
                ok = false;
            }
            if left >= 0 && p - j > left {
                ok = false;
            }
            if right >= 0 && j - p > right {
                ok = false;
            }
            if !ok {
                structural = true;
                allowed[(i * skv + j) as usize] = false;
            }
        }
    }
    if structural && nonpad.is_none() {
        let vals: Vec<f64> = allowed
            .iter()
            .map(|&a| if a { 0.0 } else { f64::NEG_INFINITY })
            .collect();
        let c = cx.konst(Tensor::from_f64(dt, &[sq as usize, skv as usize], &vals));
        bias = Some(match bias {
            Some(b) => binary(cx, B::Add, &b, &c)?,
            None => c,
        });
    }
    let s = cx.konst(Tensor::from_f64(dt, &[], &[scale]));
    let qs = binary(cx, B::Mul, &q, &s)?;
    let ks = binary(cx, B::Mul, &k, &s)?;
    let kt = transpose_to(cx, &ks, vec![0, 1, 3, 2])?;
    let mut qk = cx.op(Op::MatMul(MatMul), &[qs, kt])?;
    if softcap != 0.0 {
        let t = with_scalar(cx, B::Div, &qk, softcap)?;
        let t = unary(cx, U::Tanh, &t)?;
        qk = with_scalar(cx, B::Mul, &t, softcap)?;
    }
    let raw = qk.clone();
    let logits = match &bias {
        Some(b) => binary(cx, B::Add, &qk, b)?,
        None => qk,
    };
    let soft_dt = match precision {
        Some(c) => super::dtype_attr(c)?,
        None => dt,
    };
    let l = cx.cast(&logits, soft_dt)?;
    let mut p = cx.op(Op::Softmax(Softmax { axis: -1, log: false }), &[l])?;
    if let Some(b) = &bias {
        // Rows whose bias is -inf everywhere attend nothing: zero them.
        let top = cx.op(
            Op::Reduce(Reduce {
                kind: ReduceKind::Max,
                axes: vec![-1],
                keepdims: true,
            }),
            std::slice::from_ref(b),
        )?;
        let dead = compare(cx, C::Equal, &top, &neg_inf)?;
        let z = cx.scalar(0.0, soft_dt);
        p = select(cx, &dead, &z, &p)?;
    }
    let p = cx.cast(&p, dt)?;
    let mut y = cx.op(Op::MatMul(MatMul), &[p.clone(), v])?;
    if three_d {
        let y4 = transpose_to(cx, &y, vec![0, 2, 1, 3])?;
        let d = y4.dims().to_vec();
        let hidden = &d[2] * &d[3];
        y = cx.reshape(&y4, vec![d[0].clone(), d[1].clone(), hidden])?;
    }
    let qk_out = match mode {
        0 | 1 => raw,
        2 => logits,
        3 => p,
        m => return Err(format!("qk_matmul_output_mode {m} is not defined").into()),
    };
    Ok(vec![y, present_k, present_v, qk_out])
}

/// Pads the mask's last axis to the key length (with false / -inf).
fn pad_mask(cx: &mut Cx, m: &Val, skv: i64) -> Result<Val, NodeError> {
    let last = static_dim(
        m.dims().last().ok_or("attn_mask must have rank >= 1")?,
        "mask length",
    )?;
    if last >= skv {
        return Ok(m.clone());
    }
    let mut dims: Vec<Dim> = m.dims().to_vec();
    let r = dims.len();
    dims[r - 1] = Dim::constant(skv - last);
    let fill = if m.dtype() == DType::Bool {
        optc_ir::ops::Scalar::Int(0)
    } else {
        optc_ir::ops::Scalar::Float(f64::NEG_INFINITY)
    };
    let pad = cx.op(
        Op::Full(optc_ir::ops::Full {
            shape: dims,
            value: fill,
            dtype: m.dtype(),
        }),
        &[],
    )?;
    cx.op(Op::Concat(Concat { axis: r as i64 - 1 }), &[m.clone(), pad])
}

/// The additive bias of an external KV cache (`nonpad_kv_seqlen`, `[B]`):
/// query `i` of batch `b` sits at position `i + len[b] - Sq`; the causal
/// frontier and the sliding window are taken from there, and keys
/// `j >= len[b]` are padding. The result is `[B, 1, Sq, Skv]`, built from
/// run-time comparisons since the lengths are a graph input.
#[allow(clippy::too_many_arguments)]
fn external_cache_bias(
    cx: &mut Cx,
    lens: &Val,
    sq: i64,
    skv: i64,
    is_causal: bool,
    left: i64,
    right: i64,
    dt: DType,
) -> Result<Val, NodeError> {
    if lens.rank() != 1 || !lens.dtype().is_int() {
        return Err(format!("nonpad_kv_seqlen must be a 1-D integer tensor, not {}", lens.ty).into());
    }
    let b = lens.dims()[0].clone();
    let lens = cx.cast(lens, DType::I64)?;
    let lens = cx.reshape(&lens, vec![b.clone(), Dim::constant(1), Dim::constant(1)])?;
    let i: Vec<i64> = (0..sq).collect();
    let i = cx.konst(Tensor::from_i64(DType::I64, &[sq as usize, 1], &i));
    let j: Vec<i64> = (0..skv).collect();
    let j = cx.konst(Tensor::from_i64(DType::I64, &[1, skv as usize], &j));
    let zero = cx.scalar(0.0, dt);
    let neg_inf = cx.scalar(f64::NEG_INFINITY, dt);
    // Padding: key j is valid iff j < len[b]; [B, 1, Skv].
    let valid = compare(cx, C::Less, &j, &lens)?;
    let mut allowed = valid;
    if is_causal || left >= 0 || right >= 0 {
        // diff = (i + len[b] - Sq) - j, the query position minus the key's.
        let off = with_scalar(cx, B::Sub, &lens, sq as f64)?;
        let p = binary(cx, B::Add, &i, &off)?;
        let diff = binary(cx, B::Sub, &p, &j)?;
        let mut conds = Vec::new();
        if is_causal {
            let z = cx.scalar(0.0, DType::I64);
            conds.push(compare(cx, C::GreaterEqual, &diff, &z)?);
        }
        if left >= 0 {
            let l = cx.scalar(left as f64, DType::I64);
            conds.push(compare(cx, C::LessEqual, &diff, &l)?);
        }
        if right >= 0 {
            let r = cx.scalar(-(right as f64), DType::I64);
            conds.push(compare(cx, C::GreaterEqual, &diff, &r)?);
        }
        for c in conds {
            allowed = binary(cx, B::BitAnd, &allowed, &c)?;
        }
    }
    let bias = select(cx, &allowed, &zero, &neg_inf)?;
    let d = bias.dims().to_vec();
    let sq_dim = d.get(1).cloned().unwrap_or_else(|| Dim::constant(1));
    cx.reshape(&bias, vec![b, Dim::constant(1), sq_dim, Dim::constant(skv)])
}
