//! Matrix products: `linear` (`y = x·Wᵀ + b`, weights `[N, K]` row-major in
//! f32, f16 or bf16, kept in their own dtype) and `matmul` on f32.
//!
//! Large products go through the `gemm` crate, a block of weight rows at a
//! time (converted to f32 in a per-thread buffer when the weights are
//! half precision), blocks spread over threads with rayon. Few rows
//! (decode steps) are memory-bound: they stream each weight row once and
//! do the dot products directly.

use half::{bf16, f16};
use rayon::prelude::*;

/// A weight matrix's elements in their stored dtype.
#[derive(Clone, Copy, Debug)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

impl WeightRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::F16(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `range` as f32, into `out`.
    pub fn to_f32(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            WeightRef::F32(w) => out.copy_from_slice(&w[start..end]),
            WeightRef::F16(w) => {
                for (o, x) in out.iter_mut().zip(&w[start..end]) {
                    *o = x.to_f32();
                }
            }
            WeightRef::BF16(w) => {
                for (o, x) in out.iter_mut().zip(&w[start..end]) {
                    *o = f32::from_bits(u32::from(x.to_bits()) << 16);
                }
            }
        }
    }
}

/// Rows at or below which `linear` streams weights instead of using `gemm`.
const FEW_ROWS: usize = 4;
/// Weight rows per parallel block.
const BLOCK_N: usize = 64;

/// Dot product, with AVX2/FMA code when the CPU has it (detected once at
/// run time; the build targets plain x86-64).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

/// 32 independent accumulators, so the compiler keeps four vector FMAs in
/// flight.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 32];
    let (ca, cb) = (a.chunks_exact(32), b.chunks_exact(32));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..32 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let mut s = 0f32;
    for lane in acc.chunks_exact(8) {
        s += lane.iter().sum::<f32>();
    }
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias[n])`.
pub fn linear(x: &[f32], m: usize, k: usize, w: WeightRef, n: usize, bias: Option<&[f32]>, out: &mut [f32]) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(out.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    // Each block computes out[:, n0..n0+nb] into its own buffer.
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(BLOCK_N))
        .into_par_iter()
        .map(|b| {
            let n0 = b * BLOCK_N;
            let nb = BLOCK_N.min(n - n0);
            let wf: std::borrow::Cow<[f32]> = match w {
                WeightRef::F32(v) => v[n0 * k..(n0 + nb) * k].into(),
                _ => {
                    let mut v = vec![0f32; nb * k];
                    w.to_f32(n0 * k, &mut v);
                    v.into()
                }
            };
            let mut o = vec![0f32; m * nb];
            if m <= FEW_ROWS || k == 0 {
                for i in 0..m {
                    let xi = &x[i * k..(i + 1) * k];
                    for j in 0..nb {
                        o[i * nb + j] = dot(xi, &wf[j * k..(j + 1) * k]);
                    }
                }
            } else {
                // SAFETY: the slices hold exactly the m×k, nb×k and m×nb
                // elements the strides below address.
                unsafe {
                    gemm::gemm(
                        m,
                        nb,
                        k,
                        o.as_mut_ptr(),
                        1,
                        nb as isize,
                        false,
                        x.as_ptr(),
                        1,
                        k as isize,
                        wf.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            (n0, o)
        })
        .collect();
    for (n0, o) in blocks {
        let nb = o.len() / m;
        for i in 0..m {
            let row = &mut out[i * n + n0..i * n + n0 + nb];
            row.copy_from_slice(&o[i * nb..(i + 1) * nb]);
            if let Some(b) = bias {
                for (y, bb) in row.iter_mut().zip(&b[n0..n0 + nb]) {
                    *y += bb;
                }
            }
        }
    }
}

/// `out[m, n] = a[m, k] · b[k, n]` for `batch` independent products, each
/// operand with its own batch stride (0 broadcasts it).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    a_stride: usize,
    b: &[f32],
    b_stride: usize,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) {
    assert_eq!(out.len(), batch * m * n);
    if m == 0 || n == 0 {
        return;
    }
    let threads = if m * n * k > 1 << 18 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    for bi in 0..batch {
        let (ao, bo) = (bi * a_stride, bi * b_stride);
        assert!(ao + m * k <= a.len() && bo + k * n <= b.len());
        let o = &mut out[bi * m * n..(bi + 1) * m * n];
        // SAFETY: bounds checked above; row-major strides.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                o.as_mut_ptr(),
                1,
                n as isize,
                false,
                a[ao..].as_ptr(),
                1,
                k as isize,
                b[bo..].as_ptr(),
                1,
                n as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                threads,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
        let mut o = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
            }
        }
        o
    }

    #[test]
    fn linear_matches_naive_for_few_and_many_rows_and_half_weights() {
        for (m, k, n) in [(1, 37, 130), (3, 64, 65), (9, 33, 200), (17, 128, 64)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0).collect();
            let want = naive(&x, m, k, &w, n);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            for wr in [WeightRef::F32(&w), WeightRef::BF16(&wb), WeightRef::F16(&wh)] {
                let mut out = vec![0f32; m * n];
                linear(&x, m, k, wr, n, None, &mut out);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-3, "{m}x{k}x{n}: {a} vs {b}");
                }
            }
        }
    }
}
