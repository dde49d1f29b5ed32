// Data movement: strided copies (transpose, slice, split, concat pieces,
// expand), row gathers (index_select, embedding), RoPE.

// Copies `n` elements of a strided source to a strided destination.
// Elements are moved as raw words of their size.
template <typename E> __device__ void copy_impl(const E* x, E* y, i64 n, Strided s) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 a, b;
        strided_offsets(s, i, &a, &b);
        y[b] = x[a];
    }
}

// out[o, j, i] = x[o, idx[j], i]; an index outside [0, len) (which the host
// rejects for graph inputs) writes zeros rather than reading out of bounds.
template <typename E>
__device__ void gather_impl(const E* x, const i64* idx, E* y, i64 outer, i64 len, i64 inner, i64 nidx) {
    i64 n = outer * nidx * inner;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 k = i % inner;
        i64 j = (i / inner) % nidx;
        i64 o = i / (inner * nidx);
        i64 r = idx[j];
        if (r < 0) r += len;
        y[i] = (r >= 0 && r < len) ? x[(o * len + r) * inner + k] : (E)0;
    }
}

#define OPTC_LAYOUT(E, N)                                                                                 \
    extern "C" __global__ void copy_##N(const E* x, E* y, i64 n, Strided s) { copy_impl<E>(x, y, n, s); } \
    extern "C" __global__ void gather_##N(const E* x, const i64* idx, E* y, i64 outer, i64 len, i64 inner, \
                                          i64 nidx) {                                                     \
        gather_impl<E>(x, idx, y, outer, len, inner, nidx);                                               \
    }

OPTC_LAYOUT(unsigned char, b1)
OPTC_LAYOUT(unsigned short, b2)
OPTC_LAYOUT(unsigned int, b4)
OPTC_LAYOUT(unsigned long long, b8)

// RoPE over rows of `d`: the first `r` values of each row rotate with the
// row's cos/sin (rows of `r`), found through `s` (s.dims: x's leading
// dims; s.src: the cos/sin row strides per leading dim, 0 where they
// broadcast). `interleaved` rotates pairs (2i, 2i+1), else halves.
template <typename T>
__device__ void rope_impl(const T* x, const T* cs, const T* sn, T* y, i64 rows, int d, int r, int interleaved,
                          Strided s) {
    i64 n = rows * d;
    int half = r / 2;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int k = (int)(i % d);
        i64 row = i / d;
        const T* xr = x + row * d;
        if (k >= r) {
            y[i] = xr[k];
            continue;
        }
        i64 crow, unused;
        strided_offsets(s, row, &crow, &unused);
        float rot;
        if (interleaved) {
            rot = (k % 2 == 0) ? -ld(&xr[k + 1]) : ld(&xr[k - 1]);
        } else {
            rot = k < half ? -ld(&xr[k + half]) : ld(&xr[k - half]);
        }
        st(&y[i], ld(&xr[k]) * ld(&cs[crow * r + k]) + rot * ld(&sn[crow * r + k]));
    }
}

#define OPTC_ROPE(T, N)                                                                                   \
    extern "C" __global__ void rope_##N(const T* x, const T* c, const T* s, T* y, i64 rows, int d, int r,  \
                                        int il, Strided st_) {                                             \
        rope_impl<T>(x, c, s, y, rows, d, r, il, st_);                                                    \
    }

OPTC_ROPE(float, f32)
OPTC_ROPE(bf16, bf16)
OPTC_ROPE(f16, f16)
