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

// Decode: one query token per sequence, so one block per (sequence, KV
// head, split) holds the G <= 8 query heads of its group in shared memory
// and its four warps take 32-key chunks in turn, a lane per key. A lane
// starts the copy of its key's value row into the warp's shared stage
// (cp.async, 16 bytes at a time), reads its key row with 16-byte loads and
// scores it against every head while the copy runs; values then
// accumulate from the stage with a lane per D/32 dims. The warps' states
// merge in shared memory; with several splits each block leaves its
// partial state and the last block of a (sequence, KV head) to finish
// (counted in `counters`, which it resets to 0) merges them, so decode is
// one launch. Needs D % 8 == 0, 16-byte-aligned rows and
// `paged_decode_smem_bytes` of dynamic shared memory (the host checks).
constexpr int DECODE_GROUP = 8;

__device__ __forceinline__ void cp_async_wait_all() {
    asm volatile("cp.async.commit_group;\n" ::);
    asm volatile("cp.async.wait_group 0;\n" ::);
}

// The end of a decode block: its NW warps left their softmax state per
// query head in shared memory (`m` on the natural-log scale, `l`, and the
// unnormalised output row, strides DECODE_GROUP and DECODE_GROUP * D);
// merge them, then either store the output (one split) or leave the
// block's partial state, and the last block of a (token, KV head) to
// finish (counted in `counters`, which it resets to 0) merges the splits.
template <typename T, int D, int NW = 4>
__device__ void decode_merge(const float* m_s, const float* l_s, const float* a_s, int* last_s, T* out,
                             float* part, int* counters, int t, int kh, int z, int nsplit, int ntok, int hq,
                             int hkv, int G) {
    constexpr int GM = DECODE_GROUP;
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D;
        float mx = -OPTC_INF;
        for (int w = 0; w < NW; ++w) mx = fmaxf(mx, m_s[w * GM + g]);
        float lsum = 0.f, a = 0.f;
        if (mx > -OPTC_INF) {
            for (int w = 0; w < NW; ++w) {
                const float f = expf(m_s[w * GM + g] - mx);
                lsum += l_s[w * GM + g] * f;
                a += a_s[w * GM * D + i] * f;
            }
        }
        const int h = kh * G + g, d = i % D;
        if (nsplit == 1) {
            st(&out[((i64)t * hq + h) * D + d], lsum > 0.f ? a / lsum : 0.f);
        } else {
            float* o = part + (((i64)z * ntok + t) * hq + h) * (D + 2);
            o[d] = a;
            if (d == 0) {
                o[D] = mx;
                o[D + 1] = lsum;
            }
        }
    }
    if (nsplit == 1) return;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
        int* ctr = counters + (i64)t * hkv + kh;
        const int done = atomicAdd(ctr, 1);
        *last_s = done == nsplit - 1;
        if (*last_s) *ctr = 0;
    }
    __syncthreads();
    if (!*last_s) return;
    __threadfence();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D, d = i % D, h = kh * G + g;
        float mx = -OPTC_INF;
        for (int zz = 0; zz < nsplit; ++zz) {
            const float* o = part + (((i64)zz * ntok + t) * hq + h) * (D + 2);
            mx = fmaxf(mx, __ldcg(&o[D]));
        }
        float lsum = 0.f, a = 0.f;
        if (mx > -OPTC_INF) {
            for (int zz = 0; zz < nsplit; ++zz) {
                const float* o = part + (((i64)zz * ntok + t) * hq + h) * (D + 2);
                const float lz = __ldcg(&o[D + 1]);
                if (lz > 0.f) {
                    const float f = expf(__ldcg(&o[D]) - mx);
                    lsum += lz * f;
                    a += __ldcg(&o[d]) * f;
                }
            }
        }
        st(&out[((i64)t * hq + h) * D + d], lsum > 0.f ? a / lsum : 0.f);
    }
}

template <typename T, int D>
__device__ void paged_decode_simt_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                  const i64* block_tables, int max_blocks, T* out, float* part, int* counters,
                                  int ntok, int hq, int hkv, int bs, float scale, int window) {
    // Head dims past 256 would overflow static shared memory: the host
    // never launches this kernel for them, and they compile to nothing.
    if constexpr (D <= 256) {
    constexpr int DPL = (D + 31) / 32;
    constexpr int GM = DECODE_GROUP;
    __shared__ __align__(16) float q_s[GM * D];
    __shared__ float m_s[4][GM], l_s[4][GM];
    __shared__ float a_s[4][GM * D];
    __shared__ int last_s;
    // Per warp: 32 value rows of D.
    extern __shared__ __align__(16) unsigned char decode_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T* v_s = reinterpret_cast<T*>(decode_smem) + warp * 32 * D;
    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z, nsplit = gridDim.z;
    const int G = hq / hkv;
    pdl_wait();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) q_s[i] = ld(&q[((i64)t * hq + kh * G) * D + i]) * scale;
    const int p = (int)positions[t];
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int nchunks = (p - first + 32) / 32;
    const int per = (nchunks + nsplit - 1) / nsplit;
    const int c_begin = z * per, c_end = min(nchunks, c_begin + per);
    const i64* table = block_tables + (i64)t * max_blocks;
    float m[GM], l[GM], acc[GM][DPL];
#pragma unroll
    for (int g = 0; g < GM; ++g) {
        m[g] = -OPTC_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[g][i] = 0.f;
    }
    __syncthreads();
    for (int c = c_begin + warp; c < c_end; c += 4) {
        const int key = first + c * 32 + lane;
        const bool valid = key <= p;
        const i64 slot = valid ? table[key / bs] * bs + key % bs : -1;
        float sc[GM];
#pragma unroll
        for (int g = 0; g < GM; ++g) sc[g] = 0.f;
        if (valid) {
            const i64 base = (slot * hkv + kh) * D;
            constexpr int PER16 = 16 / sizeof(T);
#pragma unroll 4
            for (int d = 0; d < D; d += PER16) cp_async16(v_s + lane * D + d, vc + base + d);
            const T* kr = kc + base;
#pragma unroll 4
            for (int d = 0; d < D; d += 8) {
                float kv[8];
                ld8(kr + d, kv);
#pragma unroll
                for (int g = 0; g < GM; ++g) {
                    if (g < G) {
                        const float4 a = *reinterpret_cast<const float4*>(&q_s[g * D + d]);
                        const float4 b = *reinterpret_cast<const float4*>(&q_s[g * D + d + 4]);
                        sc[g] += a.x * kv[0] + a.y * kv[1] + a.z * kv[2] + a.w * kv[3] + b.x * kv[4] +
                                 b.y * kv[5] + b.z * kv[6] + b.w * kv[7];
                    }
                }
            }
        }
        float pr[GM];
#pragma unroll
        for (int g = 0; g < GM; ++g) {
            if (g >= G) continue;
            const float mx = warp_max(valid ? sc[g] : -OPTC_INF);
            const float mn = fmaxf(m[g], mx);
            const float corr = expf(m[g] - mn);
            pr[g] = valid ? expf(sc[g] - mn) : 0.f;
            l[g] = l[g] * corr + pr[g];
#pragma unroll
            for (int i = 0; i < DPL; ++i) acc[g][i] *= corr;
            m[g] = mn;
        }
        cp_async_wait_all();
        __syncwarp();
        const int nvalid = min(32, p - (first + c * 32) + 1);
#pragma unroll 4
        for (int j = 0; j < nvalid; ++j) {
            const T* vr = v_s + j * D + lane * DPL;
            float vv[DPL];
#pragma unroll
            for (int i = 0; i < DPL; ++i) vv[i] = lane * DPL + i < D ? ld(&vr[i]) : 0.f;
#pragma unroll
            for (int g = 0; g < GM; ++g) {
                if (g >= G) continue;
                const float pj = __shfl_sync(0xffffffffu, pr[g], j);
#pragma unroll
                for (int i = 0; i < DPL; ++i) acc[g][i] += pj * vv[i];
            }
        }
        // The next chunk's copies overwrite the stage.
        __syncwarp();
    }
    // Merge the four warps.
#pragma unroll
    for (int g = 0; g < GM; ++g) {
        if (g >= G) continue;
        const float lw = warp_sum(l[g]);
        if (lane == 0) {
            m_s[warp][g] = m[g];
            l_s[warp][g] = lw;
        }
#pragma unroll
        for (int i = 0; i < DPL; ++i) {
            const int d = lane * DPL + i;
            if (d < D) a_s[warp][g * D + d] = acc[g][i];
        }
    }
    decode_merge<T, D>(&m_s[0][0], &l_s[0][0], &a_s[0][0], &last_s, out, part, counters, t, kh, z, nsplit, ntok,
                       hq, hkv, G);
    }
}

// Decode on the tensor cores, for 16-bit types and head dims that are a
// multiple of 16 up to 128 (`decode_mma_supported` on the host). Same grid
// and split merge as above, with NW warps a block (four, or eight for
// grids that leave SMs idle: `paged_decode8_*`, so each warp walks half
// the chunks a one-token step waits on), but each warp streams its chunks of KS keys
// through two shared-memory stages (cp.async: the next chunk's keys and
// values load while this one computes) and runs both products as
// m16n8k16 MMAs: the G <= 8 query heads are the rows (padded to 16) of
// S = Q Kᵀ and of O += P V, keys and head dims the columns. The softmax
// stays in f32 registers; P enters the second product as hi + lo in the
// input type, like the prefill kernel, so it keeps about 16 bits. Rows of
// a stage are padded by 8 elements: ldmatrix reads them without bank
// conflicts.
template <int D> struct DecodeMma {
    static constexpr int KS = D <= 64 ? 32 : 16;  // keys per chunk
    static constexpr int RS = D + 8;              // row stride in a stage
    static constexpr int STAGE = 2 * KS * RS;     // K rows, then V rows
};

// The rope + cache write done inside decode attention (`paged_decode_rope_*`):
// queries, keys and values come from the QKV projection's rows (`qkv`, of
// `width`: hq query heads, hkv key heads, hkv value heads, all of the head
// dim), rotated as `rope_qkv_cache_impl` rotates them (cos/sin rows of `r`
// per token, `il` interleaved pairs) and rounded to T as it stores them.
// The warp whose chunk holds the new key writes it and its value to the
// cache (`slots`, as `rope_qkv_cache_impl`; negative: no write) and into
// its stage, so no other block or kernel reads them this step.
template <typename T> struct DecodeRope {
    const T* qkv;
    const T* cs;
    const T* sn;
    const i64* slots;
    T* kc;  // the caches, as the kernel's kc and vc but writable
    T* vc;
    int width, r, il;
    // Channel c of a head's row x (of token t), rotated.
    __device__ __forceinline__ float at(const T* x, int t, int c) const {
        return c >= r ? ld(&x[c]) : rope_rotate(x, cs + (i64)t * r, sn + (i64)t * r, c, r, il);
    }
};

template <typename T, int D, int NW = 4, bool ROPE = false>
__device__ void paged_decode_mma_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                      const i64* block_tables, int max_blocks, T* out, float* part, int* counters,
                                      int ntok, int hq, int hkv, int bs, float scale, int window,
                                      DecodeRope<T> rope = {}) {
    constexpr int KS = DecodeMma<D>::KS, RS = DecodeMma<D>::RS, STAGE = DecodeMma<D>::STAGE;
    constexpr int NB = KS / 8, DK = D / 16, DN = D / 8, PIECES = D / 8, GM = DECODE_GROUP;
    extern __shared__ __align__(16) unsigned char decode_smem[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    T* stages = reinterpret_cast<T*>(decode_smem) + warp * 2 * STAGE;
    const int t = blockIdx.x, kh = blockIdx.y, z = blockIdx.z, nsplit = gridDim.z;
    const int G = hq / hkv;
    const int p = (int)positions[t];
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int nchunks = (p - first + KS) / KS;
    const int per = (nchunks + nsplit - 1) / nsplit;
    const int c_begin = z * per, c_end = min(nchunks, c_begin + per);
    const i64* table = block_tables + (i64)t * max_blocks;

    // Starts the copies of chunk c's key and value rows into stage `st`;
    // keys past the context are zeros. `early`: issued before pdl_wait(),
    // so the key at p (which the kernel ahead writes) is left for
    // `load_current`; every earlier key was written by an earlier step.
    // With ROPE the key at p never comes from the cache (`put_current`).
    auto load = [&](int c, T* st, bool early) {
        const int k0 = first + c * KS;
        const int mine = k0 + lane % KS;
        const int slot = mine <= p ? (int)(table[mine / bs] * bs + mine % bs) : 0;
#pragma unroll
        for (int it = 0; it < KS * PIECES / 32; ++it) {
            const int i = lane + 32 * it, r = i / PIECES, pc = i % PIECES;
            const int sl = __shfl_sync(0xffffffffu, slot, r);
            if ((early || ROPE) && k0 + r == p) continue;
            const bool ok = k0 + r <= p;
            const i64 off = ok ? ((i64)sl * hkv + kh) * D + pc * 8 : 0;
            cp_async16_or_zero(st + r * RS + pc * 8, kc + off, ok);
            cp_async16_or_zero(st + (KS + r) * RS + pc * 8, vc + off, ok);
        }
        cp_async_commit();
    };
    // The key and value at p into row p - k0 of chunk c's stage. Its slot
    // (host metadata, like the table) is read before the wait.
    const i64 slot_p = table[p / bs] * bs + p % bs;
    auto load_current = [&](int c, T* st) {
        const int r = p - (first + c * KS);
        const i64 slot = slot_p;
        if (lane < 2 * PIECES) {
            const int pc = lane % PIECES, v = lane / PIECES;
            cp_async16_or_zero(st + (v * KS + r) * RS + pc * 8, (v ? vc : kc) + (slot * hkv + kh) * D + pc * 8,
                               true);
        }
        cp_async_commit();
    };

    // A warp's chunks are c_begin + warp + NW i; two stages in flight.
    // The first two stream in before the wait for the kernel ahead.
    int c = c_begin + warp;
    if (c < c_end) load(c, stages, true);
    if (c + NW < c_end) load(c + NW, stages + STAGE, true);
    pdl_wait();
    const int current = (p - first) / KS;  // the chunk holding p
    const bool late = current < c_end && (current == c || current == c + NW);
    // ROPE: the warp whose chunks include `current` rotates the new key
    // (lane's channels lane, lane + 32, ...), writes it and the value to
    // the cache, and keeps them to put into that chunk's stage.
    constexpr int PER_LANE = (D + 31) / 32;
    T kp[PER_LANE], vp[PER_LANE];
    const bool owner = ROPE && current >= c && current < c_end && (current - c) % NW == 0;
    if constexpr (ROPE) {
        if (owner) {
            const T* row = rope.qkv + (i64)t * rope.width;
            const T* xk = row + (hq + kh) * D;
            const T* xv = row + (hq + hkv) * D + kh * D;
            const i64 sl = rope.slots[t];
#pragma unroll
            for (int e = 0; e < PER_LANE; ++e) {
                const int ch = lane + 32 * e;
                if (ch < D) {
                    st(&kp[e], rope.at(xk, t, ch));
                    vp[e] = xv[ch];
                    if (sl >= 0) {
                        rope.kc[(sl * hkv + kh) * D + ch] = kp[e];
                        rope.vc[(sl * hkv + kh) * D + ch] = vp[e];
                    }
                }
            }
        }
    }
    // The kept key and value into row p - k0 of chunk cc's stage (plain
    // stores: the warp syncs before it reads the stage).
    auto put_current = [&](int cc, T* st, bool commit) {
        const int r = p - (first + cc * KS);
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) {
            const int ch = lane + 32 * e;
            if (ch < D) {
                st[r * RS + ch] = kp[e];
                st[(KS + r) * RS + ch] = vp[e];
            }
        }
        if (commit) cp_async_commit();  // the group load_current would have made
    };
    if (late) {
        if constexpr (ROPE) {
            put_current(current, stages + (current == c ? 0 : STAGE), true);
        } else {
            load_current(current, stages + (current == c ? 0 : STAGE));
        }
    }
    // Query rows g < G of this KV group as A fragments (columns 2tq, +1
    // and 2tq + 8, +9 of each 16-dim step).
    unsigned qa[DK][2];
#pragma unroll
    for (int s = 0; s < DK; ++s) {
        qa[s][0] = qa[s][1] = 0u;
        if (g < G) {
            if constexpr (ROPE) {
                const T* qr = rope.qkv + (i64)t * rope.width + (kh * G + g) * D;
                const int c0 = 16 * s + 2 * tq;
                qa[s][0] = pack2((T*)nullptr, rope.at(qr, t, c0), rope.at(qr, t, c0 + 1));
                qa[s][1] = pack2((T*)nullptr, rope.at(qr, t, c0 + 8), rope.at(qr, t, c0 + 9));
            } else {
                // From L2 (.cg): read once, by this block only.
                const T* qr = q + ((i64)t * hq + kh * G + g) * D + 16 * s + 2 * tq;
                qa[s][0] = __ldcg(reinterpret_cast<const unsigned*>(qr));
                qa[s][1] = __ldcg(reinterpret_cast<const unsigned*>(qr + 8));
            }
        }
    }
    OPTC_TRACE_MARK(3);
    const float sl2 = scale * 1.4426950408889634f;
    float m_r = -OPTC_INF, l_r = 0.f;  // row g, on the log2 scale; l over this lane's columns
    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;
    int buf = 0;
    for (; c < c_end; c += NW) {
        T* st = stages + buf * STAGE;
        // This chunk's group done; the next one's may still be in flight.
        // (The key at p, committed last, is in the last chunk: when it is
        // this one, nothing follows and all groups are waited for.)
        if (c + NW < c_end) {
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();
        const int k0 = first + c * KS;
        // S = Q Kᵀ, two 8-key column blocks per ldmatrix.
        float s[NB][4];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
        for (int nb = 0; nb < NB; nb += 2) {
#pragma unroll
            for (int ks = 0; ks < DK; ++ks) {
                unsigned b[4];
                ldsm_x4(b, st + ((nb + (lane >> 4)) * 8 + (lane & 7)) * RS + ks * 16 + ((lane >> 3) & 1) * 8);
                mma16816((T*)nullptr, s[nb], qa[ks][0], 0u, qa[ks][1], 0u, b[0], b[1]);
                mma16816((T*)nullptr, s[nb + 1], qa[ks][0], 0u, qa[ks][1], 0u, b[2], b[3]);
            }
        }
        // Online softmax over this lane's two columns per block, then
        // across the four lanes of row g.
        float mx = -OPTC_INF;
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int key = k0 + nb * 8 + 2 * tq + e;
                s[nb][e] = key <= p ? s[nb][e] * sl2 : -OPTC_INF;
                mx = fmaxf(mx, s[nb][e]);
            }
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        // The chunk's first key is in the context, so mn is finite.
        const float mn = fmaxf(m_r, mx);
        const float corr = exp2f(m_r - mn);
        m_r = mn;
        l_r *= corr;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
            o[dn][0] *= corr;
            o[dn][1] *= corr;
        }
        // P as A fragments of 16-key steps: hi and the rest.
        unsigned ph[NB][1], pl[NB][1];
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
            const float p0 = exp2f(s[nb][0] - mn), p1 = exp2f(s[nb][1] - mn);
            l_r += p0 + p1;
            ph[nb][0] = pack2((T*)nullptr, p0, p1);
            const float2 h = unpack2((T*)nullptr, ph[nb][0]);
            pl[nb][0] = pack2((T*)nullptr, p0 - h.x, p1 - h.y);
        }
        // O += P V, two 8-dim column blocks per ldmatrix.
#pragma unroll
        for (int j = 0; j < NB / 2; ++j) {
#pragma unroll
            for (int dn = 0; dn < DN; dn += 2) {
                unsigned b[4];
                ldsm_x4_trans(b, st + (KS + j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * RS + (dn + (lane >> 4)) * 8);
                mma16816((T*)nullptr, o[dn], ph[2 * j][0], 0u, ph[2 * j + 1][0], 0u, b[0], b[1]);
                mma16816((T*)nullptr, o[dn], pl[2 * j][0], 0u, pl[2 * j + 1][0], 0u, b[0], b[1]);
                mma16816((T*)nullptr, o[dn + 1], ph[2 * j][0], 0u, ph[2 * j + 1][0], 0u, b[2], b[3]);
                mma16816((T*)nullptr, o[dn + 1], pl[2 * j][0], 0u, pl[2 * j + 1][0], 0u, b[2], b[3]);
            }
        }
        // The chunk two ahead takes this stage once every lane is done.
        __syncwarp();
        if (c + 2 * NW < c_end) {
            load(c + 2 * NW, st, false);
            if (ROPE && c + 2 * NW == current) put_current(current, st, false);
        }
        buf ^= 1;
    }
    l_r += __shfl_xor_sync(0xffffffffu, l_r, 1);
    l_r += __shfl_xor_sync(0xffffffffu, l_r, 2);
    OPTC_TRACE_MARK(4);
    // Every warp is past its stages: reuse them for the merge.
    __syncthreads();
    OPTC_TRACE_MARK(5);
    float* m_s = reinterpret_cast<float*>(decode_smem);
    float* l_s = m_s + NW * GM;
    float* a_s = l_s + NW * GM;
    int* last_s = reinterpret_cast<int*>(a_s + NW * GM * D);
    if (g < G) {
        if (tq == 0) {
            m_s[warp * GM + g] = m_r * 0.6931471805599453f;
            l_s[warp * GM + g] = l_r;
        }
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
            a_s[warp * GM * D + g * D + dn * 8 + 2 * tq] = o[dn][0];
            a_s[warp * GM * D + g * D + dn * 8 + 2 * tq + 1] = o[dn][1];
        }
    }
    decode_merge<T, D, NW>(m_s, l_s, a_s, last_s, out, part, counters, t, kh, z, nsplit, ntok, hq, hkv, G);
}

template <typename T, int D, int NW = 4, bool ROPE = false>
__device__ void paged_decode_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                  const i64* block_tables, int max_blocks, T* out, float* part, int* counters,
                                  int ntok, int hq, int hkv, int bs, float scale, int window,
                                  DecodeRope<T> rope = {}) {
    // Launched as a dependent (programmatic dependent launch): the
    // o projection's GEMV after this may start streaming its weights. Each
    // path calls pdl_wait() before it reads what the kernels ahead write
    // (the tensor-core one streams its first cached keys before).
    pdl_trigger();
    // The host sizes shared memory by the same rule (`decode_mma_supported`),
    // and launches the eight-warp kernel only on the tensor-core path.
    if constexpr (sizeof(T) == 2 && D % 16 == 0 && D <= 128) {
        paged_decode_mma_impl<T, D, NW, ROPE>(q, kc, vc, positions, block_tables, max_blocks, out, part, counters,
                                              ntok, hq, hkv, bs, scale, window, rope);
    } else if constexpr (NW == 4 && !ROPE) {
        paged_decode_simt_impl<T, D>(q, kc, vc, positions, block_tables, max_blocks, out, part, counters, ntok,
                                     hq, hkv, bs, scale, window);
    } else {
        __trap();
    }
    OPTC_TRACE_END();
}

#define OPTC_ATTENTION_COMMON(T, N)                                                                       \
    extern "C" __global__ void cache_write_##N(const T* k, const T* v, T* kc, T* vc, const i64* slots,    \
                                               i64 ntok, int kw, int vw) {                                \
        /* decode attention after this may start and stream the keys this does not write */              \
        pdl_start();                                                                                      \
        cache_write_impl<T>(k, v, kc, vc, slots, ntok, kw, vw);                                           \
    }                                                                                                     \
    extern "C" __global__ void attention_combine_##N(const float* part, T* out, i64 rows, int d, int ns) { \
        pdl_start();                                                                                      \
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
        pdl_start();                                                                                      \
        paged_attention_impl<T, D, ROWS>(q, kc, vc, positions, block_tables, max_blocks, tiles, out, part, \
                                         ntok_all, hq, hkv, bs, scale, window, nsplit);                   \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_##N##_d##D(                            \
        const T* q, const T* kc, const T* vc, const i64* positions, const i64* block_tables,              \
        int max_blocks, T* out, float* part, int* counters, int ntok, int hq, int hkv, int bs,            \
        float scale, int window) {                                                                        \
        paged_decode_impl<T, D>(q, kc, vc, positions, block_tables, max_blocks, out, part, counters,      \
                                ntok, hq, hkv, bs, scale, window);                                        \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) paged_decode8_##N##_d##D(                           \
        const T* q, const T* kc, const T* vc, const i64* positions, const i64* block_tables,              \
        int max_blocks, T* out, float* part, int* counters, int ntok, int hq, int hkv, int bs,            \
        float scale, int window) {                                                                        \
        paged_decode_impl<T, D, 8>(q, kc, vc, positions, block_tables, max_blocks, out, part, counters,   \
                                   ntok, hq, hkv, bs, scale, window);                                     \
    }                                                                                                     \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_rope_##N##_d##D(                       \
        const T* qkv, const T* cs, const T* sn, const i64* slots, int width, int r, int il, T* kc,        \
        T* vc, const i64* positions, const i64* block_tables, int max_blocks, T* out, float* part,  \
        int* counters, int ntok, int hq, int hkv, int bs, float scale, int window) {                      \
        paged_decode_impl<T, D, 4, true>(nullptr, kc, vc, positions, block_tables, max_blocks, out, part, \
                                         counters, ntok, hq, hkv, bs, scale, window,                      \
                                         DecodeRope<T>{qkv, cs, sn, slots, kc, vc, width, r, il});        \
    }
