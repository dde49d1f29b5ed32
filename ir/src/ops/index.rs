//! Index arithmetic shared by the reference kernels: strides, broadcasting
//! and axis splitting of row-major tensors.

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy broadcasting of concrete shapes.
pub fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = (i + a.len()).checked_sub(rank).map(|j| a[j]).unwrap_or(1);
            let db = (i + b.len()).checked_sub(rank).map(|j| b[j]).unwrap_or(1);
            match (da, db) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// For every element of `out_shape` (row-major), the flat index of the
/// element of a tensor of `in_shape` that broadcasts to it.
pub fn broadcast_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let offset = out_shape.len() - in_shape.len();
    let in_strides = strides(in_shape);
    let mut eff = vec![0usize; out_shape.len()];
    for (i, &d) in in_shape.iter().enumerate() {
        eff[offset + i] = if d == 1 { 0 } else { in_strides[i] };
    }
    map_with_strides(out_shape, &eff, 0)
}

/// Flat indices of a strided view: element `idx` of `shape` reads
/// `base + sum(idx[i] * strides[i])`.
pub fn map_with_strides(shape: &[usize], strides: &[usize], base: usize) -> Vec<usize> {
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let mut idx = vec![0usize; shape.len()];
    let mut off = base;
    for _ in 0..n {
        out.push(off);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= strides[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}

/// Splits a shape around `axis` into (outer, axis extent, inner) element counts.
pub fn around_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let outer = shape[..axis].iter().product();
    let inner = shape[axis + 1..].iter().product();
    (outer, shape[axis], inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_map_repeats_size_one_dims() {
        assert_eq!(broadcast_map(&[2, 1], &[2, 3]), vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_map(&[3], &[2, 3]), vec![0, 1, 2, 0, 1, 2]);
        assert!(broadcast_map(&[1], &[0, 4]).is_empty());
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
    }
}
