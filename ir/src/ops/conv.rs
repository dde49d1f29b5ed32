//! Convolution and pooling over the trailing spatial axes of an
//! `[N, C, d₁, …, dₖ]` tensor (any k ≥ 1), the ONNX/PyTorch layout.
//!
//! Shared window geometry: along each spatial axis, `kernel`, `stride`,
//! `dilation`, and explicit padding `pads = [begin₁ … beginₖ, end₁ … endₖ]`.
//! Output extent: `(d + begin + end − dilation·(kernel − 1) − 1) / stride + 1`,
//! rounded down (up with `ceil_mode` for pooling, where a window must still
//! start inside the input or its begin padding). Accumulation is in f64,
//! rounded once to the output dtype.

use super::attrs::{Attr, AttrReader};
use super::index::strides;
use super::{same_dtype, want_float, EvalCx, OpImpl};
use crate::dim::{Dim, Shape, TensorType};
use crate::tensor::Tensor;

/// Window geometry of one op over `k` spatial axes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    /// `[begin₁ … beginₖ, end₁ … endₖ]`.
    pub pads: Vec<i64>,
}

impl Window {
    fn read(r: &mut AttrReader, kernel: Vec<i64>) -> Result<Window, String> {
        let k = kernel.len();
        let or = |v: Vec<i64>, d: i64, n: usize| if v.is_empty() { vec![d; n] } else { v };
        Ok(Window {
            strides: or(r.ints("strides")?, 1, k),
            dilations: or(r.ints("dilations")?, 1, k),
            pads: or(r.ints("pads")?, 0, 2 * k),
            kernel,
        })
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        vec![
            ("kernel", Attr::Ints(self.kernel.clone())),
            ("strides", Attr::Ints(self.strides.clone())),
            ("dilations", Attr::Ints(self.dilations.clone())),
            ("pads", Attr::Ints(self.pads.clone())),
        ]
    }

    fn check(&self, name: &str) -> Result<(), String> {
        let k = self.kernel.len();
        if k == 0 || self.strides.len() != k || self.dilations.len() != k || self.pads.len() != 2 * k {
            return Err(format!(
                "{name}: kernel {:?}, strides {:?}, dilations {:?} and pads {:?} do not describe one window",
                self.kernel, self.strides, self.dilations, self.pads
            ));
        }
        if self
            .kernel
            .iter()
            .chain(&self.strides)
            .chain(&self.dilations)
            .any(|&v| v < 1)
        {
            return Err(format!("{name}: kernel, strides and dilations must be >= 1"));
        }
        if self.pads.iter().any(|&p| p < 0) {
            return Err(format!("{name}: pads must be >= 0, got {:?}", self.pads));
        }
        Ok(())
    }

    /// Output extents for spatial input extents (constants only).
    #[allow(clippy::needless_range_loop)]
    fn out_dims(&self, name: &str, spatial: &[Dim], ceil: bool) -> Result<Vec<Dim>, String> {
        let k = self.kernel.len();
        let mut out = Vec::with_capacity(k);
        for i in 0..k {
            let d = spatial[i]
                .as_const()
                .ok_or_else(|| format!("{name}: spatial extent {} must be a constant", spatial[i]))?;
            let span = self.dilations[i]
                .checked_mul(self.kernel[i] - 1)
                .and_then(|s| s.checked_add(1))
                .ok_or_else(|| format!("{name}: dilation × kernel overflows"))?;
            let room = d
                .checked_add(self.pads[i])
                .and_then(|r| r.checked_add(self.pads[k + i]))
                .and_then(|r| r.checked_sub(span))
                .ok_or_else(|| format!("{name}: padded extent overflows"))?;
            if room < 0 {
                return Err(format!(
                    "{name}: window {span} is larger than the padded extent {}",
                    room + span
                ));
            }
            let s = self.strides[i];
            let mut n = if ceil {
                (room + s - 1) / s + 1
            } else {
                room / s + 1
            };
            // The last window must start inside the input or its begin pad.
            if ceil && (n - 1) * s >= d + self.pads[i] {
                n -= 1;
            }
            out.push(Dim::constant(n));
        }
        Ok(out)
    }
}

/// Visits, for output position `o` (spatial, row-major), every kernel tap:
/// `f(kernel_flat_index, input_spatial_flat_index or None when in padding)`.
fn taps(w: &Window, in_sp: &[usize], o: &[usize], mut f: impl FnMut(usize, Option<usize>)) {
    let k = w.kernel.len();
    let kern: Vec<usize> = w.kernel.iter().map(|&v| v as usize).collect();
    let total: usize = kern.iter().product();
    let in_strides = strides(in_sp);
    let mut idx = vec![0usize; k];
    for t in 0..total {
        let mut rem = t;
        for a in (0..k).rev() {
            idx[a] = rem % kern[a];
            rem /= kern[a];
        }
        let mut flat = Some(0usize);
        for a in 0..k {
            let pos = o[a] as i64 * w.strides[a] + idx[a] as i64 * w.dilations[a] - w.pads[a];
            if pos < 0 || pos >= in_sp[a] as i64 {
                flat = None;
                break;
            }
            flat = flat.map(|f| f + pos as usize * in_strides[a]);
        }
        f(t, flat);
    }
}

fn unflatten(mut i: usize, dims: &[usize]) -> Vec<usize> {
    let mut v = vec![0; dims.len()];
    for a in (0..dims.len()).rev() {
        v[a] = i % dims[a];
        i /= dims[a];
    }
    v
}

/// N-d convolution (cross-correlation, as in ONNX and PyTorch):
/// `conv(x[N, C, …], w[M, C/group, k…][, bias[M]])` → `[N, M, out…]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv {
    pub window: Window,
    pub group: i64,
}

impl Conv {
    pub(crate) fn read(r: &mut AttrReader) -> Result<Conv, String> {
        let kernel = r.ints("kernel")?;
        let window = Window::read(r, kernel)?;
        Ok(Conv {
            window,
            group: r.int_or("group", 1)?,
        })
    }
}

impl OpImpl for Conv {
    fn name(&self) -> &'static str {
        "conv"
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = self.window.attrs();
        a.push(("group", Attr::Int(self.group)));
        a
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        if !(2..=3).contains(&inputs.len()) {
            return Err(format!(
                "conv takes 2 or 3 operands (x, w[, bias]) but got {}",
                inputs.len()
            ));
        }
        self.window.check("conv")?;
        let (x, w) = (&inputs[0], &inputs[1]);
        want_float("conv", "input", x)?;
        same_dtype("conv", x, w)?;
        let k = self.window.kernel.len();
        if x.rank() != k + 2 || w.rank() != k + 2 {
            return Err(format!(
                "conv with a {k}-d kernel needs x and w of rank {}, got {x} and {w}",
                k + 2
            ));
        }
        let (xd, wd) = (x.shape.dims(), w.shape.dims());
        let g = self.group;
        if g < 1 || xd[1].as_const().is_none_or(|c| c % g != 0) || wd[0].as_const().is_none_or(|m| m % g != 0)
        {
            return Err(format!(
                "conv: channels {} and filters {} must be constant multiples of group {g}",
                xd[1], wd[0]
            ));
        }
        if xd[1].as_const() != wd[1].as_const().and_then(|c| c.checked_mul(g)) {
            return Err(format!(
                "conv: x has {} channels but w {w} expects {} per group × {g}",
                xd[1], wd[1]
            ));
        }
        if wd[2..].iter().zip(&self.window.kernel).any(|(d, &kk)| !d.is(kk)) {
            return Err(format!(
                "conv: w {w} does not match kernel {:?}",
                self.window.kernel
            ));
        }
        if let Some(b) = inputs.get(2) {
            same_dtype("conv", x, b)?;
            if b.rank() != 1 || b.shape.dims()[0] != wd[0] {
                return Err(format!("conv: bias {b} must be [{}]", wd[0]));
            }
        }
        let mut dims = vec![xd[0].clone(), wd[0].clone()];
        dims.extend(self.window.out_dims("conv", &xd[2..], false)?);
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (x, w) = (inputs[0], inputs[1]);
        let xs = x.shape();
        let (n, c) = (xs[0], xs[1]);
        let m = w.shape()[0];
        let g = self.group as usize;
        let (cg, mg) = (c / g, m / g);
        let in_sp = &xs[2..];
        let in_n: usize = in_sp.iter().product();
        let out_t = self.infer(&[
            TensorType::new(
                x.dtype(),
                Shape::of(&xs.iter().map(|&d| d as i64).collect::<Vec<_>>()),
            ),
            TensorType::new(
                w.dtype(),
                Shape::of(&w.shape().iter().map(|&d| d as i64).collect::<Vec<_>>()),
            ),
        ])?;
        let out_sp: Vec<usize> = out_t[0].shape.dims()[2..]
            .iter()
            .map(|d| d.as_const().unwrap_or(0) as usize)
            .collect();
        let out_n: usize = out_sp.iter().product();
        let kn: usize = self.window.kernel.iter().product::<i64>() as usize;
        let (xv, wv) = (x.to_f64_vec(), w.to_f64_vec());
        let bias = inputs.get(2).map(|b| b.to_f64_vec());
        let mut out = vec![0f64; n * m * out_n];
        for o in 0..out_n {
            let pos = unflatten(o, &out_sp);
            let mut tap_list = Vec::with_capacity(kn);
            taps(&self.window, in_sp, &pos, |t, i| tap_list.push((t, i)));
            for b in 0..n {
                for f in 0..m {
                    let grp = f / mg;
                    let mut acc = bias.as_ref().map_or(0.0, |bv| bv[f]);
                    for ci in 0..cg {
                        let ch = grp * cg + ci;
                        let xbase = (b * c + ch) * in_n;
                        let wbase = (f * cg + ci) * kn;
                        for &(t, i) in &tap_list {
                            if let Some(i) = i {
                                acc += xv[xbase + i] * wv[wbase + t];
                            }
                        }
                    }
                    out[(b * m + f) * out_n + o] = acc;
                }
            }
        }
        let mut shape = vec![n, m];
        shape.extend(&out_sp);
        Ok(vec![Tensor::from_f64(x.dtype(), &shape, &out)])
    }
}

/// Which reduction a pooling window does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PoolKind {
    /// Largest element (NaN propagates); padding never wins.
    Max,
    /// Mean over the window; `count_include_pad` says whether padding
    /// counts in the divisor.
    Avg { count_include_pad: bool },
    /// `(Σ|x|ᵖ)^(1/p)` over the window.
    Lp { p: f64 },
}

/// Pooling over the spatial axes: `pool(x[N, C, …])` → `[N, C, out…]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Pool {
    pub kind: PoolKind,
    pub window: Window,
    pub ceil_mode: bool,
}

impl Pool {
    pub(crate) fn read(name: &str, r: &mut AttrReader) -> Result<Pool, String> {
        let kernel = r.ints("kernel")?;
        let window = Window::read(r, kernel)?;
        let kind = match name {
            "max_pool" => PoolKind::Max,
            "avg_pool" => PoolKind::Avg {
                count_include_pad: r.bool_or("count_include_pad", false)?,
            },
            _ => PoolKind::Lp { p: r.float("p")? },
        };
        Ok(Pool {
            kind,
            window,
            ceil_mode: r.bool_or("ceil_mode", false)?,
        })
    }
}

impl OpImpl for Pool {
    fn name(&self) -> &'static str {
        match self.kind {
            PoolKind::Max => "max_pool",
            PoolKind::Avg { .. } => "avg_pool",
            PoolKind::Lp { .. } => "lp_pool",
        }
    }

    fn attrs(&self) -> Vec<(&'static str, Attr)> {
        let mut a = self.window.attrs();
        match self.kind {
            PoolKind::Max => {}
            PoolKind::Avg { count_include_pad } => {
                a.push(("count_include_pad", Attr::Bool(count_include_pad)))
            }
            PoolKind::Lp { p } => a.push(("p", Attr::Float(p))),
        }
        a.push(("ceil_mode", Attr::Bool(self.ceil_mode)));
        a
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        let name = self.name();
        super::arity(name, inputs, 1)?;
        self.window.check(name)?;
        let x = &inputs[0];
        if self.kind != PoolKind::Max {
            want_float(name, "input", x)?;
        } else if x.dtype == crate::DType::Bool {
            return Err("max_pool is not defined on bool".into());
        }
        let k = self.window.kernel.len();
        if x.rank() != k + 2 {
            return Err(format!(
                "{name} with a {k}-d kernel needs rank {}, got {x}",
                k + 2
            ));
        }
        let xd = x.shape.dims();
        let mut dims = xd[..2].to_vec();
        dims.extend(self.window.out_dims(name, &xd[2..], self.ceil_mode)?);
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let x = inputs[0];
        let xs = x.shape();
        let t = self.infer(&[TensorType::new(
            x.dtype(),
            Shape::of(&xs.iter().map(|&d| d as i64).collect::<Vec<_>>()),
        )])?;
        let out_sp: Vec<usize> = t[0].shape.dims()[2..]
            .iter()
            .map(|d| d.as_const().unwrap_or(0) as usize)
            .collect();
        let out_n: usize = out_sp.iter().product();
        let in_sp = &xs[2..];
        let in_n: usize = in_sp.iter().product();
        let planes = xs[0] * xs[1];
        let xv = x.to_f64_vec();
        let k = self.window.kernel.len();
        let mut out = vec![0f64; planes * out_n];
        for o in 0..out_n {
            let pos = unflatten(o, &out_sp);
            let mut inside = Vec::new();
            taps(&self.window, in_sp, &pos, |_, i| inside.extend(i));
            // With count_include_pad, the divisor counts taps inside the
            // input or its explicit pads (not beyond, where ceil_mode
            // windows can reach).
            let padded_total: usize = (0..k)
                .map(|a| {
                    let hi = in_sp[a] as i64 + self.window.pads[a] + self.window.pads[k + a];
                    (0..self.window.kernel[a])
                        .filter(|kk| {
                            let p = pos[a] as i64 * self.window.strides[a] + kk * self.window.dilations[a];
                            p < hi
                        })
                        .count()
                })
                .product();
            for pl in 0..planes {
                let base = pl * in_n;
                let vals = inside.iter().map(|&i| xv[base + i]);
                out[pl * out_n + o] = match self.kind {
                    PoolKind::Max => vals.fold(f64::NEG_INFINITY, |a, b| {
                        if a.is_nan() || b > a || b.is_nan() {
                            b
                        } else {
                            a
                        }
                    }),
                    PoolKind::Avg { count_include_pad } => {
                        let s: f64 = vals.sum();
                        let d = if count_include_pad {
                            padded_total
                        } else {
                            inside.len()
                        };
                        s / d as f64
                    }
                    PoolKind::Lp { p } => vals.map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p),
                };
            }
        }
        let mut shape = xs[..2].to_vec();
        shape.extend(&out_sp);
        Ok(vec![Tensor::from_f64(x.dtype(), &shape, &out)])
    }
}
