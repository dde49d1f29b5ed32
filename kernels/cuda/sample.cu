// Greedy sampling on the GPU: the index of each row's largest logit and
// its log probability, so a greedy step copies back 8 bytes per sequence
// instead of a row of logits. Ties go to the lowest index, NaN never wins
// (as the host sampler).
//
// A vocabulary row is far too long for one block (128k logits took 0.28 ms
// that way), so two kernels: `argmax_part` gives each block one chunk of a
// row and leaves (max, its index, sum of exp(x - max)) per chunk; then
// `argmax_combine` merges a row's chunks with one warp.

// (m, i, s) merged with (om, oi, os): the larger max wins, the lower index
// on ties; the sums are rescaled to the winning max.
__device__ __forceinline__ void argmax_merge(float& m, int& i, float& s, float om, int oi, float os) {
    float nm = fmaxf(m, om);
    if (nm == -OPTC_INF) {
        // Both empty or all -inf: nothing to sum yet.
        if (oi < i) i = oi;
        return;
    }
    float a = s > 0.f ? s * expf(m - nm) : 0.f;
    float b = os > 0.f ? os * expf(om - nm) : 0.f;
    if (om > m || (om == m && oi < i)) i = oi;
    m = nm;
    s = a + b;
}

__device__ __forceinline__ void argmax_warp(float& m, int& i, float& s) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float om = __shfl_xor_sync(0xffffffffu, m, o);
        int oi = __shfl_xor_sync(0xffffffffu, i, o);
        float os = __shfl_xor_sync(0xffffffffu, s, o);
        argmax_merge(m, i, s, om, oi, os);
    }
}

// Grid (rows, chunks); part[(row * chunks + chunk) * 3 + {0, 1, 2}] = max,
// index (as int bits), sum of exp(x - max).
template <typename T> __device__ void argmax_part_impl(const T* x, float* part, int cols, int chunk) {
    __shared__ float sm[32], ss[32];
    __shared__ int si[32];
    const i64 r = blockIdx.x;
    const int b = blockIdx.y * chunk, e = min(cols, b + chunk);
    x += r * cols;
    float m = -OPTC_INF, s = 0.f;
    int bi = 0x7fffffff;
#pragma unroll 4
    for (int i = b + threadIdx.x; i < e; i += blockDim.x) {
        float v = ld(&x[i]);
        if (v > m) {
            s = (s > 0.f ? s * expf(m - v) : 0.f) + 1.f;
            m = v;
            bi = i;
        } else if (m > -OPTC_INF) {
            // NaN adds NaN to the sum, as exp(NaN) does on the host.
            s += expf(v - m);
        }
    }
    argmax_warp(m, bi, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        si[warp] = bi;
        ss[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        m = lane < nw ? sm[lane] : -OPTC_INF;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        s = lane < nw ? ss[lane] : 0.f;
        argmax_warp(m, bi, s);
        if (lane == 0) {
            float* p = part + (r * gridDim.y + blockIdx.y) * 3;
            p[0] = m;
            p[1] = __int_as_float(bi);
            p[2] = s;
        }
    }
}

// One warp per row: tokens in `out[row]`, log p(token) in `logprob[row]`.
__device__ void argmax_combine_impl(const float* part, int* out, float* logprob, int chunks) {
    const i64 r = blockIdx.x;
    const int lane = threadIdx.x;
    float m = -OPTC_INF, s = 0.f;
    int bi = 0x7fffffff;
    for (int c = lane; c < chunks; c += 32) {
        const float* p = part + (r * chunks + c) * 3;
        argmax_merge(m, bi, s, p[0], __float_as_int(p[1]), p[2]);
    }
    argmax_warp(m, bi, s);
    if (lane == 0) {
        out[r] = bi == 0x7fffffff ? 0 : bi;
        // log p(best) = -log(sum exp(x - max)).
        logprob[r] = m == -OPTC_INF ? -OPTC_INF : -logf(s);
    }
}

extern "C" __global__ void argmax_combine(const float* part, int* out, float* lp, int chunks) {
    argmax_combine_impl(part, out, lp, chunks);
}

#define OPTC_ARGMAX(T, N)                                                                        \
    extern "C" __global__ void argmax_part_##N(const T* x, float* part, int cols, int chunk) {  \
        argmax_part_impl<T>(x, part, cols, chunk);                                               \
    }

OPTC_ARGMAX(float, f32)
OPTC_ARGMAX(bf16, bf16)
OPTC_ARGMAX(f16, f16)
