//! Shape and layout: `view`/`reshape` (with `-1` resolved symbolically),
//! `permute`/`transpose`/`t`, `unsqueeze`/`squeeze`, `expand`, `flatten`,
//! `triu`/`tril`.

use optc_ir::ops::{Expand, Op, Reshape, Squeeze, Transpose, Triangular, Unsqueeze};
use optc_ir::{Dim, Value};

use super::{one, Lower};
use crate::fx::import::Cx;
use crate::fx::schema::Node;

type R = Result<Vec<Value>, String>;

fn axis(a: i64, rank: usize) -> Result<usize, String> {
    optc_ir::dim::normalize_axis(a, rank)
}

/// `dims` with its one `-1` (if any) replaced by what the element count
/// leaves for it.
fn resolve(cx: &Cx, x: Value, dims: Vec<Dim>) -> Result<Vec<Dim>, String> {
    let holes: Vec<usize> = (0..dims.len())
        .filter(|&i| dims[i].as_const() == Some(-1))
        .collect();
    let ty = cx.ty(x);
    match holes.as_slice() {
        [] => Ok(dims),
        [h] => {
            let known = dims
                .iter()
                .enumerate()
                .filter(|(i, _)| i != h)
                .try_fold(Dim::constant(1), |a, (_, d)| a.checked_mul(d))
                .ok_or("size too complex")?;
            let total = ty.shape.numel().ok_or("size too complex")?;
            let fill = total.div_exact(&known).ok_or_else(|| {
                format!("cannot view {ty} as {dims:?}: {total} is not a multiple of {known}")
            })?;
            let mut out = dims;
            out[*h] = fill;
            Ok(out)
        }
        _ => Err(format!("more than one -1 in the size {dims:?}")),
    }
}

fn reshape_to(cx: &mut Cx, x: Value, dims: Vec<Dim>) -> Result<Value, String> {
    let shape = resolve(cx, x, dims)?;
    cx.op(Op::Reshape(Reshape { shape }), &[x])
}

fn view(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let name = if cx.arg(n, "size").is_some() {
        "size"
    } else {
        "shape"
    };
    let dims = cx.dims(n, name)?;
    one(reshape_to(cx, x, dims)?)
}

fn permute(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let perm = cx.ints(n, "dims", None)?;
    one(cx.op(Op::Transpose(Transpose { perm }), &[x])?)
}

fn transpose(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let rank = cx.ty(x).rank();
    if rank == 0 {
        return one(x);
    }
    let a = axis(cx.int(n, "dim0", None)?, rank)?;
    let b = axis(cx.int(n, "dim1", None)?, rank)?;
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(a, b);
    one(cx.op(Op::Transpose(Transpose { perm }), &[x])?)
}

fn t(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    match cx.ty(x).rank() {
        0 | 1 => one(x),
        2 => one(cx.op(Op::Transpose(Transpose { perm: vec![1, 0] }), &[x])?),
        r => Err(format!("t() needs rank <= 2, got rank {r}")),
    }
}

fn unsqueeze(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let d = cx.int(n, "dim", None)?;
    one(cx.op(Op::Unsqueeze(Unsqueeze { axes: vec![d] }), &[x])?)
}

/// torch's squeeze leaves dims that are not 1 alone.
fn squeeze(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let ty = cx.ty(x);
    let rank = ty.rank();
    let listed: Vec<usize> = match cx.arg(n, "dim") {
        Some(_) => cx
            .ints(n, "dim", None)?
            .into_iter()
            .map(|a| axis(a, rank.max(1)))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    let axes: Vec<i64> = listed
        .into_iter()
        .filter(|&a| a < rank && ty.shape.dims()[a].is(1))
        .map(|a| a as i64)
        .collect();
    if axes.is_empty() {
        return one(x);
    }
    one(cx.op(Op::Squeeze(Squeeze { axes }), &[x])?)
}

/// `expand(self, size)`: `-1` keeps the input's dim.
fn expand(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let ty = cx.ty(x);
    let mut shape = cx.dims(n, "size")?;
    let off = shape
        .len()
        .checked_sub(ty.rank())
        .ok_or_else(|| format!("expand to {} dims from {ty}", shape.len()))?;
    for (i, d) in shape.iter_mut().enumerate() {
        if d.as_const() == Some(-1) {
            if i < off {
                return Err(format!("expand: -1 at new leading dim {i}"));
            }
            *d = ty.shape.dims()[i - off].clone();
        }
    }
    if shape == ty.shape.dims() {
        return one(x);
    }
    one(cx.op(Op::Expand(Expand { shape }), &[x])?)
}

fn flatten(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let ty = cx.ty(x);
    let rank = ty.rank();
    if rank == 0 {
        return one(cx.op(
            Op::Reshape(Reshape {
                shape: vec![Dim::constant(1)],
            }),
            &[x],
        )?);
    }
    let s = axis(cx.int(n, "start_dim", Some(0))?, rank)?;
    let e = axis(cx.int(n, "end_dim", Some(-1))?, rank)?;
    if s > e {
        return Err(format!("flatten: start_dim {s} after end_dim {e}"));
    }
    let d = ty.shape.dims();
    let mid = d[s..=e]
        .iter()
        .try_fold(Dim::constant(1), |a, x| a.checked_mul(x))
        .ok_or("size too complex")?;
    let mut shape = d[..s].to_vec();
    shape.push(mid);
    shape.extend_from_slice(&d[e + 1..]);
    one(cx.op(Op::Reshape(Reshape { shape }), &[x])?)
}

fn unflatten(cx: &mut Cx, n: &Node) -> R {
    let x = cx.tensor(n, "self")?;
    let ty = cx.ty(x);
    let a = axis(cx.int(n, "dim", None)?, ty.rank())?;
    let sizes = cx.dims(n, "sizes")?;
    let d = ty.shape.dims();
    let mut shape = d[..a].to_vec();
    // A -1 in `sizes` resolves against the whole element count.
    shape.extend(sizes);
    shape.extend_from_slice(&d[a + 1..]);
    one(reshape_to(cx, x, shape)?)
}

fn tri(cx: &mut Cx, n: &Node, upper: bool) -> R {
    let x = cx.tensor(n, "self")?;
    let k = cx.int(n, "diagonal", Some(0))?;
    one(cx.op(Op::Triangular(Triangular { upper, k }), &[x])?)
}

fn triu(cx: &mut Cx, n: &Node) -> R {
    tri(cx, n, true)
}

fn tril(cx: &mut Cx, n: &Node) -> R {
    tri(cx, n, false)
}

pub const TABLE: &[(&str, Lower)] = &[
    ("aten.view.default", view),
    ("aten.reshape.default", view),
    ("aten._unsafe_view.default", view),
    ("aten.permute.default", permute),
    ("aten.transpose.int", transpose),
    ("aten.t.default", t),
    ("aten.unsqueeze.default", unsqueeze),
    ("aten.squeeze.default", squeeze),
    ("aten.squeeze.dim", squeeze),
    ("aten.squeeze.dims", squeeze),
    ("aten.expand.default", expand),
    ("aten.flatten.using_ints", flatten),
    ("aten.unflatten.int", unflatten),
    ("aten.triu.default", triu),
    ("aten.tril.default", tril),
];
