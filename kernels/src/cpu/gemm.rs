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
    /// int8 values with one scale per `block` consecutive values (rows are
    /// whole blocks): value `i` is `q[i] * scales[i / block]`.
    Q8 {
        q: &'a [i8],
        scales: &'a [f32],
        block: usize,
    },
}

impl WeightRef<'_> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::F16(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
            WeightRef::Q8 { q, .. } => q.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start..start + out.len()` as f32, into `out`.
    pub fn to_f32(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            WeightRef::F32(w) => out.copy_from_slice(&w[start..end]),
            // F16C when the CPU has it (half detects it at run time).
            WeightRef::F16(w) => half::slice::HalfFloatSliceExt::convert_to_f32_slice(&w[start..end], out),
            WeightRef::BF16(w) => bf16_to_f32(&w[start..end], out),
            WeightRef::Q8 { q, scales, block } => q8_to_f32(q, scales, *block, start, out),
        }
    }
}

/// Dot product of f32 activations with the weight row starting at element
/// `start`, in the weights' stored form, converting in registers (AVX2 +
/// FMA + F16C where available).
fn dot_row(x: &[f32], w: WeightRef, start: usize) -> f32 {
    let k = x.len();
    match w {
        WeightRef::F32(v) => dot(x, &v[start..start + k]),
        WeightRef::F16(v) => {
            let r = &v[start..start + k];
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
                {
                    // SAFETY: the features were just detected; lengths are equal.
                    return unsafe { simd::dot_f16(x, r) };
                }
            }
            x.iter().zip(r).map(|(a, b)| a * b.to_f32()).sum()
        }
        WeightRef::Q8 { q, scales, block } => {
            let r = &q[start..start + k];
            let sr = &scales[start / block..(start + k) / block];
            #[cfg(target_arch = "x86_64")]
            {
                if block == 32
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the features were just detected; lengths match.
                    return unsafe { simd::dot_q8_32(x, r, sr) };
                }
            }
            x.chunks(block)
                .zip(r.chunks(block))
                .zip(sr)
                .map(|((xb, qb), s)| s * xb.iter().zip(qb).map(|(a, b)| a * f32::from(*b)).sum::<f32>())
                .sum()
        }
        WeightRef::BF16(v) => {
            let r = &v[start..start + k];
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected; lengths are equal.
                    return unsafe { simd::dot_bf16(x, r) };
                }
            }
            x.iter().zip(r).map(|(a, b)| a * b.to_f32()).sum()
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// `x · w` with `w` in f16; `x.len() == w.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16(x: &[f32], w: &[f16]) -> f32 {
        assert_eq!(x.len(), w.len());
        let n = x.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i + 8) as *const __m128i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), w0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), w1, a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += x[i] * w[i].to_f32();
            i += 1;
        }
        s
    }

    /// `x · dequant(q)` for blocks of 32 int8 values with one scale each.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_q8_32(x: &[f32], q: &[i8], scales: &[f32]) -> f32 {
        assert_eq!(x.len(), q.len());
        assert_eq!(q.len(), scales.len() * 32);
        let (xp, qp) = (x.as_ptr(), q.as_ptr());
        let mut total = _mm256_setzero_ps();
        for (b, &s) in scales.iter().enumerate() {
            let base = b * 32;
            let mut acc = _mm256_setzero_ps();
            for c in 0..4 {
                let off = base + c * 8;
                let qi = _mm256_cvtepi8_epi32(_mm_loadl_epi64(qp.add(off) as *const __m128i));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(off)), _mm256_cvtepi32_ps(qi), acc);
            }
            total = _mm256_fmadd_ps(acc, _mm256_set1_ps(s), total);
        }
        hsum(total)
    }

    /// `x · w` with `w` in bf16; `x.len() == w.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
        assert_eq!(x.len(), w.len());
        let n = x.len();
        let (xp, wp) = (x.as_ptr(), w.as_ptr() as *const u16);
        let widen = |p: *const u16| {
            _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i)),
                16,
            ))
        };
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        while i + 16 <= n {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i)), widen(wp.add(i)), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i + 8)), widen(wp.add(i + 8)), a1);
            i += 16;
        }
        let mut s = hsum(_mm256_add_ps(a0, a1));
        while i < n {
            s += x[i] * w[i].to_f32();
            i += 1;
        }
        s
    }
}

/// Dequantises int8 blocks from element `start` into `out`; whole blocks
/// (a block-aligned `start`) take a loop the compiler vectorises, with AVX2
/// where available.
fn q8_to_f32(q: &[i8], scales: &[f32], block: usize, start: usize, out: &mut [f32]) {
    if block == 0 || start % block != 0 || out.len() % block != 0 {
        for (i, o) in (start..start + out.len()).zip(out.iter_mut()) {
            *o = f32::from(q[i]) * scales[i / block.max(1)];
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { q8_blocks_avx2(q, scales, block, start, out) };
        }
    }
    q8_blocks(q, scales, block, start, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn q8_blocks_avx2(q: &[i8], scales: &[f32], block: usize, start: usize, out: &mut [f32]) {
    q8_blocks(q, scales, block, start, out)
}

#[inline(always)]
fn q8_blocks(q: &[i8], scales: &[f32], block: usize, start: usize, out: &mut [f32]) {
    let qs = &q[start..start + out.len()];
    for ((ob, qb), s) in out
        .chunks_mut(block)
        .zip(qs.chunks(block))
        .zip(&scales[start / block..])
    {
        for (o, x) in ob.iter_mut().zip(qb) {
            *o = f32::from(*x) * s;
        }
    }
}

/// bf16 to f32 is a 16-bit shift; vectorised with AVX2 where available.
fn bf16_to_f32(w: &[bf16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { bf16_to_f32_avx2(w, out) };
        }
    }
    bf16_shift(w, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_to_f32_avx2(w: &[bf16], out: &mut [f32]) {
    bf16_shift(w, out)
}

#[inline(always)]
fn bf16_shift(w: &[bf16], out: &mut [f32]) {
    for (o, x) in out.iter_mut().zip(w) {
        *o = f32::from_bits(u32::from(x.to_bits()) << 16);
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

/// `y += a * x`, with AVX2/FMA code when the CPU has it.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { axpy_avx2(a, x, y) };
        }
    }
    axpy_plain(a, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
    axpy_plain(a, x, y)
}

#[inline(always)]
fn axpy_plain(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
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
    // Streaming: four blocks per thread, so the threads finish together
    // without paying for many small tasks.
    let block = if m <= FEW_ROWS {
        n.div_ceil(rayon::current_num_threads() * 4).max(16)
    } else {
        BLOCK_N
    };
    let blocks: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(block))
        .into_par_iter()
        .map(|b| {
            let n0 = b * block;
            let nb = block.min(n - n0);
            let mut o = vec![0f32; m * nb];
            if m <= FEW_ROWS || k == 0 {
                // Memory-bound: stream each weight row once, converting in registers.
                for j in 0..nb {
                    for i in 0..m {
                        o[i * nb + j] = dot_row(&x[i * k..(i + 1) * k], w, (n0 + j) * k);
                    }
                }
            } else {
                let wf: std::borrow::Cow<[f32]> = match w {
                    WeightRef::F32(v) => v[n0 * k..(n0 + nb) * k].into(),
                    _ => {
                        let mut v = vec![0f32; nb * k];
                        w.to_f32(n0 * k, &mut v);
                        v.into()
                    }
                };
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
            // An exact int8 copy in blocks of 32 along k (when k allows), with
            // a different scale in neighbouring blocks.
            let q8: Option<(Vec<i8>, Vec<f32>)> = (k % 32 == 0).then(|| {
                let mult = |b: usize| (1 + b % 3) as f32;
                let q: Vec<i8> = w
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| (v * 4.0 * mult(i / 32)) as i8)
                    .collect();
                (q, (0..n * k / 32).map(|b| 0.25 / mult(b)).collect())
            });
            let mut refs = vec![WeightRef::F32(&w), WeightRef::BF16(&wb), WeightRef::F16(&wh)];
            if let Some((q, s)) = &q8 {
                refs.push(WeightRef::Q8 {
                    q,
                    scales: s,
                    block: 32,
                });
            }
            for wr in refs {
                let mut out = vec![0f32; m * n];
                linear(&x, m, k, wr, n, None, &mut out);
                for (a, b) in out.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-3, "{m}x{k}x{n}: {a} vs {b}");
                }
            }
        }
    }
}
