// Paged attention over a block-table KV cache, for prefill chunks and
// decode alike. The cache write (slot_mapping) runs first as its own
// kernel; attention then reads every key, new or cached, from the cache.
//
// Work is split into tiles: a tile is up to ROWS/G query tokens of one
// sequence (G query heads per KV head), and a block handles one tile for
// one KV head, so the G heads of a group share every K/V chunk it loads.
// Keys stream through shared memory 32 at a time with an online softmax
// (FlashAttention-2 style); each warp owns ROWS/4 query rows. For few
// tiles (decode at small batch) the keys of a tile are split over
// `nsplit` blocks (flash-decoding) whose partial results a second kernel
// combines.

template <typename T>
__device__ void cache_write_impl(const T* k, const T* v, T* kc, T* vc, const i64* slots, i64 ntok, int kw,
                                 int vw) {
    i64 stride = (i64)gridDim.x * blockDim.x;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < ntok * kw; i += stride) {
        i64 s = slots[i / kw];
        if (s >= 0) kc[s * kw + i % kw] = k[i];
    }
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < ntok * vw; i += stride) {
        i64 s = slots[i / vw];
        if (s >= 0) vc[s * vw + i % vw] = v[i];
    }
}

template <typename T, int D, int ROWS>
__device__ void paged_attention_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                     const i64* block_tables, int max_blocks, const int* tiles, T* out,
                                     float* part, i64 ntok_all, int hq, int hkv, int bs, float scale, int window,
                                     int nsplit) {
    constexpr int RPW = ROWS / 4;
    constexpr int DPL = (D + 31) / 32;
    // K rows padded so lanes reading different keys hit different banks,
    // by 4 when rows are read as float4.
    constexpr bool VEC = D % 8 == 0;
    constexpr int KS = VEC ? D + 4 : D + 1;
    extern __shared__ __align__(16) float smem[];
    float* q_s = smem;                 // [ROWS][D]
    float* k_s = q_s + ROWS * D;       // [32][KS]
    float* v_s = k_s + 32 * (D + 4);   // [32][D]
    __shared__ i64 slot_s[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int seq = tiles[blockIdx.x * 3], t0 = tiles[blockIdx.x * 3 + 1], ntok = tiles[blockIdx.x * 3 + 2];
    const int kh = blockIdx.y, z = blockIdx.z;
    const int G = hq / hkv;
    const int rows = ntok * G;
    const i64* table = block_tables + (i64)seq * max_blocks;

    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        int t = t0 + r / G, h = kh * G + r % G;
        q_s[i] = ld(&q[((i64)t * hq + h) * D + d]) * scale;
    }
    // The tile's key range: from the earliest first key to the latest query.
    int kmin = 0x7fffffff, kmax = -1;
    for (int i = 0; i < ntok; ++i) {
        int p = (int)positions[t0 + i];
        int f = window > 0 ? max(0, p + 1 - window) : 0;
        kmin = min(kmin, f);
        kmax = max(kmax, p);
    }
    int pos[RPW], fst[RPW];
    float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        int r = warp + 4 * rr;
        int p = r < rows ? (int)positions[t0 + r / G] : -1;
        pos[rr] = p;
        fst[rr] = window > 0 ? max(0, p + 1 - window) : 0;
        m[rr] = -OPTC_INF;
        l[rr] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[rr][i] = 0.f;
    }
    const int nchunks = kmax >= kmin ? (kmax - kmin + 32) / 32 : 0;
    const int per = (nchunks + nsplit - 1) / nsplit;
    const int c_begin = z * per, c_end = min(nchunks, c_begin + per);
    for (int c = c_begin; c < c_end; ++c) {
        const int c0 = kmin + c * 32;
        __syncthreads();
        if (threadIdx.x < 32) {
            int p = c0 + threadIdx.x;
            slot_s[threadIdx.x] = p <= kmax ? table[p / bs] * bs + p % bs : -1;
        }
        __syncthreads();
        if constexpr (VEC) {
            // Eight elements per thread and load.
            for (int i = threadIdx.x; i < 32 * D / 8; i += blockDim.x) {
                int j = i / (D / 8), d = (i % (D / 8)) * 8;
                i64 slot = slot_s[j];
                float kv[8], vv[8];
                if (slot >= 0) {
                    i64 base = (slot * hkv + kh) * D + d;
                    ld8(kc + base, kv);
                    ld8(vc + base, vv);
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) kv[e] = vv[e] = 0.f;
                }
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    k_s[j * KS + d + e] = kv[e];
                    v_s[j * D + d + e] = vv[e];
                }
            }
        } else {
            for (int i = threadIdx.x; i < 32 * D; i += blockDim.x) {
                int j = i / D, d = i % D;
                i64 slot = slot_s[j];
                float kv = 0.f, vv = 0.f;
                if (slot >= 0) {
                    i64 base = (slot * hkv + kh) * D + d;
                    kv = ld(&kc[base]);
                    vv = ld(&vc[base]);
                }
                k_s[j * KS + d] = kv;
                v_s[j * D + d] = vv;
            }
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) {
            int r = warp + 4 * rr;
            if (r >= rows) continue;
            int p = c0 + lane;
            bool valid = p >= fst[rr] && p <= pos[rr];
            float s = -OPTC_INF;
            if (valid) {
                float dot = 0.f;
                const float* qr = q_s + r * D;
                const float* kr = k_s + lane * KS;
                if constexpr (VEC) {
#pragma unroll 8
                    for (int d = 0; d < D; d += 4) {
                        float4 a = *reinterpret_cast<const float4*>(qr + d);
                        float4 b = *reinterpret_cast<const float4*>(kr + d);
                        dot += a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
                    }
                } else {
#pragma unroll 16
                    for (int d = 0; d < D; ++d) dot += qr[d] * kr[d];
                }
                s = dot;
            }
            float mx = warp_max(s);
            if (mx == -OPTC_INF) continue;
            float mn = fmaxf(m[rr], mx);
            float corr = expf(m[rr] - mn);
            float pj = valid ? expf(s - mn) : 0.f;
            l[rr] = l[rr] * corr + warp_sum(pj);
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[rr][i] *= corr;
            for (int j = 0; j < 32; ++j) {
                float pb = __shfl_sync(0xffffffffu, pj, j);
                const float* vr = v_s + j * D;
#pragma unroll
                for (int i = 0; i < DPL; ++i) {
                    int d = lane + 32 * i;
                    if (d < D) acc[rr][i] += pb * vr[d];
                }
            }
            m[rr] = mn;
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        int r = warp + 4 * rr;
        if (r >= rows) continue;
        int t = t0 + r / G, h = kh * G + r % G;
        if (nsplit == 1) {
            T* o = out + ((i64)t * hq + h) * D;
            float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                int d = lane + 32 * i;
                if (d < D) st(&o[d], acc[rr][i] * inv);
            }
        } else {
            float* o = part + (((i64)z * ntok_all + t) * hq + h) * (D + 2);
#pragma unroll
            for (int i = 0; i < DPL; ++i) {
                int d = lane + 32 * i;
                if (d < D) o[d] = acc[rr][i];
            }
            if (lane == 0) {
                o[D] = m[rr];
                o[D + 1] = l[rr];
            }
        }
    }
}

// Combines the `nsplit` partial results of each (token, head) row.
template <typename T> __device__ void attention_combine_impl(const float* part, T* out, i64 rows, int d, int nsplit) {
    i64 row = blockIdx.x;
    if (row >= rows) return;
    float mx = -OPTC_INF;
    for (int z = 0; z < nsplit; ++z) mx = fmaxf(mx, part[((i64)z * rows + row) * (d + 2) + d]);
    float lsum = 0.f;
    for (int z = 0; z < nsplit; ++z) {
        const float* p = part + ((i64)z * rows + row) * (d + 2);
        if (p[d + 1] > 0.f) lsum += p[d + 1] * expf(p[d] - mx);
    }
    for (int k = threadIdx.x; k < d; k += blockDim.x) {
        float a = 0.f;
        for (int z = 0; z < nsplit; ++z) {
            const float* p = part + ((i64)z * rows + row) * (d + 2);
            if (p[d + 1] > 0.f) a += p[k] * expf(p[d] - mx);
        }
        st(&out[row * d + k], lsum > 0.f ? a / lsum : 0.f);
    }
}

#define OPTC_ATTENTION_COMMON(T, N)                                                                       \
    extern "C" __global__ void cache_write_##N(const T* k, const T* v, T* kc, T* vc, const i64* slots,    \
                                               i64 ntok, int kw, int vw) {                                \
        cache_write_impl<T>(k, v, kc, vc, slots, ntok, kw, vw);                                           \
    }                                                                                                     \
    extern "C" __global__ void attention_combine_##N(const float* part, T* out, i64 rows, int d, int ns) { \
        attention_combine_impl<T>(part, out, rows, d, ns);                                                \
    }

OPTC_ATTENTION_COMMON(float, f32)
OPTC_ATTENTION_COMMON(bf16, bf16)
OPTC_ATTENTION_COMMON(f16, f16)

// Instantiated by the host for each (dtype, head dim) a graph needs, e.g.
// OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64) defines paged_attention_bf16_d64.
#define OPTC_PAGED_ATTENTION(T, N, D, ROWS)                                                               \
    extern "C" __global__ void __launch_bounds__(128) paged_attention_##N##_d##D(                         \
        const T* q, const T* kc, const T* vc, const i64* positions, const i64* block_tables,              \
        int max_blocks, const int* tiles, T* out, float* part, i64 ntok_all, int hq, int hkv, int bs,     \
        float scale, int window, int nsplit) {                                                            \
        paged_attention_impl<T, D, ROWS>(q, kc, vc, positions, block_tables, max_blocks, tiles, out, part, \
                                         ntok_all, hq, hkv, bs, scale, window, nsplit);                   \
    }
