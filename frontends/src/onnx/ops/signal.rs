//! Signal processing ops. With static extents each is a product with a
//! matrix known at import time: DFT and STFT multiply by cos/sin tables
//! (complex values as a trailing axis of [re, im]), LRN by a band of ones
//! over the channels, Col2Im by the 0/1 matrix of where each column entry
//! lands, Det sums the signed products of the Leibniz expansion. Windows
//! and MelWeightMatrix are constants computed here.

use optc_ir::ops::{BinaryKind as B, Gather, MatMul, Reduce, ReduceKind as K};
use optc_ir::{DType, Dim, Op, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::transpose_to;
use super::{axis, binary, dtype_attr, want_float, with_scalar, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[
    ("DFT", dft),
    ("STFT", stft),
    ("HannWindow", |cx, n| window(cx, n, Window::Hann)),
    ("HammingWindow", |cx, n| window(cx, n, Window::Hamming)),
    ("BlackmanWindow", |cx, n| window(cx, n, Window::Blackman)),
    ("MelWeightMatrix", mel_weight_matrix),
    ("LRN", lrn),
    ("Col2Im", col2im),
    ("Det", det),
];

/// Import-time matrices larger than this many entries are refused.
const TABLE_LIMIT: usize = super::IMPORT_TABLE_LIMIT as usize;

/// A dim that must be a known constant for the decomposition.
fn const_dim(d: &Dim, what: &str) -> Result<usize, NodeError> {
    match d.as_const() {
        Some(v) if v >= 0 => Ok(v as usize),
        _ => unsupported(format!("{what} must have a static extent, got {d}")),
    }
}

/// One integer from a scalar (or one-element) input known at import time.
fn static_scalar(cx: &Cx, n: &NodeCx, i: usize) -> Result<Option<i64>, NodeError> {
    match cx.static_ints(n, i)? {
        None => Ok(None),
        Some(v) if v.len() == 1 => Ok(Some(v[0])),
        Some(v) => Err(format!("input {i} must be a scalar, got {} values", v.len()).into()),
    }
}

fn table_size(rows: usize, cols: usize) -> Result<usize, NodeError> {
    match rows.checked_mul(cols) {
        Some(s) if s <= TABLE_LIMIT => Ok(s),
        _ => unsupported(format!(
            "a {rows}x{cols} import-time matrix is larger than optc builds"
        )),
    }
}

/// The dtype the products run in: f64 stays, narrower floats widen to f32.
fn compute_dtype(x: &Val) -> DType {
    if x.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// `(k·n mod l) / l · 2π`, reduced first so large products stay exact.
fn angle(k: usize, n: usize, l: usize) -> f64 {
    let r = ((k as u128 * n as u128) % l as u128) as f64;
    2.0 * std::f64::consts::PI * r / l as f64
}

/// The DFT of `x` (`[..., N at axis, ..., C]` with C = 1 real or 2
/// complex) along `ax`, of length `len`: one matmul of the `[N·C]` rows
/// with an import-time `[N·C, K·C']` table.
fn dft_core(
    cx: &mut Cx,
    x: &Val,
    ax: usize,
    len: usize,
    inverse: bool,
    onesided: bool,
) -> Result<Val, NodeError> {
    let r = x.rank();
    if r < 2 || ax + 1 >= r {
        return Err(format!("the DFT axis {ax} must not be the last axis of a rank-{r} input").into());
    }
    if len == 0 {
        return Err("dft_length must be positive".into());
    }
    let c = const_dim(&x.dims()[r - 1], "the DFT input's last axis")?;
    if c != 1 && c != 2 {
        return Err(format!("the DFT input's last axis must be 1 (real) or 2 (complex), got {c}").into());
    }
    let n = const_dim(&x.dims()[ax], "the DFT axis")?;
    // Output bins and components.
    let (k_out, c_out) = match (inverse, onesided) {
        (false, true) => (len / 2 + 1, 2),
        (true, true) => (len, 1),
        _ => (len, 2),
    };
    let rows = n * c;
    let cols = k_out * c_out;
    let mut w = vec![0f64; table_size(rows, cols)?];
    let mut set =
        |i: usize, ci: usize, k: usize, co: usize, v: f64| w[(i * c + ci) * cols + k * c_out + co] = v;
    if inverse && onesided {
        // irfft: the Hermitian completion of bins 0..=len/2; the imaginary
        // parts of DC and Nyquist drop out (their sines vanish).
        let scale = 1.0 / len as f64;
        for k in 0..n.min(len / 2 + 1) {
            let wk = if k == 0 || 2 * k == len { 1.0 } else { 2.0 };
            for t in 0..len {
                let th = angle(k, t, len);
                set(k, 0, t, 0, wk * scale * th.cos());
                if c == 2 {
                    set(k, 1, t, 0, -wk * scale * th.sin());
                }
            }
        }
    } else {
        // Forward e^{-iθ}; inverse e^{+iθ}/len.
        let (sgn, scale) = if inverse {
            (1.0, 1.0 / len as f64)
        } else {
            (-1.0, 1.0)
        };
        for i in 0..n.min(len) {
            for k in 0..k_out {
                let th = angle(k, i, len);
                let (co, si) = (scale * th.cos(), sgn * scale * th.sin());
                // (xr + i·xi)(cos + i·si) = xr·cos - xi·si + i(xr·si + xi·cos)
                set(i, 0, k, 0, co);
                set(i, 0, k, 1, si);
                if c == 2 {
                    set(i, 1, k, 0, -si);
                    set(i, 1, k, 1, co);
                }
            }
        }
    }
    let ct = compute_dtype(x);
    let table = cx.konst(Tensor::from_f64(ct, &[rows, cols], &w));
    // [others..., N, C] → [others..., N·C] · table → [others..., K, C'].
    let others: Vec<usize> = (0..r - 1).filter(|&i| i != ax).collect();
    let mut perm: Vec<i64> = others.iter().map(|&i| i as i64).collect();
    perm.extend([ax as i64, r as i64 - 1]);
    let xt = transpose_to(cx, x, perm.clone())?;
    let xt = cx.cast(&xt, ct)?;
    let mut flat: Vec<Dim> = others.iter().map(|&i| x.dims()[i].clone()).collect();
    flat.push(Dim::constant(rows as i64));
    let xt = cx.reshape(&xt, flat.clone())?;
    let y = cx.op(Op::MatMul(MatMul), &[xt, table])?;
    flat.pop();
    flat.extend([Dim::constant(k_out as i64), Dim::constant(c_out as i64)]);
    let y = cx.reshape(&y, flat)?;
    let y = cx.cast(&y, x.dtype())?;
    let mut inv = vec![0i64; r];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    transpose_to(cx, &y, inv)
}

fn dft(cx: &mut Cx, n: &NodeCx) -> R {
    let inverse = n.int("inverse", 0)? != 0;
    let onesided = n.int("onesided", 0)? != 0;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    // Opset 20 moved the axis from an attribute (default 1) to input 2
    // (default -2).
    let a = if n.opset < 20 {
        n.int("axis", 1)?
    } else {
        static_scalar(cx, n, 2)?.unwrap_or(-2)
    };
    if x.rank() < 2 {
        return Err(format!(
            "the DFT input must have a batch and a real/imaginary axis, got {}",
            x.ty
        )
        .into());
    }
    let ax = axis(a, x.rank())?;
    if ax + 1 == x.rank() {
        return Err("the DFT axis must not be the last (real/imaginary) axis".into());
    }
    let len = match static_scalar(cx, n, 1)? {
        Some(l) if l > 0 => l as usize,
        Some(l) => return Err(format!("dft_length must be positive, got {l}").into()),
        None => {
            let e = const_dim(&x.dims()[ax], "the DFT axis")?;
            if inverse && onesided {
                if e == 0 {
                    return Err("an inverse one-sided DFT of zero bins".into());
                }
                2 * (e - 1)
            } else {
                e
            }
        }
    };
    Ok(vec![dft_core(cx, &x, ax, len, inverse, onesided)?])
}

fn stft(cx: &mut Cx, n: &NodeCx) -> R {
    let onesided = n.int("onesided", 1)? != 0;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    if x.rank() != 3 {
        return Err(format!("the STFT signal must be [batch, length, 1 or 2], got {}", x.ty).into());
    }
    let step = static_scalar(cx, n, 1)?.ok_or("frame_step is required")?;
    if step <= 0 {
        return Err(format!("frame_step must be positive, got {step}").into());
    }
    let win = cx.opt_input(n, 2)?;
    let total = const_dim(&x.dims()[1], "the STFT signal length")?;
    let wlen = match &win {
        Some(w) if w.rank() == 1 => Some(const_dim(&w.dims()[0], "the STFT window")?),
        Some(w) => return Err(format!("the window must be 1-D, got {}", w.ty).into()),
        None => None,
    };
    let len = match (static_scalar(cx, n, 3)?, wlen) {
        (Some(l), Some(w)) if l != w as i64 => {
            return Err(format!("frame_length {l} differs from the window length {w}").into())
        }
        (Some(l), _) if l <= 0 => return Err(format!("frame_length must be positive, got {l}").into()),
        (Some(l), _) => l as usize,
        (None, Some(w)) => w,
        (None, None) => total,
    };
    if len > total || len == 0 {
        return Err(format!("frame_length {len} must be in 1..={total} (the signal length)").into());
    }
    let frames = 1 + (total - len) / step as usize;
    table_size(frames, len)?;
    let idx: Vec<i64> = (0..frames)
        .flat_map(|f| (0..len).map(move |j| (f * step as usize + j) as i64))
        .collect();
    let idx = cx.konst(Tensor::from_i64(DType::I64, &[frames, len], &idx));
    // [batch, frames, len, C]
    let mut fr = cx.op(Op::Gather(Gather { axis: 1 }), &[x.clone(), idx])?;
    if let Some(w) = win {
        let w = cx.cast(&w, x.dtype())?;
        let w = cx.reshape(
            &w,
            vec![
                Dim::constant(1),
                Dim::constant(1),
                Dim::constant(len as i64),
                Dim::constant(1),
            ],
        )?;
        fr = binary(cx, B::Mul, &fr, &w)?;
    }
    Ok(vec![dft_core(cx, &fr, 2, len, false, onesided)?])
}

#[derive(Clone, Copy)]
enum Window {
    Hann,
    Hamming,
    Blackman,
}

/// A window of `size` points, computed at import time.
fn window(cx: &mut Cx, n: &NodeCx, kind: Window) -> R {
    let periodic = n.int("periodic", 1)? != 0;
    let dt = dtype_attr(n.int("output_datatype", 1)?)?;
    let size = static_scalar(cx, n, 0)?.ok_or("size is required")?;
    if size < 0 {
        return Err(format!("the window size must not be negative, got {size}").into());
    }
    table_size(size as usize, 1)?;
    let denom = (if periodic { size } else { size - 1 }) as f64;
    let tau = 2.0 * std::f64::consts::PI;
    let v: Vec<f64> = (0..size)
        .map(|i| {
            let t = tau * i as f64 / denom;
            match kind {
                Window::Hann => (t / 2.0).sin().powi(2),
                Window::Hamming => {
                    let a = 25.0 / 46.0;
                    a - (1.0 - a) * t.cos()
                }
                Window::Blackman => 0.42 - 0.5 * t.cos() + 0.08 * (2.0 * t).cos(),
            }
        })
        .collect();
    Ok(vec![cx.konst(Tensor::from_f64(dt, &[size as usize], &v))])
}

/// The `[dft_length/2 + 1, num_mel_bins]` triangular filter bank, computed
/// at import time as the reference does (bin edges on the mel scale,
/// floored to DFT bins).
fn mel_weight_matrix(cx: &mut Cx, n: &NodeCx) -> R {
    let dt = dtype_attr(n.int("output_datatype", 1)?)?;
    let int = |i: usize| -> Result<i64, NodeError> {
        static_scalar(cx, n, i)?.ok_or_else(|| NodeError::Invalid(format!("input {i} is required")))
    };
    let (bins, dft_len, rate) = (int(0)?, int(1)?, int(2)?);
    let float = |i: usize| -> Result<f64, NodeError> {
        match cx.static_f64s(n, i)? {
            Some(v) if v.len() == 1 => Ok(v[0]),
            _ => Err(NodeError::Invalid(format!("input {i} must be a scalar"))),
        }
    };
    let (lo, hi) = (float(3)?, float(4)?);
    if bins <= 0 || dft_len <= 0 || rate <= 0 {
        return Err("num_mel_bins, dft_length and sample_rate must be positive".into());
    }
    let spec = (dft_len / 2 + 1) as usize;
    let m = bins as usize;
    table_size(spec, m)?;
    let mel = |hz: f64| 2595.0 * (hz / 700.0).ln_1p() / 10f64.ln();
    let (lo_m, hi_m) = (mel(lo), mel(hi));
    let step = (hi_m - lo_m) / (m + 2) as f64;
    let edges: Vec<i64> = (0..m + 2)
        .map(|i| {
            let hz = 700.0 * ((i as f64 * step + lo_m) / 2595.0 * 10f64.ln()).exp_m1();
            (((dft_len + 1) as f64 * hz) / rate as f64).floor() as i64
        })
        .collect();
    if edges.iter().any(|&e| e < 0 || e as usize >= spec) {
        return Err(format!("mel edges {edges:?} fall outside the {spec} spectrogram bins").into());
    }
    let mut w = vec![0f64; spec * m];
    let mut put = |j: i64, i: usize, v: f64| -> Result<(), NodeError> {
        if j < 0 || j as usize >= spec {
            return Err(format!("mel bin edge {j} falls outside the {spec} spectrogram bins").into());
        }
        w[j as usize * m + i] = v;
        Ok(())
    };
    for i in 0..m {
        let (l, c, h) = (edges[i], edges[i + 1], edges[i + 2]);
        if c == l {
            put(c, i, 1.0)?;
        } else {
            for j in l..=c {
                put(j, i, (j - l) as f64 / (c - l) as f64)?;
            }
        }
        if h > c {
            for j in c..h {
                put(j, i, (h - j) as f64 / (h - c) as f64)?;
            }
        }
    }
    Ok(vec![cx.konst(Tensor::from_f64(dt, &[spec, m], &w))])
}

/// `x / (bias + alpha/size · Σ_window x²)^beta`, the window sum over
/// channels as a `[C, C]` band matrix times `[N, C, rest]`.
fn lrn(cx: &mut Cx, n: &NodeCx) -> R {
    let alpha = n.float("alpha", 1e-4)?;
    let beta = n.float("beta", 0.75)?;
    let bias = n.float("bias", 1.0)?;
    let size = n.req_int("size")?;
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    if x.rank() < 2 {
        return Err(format!("LRN needs [N, C, ...], got {}", x.ty).into());
    }
    if size <= 0 {
        return Err(format!("size must be positive, got {size}").into());
    }
    let c = const_dim(&x.dims()[1], "the LRN channel axis")?;
    table_size(c, c)?;
    let lo = (size - 1) / 2;
    let hi = size - 1 - lo;
    let mut band = vec![0f64; c * c];
    for i in 0..c as i64 {
        for j in (i - lo).max(0)..=(i + hi).min(c as i64 - 1) {
            band[i as usize * c + j as usize] = 1.0;
        }
    }
    let ct = compute_dtype(&x);
    let band = cx.konst(Tensor::from_f64(ct, &[c, c], &band));
    let xc = cx.cast(&x, ct)?;
    let sq = binary(cx, B::Mul, &xc, &xc)?;
    let dims = x.dims().to_vec();
    let rest = super::shape::product(&dims[2..])?;
    let sq = cx.reshape(&sq, vec![dims[0].clone(), dims[1].clone(), rest])?;
    let s = cx.op(Op::MatMul(MatMul), &[band, sq])?;
    let s = cx.reshape(&s, dims)?;
    let s = with_scalar(cx, B::Mul, &s, alpha / size as f64)?;
    let s = with_scalar(cx, B::Add, &s, bias)?;
    let den = with_scalar(cx, B::Pow, &s, beta)?;
    let y = binary(cx, B::Div, &xc, &den)?;
    Ok(vec![cx.cast(&y, x.dtype())?])
}

/// Row-major multi-index of `flat` in `shape`.
fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut v = vec![0; shape.len()];
    for (i, &s) in shape.iter().enumerate().rev() {
        v[i] = flat % s.max(1);
        flat /= s.max(1);
    }
    v
}

/// Scatter-adds `[N, C·∏block, L]` column blocks into `[N, C, image...]`:
/// a matmul with the 0/1 matrix mapping (block offset, block) → pixel.
fn col2im(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    let image = cx.static_ints(n, 1)?.ok_or("image_shape is required")?;
    let block = cx.static_ints(n, 2)?.ok_or("block_shape is required")?;
    let d = image.len();
    if d == 0 || block.len() != d {
        return Err(format!(
            "image_shape {image:?} and block_shape {block:?} must be non-empty and of one length"
        )
        .into());
    }
    let dil = n.opt_ints("dilations")?.unwrap_or_else(|| vec![1; d]);
    let strides = n.opt_ints("strides")?.unwrap_or_else(|| vec![1; d]);
    let pads = n.opt_ints("pads")?.unwrap_or_else(|| vec![0; 2 * d]);
    if dil.len() != d || strides.len() != d || pads.len() != 2 * d {
        return Err("dilations, strides and pads must match the image rank".into());
    }
    if image
        .iter()
        .chain(&block)
        .chain(&dil)
        .chain(&strides)
        .any(|&v| v <= 0)
        || pads.iter().any(|&p| p < 0)
    {
        return Err(
            "image_shape, block_shape, dilations and strides must be positive, pads not negative".into(),
        );
    }
    if x.rank() != 3 {
        return Err(format!("Col2Im input must be [N, C·∏block, L], got {}", x.ty).into());
    }
    // Bounded so the shape arithmetic below cannot overflow.
    if image
        .iter()
        .chain(&block)
        .chain(&dil)
        .chain(&strides)
        .chain(&pads)
        .any(|&v| v > 1 << 24)
    {
        return unsupported("Col2Im with an extent, pad, stride or dilation above 2^24");
    }
    let kp = block
        .iter()
        .try_fold(1i64, |a, &b| a.checked_mul(b))
        .filter(|&k| k <= TABLE_LIMIT as i64)
        .ok_or_else(|| NodeError::Unsupported(format!("Col2Im block {block:?} is too large")))?;
    let ch = const_dim(&x.dims()[1], "the Col2Im channel axis")? as i64;
    let l = const_dim(&x.dims()[2], "the Col2Im block axis")?;
    if ch % kp != 0 {
        return Err(format!("input dim 1 ({ch}) is not a multiple of the block size {kp}").into());
    }
    let cols: Vec<i64> = (0..d)
        .map(|i| (image[i] + pads[i] + pads[i + d] - (dil[i] * (block[i] - 1) + 1)) / strides[i] + 1)
        .collect();
    if cols.iter().any(|&c| c <= 0) || cols.iter().try_fold(1i64, |a, &c| a.checked_mul(c)) != Some(l as i64)
    {
        return Err(format!("input dim 2 ({l}) differs from the number of blocks {cols:?}").into());
    }
    let img_u: Vec<usize> = image.iter().map(|&v| v as usize).collect();
    let blk_u: Vec<usize> = block.iter().map(|&v| v as usize).collect();
    let col_u: Vec<usize> = cols.iter().map(|&v| v as usize).collect();
    let p = img_u
        .iter()
        .try_fold(1usize, |a, &v| a.checked_mul(v))
        .ok_or("image_shape is too large")?;
    let rows = (kp as usize)
        .checked_mul(l)
        .ok_or("the Col2Im input is too large")?;
    let mut m = vec![0f64; table_size(rows, p)?];
    for k in 0..kp as usize {
        let off = unravel(k, &blk_u);
        for b in 0..l {
            let pos = unravel(b, &col_u);
            let mut flat = 0i64;
            let mut inside = true;
            for i in 0..d {
                let at = pos[i] as i64 * strides[i] - pads[i] + off[i] as i64 * dil[i];
                inside &= (0..image[i]).contains(&at);
                flat = flat * image[i] + at;
            }
            if inside {
                m[(k * l + b) * p + flat as usize] += 1.0;
            }
        }
    }
    let ct = compute_dtype(&x);
    let m = cx.konst(Tensor::from_f64(ct, &[rows, p], &m));
    let c = Dim::constant(ch / kp);
    let n0 = x.dims()[0].clone();
    let xc = cx.cast(&x, ct)?;
    let xr = cx.reshape(&xc, vec![n0.clone(), c.clone(), Dim::constant(rows as i64)])?;
    let y = cx.op(Op::MatMul(MatMul), &[xr, m])?;
    let mut out = vec![n0, c];
    out.extend(image.iter().map(|&v| Dim::constant(v)));
    let y = cx.reshape(&y, out)?;
    Ok(vec![cx.cast(&y, x.dtype())?])
}

/// Permutations of `0..n` with their signs (Heap's order is not needed:
/// plain recursion, sign from the inversion count).
fn permutations(n: usize) -> Vec<(Vec<usize>, f64)> {
    fn go(prefix: &mut Vec<usize>, n: usize, out: &mut Vec<(Vec<usize>, f64)>) {
        if prefix.len() == n {
            let inv = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .filter(|&(i, j)| prefix[i] > prefix[j])
                .count();
            out.push((prefix.clone(), if inv % 2 == 0 { 1.0 } else { -1.0 }));
            return;
        }
        for v in 0..n {
            if !prefix.contains(&v) {
                prefix.push(v);
                go(prefix, n, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    go(&mut Vec::new(), n, &mut out);
    out
}

/// The largest matrix Det expands (5! = 120 products).
const DET_MAX: usize = 5;

/// Leibniz: gather the n entries of each permutation from the flattened
/// matrix, multiply them, and take the signed sum (a matmul with ±1).
fn det(cx: &mut Cx, n: &NodeCx) -> R {
    let x = cx.input(n, 0)?;
    want_float(n, &x)?;
    let r = x.rank();
    if r < 2 || x.dims()[r - 1] != x.dims()[r - 2] {
        return Err(format!("Det needs [..., M, M], got {}", x.ty).into());
    }
    let m = const_dim(&x.dims()[r - 1], "the Det matrix")?;
    if m == 0 || m > DET_MAX {
        return unsupported(format!(
            "Det of {m}x{m} matrices (optc expands 1x1 to {DET_MAX}x{DET_MAX})"
        ));
    }
    let perms = permutations(m);
    let idx: Vec<i64> = perms
        .iter()
        .flat_map(|(p, _)| p.iter().enumerate().map(move |(i, &j)| (i * m + j) as i64))
        .collect();
    let signs: Vec<f64> = perms.iter().map(|(_, s)| *s).collect();
    let ct = compute_dtype(&x);
    let xc = cx.cast(&x, ct)?;
    let mut flat: Vec<Dim> = x.dims()[..r - 2].to_vec();
    flat.push(Dim::constant((m * m) as i64));
    let xf = cx.reshape(&xc, flat)?;
    let idx = cx.konst(Tensor::from_i64(DType::I64, &[perms.len(), m], &idx));
    // [..., m!, m] → products [..., m!] → signed sum [...].
    let picked = cx.op(Op::Gather(Gather { axis: r as i64 - 2 }), &[xf, idx])?;
    let prod = cx.op(
        Op::Reduce(Reduce {
            kind: K::Prod,
            axes: vec![r as i64 - 1],
            keepdims: false,
        }),
        &[picked],
    )?;
    let signs = cx.konst(Tensor::from_f64(ct, &[perms.len()], &signs));
    let y = cx.op(Op::MatMul(MatMul), &[prod, signs])?;
    Ok(vec![cx.cast(&y, x.dtype())?])
}
