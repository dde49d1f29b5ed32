//! Strided views for the copy, broadcast and RoPE kernels: dims with
//! source and destination element strides, laid out as `Strided` in
//! `kernels/cuda/common.cuh`.

use cudarc::driver::DeviceRepr;

pub(super) const MAX_RANK: usize = 6;

/// Mirrors `Strided` in `kernels/cuda/common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Strided {
    rank: i32,
    dims: [i64; MAX_RANK],
    src: [i64; MAX_RANK],
    dst: [i64; MAX_RANK],
}

unsafe impl DeviceRepr for Strided {}

pub(super) fn contiguous(d: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1] as i64;
    }
    s
}

/// Strides of `from` (right-aligned) read over `to`, 0 where it broadcasts.
pub(super) fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<i64> {
    let cs = contiguous(from);
    let off = to.len() - from.len();
    (0..to.len())
        .map(|i| {
            if i < off || from[i - off] == 1 {
                0
            } else {
                cs[i - off]
            }
        })
        .collect()
}

pub(super) fn strided(dims: &[usize], src: &[i64], dst: &[i64]) -> Strided {
    let mut s = Strided::default();
    if dims.is_empty() {
        s.rank = 1;
        s.dims[0] = 1;
        return s;
    }
    s.rank = dims.len() as i32;
    for i in 0..dims.len() {
        s.dims[i] = dims[i] as i64;
        s.src[i] = src[i];
        s.dst[i] = dst[i];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_zero_the_broadcast_dims() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), vec![0]);
    }

    #[test]
    fn the_strided_struct_matches_the_c_layout() {
        // int rank (padded to 8) + three arrays of six i64.
        assert_eq!(std::mem::size_of::<Strided>(), 8 + 3 * 48);
    }
}
