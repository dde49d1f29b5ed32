//! Data movement: broadcasting index maps, transposes, concatenation and
//! slicing along an axis, row gathers (embedding, index_select).

/// For each flat index of `to`, the flat index of `from` broadcast to it
/// (numpy rules, dims aligned on the right).
pub fn broadcast_index(from: &[usize], to: &[usize]) -> Vec<usize> {
    let n: usize = to.iter().product();
    let off = to.len() - from.len().min(to.len());
    // Stride of each `to` dim in `from` (0 where broadcast).
    let mut strides = vec![0usize; to.len()];
    let mut s = 1;
    for i in (0..from.len()).rev() {
        if i + off < to.len() && from[i] != 1 {
            strides[i + off] = s;
        }
        s *= from[i];
    }
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; to.len()];
    for _ in 0..n {
        out.push(idx.iter().zip(&strides).map(|(i, s)| i * s).sum());
        for d in (0..to.len()).rev() {
            idx[d] += 1;
            if idx[d] < to[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

/// `out = x.permute(perm)` for `x` of `shape`.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize], out: &mut [T]) {
    let r = shape.len();
    let mut in_strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * shape[i + 1];
    }
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    // Copy whole runs when the last axis stays last.
    let run = if r > 0 && perm[r - 1] == r - 1 {
        shape[r - 1]
    } else {
        1
    };
    let outer_rank = if run > 1 { r - 1 } else { r };
    let mut idx = vec![0usize; outer_rank];
    for chunk in out.chunks_mut(run.max(1)) {
        let base: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        if run > 1 {
            chunk.copy_from_slice(&x[base..base + run]);
        } else {
            chunk[0] = x[base];
        }
        for d in (0..outer_rank).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// Concatenates parts, each `[outer, len_i, inner]`, along the middle axis.
pub fn concat<T: Copy>(parts: &[(&[T], usize)], outer: usize, inner: usize, out: &mut [T]) {
    let total: usize = parts.iter().map(|p| p.1).sum();
    for o in 0..outer {
        let mut at = o * total * inner;
        for (x, len) in parts {
            let n = len * inner;
            out[at..at + n].copy_from_slice(&x[o * n..(o + 1) * n]);
            at += n;
        }
    }
}

/// `out[o, j, i] = x[o, start + j*step, i]` for `x` of `[outer, len, inner]`.
#[allow(clippy::too_many_arguments)]
pub fn slice<T: Copy>(
    x: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    start: usize,
    step: isize,
    count: usize,
    out: &mut [T],
) {
    for o in 0..outer {
        for j in 0..count {
            let src = (start as isize + j as isize * step) as usize;
            let from = (o * len + src) * inner;
            let to = (o * count + j) * inner;
            out[to..to + inner].copy_from_slice(&x[from..from + inner]);
        }
    }
}

/// `out[o, j, i] = x[o, idx[j], i]`; an index outside `0..len` is an error.
pub fn index_select<T: Copy>(
    x: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    idx: &[i64],
    out: &mut [T],
) -> Result<(), String> {
    if let Some(&bad) = idx.iter().find(|&&i| i < 0 || i as usize >= len) {
        return Err(format!("index {bad} is outside 0..{len}"));
    }
    let k = idx.len();
    for o in 0..outer {
        for (j, &i) in idx.iter().enumerate() {
            let from = (o * len + i as usize) * inner;
            let to = (o * k + j) * inner;
            out[to..to + inner].copy_from_slice(&x[from..from + inner]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_and_friends() {
        let x: Vec<i32> = (0..24).collect(); // [2, 3, 4]
        let mut o = vec![0; 24];
        transpose(&x, &[2, 3, 4], &[1, 0, 2], &mut o);
        assert_eq!(&o[..8], &[0, 1, 2, 3, 12, 13, 14, 15]);
        transpose(&x, &[2, 3, 4], &[2, 1, 0], &mut o);
        assert_eq!(&o[..4], &[0, 12, 4, 16]);
        let mut c = [0; 10];
        concat(&[(&[1, 2, 3][..], 3), (&[4, 5][..], 2)], 1, 1, &mut c[..5]);
        assert_eq!(&c[..5], &[1, 2, 3, 4, 5]);
        let mut s = vec![0; 2];
        slice(&[0, 1, 2, 3, 4], 1, 5, 1, 4, -2, 2, &mut s);
        assert_eq!(s, [4, 2]);
        assert!(index_select(&[1, 2], 1, 2, 1, &[2], &mut s).is_err());
        assert_eq!(
            broadcast_index(&[3, 1], &[2, 3, 2]),
            vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
        );
    }
}
