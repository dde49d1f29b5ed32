//! Rotary position embedding on rows of `d`, rotating the first `r` values
//! of each row with that row's `cos`/`sin` (shared by every head).

#[allow(clippy::too_many_arguments)]
/// `x` is rows of `d`; `row_of[i]` is the cos/sin row (of `r`) of x's row
/// `i`. `interleaved` rotates pairs `(2i, 2i+1)` (GPT-J), otherwise halves
/// (`rotate_half`, Llama).
pub fn rope(
    x: &[f32],
    d: usize,
    cos: &[f32],
    sin: &[f32],
    r: usize,
    row_of: &dyn Fn(usize) -> usize,
    interleaved: bool,
    out: &mut [f32],
) {
    let half = r / 2;
    for (i, (xr, or)) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)).enumerate() {
        let cr = row_of(i) * r;
        let (c, s) = (&cos[cr..cr + r], &sin[cr..cr + r]);
        for k in 0..r {
            let rot = if interleaved {
                if k % 2 == 0 {
                    -xr[k + 1]
                } else {
                    xr[k - 1]
                }
            } else if k < half {
                -xr[k + half]
            } else {
                xr[k - half]
            };
            or[k] = xr[k] * c[k] + rot * s[k];
        }
        or[r..].copy_from_slice(&xr[r..]);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rotates_halves_and_pairs() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let (c, s) = ([0.0; 4], [1.0; 4]);
        let mut o = [0f32; 5];
        super::rope(&x, 5, &c, &s, 4, &|_| 0, false, &mut o);
        assert_eq!(o, [-3.0, -4.0, 1.0, 2.0, 5.0]);
        super::rope(&x, 5, &c, &s, 4, &|_| 0, true, &mut o);
        assert_eq!(o, [-2.0, 1.0, -4.0, 3.0, 5.0]);
    }
}
