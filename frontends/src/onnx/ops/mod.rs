//! ONNX operators → IR ops, one file per family. Each handler reads the
//! attributes its opset defines (unread ones are reported as unsupported by
//! the importer) and builds IR ops through [`Cx`], which folds constants.

mod attention;
mod causal_conv;
mod conv;
mod conv_transpose;
mod einsum;
mod elementwise;
mod grid;
mod indexing;
mod linalg;
mod linear_attention;
mod loss;
mod nn;
mod qlinear;
mod quant;
mod reduce;
mod resize;
mod rnn;
mod rotary;
mod shape;
mod signal;
mod swiglu;
mod training;

use optc_ir::ops::{BinaryKind, CompareKind, UnaryKind, Where};
use optc_ir::{DType, Dim, Op};

use super::import::{unsupported, Cx, NodeCx, NodeError, Val};

pub(crate) type R = Result<Vec<Val>, NodeError>;
pub(crate) type Handler = fn(&mut Cx, &NodeCx) -> R;

fn table() -> impl Iterator<Item = &'static (&'static str, Handler)> {
    elementwise::OPS
        .iter()
        .chain(shape::OPS)
        .chain(reduce::OPS)
        .chain(nn::OPS)
        .chain(linalg::OPS)
        .chain(attention::OPS)
        .chain(loss::OPS)
        .chain(conv::OPS)
        .chain(quant::OPS)
        .chain(training::OPS)
        .chain(einsum::OPS)
        .chain(signal::OPS)
        .chain(rotary::OPS)
        .chain(swiglu::OPS)
        .chain(linear_attention::OPS)
        .chain(causal_conv::OPS)
        .chain(resize::OPS)
        .chain(grid::OPS)
        .chain(rnn::OPS)
        .chain(conv_transpose::OPS)
        .chain(qlinear::OPS)
        .chain(indexing::OPS)
}

/// Every ONNX op type the importer maps, sorted.
pub fn supported_ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = table().map(|(n, _)| *n).collect();
    v.sort_unstable();
    v
}

/// Lowers one node; the outputs are in ONNX output order.
pub fn lower(cx: &mut Cx, n: &NodeCx) -> R {
    let op = n.node.op_type.as_str();
    match table().find(|(name, _)| *name == op) {
        Some((_, f)) => f(cx, n),
        None => unsupported(format!("op {op} is not supported")),
    }
}

// Small builders the families share.

pub(crate) fn unary(cx: &mut Cx, k: UnaryKind, x: &Val) -> Result<Val, NodeError> {
    cx.op(Op::Unary(k), std::slice::from_ref(x))
}

pub(crate) fn binary(cx: &mut Cx, k: BinaryKind, a: &Val, b: &Val) -> Result<Val, NodeError> {
    cx.op(Op::Binary(k), &[a.clone(), b.clone()])
}

pub(crate) fn compare(cx: &mut Cx, k: CompareKind, a: &Val, b: &Val) -> Result<Val, NodeError> {
    cx.op(Op::Compare(k), &[a.clone(), b.clone()])
}

pub(crate) fn select(cx: &mut Cx, c: &Val, a: &Val, b: &Val) -> Result<Val, NodeError> {
    cx.op(Op::Where(Where), &[c.clone(), a.clone(), b.clone()])
}

/// `x op scalar` with the scalar in x's dtype.
pub(crate) fn with_scalar(cx: &mut Cx, k: BinaryKind, x: &Val, s: f64) -> Result<Val, NodeError> {
    let c = cx.scalar(s, x.dtype());
    binary(cx, k, x, &c)
}

/// Refuses dtypes a float-only formula cannot take.
pub(crate) fn want_float(n: &NodeCx, x: &Val) -> Result<(), NodeError> {
    if x.dtype().is_float() {
        Ok(())
    } else {
        unsupported(format!("{} on {} is not supported", n.node.op_type, x.dtype()))
    }
}

/// Most elements an import-time table, mask or unrolled loop may take;
/// models asking for more are refused instead of exhausting memory.
pub(crate) const IMPORT_TABLE_LIMIT: i64 = 1 << 24;

/// Most steps an op unrolled over a sequence (RNN, LinearAttention) may take.
pub(crate) const UNROLL_LIMIT: i64 = 1 << 14;

/// The product of constant extents, refusing overflow and anything above
/// `limit` (`what` names the quantity in the message).
pub(crate) fn checked_product(dims: &[i64], limit: i64, what: &str) -> Result<i64, NodeError> {
    dims.iter()
        .try_fold(1i64, |a, &d| if d < 0 { None } else { a.checked_mul(d) })
        .filter(|&n| n <= limit)
        .ok_or_else(|| {
            NodeError::Unsupported(format!("{what} {dims:?} is too large (over {limit} elements)"))
        })
}

/// A dim a decomposition needs as a constant (an unrolled length, a kernel
/// extent); a symbolic one is unsupported. The importer adds the node.
pub(crate) fn static_dim(d: &Dim, what: &str) -> Result<i64, NodeError> {
    d.as_const().ok_or_else(|| {
        NodeError::Unsupported(format!("the {what} must be static here, not the symbolic {d}"))
    })
}

/// Normalises a possibly negative axis against a rank.
pub(crate) fn axis(a: i64, rank: usize) -> Result<usize, NodeError> {
    let r = rank as i64;
    if a < -r || a >= r.max(1) {
        return Err(NodeError::Invalid(format!(
            "axis {a} is out of range for rank {rank}"
        )));
    }
    Ok(if a < 0 { (a + r) as usize } else { a as usize })
}

/// An axis that must name one of the input's dims, so a scalar has none
/// (`axis` lets axis 0 through at rank 0, for ops where that means the
/// whole value); callers index the dims with it.
pub(crate) fn dim_axis(a: i64, rank: usize) -> Result<usize, NodeError> {
    if rank == 0 {
        return Err(NodeError::Invalid(format!(
            "axis {a} is out of range for a scalar (rank 0)"
        )));
    }
    axis(a, rank)
}

/// The IR dtype from a `to`/`dtype` attribute code.
pub(crate) fn dtype_attr(code: i64) -> Result<DType, NodeError> {
    super::tensor::dtype_of(code as i32).map_err(NodeError::Unsupported)
}
