//! ONNX `RotaryEmbedding` (opset 23) from IR slices, multiplies and
//! concats, as the spec's algorithm writes it: the first
//! `rotary_embedding_dim` channels of each head are split into halves (or
//! even/odd channels when interleaved), rotated by the cos/sin caches
//! (gathered by `position_ids` when given), and put back; the rest pass
//! through. The IR `rope` op is left to the fusion pass.

use optc_ir::ops::{BinaryKind as B, Concat, Gather};
use optc_ir::{Dim, Op};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::shape::slice_axis;
use super::{binary, static_dim, want_float, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("RotaryEmbedding", rotary)];

fn rotary(cx: &mut Cx, n: &NodeCx) -> R {
    let num_heads = n.int("num_heads", 0)?;
    let rot_dim = n.int("rotary_embedding_dim", 0)?;
    let interleaved = n.int("interleaved", 0)? != 0;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let (mut cos, mut sin) = (cx.input(n, 1)?, cx.input(n, 2)?);
    let pos = cx.opt_input(n, 3)?;
    // Work on [B, H, S, D] (4-D input) or [B, S, H, D] (3-D input, split
    // into heads); `head_axis` is where the caches get their size-1 axis.
    let (x4, head_axis) = match x.dims() {
        [_, _, _, _] => (x.clone(), 1),
        [b, s, hidden] => {
            if num_heads <= 0 {
                return Err("a 3-D input needs a positive num_heads".into());
            }
            let d = hidden.div_exact(&Dim::constant(num_heads)).ok_or_else(|| {
                NodeError::Invalid(format!(
                    "hidden size {hidden} is not divisible by {num_heads} heads"
                ))
            })?;
            let v = cx.reshape(&x, vec![b.clone(), s.clone(), Dim::constant(num_heads), d])?;
            (v, 2)
        }
        _ => return Err(format!("input must be 3-D or 4-D, not {}", x.ty).into()),
    };
    let head = static_dim(&x4.dims()[3], "head size")?;
    let r = if rot_dim == 0 { head } else { rot_dim };
    if r <= 0 || r > head || r % 2 != 0 {
        return Err(format!("rotary_embedding_dim {r} must be even and in 1..={head}").into());
    }
    let half = r / 2;
    if let Some(p) = &pos {
        if !p.dtype().is_int() || p.rank() != 2 {
            return Err(format!("position_ids must be a 2-D integer tensor, not {}", p.ty).into());
        }
        for c in [&mut cos, &mut sin] {
            if c.rank() != 2 {
                return Err(format!("with position_ids the caches must be 2-D, not {}", c.ty).into());
            }
            *c = cx.op(Op::Gather(Gather { axis: 0 }), &[c.clone(), p.clone()])?;
        }
    }
    for c in [&mut cos, &mut sin] {
        let [b, s, last] = c.dims() else {
            return Err(format!(
                "the cos/sin caches must be [batch, seq, rotary_dim/2], not {}",
                c.ty
            )
            .into());
        };
        if static_dim(last, "cache width")? != half {
            return Err(format!("the cache width {last} is not rotary_embedding_dim/2 = {half}").into());
        }
        let mut dims = vec![b.clone(), s.clone(), last.clone()];
        dims.insert(head_axis, Dim::constant(1));
        *c = cx.reshape(c, dims)?;
    }
    let xr = slice_axis(cx, &x4, 3, 0, r, 1)?;
    let (x1, x2) = if interleaved {
        (slice_axis(cx, &xr, 3, 0, r, 2)?, slice_axis(cx, &xr, 3, 1, r, 2)?)
    } else {
        (
            slice_axis(cx, &xr, 3, 0, half, 1)?,
            slice_axis(cx, &xr, 3, half, r, 1)?,
        )
    };
    let cat = |cx: &mut Cx, axis: i64, parts: &[Val]| cx.op(Op::Concat(Concat { axis }), parts);
    let (c1, s2) = (binary(cx, B::Mul, &cos, &x1)?, binary(cx, B::Mul, &sin, &x2)?);
    let real = binary(cx, B::Sub, &c1, &s2)?;
    let (s1, c2) = (binary(cx, B::Mul, &sin, &x1)?, binary(cx, B::Mul, &cos, &x2)?);
    let imag = binary(cx, B::Add, &s1, &c2)?;
    let rotated = if interleaved {
        // real/imag back into even/odd channels: stack on a new last axis.
        let mut pair = real.dims().to_vec();
        pair.push(Dim::constant(1));
        let re = cx.reshape(&real, pair.clone())?;
        let im = cx.reshape(&imag, pair)?;
        let st = cat(cx, 4, &[re, im])?;
        cx.reshape(&st, xr.dims().to_vec())?
    } else {
        cat(cx, 3, &[real, imag])?
    };
    let y = if r < head {
        let rest = slice_axis(cx, &x4, 3, r, head, 1)?;
        cat(cx, 3, &[rotated, rest])?
    } else {
        rotated
    };
    Ok(vec![cx.reshape(&y, x.dims().to_vec())?])
}
