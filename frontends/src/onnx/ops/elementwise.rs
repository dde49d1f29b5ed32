//! Elementwise ONNX ops: math, activations (as IR op chains where the IR
//! has no single op), arithmetic, logic, comparisons, casts.

use optc_ir::ops::{BinaryKind as B, BitCast, Cast, CompareKind as C, Gelu, GeluApprox, UnaryKind as U};
use optc_ir::{DType, Op, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::{binary, compare, dtype_attr, select, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("Neg", |cx, n| un(cx, n, U::Neg)),
    ("Abs", |cx, n| un(cx, n, U::Abs)),
    ("Exp", |cx, n| un(cx, n, U::Exp)),
    ("Log", |cx, n| un(cx, n, U::Log)),
    ("Sqrt", |cx, n| un(cx, n, U::Sqrt)),
    ("Reciprocal", |cx, n| un(cx, n, U::Reciprocal)),
    ("Tanh", |cx, n| un(cx, n, U::Tanh)),
    ("Erf", |cx, n| un(cx, n, U::Erf)),
    ("Sigmoid", |cx, n| un(cx, n, U::Sigmoid)),
    ("Relu", |cx, n| un(cx, n, U::Relu)),
    ("Sin", |cx, n| un(cx, n, U::Sin)),
    ("Cos", |cx, n| un(cx, n, U::Cos)),
    ("Tan", |cx, n| un(cx, n, U::Tan)),
    ("Asin", |cx, n| un(cx, n, U::Asin)),
    ("Acos", |cx, n| un(cx, n, U::Acos)),
    ("Atan", |cx, n| un(cx, n, U::Atan)),
    ("Sinh", |cx, n| un(cx, n, U::Sinh)),
    ("Cosh", |cx, n| un(cx, n, U::Cosh)),
    ("Asinh", |cx, n| un(cx, n, U::Asinh)),
    ("Acosh", |cx, n| un(cx, n, U::Acosh)),
    ("Atanh", |cx, n| un(cx, n, U::Atanh)),
    ("Floor", |cx, n| un(cx, n, U::Floor)),
    ("Ceil", |cx, n| un(cx, n, U::Ceil)),
    ("Round", |cx, n| un(cx, n, U::Round)),
    ("Sign", |cx, n| un(cx, n, U::Sign)),
    ("Add", |cx, n| bin(cx, n, B::Add)),
    ("Sub", |cx, n| bin(cx, n, B::Sub)),
    ("Mul", |cx, n| bin(cx, n, B::Mul)),
    ("Div", |cx, n| bin(cx, n, B::Div)),
    ("Pow", pow),
    ("Mod", modulo),
    ("BitShift", bit_shift),
    ("BitwiseAnd", |cx, n| bin(cx, n, B::BitAnd)),
    ("BitwiseOr", |cx, n| bin(cx, n, B::BitOr)),
    ("BitwiseXor", |cx, n| bin(cx, n, B::BitXor)),
    ("And", |cx, n| bin(cx, n, B::BitAnd)),
    ("Or", |cx, n| bin(cx, n, B::BitOr)),
    ("Xor", |cx, n| bin(cx, n, B::BitXor)),
    ("BitwiseNot", not),
    ("Not", not),
    ("Max", |cx, n| fold(cx, n, B::Maximum)),
    ("Min", |cx, n| fold(cx, n, B::Minimum)),
    ("Sum", |cx, n| fold(cx, n, B::Add)),
    ("Mean", mean),
    ("Equal", |cx, n| cmp(cx, n, C::Equal)),
    ("Less", |cx, n| cmp(cx, n, C::Less)),
    ("LessOrEqual", |cx, n| cmp(cx, n, C::LessEqual)),
    ("Greater", |cx, n| cmp(cx, n, C::Greater)),
    ("GreaterOrEqual", |cx, n| cmp(cx, n, C::GreaterEqual)),
    ("IsNaN", is_nan),
    ("IsInf", is_inf),
    ("Where", |cx, n| {
        let (c, a, b) = (cx.input(n, 0)?, cx.input(n, 1)?, cx.input(n, 2)?);
        Ok(vec![select(cx, &c, &a, &b)?])
    }),
    ("Cast", cast),
    ("CastLike", cast_like),
    ("BitCast", bitcast),
    ("Identity", |cx, n| Ok(vec![cx.input(n, 0)?])),
    ("Dropout", dropout),
    ("LeakyRelu", leaky_relu),
    ("PRelu", prelu),
    ("Elu", elu),
    ("Selu", selu),
    ("Celu", celu),
    ("ThresholdedRelu", thresholded_relu),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", hard_swish),
    ("Softplus", |cx, n| {
        let x = cx.input(n, 0)?;
        want_float(n, &x)?;
        Ok(vec![softplus(cx, &x)?])
    }),
    ("Softsign", softsign),
    ("Mish", mish),
    ("Swish", swish),
    ("Gelu", gelu),
    ("Shrink", shrink),
    ("Clip", clip),
];

fn un(cx: &mut Cx, n: &NodeCx, k: U) -> R {
    let x = cx.input(n, 0)?;
    Ok(vec![unary(cx, k, &x)?])
}

fn bin(cx: &mut Cx, n: &NodeCx, k: B) -> R {
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    Ok(vec![binary(cx, k, &a, &b)?])
}

fn cmp(cx: &mut Cx, n: &NodeCx, k: C) -> R {
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    Ok(vec![compare(cx, k, &a, &b)?])
}

/// Variadic Max/Min/Sum: a left fold.
fn fold(cx: &mut Cx, n: &NodeCx, k: B) -> R {
    let xs = cx.inputs_from(n, 0)?;
    let Some((first, rest)) = xs.split_first() else {
        return Err("needs at least one input".into());
    };
    let mut acc = first.clone();
    for x in rest {
        acc = binary(cx, k, &acc, x)?;
    }
    Ok(vec![acc])
}

fn mean(cx: &mut Cx, n: &NodeCx) -> R {
    let count = cx.inputs_from(n, 0)?.len();
    let sum = fold(cx, n, B::Add)?.remove(0);
    Ok(vec![with_scalar(cx, B::Div, &sum, count as f64)?])
}

fn pow(cx: &mut Cx, n: &NodeCx) -> R {
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    // The exponent may have its own type (T1, T2): compute in the base's.
    let b = cx.cast(&b, a.dtype())?;
    Ok(vec![binary(cx, B::Pow, &a, &b)?])
}

fn modulo(cx: &mut Cx, n: &NodeCx) -> R {
    let fmod = n.int("fmod", 0)?;
    let (a, b) = (cx.input(n, 0)?, cx.input(n, 1)?);
    Ok(vec![binary(
        cx,
        if fmod == 1 { B::Fmod } else { B::Mod },
        &a,
        &b,
    )?])
}

fn bit_shift(cx: &mut Cx, n: &NodeCx) -> R {
    let k = match n.string("direction", "")?.as_str() {
        "LEFT" => B::Shl,
        "RIGHT" => B::Shr,
        d => return Err(format!("direction must be LEFT or RIGHT, got {d:?}").into()),
    };
    bin(cx, n, k)
}

/// `Not` and `BitwiseNot`: xor with all ones (`true` for bool).
fn not(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    if x.dtype().is_float() {
        return Err(format!("{} is not defined on {}", n.node.op_type, x.dtype()).into());
    }
    let ones = cx.konst(Tensor::from_i64(x.dtype(), &[], &[-1]));
    Ok(vec![binary(cx, B::BitXor, &x, &ones)?])
}

fn is_nan(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    Ok(vec![compare(cx, C::NotEqual, &x, &x)?])
}

fn is_inf(cx: &mut Cx, n: &NodeCx) -> R {
    let (neg, pos) = (n.int("detect_negative", 1)?, n.int("detect_positive", 1)?);
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let mut hits = Vec::new();
    for (on, v) in [(pos, f64::INFINITY), (neg, f64::NEG_INFINITY)] {
        if on != 0 {
            let c = cx.scalar(v, x.dtype());
            hits.push(compare(cx, C::Equal, &x, &c)?);
        }
    }
    Ok(vec![match hits.as_slice() {
        [] => {
            let f = cx.scalar(f64::NAN, x.dtype());
            compare(cx, C::Equal, &x, &f)?
        }
        [one] => one.clone(),
        [a, b] => binary(cx, B::BitOr, a, b)?,
        _ => unreachable!("two directions"),
    }])
}

fn cast(cx: &mut Cx, n: &NodeCx) -> R {
    let to = dtype_attr(n.req_int("to")?)?;
    let x = cx.input(n, 0)?;
    cast_to(cx, n, &x, to)
}

fn bitcast(cx: &mut Cx, n: &NodeCx) -> R {
    let to = dtype_attr(n.req_int("to")?)?;
    let x = cx.input(n, 0)?;
    if x.dtype().bits() != to.bits() {
        return Err(NodeError::Invalid(format!(
            "BitCast from {} ({} bits) to {to} ({} bits): the widths must match",
            x.dtype(),
            x.dtype().bits(),
            to.bits()
        )));
    }
    Ok(vec![cx.op(Op::BitCast(BitCast { to }), std::slice::from_ref(&x))?])
}

fn cast_like(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, like) = (cx.input(n, 0)?, cx.input(n, 1)?);
    cast_to(cx, n, &x, like.dtype())
}

fn cast_to(cx: &mut Cx, n: &NodeCx, x: &Val, to: DType) -> R {
    // `saturate` only matters for float-to-f8 casts; the IR's cast saturates.
    let saturate = n.int("saturate", 1)? != 0;
    let round_mode = n.string("round_mode", "up")?;
    if to == DType::F8E8M0 && x.dtype().is_float() && (round_mode != "up" || !saturate) {
        return unsupported(format!(
            "Cast to FLOAT8E8M0 with round_mode={round_mode:?}, saturate={} is not supported (optc rounds up and saturates)",
            saturate as u8
        ));
    }
    let y = cx.op(Op::Cast(Cast { to }), std::slice::from_ref(x))?;
    match to.small_float() {
        Some(f) if !saturate && f.bits == 8 && to != DType::F8E8M0 && x.dtype().is_float() => {
            Ok(vec![non_saturating(cx, x, &y, f)?])
        }
        _ => Ok(vec![y]),
    }
}

/// A non-saturating float-to-f8 cast, from the saturating one: magnitudes
/// that round past the largest finite value (infinities included) become
/// ±inf where the format has infinities, NaN where it has not.
fn non_saturating(cx: &mut Cx, x: &Val, y: &Val, f: optc_ir::dtype::SmallFloat) -> Result<Val, NodeError> {
    use optc_ir::dtype::Specials;
    let (bound, ties_overflow) = f.overflow_bound();
    let ax = unary(cx, U::Abs, x)?;
    let b = cx.scalar(bound, x.dtype());
    let k = if ties_overflow {
        C::GreaterEqual
    } else {
        C::Greater
    };
    let over = compare(cx, k, &ax, &b)?;
    let special = if f.specials == Specials::Ieee {
        // ±inf with x's sign, as codes (a cast would saturate them).
        let code = |neg: bool| {
            let mag = f.max_code() + 1;
            let c = if neg { mag | 0x80 } else { mag };
            Tensor::from_le_bytes(y.dtype(), &[], &[c]).map_err(|e| NodeError::Invalid(e.to_string()))
        };
        let (pos, neg) = (cx.konst(code(false)?), cx.konst(code(true)?));
        let zero = cx.scalar(0.0, x.dtype());
        let is_neg = compare(cx, C::Less, x, &zero)?;
        select(cx, &is_neg, &neg, &pos)?
    } else {
        cx.scalar(f64::NAN, y.dtype())
    };
    select(cx, &over, &special, y)
}

fn dropout(cx: &mut Cx, n: &NodeCx) -> R {
    n.opt_int("seed")?;
    n.opt_float("ratio")?;
    let x = cx.input(n, 0)?;
    if let Some(t) = cx.opt_input(n, 2)? {
        match t.tensor() {
            Some(v) if v.to_bool_vec().iter().all(|b| !b) => {}
            Some(_) => {
                // Training mode drops at random, except with ratio 0, which
                // keeps every element (the identity, mask all true).
                let ratio = match cx.static_f64s(n, 1)? {
                    Some(r) => r.first().copied().unwrap_or(0.5),
                    None => 0.5,
                };
                if ratio != 0.0 {
                    return unsupported(format!(
                        "Dropout with training_mode=true and ratio {ratio} is random; not supported (inference only)"
                    ));
                }
            }
            None => return Err(NodeError::NeedsStatic(n.node.input[2].clone())),
        }
    }
    let mask = cx.konst(Tensor::from_bool(&[], &[true]));
    let ones = super::shape::expand_to(cx, &mask, x.dims().to_vec())?;
    Ok(vec![x, ones])
}

fn leaky_relu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 0.01)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let zero = cx.scalar(0.0, x.dtype());
    let neg = compare(cx, C::Less, &x, &zero)?;
    let scaled = with_scalar(cx, B::Mul, &x, alpha)?;
    Ok(vec![select(cx, &neg, &scaled, &x)?])
}

fn prelu(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, slope) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let zero = cx.scalar(0.0, x.dtype());
    let neg = compare(cx, C::Less, &x, &zero)?;
    let scaled = binary(cx, B::Mul, &x, &slope)?;
    Ok(vec![select(cx, &neg, &scaled, &x)?])
}

/// `alpha·(exp(x) − 1)`.
fn expm1_scaled(cx: &mut Cx, x: &Val, alpha: f64) -> Result<Val, NodeError> {
    let e = unary(cx, U::Exp, x)?;
    let e = with_scalar(cx, B::Sub, &e, 1.0)?;
    with_scalar(cx, B::Mul, &e, alpha)
}

fn elu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let zero = cx.scalar(0.0, x.dtype());
    let neg = compare(cx, C::Less, &x, &zero)?;
    let e = expm1_scaled(cx, &x, alpha)?;
    Ok(vec![select(cx, &neg, &e, &x)?])
}

fn selu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.673_263_192_176_818_8)?;
    let gamma = n.float("gamma", 1.050_701_022_148_132_3)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let zero = cx.scalar(0.0, x.dtype());
    let pos = compare(cx, C::Greater, &x, &zero)?;
    let e = expm1_scaled(cx, &x, alpha)?;
    let y = select(cx, &pos, &x, &e)?;
    Ok(vec![with_scalar(cx, B::Mul, &y, gamma)?])
}

fn celu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let x0 = cx.input(n, 0)?;
    want_float(n, &x0)?;
    // The function body computes in f32 for narrower floats.
    let x = widen(cx, &x0)?;
    let zero = cx.scalar(0.0, x.dtype());
    let pos = binary(cx, B::Maximum, &x, &zero)?;
    let xa = with_scalar(cx, B::Div, &x, alpha)?;
    let e = expm1_scaled(cx, &xa, alpha)?;
    let neg = binary(cx, B::Minimum, &e, &zero)?;
    let y = binary(cx, B::Add, &pos, &neg)?;
    Ok(vec![cx.cast(&y, x0.dtype())?])
}

/// f16/bf16 values widened to f32 (other dtypes unchanged).
fn widen(cx: &mut Cx, x: &Val) -> Result<Val, NodeError> {
    if matches!(x.dtype(), DType::F16 | DType::BF16) {
        cx.cast(x, DType::F32)
    } else {
        Ok(x.clone())
    }
}

fn thresholded_relu(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let a = cx.scalar(alpha, x.dtype());
    let zero = cx.scalar(0.0, x.dtype());
    let keep = compare(cx, C::Greater, &x, &a)?;
    Ok(vec![select(cx, &keep, &x, &zero)?])
}

/// `max(0, min(1, alpha·x + beta))`.
fn hard_sigmoid_of(cx: &mut Cx, x: &Val, alpha: f64, beta: f64) -> Result<Val, NodeError> {
    let y = with_scalar(cx, B::Mul, x, alpha)?;
    let y = with_scalar(cx, B::Add, &y, beta)?;
    let y = with_scalar(cx, B::Minimum, &y, 1.0)?;
    with_scalar(cx, B::Maximum, &y, 0.0)
}

fn hard_sigmoid(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 0.2)?;
    let beta = n.float("beta", 0.5)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    Ok(vec![hard_sigmoid_of(cx, &x, alpha, beta)?])
}

fn hard_swish(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let h = hard_sigmoid_of(cx, &x, 1.0 / 6.0, 0.5)?;
    Ok(vec![binary(cx, B::Mul, &x, &h)?])
}

/// `log(1 + exp(x))`.
fn softplus(cx: &mut Cx, x: &Val) -> Result<Val, NodeError> {
    let e = unary(cx, U::Exp, x)?;
    let e = with_scalar(cx, B::Add, &e, 1.0)?;
    unary(cx, U::Log, &e)
}

fn softsign(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let a = unary(cx, U::Abs, &x)?;
    let d = with_scalar(cx, B::Add, &a, 1.0)?;
    Ok(vec![binary(cx, B::Div, &x, &d)?])
}

fn mish(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let s = softplus(cx, &x)?;
    let t = unary(cx, U::Tanh, &s)?;
    Ok(vec![binary(cx, B::Mul, &x, &t)?])
}

fn swish(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1.0)?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    if alpha == 1.0 {
        return Ok(vec![unary(cx, U::Silu, &x)?]);
    }
    let ax = with_scalar(cx, B::Mul, &x, alpha)?;
    let s = unary(cx, U::Sigmoid, &ax)?;
    Ok(vec![binary(cx, B::Mul, &x, &s)?])
}

fn gelu(cx: &mut Cx, n: &NodeCx) -> R {
    let approximate = match n.string("approximate", "none")?.as_str() {
        "none" => GeluApprox::None,
        "tanh" => GeluApprox::Tanh,
        a => return Err(format!("approximate must be none or tanh, got {a:?}").into()),
    };
    let x = cx.input(n, 0)?;
    Ok(vec![cx.op(Op::Gelu(Gelu { approximate }), &[x])?])
}

fn shrink(cx: &mut Cx, n: &NodeCx) -> R {
    let bias = n.float("bias", 0.0)?;
    let lambd = n.float("lambd", 0.5)?;
    let x = cx.input(n, 0)?;
    let lo = cx.scalar(-lambd, x.dtype());
    let hi = cx.scalar(lambd, x.dtype());
    let zero = cx.scalar(0.0, x.dtype());
    let below = compare(cx, C::Less, &x, &lo)?;
    let above = compare(cx, C::Greater, &x, &hi)?;
    let up = with_scalar(cx, B::Add, &x, bias)?;
    let down = with_scalar(cx, B::Sub, &x, bias)?;
    let y = select(cx, &above, &down, &zero)?;
    Ok(vec![select(cx, &below, &up, &y)?])
}

fn clip(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let (lo, hi) = if n.opset < 11 {
        let lo = n.float("min", f32::MIN as f64)?;
        let hi = n.float("max", f32::MAX as f64)?;
        (Some(cx.scalar(lo, x.dtype())), Some(cx.scalar(hi, x.dtype())))
    } else {
        (cx.opt_input(n, 1)?, cx.opt_input(n, 2)?)
    };
    let mut y = x;
    if let Some(lo) = lo {
        y = binary(cx, B::Maximum, &y, &lo)?;
    }
    if let Some(hi) = hi {
        y = binary(cx, B::Minimum, &y, &hi)?;
    }
    Ok(vec![y])
}
