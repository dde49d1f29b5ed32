// Paged attention for prefill on the tensor cores (WMMA, bf16/f16 in, f32
// accumulation), FlashAttention-2 style: a block takes up to 64 query
// rows (tokens x heads of one KV group) and streams the keys through
// shared memory 32 at a time. S = Q Kᵀ and O += P V run as 16x16x16 WMMA
// tiles; the online softmax between them runs on the CUDA cores in f32.
// P enters the second product as two parts in the input dtype, P = hi +
// lo, so it keeps about 16 bits (one bf16 P alone costs ~1e-2 relative
// error on small models). Compiled as
// its own NVRTC module: if this GPU or NVRTC cannot build it, the scalar
// kernel in attention.cu serves prefill too.
#include <mma.h>

template <typename T, int D>
__device__ void paged_prefill_mma_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                       const i64* block_tables, int max_blocks, const int* tiles, T* out, int hq,
                                       int hkv, int bs, float scale, int window) {
    using namespace nvcuda;
    constexpr int ROWS = 64, KEYS = 32;
    constexpr int QS = D + 8, SS = KEYS + 4, PS = KEYS + 8, OS = D + 4;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* q_h = reinterpret_cast<T*>(smem_raw);                 // [ROWS][QS]
    T* k_h = q_h + ROWS * QS;                                // [KEYS][QS]
    T* v_h = k_h + KEYS * QS;                                // [KEYS][QS]
    T* p_h = v_h + KEYS * QS;                                // [ROWS][PS]
    T* p_l = p_h + ROWS * PS;                                // [ROWS][PS]
    float* s_f = reinterpret_cast<float*>(p_l + ROWS * PS);  // [ROWS][SS]
    float* o_f = s_f + ROWS * SS;                            // [ROWS][OS]
    float* m_s = o_f + ROWS * OS;                            // [ROWS]
    float* l_s = m_s + ROWS;                                 // [ROWS]
    i64* slot_s = reinterpret_cast<i64*>(l_s + ROWS);        // [KEYS]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int seq = tiles[blockIdx.x * 3], t0 = tiles[blockIdx.x * 3 + 1], ntok = tiles[blockIdx.x * 3 + 2];
    const int kh = blockIdx.y;
    const int G = hq / hkv;
    const int rows = ntok * G;
    const int row_tiles = (rows + 15) / 16;
    const i64* table = block_tables + (i64)seq * max_blocks;

    // Q rows (zeros past `rows`), O = 0, m = -inf, l = 0.
    for (int i = threadIdx.x; i < ROWS * (D / 8); i += blockDim.x) {
        int r = i / (D / 8), d = (i % (D / 8)) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (r < rows) {
            int t = t0 + r / G, h = kh * G + r % G;
            v = *reinterpret_cast<const uint4*>(q + ((i64)t * hq + h) * D + d);
        }
        *reinterpret_cast<uint4*>(q_h + r * QS + d) = v;
    }
    for (int i = threadIdx.x; i < ROWS * OS; i += blockDim.x) o_f[i] = 0.f;
    for (int i = threadIdx.x; i < ROWS; i += blockDim.x) {
        m_s[i] = -OPTC_INF;
        l_s[i] = 0.f;
    }
    int kmin = 0x7fffffff, kmax = -1;
    for (int i = 0; i < ntok; ++i) {
        int p = (int)positions[t0 + i];
        int f = window > 0 ? max(0, p + 1 - window) : 0;
        kmin = min(kmin, f);
        kmax = max(kmax, p);
    }
    const int nchunks = kmax >= kmin ? (kmax - kmin + KEYS) / KEYS : 0;
    for (int c = 0; c < nchunks; ++c) {
        const int c0 = kmin + c * KEYS;
        __syncthreads();
        if (threadIdx.x < KEYS) {
            int p = c0 + threadIdx.x;
            slot_s[threadIdx.x] = p <= kmax ? table[p / bs] * bs + p % bs : -1;
        }
        __syncthreads();
        for (int i = threadIdx.x; i < KEYS * (D / 8); i += blockDim.x) {
            int j = i / (D / 8), d = (i % (D / 8)) * 8;
            i64 slot = slot_s[j];
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (slot >= 0) {
                i64 base = (slot * hkv + kh) * D + d;
                kv = *reinterpret_cast<const uint4*>(kc + base);
                vv = *reinterpret_cast<const uint4*>(vc + base);
            }
            *reinterpret_cast<uint4*>(k_h + j * QS + d) = kv;
            *reinterpret_cast<uint4*>(v_h + j * QS + d) = vv;
        }
        __syncthreads();
        // S = Q Kᵀ: row_tiles x 2 tiles of 16x16 over the warps.
        for (int tile = warp; tile < row_tiles * 2; tile += 4) {
            int rt = tile / 2, ct = tile % 2;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.f);
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
                wmma::load_matrix_sync(a, q_h + rt * 16 * QS + kk * 16, QS);
                wmma::load_matrix_sync(b, k_h + ct * 16 * QS + kk * 16, QS);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(s_f + rt * 16 * SS + ct * 16, acc, SS, wmma::mem_row_major);
        }
        __syncthreads();
        // Online softmax per row (one warp a row, one lane a key); rescale O.
        for (int r = warp; r < row_tiles * 16; r += 4) {
            float pj = 0.f;
            if (r < rows) {
                int pos = (int)positions[t0 + r / G];
                int fst = window > 0 ? max(0, pos + 1 - window) : 0;
                int p = c0 + lane;
                bool valid = p >= fst && p <= pos;
                float s = valid ? s_f[r * SS + lane] * scale : -OPTC_INF;
                float mx = warp_max(s);
                float mo = m_s[r];
                float mn = fmaxf(mo, mx);
                float corr = 1.f;
                if (mn != -OPTC_INF) {
                    corr = expf(mo - mn);
                    pj = valid ? expf(s - mn) : 0.f;
                }
                float ls = warp_sum(pj);
                if (lane == 0) {
                    l_s[r] = l_s[r] * corr + ls;
                    m_s[r] = mn;
                }
                for (int d = lane; d < D; d += 32) o_f[r * OS + d] *= corr;
            }
            T hi, lo;
            st(&hi, pj);
            st(&lo, pj - ld(&hi));
            p_h[r * PS + lane] = hi;
            p_l[r * PS + lane] = lo;
        }
        __syncthreads();
        // O += P V: row_tiles x D/16 tiles over the warps.
        for (int tile = warp; tile < row_tiles * (D / 16); tile += 4) {
            int rt = tile / (D / 16), ct = tile % (D / 16);
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::load_matrix_sync(acc, o_f + rt * 16 * OS + ct * 16, OS, wmma::mem_row_major);
#pragma unroll
            for (int kk = 0; kk < KEYS / 16; ++kk) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a, al;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(a, p_h + rt * 16 * PS + kk * 16, PS);
                wmma::load_matrix_sync(al, p_l + rt * 16 * PS + kk * 16, PS);
                wmma::load_matrix_sync(b, v_h + kk * 16 * QS + ct * 16, QS);
                wmma::mma_sync(acc, a, b, acc);
                wmma::mma_sync(acc, al, b, acc);
            }
            wmma::store_matrix_sync(o_f + rt * 16 * OS + ct * 16, acc, OS, wmma::mem_row_major);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
        int r = i / D, d = i % D;
        int t = t0 + r / G, h = kh * G + r % G;
        float l = l_s[r];
        st(&out[((i64)t * hq + h) * D + d], l > 0.f ? o_f[r * OS + d] / l : 0.f);
    }
}

// Instantiated by the host for each (dtype, head dim) a graph needs, e.g.
// OPTC_PAGED_PREFILL_MMA(bf16, bf16, 64) defines paged_prefill_mma_bf16_d64.
#define OPTC_PAGED_PREFILL_MMA(T, N, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(128) paged_prefill_mma_##N##_d##D(                       \
        const T* q, const T* kc, const T* vc, const i64* positions, const i64* block_tables,              \
        int max_blocks, const int* tiles, T* out, int hq, int hkv, int bs, float scale, int window) {     \
        paged_prefill_mma_impl<T, D>(q, kc, vc, positions, block_tables, max_blocks, tiles, out, hq, hkv, \
                                     bs, scale, window);                                                 \
    }
