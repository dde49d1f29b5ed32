//! Elementwise kernels: maps, binary ops with numpy broadcasting, the
//! fused activations (SwiGLU, GELU) and softmax over the last axis.

use super::layout::broadcast_index;

/// `out[i] = f(x[i])`.
pub fn map(x: &[f32], f: impl Fn(f32) -> f32, out: &mut [f32]) {
    for (o, v) in out.iter_mut().zip(x) {
        *o = f(*v);
    }
}

/// `out = f(a, b)` with `a`, `b` broadcast to `shape`. Equal shapes and a
/// `b` that repeats along leading dims (a bias, a norm weight) take fast
/// paths; anything else goes through an index map.
pub fn binary(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    shape: &[usize],
    f: impl Fn(f32, f32) -> f32,
    out: &mut [f32],
) {
    let n = out.len();
    if a.len() == n && b.len() == n {
        for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
            *o = f(*x, *y);
        }
    } else if a.len() == n && !b.is_empty() && n % b.len() == 0 && suffix_of(b_shape, shape) {
        for (oc, ac) in out.chunks_mut(b.len()).zip(a.chunks(b.len())) {
            for ((o, x), y) in oc.iter_mut().zip(ac).zip(b) {
                *o = f(*x, *y);
            }
        }
    } else if b.len() == n && !a.is_empty() && n % a.len() == 0 && suffix_of(a_shape, shape) {
        for (oc, bc) in out.chunks_mut(a.len()).zip(b.chunks(a.len())) {
            for ((o, y), x) in oc.iter_mut().zip(bc).zip(a) {
                *o = f(*x, *y);
            }
        }
    } else {
        let (ia, ib) = (broadcast_index(a_shape, shape), broadcast_index(b_shape, shape));
        for (i, o) in out.iter_mut().enumerate() {
            *o = f(a[ia[i]], b[ib[i]]);
        }
    }
}

/// Whether `small` equals the trailing dims of `shape` once its leading
/// ones are dropped (so it repeats whole along the leading dims).
fn suffix_of(small: &[usize], shape: &[usize]) -> bool {
    let s: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    s.len() <= shape.len() && shape[shape.len() - s.len()..] == s[..]
}

/// `silu(gate) * up`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// GELU with the tanh approximation.
pub fn gelu_tanh(x: &[f32], out: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    for (o, v) in out.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + (C * (v + 0.044_715 * v * v * v)).tanh());
    }
}

/// Softmax (or log-softmax) over rows of `d`.
pub fn softmax(x: &[f32], d: usize, log: bool, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = 0f32;
        for (o, v) in or.iter_mut().zip(xr) {
            *o = (v - max).exp();
            sum += *o;
        }
        if log {
            let ls = sum.ln();
            for (o, v) in or.iter_mut().zip(xr) {
                *o = v - max - ls;
            }
        } else {
            for o in or.iter_mut() {
                *o /= sum;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_broadcasts_every_way() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // [2, 3]
        let mut o = [0f32; 6];
        binary(
            &a,
            &[2, 3],
            &[10.0, 20.0, 30.0],
            &[3],
            &[2, 3],
            |x, y| x + y,
            &mut o,
        );
        assert_eq!(o, [11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
        binary(&[10.0, 20.0], &[2, 1], &a, &[2, 3], &[2, 3], |x, y| x - y, &mut o);
        assert_eq!(o, [9.0, 8.0, 7.0, 16.0, 15.0, 14.0]);
        binary(&[2.0], &[1], &a, &[2, 3], &[2, 3], |x, y| x * y, &mut o);
        assert_eq!(o, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut o = [0f32; 4];
        softmax(&[1.0, 2.0, 3.0, 3.0], 2, false, &mut o);
        assert!((o[0] + o[1] - 1.0).abs() < 1e-6 && (o[2] - 0.5).abs() < 1e-6);
        softmax(&[1.0, 2.0, 3.0, 3.0], 2, true, &mut o);
        assert!((o[2] - 0.5f32.ln()).abs() < 1e-6);
    }
}
