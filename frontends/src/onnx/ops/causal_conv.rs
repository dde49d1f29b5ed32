//! ONNX `CausalConvWithState` (opset 27): a causal depthwise 1-D
//! convolution with a carried state, as the reference builds it: the past
//! state (or zeros) is concatenated in front of the input, an IR `conv`
//! with `group = channels` and no padding runs over it, an optional SiLU
//! is applied in f32, and the new state is the last `k − 1` positions of
//! the concatenated sequence.

use optc_ir::ops::{BinaryKind as B, Concat, Conv, Full, Scalar, UnaryKind as U, Window};
use optc_ir::{DType, Dim, Op};

use super::super::import::{unsupported, Cx, NodeCx};
use super::shape::slice_axis;
use super::{binary, unary, want_float, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("CausalConvWithState", causal_conv)];

fn causal_conv(cx: &mut Cx, n: &NodeCx) -> R {
    let activation = n.string("activation", "none")?;
    let silu = match activation.as_str() {
        "none" => false,
        "silu" | "swish" => true,
        a => return Err(format!("activation '{a}' is not one of 'silu', 'swish', 'none'").into()),
    };
    let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
    want_float(n, &x)?;
    let bias = cx.opt_input(n, 2)?;
    let past = cx.opt_input(n, 3)?;
    let [b, c, len] = x.dims() else {
        return Err(format!("input must be [batch, channels, length], not {}", x.ty).into());
    };
    let [wc, one, k] = w.dims() else {
        return Err(format!("weight must be [channels, 1, k], not {}", w.ty).into());
    };
    if wc != c || !one.is(1) {
        return Err(format!(
            "weight {} does not fit input {} (want [channels, 1, k])",
            w.ty, x.ty
        )
        .into());
    }
    let (Some(k), Some(channels)) = (k.as_const(), c.as_const()) else {
        return unsupported(format!(
            "CausalConvWithState with a symbolic kernel size or channel count ({} / {c}) is not supported",
            w.ty
        ));
    };
    if len.as_const().is_none() {
        // The IR conv needs constant spatial extents.
        return unsupported(format!(
            "CausalConvWithState with a symbolic length ({len}) is not supported"
        ));
    }
    if k < 1 {
        return Err("the kernel size must be at least 1".into());
    }
    let (b, c) = (b.clone(), c.clone());
    let state_dims = vec![b, c, Dim::constant(k - 1)];
    let padded = if k == 1 {
        x.clone()
    } else {
        let pad = match past {
            Some(p) => {
                if p.dims() != state_dims.as_slice() || p.dtype() != x.dtype() {
                    return Err(format!(
                        "past_state is {} but must be {}[{}]",
                        p.ty,
                        x.dtype(),
                        state_dims
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                    .into());
                }
                p
            }
            None => cx.op(
                Op::Full(Full {
                    shape: state_dims.clone(),
                    value: Scalar::Float(0.0),
                    dtype: x.dtype(),
                }),
                &[],
            )?,
        };
        cx.op(Op::Concat(Concat { axis: 2 }), &[pad, x.clone()])?
    };
    let window = Window {
        kernel: vec![k],
        strides: vec![1],
        dilations: vec![1],
        pads: vec![0, 0],
    };
    let mut args = vec![padded.clone(), w];
    args.extend(bias);
    let mut y = cx.op(
        Op::Conv(Conv {
            window,
            group: channels,
        }),
        &args,
    )?;
    if silu {
        // x · sigmoid(x) in f32, then back, as the reference computes it.
        let y32 = cx.cast(&y, DType::F32)?;
        let s = unary(cx, U::Sigmoid, &y32)?;
        let p = binary(cx, B::Mul, &y32, &s)?;
        y = cx.cast(&p, x.dtype())?;
    }
    let state = if k == 1 {
        slice_axis(cx, &padded, 2, 0, 0, 1)?
    } else {
        slice_axis(cx, &padded, 2, -(k - 1), i64::MAX, 1)?
    };
    Ok(vec![y, state])
}
