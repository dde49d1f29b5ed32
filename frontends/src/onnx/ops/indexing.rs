//! Element-wise indexing ONNX ops: GatherElements, ScatterElements (and its
//! opset-9 alias Scatter), GatherND, ScatterND, TopK, ReverseSequence,
//! TensorScatter and MaxUnpool. The N-d forms linearise their index tuples
//! and use the IR's `gather`/`scatter_elements` on a flattened axis.

use optc_ir::ops::{
    Arange, BinaryKind as B, CompareKind as C, Concat, Full, Gather, GatherElements, Reduce, ReduceKind,
    Scalar, ScatterElements, ScatterReduction, TopK,
};
use optc_ir::{DType, Dim, Op};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::{expand_to, product};
use super::{axis, binary, compare, select, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("GatherElements", gather_elements),
    ("ScatterElements", |cx, n| scatter_elements(cx, n, true)),
    ("Scatter", |cx, n| scatter_elements(cx, n, false)),
    ("GatherND", gather_nd),
    ("ScatterND", scatter_nd),
    ("TopK", topk),
    ("ReverseSequence", reverse_sequence),
    ("TensorScatter", tensor_scatter),
    ("MaxUnpool", max_unpool),
];

/// `arange(0, n)` as i64.
fn iota(cx: &mut Cx, n: &Dim) -> Result<Val, NodeError> {
    cx.op(
        Op::Arange(Arange {
            start: Dim::constant(0),
            end: n.clone(),
            step: 1,
            dtype: DType::I64,
        }),
        &[],
    )
}

/// A rank-`rank` view of a 1-D value laid along axis `a` (1 elsewhere), for
/// broadcasting against a tensor of that rank.
fn along(cx: &mut Cx, v: &Val, rank: usize, a: usize) -> Result<Val, NodeError> {
    let mut dims = vec![Dim::constant(1); rank];
    dims[a] = v.dims()[0].clone();
    cx.reshape(v, dims)
}

/// A dim as a rank-0 i64 value (known at import time, symbolic or not).
fn dim_scalar(cx: &mut Cx, d: &Dim) -> Result<Val, NodeError> {
    match d.as_const() {
        Some(c) => Ok(cx.scalar(c as f64, DType::I64)),
        None => {
            let v = cx.dims_val(vec![d.clone()]);
            cx.reshape(&v, vec![])
        }
    }
}

/// The ONNX `reduction` attribute (absent before opset 16, where it is
/// `none`).
fn reduction(n: &NodeCx) -> Result<ScatterReduction, NodeError> {
    let r = n.string("reduction", "none")?;
    ScatterReduction::ALL
        .iter()
        .copied()
        .find(|k| k.name() == r)
        .ok_or_else(|| NodeError::Invalid(format!("reduction '{r}' is not one of none, add, mul, max, min")))
}

/// `GatherElements`: the IR's `gather_elements`.
fn gather_elements(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, idx) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let a = axis(n.int("axis", 0)?, x.rank())?;
    Ok(vec![cx.op(
        Op::GatherElements(GatherElements { axis: a as i64 }),
        &[x, idx],
    )?])
}

/// `ScatterElements` (with `reduction`) and `Scatter` (opset 9–10, always
/// replacing): the IR's `scatter_elements`.
fn scatter_elements(cx: &mut Cx, n: &NodeCx, with_reduction: bool) -> R {
    let (x, idx, upd) = (cx.input(n, 0)?, cx.input(n, 1)?, cx.input(n, 2)?);
    let a = axis(n.int("axis", 0)?, x.rank())?;
    let reduction = if with_reduction {
        reduction(n)?
    } else {
        ScatterReduction::None
    };
    let op = Op::ScatterElements(ScatterElements {
        axis: a as i64,
        reduction,
    });
    Ok(vec![cx.op(op, &[x, idx, upd])?])
}

/// Flat positions of index tuples: `idx` is `[..., m]` over `dims` (the m
/// indexed extents); negative entries wrap once. Returns `idx[..., :-1]`'s
/// shape of i64 positions in row-major order over `dims`. An entry out of
/// range in one component may land on another element (the spec leaves
/// such models undefined); one past the whole block is an evaluation error.
fn linear_index(cx: &mut Cx, idx: &Val, dims: &[Dim]) -> Result<Val, NodeError> {
    let idx = cx.cast(idx, DType::I64)?;
    let extents = cx.dims_val(dims.to_vec());
    let mut strides = vec![Dim::constant(1); dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = product(&[strides[i + 1].clone(), dims[i + 1].clone()])?;
    }
    let strides = cx.dims_val(strides);
    let zero = cx.scalar(0.0, DType::I64);
    let neg = compare(cx, C::Less, &idx, &zero)?;
    let up = binary(cx, B::Add, &idx, &extents)?;
    let wrapped = select(cx, &neg, &up, &idx)?;
    let scaled = binary(cx, B::Mul, &wrapped, &strides)?;
    cx.op(
        Op::Reduce(Reduce {
            kind: ReduceKind::Sum,
            axes: vec![-1],
            keepdims: false,
        }),
        &[scaled],
    )
}

/// The index-tuple length `m` of GatherND/ScatterND indices, which must be
/// a constant between 1 and `most`.
fn tuple_len(idx: &Val, most: usize) -> Result<usize, NodeError> {
    let last = idx
        .dims()
        .last()
        .ok_or_else(|| NodeError::Invalid("indices must have rank at least 1".into()))?;
    let m = last
        .as_const()
        .ok_or_else(|| NodeError::Unsupported(format!("index tuples of symbolic length {last}")))?;
    if m < 1 || m as usize > most {
        return Err(NodeError::Invalid(format!(
            "index tuples of length {m} do not fit {most} indexable axes"
        )));
    }
    Ok(m as usize)
}

/// `GatherND`: the index tuples (after `batch_dims` shared leading axes)
/// become flat positions into the data with the batch and indexed axes
/// merged, then one `gather` on that merged axis.
fn gather_nd(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, idx) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let b = n.int("batch_dims", 0)?;
    let (r, q) = (x.rank(), idx.rank());
    if b < 0 || b as usize >= r.min(q) {
        return Err(NodeError::Invalid(format!(
            "batch_dims {b} must be below the ranks of data ({r}) and indices ({q})"
        )));
    }
    let b = b as usize;
    let m = tuple_len(&idx, r - b)?;
    if x.dims()[..b] != idx.dims()[..b] {
        return Err(NodeError::Invalid(format!(
            "batch dims of data {} and indices {} differ",
            x.ty, idx.ty
        )));
    }
    let xd = x.dims().to_vec();
    let mut lin = linear_index(cx, &idx, &xd[b..b + m])?;
    let block = product(&xd[b..b + m])?;
    let batch = product(&xd[..b])?;
    if b > 0 {
        // Each batch entry addresses its own block of the merged axis.
        let ar = iota(cx, &batch)?;
        let mut dims = xd[..b].to_vec();
        dims.extend(std::iter::repeat_n(Dim::constant(1), q - 1 - b));
        let ar = cx.reshape(&ar, dims)?;
        let blk = dim_scalar(cx, &block)?;
        let off = binary(cx, B::Mul, &ar, &blk)?;
        lin = binary(cx, B::Add, &lin, &off)?;
    }
    let mut flat = vec![product(&[batch, block])?];
    flat.extend(xd[b + m..].iter().cloned());
    let data = cx.reshape(&x, flat)?;
    Ok(vec![cx.op(Op::Gather(Gather { axis: 0 }), &[data, lin])?])
}

/// `ScatterND`: data as `[P, R]` (P the indexed block, R the rest), each
/// index tuple a row position, one `scatter_elements` of update rows on
/// axis 0 (updates apply in order, so the last duplicate wins).
fn scatter_nd(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, idx, upd) = (cx.input(n, 0)?, cx.input(n, 1)?, cx.input(n, 2)?);
    let reduction = reduction(n)?;
    let m = tuple_len(&idx, x.rank())?;
    let xd = x.dims().to_vec();
    let lead = &idx.dims()[..idx.rank() - 1];
    let mut want = lead.to_vec();
    want.extend(xd[m..].iter().cloned());
    if upd.dims() != want.as_slice() {
        return Err(NodeError::Invalid(format!(
            "updates {} do not match indices {} on data {}",
            upd.ty, idx.ty, x.ty
        )));
    }
    let (rows, rest, count) = (product(&xd[..m])?, product(&xd[m..])?, product(lead)?);
    let lin = linear_index(cx, &idx, &xd[..m])?;
    let lin = cx.reshape(&lin, vec![count.clone(), Dim::constant(1)])?;
    let lin = expand_to(cx, &lin, vec![count.clone(), rest.clone()])?;
    let data = cx.reshape(&x, vec![rows, rest.clone()])?;
    let upd = cx.reshape(&upd, vec![count, rest])?;
    let op = Op::ScatterElements(ScatterElements { axis: 0, reduction });
    let y = cx.op(op, &[data, lin, upd])?;
    Ok(vec![cx.reshape(&y, xd)?])
}

/// `TopK`: the IR's `topk`; `k` (an attribute before opset 10, an input
/// since) must be known at import time.
fn topk(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let a = axis(n.int("axis", -1)?, x.rank())?;
    let largest = n.int("largest", 1)? != 0;
    let sorted = n.int("sorted", 1)? != 0;
    let k = if n.opset < 10 {
        n.req_int("k")?
    } else {
        let k = cx.static_ints(n, 1)?.ok_or("input K is missing")?;
        match k[..] {
            [k] => k,
            _ => return Err(NodeError::Invalid(format!("K must hold one value, got {k:?}"))),
        }
    };
    let op = Op::TopK(TopK {
        axis: a as i64,
        k,
        largest,
        sorted,
    });
    cx.ops(op, &[x])
}

/// `ReverseSequence`: `gather_elements` on the time axis with index
/// `len - 1 - t` for `t < len` (the batch entry's length) and `t` beyond.
fn reverse_sequence(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, lens) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let ba = n.int("batch_axis", 1)?;
    let ta = n.int("time_axis", 0)?;
    if x.rank() < 2 || !matches!((ba, ta), (0, 1) | (1, 0)) {
        return Err(NodeError::Invalid(format!(
            "batch_axis {ba} and time_axis {ta} must be 0 and 1 on a tensor of rank ≥ 2 ({})",
            x.ty
        )));
    }
    let (ba, ta) = (ba as usize, ta as usize);
    if lens.rank() != 1 || lens.dims()[0] != x.dims()[ba] {
        return Err(NodeError::Invalid(format!(
            "sequence_lens {} must list one length per batch entry of {}",
            lens.ty, x.ty
        )));
    }
    let r = x.rank();
    let t = iota(cx, &x.dims()[ta].clone())?;
    let t = along(cx, &t, r, ta)?;
    let lens = cx.cast(&lens, DType::I64)?;
    let lens = along(cx, &lens, r, ba)?;
    let inside = compare(cx, C::Less, &t, &lens)?;
    let last = binary(cx, B::Sub, &lens, &t)?;
    let one = cx.scalar(1.0, DType::I64);
    let back = binary(cx, B::Sub, &last, &one)?;
    let idx = select(cx, &inside, &back, &t)?;
    let idx = expand_to(cx, &idx, x.dims().to_vec())?;
    Ok(vec![cx.op(
        Op::GatherElements(GatherElements { axis: ta as i64 }),
        &[x, idx],
    )?])
}

/// `TensorScatter` (KV-cache write): `scatter_elements` on the sequence
/// axis, row `s` of the update going to `write_indices[batch] + s` (modulo
/// the cache length in `circular` mode).
fn tensor_scatter(cx: &mut Cx, n: &NodeCx) -> R {
    let (past, upd) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let write = cx.opt_input(n, 2)?;
    let mode = n.string("mode", "linear")?;
    let circular = match mode.as_str() {
        "linear" => false,
        "circular" => true,
        m => {
            return Err(NodeError::Invalid(format!(
                "mode '{m}' is not linear or circular"
            )))
        }
    };
    let r = past.rank();
    let a = axis(n.int("axis", -2)?, r)?;
    if a == 0 {
        return Err("axis must not be the batch axis 0".into());
    }
    if upd.rank() != r || (0..r).any(|i| i != a && upd.dims()[i] != past.dims()[i]) {
        return Err(NodeError::Invalid(format!(
            "update {} does not match cache {} off axis {a}",
            upd.ty, past.ty
        )));
    }
    let s = iota(cx, &upd.dims()[a].clone())?;
    let mut pos = along(cx, &s, r, a)?;
    if let Some(w) = write {
        if w.rank() != 1 || w.dims()[0] != past.dims()[0] {
            return Err(NodeError::Invalid(format!(
                "write_indices {} must hold one index per batch entry of {}",
                w.ty, past.ty
            )));
        }
        let w = cx.cast(&w, DType::I64)?;
        let w = along(cx, &w, r, 0)?;
        pos = binary(cx, B::Add, &w, &pos)?;
    }
    if circular {
        let len = dim_scalar(cx, &past.dims()[a].clone())?;
        pos = binary(cx, B::Mod, &pos, &len)?;
    }
    let pos = expand_to(cx, &pos, upd.dims().to_vec())?;
    let op = Op::ScatterElements(ScatterElements {
        axis: a as i64,
        reduction: ScatterReduction::None,
    });
    Ok(vec![cx.op(op, &[past, pos, upd])?])
}

/// `MaxUnpool`: the values scattered into zeros at their flat `indices`
/// (positions in the unpooled tensor of the shape the window implies), then
/// zero-padded at the end of each spatial axis up to `output_shape`.
fn max_unpool(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, idx) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let out_shape = cx.static_ints(n, 2)?;
    let kernel = n
        .opt_ints("kernel_shape")?
        .ok_or("required attribute 'kernel_shape' is missing")?;
    let nd = kernel.len();
    let pads = n.opt_ints("pads")?.unwrap_or_else(|| vec![0; 2 * nd]);
    let strides = n.opt_ints("strides")?.unwrap_or_else(|| vec![1; nd]);
    if x.rank() != nd + 2 || pads.len() != 2 * nd || strides.len() != nd {
        return Err(NodeError::Invalid(format!(
            "kernel_shape {kernel:?}, pads {pads:?}, strides {strides:?} do not fit input {}",
            x.ty
        )));
    }
    if idx.dims() != x.dims() {
        return Err(NodeError::Invalid(format!(
            "indices {} must have the shape of X {}",
            idx.ty, x.ty
        )));
    }
    let mut dims = x.dims()[..2].to_vec();
    for i in 0..nd {
        let Some(d) = x.dims()[i + 2].as_const() else {
            return unsupported(format!("MaxUnpool on a symbolic spatial dim {}", x.dims()[i + 2]));
        };
        let e = (d - 1)
            .checked_mul(strides[i])
            .and_then(|v| v.checked_sub(pads[i]))
            .and_then(|v| v.checked_sub(pads[nd + i]))
            .and_then(|v| v.checked_add(kernel[i]))
            .ok_or_else(|| {
                NodeError::Invalid(format!("the unpooled extent of spatial axis {i} overflows"))
            })?;
        if e < 0 {
            return Err(NodeError::Invalid(format!(
                "the unpooled extent of spatial axis {i} is {e}"
            )));
        }
        dims.push(Dim::constant(e));
    }
    let total = product(&dims)?;
    let count = product(x.dims())?;
    let zeros = |cx: &mut Cx, shape: Vec<Dim>| {
        let value = if x.dtype().is_float() {
            Scalar::Float(0.0)
        } else {
            Scalar::Int(0)
        };
        cx.op(
            Op::Full(Full {
                shape,
                value,
                dtype: x.dtype(),
            }),
            &[],
        )
    };
    let z = zeros(cx, vec![total])?;
    let flat_i = cx.reshape(&idx, vec![count.clone()])?;
    let flat_x = cx.reshape(&x, vec![count])?;
    let op = Op::ScatterElements(ScatterElements {
        axis: 0,
        reduction: ScatterReduction::None,
    });
    let y = cx.op(op, &[z, flat_i, flat_x])?;
    let mut y = cx.reshape(&y, dims.clone())?;
    if let Some(want) = out_shape {
        if want.len() != dims.len() {
            return Err(NodeError::Invalid(format!(
                "output_shape {want:?} has the wrong rank for {}",
                x.ty
            )));
        }
        for (i, &w) in want.iter().enumerate() {
            let have = &y.dims()[i].clone();
            let pad = match have.as_const() {
                Some(h) if w >= h && (i >= 2 || w == h) => w - h,
                _ if have.is(w) => 0,
                _ => {
                    return Err(NodeError::Invalid(format!(
                        "output_shape {want:?} is smaller than the unpooled shape {dims:?}"
                    )))
                }
            };
            if pad > 0 {
                let mut zd = y.dims().to_vec();
                zd[i] = Dim::constant(pad);
                let z = zeros(cx, zd)?;
                y = cx.op(Op::Concat(Concat { axis: i as i64 }), &[y, z])?;
            }
        }
    }
    Ok(vec![y])
}
