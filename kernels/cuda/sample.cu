// Greedy sampling on the GPU: the index of each row's largest logit, so a
// greedy step copies back one integer per sequence instead of a row of
// logits. Ties go to the lowest index, NaN never wins (as the host sampler).

template <typename T> __device__ void argmax_impl(const T* x, int* out, int cols) {
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
    }
}

extern "C" __global__ void argmax_f32(const float* x, int* out, int cols) { argmax_impl<float>(x, out, cols); }
extern "C" __global__ void argmax_bf16(const bf16* x, int* out, int cols) { argmax_impl<bf16>(x, out, cols); }
extern "C" __global__ void argmax_f16(const f16* x, int* out, int cols) { argmax_impl<f16>(x, out, cols); }
