// Row kernels: RMSNorm (alone and fused with the residual add), LayerNorm,
// softmax. One block of 256 threads per row; statistics in f32.

template <typename T>
__device__ void rms_norm_impl(const T* x, const T* w, T* y, int cols, float eps, float* scratch) {
    float ss = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ld(&x[i]);
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    float inv = 1.f / sqrtf(ss / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ld(&x[i]) * inv;
        st(&y[i], w ? v * ld(&w[i]) : v);
    }
}

template <typename T> __device__ void rms_norm_rows(const T* x, const T* w, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    i64 r = blockIdx.x;
    rms_norm_impl<T>(x + r * cols, w, y + r * cols, cols, eps, scratch);
}

// sum = a + b (stored rounded, as the op's first result), then the norm
// of the stored sum.
template <typename T>
__device__ void add_rms_norm_rows(const T* a, const T* b, const T* w, T* sum, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    i64 r = blockIdx.x;
    a += r * cols;
    b += r * cols;
    sum += r * cols;
    y += r * cols;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) st(&sum[i], ld(&a[i]) + ld(&b[i]));
    // Each thread reads back only what it wrote: no barrier needed here.
    rms_norm_impl<T>(sum, w, y, cols, eps, scratch);
}

// RMSNorm of rows held in registers: each thread loads V runs of eight
// elements once (16-byte loads), so a row costs one read of each operand
// and one write of each result instead of three dependent passes. For
// rows of at most V * 8 * blockDim.x elements, a multiple of 8, with
// 16-byte-aligned rows; the host picks V (1, 2 or 4) and falls back to
// the kernels above otherwise. With `b` null it is plain RMSNorm of `a`.
template <typename T, int V>
__device__ void rms_norm_vec_rows(const T* a, const T* b, const T* w, T* sum, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    const i64 r = blockIdx.x;
    a += r * cols;
    y += r * cols;
    float v[V][8];
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const int c = (threadIdx.x + k * blockDim.x) * 8;
        if (c < cols) {
            ld8(a + c, v[k]);
            if (b) {
                float o[8];
                ld8(b + r * cols + c, o);
#pragma unroll
                for (int e = 0; e < 8; ++e) v[k][e] = rnd<T>(v[k][e] + o[e]);
                st8(sum + r * cols + c, v[k]);
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) ss += v[k][e] * v[k][e];
        }
    }
    ss = block_sum(ss, scratch);
    const float inv = 1.f / sqrtf(ss / (float)cols + eps);
#pragma unroll
    for (int k = 0; k < V; ++k) {
        const int c = (threadIdx.x + k * blockDim.x) * 8;
        if (c < cols) {
            float o[8];
            if (w) {
                ld8(w + c, o);
#pragma unroll
                for (int e = 0; e < 8; ++e) o[e] *= v[k][e] * inv;
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) o[e] = v[k][e] * inv;
            }
            st8(y + c, o);
        }
    }
}

template <typename T>
__device__ void layer_norm_rows(const T* x, const T* w, const T* b, T* y, int cols, float eps) {
    __shared__ float scratch[32];
    i64 r = blockIdx.x;
    x += r * cols;
    y += r * cols;
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += ld(&x[i]);
    float mean = block_sum(s, scratch) / (float)cols;
    float q = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float d = ld(&x[i]) - mean;
        q += d * d;
    }
    float inv = 1.f / sqrtf(block_sum(q, scratch) / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = (ld(&x[i]) - mean) * inv;
        if (w) v *= ld(&w[i]);
        if (b) v += ld(&b[i]);
        st(&y[i], v);
    }
}

template <typename T> __device__ void softmax_rows(const T* x, T* y, int cols, int log_form) {
    __shared__ float scratch[32];
    i64 r = blockIdx.x;
    x += r * cols;
    y += r * cols;
    float m = -OPTC_INF;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, ld(&x[i]));
    m = block_max(m, scratch);
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(ld(&x[i]) - m);
    s = block_sum(s, scratch);
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ld(&x[i]) - m;
        st(&y[i], log_form ? v - logf(s) : expf(v) / s);
    }
}

#define OPTC_NORM_VEC(T, N, V)                                                                            \
    extern "C" __global__ void rms_norm_vec##V##_##N(const T* x, const T* w, T* y, int cols, float eps) { \
        pdl_start();                                                                                      \
        rms_norm_vec_rows<T, V>(x, nullptr, w, nullptr, y, cols, eps);                                     \
    }                                                                                                     \
    extern "C" __global__ void add_rms_norm_vec##V##_##N(const T* a, const T* b, const T* w, T* s, T* y,  \
                                                         int cols, float eps) {                           \
        pdl_start();                                                                                      \
        rms_norm_vec_rows<T, V>(a, b, w, s, y, cols, eps);                                                \
    }

#define OPTC_NORM(T, N)                                                                                   \
    extern "C" __global__ void rms_norm_##N(const T* x, const T* w, T* y, int cols, float eps) {          \
        pdl_start();                                                                                      \
        rms_norm_rows<T>(x, w, y, cols, eps);                                                             \
    }                                                                                                     \
    extern "C" __global__ void add_rms_norm_##N(const T* a, const T* b, const T* w, T* s, T* y, int cols, \
                                                float eps) {                                              \
        pdl_start();                                                                                      \
        add_rms_norm_rows<T>(a, b, w, s, y, cols, eps);                                                   \
    }                                                                                                     \
    extern "C" __global__ void layer_norm_##N(const T* x, const T* w, const T* b, T* y, int cols,         \
                                              float eps) {                                                \
        pdl_start();                                                                                      \
        layer_norm_rows<T>(x, w, b, y, cols, eps);                                                        \
    }                                                                                                     \
    extern "C" __global__ void softmax_##N(const T* x, T* y, int cols, int log_form) {                    \
        pdl_start();                                                                                      \
        softmax_rows<T>(x, y, cols, log_form);                                                            \
    }

OPTC_NORM(float, f32)
OPTC_NORM(bf16, bf16)
OPTC_NORM(f16, f16)
OPTC_NORM_VEC(float, f32, 1)
OPTC_NORM_VEC(float, f32, 2)
OPTC_NORM_VEC(float, f32, 4)
OPTC_NORM_VEC(bf16, bf16, 1)
OPTC_NORM_VEC(bf16, bf16, 2)
OPTC_NORM_VEC(bf16, bf16, 4)
OPTC_NORM_VEC(f16, f16, 1)
OPTC_NORM_VEC(f16, f16, 2)
OPTC_NORM_VEC(f16, f16, 4)
