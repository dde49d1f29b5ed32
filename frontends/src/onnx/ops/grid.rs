//! Sampling at computed positions: `GridSample` and `AffineGrid`.
//!
//! GridSample's taps depend on the data, so they are built with IR
//! arithmetic: per spatial axis the source coordinate, its padding
//! treatment and the kernel's taps (index and weight); the per-axis taps
//! combine by broadcasting into linear indices into `x` flattened to
//! `[N * spatial, C]`, one `gather` fetches every tap, and a weighted sum
//! (or, for nearest, a `where`, exact for any dtype) gives the output.

use optc_ir::ops::{BinaryKind as B, CompareKind as C, Gather, MatMul, Reduce, ReduceKind, UnaryKind as U};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::{slice_axis, transpose_to};
use super::{binary, compare, select, unary, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("GridSample", grid_sample), ("AffineGrid", affine_grid)];

/// Keys' cubic coefficient GridSample uses (PyTorch's bicubic).
const CUBIC_A: f64 = -0.75;

/// How out-of-range positions read (`padding_mode`).
#[derive(Clone, Copy, PartialEq)]
enum Padding {
    Zeros,
    Border,
    Reflection,
}

/// `mode`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Nearest,
    Linear,
    Cubic,
}

/// Constant extents of a value (the gather layout needs them).
fn consts(v: &Val, what: &str) -> Result<Vec<i64>, NodeError> {
    v.dims()
        .iter()
        .map(|d| {
            d.as_const().ok_or_else(|| {
                NodeError::Unsupported(format!("{what} with the symbolic extent {d} is not supported"))
            })
        })
        .collect()
}

/// `min(max(x, lo), hi)` with scalar bounds.
fn clamp(cx: &mut Cx, x: &Val, lo: f64, hi: f64) -> Result<Val, NodeError> {
    let y = with_scalar(cx, B::Maximum, x, lo)?;
    with_scalar(cx, B::Minimum, &y, hi)
}

/// `x < s` (or another comparison) against a scalar.
fn cmp_scalar(cx: &mut Cx, k: C, x: &Val, s: f64) -> Result<Val, NodeError> {
    let c = cx.scalar(s, x.dtype());
    compare(cx, k, x, &c)
}

/// Reflects coordinates into `[lo, hi]` by bouncing off the nearer border
/// as often as needed (the spec's reflection padding); inside values stay.
fn reflect(cx: &mut Cx, x: &Val, lo: f64, hi: f64) -> Result<Val, NodeError> {
    let range = hi - lo;
    let below = cmp_scalar(cx, C::Less, x, lo)?;
    let above = cmp_scalar(cx, C::Greater, x, hi)?;
    // Distance past the crossed border (only used where one is crossed).
    let neg = unary(cx, U::Neg, x)?;
    let d_lo = with_scalar(cx, B::Add, &neg, lo)?;
    let d_hi = with_scalar(cx, B::Sub, x, hi)?;
    let d = select(cx, &below, &d_lo, &d_hi)?;
    let q = with_scalar(cx, B::Div, &d, range)?;
    let flips = unary(cx, U::Floor, &q)?;
    let whole = with_scalar(cx, B::Mul, &flips, range)?;
    let rem = binary(cx, B::Sub, &d, &whole)?;
    let parity = with_scalar(cx, B::Mod, &flips, 2.0)?;
    let even = cmp_scalar(cx, C::Equal, &parity, 0.0)?;
    let from_lo = with_scalar(cx, B::Add, &rem, lo)?;
    let neg_rem = unary(cx, U::Neg, &rem)?;
    let from_hi = with_scalar(cx, B::Add, &neg_rem, hi)?;
    let lo_side = select(cx, &even, &from_lo, &from_hi)?;
    let hi_side = select(cx, &even, &from_hi, &from_lo)?;
    let y = select(cx, &above, &hi_side, x)?;
    select(cx, &below, &lo_side, &y)
}

/// The taps of one spatial axis of extent `len` at coordinates `x`
/// (`[N, P, 1]`): integer indices (i64, in range) and weights, both
/// `[N, P, T]`.
fn axis_taps(
    cx: &mut Cx,
    x: &Val,
    len: i64,
    mode: Mode,
    padding: Padding,
    align: bool,
) -> Result<(Val, Val), NodeError> {
    let lf = len as f64;
    let (lo, hi) = if align { (0.0, lf - 1.0) } else { (-0.5, lf - 0.5) };
    let mut x = x.clone();
    if mode == Mode::Nearest {
        x = unary(cx, U::Round, &x)?;
    }
    match padding {
        Padding::Zeros => {}
        Padding::Border => {
            let below = cmp_scalar(cx, C::Less, &x, lo)?;
            let above = cmp_scalar(cx, C::Greater, &x, hi)?;
            let out = binary(cx, B::BitOr, &below, &above)?;
            let clamped = clamp(cx, &x, 0.0, lf - 1.0)?;
            x = select(cx, &out, &clamped, &x)?;
        }
        Padding::Reflection => x = reflect(cx, &x, lo, hi)?,
    }
    let (base, offsets): (Val, Vec<f64>) = match mode {
        // Reflection may leave a fraction: the reference truncates.
        Mode::Nearest if padding == Padding::Reflection => {
            let nonneg = with_scalar(cx, B::Maximum, &x, 0.0)?;
            (unary(cx, U::Floor, &nonneg)?, vec![0.0])
        }
        Mode::Nearest => (x.clone(), vec![0.0]),
        Mode::Linear => (unary(cx, U::Floor, &x)?, vec![0.0, 1.0]),
        Mode::Cubic => (unary(cx, U::Floor, &x)?, vec![-1.0, 0.0, 1.0, 2.0]),
    };
    let t = binary(cx, B::Sub, &x, &base)?;
    let weights: Vec<Val> = match mode {
        Mode::Nearest => vec![{
            let z = with_scalar(cx, B::Mul, &t, 0.0)?;
            with_scalar(cx, B::Add, &z, 1.0)?
        }],
        Mode::Linear => {
            let neg = unary(cx, U::Neg, &t)?;
            vec![with_scalar(cx, B::Add, &neg, 1.0)?, t.clone()]
        }
        Mode::Cubic => {
            let a = CUBIC_A;
            // Outer taps: ((a*s - 5a)*s + 8a)*s - 4a at s = t+1 and 2-t;
            // inner taps: ((a+2)*s - (a+3))*s*s + 1 at s = t and 1-t.
            let outer = |cx: &mut Cx, s: &Val| -> Result<Val, NodeError> {
                let v = with_scalar(cx, B::Mul, s, a)?;
                let v = with_scalar(cx, B::Sub, &v, 5.0 * a)?;
                let v = binary(cx, B::Mul, &v, s)?;
                let v = with_scalar(cx, B::Add, &v, 8.0 * a)?;
                let v = binary(cx, B::Mul, &v, s)?;
                with_scalar(cx, B::Sub, &v, 4.0 * a)
            };
            let inner = |cx: &mut Cx, s: &Val| -> Result<Val, NodeError> {
                let v = with_scalar(cx, B::Mul, s, a + 2.0)?;
                let v = with_scalar(cx, B::Sub, &v, a + 3.0)?;
                let v = binary(cx, B::Mul, &v, s)?;
                let v = binary(cx, B::Mul, &v, s)?;
                with_scalar(cx, B::Add, &v, 1.0)
            };
            let neg = unary(cx, U::Neg, &t)?;
            let t1 = with_scalar(cx, B::Add, &t, 1.0)?;
            let q = with_scalar(cx, B::Add, &neg, 1.0)?;
            let q1 = with_scalar(cx, B::Add, &neg, 2.0)?;
            vec![outer(cx, &t1)?, inner(cx, &t)?, inner(cx, &q)?, outer(cx, &q1)?]
        }
    };
    let mut idx = Vec::new();
    let mut ws = Vec::new();
    for (off, w) in offsets.iter().zip(weights) {
        let i = with_scalar(cx, B::Add, &base, *off)?;
        let (i, w) = match padding {
            Padding::Zeros => {
                let ge = cmp_scalar(cx, C::GreaterEqual, &i, 0.0)?;
                let le = cmp_scalar(cx, C::LessEqual, &i, lf - 1.0)?;
                let ok = binary(cx, B::BitAnd, &ge, &le)?;
                let zero = cx.scalar(0.0, w.dtype());
                let w = select(cx, &ok, &w, &zero)?;
                (clamp(cx, &i, 0.0, lf - 1.0)?, w)
            }
            Padding::Border => (clamp(cx, &i, 0.0, lf - 1.0)?, w),
            Padding::Reflection => {
                let r = reflect(cx, &i, lo, hi)?;
                let r = clamp(cx, &r, 0.0, lf - 1.0)?;
                (unary(cx, U::Floor, &r)?, w)
            }
        };
        idx.push(cx.cast(&i, DType::I64)?);
        ws.push(w);
    }
    let cat = |cx: &mut Cx, v: &[Val]| -> Result<Val, NodeError> {
        if v.len() == 1 {
            Ok(v[0].clone())
        } else {
            cx.op(Op::Concat(optc_ir::ops::Concat { axis: 2 }), v)
        }
    };
    Ok((cat(cx, &idx)?, cat(cx, &ws)?))
}

/// GridSample-16+ (`bilinear`/`bicubic` are the opset-16 spellings):
/// taps per axis, combined into `[N, P, T]` gather indices and weights.
fn grid_sample(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, grid) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let align = n.int("align_corners", 0)? != 0;
    let mode = match n
        .string("mode", if n.opset < 20 { "bilinear" } else { "linear" })?
        .as_str()
    {
        "nearest" => Mode::Nearest,
        "linear" | "bilinear" => Mode::Linear,
        "cubic" | "bicubic" => Mode::Cubic,
        m => return Err(format!("mode {m:?} is not defined").into()),
    };
    let padding = match n.string("padding_mode", "zeros")?.as_str() {
        "zeros" => Padding::Zeros,
        "border" => Padding::Border,
        "reflection" => Padding::Reflection,
        m => return Err(format!("padding_mode {m:?} is not defined").into()),
    };
    want_float(n, &grid)?;
    if mode != Mode::Nearest {
        want_float(n, &x)?;
    }
    let xd = consts(&x, "GridSample input")?;
    let gd = consts(&grid, "GridSample grid")?;
    let k = xd.len().saturating_sub(2);
    if k == 0 || gd.len() != k + 2 || gd[k + 1] != k as i64 || gd[0] != xd[0] {
        return Err(format!("grid {} does not fit input {}", grid.ty, x.ty).into());
    }
    let (nb, ch) = (xd[0], xd[1]);
    let spatial = &xd[2..];
    let s = super::checked_product(
        spatial,
        optc_ir::ops::MAX_ELEMENTS as i64,
        "GridSample input extent",
    )?;
    let p = super::checked_product(
        &gd[1..=k],
        optc_ir::ops::MAX_ELEMENTS as i64,
        "GridSample grid extent",
    )?;
    super::checked_product(
        &[nb, s, ch],
        optc_ir::ops::MAX_ELEMENTS as i64,
        "GridSample input",
    )?;
    super::checked_product(&[nb], super::IMPORT_TABLE_LIMIT, "GridSample batch")?;
    if nb * s * ch == 0 || p == 0 {
        return unsupported("GridSample on an empty tensor is not supported");
    }
    // The reference denormalises coordinates in f32 whatever the grid dtype.
    let g = cx.cast(&grid, DType::F32)?;
    let g = cx.reshape(
        &g,
        vec![Dim::constant(nb), Dim::constant(p), Dim::constant(k as i64)],
    )?;
    let mut total_idx: Option<Val> = None;
    let mut total_w: Option<Val> = None;
    let mut stride = 1i64;
    let mut taps_per_axis = vec![0i64; k];
    // Innermost spatial axis first: its coordinate is grid component 0.
    for j in (0..k).rev() {
        let len = spatial[j];
        let comp = (k - 1 - j) as i64;
        let c = slice_axis(cx, &g, 2, comp, comp + 1, 1)?;
        let lf = len as f64;
        let c1 = with_scalar(cx, B::Add, &c, 1.0)?;
        let coord = if align {
            let h = with_scalar(cx, B::Div, &c1, 2.0)?;
            with_scalar(cx, B::Mul, &h, lf - 1.0)?
        } else {
            let m = with_scalar(cx, B::Mul, &c1, lf)?;
            let m = with_scalar(cx, B::Sub, &m, 1.0)?;
            with_scalar(cx, B::Div, &m, 2.0)?
        };
        let (idx, w) = axis_taps(cx, &coord, len, mode, padding, align)?;
        let t = idx.dims()[2].as_const().unwrap_or(1);
        taps_per_axis[j] = t;
        // Put this axis's taps at tap dim 2 + j of [N, P, T_0 .. T_k-1].
        let mut shape = vec![Dim::constant(nb), Dim::constant(p)];
        shape.extend((0..k).map(|a| Dim::constant(if a == j { t } else { 1 })));
        let idx = cx.reshape(&idx, shape.clone())?;
        let idx = if stride != 1 {
            let st = cx.scalar(stride as f64, DType::I64);
            binary(cx, B::Mul, &idx, &st)?
        } else {
            idx
        };
        let w = cx.reshape(&w, shape)?;
        total_idx = Some(match total_idx {
            Some(a) => binary(cx, B::Add, &a, &idx)?,
            None => idx,
        });
        total_w = Some(match total_w {
            Some(a) => binary(cx, B::Mul, &a, &w)?,
            None => w,
        });
        stride *= len;
    }
    let (Some(idx), Some(w)) = (total_idx, total_w) else {
        return Err("GridSample needs a spatial axis".into());
    };
    let taps: i64 = taps_per_axis.iter().product();
    // Batch offsets n * S make the indices address x as [N * S, C].
    let offsets: Vec<i64> = (0..nb).map(|b| b * s).collect();
    let mut oshape = vec![nb as usize, 1];
    oshape.extend(std::iter::repeat_n(1usize, k));
    let off = cx.konst(Tensor::from_i64(DType::I64, &oshape, &offsets));
    let idx = binary(cx, B::Add, &idx, &off)?;
    let flat = [Dim::constant(nb), Dim::constant(p), Dim::constant(taps)];
    let idx = cx.reshape(&idx, flat.to_vec())?;
    let w = cx.reshape(&w, flat.to_vec())?;
    let mut perm = vec![0i64];
    perm.extend(2..(k as i64 + 2));
    perm.push(1);
    let xt = transpose_to(cx, &x, perm)?;
    let xt = cx.reshape(&xt, vec![Dim::constant(nb * s), Dim::constant(ch)])?;
    let picked = cx.op(Op::Gather(Gather { axis: 0 }), &[xt, idx])?;
    let w4 = cx.reshape(
        &w,
        vec![
            Dim::constant(nb),
            Dim::constant(p),
            Dim::constant(taps),
            Dim::constant(1),
        ],
    )?;
    let y = if mode == Mode::Nearest {
        // One tap whose weight is 1 inside and 0 outside (zeros padding).
        let inside = cmp_scalar(cx, C::Greater, &w4, 0.5)?;
        let zero = cx.scalar(0.0, x.dtype());
        let y = select(cx, &inside, &picked, &zero)?;
        cx.reshape(&y, vec![Dim::constant(nb), Dim::constant(p), Dim::constant(ch)])?
    } else {
        let w4 = cx.cast(&w4, x.dtype())?;
        let prod = binary(cx, B::Mul, &picked, &w4)?;
        cx.op(
            Op::Reduce(Reduce {
                kind: ReduceKind::Sum,
                axes: vec![2],
                keepdims: false,
            }),
            &[prod],
        )?
    };
    let y = transpose_to(cx, &y, vec![0, 2, 1])?;
    let mut out = vec![Dim::constant(nb), Dim::constant(ch)];
    out.extend(gd[1..=k].iter().map(|&d| Dim::constant(d)));
    Ok(vec![cx.reshape(&y, out)?])
}

/// The normalised sample positions of one axis of extent `len`: pixel
/// centres (or corners with `align`) mapped onto [-1, 1].
fn base_coords(len: i64, align: bool) -> Vec<f64> {
    (0..len)
        .map(|i| {
            let i = i as f64;
            if align {
                if len == 1 {
                    -1.0
                } else {
                    -1.0 + i * (2.0 / (len as f64 - 1.0))
                }
            } else {
                let step = 2.0 / len as f64;
                (-1.0 + step / 2.0) + i * step
            }
        })
        .collect()
}

/// `theta @ [x, y, (z,) 1]` over the base grid: the homogeneous base grid
/// is a constant `[k+1, P]`, multiplied in f64 (as the reference does) and
/// cast back.
fn affine_grid(cx: &mut Cx, n: &NodeCx) -> R {
    let theta = cx.input(n, 0)?;
    let align = n.int("align_corners", 0)? != 0;
    let size = cx.static_ints(n, 1)?.ok_or("size is required")?;
    want_float(n, &theta)?;
    let k = match size.len() {
        4 => 2usize,
        5 => 3,
        l => return Err(format!("size has {l} entries; 4 (2-D) or 5 (3-D) are defined").into()),
    };
    let td = consts(&theta, "AffineGrid theta")?;
    if td.len() != 3 || td[1] != k as i64 || td[2] != k as i64 + 1 || td[0] != size[0] {
        return Err(format!("theta {} does not fit size {size:?}", theta.ty).into());
    }
    let spatial = &size[2..];
    if spatial.iter().any(|&d| d <= 0) {
        return Err(format!("size {size:?} has a non-positive spatial extent").into());
    }
    let p = super::checked_product(spatial, super::IMPORT_TABLE_LIMIT, "AffineGrid size")?;
    let axes: Vec<Vec<f64>> = spatial.iter().map(|&l| base_coords(l, align)).collect();
    // Rows: x (innermost axis), y, (z), 1; columns: points in row-major order.
    let pu = p as usize;
    let mut base = vec![0.0; (k + 1) * pu];
    for q in 0..pu {
        let mut rest = q;
        for j in (0..k).rev() {
            let l = spatial[j] as usize;
            let i = rest % l;
            rest /= l;
            base[(k - 1 - j) * pu + q] = axes[j][i];
        }
        base[k * pu + q] = 1.0;
    }
    let b = cx.konst(Tensor::from_f64(DType::F64, &[k + 1, pu], &base));
    let t = cx.cast(&theta, DType::F64)?;
    let g = cx.op(Op::MatMul(MatMul), &[t, b])?;
    let g = transpose_to(cx, &g, vec![0, 2, 1])?;
    let g = cx.cast(&g, theta.dtype())?;
    let mut out = vec![Dim::constant(size[0])];
    out.extend(spatial.iter().map(|&d| Dim::constant(d)));
    out.push(Dim::constant(k as i64));
    Ok(vec![cx.reshape(&g, out)?])
}
