//! Elementwise math, comparisons, logic, `where`, casts and the identity
//! ops (clone, contiguous, inference-mode dropout).

use optc_ir::ops::{BinaryKind, CompareKind, Gelu, GeluApprox, Op, UnaryKind, Where};
use optc_ir::{DType, Value};

use super::{one, Lower};
use crate::fx::import::{Cx, Num};
use crate::fx::schema::Node;

type R = Result<Vec<Value>, String>;

/// torch's category order: bool < integers < floats; wider wins inside a
/// category; f16 with bf16 gives f32.
pub fn promote(a: DType, b: DType) -> DType {
    fn rank(d: DType) -> (u8, u8) {
        match d {
            DType::Bool => (0, 0),
            DType::U2 | DType::I2 | DType::U4 | DType::I4 => (1, 0),
            DType::I8 | DType::U8 => (1, 1),
            DType::I16 | DType::U16 => (1, 2),
            DType::I32 | DType::U32 => (1, 3),
            DType::I64 | DType::U64 => (1, 4),
            DType::F4E2M1 => (2, 0),
            DType::F8E4M3 | DType::F8E5M2 | DType::F8E4M3Fnuz | DType::F8E5M2Fnuz | DType::F8E8M0 => (2, 1),
            DType::F16 | DType::BF16 => (2, 2),
            DType::F32 => (2, 3),
            DType::F64 => (2, 4),
        }
    }
    if a == b {
        return a;
    }
    if matches!((a, b), (DType::F16, DType::BF16) | (DType::BF16, DType::F16)) {
        return DType::F32;
    }
    if rank(a) >= rank(b) {
        a
    } else {
        b
    }
}

/// An operand's part in promotion: a dimensioned tensor, or a scalar (a
/// Python number or a 0-d tensor, which only lifts the category).
enum Part {
    Tensor(DType),
    Scalar(DType),
}

fn part(cx: &Cx, n: &Node, name: &str) -> Result<Part, String> {
    if let Some(x) = cx.number(n, name)? {
        return Ok(Part::Scalar(match x {
            Num::Float(_) => DType::F32,
            Num::Int(_) => DType::I64,
            Num::Bool(_) => DType::Bool,
        }));
    }
    let ty = cx.ty(cx.tensor(n, name)?);
    Ok(if ty.rank() == 0 {
        Part::Scalar(ty.dtype)
    } else {
        Part::Tensor(ty.dtype)
    })
}

fn category(d: DType) -> u8 {
    if d == DType::Bool {
        0
    } else if d.is_float() {
        2
    } else {
        1
    }
}

/// torch's result dtype for two operands.
fn result_dtype(cx: &Cx, n: &Node, lhs: &str, rhs: &str) -> Result<DType, String> {
    Ok(match (part(cx, n, lhs)?, part(cx, n, rhs)?) {
        (Part::Tensor(a), Part::Tensor(b)) | (Part::Scalar(a), Part::Scalar(b)) => promote(a, b),
        (Part::Tensor(t), Part::Scalar(s)) | (Part::Scalar(s), Part::Tensor(t)) => {
            if category(s) > category(t) {
                if s.is_float() {
                    DType::F32
                } else {
                    DType::I64
                }
            } else {
                t
            }
        }
    })
}

fn binary(cx: &mut Cx, n: &Node, k: BinaryKind, lhs: &str, rhs: &str) -> R {
    let mut dt = result_dtype(cx, n, lhs, rhs)?;
    if k == BinaryKind::Div && !dt.is_float() {
        dt = DType::F32;
    }
    let a = cx.operand(n, lhs, dt)?;
    let mut b = cx.operand(n, rhs, dt)?;
    if let Some(alpha) = cx.number(n, "alpha")? {
        if alpha.as_f64() != 1.0 {
            let c = cx.constant(alpha, dt)?;
            b = cx.op(Op::Binary(BinaryKind::Mul), &[b, c])?;
        }
    }
    one(cx.op(Op::Binary(k), &[a, b])?)
}

macro_rules! binaries {
    ($($f:ident => $k:expr, $lhs:literal, $rhs:literal;)*) => {
        $(fn $f(cx: &mut Cx, n: &Node) -> R {
            binary(cx, n, $k, $lhs, $rhs)
        })*
    };
}

binaries! {
    add => BinaryKind::Add, "self", "other";
    sub => BinaryKind::Sub, "self", "other";
    mul => BinaryKind::Mul, "self", "other";
    pow => BinaryKind::Pow, "self", "exponent";
    maximum => BinaryKind::Maximum, "self", "other";
    minimum => BinaryKind::Minimum, "self", "other";
}

/// `rsub(self, other, alpha)` is `other - alpha * self`.
fn rsub(cx: &mut Cx, n: &Node) -> R {
    let dt = result_dtype(cx, n, "self", "other")?;
    let mut a = cx.operand(n, "self", dt)?;
    let b = cx.operand(n, "other", dt)?;
    if let Some(alpha) = cx.number(n, "alpha")? {
        if alpha.as_f64() != 1.0 {
            let c = cx.constant(alpha, dt)?;
            a = cx.op(Op::Binary(BinaryKind::Mul), &[a, c])?;
        }
    }
    one(cx.op(Op::Binary(BinaryKind::Sub), &[b, a])?)
}

/// True division (ints promote to float through the recorded dtype).
fn div(cx: &mut Cx, n: &Node) -> R {
    if let Some(Ok(mode)) = cx
        .arg(n, "rounding_mode")
        .map(|_| cx.string(n, "rounding_mode", None))
    {
        return Err(format!("division with rounding_mode = {mode:?} is not supported"));
    }
    binary(cx, n, BinaryKind::Div, "self", "other")
}

fn clamp(cx: &mut Cx, n: &Node) -> R {
    let mut dt = cx.ty(cx.tensor(n, "self")?).dtype;
    for name in ["min", "max"] {
        if cx.number(n, name)?.is_some() || cx.opt_tensor(n, name)?.is_some() {
            dt = result_dtype(cx, n, "self", name)?;
        }
    }
    let mut x = cx.operand(n, "self", dt)?;
    for (name, k) in [("min", BinaryKind::Maximum), ("max", BinaryKind::Minimum)] {
        let bound = match cx.number(n, name)? {
            Some(v) => Some(cx.constant(v, dt)?),
            None => match cx.opt_tensor(n, name)? {
                Some(t) => Some(cx.cast(t, dt)?),
                None => None,
            },
        };
        if let Some(b) = bound {
            x = cx.op(Op::Binary(k), &[x, b])?;
        }
    }
    one(x)
}

/// Float math keeps the dtype; on integers it computes in f32 (neg, abs
/// and relu stay integer).
fn unary(cx: &mut Cx, n: &Node, k: UnaryKind) -> R {
    let d = cx.ty(cx.tensor(n, "self")?).dtype;
    let dt = if d.is_float() || matches!(k, UnaryKind::Neg | UnaryKind::Abs | UnaryKind::Relu) {
        d
    } else {
        DType::F32
    };
    let x = cx.operand(n, "self", dt)?;
    one(cx.op(Op::Unary(k), &[x])?)
}

macro_rules! unaries {
    ($($f:ident => $k:expr;)*) => {
        $(fn $f(cx: &mut Cx, n: &Node) -> R {
            unary(cx, n, $k)
        })*
    };
}

unaries! {
    neg => UnaryKind::Neg;
    abs => UnaryKind::Abs;
    exp => UnaryKind::Exp;
    log => UnaryKind::Log;
    sqrt => UnaryKind::Sqrt;
    rsqrt => UnaryKind::Rsqrt;
    reciprocal => UnaryKind::Reciprocal;
    tanh => UnaryKind::Tanh;
    erf => UnaryKind::Erf;
    sigmoid => UnaryKind::Sigmoid;
    relu => UnaryKind::Relu;
    silu => UnaryKind::Silu;
    sin => UnaryKind::Sin;
    cos => UnaryKind::Cos;
}

fn gelu(cx: &mut Cx, n: &Node) -> R {
    let approximate = match cx.string(n, "approximate", Some("none"))?.as_str() {
        "none" => GeluApprox::None,
        "tanh" => GeluApprox::Tanh,
        other => return Err(format!("gelu approximate = {other:?} is not supported")),
    };
    let x = cx.tensor(n, "self")?;
    one(cx.op(Op::Gelu(Gelu { approximate }), &[x])?)
}

fn compare(cx: &mut Cx, n: &Node, k: CompareKind) -> R {
    let dt = result_dtype(cx, n, "self", "other")?;
    let a = cx.operand(n, "self", dt)?;
    let b = cx.operand(n, "other", dt)?;
    one(cx.op(Op::Compare(k), &[a, b])?)
}

macro_rules! compares {
    ($($f:ident => $k:expr;)*) => {
        $(fn $f(cx: &mut Cx, n: &Node) -> R {
            compare(cx, n, $k)
        })*
    };
}

compares! {
    eq => CompareKind::Equal;
    ne => CompareKind::NotEqual;
    lt => CompareKind::Less;
    le => CompareKind::LessEqual;
    gt => CompareKind::Greater;
    ge => CompareKind::GreaterEqual;
}

/// A bool operand: bools as they are, other dtypes as `x != 0` (logical_*
/// semantics); `bitwise` refuses non-bool (integer bit ops have no IR op).
fn truth(cx: &mut Cx, n: &Node, name: &str, bitwise: bool) -> Result<Value, String> {
    if let Some(x) = cx.number(n, name)? {
        return cx.constant(Num::Bool(x.as_f64() != 0.0), DType::Bool);
    }
    let v = cx.tensor(n, name)?;
    let dt = cx.ty(v).dtype;
    if dt == DType::Bool {
        return Ok(v);
    }
    if bitwise {
        return Err(format!("bitwise ops on {dt} are not supported (only on bool)"));
    }
    let zero = cx.constant(Num::Int(0), dt)?;
    cx.op(Op::Compare(CompareKind::NotEqual), &[v, zero])
}

/// `a & b` as `where(a, b, false)`; `a | b` as `where(a, true, b)`.
fn and_or(cx: &mut Cx, n: &Node, and: bool, bitwise: bool) -> R {
    let a = truth(cx, n, "self", bitwise)?;
    let b = truth(cx, n, "other", bitwise)?;
    let c = cx.constant(Num::Bool(!and), DType::Bool)?;
    let ops = if and { [a, b, c] } else { [a, c, b] };
    one(cx.op(Op::Where(Where), &ops)?)
}

fn bitwise_and(cx: &mut Cx, n: &Node) -> R {
    and_or(cx, n, true, true)
}

fn bitwise_or(cx: &mut Cx, n: &Node) -> R {
    and_or(cx, n, false, true)
}

fn logical_and(cx: &mut Cx, n: &Node) -> R {
    and_or(cx, n, true, false)
}

fn logical_or(cx: &mut Cx, n: &Node) -> R {
    and_or(cx, n, false, false)
}

/// `!a` as `a == false`.
fn not(cx: &mut Cx, n: &Node, bitwise: bool) -> R {
    let a = truth(cx, n, "self", bitwise)?;
    let f = cx.constant(Num::Bool(false), DType::Bool)?;
    one(cx.op(Op::Compare(CompareKind::Equal), &[a, f])?)
}

fn logical_not(cx: &mut Cx, n: &Node) -> R {
    not(cx, n, false)
}

fn bitwise_not(cx: &mut Cx, n: &Node) -> R {
    not(cx, n, true)
}

fn where_(cx: &mut Cx, n: &Node) -> R {
    let dt = result_dtype(cx, n, "self", "other")?;
    let c = cx.tensor(n, "condition")?;
    if cx.ty(c).dtype != DType::Bool {
        return Err(format!("where: the condition is {}, not bool", cx.ty(c)));
    }
    let a = cx.operand(n, "self", dt)?;
    let b = cx.operand(n, "other", dt)?;
    one(cx.op(Op::Where(Where), &[c, a, b])?)
}

/// `to`, `_to_copy`, `type_as`: a cast to the recorded dtype (nothing when
/// it already is; devices and layouts do not exist in the IR).
fn to(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dt = match cx.opt_dtype(n, "dtype")? {
        Some(d) => d,
        None => match cx.opt_tensor(n, "other")? {
            Some(o) => cx.ty(o).dtype,
            None => cx.ty(x).dtype,
        },
    };
    one(cx.cast(x, dt)?)
}

/// Ops that return their input's values unchanged in inference.
fn identity(cx: &mut Cx, n: &Node) -> R {
    let name = if cx.arg(n, "input").is_some() {
        "input"
    } else {
        "self"
    };
    one(cx.tensor(n, name)?)
}

fn dropout(cx: &mut Cx, n: &Node) -> R {
    if cx.bool(n, "train", Some(false))? {
        return Err("dropout in training mode is random; export the model in eval() mode".into());
    }
    identity(cx, n)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.add.Tensor", add),
    ("aten.add.Scalar", add),
    ("aten.sub.Tensor", sub),
    ("aten.sub.Scalar", sub),
    ("aten.rsub.Scalar", rsub),
    ("aten.rsub.Tensor", rsub),
    ("aten.mul.Tensor", mul),
    ("aten.mul.Scalar", mul),
    ("aten.div.Tensor", div),
    ("aten.div.Scalar", div),
    ("aten.div.Tensor_mode", div),
    ("aten.pow.Tensor_Scalar", pow),
    ("aten.pow.Tensor_Tensor", pow),
    ("aten.pow.Scalar", pow),
    ("aten.maximum.default", maximum),
    ("aten.minimum.default", minimum),
    ("aten.clamp.default", clamp),
    ("aten.clamp.Tensor", clamp),
    ("aten.neg.default", neg),
    ("aten.abs.default", abs),
    ("aten.exp.default", exp),
    ("aten.log.default", log),
    ("aten.sqrt.default", sqrt),
    ("aten.rsqrt.default", rsqrt),
    ("aten.reciprocal.default", reciprocal),
    ("aten.tanh.default", tanh),
    ("aten.erf.default", erf),
    ("aten.sigmoid.default", sigmoid),
    ("aten.relu.default", relu),
    ("aten.silu.default", silu),
    ("aten.sin.default", sin),
    ("aten.cos.default", cos),
    ("aten.gelu.default", gelu),
    ("aten.eq.Tensor", eq),
    ("aten.eq.Scalar", eq),
    ("aten.ne.Tensor", ne),
    ("aten.ne.Scalar", ne),
    ("aten.lt.Tensor", lt),
    ("aten.lt.Scalar", lt),
    ("aten.le.Tensor", le),
    ("aten.le.Scalar", le),
    ("aten.gt.Tensor", gt),
    ("aten.gt.Scalar", gt),
    ("aten.ge.Tensor", ge),
    ("aten.ge.Scalar", ge),
    ("aten.__and__.Tensor", bitwise_and),
    ("aten.bitwise_and.Tensor", bitwise_and),
    ("aten.__or__.Tensor", bitwise_or),
    ("aten.bitwise_or.Tensor", bitwise_or),
    ("aten.logical_and.default", logical_and),
    ("aten.logical_or.default", logical_or),
    ("aten.logical_not.default", logical_not),
    ("aten.bitwise_not.default", bitwise_not),
    ("aten.where.self", where_),
    ("aten.where.ScalarOther", where_),
    ("aten.where.ScalarSelf", where_),
    ("aten.where.Scalar", where_),
    ("aten.to.dtype", to),
    ("aten.to.dtype_layout", to),
    ("aten.to.device", to),
    ("aten.to.other", to),
    ("aten._to_copy.default", to),
    ("aten.type_as.default", to),
    ("aten.clone.default", identity),
    ("aten.contiguous.default", identity),
    ("aten.alias.default", identity),
    ("aten.detach.default", identity),
    ("aten.lift_fresh_copy.default", identity),
    ("aten.dropout.default", dropout),
];
