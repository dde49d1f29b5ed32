//! Integer and quantised linear algebra: `MatMulInteger`, `ConvInteger`,
//! `QLinearMatMul`, `QLinearConv`, `DynamicQuantizeLinear`. Operands are
//! widened (i32 for matmul, f64 for the float-only IR conv, exact for
//! integer sums below 2^53), zero points subtracted, and the quantised ops
//! requantise in f64 like the reference (round half to even, saturate).

use optc_ir::ops::{BinaryKind as B, CompareKind as C, Conv, MatMul, Reduce, ReduceKind, UnaryKind as U};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::conv::conv_window;
use super::{binary, compare, select, unary, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("QLinearMatMul", qlinear_matmul),
    ("QLinearConv", qlinear_conv),
    ("DynamicQuantizeLinear", dynamic_quantize),
];

/// Refuses anything but 8-bit integer operands (what the specs allow).
fn want_q8(n: &NodeCx, v: &Val, what: &str) -> Result<(), NodeError> {
    match v.dtype() {
        DType::I8 | DType::U8 => Ok(()),
        d => Err(NodeError::Invalid(format!(
            "{} {what} must be int8 or uint8, not {d}",
            n.node.op_type
        ))),
    }
}

/// `x − zp` widened to `to`; `zp` reshaped by `fit` first.
fn centred(
    cx: &mut Cx,
    x: &Val,
    zp: Option<Val>,
    to: DType,
    fit: impl Fn(&Val) -> Option<Vec<Dim>>,
) -> Result<Val, NodeError> {
    let xw = cx.cast(x, to)?;
    let Some(z) = zp else {
        return Ok(xw);
    };
    if z.dtype() != x.dtype() {
        return Err(format!("zero point {} must have the dtype of {}", z.ty, x.ty).into());
    }
    let z = match fit(&z) {
        Some(d) => cx.reshape(&z, d)?,
        None => z,
    };
    let z = cx.cast(&z, to)?;
    binary(cx, B::Sub, &xw, &z)
}

/// Shapes of matmul zero points and scales: one value → scalar; A's
/// per-row 1-D vector → `[M, 1]`; anything else (B's per-column vector,
/// the N-D `[…, M, 1]` / `[…, 1, N]` forms) broadcasts as is.
fn mm_fit(v: &Val, row: bool) -> Option<Vec<Dim>> {
    if v.dims().iter().all(|d| d.is(1)) {
        Some(vec![])
    } else if row && v.rank() == 1 {
        Some(vec![v.dims()[0].clone(), Dim::constant(1)])
    } else {
        None
    }
}

/// `v` reshaped by [`mm_fit`].
fn mm_fitted(cx: &mut Cx, v: &Val, row: bool) -> Result<Val, NodeError> {
    match mm_fit(v, row) {
        Some(d) => cx.reshape(v, d),
        None => Ok(v.clone()),
    }
}

/// Integer matmul of centred operands in i32.
fn int_matmul(
    cx: &mut Cx,
    n: &NodeCx,
    a: &Val,
    za: Option<Val>,
    b: &Val,
    zb: Option<Val>,
) -> Result<Val, NodeError> {
    want_q8(n, a, "A")?;
    want_q8(n, b, "B")?;
    let ac = centred(cx, a, za, DType::I32, |z| mm_fit(z, true))?;
    let bc = centred(cx, b, zb, DType::I32, |z| mm_fit(z, false))?;
    cx.op(Op::MatMul(MatMul), &[ac, bc])
}

fn matmul_integer(cx: &mut Cx, n: &NodeCx) -> R {
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let (za, zb) = (cx.opt_input(n, 2)?, cx.opt_input(n, 3)?);
    Ok(vec![int_matmul(cx, n, &a, za, &b, zb)?])
}

/// Integer convolution of centred operands, computed in f64; `w_zp` may
/// be per output channel (`[M]` → `[M, 1, …]`).
fn int_conv(
    cx: &mut Cx,
    n: &NodeCx,
    x: &Val,
    zx: Option<Val>,
    w: &Val,
    zw: Option<Val>,
) -> Result<Val, NodeError> {
    want_q8(n, x, "x")?;
    want_q8(n, w, "w")?;
    if x.rank() < 3 || w.rank() != x.rank() {
        return Err(format!("x {} and w {} must have the same rank >= 3", x.ty, w.ty).into());
    }
    if let Some(z) = &zx {
        if z.dims().iter().any(|d| !d.is(1)) {
            return unsupported(format!(
                "{} x zero point {} must be a scalar",
                n.node.op_type, z.ty
            ));
        }
    }
    let zx = match zx {
        Some(z) => Some(cx.reshape(&z, vec![])?),
        None => None,
    };
    let r = w.rank();
    let xc = centred(cx, x, zx, DType::F64, |_| None)?;
    let wc = centred(cx, w, zw, DType::F64, |z| {
        (z.rank() == 1).then(|| {
            let mut d = vec![Dim::constant(1); r];
            d[0] = z.dims()[0].clone();
            d
        })
    })?;
    let (window, group) = conv_window(n, x, w)?;
    cx.op(Op::Conv(Conv { window, group }), &[xc, wc])
}

fn conv_integer(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let (zx, zw) = (cx.opt_input(n, 2)?, cx.opt_input(n, 3)?);
    let y = int_conv(cx, n, &x, zx, &w, zw)?;
    Ok(vec![cx.cast(&y, DType::I32)?])
}

/// `round_half_even(acc · ratio + y_zp)` saturated to the output dtype,
/// with `ratio = s_a · s_b / s_y` in the scales' dtype and the rest in f64
/// (what numpy does with an int32 accumulator).
fn requantise(cx: &mut Cx, acc: &Val, ratio: &Val, yzp: Option<Val>, out: DType) -> Result<Val, NodeError> {
    let acc = cx.cast(acc, DType::F64)?;
    let ratio = cx.cast(ratio, DType::F64)?;
    let mut y = binary(cx, B::Mul, &acc, &ratio)?;
    if let Some(z) = yzp {
        let z = cx.cast(&z, DType::F64)?;
        y = binary(cx, B::Add, &y, &z)?;
    }
    let y = unary(cx, U::Round, &y)?;
    let (lo, hi) = optc_ir::tensor::int_range(out);
    let lo = cx.scalar(lo as f64, DType::F64);
    let hi = cx.scalar(hi as f64, DType::F64);
    let y = binary(cx, B::Maximum, &y, &lo)?;
    let y = binary(cx, B::Minimum, &y, &hi)?;
    cx.cast(&y, out)
}

/// A scale that must hold one value, as a scalar.
fn scalar_scale(cx: &mut Cx, n: &NodeCx, s: &Val, what: &str) -> Result<Val, NodeError> {
    if !s.dtype().is_float() {
        return Err(format!("{what} {} must be a float", s.ty).into());
    }
    if s.dims().iter().any(|d| !d.is(1)) {
        return unsupported(format!(
            "{} per-channel {what} {} is not supported",
            n.node.op_type, s.ty
        ));
    }
    cx.reshape(s, vec![])
}

/// The output zero point as a scalar, checked against the output dtype.
fn out_zp(cx: &mut Cx, n: &NodeCx, z: Option<Val>) -> Result<Option<Val>, NodeError> {
    let Some(z) = z else {
        return Ok(None);
    };
    want_q8(n, &z, "y_zero_point")?;
    if z.dims().iter().any(|d| !d.is(1)) {
        return unsupported(format!(
            "{} per-channel y_zero_point {} is not supported",
            n.node.op_type, z.ty
        ));
    }
    Ok(Some(cx.reshape(&z, vec![])?))
}

fn qlinear_matmul(cx: &mut Cx, n: &NodeCx) -> R {
    let a = cx.input(n, 0)?;
    let sa = cx.input(n, 1)?;
    let za = cx.input(n, 2)?;
    let b = cx.input(n, 3)?;
    let sb = cx.input(n, 4)?;
    let zb = cx.input(n, 5)?;
    let sy = cx.input(n, 6)?;
    let zy = cx.input(n, 7)?;
    let acc = int_matmul(cx, n, &a, Some(za), &b, Some(zb))?;
    let sy = scalar_scale(cx, n, &sy, "y_scale")?;
    // a_scale per row, b_scale per column, like their zero points.
    if !sa.dtype().is_float() || !sb.dtype().is_float() {
        return Err(format!("a_scale {} and b_scale {} must be floats", sa.ty, sb.ty).into());
    }
    let sa = mm_fitted(cx, &sa, true)?;
    let sb = mm_fitted(cx, &sb, false)?;
    if sa.dtype() != sb.dtype() || sa.dtype() != sy.dtype() {
        return Err("a_scale, b_scale and y_scale must share a dtype".into());
    }
    let ratio = binary(cx, B::Mul, &sa, &sb)?;
    let ratio = binary(cx, B::Div, &ratio, &sy)?;
    let out = zy.dtype();
    let zy = out_zp(cx, n, Some(zy))?;
    Ok(vec![requantise(cx, &acc, &ratio, zy, out)?])
}

fn qlinear_conv(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let sx = cx.input(n, 1)?;
    let zx = cx.input(n, 2)?;
    let w = cx.input(n, 3)?;
    let sw = cx.input(n, 4)?;
    let zw = cx.input(n, 5)?;
    let sy = cx.input(n, 6)?;
    let zy = cx.input(n, 7)?;
    let bias = cx.opt_input(n, 8)?;
    let mut acc = int_conv(cx, n, &x, Some(zx), &w, Some(zw))?;
    if let Some(b) = bias {
        if b.dtype() != DType::I32 || b.rank() != 1 {
            return Err(format!("B {} must be a 1-D int32 tensor", b.ty).into());
        }
        let mut d = vec![Dim::constant(1); acc.rank()];
        d[1] = b.dims()[0].clone();
        let b = cx.reshape(&b, d)?;
        let b = cx.cast(&b, DType::F64)?;
        acc = binary(cx, B::Add, &acc, &b)?;
    }
    let sx = scalar_scale(cx, n, &sx, "x_scale")?;
    let sy = scalar_scale(cx, n, &sy, "y_scale")?;
    // w_scale: scalar or per output channel ([M] → [1, M, 1, …]).
    if sw.rank() > 1 || !sw.dtype().is_float() {
        return Err(format!("w_scale {} must be a float scalar or 1-D", sw.ty).into());
    }
    let sw = if sw.rank() == 1 && !sw.dims()[0].is(1) {
        let mut d = vec![Dim::constant(1); acc.rank()];
        d[1] = sw.dims()[0].clone();
        cx.reshape(&sw, d)?
    } else {
        cx.reshape(&sw, vec![])?
    };
    let ratio = binary(cx, B::Mul, &sx, &sw)?;
    let ratio = binary(cx, B::Div, &ratio, &sy)?;
    let out = zy.dtype();
    let zy = out_zp(cx, n, Some(zy))?;
    Ok(vec![requantise(cx, &acc, &ratio, zy, out)?])
}

/// Full reduction of `x` to a scalar.
fn reduce_all(cx: &mut Cx, x: &Val, kind: ReduceKind) -> Result<Val, NodeError> {
    let axes = (0..x.rank() as i64).collect();
    cx.op(
        Op::Reduce(Reduce {
            kind,
            axes,
            keepdims: false,
        }),
        std::slice::from_ref(x),
    )
}

/// uint8 quantisation with scale and zero point from the data range
/// (widened to include 0), all in f32 as the spec's formula.
fn dynamic_quantize(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    if x.dtype() != DType::F32 {
        return Err(format!("x {} must be float32", x.ty).into());
    }
    let f = DType::F32;
    let zero = cx.scalar(0.0, f);
    let mx = reduce_all(cx, &x, ReduceKind::Max)?;
    let mx = binary(cx, B::Maximum, &mx, &zero)?;
    let mn = reduce_all(cx, &x, ReduceKind::Min)?;
    let mn = binary(cx, B::Minimum, &mn, &zero)?;
    let range = binary(cx, B::Sub, &mx, &mn)?;
    let same = compare(cx, C::Equal, &mx, &mn)?;
    let one = cx.scalar(1.0, f);
    let range = select(cx, &same, &one, &range)?;
    let q = cx.konst(Tensor::from_f64(f, &[], &[255.0]));
    let scale = binary(cx, B::Div, &range, &q)?;
    let zp = binary(cx, B::Div, &mn, &scale)?;
    let zp = binary(cx, B::Sub, &zero, &zp)?;
    let zp = binary(cx, B::Maximum, &zp, &zero)?;
    let zp = binary(cx, B::Minimum, &zp, &q)?;
    let zp = unary(cx, U::Round, &zp)?;
    let y = binary(cx, B::Div, &x, &scale)?;
    let y = unary(cx, U::Round, &y)?;
    let y = binary(cx, B::Add, &y, &zp)?;
    let y = binary(cx, B::Maximum, &y, &zero)?;
    let y = binary(cx, B::Minimum, &y, &q)?;
    Ok(vec![cx.cast(&y, DType::U8)?, scale, cx.cast(&zp, DType::U8)?])
}
