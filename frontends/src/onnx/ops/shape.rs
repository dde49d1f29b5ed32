//! Shape and data-movement ONNX ops. Shapes, axes and slice bounds must be
//! known at import time (constants, or `Shape` arithmetic on symbolic
//! dims); the IR keeps them as attributes.

use optc_ir::ops::{
    Arange, CompareKind as C, Concat, Expand, Full, Gather, Scalar, Slice, Split, Transpose, Triangular,
};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{unsupported, Cx, Known, NodeCx, NodeError, Val};
use super::super::tensor::to_tensor;
use super::{axis, checked_product, compare, dim_axis, dtype_attr, select, Handler, IMPORT_TABLE_LIMIT, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("Constant", constant),
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Transpose", transpose),
    ("Squeeze", squeeze),
    ("Unsqueeze", unsqueeze),
    ("Expand", expand),
    ("Concat", concat),
    ("Split", split),
    ("Slice", slice),
    ("Shape", shape),
    ("Size", size),
    ("ConstantOfShape", constant_of_shape),
    ("Range", range),
    ("Tile", tile),
    ("Gather", gather),
    ("Trilu", trilu),
    ("DepthToSpace", depth_to_space),
    ("SpaceToDepth", space_to_depth),
    ("EyeLike", eye_like),
    ("OneHot", one_hot),
    ("Pad", pad),
    ("Compress", compress),
];

fn constant(cx: &mut Cx, n: &NodeCx) -> R {
    let mut found = Vec::new();
    if let Some(t) = n.opt_tensor("value")? {
        found.push(to_tensor(t, None).map_err(NodeError::Invalid)?);
    }
    if let Some(f) = n.opt_float("value_float")? {
        found.push(Tensor::from_f64(DType::F32, &[], &[f]));
    }
    if let Some(f) = n.opt_floats("value_floats")? {
        found.push(Tensor::from_f32(DType::F32, &[f.len()], &f));
    }
    if let Some(i) = n.opt_int("value_int")? {
        found.push(Tensor::from_i64(DType::I64, &[], &[i]));
    }
    if let Some(i) = n.opt_ints("value_ints")? {
        found.push(Tensor::from_i64(DType::I64, &[i.len()], &i));
    }
    for s in ["value_string", "value_strings"] {
        if n.has(s) {
            return unsupported(format!("string constants ({s}) are not supported"));
        }
    }
    if n.has("sparse_value") {
        return unsupported("sparse constants are not supported");
    }
    if found.len() != 1 {
        return Err(format!("needs exactly one value attribute, found {}", found.len()).into());
    }
    Ok(vec![cx.konst(found.remove(0))])
}

/// Product of dims (symbolic allowed); an expression too large is an error.
pub(crate) fn product(dims: &[Dim]) -> Result<Dim, NodeError> {
    dims.iter().try_fold(Dim::constant(1), |a, d| {
        a.checked_mul(d)
            .ok_or_else(|| NodeError::Invalid("dim product too large".into()))
    })
}

/// Resolves ONNX reshape targets: `0` copies the input dim (unless
/// `allowzero`), `-1` takes what is left.
pub(crate) fn resolve_shape(x: &[Dim], target: &[Dim], allowzero: bool) -> Result<Vec<Dim>, NodeError> {
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, d) in target.iter().enumerate() {
        match d.as_const() {
            Some(0) if !allowzero => out.push(x.get(i).cloned().ok_or_else(|| {
                NodeError::Invalid(format!("shape entry {i} is 0 but the input has rank {}", x.len()))
            })?),
            Some(-1) => {
                if infer_at.replace(i).is_some() {
                    return Err("shape has more than one -1".into());
                }
                out.push(Dim::constant(1));
            }
            Some(v) if v < -1 => return Err(format!("shape entry {v} is invalid").into()),
            _ => out.push(d.clone()),
        }
    }
    if let Some(i) = infer_at {
        let total = product(x)?;
        let known = product(&out)?;
        out[i] = total.div_exact(&known).ok_or_else(|| {
            NodeError::Invalid(format!("cannot reshape {} elements into {target:?}", total))
        })?;
    }
    Ok(out)
}

fn reshape(cx: &mut Cx, n: &NodeCx) -> R {
    let allowzero = n.int("allowzero", 0)? != 0;
    let x = cx.input(n, 0)?;
    let target = if n.opset < 5 {
        n.opt_ints("shape")?
            .ok_or("shape attribute missing")?
            .into_iter()
            .map(Dim::constant)
            .collect()
    } else {
        cx.static_dims(n, 1)?.ok_or("shape input missing")?
    };
    let dims = resolve_shape(x.dims(), &target, allowzero)?;
    Ok(vec![cx.reshape(&x, dims)?])
}

fn flatten(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let a = n.int("axis", 1)?;
    let r = x.rank() as i64;
    let a = if a < 0 { a + r } else { a };
    if !(0..=r).contains(&a) {
        return Err(format!("axis {a} out of range for rank {r}").into());
    }
    let (lo, hi) = x.dims().split_at(a as usize);
    let dims = vec![product(lo)?, product(hi)?];
    Ok(vec![cx.reshape(&x, dims)?])
}

pub(crate) fn transpose_to(cx: &mut Cx, x: &Val, perm: Vec<i64>) -> Result<Val, NodeError> {
    if perm.iter().enumerate().all(|(i, &p)| p == i as i64) {
        return Ok(x.clone());
    }
    cx.op(Op::Transpose(Transpose { perm }), std::slice::from_ref(x))
}

fn transpose(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let perm = n
        .opt_ints("perm")?
        .unwrap_or_else(|| (0..x.rank() as i64).rev().collect());
    Ok(vec![transpose_to(cx, &x, perm)?])
}

/// Axes from the attribute (old opsets) or input 1.
fn axes_arg(cx: &Cx, n: &NodeCx, input_since: i64) -> Result<Option<Vec<i64>>, NodeError> {
    if n.opset < input_since {
        n.opt_ints("axes")
    } else {
        cx.static_ints(n, 1)
    }
}

fn squeeze(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let r = x.rank();
    let drop: Vec<usize> = match axes_arg(cx, n, 13)? {
        Some(a) => a.iter().map(|&a| dim_axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).filter(|&i| x.dims()[i].is(1)).collect(),
    };
    for &a in &drop {
        if !x.dims()[a].is(1) {
            return Err(format!("cannot squeeze axis {a} of extent {}", x.dims()[a]).into());
        }
    }
    let dims: Vec<Dim> = (0..r)
        .filter(|i| !drop.contains(i))
        .map(|i| x.dims()[i].clone())
        .collect();
    Ok(vec![cx.reshape(&x, dims)?])
}

fn unsqueeze(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let axes = axes_arg(cx, n, 13)?.ok_or("axes missing")?;
    let out_rank = x.rank() + axes.len();
    let mut ins: Vec<usize> = axes
        .iter()
        .map(|&a| axis(a, out_rank))
        .collect::<Result<_, _>>()?;
    ins.sort_unstable();
    if ins.windows(2).any(|w| w[0] == w[1]) {
        return Err("axes repeat".into());
    }
    let mut src = x.dims().iter();
    let dims: Vec<Dim> = (0..out_rank)
        .map(|i| {
            if ins.contains(&i) {
                Dim::constant(1)
            } else {
                src.next().cloned().unwrap_or(Dim::constant(1))
            }
        })
        .collect();
    Ok(vec![cx.reshape(&x, dims)?])
}

/// numpy broadcast of two shapes (for Expand's bidirectional rule).
fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, NodeError> {
    let r = a.len().max(b.len());
    let get = |s: &[Dim], i: usize| -> Dim {
        let off = r - s.len();
        if i < off {
            Dim::constant(1)
        } else {
            s[i - off].clone()
        }
    };
    (0..r)
        .map(|i| {
            let (x, y) = (get(a, i), get(b, i));
            if x == y || y.is(1) {
                Ok(x)
            } else if x.is(1) {
                Ok(y)
            } else {
                Err(NodeError::Invalid(format!("cannot broadcast {a:?} with {b:?}")))
            }
        })
        .collect()
}

/// Broadcasts `x` to `dims` (same or higher rank).
pub(crate) fn expand_to(cx: &mut Cx, x: &Val, dims: Vec<Dim>) -> Result<Val, NodeError> {
    if x.dims() == dims.as_slice() {
        return Ok(x.clone());
    }
    cx.op(Op::Expand(Expand { shape: dims }), std::slice::from_ref(x))
}

fn expand(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let shape = cx.static_dims(n, 1)?.ok_or("shape missing")?;
    let out = broadcast(x.dims(), &shape)?;
    Ok(vec![expand_to(cx, &x, out)?])
}

fn concat(cx: &mut Cx, n: &NodeCx) -> R {
    let xs = cx.inputs_from(n, 0)?;
    let first = xs.first().ok_or("needs at least one input")?.clone();
    // An input with no elements may have any rank (as onnxruntime reads
    // the spec); the others must share one rank.
    let empty = |v: &Val| v.dims().iter().any(|d| d.is(0));
    let reference = xs.iter().find(|v| !empty(v)).unwrap_or(&first).clone();
    let a = dim_axis(n.req_int("axis")?, reference.rank())?;
    if let Some(v) = xs.iter().find(|v| !empty(v) && v.rank() != reference.rank()) {
        return Err(format!(
            "inputs of ranks {} and {} cannot be concatenated",
            reference.rank(),
            v.rank()
        )
        .into());
    }
    // Shape vectors stay symbolic through concat.
    if xs
        .iter()
        .all(|v| matches!(v.known, Some(Known::Dims(_))) || v.tensor().is_some())
        && first.rank() == 1
    {
        let mut dims = Vec::new();
        let mut symbolic = false;
        for v in &xs {
            match &v.known {
                Some(Known::Dims(d)) => {
                    symbolic = true;
                    dims.extend(d.iter().cloned())
                }
                _ => match v.tensor() {
                    Some(t) if t.dtype() == DType::I64 => {
                        dims.extend(t.to_i64_vec().into_iter().map(Dim::constant))
                    }
                    _ => {
                        symbolic = false;
                        dims.clear();
                        break;
                    }
                },
            }
        }
        if symbolic {
            return Ok(vec![cx.dims_val(dims)]);
        }
    }
    // Operands of no extent on the axis, or of another rank (so empty), add
    // nothing (and the IR concat needs none).
    let rank = reference.rank();
    let xs: Vec<Val> = xs
        .into_iter()
        .filter(|v| v.rank() == rank && !v.dims()[a].is(0))
        .collect();
    if xs.len() == 1 {
        return Ok(xs);
    }
    if xs.is_empty() {
        return Ok(vec![first]);
    }
    Ok(vec![cx.op(Op::Concat(Concat { axis: a as i64 }), &xs)?])
}

fn split(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let a = dim_axis(n.int("axis", 0)?, x.rank())?;
    let given = if n.opset < 13 {
        n.opt_ints("split")?
    } else {
        cx.static_ints(n, 1)?
    };
    let num_outputs = n.opt_int("num_outputs")?;
    let outs = n.node.output.len();
    let extent = x.dims()[a].clone();
    let sizes: Vec<Dim> = match given {
        Some(s) => s.into_iter().map(Dim::constant).collect(),
        None => {
            let parts = num_outputs.map_or(outs as i64, |k| k);
            if parts <= 0 {
                return Err("split into zero parts".into());
            }
            if parts != outs as i64 {
                return Err(format!("num_outputs is {parts} but the node has {outs} outputs").into());
            }
            match extent.as_const() {
                Some(e) => {
                    // Equal parts; the last is smaller when it does not divide
                    // (opset 18 num_outputs rule).
                    let chunk = (e + parts - 1) / parts;
                    let mut v = Vec::new();
                    let mut left = e;
                    for _ in 0..parts {
                        let c = chunk.min(left);
                        v.push(Dim::constant(c));
                        left -= c;
                    }
                    v
                }
                None => {
                    let part = extent.div_exact(&Dim::constant(parts)).ok_or_else(|| {
                        NodeError::Invalid(format!("cannot split {extent} into {parts} equal parts"))
                    })?;
                    vec![part; parts as usize]
                }
            }
        }
    };
    if sizes.len() == 1 {
        return Ok(vec![x]);
    }
    cx.ops(
        Op::Split(Split {
            axis: a as i64,
            sizes,
        }),
        &[x],
    )
}

/// One axis of an ONNX slice as an IR slice (python bounds semantics,
/// which ONNX's clamping rules equal).
pub(crate) fn slice_axis(
    cx: &mut Cx,
    x: &Val,
    a: usize,
    start: i64,
    end: i64,
    step: i64,
) -> Result<Val, NodeError> {
    if step == 0 {
        return Err("slice step 0".into());
    }
    const BIG: i64 = 1 << 40;
    let end = if (step > 0 && end >= BIG) || (step < 0 && end <= -BIG) {
        None
    } else {
        Some(end)
    };
    let start = start.clamp(-BIG, BIG);
    let s = Slice {
        axis: a as i64,
        start,
        end,
        step,
    };
    if let Some(n) = x.dims()[a].as_const() {
        let (first, count) = s.indices(n.max(0) as usize);
        if step == 1 && first == 0 && count as i64 == n {
            return Ok(x.clone());
        }
    }
    if let Some(Known::Dims(d)) = &x.known {
        let (first, count) = s.indices(d.len());
        let picked: Vec<Dim> = (0..count)
            .map(|k| d[(first + k as i64 * step) as usize].clone())
            .collect();
        return Ok(cx.dims_val(picked));
    }
    cx.op(Op::Slice(s), std::slice::from_ref(x))
}

fn slice(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let r = x.rank();
    let (starts, ends, axes, steps) = if n.opset < 10 {
        (
            n.opt_ints("starts")?.ok_or("starts missing")?,
            n.opt_ints("ends")?.ok_or("ends missing")?,
            n.opt_ints("axes")?,
            None,
        )
    } else {
        (
            cx.static_ints(n, 1)?.ok_or("starts missing")?,
            cx.static_ints(n, 2)?.ok_or("ends missing")?,
            cx.static_ints(n, 3)?,
            cx.static_ints(n, 4)?,
        )
    };
    let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let mut y = x;
    for i in 0..starts.len() {
        let a = dim_axis(axes[i], r)?;
        y = slice_axis(cx, &y, a, starts[i], ends[i], steps[i])?;
    }
    Ok(vec![y])
}

fn shape(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let r = x.rank() as i64;
    let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clampi(n.int("start", 0)?);
    let end = clampi(n.opt_int("end")?.unwrap_or(r));
    let dims = x.dims()[start..end.max(start)].to_vec();
    Ok(vec![cx.dims_val(dims)])
}

fn size(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let p = product(x.dims())?;
    Ok(vec![match p.as_const() {
        Some(c) => cx.konst(Tensor::from_i64(DType::I64, &[], &[c])),
        None => {
            let v = cx.dims_val(vec![p]);
            cx.reshape(&v, vec![])?
        }
    }])
}

fn constant_of_shape(cx: &mut Cx, n: &NodeCx) -> R {
    let dims = cx.static_dims(n, 0)?.ok_or("shape input missing")?;
    let value = match n.opt_tensor("value")? {
        Some(t) => to_tensor(t, None).map_err(NodeError::Invalid)?,
        None => Tensor::from_f32(DType::F32, &[1], &[0.0]),
    };
    if value.numel() != 1 {
        return Err("value must hold one element".into());
    }
    let dtype = value.dtype();
    let scalar = if dtype.is_float() {
        Scalar::Float(value.to_f64_vec()[0])
    } else {
        Scalar::Int(value.to_i64_vec()[0])
    };
    Ok(vec![cx.op(
        Op::Full(Full {
            shape: dims,
            value: scalar,
            dtype,
        }),
        &[],
    )?])
}

fn range(cx: &mut Cx, n: &NodeCx) -> R {
    let start = cx.input(n, 0)?;
    let dtype = start.dtype();
    // Symbolic bounds (from shapes) with a unit step: an IR arange.
    let (sv, lv) = (start.clone(), cx.input(n, 1)?);
    if matches!(sv.known, Some(Known::Dims(_))) || matches!(lv.known, Some(Known::Dims(_))) {
        let scalar_dim = |v: &Val| -> Option<Dim> {
            match &v.known {
                Some(Known::Dims(d)) if d.len() == 1 => Some(d[0].clone()),
                _ => v
                    .tensor()
                    .filter(|t| t.numel() == 1)
                    .map(|t| Dim::constant(t.to_i64_vec()[0])),
            }
        };
        let step = cx.static_ints(n, 2)?.and_then(|v| v.first().copied());
        if let (Some(s), Some(l), Some(step)) = (scalar_dim(&sv), scalar_dim(&lv), step) {
            if step == 1 && dtype.is_int() {
                let ar = Op::Arange(Arange {
                    start: s,
                    end: l,
                    step,
                    dtype,
                });
                return Ok(vec![cx.op(ar, &[])?]);
            }
        }
        return unsupported("Range with symbolic bounds needs an integer type and step 1");
    }
    let get = |cx: &Cx, i| -> Result<f64, NodeError> {
        let v = cx.static_f64s(n, i)?.ok_or("input missing")?;
        v.first()
            .copied()
            .ok_or_else(|| NodeError::Invalid("empty scalar".into()))
    };
    let (s, l, d) = (get(cx, 0)?, get(cx, 1)?, get(cx, 2)?);
    if d == 0.0 {
        return Err("delta is 0".into());
    }
    let count = ((l - s) / d).ceil().max(0.0);
    if count > (1u64 << 31) as f64 {
        return Err(format!("range of {count} elements is too large").into());
    }
    let count = count as usize;
    let t = if dtype.is_float() {
        // Each element as the reference computes it: start + i·delta in the
        // input type.
        let v: Vec<f64> = (0..count).map(|i| s + i as f64 * d).collect();
        Tensor::from_f64(dtype, &[count], &v)
    } else {
        let (s, d) = (s as i64, d as i64);
        let v: Vec<i64> = (0..count as i64).map(|i| s + i * d).collect();
        Tensor::from_i64(dtype, &[count], &v)
    };
    Ok(vec![cx.konst(t)])
}

fn tile(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let reps = cx.static_ints(n, 1)?.ok_or("repeats missing")?;
    if reps.len() != x.rank() {
        return Err(format!("repeats has {} entries for rank {}", reps.len(), x.rank()).into());
    }
    if reps.iter().any(|&r| r < 0) {
        return Err("negative repeat".into());
    }
    // x[d0, d1, ..] → [1, d0, 1, d1, ..] → expand to [r0, d0, r1, d1, ..] → merge.
    let mut inter = Vec::new();
    let mut big = Vec::new();
    let mut out = Vec::new();
    for (d, &r) in x.dims().iter().zip(&reps) {
        inter.extend([Dim::constant(1), d.clone()]);
        big.extend([Dim::constant(r), d.clone()]);
        out.push(&Dim::constant(r) * d);
    }
    let y = cx.reshape(&x, inter)?;
    let y = expand_to(cx, &y, big)?;
    Ok(vec![cx.reshape(&y, out)?])
}

fn gather(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, idx) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let a = axis(n.int("axis", 0)?, x.rank())?;
    // Picking from a shape vector keeps it symbolic.
    if let (Some(Known::Dims(d)), Some(t)) = (&x.known, idx.tensor()) {
        let len = d.len() as i64;
        let picked: Result<Vec<Dim>, NodeError> = t
            .to_i64_vec()
            .into_iter()
            .map(|i| {
                let j = if i < 0 { i + len } else { i };
                d.get(j as usize)
                    .cloned()
                    .ok_or_else(|| NodeError::Invalid(format!("index {i} out of range for {len}")))
            })
            .collect();
        let picked = picked?;
        let v = cx.dims_val(picked);
        return Ok(vec![if t.rank() == 0 { cx.reshape(&v, vec![])? } else { v }]);
    }
    Ok(vec![cx.op(Op::Gather(Gather { axis: a as i64 }), &[x, idx])?])
}

fn trilu(cx: &mut Cx, n: &NodeCx) -> R {
    let upper = n.int("upper", 1)? != 0;
    let x = cx.input(n, 0)?;
    let k = cx
        .static_ints(n, 1)?
        .map_or(0, |v| v.first().copied().unwrap_or(0));
    Ok(vec![cx.op(Op::Triangular(Triangular { upper, k }), &[x])?])
}

/// DepthToSpace's and SpaceToDepth's block size, in 1..=2^15 (its square
/// divides the channels).
fn blocksize(n: &NodeCx) -> Result<i64, NodeError> {
    let b = n.req_int("blocksize")?;
    if !(1..=1 << 15).contains(&b) {
        return Err(NodeError::Invalid(format!("blocksize {b} is not in 1..=32768")));
    }
    Ok(b)
}

fn depth_to_space(cx: &mut Cx, n: &NodeCx) -> R {
    let b = blocksize(n)?;
    let mode = n.string("mode", "DCR")?;
    let x = cx.input(n, 0)?;
    let [bn, c, h, w] = x.dims() else {
        return Err("input must be 4-D".into());
    };
    let (bd, c2) = (
        Dim::constant(b),
        c.div_exact(&Dim::constant(b * b))
            .ok_or("channels not divisible by blocksize²")?,
    );
    let (inter, perm) = match mode.as_str() {
        "DCR" => (
            vec![
                bn.clone(),
                bd.clone(),
                bd.clone(),
                c2.clone(),
                h.clone(),
                w.clone(),
            ],
            vec![0, 3, 4, 1, 5, 2],
        ),
        "CRD" => (
            vec![
                bn.clone(),
                c2.clone(),
                bd.clone(),
                bd.clone(),
                h.clone(),
                w.clone(),
            ],
            vec![0, 1, 4, 2, 5, 3],
        ),
        m => return Err(format!("mode must be DCR or CRD, got {m:?}").into()),
    };
    let out = vec![bn.clone(), c2, h * &bd, w * &bd];
    let y = cx.reshape(&x, inter)?;
    let y = transpose_to(cx, &y, perm)?;
    Ok(vec![cx.reshape(&y, out)?])
}

fn space_to_depth(cx: &mut Cx, n: &NodeCx) -> R {
    let b = blocksize(n)?;
    let x = cx.input(n, 0)?;
    let [bn, c, h, w] = x.dims() else {
        return Err("input must be 4-D".into());
    };
    let bd = Dim::constant(b);
    let (h2, w2) = (
        h.div_exact(&bd).ok_or("height not divisible by blocksize")?,
        w.div_exact(&bd).ok_or("width not divisible by blocksize")?,
    );
    let inter = vec![
        bn.clone(),
        c.clone(),
        h2.clone(),
        bd.clone(),
        w2.clone(),
        bd.clone(),
    ];
    let out = vec![bn.clone(), &(c * &bd) * &bd, h2, w2];
    // DCR puts the block offsets before the channel in the output depth,
    // CRD after it (the mode attribute, opset 28).
    let perm = match n.string("mode", "DCR")?.as_str() {
        "DCR" => vec![0, 3, 5, 1, 2, 4],
        "CRD" => vec![0, 1, 3, 5, 2, 4],
        m => return Err(format!("mode must be DCR or CRD, got {m:?}").into()),
    };
    let y = cx.reshape(&x, inter)?;
    let y = transpose_to(cx, &y, perm)?;
    Ok(vec![cx.reshape(&y, out)?])
}

fn eye_like(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let k = n.int("k", 0)?;
    let dtype = match n.opt_int("dtype")? {
        Some(c) => dtype_attr(c)?,
        None => x.dtype(),
    };
    let [r, c] = x.dims() else {
        return Err("input must be 2-D".into());
    };
    let (Some(r), Some(c)) = (r.as_const(), c.as_const()) else {
        return unsupported("EyeLike on symbolic shapes is not supported");
    };
    let n = checked_product(&[r, c], IMPORT_TABLE_LIMIT, "the EyeLike table")?;
    let v: Vec<i64> = (0..n).map(|i| i64::from(i % c - i / c == k)).collect();
    Ok(vec![cx.konst(Tensor::from_i64(
        dtype,
        &[r as usize, c as usize],
        &v,
    ))])
}

fn one_hot(cx: &mut Cx, n: &NodeCx) -> R {
    let idx = cx.input(n, 0)?;
    let depth = cx.static_f64s(n, 1)?.ok_or("depth missing")?;
    let depth = *depth.first().ok_or("depth is empty")? as i64;
    let values = cx.input(n, 2)?;
    let out_rank = idx.rank() + 1;
    let a = axis(n.int("axis", -1)?, out_rank)?;
    // Negative indices count from the end: idx + depth where idx < 0.
    let idx = cx.cast(&idx, DType::I64)?;
    let zero = cx.scalar(0.0, DType::I64);
    let dep = cx.scalar(depth as f64, DType::I64);
    let neg = compare(cx, C::Less, &idx, &zero)?;
    let wrapped = super::binary(cx, optc_ir::ops::BinaryKind::Add, &idx, &dep)?;
    let idx = select(cx, &neg, &wrapped, &idx)?;
    // Compare against arange(depth) laid along the new axis.
    let mut idx_dims = idx.dims().to_vec();
    idx_dims.insert(a, Dim::constant(1));
    let idx = cx.reshape(&idx, idx_dims)?;
    let ar = cx.op(
        Op::Arange(Arange {
            start: Dim::constant(0),
            end: Dim::constant(depth),
            step: 1,
            dtype: DType::I64,
        }),
        &[],
    )?;
    let mut ar_dims = vec![Dim::constant(1); out_rank];
    ar_dims[a] = Dim::constant(depth);
    let ar = cx.reshape(&ar, ar_dims)?;
    let hot = compare(cx, C::Equal, &idx, &ar)?;
    let off = slice_axis(cx, &values, 0, 0, 1, 1)?;
    let on = slice_axis(cx, &values, 0, 1, 2, 1)?;
    let off = cx.reshape(&off, vec![])?;
    let on = cx.reshape(&on, vec![])?;
    Ok(vec![select(cx, &hot, &on, &off)?])
}

/// `Pad` one axis at a time: negative pads slice, positive ones concat
/// constant fills, edge copies, reflections or wrap-arounds.
fn pad(cx: &mut Cx, n: &NodeCx) -> R {
    let mode = n.string("mode", "constant")?;
    let x = cx.input(n, 0)?;
    let r = x.rank();
    let (pads, axes) = if n.opset < 11 {
        (n.opt_ints("pads")?.ok_or("pads missing")?, None)
    } else {
        (
            cx.static_ints(n, 1)?.ok_or("pads missing")?,
            cx.static_ints(n, 3)?,
        )
    };
    let axes: Vec<usize> = match axes {
        Some(a) => a.iter().map(|&a| dim_axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("pads has {} entries for {} axes", pads.len(), axes.len()).into());
    }
    let value = if n.opset < 11 {
        let v = n.float("value", 0.0)?;
        Some(cx.scalar(v, x.dtype()))
    } else {
        cx.opt_input(n, 2)?
    };
    let mut y = x;
    for (k, &a) in axes.iter().enumerate() {
        let (before, after) = (pads[k], pads[k + axes.len()]);
        let extent = y.dims()[a]
            .as_const()
            .ok_or("Pad over a symbolic axis is not supported")?;
        // Negative pads remove elements.
        let (cut_lo, cut_hi) = ((-before).max(0), (-after).max(0));
        if cut_lo > 0 || cut_hi > 0 {
            y = slice_axis(cx, &y, a, cut_lo, extent - cut_hi, 1)?;
        }
        let (before, after) = (before.max(0), after.max(0));
        if before == 0 && after == 0 {
            continue;
        }
        let n_ = y.dims()[a].as_const().unwrap_or(0);
        let piece = |cx: &mut Cx, y: &Val, count: i64, front: bool| -> Result<Val, NodeError> {
            let mut dims = y.dims().to_vec();
            dims[a] = Dim::constant(count);
            match mode.as_str() {
                "constant" => {
                    let v = match &value {
                        Some(v) => cx.reshape(v, vec![])?,
                        None => cx.scalar(0.0, y.dtype()),
                    };
                    let v = cx.cast(&v, y.dtype())?;
                    expand_to(cx, &v, dims)
                }
                "edge" => {
                    let e = if front {
                        slice_axis(cx, y, a, 0, 1, 1)?
                    } else {
                        slice_axis(cx, y, a, n_ - 1, n_, 1)?
                    };
                    expand_to(cx, &e, dims)
                }
                "reflect" => {
                    if count >= n_ {
                        return unsupported("reflect padding wider than the axis is not supported");
                    }
                    if front {
                        slice_axis(cx, y, a, count, 0, -1)
                    } else {
                        slice_axis(cx, y, a, n_ - 2, n_ - 2 - count, -1)
                    }
                }
                "wrap" => {
                    if count > n_ {
                        return unsupported("wrap padding wider than the axis is not supported");
                    }
                    if front {
                        slice_axis(cx, y, a, n_ - count, n_, 1)
                    } else {
                        slice_axis(cx, y, a, 0, count, 1)
                    }
                }
                m => Err(format!("mode must be constant, reflect, edge or wrap, got {m:?}").into()),
            }
        };
        let mut parts = Vec::new();
        if before > 0 {
            parts.push(piece(cx, &y, before, true)?);
        }
        parts.push(y.clone());
        if after > 0 {
            parts.push(piece(cx, &y, after, false)?);
        }
        y = cx.op(Op::Concat(Concat { axis: a as i64 }), &parts)?;
    }
    Ok(vec![y])
}

/// `Compress` with a condition known at import time: a gather of the kept
/// indices (the input flattened when no axis is given).
fn compress(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let cond = cx.input(n, 1)?;
    let keep = match cond.tensor() {
        Some(t) => t.to_bool_vec(),
        None => return Err(NodeError::NeedsStatic(n.node.input[1].clone())),
    };
    let (x, a) = match n.opt_int("axis")? {
        Some(a) => {
            let a = dim_axis(a, x.rank())?;
            (x, a)
        }
        None => {
            let total = x.dims().iter().fold(Dim::constant(1), |acc, d| &acc * d);
            (cx.reshape(&x, vec![total])?, 0)
        }
    };
    let extent = x.dims()[a]
        .as_const()
        .ok_or("Compress over a symbolic axis is not supported")?;
    let idx: Vec<i64> = (0..extent.min(keep.len() as i64))
        .filter(|&i| keep[i as usize])
        .collect();
    let iv = cx.konst(Tensor::from_i64(DType::I64, &[idx.len()], &idx));
    Ok(vec![cx.op(Op::Gather(Gather { axis: a as i64 }), &[x, iv])?])
}
