//! Running one step: which host kernel an op gets, and the glue from
//! buffers to kernel arguments. Ops without a kernel run their reference
//! `eval` on tensors made from the buffers.

use optc_ir::dim::normalize_axis;
use optc_ir::ops::{BinaryKind, EvalCx, GeluApprox, Op, UnaryKind};
use optc_ir::{Bindings, DType, Tensor, TensorType};
use optc_kernels::cpu::{attention, elementwise as ew, gemm, layout, norm, rope};

use super::buffers::{kind_of, round_to, Buf, Kind, Weight};
use super::plan::{Loc, Step};

/// The host kernel chosen for an op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kernel {
    Linear,
    MatMul,
    RmsNorm,
    AddRmsNorm,
    LayerNorm,
    Rope,
    SwiGlu,
    GeluTanh,
    Unary,
    Binary,
    Softmax,
    Cast,
    Transpose,
    Concat,
    Split,
    IndexSelect,
    Embedding,
    PagedAttention,
}

/// The kernel for `op` on operands of these types, if there is one.
pub(crate) fn kernel_for(op: &Op, args: &[&TensorType]) -> Option<Kernel> {
    let float = |i: usize| args.get(i).is_some_and(|t| t.dtype.is_float());
    let all = |k: Kind| args.iter().all(|t| kind_of(t.dtype) == k);
    let last =
        |axis: i64| normalize_axis(axis, args[0].rank()).ok() == Some(args[0].rank().saturating_sub(1));
    let k = match op {
        Op::Linear(_) if all(Kind::F) => Kernel::Linear,
        Op::MatMul(_) if all(Kind::F) && args[0].rank() >= 2 && args[1].rank() >= 2 => {
            let (a, b) = (args[0].shape.dims(), args[1].shape.dims());
            let batched = a.len() == b.len() && a[..a.len() - 2] == b[..b.len() - 2];
            if b.len() == 2 || batched {
                Kernel::MatMul
            } else {
                return None;
            }
        }
        Op::RmsNorm(o) if all(Kind::F) && last(o.axis) => Kernel::RmsNorm,
        Op::AddRmsNorm(o) if all(Kind::F) && last(o.axis) => Kernel::AddRmsNorm,
        Op::LayerNorm(o) if all(Kind::F) && last(o.axis) => Kernel::LayerNorm,
        Op::Rope(_) if all(Kind::F) => Kernel::Rope,
        Op::SwiGlu(_) if all(Kind::F) => Kernel::SwiGlu,
        Op::Gelu(g) if float(0) && g.approximate == GeluApprox::Tanh => Kernel::GeluTanh,
        Op::Unary(k) if float(0) && *k != UnaryKind::Erf => Kernel::Unary,
        Op::Binary(b) if all(Kind::F) && !b.is_bitwise() => Kernel::Binary,
        Op::Softmax(s) if float(0) && last(s.axis) => Kernel::Softmax,
        Op::Cast(c) if c.to.is_float() && kind_of(args[0].dtype) != Kind::B => Kernel::Cast,
        Op::Transpose(_) if !all(Kind::B) => Kernel::Transpose,
        Op::Concat(_) if all(Kind::F) || all(Kind::I) => Kernel::Concat,
        Op::Split(_) if !all(Kind::B) => Kernel::Split,
        Op::IndexSelect(_) if kind_of(args[0].dtype) != Kind::B && kind_of(args[1].dtype) == Kind::I => {
            Kernel::IndexSelect
        }
        Op::Embedding(_) if float(0) && kind_of(args[1].dtype) == Kind::I => Kernel::Embedding,
        Op::PagedAttention(_) if float(0) => Kernel::PagedAttention,
        _ => return None,
    };
    Some(k)
}

/// The kernel's name for summaries (`None`: reference semantics).
pub(crate) fn kernel_name(op: &Op, args: &[&TensorType]) -> Option<&'static str> {
    kernel_for(op, args).map(|k| match k {
        Kernel::Linear => "linear",
        Kernel::MatMul => "matmul",
        Kernel::RmsNorm => "rms_norm",
        Kernel::AddRmsNorm => "add_rms_norm",
        Kernel::LayerNorm => "layer_norm",
        Kernel::Rope => "rope",
        Kernel::SwiGlu => "swiglu",
        Kernel::GeluTanh => "gelu_tanh",
        Kernel::Unary => "unary",
        Kernel::Binary => "binary",
        Kernel::Softmax => "softmax",
        Kernel::Cast => "cast",
        Kernel::Transpose => "transpose",
        Kernel::Concat => "concat",
        Kernel::Split => "split",
        Kernel::IndexSelect => "index_select",
        Kernel::Embedding => "embedding",
        Kernel::PagedAttention => "paged_attention",
    })
}

/// What a step can see.
pub(crate) struct Ctx<'a> {
    pub types: &'a [TensorType],
    pub dims: &'a [Vec<usize>],
    pub locs: &'a [Loc],
    pub weights: &'a [Weight],
    pub slots: &'a mut Vec<Buf>,
    pub state: &'a mut Vec<Buf>,
    pub bindings: &'a Bindings,
}

/// An operand.
enum Arg<'a> {
    F(&'a [f32]),
    I(&'a [i64]),
    B(&'a [bool]),
    W(&'a Weight),
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

fn slice_of(b: &Buf, n: usize) -> Arg<'_> {
    match b {
        Buf::F(v) => Arg::F(&v[..n.min(v.len())]),
        Buf::I(v) => Arg::I(&v[..n.min(v.len())]),
        Buf::B(v) => Arg::B(&v[..n.min(v.len())]),
    }
}

impl Ctx<'_> {
    fn arg(&self, v: usize) -> Arg<'_> {
        let n = numel(&self.dims[v]);
        match self.locs[v] {
            Loc::Slot(s) => slice_of(&self.slots[s], n),
            Loc::State(s) => slice_of(&self.state[s], n),
            Loc::Weight(w) => Arg::W(&self.weights[w]),
        }
    }

    fn f32s(&self, v: usize) -> Result<&[f32], String> {
        match self.arg(v) {
            Arg::F(x) => Ok(x),
            Arg::W(w) => match &w.buf {
                Some(Buf::F(x)) => Ok(x),
                _ => Err("a half-precision weight has no f32 copy (a lowering bug)".into()),
            },
            _ => Err("expected a float operand".into()),
        }
    }

    fn i64s(&self, v: usize) -> Result<&[i64], String> {
        match self.arg(v) {
            Arg::I(x) => Ok(x),
            Arg::W(w) => match &w.buf {
                Some(Buf::I(x)) => Ok(x),
                _ => Err("expected an integer weight".into()),
            },
            _ => Err("expected an integer operand".into()),
        }
    }

    /// A value as a tensor of its declared type.
    pub fn tensor(&self, v: usize) -> Tensor {
        let (ty, d) = (&self.types[v], &self.dims[v]);
        match self.arg(v) {
            Arg::F(x) => Tensor::from_f32(ty.dtype, d, x),
            Arg::I(x) => Tensor::from_i64(ty.dtype, d, x),
            Arg::B(x) => Tensor::from_bool(d, x),
            Arg::W(w) => {
                let t = w.to_tensor();
                if t.dtype() == ty.dtype {
                    t
                } else {
                    t.cast(ty.dtype)
                }
            }
        }
    }

    fn take(&mut self, v: usize) -> Buf {
        let n = numel(&self.dims[v]);
        let kind = kind_of(self.types[v].dtype);
        match self.locs[v] {
            Loc::Slot(s) => std::mem::take(&mut self.slots[s]).resized(kind, n),
            Loc::State(s) => std::mem::take(&mut self.state[s]),
            Loc::Weight(_) => Buf::default(),
        }
    }

    fn put(&mut self, v: usize, b: Buf) {
        match self.locs[v] {
            Loc::Slot(s) => self.slots[s] = b,
            Loc::State(s) => self.state[s] = b,
            Loc::Weight(_) => {}
        }
    }
}

fn fm(b: &mut Buf) -> Result<&mut [f32], String> {
    match b {
        Buf::F(v) => Ok(v),
        _ => Err("expected a float result buffer".into()),
    }
}

/// Runs one (non-view) step.
pub(crate) fn run_step(cx: &mut Ctx, s: &Step) -> Result<(), String> {
    let mut outs: Vec<Buf> = s.outs.iter().map(|&o| cx.take(o)).collect();
    let r = match s.kernel {
        Some(k) => native(cx, s, k, &mut outs),
        None => reference(cx, s, &mut outs),
    };
    for (&o, mut b) in s.outs.iter().zip(outs) {
        let ty = &cx.types[o];
        if r.is_ok() && ty.dtype != DType::F32 && !matches!(cx.locs[o], Loc::State(_)) && s.kernel.is_some() {
            if let Buf::F(v) = &mut b {
                round_to(ty.dtype, v);
            }
        }
        cx.put(o, b);
    }
    r
}

/// The op's reference semantics on tensors made from the buffers.
fn reference(cx: &Ctx, s: &Step, outs: &mut [Buf]) -> Result<(), String> {
    let args: Vec<Tensor> = s.args.iter().map(|&a| cx.tensor(a)).collect();
    let refs: Vec<&Tensor> = args.iter().collect();
    let res = s.op.eval(
        &refs,
        &EvalCx {
            bindings: cx.bindings,
        },
    )?;
    for (i, t) in res.iter().enumerate() {
        if t.shape() != cx.dims[s.outs[i]].as_slice() {
            return Err(format!(
                "result {i} has shape {:?}, declared {:?}",
                t.shape(),
                cx.dims[s.outs[i]]
            ));
        }
        outs[i] = Buf::from_tensor(t);
    }
    Ok(())
}

fn unary(k: UnaryKind) -> fn(f32) -> f32 {
    match k {
        UnaryKind::Neg => |x| -x,
        UnaryKind::Abs => f32::abs,
        UnaryKind::Exp => f32::exp,
        UnaryKind::Log => f32::ln,
        UnaryKind::Sqrt => f32::sqrt,
        UnaryKind::Rsqrt => |x| 1.0 / x.sqrt(),
        UnaryKind::Reciprocal => |x| 1.0 / x,
        UnaryKind::Tanh => f32::tanh,
        UnaryKind::Sigmoid => |x| 1.0 / (1.0 + (-x).exp()),
        UnaryKind::Relu => |x| if x > 0.0 || x.is_nan() { x } else { 0.0 },
        UnaryKind::Silu => |x| x / (1.0 + (-x).exp()),
        UnaryKind::Sin => f32::sin,
        UnaryKind::Cos => f32::cos,
        UnaryKind::Tan => f32::tan,
        UnaryKind::Asin => f32::asin,
        UnaryKind::Acos => f32::acos,
        UnaryKind::Atan => f32::atan,
        UnaryKind::Sinh => f32::sinh,
        UnaryKind::Cosh => f32::cosh,
        UnaryKind::Asinh => f32::asinh,
        UnaryKind::Acosh => f32::acosh,
        UnaryKind::Atanh => f32::atanh,
        UnaryKind::Floor => f32::floor,
        UnaryKind::Ceil => f32::ceil,
        UnaryKind::Round => f32::round_ties_even,
        UnaryKind::Sign => |x| {
            if x.is_nan() {
                x
            } else if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        },
        UnaryKind::Erf => |x| x, // never chosen: erf runs its reference semantics
    }
}

fn binary(k: BinaryKind) -> fn(f32, f32) -> f32 {
    match k {
        BinaryKind::Add => |a, b| a + b,
        BinaryKind::Sub => |a, b| a - b,
        BinaryKind::Mul => |a, b| a * b,
        BinaryKind::Div => |a, b| a / b,
        BinaryKind::Pow => f32::powf,
        BinaryKind::Minimum => |a, b| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        },
        BinaryKind::Maximum => |a, b| {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        },
        BinaryKind::Fmod => |a, b| a % b,
        BinaryKind::Mod => |a, b| {
            let r = a % b;
            if r != 0.0 && (r < 0.0) != (b < 0.0) {
                r + b
            } else {
                r
            }
        },
        // never chosen: bitwise ops have no float kernel
        BinaryKind::BitAnd | BinaryKind::BitOr | BinaryKind::BitXor | BinaryKind::Shl | BinaryKind::Shr => {
            |_, _| f32::NAN
        }
    }
}

/// `[outer, axis, inner]` of a shape around `axis`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (numel(&shape[..axis]), shape[axis], numel(&shape[axis + 1..]))
}

fn native(cx: &Ctx, s: &Step, k: Kernel, outs: &mut [Buf]) -> Result<(), String> {
    let a = &s.args;
    let dims = |v: usize| cx.dims[v].as_slice();
    let last = |v: usize| *dims(v).last().unwrap_or(&1);
    match k {
        Kernel::Linear => {
            let x = cx.f32s(a[0])?;
            let kd = last(a[0]);
            let m = x.len().checked_div(kd).unwrap_or(0);
            let n = dims(a[1])[0];
            let bias = match a.get(2) {
                Some(&b) => Some(cx.f32s(b)?),
                None => None,
            };
            let out = fm(&mut outs[0])?;
            match cx.arg(a[1]) {
                Arg::W(w) => {
                    let wr = w.matrix().ok_or("weights of an unsupported dtype")?;
                    gemm::linear(x, m, kd, wr, n, bias, out);
                }
                Arg::F(w) => gemm::linear(x, m, kd, gemm::WeightRef::F32(w), n, bias, out),
                _ => return Err("linear needs float weights".into()),
            }
        }
        Kernel::MatMul => {
            let (x, w) = (cx.f32s(a[0])?, cx.f32s(a[1])?);
            let (da, db) = (dims(a[0]), dims(a[1]));
            let (m, kd, n) = (da[da.len() - 2], da[da.len() - 1], db[db.len() - 1]);
            let batch = numel(&da[..da.len() - 2]);
            let bstride = if db.len() == 2 { 0 } else { kd * n };
            gemm::matmul(x, m * kd, w, bstride, batch, m, kd, n, fm(&mut outs[0])?);
        }
        Kernel::RmsNorm => {
            let Op::RmsNorm(o) = &s.op else { unreachable!() };
            let w = match a.get(1) {
                Some(&w) => Some(cx.f32s(w)?),
                None => None,
            };
            norm::rms_norm(cx.f32s(a[0])?, last(a[0]), w, o.eps as f32, fm(&mut outs[0])?);
        }
        Kernel::AddRmsNorm => {
            let Op::AddRmsNorm(o) = &s.op else { unreachable!() };
            let w = match a.get(2) {
                Some(&w) => Some(cx.f32s(w)?),
                None => None,
            };
            let (sum, rest) = outs.split_at_mut(1);
            let (xa, xb) = (cx.f32s(a[0])?, cx.f32s(a[1])?);
            let sum = fm(&mut sum[0])?;
            // The sum is stored in its dtype before the norm reads it.
            for ((o, x), y) in sum.iter_mut().zip(xa).zip(xb) {
                *o = x + y;
            }
            round_to(cx.types[s.outs[0]].dtype, sum);
            norm::rms_norm(sum, last(a[0]), w, o.eps as f32, fm(&mut rest[0])?);
        }
        Kernel::LayerNorm => {
            let Op::LayerNorm(o) = &s.op else { unreachable!() };
            let w = match a.get(1) {
                Some(&w) => Some(cx.f32s(w)?),
                None => None,
            };
            let b = match a.get(2) {
                Some(&b) => Some(cx.f32s(b)?),
                None => None,
            };
            norm::layer_norm(cx.f32s(a[0])?, last(a[0]), w, b, o.eps as f32, fm(&mut outs[0])?);
        }
        Kernel::Rope => {
            let Op::Rope(o) = &s.op else { unreachable!() };
            let (dx, dc) = (dims(a[0]), dims(a[1]));
            let r = last(a[1]);
            let map = layout::broadcast_index(&dc[..dc.len() - 1], &dx[..dx.len() - 1]);
            rope::rope(
                cx.f32s(a[0])?,
                last(a[0]),
                cx.f32s(a[1])?,
                cx.f32s(a[2])?,
                r,
                &|i| map[i],
                o.interleaved,
                fm(&mut outs[0])?,
            );
        }
        Kernel::SwiGlu => ew::swiglu(cx.f32s(a[0])?, cx.f32s(a[1])?, fm(&mut outs[0])?),
        Kernel::GeluTanh => ew::gelu_tanh(cx.f32s(a[0])?, fm(&mut outs[0])?),
        Kernel::Unary => {
            let Op::Unary(k) = &s.op else { unreachable!() };
            ew::map(cx.f32s(a[0])?, unary(*k), fm(&mut outs[0])?);
        }
        Kernel::Binary => {
            let Op::Binary(k) = &s.op else { unreachable!() };
            ew::binary(
                cx.f32s(a[0])?,
                dims(a[0]),
                cx.f32s(a[1])?,
                dims(a[1]),
                dims(s.outs[0]),
                binary(*k),
                fm(&mut outs[0])?,
            );
        }
        Kernel::Softmax => {
            let Op::Softmax(o) = &s.op else { unreachable!() };
            ew::softmax(cx.f32s(a[0])?, last(a[0]), o.log, fm(&mut outs[0])?);
        }
        Kernel::Cast => {
            let out = fm(&mut outs[0])?;
            match cx.arg(a[0]) {
                Arg::I(x) => {
                    for (o, v) in out.iter_mut().zip(x) {
                        *o = *v as f32;
                    }
                }
                _ => out.copy_from_slice(cx.f32s(a[0])?),
            }
        }
        Kernel::Transpose => {
            let Op::Transpose(t) = &s.op else { unreachable!() };
            let r = dims(a[0]).len();
            let perm: Vec<usize> = t
                .perm
                .iter()
                .map(|&p| normalize_axis(p, r))
                .collect::<Result<_, _>>()?;
            match (cx.arg(a[0]), &mut outs[0]) {
                (Arg::F(x), Buf::F(o)) => layout::transpose(x, dims(a[0]), &perm, o),
                (Arg::I(x), Buf::I(o)) => layout::transpose(x, dims(a[0]), &perm, o),
                (Arg::W(_), Buf::F(o)) => layout::transpose(cx.f32s(a[0])?, dims(a[0]), &perm, o),
                _ => return Err("transpose of an unsupported buffer".into()),
            }
        }
        Kernel::Concat => {
            let Op::Concat(c) = &s.op else { unreachable!() };
            let od = dims(s.outs[0]);
            let axis = normalize_axis(c.axis, od.len())?;
            let (outer, _, inner) = around(od, axis);
            match &mut outs[0] {
                Buf::F(o) => {
                    let parts: Vec<(&[f32], usize)> = a
                        .iter()
                        .map(|&v| Ok((cx.f32s(v)?, dims(v)[axis])))
                        .collect::<Result<_, String>>()?;
                    layout::concat(&parts, outer, inner, o);
                }
                Buf::I(o) => {
                    let parts: Vec<(&[i64], usize)> = a
                        .iter()
                        .map(|&v| Ok((cx.i64s(v)?, dims(v)[axis])))
                        .collect::<Result<_, String>>()?;
                    layout::concat(&parts, outer, inner, o);
                }
                Buf::B(_) => return Err("concat of bools".into()),
            }
        }
        Kernel::Split => {
            let Op::Split(sp) = &s.op else { unreachable!() };
            let d = dims(a[0]);
            let axis = normalize_axis(sp.axis, d.len())?;
            let (outer, len, inner) = around(d, axis);
            let mut start = 0;
            for (i, o) in outs.iter_mut().enumerate() {
                let count = dims(s.outs[i])[axis];
                match (cx.arg(a[0]), o) {
                    (Arg::F(x), Buf::F(o)) => layout::slice(x, outer, len, inner, start, 1, count, o),
                    (Arg::I(x), Buf::I(o)) => layout::slice(x, outer, len, inner, start, 1, count, o),
                    (Arg::W(_), Buf::F(o)) => {
                        layout::slice(cx.f32s(a[0])?, outer, len, inner, start, 1, count, o)
                    }
                    _ => return Err("split of an unsupported buffer".into()),
                }
                start += count;
            }
        }
        Kernel::IndexSelect => {
            let Op::IndexSelect(ix) = &s.op else {
                unreachable!()
            };
            let d = dims(a[0]);
            let axis = normalize_axis(ix.axis, d.len())?;
            let (outer, len, inner) = around(d, axis);
            let idx = cx.i64s(a[1])?;
            match (cx.arg(a[0]), &mut outs[0]) {
                (Arg::F(x), Buf::F(o)) => layout::index_select(x, outer, len, inner, idx, o)?,
                (Arg::I(x), Buf::I(o)) => layout::index_select(x, outer, len, inner, idx, o)?,
                (Arg::W(_), Buf::F(o)) => layout::index_select(cx.f32s(a[0])?, outer, len, inner, idx, o)?,
                _ => return Err("index_select of an unsupported buffer".into()),
            }
        }
        Kernel::Embedding => {
            let d = dims(a[0]);
            let (rows, h) = (d[0], d[1]);
            let ids = cx.i64s(a[1])?;
            let out = fm(&mut outs[0])?;
            if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i as usize >= rows) {
                return Err(format!("token id {bad} is outside the table of {rows} rows"));
            }
            match cx.arg(a[0]) {
                Arg::W(w) => {
                    let m = w.matrix().ok_or("embedding table of an unsupported dtype")?;
                    for (j, &i) in ids.iter().enumerate() {
                        m.to_f32(i as usize * h, &mut out[j * h..(j + 1) * h]);
                    }
                }
                Arg::F(t) => {
                    for (j, &i) in ids.iter().enumerate() {
                        out[j * h..(j + 1) * h].copy_from_slice(&t[i as usize * h..(i as usize + 1) * h]);
                    }
                }
                _ => return Err("embedding table must be float".into()),
            }
        }
        Kernel::PagedAttention => {
            let Op::PagedAttention(p) = &s.op else {
                unreachable!()
            };
            let (dq, dk, dv, dc) = (dims(a[0]), dims(a[1]), dims(a[2]), dims(a[3]));
            let shape = attention::PagedShape {
                tokens: dq[0],
                q_heads: dq[1],
                kv_heads: dk[1],
                head_dim: dq[2],
                v_dim: dv[2],
                num_blocks: dc[0],
                block_size: dc[1],
            };
            let meta = attention::PagedMeta {
                positions: cx.i64s(a[5])?,
                seq_starts: cx.i64s(a[6])?,
                context_lens: cx.i64s(a[7])?,
                block_tables: cx.i64s(a[8])?,
                max_blocks: dims(a[8])[1],
                slot_mapping: cx.i64s(a[9])?,
            };
            let scale = p.scale.unwrap_or(1.0 / (shape.head_dim as f64).sqrt()) as f32;
            let window = p.window.map(|w| w as usize);
            let (o, caches) = outs.split_at_mut(1);
            let (kc, vc) = caches.split_at_mut(1);
            attention::paged_attention(
                shape,
                cx.f32s(a[0])?,
                cx.f32s(a[1])?,
                cx.f32s(a[2])?,
                fm(&mut kc[0])?,
                fm(&mut vc[0])?,
                &meta,
                scale,
                window,
                fm(&mut o[0])?,
            )?;
        }
    }
    Ok(())
}
