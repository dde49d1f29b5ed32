//! Indexing: `slice`, `select`, `index_select`, advanced `index.Tensor`,
//! `cat`/`stack`, and `split`/`split_with_sizes`/`chunk`/`unbind`.

use optc_ir::ops::{
    BinaryKind, CompareKind, Concat, Expand, Gather, IndexSelect, Op, Reshape, Slice, Split, Squeeze,
    Unsqueeze, Where,
};
use optc_ir::{DType, Dim, Value};

use super::{one, Lower};
use crate::fx::import::{Cx, Num};
use crate::fx::schema::{Argument, Node};

type R = Result<Vec<Value>, String>;

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    optc_ir::dim::normalize_axis(a, rank)
}

/// Python ends past this are "to the end" (torch writes `sys.maxsize`).
const OPEN_END: i64 = i64::MAX / 2;

/// `slice(self, dim, start, end, step)`; symbolic bounds are accepted
/// where they are the axis extent (`x[:, :seq_len]` on a `seq_len` axis).
fn slice(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let ty = cx.ty(x);
    let dim = cx.int(n, "dim", Some(0))?;
    let extent = ty.shape.dims()[axis(dim, ty.rank())?].clone();
    let start = cx.dim(n, "start", Some(Dim::constant(0)))?;
    let start = match start.as_const() {
        Some(s) => s,
        None => return Err(format!("slice start {start} is symbolic")),
    };
    let end = if matches!(cx.arg(n, "end"), None | Some(Argument::AsNone(_))) {
        None
    } else {
        let e = cx.dim(n, "end", None)?;
        match e.as_const() {
            _ if e == extent => None,
            Some(e) if e >= OPEN_END => None,
            Some(e) => Some(e),
            None => {
                return Err(format!(
                    "slice end {e} is symbolic and not the axis extent {extent}"
                ))
            }
        }
    };
    let step = cx.int(n, "step", Some(1))?;
    if start == 0 && end.is_none() && step == 1 {
        return one(x);
    }
    one(cx.op(
        Op::Slice(Slice {
            axis: dim,
            start,
            end,
            step,
        }),
        &[x],
    )?)
}

/// `select(self, dim, index)`: a gather with a 0-d index.
fn select(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", None)?;
    let index = cx.int(n, "index", None)?;
    let i = cx.constant(Num::Int(index), DType::I64)?;
    one(cx.op(Op::Gather(Gather { axis: dim }), &[x, i])?)
}

fn index_select(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", None)?;
    let i = cx.tensor(n, "index")?;
    one(cx.op(Op::IndexSelect(IndexSelect { axis: dim }), &[x, i])?)
}

/// `x[i_j, ..., i_{j+k-1}]` for adjacent integer index tensors: the indexed
/// dims are flattened and gathered with the linear index
/// `sum(i_m * stride_m)`, broadcast over the index shapes. Dims of extent 1
/// contribute only their index's shape (the index can only be 0 or -1).
fn index(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let xt = cx.ty(x);
    let idx = cx.opt_tensors(n, "indices")?;
    let used: Vec<usize> = (0..idx.len()).filter(|&i| idx[i].is_some()).collect();
    let (Some(&j), Some(&last)) = (used.first(), used.last()) else {
        return one(x);
    };
    if last - j + 1 != used.len() {
        return Err("index tensors on non-adjacent dims are not supported".into());
    }
    if last >= xt.rank() {
        return Err(format!("{} index tensors for {xt}", last + 1));
    }
    let dims = xt.shape.dims().to_vec();
    let mut shapes = Vec::new();
    let mut parts: Vec<(Value, Dim)> = Vec::new();
    for m in j..=last {
        let i = idx[m].ok_or("index list changed")?;
        let it = cx.ty(i);
        if !matches!(it.dtype, DType::I64 | DType::I32) {
            return Err(format!(
                "index tensor {it}: only integer indices are supported (no bool masks)"
            ));
        }
        shapes.push(it.shape.clone());
        let i = cx.cast(i, DType::I64)?;
        if !dims[m].is(1) {
            parts.push((i, dims[m].clone()));
        }
    }
    let mut bshape = shapes[0].clone();
    for s in &shapes[1..] {
        bshape = optc_ir::dim::broadcast_shapes(&bshape, s)?;
    }
    let flat_extent = dims[j..=last]
        .iter()
        .try_fold(Dim::constant(1), |a, d| a.checked_mul(d))
        .ok_or("size too complex")?;
    let mut lin: Option<Value> = None;
    let mut stride = Dim::constant(1);
    for (i, extent) in parts.iter().rev() {
        let mut term = *i;
        match extent.as_const() {
            Some(e) => {
                // Negative indices count from this dim's end.
                let zero = cx.constant(Num::Int(0), DType::I64)?;
                let neg = cx.op(Op::Compare(CompareKind::Less), &[term, zero])?;
                let ext = cx.constant(Num::Int(e), DType::I64)?;
                let wrapped = cx.op(Op::Binary(BinaryKind::Add), &[term, ext])?;
                term = cx.op(Op::Where(Where), &[neg, wrapped, term])?;
            }
            // The gather wraps negatives against the flattened extent,
            // which is this dim's only when it is the one indexed dim > 1.
            None if parts.len() == 1 => {}
            None => {
                return Err(format!(
                    "advanced indexing over the symbolic dim {extent} with other dims"
                ))
            }
        }
        if !stride.is(1) {
            let s = stride
                .as_const()
                .ok_or_else(|| format!("advanced indexing with the symbolic stride {stride}"))?;
            let c = cx.constant(Num::Int(s), DType::I64)?;
            term = cx.op(Op::Binary(BinaryKind::Mul), &[term, c])?;
        }
        lin = Some(match lin {
            None => term,
            Some(acc) => cx.op(Op::Binary(BinaryKind::Add), &[acc, term])?,
        });
        stride = stride.checked_mul(extent).ok_or("size too complex")?;
    }
    let lin = match lin {
        Some(l) => l,
        None => cx.constant(Num::Int(0), DType::I64)?,
    };
    let lin = if cx.ty(lin).shape != bshape {
        cx.op(
            Op::Expand(Expand {
                shape: bshape.dims().to_vec(),
            }),
            &[lin],
        )?
    } else {
        lin
    };
    let data = if last > j {
        let mut shape = dims[..j].to_vec();
        shape.push(flat_extent);
        shape.extend_from_slice(&dims[last + 1..]);
        cx.op(Op::Reshape(Reshape { shape }), &[x])?
    } else {
        x
    };
    one(cx.op(Op::Gather(Gather { axis: j as i64 }), &[data, lin])?)
}

fn cat(cx: &mut Cx, n: &Node) -> R {
    let parts = cx.tensors(n, "tensors")?;
    let dim = cx.int(n, "dim", Some(0))?;
    match parts.as_slice() {
        [] => Err("cat of no tensors".into()),
        [one_part] => one(*one_part),
        _ => one(cx.op(Op::Concat(Concat { axis: dim }), &parts)?),
    }
}

fn stack(cx: &mut Cx, n: &Node) -> R {
    let parts = cx.tensors(n, "tensors")?;
    let dim = cx.int(n, "dim", Some(0))?;
    let mut u = Vec::new();
    for p in parts {
        u.push(cx.op(Op::Unsqueeze(Unsqueeze { axes: vec![dim] }), &[p])?);
    }
    if u.len() == 1 {
        return one(u[0]);
    }
    one(cx.op(Op::Concat(Concat { axis: dim }), &u)?)
}

/// Splits `x` along `dim` into pieces of `sizes`.
fn split_into(cx: &mut Cx, x: Value, dim: i64, sizes: Vec<Dim>) -> R {
    if sizes.len() == 1 {
        return Ok(vec![x]);
    }
    cx.ops(Op::Split(Split { axis: dim, sizes }), &[x])
}

/// The extent of `dim`, which must be a constant to split by a size.
fn const_extent(cx: &Cx, x: Value, dim: i64) -> Result<i64, String> {
    let ty = cx.ty(x);
    let d = &ty.shape.dims()[axis(dim, ty.rank())?];
    d.as_const()
        .ok_or_else(|| format!("splitting the symbolic dim {d} of {ty} by a size is not supported"))
}

/// Most pieces a split, chunk or unbind may make (each is a node of its own).
const MAX_PIECES: i64 = 1 << 16;

/// `count` pieces, if there are not too many.
fn pieces(count: i64) -> Result<usize, String> {
    if (0..=MAX_PIECES).contains(&count) {
        Ok(count as usize)
    } else {
        Err(format!("{count} pieces (the most is {MAX_PIECES})"))
    }
}

fn split(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", Some(0))?;
    let size = cx.int(n, "split_size", None)?;
    if size <= 0 {
        return Err(format!("split_size {size}"));
    }
    let e = const_extent(cx, x, dim)?;
    let mut sizes = vec![Dim::constant(size); pieces(e / size)?];
    if e % size != 0 || e == 0 {
        sizes.push(Dim::constant(e % size));
    }
    split_into(cx, x, dim, sizes)
}

fn split_with_sizes(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", Some(0))?;
    let sizes = cx.dims(n, "split_sizes")?;
    split_into(cx, x, dim, sizes)
}

/// torch's chunk: pieces of `ceil(n / chunks)`, the last one smaller.
fn chunk(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", Some(0))?;
    let chunks = cx.int(n, "chunks", None)?;
    if chunks <= 0 {
        return Err(format!("chunks = {chunks}"));
    }
    let e = const_extent(cx, x, dim)?;
    pieces(chunks.min(e))?;
    let size = (e / chunks + i64::from(e % chunks != 0)).max(1);
    let mut sizes = Vec::new();
    let mut left = e;
    while left > 0 {
        sizes.push(Dim::constant(size.min(left)));
        left -= size;
    }
    if sizes.is_empty() {
        sizes.push(Dim::constant(0));
    }
    split_into(cx, x, dim, sizes)
}

fn unbind(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let dim = cx.int(n, "dim", Some(0))?;
    let e = const_extent(cx, x, dim)?;
    let parts = split_into(cx, x, dim, vec![Dim::constant(1); pieces(e)?])?;
    parts
        .into_iter()
        .map(|p| cx.op(Op::Squeeze(Squeeze { axes: vec![dim] }), &[p]))
        .collect()
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.slice.Tensor", slice),
    ("aten.select.int", select),
    ("aten.index_select.default", index_select),
    ("aten.index.Tensor", index),
    ("aten.cat.default", cat),
    ("aten.stack.default", stack),
    ("aten.split.Tensor", split),
    ("aten.split_with_sizes.default", split_with_sizes),
    ("aten.chunk.default", chunk),
    ("aten.unbind.int", unbind),
];
