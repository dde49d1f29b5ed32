//! Elementwise ops: unary math, activations, binary arithmetic with numpy
//! broadcasting, comparisons, `where` and `cast`.
//!
//! Semantics: each element is computed in f64 from the operands' exact
//! values and rounded once to the output dtype. Integer arithmetic is exact
//! i64 arithmetic wrapped to the dtype's width; integer division truncates
//! toward zero.

use super::attrs::{Attr, AttrReader};
use super::index::{broadcast, broadcast_map};
use super::{arity, same_dtype, want_float, EvalCx, OpImpl};
use crate::dim::{broadcast_shapes, TensorType};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// Unary math and activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnaryKind {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Reciprocal,
    Tanh,
    Erf,
    Sigmoid,
    Relu,
    Silu,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    /// Round toward -inf (identity on integers).
    Floor,
    /// Round toward +inf (identity on integers).
    Ceil,
    /// Round to nearest, ties to even (identity on integers).
    Round,
    /// -1, 0 or 1 (NaN stays NaN).
    Sign,
}

impl UnaryKind {
    pub const ALL: [UnaryKind; 27] = [
        UnaryKind::Neg,
        UnaryKind::Abs,
        UnaryKind::Exp,
        UnaryKind::Log,
        UnaryKind::Sqrt,
        UnaryKind::Rsqrt,
        UnaryKind::Reciprocal,
        UnaryKind::Tanh,
        UnaryKind::Erf,
        UnaryKind::Sigmoid,
        UnaryKind::Relu,
        UnaryKind::Silu,
        UnaryKind::Sin,
        UnaryKind::Cos,
        UnaryKind::Tan,
        UnaryKind::Asin,
        UnaryKind::Acos,
        UnaryKind::Atan,
        UnaryKind::Sinh,
        UnaryKind::Cosh,
        UnaryKind::Asinh,
        UnaryKind::Acosh,
        UnaryKind::Atanh,
        UnaryKind::Floor,
        UnaryKind::Ceil,
        UnaryKind::Round,
        UnaryKind::Sign,
    ];

    /// Ops also defined on integers (everything else needs a float operand).
    fn accepts_int(self) -> bool {
        matches!(
            self,
            UnaryKind::Neg
                | UnaryKind::Abs
                | UnaryKind::Relu
                | UnaryKind::Sign
                | UnaryKind::Floor
                | UnaryKind::Ceil
                | UnaryKind::Round
        )
    }

    fn f(self, x: f64) -> f64 {
        match self {
            UnaryKind::Neg => -x,
            UnaryKind::Abs => x.abs(),
            UnaryKind::Exp => x.exp(),
            UnaryKind::Log => x.ln(),
            UnaryKind::Sqrt => x.sqrt(),
            UnaryKind::Rsqrt => 1.0 / x.sqrt(),
            UnaryKind::Reciprocal => 1.0 / x,
            UnaryKind::Tanh => x.tanh(),
            UnaryKind::Erf => libm::erf(x),
            UnaryKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryKind::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            UnaryKind::Silu => x / (1.0 + (-x).exp()),
            UnaryKind::Sin => x.sin(),
            UnaryKind::Cos => x.cos(),
            UnaryKind::Tan => x.tan(),
            UnaryKind::Asin => x.asin(),
            UnaryKind::Acos => x.acos(),
            UnaryKind::Atan => x.atan(),
            UnaryKind::Sinh => x.sinh(),
            UnaryKind::Cosh => x.cosh(),
            UnaryKind::Asinh => x.asinh(),
            UnaryKind::Acosh => x.acosh(),
            UnaryKind::Atanh => x.atanh(),
            UnaryKind::Floor => x.floor(),
            UnaryKind::Ceil => x.ceil(),
            UnaryKind::Round => x.round_ties_even(),
            UnaryKind::Sign => {
                if x.is_nan() {
                    x
                } else if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
        }
    }
}

impl OpImpl for UnaryKind {
    fn name(&self) -> &'static str {
        match self {
            UnaryKind::Neg => "neg",
            UnaryKind::Abs => "abs",
            UnaryKind::Exp => "exp",
            UnaryKind::Log => "log",
            UnaryKind::Sqrt => "sqrt",
            UnaryKind::Rsqrt => "rsqrt",
            UnaryKind::Reciprocal => "reciprocal",
            UnaryKind::Tanh => "tanh",
            UnaryKind::Erf => "erf",
            UnaryKind::Sigmoid => "sigmoid",
            UnaryKind::Relu => "relu",
            UnaryKind::Silu => "silu",
            UnaryKind::Sin => "sin",
            UnaryKind::Cos => "cos",
            UnaryKind::Tan => "tan",
            UnaryKind::Asin => "asin",
            UnaryKind::Acos => "acos",
            UnaryKind::Atan => "atan",
            UnaryKind::Sinh => "sinh",
            UnaryKind::Cosh => "cosh",
            UnaryKind::Asinh => "asinh",
            UnaryKind::Acosh => "acosh",
            UnaryKind::Atanh => "atanh",
            UnaryKind::Floor => "floor",
            UnaryKind::Ceil => "ceil",
            UnaryKind::Round => "round",
            UnaryKind::Sign => "sign",
        }
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity(self.name(), inputs, 1)?;
        let x = &inputs[0];
        if x.dtype == DType::Bool || (!self.accepts_int() && !x.dtype.is_float()) {
            return Err(format!("{} is not defined on {}", self.name(), x.dtype));
        }
        Ok(vec![x.clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        if x.dtype() == DType::U64 {
            let v: Vec<u64> = x
                .to_u64_vec()
                .into_iter()
                .map(|i| match self {
                    UnaryKind::Neg => i.wrapping_neg(),
                    UnaryKind::Sign => u64::from(i != 0),
                    _ => i,
                })
                .collect();
            return Ok(vec![Tensor::from_u64(x.shape(), &v)]);
        }
        if x.dtype().is_int() {
            let v: Vec<i64> = x
                .to_i64_vec()
                .into_iter()
                .map(|i| match self {
                    UnaryKind::Neg => i.wrapping_neg(),
                    UnaryKind::Abs => i.wrapping_abs(),
                    UnaryKind::Sign => i.signum(),
                    UnaryKind::Floor | UnaryKind::Ceil | UnaryKind::Round => i,
                    _ => i.max(0),
                })
                .collect();
            return Ok(vec![Tensor::from_i64(x.dtype(), x.shape(), &v)]);
        }
        let v: Vec<f64> = x.to_f64_vec().into_iter().map(|e| self.f(e)).collect();
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}

/// Which formula `gelu` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluApprox {
    /// `0.5·x·(1 + erf(x/√2))`.
    None,
    /// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    Tanh,
}

/// GELU activation, exact (erf) or tanh-approximated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gelu {
    pub approximate: GeluApprox,
}

impl Gelu {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Gelu, String> {
        let approximate = match r.string("approximate")?.as_deref() {
            None | Some("none") => GeluApprox::None,
            Some("tanh") => GeluApprox::Tanh,
            Some(other) => {
                return Err(format!(
                    "gelu: approximate must be \"none\" or \"tanh\", got {other:?}"
                ))
            }
        };
        Ok(Gelu { approximate })
    }
}

impl OpImpl for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let s = match self.approximate {
            GeluApprox::None => "none",
            GeluApprox::Tanh => "tanh",
        };
        vec![("approximate", Attr::Str(s.into()))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("gelu", inputs, 1)?;
        want_float("gelu", "operand", &inputs[0])?;
        Ok(vec![inputs[0].clone()])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let v: Vec<f64> = x
            .to_f64_vec()
            .into_iter()
            .map(|e| match self.approximate {
                GeluApprox::None => 0.5 * e * (1.0 + libm::erf(e / std::f64::consts::SQRT_2)),
                GeluApprox::Tanh => {
                    let c = (2.0 / std::f64::consts::PI).sqrt();
                    0.5 * e * (1.0 + (c * (e + 0.044715 * e * e * e)).tanh())
                }
            })
            .collect();
        Ok(vec![Tensor::from_f64(x.dtype(), x.shape(), &v)])
    }
}

/// Binary arithmetic with numpy broadcasting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    /// Elementwise minimum (NaN wins, like `torch.minimum`).
    Minimum,
    /// Elementwise maximum (NaN wins, like `torch.maximum`).
    Maximum,
    /// Remainder with the sign of the divisor (Python `%`, ONNX `Mod`).
    Mod,
    /// Remainder with the sign of the dividend (C `fmod`, ONNX `Mod` with
    /// `fmod=1`).
    Fmod,
    /// Bitwise and (logical on bool).
    BitAnd,
    /// Bitwise or (logical on bool).
    BitOr,
    /// Bitwise exclusive or (logical on bool).
    BitXor,
    /// Left shift of integers; shifting by the width or more, or by a
    /// negative count, gives 0.
    Shl,
    /// Right shift of integers (arithmetic for signed types); by the width
    /// or more, or by a negative count, gives 0 (or -1 for negative signed
    /// values).
    Shr,
}

impl BinaryKind {
    pub const ALL: [BinaryKind; 14] = [
        BinaryKind::Add,
        BinaryKind::Sub,
        BinaryKind::Mul,
        BinaryKind::Div,
        BinaryKind::Pow,
        BinaryKind::Minimum,
        BinaryKind::Maximum,
        BinaryKind::Mod,
        BinaryKind::Fmod,
        BinaryKind::BitAnd,
        BinaryKind::BitOr,
        BinaryKind::BitXor,
        BinaryKind::Shl,
        BinaryKind::Shr,
    ];

    /// Bitwise ops: integers and bool only.
    pub fn is_bitwise(self) -> bool {
        matches!(
            self,
            BinaryKind::BitAnd | BinaryKind::BitOr | BinaryKind::BitXor | BinaryKind::Shl | BinaryKind::Shr
        )
    }

    fn f(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
            BinaryKind::Pow => a.powf(b),
            BinaryKind::Minimum if a.is_nan() || b.is_nan() => f64::NAN,
            BinaryKind::Maximum if a.is_nan() || b.is_nan() => f64::NAN,
            BinaryKind::Minimum => a.min(b),
            BinaryKind::Maximum => a.max(b),
            BinaryKind::Fmod => a % b,
            BinaryKind::Mod => {
                let r = a % b;
                if r != 0.0 && (r < 0.0) != (b < 0.0) {
                    r + b
                } else {
                    r
                }
            }
            // Rejected by `infer` for floats.
            _ => f64::NAN,
        }
    }

    /// Unsigned 64-bit arithmetic (u64 values do not fit the i64 path).
    fn uint(self, a: u64, b: u64) -> Result<u64, String> {
        Ok(match self {
            BinaryKind::Add => a.wrapping_add(b),
            BinaryKind::Sub => a.wrapping_sub(b),
            BinaryKind::Mul => a.wrapping_mul(b),
            BinaryKind::Div | BinaryKind::Mod | BinaryKind::Fmod if b == 0 => {
                return Err("integer division by zero".into())
            }
            BinaryKind::Div => a / b,
            BinaryKind::Mod | BinaryKind::Fmod => a % b,
            BinaryKind::Pow => a.wrapping_pow(u32::try_from(b).unwrap_or(u32::MAX)),
            BinaryKind::Minimum => a.min(b),
            BinaryKind::Maximum => a.max(b),
            BinaryKind::BitAnd => a & b,
            BinaryKind::BitOr => a | b,
            BinaryKind::BitXor => a ^ b,
            BinaryKind::Shl if b >= 64 => 0,
            BinaryKind::Shl => a << b,
            BinaryKind::Shr if b >= 64 => 0,
            BinaryKind::Shr => a >> b,
        })
    }

    fn int(self, a: i64, b: i64, bits: u32) -> Result<i64, String> {
        Ok(match self {
            BinaryKind::Add => a.wrapping_add(b),
            BinaryKind::Sub => a.wrapping_sub(b),
            BinaryKind::Mul => a.wrapping_mul(b),
            BinaryKind::Div if b == 0 => return Err("integer division by zero".into()),
            BinaryKind::Div => a.wrapping_div(b),
            BinaryKind::Pow => {
                let e = u32::try_from(b).map_err(|_| format!("integer pow with exponent {b}"))?;
                a.wrapping_pow(e)
            }
            BinaryKind::Minimum => a.min(b),
            BinaryKind::Maximum => a.max(b),
            BinaryKind::Mod | BinaryKind::Fmod if b == 0 => return Err("integer modulo by zero".into()),
            BinaryKind::Fmod => a.wrapping_rem(b),
            BinaryKind::Mod => {
                let r = a.wrapping_rem(b);
                if r != 0 && (r < 0) != (b < 0) {
                    r + b
                } else {
                    r
                }
            }
            BinaryKind::BitAnd => a & b,
            BinaryKind::BitOr => a | b,
            BinaryKind::BitXor => a ^ b,
            BinaryKind::Shl if !(0..bits as i64).contains(&b) => 0,
            BinaryKind::Shl => a.wrapping_shl(b as u32),
            BinaryKind::Shr => {
                // Negative or oversized counts fill with the sign bit (numpy).
                let b = if b < 0 { 63 } else { b };
                // Operands are held sign-extended in i64 (unsigned ones are
                // non-negative), so an arithmetic shift of the i64 is right
                // for both.
                a >> b.min(63)
            }
        })
    }
}

/// Applies `f` to two broadcast operands; returns the output shape and values.
fn zip_broadcast<T: Copy, U>(
    a: &[T],
    a_shape: &[usize],
    b: &[T],
    b_shape: &[usize],
    mut f: impl FnMut(T, T) -> Result<U, String>,
) -> Result<(Vec<usize>, Vec<U>), String> {
    let shape = broadcast(a_shape, b_shape)?;
    let ia = broadcast_map(a_shape, &shape);
    let ib = broadcast_map(b_shape, &shape);
    let v = ia
        .iter()
        .zip(&ib)
        .map(|(&i, &j)| f(a[i], b[j]))
        .collect::<Result<_, _>>()?;
    Ok((shape, v))
}

fn infer_binary(name: &str, inputs: &[TensorType]) -> Result<TensorType, String> {
    arity(name, inputs, 2)?;
    same_dtype(name, &inputs[0], &inputs[1])?;
    let shape = broadcast_shapes(&inputs[0].shape, &inputs[1].shape).map_err(|e| format!("{name}: {e}"))?;
    Ok(TensorType::new(inputs[0].dtype, shape))
}

impl OpImpl for BinaryKind {
    fn name(&self) -> &'static str {
        match self {
            BinaryKind::Add => "add",
            BinaryKind::Sub => "sub",
            BinaryKind::Mul => "mul",
            BinaryKind::Div => "div",
            BinaryKind::Pow => "pow",
            BinaryKind::Minimum => "minimum",
            BinaryKind::Maximum => "maximum",
            BinaryKind::Mod => "mod",
            BinaryKind::Fmod => "fmod",
            BinaryKind::BitAnd => "bitwise_and",
            BinaryKind::BitOr => "bitwise_or",
            BinaryKind::BitXor => "bitwise_xor",
            BinaryKind::Shl => "shift_left",
            BinaryKind::Shr => "shift_right",
        }
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let t = infer_binary(self.name(), inputs)?;
        let shift = matches!(self, BinaryKind::Shl | BinaryKind::Shr);
        if self.is_bitwise() && !(t.dtype.is_int() || (t.dtype == DType::Bool && !shift)) {
            return Err(format!("{} is not defined on {}", self.name(), t.dtype));
        }
        if t.dtype == DType::Bool && !self.is_bitwise() {
            return Err(format!("{} is not defined on bool", self.name()));
        }
        Ok(vec![t])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (a, b) = (inputs[0], inputs[1]);
        if a.dtype() == DType::U64 {
            let (shape, v) =
                zip_broadcast(&a.to_u64_vec(), a.shape(), &b.to_u64_vec(), b.shape(), |x, y| {
                    self.uint(x, y)
                })?;
            return Ok(vec![Tensor::from_u64(&shape, &v)]);
        }
        if a.dtype().is_int() || a.dtype() == DType::Bool {
            let bits = a.dtype().bits() as u32;
            let (shape, v) =
                zip_broadcast(&a.to_i64_vec(), a.shape(), &b.to_i64_vec(), b.shape(), |x, y| {
                    self.int(x, y, bits)
                })?;
            return Ok(vec![Tensor::from_i64(a.dtype(), &shape, &v)]);
        }
        let (shape, v) = zip_broadcast(&a.to_f64_vec(), a.shape(), &b.to_f64_vec(), b.shape(), |x, y| {
            Ok(self.f(x, y))
        })?;
        Ok(vec![Tensor::from_f64(a.dtype(), &shape, &v)])
    }
}

/// Comparisons; the result is `bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareKind {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

impl CompareKind {
    pub const ALL: [CompareKind; 6] = [
        CompareKind::Equal,
        CompareKind::NotEqual,
        CompareKind::Less,
        CompareKind::LessEqual,
        CompareKind::Greater,
        CompareKind::GreaterEqual,
    ];

    fn f<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            CompareKind::Equal => a == b,
            CompareKind::NotEqual => a != b,
            CompareKind::Less => a < b,
            CompareKind::LessEqual => a <= b,
            CompareKind::Greater => a > b,
            CompareKind::GreaterEqual => a >= b,
        }
    }
}

impl OpImpl for CompareKind {
    fn name(&self) -> &'static str {
        match self {
            CompareKind::Equal => "equal",
            CompareKind::NotEqual => "not_equal",
            CompareKind::Less => "less",
            CompareKind::LessEqual => "less_equal",
            CompareKind::Greater => "greater",
            CompareKind::GreaterEqual => "greater_equal",
        }
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let t = infer_binary(self.name(), inputs)?;
        Ok(vec![TensorType::new(DType::Bool, t.shape)])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (a, b) = (inputs[0], inputs[1]);
        let (shape, v) = if a.dtype().is_float() {
            zip_broadcast(&a.to_f64_vec(), a.shape(), &b.to_f64_vec(), b.shape(), |x, y| {
                Ok(self.f(x, y))
            })?
        } else if a.dtype() == DType::U64 {
            zip_broadcast(&a.to_u64_vec(), a.shape(), &b.to_u64_vec(), b.shape(), |x, y| {
                Ok(self.f(x, y))
            })?
        } else {
            zip_broadcast(&a.to_i64_vec(), a.shape(), &b.to_i64_vec(), b.shape(), |x, y| {
                Ok(self.f(x, y))
            })?
        };
        Ok(vec![Tensor::from_bool(&shape, &v)])
    }
}

/// `where(cond, a, b)`: `a` where `cond` is true, else `b`; all three broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Where;

impl OpImpl for Where {
    fn name(&self) -> &'static str {
        "where"
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("where", inputs, 3)?;
        if inputs[0].dtype != DType::Bool {
            return Err(format!("where needs a bool condition, got {}", inputs[0]));
        }
        same_dtype("where", &inputs[1], &inputs[2])?;
        let s = broadcast_shapes(&inputs[0].shape, &inputs[1].shape)
            .and_then(|s| broadcast_shapes(&s, &inputs[2].shape))
            .map_err(|e| format!("where: {e}"))?;
        Ok(vec![TensorType::new(inputs[1].dtype, s)])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (c, a, b) = (inputs[0], inputs[1], inputs[2]);
        let shape = broadcast(&broadcast(c.shape(), a.shape())?, b.shape())?;
        let (ic, ia, ib) = (
            broadcast_map(c.shape(), &shape),
            broadcast_map(a.shape(), &shape),
            broadcast_map(b.shape(), &shape),
        );
        let cv = c.to_bool_vec();
        // Pick flat indices from a virtual concatenation [a, b] so the values
        // keep their exact dtype.
        let n = a.numel();
        let joined = Tensor::join_flat(&[a, b]);
        let pick: Vec<usize> = (0..ic.len())
            .map(|k| if cv[ic[k]] { ia[k] } else { n + ib[k] })
            .collect();
        Ok(vec![joined.take_flat(&shape, &pick)])
    }
}

/// Converts to another dtype: floats round to nearest even, float to int
/// truncates toward zero and saturates (NaN becomes 0), int to int wraps,
/// anything to bool is `!= 0`, and f8e4m3 saturates at ±448.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cast {
    pub to: DType,
}

impl OpImpl for Cast {
    fn name(&self) -> &'static str {
        "cast"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("to", Attr::DType(self.to))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("cast", inputs, 1)?;
        Ok(vec![TensorType::new(self.to, inputs[0].shape.clone())])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        Ok(vec![inputs[0].cast(self.to)])
    }
}

/// Reinterprets the bits of each element as another dtype of the same
/// width (ONNX `BitCast`, `torch.Tensor.view(dtype)`): no value conversion,
/// little-endian bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BitCast {
    pub to: DType,
}

impl OpImpl for BitCast {
    fn name(&self) -> &'static str {
        "bitcast"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![("to", Attr::DType(self.to))]
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("bitcast", inputs, 1)?;
        let from = inputs[0].dtype;
        if from.bits() != self.to.bits() {
            return Err(format!(
                "bitcast: {from} has {} bits but {} has {}",
                from.bits(),
                self.to,
                self.to.bits()
            ));
        }
        Ok(vec![TensorType::new(self.to, inputs[0].shape.clone())])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let bytes = x.to_le_bytes();
        let mut t = Tensor::from_le_bytes(self.to, x.shape(), &bytes).map_err(|e| e.to_string())?;
        if self.to == DType::Bool {
            // Bools are one byte each; any non-zero byte is true.
            t = Tensor::from_bool(x.shape(), &bytes.iter().map(|&b| b != 0).collect::<Vec<_>>());
        }
        Ok(vec![t])
    }
}
