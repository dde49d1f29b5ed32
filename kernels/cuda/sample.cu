// Greedy sampling on the GPU: the index of each row's largest logit and
// its log probability, so a greedy step copies back 8 bytes per sequence
// instead of a row of logits. Ties go to the lowest index, NaN never wins
// (as the host sampler).

template <typename T> __device__ void argmax_impl(const T* x, int* out, float* logprob, int cols) {
    __shared__ float sbest;
    __shared__ float sv[32];
    __shared__ int si[32];
    i64 r = blockIdx.x;
    x += r * cols;
    float best = -OPTC_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) {
        float v = ld(&x[i]);
        if (v > best || (v == best && i < bi)) {
            best = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, best, o);
        int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) {
            best = ov;
            bi = oi;
        }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sv[warp] = best;
        si[warp] = bi;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int nw = blockDim.x >> 5;
        for (int w = 1; w < nw; ++w) {
            if (sv[w] > best || (sv[w] == best && si[w] < bi)) {
                best = sv[w];
                bi = si[w];
            }
        }
        out[r] = bi == 0x7fffffff ? 0 : bi;
        sbest = best;
    }
    __syncthreads();
    // log p(best) = -log(sum exp(x - max)).
    float m = sbest;
    float s = 0.f;
    for (int i = threadIdx.x; i < cols; i += blockDim.x) s += expf(ld(&x[i]) - m);
    s = block_sum(s, sv);
    if (threadIdx.x == 0) logprob[r] = m == -OPTC_INF ? -OPTC_INF : -logf(s);
}

#define OPTC_ARGMAX(T, N)                                                                        \
    extern "C" __global__ void argmax_##N(const T* x, int* out, float* lp, int cols) {           \
        argmax_impl<T>(x, out, lp, cols);                                                        \
    }

OPTC_ARGMAX(float, f32)
OPTC_ARGMAX(bf16, bf16)
OPTC_ARGMAX(f16, f16)
