//! The op set. Each family lives in its own file and keeps, in one place,
//! every op's attributes, type rule (`infer`) and reference semantics
//! (`eval`). [`Op`] is the one enum the rest of the compiler matches on.

pub mod attention;
pub mod attrs;
pub mod conv;
pub mod creation;
pub mod elementwise;
pub(crate) mod index;
pub mod indexing;
pub mod linalg;
pub mod nn;
pub mod paged_attention;
pub mod reduce;
pub mod shape;

use std::collections::BTreeMap;

use crate::dim::{Bindings, Dim, TensorType};
use crate::tensor::Tensor;

pub use attention::ScaledDotProductAttention;
pub use attrs::{Attr, AttrReader};
pub use conv::{Conv, Pool, PoolKind, Window};
pub use creation::{Arange, Constant, Full, Scalar};
pub use elementwise::{BinaryKind, BitCast, Cast, CompareKind, Gelu, GeluApprox, UnaryKind, Where};
pub use indexing::{
    Concat, Gather, GatherElements, IndexSelect, ScatterElements, ScatterReduction, Slice, Split,
};
pub use linalg::{Linear, MatMul};
pub use nn::{AddRmsNorm, Embedding, LayerNorm, RmsNorm, Rope, Softmax, SwiGlu};
pub use paged_attention::PagedAttention;
pub use reduce::{ArgMax, CumProd, CumSum, Reduce, ReduceKind, TopK};
pub use shape::{Expand, Reshape, Squeeze, Transpose, Triangular, Unsqueeze};

/// What the interpreter hands an op besides its inputs: the symbol values of
/// this run, for ops whose attributes are symbolic (`reshape`, `full`, ...).
pub struct EvalCx<'a> {
    pub bindings: &'a Bindings,
}

impl EvalCx<'_> {
    /// Concrete extents of symbolic dims, refusing tensors too large for the
    /// reference interpreter (an error instead of an allocation abort).
    pub fn shape(&self, dims: &[Dim]) -> Result<Vec<usize>, String> {
        let shape: Vec<usize> = dims.iter().map(|d| self.dim(d)).collect::<Result<_, _>>()?;
        check_size(&shape)?;
        Ok(shape)
    }

    /// One concrete extent.
    pub fn dim(&self, d: &Dim) -> Result<usize, String> {
        let v = d.eval(self.bindings)?;
        usize::try_from(v).map_err(|_| format!("dim {d} evaluates to {v}, which is negative"))
    }
}

/// The contract every op family implements.
pub trait OpImpl {
    /// The name in the text form.
    fn name(&self) -> &'static str;
    /// Attributes in printing order.
    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        Vec::new()
    }
    /// Output types from input types; the message says what is wrong with
    /// which operand (the caller adds the node).
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String>;
    /// Reference semantics on concrete tensors.
    fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String>;
}

/// One operation of the IR.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Unary(UnaryKind),
    Gelu(Gelu),
    Binary(BinaryKind),
    Compare(CompareKind),
    Where(Where),
    Cast(Cast),
    BitCast(BitCast),
    Reduce(Reduce),
    ArgMax(ArgMax),
    CumSum(CumSum),
    CumProd(CumProd),
    TopK(TopK),
    Softmax(Softmax),
    MatMul(MatMul),
    Linear(Linear),
    Reshape(Reshape),
    Transpose(Transpose),
    Unsqueeze(Unsqueeze),
    Squeeze(Squeeze),
    Expand(Expand),
    Slice(Slice),
    Concat(Concat),
    Split(Split),
    Gather(Gather),
    IndexSelect(IndexSelect),
    GatherElements(GatherElements),
    ScatterElements(ScatterElements),
    Triangular(Triangular),
    Arange(Arange),
    Full(Full),
    Constant(Constant),
    Embedding(Embedding),
    LayerNorm(LayerNorm),
    RmsNorm(RmsNorm),
    AddRmsNorm(AddRmsNorm),
    Rope(Rope),
    SwiGlu(SwiGlu),
    Attention(ScaledDotProductAttention),
    PagedAttention(PagedAttention),
    Conv(Conv),
    Pool(Pool),
}

impl Op {
    fn imp(&self) -> &dyn OpImpl {
        match self {
            Op::Unary(o) => o,
            Op::Gelu(o) => o,
            Op::Binary(o) => o,
            Op::Compare(o) => o,
            Op::Where(o) => o,
            Op::Cast(o) => o,
            Op::BitCast(o) => o,
            Op::Reduce(o) => o,
            Op::ArgMax(o) => o,
            Op::CumSum(o) => o,
            Op::CumProd(o) => o,
            Op::TopK(o) => o,
            Op::Softmax(o) => o,
            Op::MatMul(o) => o,
            Op::Linear(o) => o,
            Op::Reshape(o) => o,
            Op::Transpose(o) => o,
            Op::Unsqueeze(o) => o,
            Op::Squeeze(o) => o,
            Op::Expand(o) => o,
            Op::Slice(o) => o,
            Op::Concat(o) => o,
            Op::Split(o) => o,
            Op::Gather(o) => o,
            Op::IndexSelect(o) => o,
            Op::GatherElements(o) => o,
            Op::ScatterElements(o) => o,
            Op::Triangular(o) => o,
            Op::Arange(o) => o,
            Op::Full(o) => o,
            Op::Constant(o) => o,
            Op::Embedding(o) => o,
            Op::LayerNorm(o) => o,
            Op::RmsNorm(o) => o,
            Op::AddRmsNorm(o) => o,
            Op::Rope(o) => o,
            Op::SwiGlu(o) => o,
            Op::Attention(o) => o,
            Op::PagedAttention(o) => o,
            Op::Conv(o) => o,
            Op::Pool(o) => o,
        }
    }

    /// The name in the text form (`add`, `rms_norm`, ...).
    pub fn name(&self) -> &'static str {
        self.imp().name()
    }

    /// Attributes in printing order.
    pub fn attrs(&self) -> Vec<(&'static str, Attr)> {
        self.imp().attrs()
    }

    /// The type rule: output types from input types.
    pub fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        self.imp().infer(inputs)
    }

    /// Reference semantics.
    pub fn eval(&self, inputs: &[&Tensor], cx: &EvalCx) -> Result<Vec<Tensor>, String> {
        self.imp().eval(inputs, cx)
    }

    /// Every symbol the op's attributes mention (they must be bound by the
    /// graph inputs like those of value types).
    pub fn symbols(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (_, a) in self.attrs() {
            match a {
                Attr::Dim(d) => out.extend(d.symbols().map(String::from)),
                Attr::Dims(ds) => out.extend(ds.iter().flat_map(|d| d.symbols().map(String::from))),
                _ => {}
            }
        }
        out
    }

    /// The op with the symbols in its dim attributes replaced (see
    /// [`Dim::substitute`]); ops without dim attributes are unchanged.
    pub fn substitute_dims(&self, map: &BTreeMap<String, Dim>) -> Op {
        let sub = |ds: &[Dim]| ds.iter().map(|d| d.substitute(map)).collect::<Vec<_>>();
        let mut op = self.clone();
        match &mut op {
            Op::Reshape(o) => o.shape = sub(&o.shape),
            Op::Expand(o) => o.shape = sub(&o.shape),
            Op::Split(o) => o.sizes = sub(&o.sizes),
            Op::Full(o) => o.shape = sub(&o.shape),
            Op::Arange(o) => {
                o.start = o.start.substitute(map);
                o.end = o.end.substitute(map);
            }
            _ => {}
        }
        op
    }

    /// Every op name the text form accepts.
    pub fn names() -> Vec<&'static str> {
        let mut v: Vec<&'static str> = UnaryKind::ALL.iter().map(|k| k.name()).collect();
        v.extend(BinaryKind::ALL.iter().map(|k| k.name()));
        v.extend(CompareKind::ALL.iter().map(|k| k.name()));
        v.extend(ReduceKind::ALL.iter().map(|k| k.name()));
        v.extend([
            "gelu",
            "where",
            "cast",
            "bitcast",
            "argmax",
            "cumsum",
            "cumprod",
            "topk",
            "softmax",
            "log_softmax",
            "matmul",
            "linear",
            "reshape",
            "transpose",
            "unsqueeze",
            "squeeze",
            "expand",
            "slice",
            "concat",
            "split",
            "gather",
            "index_select",
            "gather_elements",
            "scatter_elements",
            "triu",
            "tril",
            "arange",
            "full",
            "constant",
            "embedding",
            "layer_norm",
            "rms_norm",
            "add_rms_norm",
            "rope",
            "swiglu",
            "scaled_dot_product_attention",
            "paged_attention",
            "conv",
            "max_pool",
            "avg_pool",
            "lp_pool",
        ]);
        v
    }

    /// Builds an op from its text-form name and attributes, checking that
    /// every attribute is known and of the right kind.
    pub fn from_attrs(name: &str, attrs: BTreeMap<String, Attr>) -> Result<Op, String> {
        let mut r = AttrReader::new(name, attrs);
        let op = if let Some(k) = UnaryKind::ALL.iter().find(|k| k.name() == name) {
            Op::Unary(*k)
        } else if let Some(k) = BinaryKind::ALL.iter().find(|k| k.name() == name) {
            Op::Binary(*k)
        } else if let Some(k) = CompareKind::ALL.iter().find(|k| k.name() == name) {
            Op::Compare(*k)
        } else if let Some(k) = ReduceKind::ALL.iter().find(|k| k.name() == name) {
            Op::Reduce(Reduce::read(*k, &mut r)?)
        } else {
            match name {
                "gelu" => Op::Gelu(Gelu::read(&mut r)?),
                "where" => Op::Where(Where),
                "cast" => Op::Cast(Cast { to: r.dtype("to")? }),
                "bitcast" => Op::BitCast(BitCast { to: r.dtype("to")? }),
                "argmax" => Op::ArgMax(ArgMax::read(&mut r)?),
                "cumsum" => Op::CumSum(CumSum { axis: r.int("axis")? }),
                "cumprod" => Op::CumProd(CumProd { axis: r.int("axis")? }),
                "topk" => Op::TopK(TopK::read(&mut r)?),
                "softmax" | "log_softmax" => Op::Softmax(Softmax {
                    axis: r.int_or("axis", -1)?,
                    log: name == "log_softmax",
                }),
                "matmul" => Op::MatMul(MatMul),
                "linear" => Op::Linear(Linear),
                "reshape" => Op::Reshape(Reshape {
                    shape: r.dims("shape")?,
                }),
                "transpose" => Op::Transpose(Transpose {
                    perm: r.ints("perm")?,
                }),
                "unsqueeze" => Op::Unsqueeze(Unsqueeze {
                    axes: r.ints("axes")?,
                }),
                "squeeze" => Op::Squeeze(Squeeze {
                    axes: r.ints("axes")?,
                }),
                "expand" => Op::Expand(Expand {
                    shape: r.dims("shape")?,
                }),
                "slice" => Op::Slice(Slice::read(&mut r)?),
                "concat" => Op::Concat(Concat { axis: r.int("axis")? }),
                "split" => Op::Split(Split {
                    axis: r.int("axis")?,
                    sizes: r.dims("sizes")?,
                }),
                "gather" => Op::Gather(Gather { axis: r.int("axis")? }),
                "index_select" => Op::IndexSelect(IndexSelect { axis: r.int("axis")? }),
                "gather_elements" => Op::GatherElements(GatherElements { axis: r.int("axis")? }),
                "scatter_elements" => Op::ScatterElements(ScatterElements::read(&mut r)?),
                "triu" | "tril" => Op::Triangular(Triangular {
                    upper: name == "triu",
                    k: r.int_or("k", 0)?,
                }),
                "arange" => Op::Arange(Arange::read(&mut r)?),
                "full" => Op::Full(Full::read(&mut r)?),
                "constant" => Op::Constant(Constant::read(&mut r)?),
                "embedding" => Op::Embedding(Embedding),
                "layer_norm" => Op::LayerNorm(LayerNorm {
                    axis: r.int_or("axis", -1)?,
                    eps: r.float("eps")?,
                }),
                "rms_norm" => Op::RmsNorm(RmsNorm {
                    axis: r.int_or("axis", -1)?,
                    eps: r.float("eps")?,
                }),
                "add_rms_norm" => Op::AddRmsNorm(AddRmsNorm {
                    axis: r.int_or("axis", -1)?,
                    eps: r.float("eps")?,
                }),
                "rope" => Op::Rope(Rope {
                    interleaved: r.bool_or("interleaved", false)?,
                }),
                "swiglu" => Op::SwiGlu(SwiGlu),
                "conv" => Op::Conv(Conv::read(&mut r)?),
                "max_pool" | "avg_pool" | "lp_pool" => Op::Pool(Pool::read(name, &mut r)?),
                "scaled_dot_product_attention" => Op::Attention(ScaledDotProductAttention {
                    causal: r.bool_or("causal", false)?,
                    scale: r.opt_float("scale")?,
                }),
                "paged_attention" => Op::PagedAttention(PagedAttention::read(&mut r)?),
                _ => return Err(format!("unknown op '{name}'")),
            }
        };
        r.finish()?;
        Ok(op)
    }
}

/// Most elements one tensor may have in the reference interpreter.
pub const MAX_ELEMENTS: usize = 1 << 31;

/// Fails for shapes beyond [`MAX_ELEMENTS`] (or whose size overflows).
pub fn check_size(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| format!("a tensor of shape {shape:?} is too large for the reference interpreter"))
}

/// Rejects constant dims below zero in a dim-list attribute.
pub(crate) fn no_negative_dims(name: &str, attr: &str, dims: &[Dim]) -> Result<(), String> {
    match dims.iter().find(|d| d.as_const().is_some_and(|c| c < 0)) {
        Some(d) => Err(format!("{name}: {attr} has a negative dim {d}")),
        None => Ok(()),
    }
}

/// Checks the operand count.
pub(crate) fn arity(name: &str, inputs: &[TensorType], n: usize) -> Result<(), String> {
    if inputs.len() != n {
        return Err(format!("{name} takes {n} operand(s) but got {}", inputs.len()));
    }
    Ok(())
}

/// Grouped-query heads: `hkv` divides `hq` (when both are constants), or
/// they are the same dim; the message names the op.
pub(crate) fn grouped_heads(name: &str, hq: &Dim, hkv: &Dim) -> Result<(), String> {
    let grouped = match (hq.as_const(), hkv.as_const()) {
        (Some(a), Some(b)) => b > 0 && a % b == 0,
        _ => hq == hkv,
    };
    if !grouped {
        return Err(format!(
            "{name}: {hq} query heads are not a multiple of {hkv} kv heads"
        ));
    }
    Ok(())
}

/// Checks that an operand has a float dtype.
pub(crate) fn want_float(name: &str, what: &str, t: &TensorType) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("{name} needs a float {what}, got {t}"));
    }
    Ok(())
}

/// Checks that two operands share a dtype (the IR never promotes implicitly).
pub(crate) fn same_dtype(name: &str, a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dtype != b.dtype {
        return Err(format!(
            "{name} needs operands of one dtype, got {a} and {b} (insert a cast)"
        ));
    }
    Ok(())
}
