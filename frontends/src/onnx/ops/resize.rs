//! Resampling on a regular grid: `Resize` (opsets 10-19), `Upsample` and
//! `CenterCropPad`. With static extents Resize is separable: every resized
//! axis becomes a constant `[out, in]` weight matrix, computed here in f64
//! from the spec's formulas (antialias and exclude_outside included) and
//! applied with a matmul; nearest becomes a gather with constant indices,
//! which is exact for every dtype. tf_crop_and_resize's extrapolated
//! positions are a `where` with the extrapolation value.

use optc_ir::ops::{Concat, Gather, MatMul};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::{expand_to, product, slice_axis};
use super::{axis, select, want_float, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("Resize", resize),
    ("Upsample", upsample),
    ("CenterCropPad", center_crop_pad),
];

/// Largest weight matrix (`out * in` entries) built for one axis; beyond it
/// the constant would dwarf the model.
const MAX_WEIGHTS: usize = super::IMPORT_TABLE_LIMIT as usize;

/// How nearest mode rounds a source coordinate (`nearest_mode`).
#[derive(Clone, Copy, Debug)]
enum Rounding {
    PreferFloor,
    PreferCeil,
    Floor,
    Ceil,
}

/// The interpolation kernel of one Resize (`mode` plus its parameters).
#[derive(Clone, Copy, Debug)]
enum Kernel {
    Nearest(Rounding),
    Linear { antialias: bool },
    Cubic { a: f64, antialias: bool },
}

/// `coordinate_transformation_mode`: output index → source coordinate.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coord {
    HalfPixel,
    HalfPixelSymmetric,
    PytorchHalfPixel,
    TfHalfPixelForNn,
    AlignCorners,
    Asymmetric,
    TfCropAndResize,
}

/// Keys' cubic convolution weight of a distance (antialias form).
fn cubic_weight(x: f64, a: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// The kernel's weights for a fractional position `ratio` in (0, 1] (the
/// left neighbour preferred), at axis scale `scale` (antialias widens the
/// kernel by 1/scale when downsampling).
fn coeffs(k: Kernel, ratio: f64, scale: f64) -> Vec<f64> {
    let normalise = |c: Vec<f64>| {
        let s: f64 = c.iter().sum();
        c.into_iter().map(|v| v / s).collect()
    };
    match k {
        Kernel::Nearest(r) => {
            let right = if ratio.fract() == 0.0 {
                true
            } else {
                match r {
                    Rounding::PreferFloor => ratio > 0.5,
                    Rounding::PreferCeil => ratio >= 0.5,
                    Rounding::Floor => false,
                    Rounding::Ceil => true,
                }
            };
            if right {
                vec![0.0, 1.0]
            } else {
                vec![1.0, 0.0]
            }
        }
        Kernel::Linear { antialias: false } => vec![1.0 - ratio, ratio],
        Kernel::Linear { antialias: true } => {
            let s = scale.min(1.0);
            let start = (-1.0 / s).floor() as i64 + 1;
            let footprint = 2 - 2 * start;
            normalise(
                (start..start + footprint)
                    .map(|i| (1.0 - ((i as f64 - ratio) * s).abs()).clamp(0.0, 1.0))
                    .collect(),
            )
        }
        Kernel::Cubic { a, antialias: false } => {
            let (r, q) = (ratio, 1.0 - ratio);
            vec![
                ((a * (r + 1.0) - 5.0 * a) * (r + 1.0) + 8.0 * a) * (r + 1.0) - 4.0 * a,
                ((a + 2.0) * r - (a + 3.0)) * r * r + 1.0,
                ((a + 2.0) * q - (a + 3.0)) * q * q + 1.0,
                ((a * (q + 1.0) - 5.0 * a) * (q + 1.0) + 8.0 * a) * (q + 1.0) - 4.0 * a,
            ]
        }
        Kernel::Cubic { a, antialias: true } => {
            let s = scale.min(1.0);
            let start = (-2.0 / s).floor() as i64 + 1;
            let end = 2 - start;
            normalise(
                (start..end)
                    .map(|i| cubic_weight(s * (i as f64 - ratio), a))
                    .collect(),
            )
        }
    }
}

/// One resized axis: the dense `[out, in]` weights (row-major) and which
/// output positions take the extrapolation value.
struct AxisPlan {
    weights: Vec<f64>,
    extrapolated: Vec<bool>,
}

/// Parameters of one axis's resampling.
struct AxisSpec {
    input: usize,
    out: usize,
    scale: f64,
    roi: (f64, f64),
}

/// Builds the weights of one axis following the spec: the source
/// coordinate of each output index, the kernel's taps around it (edge
/// padded, i.e. clamped), and with `exclude` the out-of-range taps dropped
/// and the rest renormalised.
fn plan_axis(k: Kernel, c: Coord, s: &AxisSpec, exclude: bool) -> AxisPlan {
    let (input, out, scale) = (s.input, s.out, s.scale);
    let in_f = input as f64;
    let width = scale * in_f;
    let mut weights = vec![0.0; out * input];
    let mut extrapolated = vec![false; out];
    for (y, ext) in extrapolated.iter_mut().enumerate() {
        let yf = y as f64;
        let x = match c {
            Coord::AlignCorners => {
                if width == 1.0 {
                    0.0
                } else {
                    yf * (in_f - 1.0) / (width - 1.0)
                }
            }
            Coord::Asymmetric => yf / scale,
            Coord::TfHalfPixelForNn => (yf + 0.5) / scale,
            Coord::TfCropAndResize => {
                let (r0, r1) = s.roi;
                let x = if width == 1.0 {
                    (r1 - r0) * (in_f - 1.0) / 2.0
                } else {
                    yf * (r1 - r0) * (in_f - 1.0) / (width - 1.0)
                };
                let x = x + r0 * (in_f - 1.0);
                *ext = !(0.0..=in_f - 1.0).contains(&x);
                // Extrapolated outputs ignore their taps; keep the tap
                // arithmetic finite for absurd (or infinite) roi values.
                if *ext {
                    x.clamp(-in_f - 8.0, 2.0 * in_f + 8.0)
                } else {
                    x
                }
            }
            Coord::PytorchHalfPixel => {
                if width == 1.0 {
                    -0.5
                } else {
                    (yf + 0.5) / scale - 0.5
                }
            }
            Coord::HalfPixel => (yf + 0.5) / scale - 0.5,
            Coord::HalfPixelSymmetric => {
                let adjustment = out as f64 / width;
                let offset = in_f / 2.0 * (1.0 - adjustment);
                offset + (yf + 0.5) / scale - 0.5
            }
        };
        let xi = x.floor();
        let ratio = if x == xi { 1.0 } else { x - xi };
        let mut cs = coeffs(k, ratio, scale);
        let n = cs.len() as i64;
        // The n taps nearest to x, ties to the smaller index.
        let pad = (n + 1) / 2;
        let xp = x + pad as f64;
        let p = xp.floor();
        let frac = xp - p;
        let off = if n % 2 == 0 {
            if frac == 0.0 {
                -(n / 2)
            } else {
                -(n / 2) + 1
            }
        } else {
            let base = -((n - 1) / 2);
            if frac <= 0.5 {
                base
            } else {
                base + 1
            }
        };
        let start = p as i64 + off - pad;
        if exclude {
            for (j, cv) in cs.iter_mut().enumerate() {
                let idx = start + j as i64;
                if idx < 0 || idx >= input as i64 {
                    *cv = 0.0;
                }
            }
            let sum: f64 = cs.iter().sum();
            let sum = if sum == 0.0 { 1.0 } else { sum };
            cs.iter_mut().for_each(|v| *v /= sum);
        }
        for (j, cv) in cs.iter().enumerate() {
            let idx = (start + j as i64).clamp(0, input as i64 - 1) as usize;
            weights[y * input + idx] += cv;
        }
    }
    AxisPlan {
        weights,
        extrapolated,
    }
}

/// The source index of each output row when every row is one-hot with
/// weight 1 (nearest mode), so a gather reproduces it exactly.
fn one_hot_rows(p: &AxisPlan, input: usize) -> Option<Vec<i64>> {
    p.weights
        .chunks(input)
        .map(|row| {
            let mut hit = None;
            for (i, &w) in row.iter().enumerate() {
                if w == 1.0 && hit.is_none() {
                    hit = Some(i as i64);
                } else if w != 0.0 {
                    return None;
                }
            }
            hit
        })
        .collect()
}

/// Applies one axis's plan to `x`: a gather for one-hot rows, otherwise
/// `W[out, in] @ x[pre, in, post]`; then the extrapolated rows.
fn apply_axis(
    cx: &mut Cx,
    n: &NodeCx,
    x: &Val,
    a: usize,
    p: &AxisPlan,
    input: usize,
    extrapolation: f64,
) -> Result<Val, NodeError> {
    let out = p.extrapolated.len();
    let mut dims = x.dims().to_vec();
    dims[a] = Dim::constant(out as i64);
    let y = if let Some(idx) = one_hot_rows(p, input) {
        let idx = cx.konst(Tensor::from_i64(DType::I64, &[out], &idx));
        cx.op(Op::Gather(Gather { axis: a as i64 }), &[x.clone(), idx])?
    } else {
        want_float(n, x)?;
        let xd = x.dims();
        let x3 = cx.reshape(
            x,
            vec![
                product(&xd[..a])?,
                Dim::constant(input as i64),
                product(&xd[a + 1..])?,
            ],
        )?;
        let w = cx.konst(Tensor::from_f64(x.dtype(), &[out, input], &p.weights));
        let y = cx.op(Op::MatMul(MatMul), &[w, x3])?;
        cx.reshape(&y, dims.clone())?
    };
    if !p.extrapolated.iter().any(|&e| e) {
        return Ok(y);
    }
    let mut mshape = vec![1usize; x.rank()];
    mshape[a] = out;
    let mask = cx.konst(Tensor::from_bool(&mshape, &p.extrapolated));
    let ev = cx.scalar(extrapolation, x.dtype());
    select(cx, &mask, &ev, &y)
}

/// A constant extent of `x`, which the weights need.
fn extent(x: &Val, a: usize) -> Result<usize, NodeError> {
    let Some(d) = x.dims().get(a) else {
        return Err(format!("axis {a} is out of range for {}", x.ty).into());
    };
    match d.as_const() {
        Some(v) if v >= 0 => Ok(v as usize),
        _ => unsupported(format!(
            "resampling over the symbolic extent {d} is not supported"
        )),
    }
}

/// The attributes that hold for every axis of one Resize.
struct Method {
    kernel: Kernel,
    coord: Coord,
    exclude: bool,
    extrapolation: f64,
}

/// Resamples `x` along `axes` (with per-axis specs) and returns the result.
fn resample(
    cx: &mut Cx,
    n: &NodeCx,
    x: &Val,
    m: &Method,
    axes: &[(usize, AxisSpec)],
) -> Result<Val, NodeError> {
    let (k, c, exclude, extrapolation) = (m.kernel, m.coord, m.exclude, m.extrapolation);
    let nearest = matches!(k, Kernel::Nearest(_));
    if !nearest {
        want_float(n, x)?;
    }
    // Half-precision inputs are weighted in f32 and rounded once at the
    // end (the reference works in f64 and rounds once).
    let acc = if nearest || matches!(x.dtype(), DType::F32 | DType::F64) {
        x.dtype()
    } else {
        DType::F32
    };
    let mut y = cx.cast(x, acc)?;
    for (a, s) in axes {
        let identity = (s.scale - 1.0).abs() <= 1e-9 * s.scale.abs().max(1.0)
            && s.out == s.input
            && (c != Coord::TfCropAndResize || (s.roi.0.abs() <= 1e-9 && (s.roi.1 - 1.0).abs() <= 1e-9));
        if identity {
            continue;
        }
        if s.input == 0 {
            return unsupported(format!("resampling the empty axis {a} is not supported"));
        }
        if s.out.saturating_mul(s.input) > MAX_WEIGHTS {
            return unsupported(format!(
                "resampling axis {a} from {} to {} is too large for constant weights",
                s.input, s.out
            ));
        }
        let plan = plan_axis(k, c, s, exclude);
        y = apply_axis(cx, n, &y, *a, &plan, s.input, extrapolation)?;
    }
    cx.cast(&y, x.dtype())
}

/// Checks a scale factor and gives the output extent `floor(scale * in)`.
fn scaled(scale: f64, input: usize) -> Result<usize, NodeError> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(format!("scale {scale} must be positive and finite").into());
    }
    let out = (scale * input as f64).floor();
    if out > (1u64 << 32) as f64 {
        return unsupported(format!("output extent {out} is too large"));
    }
    Ok(out as usize)
}

/// A scales/sizes input that is given and not the empty placeholder.
fn present(cx: &Cx, n: &NodeCx, i: usize) -> Result<bool, NodeError> {
    Ok(match cx.opt_input(n, i)? {
        Some(v) => !(v.rank() == 1 && v.dims()[0].is(0)),
        None => false,
    })
}

/// Resize-11+: reads every attribute, resolves the per-axis output extent
/// and scale from static `scales` or `sizes` (with `axes` and
/// `keep_aspect_ratio_policy`), then resamples axis by axis.
fn resize(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let r = x.rank();
    let mode = n.string("mode", "nearest")?;
    if n.opset < 11 {
        // Resize-10: asymmetric coordinates, as Upsample.
        let scales = cx.static_f64s(n, 1)?.ok_or("scales is required")?;
        return Ok(vec![legacy(cx, n, &x, &mode, &scales)?]);
    }
    let coord = match n.string("coordinate_transformation_mode", "half_pixel")?.as_str() {
        "half_pixel" => Coord::HalfPixel,
        "half_pixel_symmetric" => Coord::HalfPixelSymmetric,
        "pytorch_half_pixel" => Coord::PytorchHalfPixel,
        "tf_half_pixel_for_nn" => Coord::TfHalfPixelForNn,
        "align_corners" => Coord::AlignCorners,
        "asymmetric" => Coord::Asymmetric,
        "tf_crop_and_resize" => Coord::TfCropAndResize,
        m => return Err(format!("coordinate_transformation_mode {m:?} is not defined").into()),
    };
    let a = n.float("cubic_coeff_a", -0.75)?;
    let exclude = n.int("exclude_outside", 0)? != 0;
    let extrapolation = n.float("extrapolation_value", 0.0)?;
    let rounding = match n.string("nearest_mode", "round_prefer_floor")?.as_str() {
        "round_prefer_floor" => Rounding::PreferFloor,
        "round_prefer_ceil" => Rounding::PreferCeil,
        "floor" => Rounding::Floor,
        "ceil" => Rounding::Ceil,
        m => return Err(format!("nearest_mode {m:?} is not defined").into()),
    };
    let (antialias, axes_attr, policy) = if n.opset >= 18 {
        (
            n.int("antialias", 0)? != 0,
            n.opt_ints("axes")?,
            n.string("keep_aspect_ratio_policy", "stretch")?,
        )
    } else {
        (false, None, "stretch".to_string())
    };
    let kernel = match mode.as_str() {
        "nearest" if antialias => return Err("antialias is not defined for mode nearest".into()),
        "nearest" => Kernel::Nearest(rounding),
        "linear" => Kernel::Linear { antialias },
        "cubic" => Kernel::Cubic { a, antialias },
        m => return Err(format!("mode {m:?} is not defined").into()),
    };
    let axes: Vec<usize> = match &axes_attr {
        Some(v) => v.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].contains(a) {
            return Err(format!("axes repeats axis {a}").into());
        }
    }
    let inputs: Vec<usize> = axes.iter().map(|&a| extent(&x, a)).collect::<Result<_, _>>()?;
    let k = axes.len();
    let (has_scales, has_sizes) = (present(cx, n, 2)?, present(cx, n, 3)?);
    let (scales, outs): (Vec<f64>, Vec<usize>) = match (has_scales, has_sizes) {
        (true, true) => return Err("only one of scales and sizes may be given".into()),
        (false, false) => return Err("one of scales and sizes is required".into()),
        (true, false) => {
            let s = cx.static_f64s(n, 2)?.unwrap_or_default();
            if s.len() != k {
                return Err(format!("scales has {} entries for {k} axes", s.len()).into());
            }
            let outs = s
                .iter()
                .zip(&inputs)
                .map(|(&s, &i)| scaled(s, i))
                .collect::<Result<_, _>>()?;
            (s, outs)
        }
        (false, true) => {
            let sz = cx.static_ints(n, 3)?.unwrap_or_default();
            if sz.len() != k {
                return Err(format!("sizes has {} entries for {k} axes", sz.len()).into());
            }
            if sz.iter().any(|&v| v < 0) {
                return Err(format!("sizes {sz:?} has a negative entry").into());
            }
            if inputs.contains(&0) {
                return unsupported("Resize by sizes of an empty axis is not supported");
            }
            let ratios: Vec<f64> = sz
                .iter()
                .zip(&inputs)
                .map(|(&o, &i)| o as f64 / i as f64)
                .collect();
            match policy.as_str() {
                "stretch" => (ratios, sz.iter().map(|&v| v as usize).collect()),
                "not_larger" | "not_smaller" => {
                    let s = if policy == "not_larger" {
                        ratios.iter().copied().fold(f64::INFINITY, f64::min)
                    } else {
                        ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                    };
                    let outs = inputs.iter().map(|&i| (s * i as f64 + 0.5) as usize).collect();
                    (vec![s; k], outs)
                }
                p => return Err(format!("keep_aspect_ratio_policy {p:?} is not defined").into()),
            }
        }
    };
    let roi: Vec<(f64, f64)> = if coord == Coord::TfCropAndResize {
        let roi = cx
            .static_f64s(n, 1)?
            .ok_or("roi is required with tf_crop_and_resize")?;
        if roi.len() != 2 * k {
            return Err(format!("roi has {} entries for {k} axes", roi.len()).into());
        }
        (0..k).map(|i| (roi[i], roi[k + i])).collect()
    } else {
        vec![(0.0, 1.0); k]
    };
    let specs: Vec<(usize, AxisSpec)> = (0..k)
        .map(|i| {
            (
                axes[i],
                AxisSpec {
                    input: inputs[i],
                    out: outs[i],
                    scale: scales[i],
                    roi: roi[i],
                },
            )
        })
        .collect();
    let method = Method {
        kernel,
        coord,
        exclude,
        extrapolation,
    };
    Ok(vec![resample(cx, n, &x, &method, &specs)?])
}

/// Upsample and Resize-10: scales for every axis, asymmetric coordinates,
/// nearest rounding down (these opsets define nearest by repetition).
fn legacy(cx: &mut Cx, n: &NodeCx, x: &Val, mode: &str, scales: &[f64]) -> Result<Val, NodeError> {
    if scales.len() != x.rank() {
        return Err(format!("scales has {} entries for rank {}", scales.len(), x.rank()).into());
    }
    let kernel = match mode {
        "nearest" => {
            if scales.iter().any(|&s| s < 1.0) {
                return unsupported(format!(
                    "{} nearest with a scale below 1 ({scales:?}) is not supported",
                    n.node.op_type
                ));
            }
            Kernel::Nearest(Rounding::Floor)
        }
        "linear" => Kernel::Linear { antialias: false },
        m => return Err(format!("mode {m:?} is not defined").into()),
    };
    let mut specs = Vec::new();
    for (a, &s) in scales.iter().enumerate() {
        let input = extent(x, a)?;
        specs.push((
            a,
            AxisSpec {
                input,
                out: scaled(s, input)?,
                scale: s,
                roi: (0.0, 1.0),
            },
        ));
    }
    let method = Method {
        kernel,
        coord: Coord::Asymmetric,
        exclude: false,
        extrapolation: 0.0,
    };
    resample(cx, n, x, &method, &specs)
}

/// Upsample-7 (scales attribute) and -9 (scales input).
fn upsample(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let mode = n.string("mode", "nearest")?;
    let scales: Vec<f64> = if n.opset < 7 {
        return unsupported(format!("Upsample opset {} is not supported", n.opset));
    } else if n.opset < 9 {
        n.opt_floats("scales")?
            .ok_or("scales is required")?
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        cx.static_f64s(n, 1)?.ok_or("scales is required")?
    };
    Ok(vec![legacy(cx, n, &x, &mode, &scales)?])
}

/// Centre crop or zero pad to `shape` along `axes`: a slice where the
/// target is smaller, a concat with zero blocks where it is larger (the odd
/// element goes after, as the spec's reference does).
fn center_crop_pad(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let r = x.rank();
    let shape = cx.static_ints(n, 1)?.ok_or("shape is required")?;
    let axes: Vec<usize> = match n.opt_ints("axes")? {
        Some(v) => v.iter().map(|&a| axis(a, r)).collect::<Result<_, _>>()?,
        None => (0..r).collect(),
    };
    if shape.len() != axes.len() {
        return Err(format!("shape has {} entries for {} axes", shape.len(), axes.len()).into());
    }
    let mut y = x;
    for (&a, &target) in axes.iter().zip(&shape) {
        if target < 0 {
            return Err(format!("shape entry {target} is negative").into());
        }
        let dim = extent(&y, a)? as i64;
        if target < dim {
            let start = (dim - target) / 2;
            y = slice_axis(cx, &y, a, start, start + target, 1)?;
        } else if target > dim {
            let before = (target - dim) / 2;
            let after = target - dim - before;
            let zero = cx.scalar(0.0, y.dtype());
            let mut parts = Vec::new();
            for count in [before, after] {
                let mut dims = y.dims().to_vec();
                dims[a] = Dim::constant(count);
                parts.push(expand_to(cx, &zero, dims)?);
            }
            let body = y.clone();
            let pieces: Vec<Val> = if before > 0 {
                vec![parts[0].clone(), body, parts[1].clone()]
            } else {
                vec![body, parts[1].clone()]
            };
            y = cx.op(Op::Concat(Concat { axis: a as i64 }), &pieces)?;
        }
    }
    Ok(vec![y])
}
