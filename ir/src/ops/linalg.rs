//! Matrix products: `matmul` (numpy semantics: batched, broadcast, 1-D
//! promotion) and `linear` (x·Wᵀ + b, the layout of torch `nn.Linear`).
//! Products accumulate in f64 (integer `matmul` in exact wrapping i64);
//! `linear` is defined on floats only.

use super::index::{broadcast, broadcast_map};
use super::{arity, same_dtype, EvalCx, OpImpl};
use crate::dim::{broadcast_shapes, Shape, TensorType};
use crate::dtype::DType;
use crate::tensor::Tensor;

/// `matmul(a, b)` with numpy semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul;

/// Batched product of `[.., m, k] x [.., k, n]` (batch dims already
/// broadcast to `batch`); returns the `[batch.., m, n]` values in f64.
fn batched_product(
    a: &Tensor,
    b: &Tensor,
    a_batch: &[usize],
    b_batch: &[usize],
) -> Result<(Vec<usize>, Vec<f64>), String> {
    let (ar, br) = (a.rank(), b.rank());
    let (m, k) = (a.shape()[ar - 2], a.shape()[ar - 1]);
    let (k2, n) = (b.shape()[br - 2], b.shape()[br - 1]);
    if k != k2 {
        return Err(format!(
            "matmul: inner dims differ: {:?} x {:?}",
            a.shape(),
            b.shape()
        ));
    }
    let batch = broadcast(a_batch, b_batch)?;
    let ia = broadcast_map(a_batch, &batch);
    let ib = broadcast_map(b_batch, &batch);
    let av = a.to_f64_vec();
    let bv = b.to_f64_vec();
    let mut out = vec![0f64; ia.len() * m * n];
    for (bi, (&pa, &pb)) in ia.iter().zip(&ib).enumerate() {
        let am = &av[pa * m * k..(pa + 1) * m * k];
        let bm = &bv[pb * k * n..(pb + 1) * k * n];
        let om = &mut out[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let row = &mut om[i * n..(i + 1) * n];
            for p in 0..k {
                let x = am[i * k + p];
                if x == 0.0 {
                    // Skipping is only exact when the row of b is finite.
                    if bm[p * n..(p + 1) * n].iter().all(|v| v.is_finite()) {
                        continue;
                    }
                }
                for (r, &y) in row.iter_mut().zip(&bm[p * n..(p + 1) * n]) {
                    *r += x * y;
                }
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok((shape, out))
}

fn int_product(
    a: &Tensor,
    b: &Tensor,
    a_batch: &[usize],
    b_batch: &[usize],
) -> Result<(Vec<usize>, Vec<i64>), String> {
    let (ar, br) = (a.rank(), b.rank());
    let (m, k, n) = (a.shape()[ar - 2], a.shape()[ar - 1], b.shape()[br - 1]);
    let batch = broadcast(a_batch, b_batch)?;
    let ia = broadcast_map(a_batch, &batch);
    let ib = broadcast_map(b_batch, &batch);
    let (av, bv) = (a.to_i64_vec(), b.to_i64_vec());
    let mut out = vec![0i64; ia.len() * m * n];
    for (bi, (&pa, &pb)) in ia.iter().zip(&ib).enumerate() {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0i64;
                for p in 0..k {
                    s = s.wrapping_add(av[pa * m * k + i * k + p].wrapping_mul(bv[pb * k * n + p * n + j]));
                }
                out[bi * m * n + i * n + j] = s;
            }
        }
    }
    let mut shape = batch;
    shape.extend([m, n]);
    Ok((shape, out))
}

/// Runs a product on 2-D-or-more operands and rounds to `dtype`.
fn product(a: &Tensor, b: &Tensor, dtype: DType) -> Result<Tensor, String> {
    let a_batch = &a.shape()[..a.rank() - 2];
    let b_batch = &b.shape()[..b.rank() - 2];
    if dtype.is_int() {
        let (shape, v) = int_product(a, b, a_batch, b_batch)?;
        return Ok(Tensor::from_i64(dtype, &shape, &v));
    }
    let (shape, v) = batched_product(a, b, a_batch, b_batch)?;
    Ok(Tensor::from_f64(dtype, &shape, &v))
}

impl OpImpl for MatMul {
    fn name(&self) -> &'static str {
        "matmul"
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        arity("matmul", inputs, 2)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        same_dtype("matmul", a, b)?;
        if a.dtype == DType::Bool || a.rank() == 0 || b.rank() == 0 {
            return Err(format!(
                "matmul needs numeric operands of rank >= 1, got {a} and {b}"
            ));
        }
        let ad = a.shape.dims();
        let bd = b.shape.dims();
        let ka = &ad[ad.len() - 1];
        let kb = if bd.len() == 1 { &bd[0] } else { &bd[bd.len() - 2] };
        if ka != kb {
            return Err(format!("matmul: inner dims {ka} and {kb} differ ({a} x {b})"));
        }
        let a_batch = Shape(ad[..ad.len().saturating_sub(2)].to_vec());
        let b_batch = Shape(bd[..bd.len().saturating_sub(2)].to_vec());
        let mut dims = broadcast_shapes(&a_batch, &b_batch)
            .map_err(|e| format!("matmul batch dims: {e}"))?
            .0;
        if ad.len() > 1 {
            dims.push(ad[ad.len() - 2].clone());
        }
        if bd.len() > 1 {
            dims.push(bd[bd.len() - 1].clone());
        }
        Ok(vec![TensorType::new(a.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (a, b) = (inputs[0], inputs[1]);
        // 1-D operands become matrices and the added dim is dropped after.
        let a2 = if a.rank() == 1 {
            a.reshape(&[1, a.numel()])
        } else {
            a.clone()
        };
        let b2 = if b.rank() == 1 {
            b.reshape(&[b.numel(), 1])
        } else {
            b.clone()
        };
        let out = product(&a2, &b2, a.dtype())?;
        let mut shape = out.shape().to_vec();
        if b.rank() == 1 {
            shape.pop();
        }
        if a.rank() == 1 {
            shape.remove(shape.len() - if b.rank() == 1 { 1 } else { 2 });
        }
        Ok(vec![out.reshape(&shape)])
    }
}

/// `linear(x, w[, b])`: `x[.., k] · w[n, k]ᵀ (+ b[n])`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear;

impl OpImpl for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        if !(2..=3).contains(&inputs.len()) {
            return Err(format!(
                "linear takes 2 or 3 operands (x, w[, b]) but got {}",
                inputs.len()
            ));
        }
        let (x, w) = (&inputs[0], &inputs[1]);
        same_dtype("linear", x, w)?;
        if x.rank() == 0 || w.rank() != 2 || !x.dtype.is_float() {
            return Err(format!(
                "linear needs float x of rank >= 1 and w of rank 2, got {x} and {w}"
            ));
        }
        let k = &x.shape.dims()[x.rank() - 1];
        let (n, kw) = (&w.shape.dims()[0], &w.shape.dims()[1]);
        if k != kw {
            return Err(format!("linear: x has {k} features but w {w} expects {kw}"));
        }
        if let Some(b) = inputs.get(2) {
            same_dtype("linear", x, b)?;
            if b.shape.dims() != [n.clone()] {
                return Err(format!("linear: bias must be [{n}], got {b}"));
            }
        }
        let mut dims = x.shape.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = n.clone();
        Ok(vec![TensorType::new(x.dtype, Shape(dims))])
    }

    fn eval(&self, inputs: &[&Tensor], _: &EvalCx) -> Result<Vec<Tensor>, String> {
        let (x, w) = (inputs[0], inputs[1]);
        let k = x.shape()[x.rank() - 1];
        let rows: usize = x.shape()[..x.rank() - 1].iter().product();
        let n = w.shape()[0];
        let xv = x.to_f64_vec();
        let wv = w.to_f64_vec();
        let bv = inputs.get(2).map(|b| b.to_f64_vec());
        let mut out = vec![0f64; rows * n];
        for r in 0..rows {
            let xr = &xv[r * k..(r + 1) * k];
            for j in 0..n {
                let wr = &wv[j * k..(j + 1) * k];
                let mut s: f64 = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
                if let Some(b) = &bv {
                    s += b[j];
                }
                out[r * n + j] = s;
            }
        }
        let mut shape = x.shape().to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok(vec![Tensor::from_f64(x.dtype(), &shape, &out)])
    }
}
