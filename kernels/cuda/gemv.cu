// Linear layers at decode batch sizes: y[m, n] = sum_k x[m, k] w[n, k]
// (+ b[n]) for M <= 4 rows of x, where the time is one pass over the
// weight. The rows of x go to shared memory once per block; each warp
// owns two weight rows and each lane streams eight elements (16 bytes) of
// both per step, several steps in flight; f32 accumulation, one rounding
// at the store. Needs k % 8 == 0, 16-byte-aligned operands and M * k
// elements of dynamic shared memory (the host checks).

constexpr int GEMV_ROWS_PER_WARP = 2;

template <typename T, int M>
__device__ void gemv_impl(const T* x, const T* w, const T* b, T* y, int n, int k, int m) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xs = reinterpret_cast<T*>(gemv_smem);
    constexpr int PER16 = 16 / sizeof(T);
    for (int i = threadIdx.x * PER16; i < m * k; i += blockDim.x * PER16)
        *reinterpret_cast<uint4*>(xs + i) = *reinterpret_cast<const uint4*>(x + i);
    __syncthreads();
    constexpr int R = GEMV_ROWS_PER_WARP;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * (blockDim.x >> 5) + warp) * R;
    if (row0 >= n) return;
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < M; ++j) acc[r][j] = 0.f;
    const T* wr[R];
#pragma unroll
    for (int r = 0; r < R; ++r) wr[r] = w + (i64)min(row0 + r, n - 1) * k;
    // U steps of 16-byte weight loads issued before any is used.
    constexpr int U = 4;
    for (int k0 = lane * 8; k0 < k; k0 += 256 * U) {
        uint4 raw[U][R][sizeof(T) / 2];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kk = k0 + u * 256;
#pragma unroll
            for (int r = 0; r < R; ++r) {
#pragma unroll
                for (int h = 0; h < (int)(sizeof(T) / 2); ++h) {
                    raw[u][r][h] = kk < k ? reinterpret_cast<const uint4*>(wr[r] + kk)[h] : make_uint4(0, 0, 0, 0);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kk = k0 + u * 256;
            if (kk >= k) break;
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float wv[8];
                ld8(reinterpret_cast<const T*>(raw[u][r]), wv);
#pragma unroll
                for (int j = 0; j < M; ++j) {
                    if (j >= m) break;
                    float xv[8];
                    ld8(xs + j * k + kk, xv);
#pragma unroll
                    for (int e = 0; e < 8; ++e) acc[r][j] += wv[e] * xv[e];
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int j = 0; j < M; ++j) {
            const float v = warp_sum(acc[r][j]);
            if (lane == 0 && j < m && row0 + r < n) st(&y[(i64)j * n + row0 + r], b ? v + ld(&b[row0 + r]) : v);
        }
    }
}

#define OPTC_GEMV(T, N)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) gemv_##N##_m1(const T* x, const T* w, const T* b,  \
                                                                    T* y, int n, int k, int m) {         \
        gemv_impl<T, 1>(x, w, b, y, n, k, m);                                                             \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) gemv_##N##_m4(const T* x, const T* w, const T* b,  \
                                                                    T* y, int n, int k, int m) {         \
        gemv_impl<T, 4>(x, w, b, y, n, k, m);                                                             \
    }

OPTC_GEMV(float, f32)
OPTC_GEMV(bf16, bf16)
OPTC_GEMV(f16, f16)
