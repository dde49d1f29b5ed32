// Elementwise kernels: unary maps, broadcasting binaries, casts, SwiGLU,
// GELU. One thread per element, grid-stride loops. The maps themselves
// (`unary_op`, `binary_op`, `gelu_op`) are in common.cuh: the generated
// kernels of fused elementwise chains use them too.

template <typename T> __device__ void unary_impl(int op, const T* x, T* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        st(&y[i], unary_op(op, ld(&x[i])));
}

// `s.src` strides walk `a`, `s.dst` strides walk `b` (0 where broadcast);
// the output is contiguous over `s.dims`.
template <typename T> __device__ void binary_impl(int op, const T* a, const T* b, T* y, i64 n, Strided s) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 oa, ob;
        strided_offsets(s, i, &oa, &ob);
        st(&y[i], binary_op(op, ld(&a[oa]), ld(&b[ob])));
    }
}

template <typename T> __device__ void swiglu_impl(const T* g, const T* u, T* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float x = ld(&g[i]);
        st(&y[i], x / (1.f + expf(-x)) * ld(&u[i]));
    }
}

// SwiGLU of the two halves of each row of `x` (rows of 2f: gate, then
// up), as the gate/up GEMM leaves them: no split copies. With `vec` (f a
// multiple of 8, 16-byte-aligned rows) each thread moves eight elements.
template <typename T> __device__ void swiglu_split_impl(const T* x, T* y, i64 rows, i64 f, int vec) {
    const i64 stride = (i64)gridDim.x * blockDim.x;
    if (vec) {
        const i64 n = rows * (f / 8);
        for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += stride) {
            const i64 r = i / (f / 8), j = (i % (f / 8)) * 8;
            float g[8], u[8];
            ld8(x + r * 2 * f + j, g);
            ld8(x + r * 2 * f + f + j, u);
#pragma unroll
            for (int e = 0; e < 8; ++e) g[e] = g[e] / (1.f + expf(-g[e])) * u[e];
            st8(y + r * f + j, g);
        }
        return;
    }
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < rows * f; i += stride) {
        const i64 r = i / f, j = i % f;
        const float g = ld(&x[r * 2 * f + j]);
        st(&y[i], g / (1.f + expf(-g)) * ld(&x[r * 2 * f + f + j]));
    }
}

template <typename T> __device__ void gelu_impl(int tanh_form, const T* x, T* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        st(&y[i], gelu_op(tanh_form, ld(&x[i])));
    }
}

template <typename A, typename B> __device__ void cast_impl(const A* x, B* y, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        st(&y[i], ld(&x[i]));
}

#define OPTC_ELEMENTWISE(T, N)                                                                            \
    extern "C" __global__ void unary_##N(int op, const T* x, T* y, i64 n) {                               \
        pdl_start();                                                                                      \
        unary_impl<T>(op, x, y, n);                                                                       \
    }                                                                                                     \
    extern "C" __global__ void binary_##N(int op, const T* a, const T* b, T* y, i64 n, Strided s) {       \
        pdl_start();                                                                                      \
        binary_impl<T>(op, a, b, y, n, s);                                                                \
    }                                                                                                     \
    extern "C" __global__ void swiglu_##N(const T* g, const T* u, T* y, i64 n) {                          \
        pdl_start();                                                                                      \
        swiglu_impl<T>(g, u, y, n);                                                                       \
    }                                                                                                     \
    extern "C" __global__ void swiglu_split_##N(const T* x, T* y, i64 rows, i64 f, int vec) {            \
        pdl_start();                                                                                      \
        swiglu_split_impl<T>(x, y, rows, f, vec);                                                         \
    }                                                                                                     \
    extern "C" __global__ void gelu_##N(int t, const T* x, T* y, i64 n) {                                 \
        pdl_start();                                                                                      \
        gelu_impl<T>(t, x, y, n);                                                                         \
    }

OPTC_ELEMENTWISE(float, f32)
OPTC_ELEMENTWISE(bf16, bf16)
OPTC_ELEMENTWISE(f16, f16)

#define OPTC_CAST(A, NA, B, NB) \
    extern "C" __global__ void cast_##NA##_##NB(const A* x, B* y, i64 n) {                                \
        pdl_start();                                                                                      \
        cast_impl<A, B>(x, y, n);                                                                         \
    }

OPTC_CAST(float, f32, bf16, bf16)
OPTC_CAST(float, f32, f16, f16)
OPTC_CAST(float, f32, float, f32)
OPTC_CAST(bf16, bf16, float, f32)
OPTC_CAST(bf16, bf16, f16, f16)
OPTC_CAST(bf16, bf16, bf16, bf16)
OPTC_CAST(f16, f16, float, f32)
OPTC_CAST(f16, f16, bf16, bf16)
OPTC_CAST(f16, f16, f16, f16)
OPTC_CAST(i64, i64, float, f32)
OPTC_CAST(i64, i64, bf16, bf16)
OPTC_CAST(i64, i64, f16, f16)
