//! `ConvTranspose` as the IR `conv`: the input with `stride − 1` zeros
//! inserted between elements, padded by `dilation·(kernel − 1)`, convolved
//! (stride 1) with the spatially flipped kernel whose in/out channels are
//! swapped per group; the ONNX pads then select a window of that full
//! result (negative conv padding becomes a slice, output beyond it zeros).

use optc_ir::ops::{Concat, Conv, Unsqueeze, Window};
use optc_ir::{Dim, Op};

use super::super::import::{Cx, NodeCx, NodeError, Val};
use super::shape::{expand_to, slice_axis, transpose_to};
use super::{static_dim, want_float, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("ConvTranspose", conv_transpose)];

/// Inserts `s − 1` zeros between the elements along axis `a`
/// (length `n` → `(n − 1)·s + 1`).
fn dilate(cx: &mut Cx, x: &Val, a: usize, s: i64) -> Result<Val, NodeError> {
    if s == 1 {
        return Ok(x.clone());
    }
    let n = static_dim(&x.dims()[a], "spatial extent")?;
    let y = cx.op(
        Op::Unsqueeze(Unsqueeze {
            axes: vec![a as i64 + 1],
        }),
        std::slice::from_ref(x),
    )?;
    let mut zd = y.dims().to_vec();
    zd[a + 1] = Dim::constant(s - 1);
    let z = cx.scalar(0.0, x.dtype());
    let z = expand_to(cx, &z, zd)?;
    let y = cx.op(Op::Concat(Concat { axis: a as i64 + 1 }), &[y, z])?;
    let mut flat = x.dims().to_vec();
    flat[a] = Dim::constant(n * s);
    let y = cx.reshape(&y, flat)?;
    slice_axis(cx, &y, a, 0, (n - 1) * s + 1, 1)
}

fn conv_transpose(cx: &mut Cx, n: &NodeCx) -> R {
    let (x, w) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let bias = cx.opt_input(n, 2)?;
    want_float(n, &x)?;
    let r = x.rank();
    if r < 3 || w.rank() != r {
        return Err(format!("X {} and W {} must have the same rank >= 3", x.ty, w.ty).into());
    }
    let k = r - 2;
    let group = n.int("group", 1)?;
    let c = static_dim(&x.dims()[1], "channel count")?;
    let wd: Vec<i64> = w
        .dims()
        .iter()
        .map(|d| static_dim(d, "kernel shape"))
        .collect::<Result<_, _>>()?;
    if group < 1 || (c > 0 && group > c) || c % group != 0 || wd[0] != c || wd.len() < 3 {
        return Err(format!("W {} does not fit {c} input channels in {group} groups", w.ty).into());
    }
    let kernel = wd[2..].to_vec();
    if let Some(ks) = n.opt_ints("kernel_shape")? {
        if ks != kernel {
            return Err(format!("kernel_shape {ks:?} differs from W {}", w.ty).into());
        }
    }
    let strides = n.opt_ints("strides")?.unwrap_or_else(|| vec![1; k]);
    let dilations = n.opt_ints("dilations")?.unwrap_or_else(|| vec![1; k]);
    let out_pad = n.opt_ints("output_padding")?.unwrap_or_else(|| vec![0; k]);
    let pads_attr = n.opt_ints("pads")?;
    let out_shape = n.opt_ints("output_shape")?;
    let auto = n.string("auto_pad", "NOTSET")?;
    if strides.len() != k || dilations.len() != k || out_pad.len() != k {
        return Err(format!("strides, dilations and output_padding need {k} entries").into());
    }
    // Bounded so the extent arithmetic below cannot overflow.
    const MAX: i64 = 1 << 31;
    let bad = |v: &i64, lo: i64| !(lo..=MAX).contains(v);
    if strides.iter().chain(&dilations).chain(&kernel).any(|v| bad(v, 1)) || out_pad.iter().any(|v| bad(v, 0))
    {
        return Err("kernel, strides and dilations must be in 1..2^31, output_padding in 0..2^31".into());
    }
    let in_sp: Vec<i64> = x.dims()[2..]
        .iter()
        .map(|d| static_dim(d, "spatial extent"))
        .collect::<Result<_, _>>()?;
    if in_sp.iter().any(|v| bad(v, 0)) || wd.iter().any(|v| bad(v, 0)) {
        return Err(format!("extents of X {} and W {} must be below 2^31", x.ty, w.ty).into());
    }
    // Full (unpadded) output extent per axis.
    let full: Vec<i64> = (0..k)
        .map(|i| strides[i] * (in_sp[i] - 1) + dilations[i] * (kernel[i] - 1) + 1)
        .collect();
    // pb/pe: how many of the full output's positions are cut at each end
    // (negative: extra zero positions added).
    let (pb, len): (Vec<i64>, Vec<i64>) = {
        let target = match (&out_shape, auto.as_str()) {
            (Some(s), _) => {
                let s = if s.len() == k + 2 {
                    s[2..].to_vec()
                } else {
                    s.clone()
                };
                if s.len() != k || s.iter().any(|v| bad(v, 1)) {
                    return Err(format!("output_shape {s:?} needs {k} entries in 1..2^31").into());
                }
                Some(s)
            }
            (None, "SAME_UPPER" | "SAME_LOWER") => Some((0..k).map(|i| in_sp[i] * strides[i]).collect()),
            _ => None,
        };
        match target {
            Some(t) => {
                let mut pb = Vec::new();
                for i in 0..k {
                    let total = full[i] + out_pad[i] - t[i];
                    let half = total.div_euclid(2);
                    pb.push(if auto == "SAME_UPPER" { half } else { total - half });
                }
                (pb, t)
            }
            None => {
                let pads = match auto.as_str() {
                    "NOTSET" => pads_attr.unwrap_or_else(|| vec![0; 2 * k]),
                    "VALID" => vec![0; 2 * k],
                    a => return Err(format!("auto_pad {a:?} is not defined").into()),
                };
                if pads.len() != 2 * k || pads.iter().any(|p| bad(p, 0)) {
                    return Err(format!("pads {pads:?} must be {} values in 0..2^31", 2 * k).into());
                }
                let len = (0..k)
                    .map(|i| full[i] + out_pad[i] - pads[i] - pads[k + i])
                    .collect();
                (pads[..k].to_vec(), len)
            }
        }
    };
    if len.iter().any(|&l| l < 1) {
        return Err(format!("output extents {len:?} must be positive").into());
    }
    // Input: zeros between elements.
    let mut xz = x.clone();
    for (i, &s) in strides.iter().enumerate() {
        xz = dilate(cx, &xz, i + 2, s)?;
    }
    // Kernel [C, M/g, k…] → [g, C/g, M/g, k…] → [g, M/g, C/g, k…] → [M, C/g, k…], flipped.
    let (cg, mg) = (c / group, wd[1]);
    let mut gd = vec![Dim::constant(group), Dim::constant(cg), Dim::constant(mg)];
    gd.extend(kernel.iter().map(|&v| Dim::constant(v)));
    let wt = cx.reshape(&w, gd)?;
    let mut perm: Vec<i64> = vec![0, 2, 1];
    perm.extend(3..(k as i64 + 3));
    let wt = transpose_to(cx, &wt, perm)?;
    let mut md = vec![Dim::constant(group * mg), Dim::constant(cg)];
    md.extend(kernel.iter().map(|&v| Dim::constant(v)));
    let mut wt = cx.reshape(&wt, md)?;
    for (i, &kk) in kernel.iter().enumerate() {
        if kk > 1 {
            wt = slice_axis(cx, &wt, i + 2, -1, -(1 << 40), -1)?;
        }
    }
    // Conv padding: the full result sits at [P, P + full) with
    // P = dilation·(kernel − 1); the wanted window starts at pb.
    let mut conv_pads = vec![0; 2 * k];
    let mut crop = vec![(0, 0); k];
    for i in 0..k {
        let p = dilations[i] * (kernel[i] - 1);
        let lo = p - pb[i];
        let hi = pb[i] + len[i] - full[i] + p;
        conv_pads[i] = lo.max(0);
        conv_pads[k + i] = hi.max(0);
        crop[i] = ((-lo).max(0), (-hi).max(0));
    }
    let window = Window {
        kernel: kernel.clone(),
        strides: vec![1; k],
        dilations,
        pads: conv_pads,
    };
    let mut args = vec![xz, wt];
    args.extend(bias);
    let mut y = cx.op(Op::Conv(Conv { window, group }), &args)?;
    for (i, &(lo, hi)) in crop.iter().enumerate() {
        if lo > 0 || hi > 0 {
            let e = static_dim(&y.dims()[i + 2], "output extent")?;
            y = slice_axis(cx, &y, i + 2, lo, e - hi, 1)?;
        }
    }
    Ok(vec![y])
}
