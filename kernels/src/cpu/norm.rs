//! Normalisations over the last axis, one row at a time, accumulating in
//! f32: RMSNorm, RMSNorm with the residual add fused in, and LayerNorm.

/// `out = x / sqrt(mean(x²) + eps) * w` per row of `d` (no `w`: scale 1).
pub fn rms_norm(x: &[f32], d: usize, w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        rms_row(xr, w, eps, or);
    }
}

fn rms_row(xr: &[f32], w: Option<&[f32]>, eps: f32, or: &mut [f32]) {
    let ss: f32 = xr.iter().map(|v| v * v).sum();
    let inv = 1.0 / (ss / xr.len() as f32 + eps).sqrt();
    match w {
        Some(w) => {
            for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
                *o = v * inv * g;
            }
        }
        None => {
            for (o, v) in or.iter_mut().zip(xr) {
                *o = v * inv;
            }
        }
    }
}

/// `sum = a + b` and `norm = rms_norm(sum)`, in one pass over the rows.
pub fn add_rms_norm(
    a: &[f32],
    b: &[f32],
    d: usize,
    w: Option<&[f32]>,
    eps: f32,
    sum: &mut [f32],
    norm: &mut [f32],
) {
    for (((ar, br), sr), nr) in a
        .chunks_exact(d)
        .zip(b.chunks_exact(d))
        .zip(sum.chunks_exact_mut(d))
        .zip(norm.chunks_exact_mut(d))
    {
        for ((s, x), y) in sr.iter_mut().zip(ar).zip(br) {
            *s = x + y;
        }
        rms_row(sr, w, eps, nr);
    }
}

/// `out = (x - mean) / sqrt(var + eps) * w + b` per row of `d`.
pub fn layer_norm(x: &[f32], d: usize, w: Option<&[f32]>, b: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean: f32 = xr.iter().sum::<f32>() / d as f32;
        let var: f32 = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, (o, v)) in or.iter_mut().zip(xr).enumerate() {
            let mut y = (v - mean) * inv;
            if let Some(w) = w {
                y *= w[i];
            }
            if let Some(b) = b {
                y += b[i];
            }
            *o = y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_match_their_definitions() {
        let x = [1.0, -2.0, 3.0, 0.5, 0.0, 4.0];
        let w = [1.0, 2.0, 0.5];
        let mut o = [0f32; 6];
        rms_norm(&x, 3, Some(&w), 1e-6, &mut o);
        let r = ((1.0f32 + 4.0 + 9.0) / 3.0 + 1e-6).sqrt();
        assert!((o[1] - (-2.0 / r * 2.0)).abs() < 1e-6);
        let (mut s, mut n) = ([0f32; 6], [0f32; 6]);
        add_rms_norm(&x, &x, 3, Some(&w), 1e-6, &mut s, &mut n);
        assert_eq!(s[2], 6.0);
        assert!((n[1] - o[1]).abs() < 1e-5);
        layer_norm(&x, 3, None, Some(&[1.0, 1.0, 1.0]), 0.0, &mut o);
        let mean = 2.0 / 3.0;
        let var = ((1.0f32 - mean).powi(2) + (-2.0f32 - mean).powi(2) + (3.0f32 - mean).powi(2)) / 3.0;
        assert!((o[0] - ((1.0 - mean) / var.sqrt() + 1.0)).abs() < 1e-5);
    }
}
