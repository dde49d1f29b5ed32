//! Linear quantisation: `QuantizeLinear` / `DequantizeLinear` (per tensor,
//! per axis and blocked scales) as IR arithmetic and saturating casts.

use optc_ir::ops::{BinaryKind as B, UnaryKind as U};
use optc_ir::{DType, Dim, Tensor};

use super::super::import::{unsupported, Cx, NodeCx, NodeError, Val};
use super::shape::expand_to;
use super::{binary, dim_axis, dtype_attr, unary, Handler, R};

pub(crate) static OPS: &[(&str, Handler)] = &[("QuantizeLinear", quantize), ("DequantizeLinear", dequantize)];

/// Shapes a scale or zero point to broadcast against `x`: scalar as is,
/// 1-D along `axis`, or blocked (each entry repeated `block` times).
fn fit(cx: &mut Cx, v: &Val, x: &Val, a: i64, block: i64) -> Result<Val, NodeError> {
    if v.rank() == 0 || (v.rank() == 1 && v.dims()[0].is(1) && block == 0) {
        return cx.reshape(v, vec![]);
    }
    let r = x.rank();
    let a = dim_axis(a, r)?;
    if block > 0 {
        // [.., n/block, ..] → repeat along `a` → [.., n, ..]
        let d = v.dims().to_vec();
        let mut five = d.clone();
        five.insert(a + 1, Dim::constant(1));
        let y = cx.reshape(v, five.clone())?;
        let mut big = five;
        big[a + 1] = Dim::constant(block);
        let y = expand_to(cx, &y, big)?;
        let mut flat = d;
        flat[a] = &flat[a] * &Dim::constant(block);
        let y = cx.reshape(&y, flat.clone())?;
        if flat[a] != x.dims()[a] {
            // The last block may be partial: cut to the axis length.
            let n = x.dims()[a]
                .as_const()
                .ok_or("blocked quantisation over a symbolic axis")?;
            return super::shape::slice_axis(cx, &y, a, 0, n, 1);
        }
        return Ok(y);
    }
    if v.rank() != 1 {
        return Err(format!("scale {} must be a scalar or 1-D", v.ty).into());
    }
    let mut dims = vec![Dim::constant(1); r];
    dims[a] = v.dims()[0].clone();
    cx.reshape(v, dims)
}

fn dequantize(cx: &mut Cx, n: &NodeCx) -> R {
    let a = n.int("axis", 1)?;
    let block = n.int("block_size", 0)?;
    let (x, scale) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let out_dt = match n.opt_int("output_dtype")? {
        Some(c) if c != 0 => dtype_attr(c)?,
        _ => scale.dtype(),
    };
    let s = fit(cx, &scale, &x, a, block)?;
    let xf = cx.cast(&x, DType::F32)?;
    let xf = match cx.opt_input(n, 2)? {
        Some(zp) => {
            let z = fit(cx, &zp, &x, a, block)?;
            let z = cx.cast(&z, DType::F32)?;
            binary(cx, B::Sub, &xf, &z)?
        }
        None => xf,
    };
    let sf = cx.cast(&s, DType::F32)?;
    let y = binary(cx, B::Mul, &xf, &sf)?;
    Ok(vec![cx.cast(&y, out_dt)?])
}

fn quantize(cx: &mut Cx, n: &NodeCx) -> R {
    let a = n.int("axis", 1)?;
    let block = n.int("block_size", 0)?;
    let saturate = n.int("saturate", 1)?;
    if n.has("precision") {
        return unsupported("QuantizeLinear precision is not supported");
    }
    let (x, scale) = (cx.input(n, 0)?, cx.input(n, 1)?);
    let zp = cx.opt_input(n, 2)?;
    let out_dt = match (n.opt_int("output_dtype")?, &zp) {
        (Some(c), _) if c != 0 => dtype_attr(c)?,
        (_, Some(z)) => z.dtype(),
        _ => DType::U8,
    };
    if saturate == 0 && out_dt.is_float() {
        return unsupported("QuantizeLinear with saturate=0 is not supported (optc's f8 cast saturates)");
    }
    let s = fit(cx, &scale, &x, a, block)?;
    let xf = cx.cast(&x, DType::F32)?;
    let sf = cx.cast(&s, DType::F32)?;
    let mut y = binary(cx, B::Div, &xf, &sf)?;
    if out_dt.is_float() {
        // f8 targets: scale, then one saturating cast.
        return Ok(vec![cx.cast(&y, out_dt)?]);
    }
    y = unary(cx, U::Round, &y)?;
    if let Some(zp) = &zp {
        let z = fit(cx, zp, &x, a, block)?;
        let z = cx.cast(&z, DType::F32)?;
        y = binary(cx, B::Add, &y, &z)?;
    }
    let (lo, hi) = optc_ir::tensor::int_range(out_dt);
    let lo = cx.konst(Tensor::from_f64(DType::F32, &[], &[lo as f64]));
    let hi = cx.konst(Tensor::from_f64(DType::F32, &[], &[hi as f64]));
    y = binary(cx, B::Maximum, &y, &lo)?;
    y = binary(cx, B::Minimum, &y, &hi)?;
    Ok(vec![cx.cast(&y, out_dt)?])
}
