// Paged attention for prefill on the tensor cores (m16n8k16 MMA, bf16/f16
// in, f32 accumulation), FlashAttention-2 style. A block takes up to 64
// query rows (tokens x heads of one KV group, one sequence); each of its
// four warps owns 16 rows and keeps their Q fragments, scores, softmax
// state and output in registers. Key and value rows stream through two
// shared-memory stages (cp.async: the next tile loads while this one
// computes), KT keys a tile, rows padded by 8 elements so ldmatrix reads
// them without bank conflicts. P enters the second product as two parts in
// the input dtype, P = hi + lo, so it keeps about 16 bits (one bf16 P
// alone costs ~1e-2 relative error on small models). Compiled as its own
// NVRTC module: if this GPU or NVRTC cannot build it, the scalar kernel in
// attention.cu serves prefill too.

template <int D> struct PrefillMma {
    static constexpr int KT = D <= 64 ? 64 : 32;  // keys per tile
    static constexpr int RS = D + 8;              // row stride in a stage
    static constexpr int STAGE = 2 * KT * RS;     // K rows, then V rows
};

template <typename T, int D>
__device__ void paged_prefill_mma_impl(const T* q, const T* kc, const T* vc, const i64* positions,
                                       const i64* block_tables, int max_blocks, const int* tiles, T* out, int hq,
                                       int hkv, int bs, float scale, int window) {
    constexpr int KT = PrefillMma<D>::KT, RS = PrefillMma<D>::RS, STAGE = PrefillMma<D>::STAGE;
    constexpr int NB = KT / 8, DK = D / 16, DN = D / 8, PIECES = D / 8;
    extern __shared__ __align__(128) unsigned char smem_raw[];
    T* stages = reinterpret_cast<T*>(smem_raw);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, tq = lane & 3;
    const int seq = tiles[blockIdx.x * 3], t0 = tiles[blockIdx.x * 3 + 1], ntok = tiles[blockIdx.x * 3 + 2];
    const int kh = blockIdx.y;
    const int G = hq / hkv;
    const int rows = ntok * G;
    const i64* table = block_tables + (i64)seq * max_blocks;

    // The keys any row of the block sees.
    int kmin = 0x7fffffff, kmax = -1;
    for (int i = 0; i < ntok; ++i) {
        const int p = (int)positions[t0 + i];
        kmin = min(kmin, window > 0 ? max(0, p + 1 - window) : 0);
        kmax = max(kmax, p);
    }
    const int ntiles = kmax >= kmin ? (kmax - kmin + KT) / KT : 0;
    // Starts the copies of tile c's key and value rows into stage `st`;
    // keys past kmax are zeros.
    auto load = [&](int c, T* st) {
        const int k0 = kmin + c * KT;
        for (int i = threadIdx.x; i < KT * PIECES; i += blockDim.x) {
            const int r = i / PIECES, pc = i % PIECES, key = k0 + r;
            const bool ok = key <= kmax;
            const i64 off = ok ? ((table[key / bs] * bs + key % bs) * hkv + kh) * D + pc * 8 : 0;
            cp_async16_or_zero(st + r * RS + pc * 8, kc + off, ok);
            cp_async16_or_zero(st + (KT + r) * RS + pc * 8, vc + off, ok);
        }
        cp_async_commit();
    };
    if (ntiles > 0) load(0, stages);

    // This lane's rows r0 (fragment row g) and r1 (g + 8): the keys each
    // sees, [f, p]; rows past `rows` see none.
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    int p0 = -1, f0 = 0, p1 = -1, f1 = 0;
    if (r0 < rows) {
        p0 = (int)positions[t0 + r0 / G];
        f0 = window > 0 ? max(0, p0 + 1 - window) : 0;
    }
    if (r1 < rows) {
        p1 = (int)positions[t0 + r1 / G];
        f1 = window > 0 ? max(0, p1 + 1 - window) : 0;
    }
    int wlo = min(r0 < rows ? f0 : 0x7fffffff, r1 < rows ? f1 : 0x7fffffff), whi = max(p0, p1);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        wlo = min(wlo, __shfl_xor_sync(0xffffffffu, wlo, o));
        whi = max(whi, __shfl_xor_sync(0xffffffffu, whi, o));
    }
    // Q fragments of rows r0 and r1 (zeros past `rows`).
    unsigned qa[DK][4];
#pragma unroll
    for (int s = 0; s < DK; ++s) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = h ? r1 : r0;
            unsigned lo = 0u, hi = 0u;
            if (r < rows) {
                const T* qr = q + ((i64)(t0 + r / G) * hq + kh * G + r % G) * D + 16 * s + 2 * tq;
                lo = *reinterpret_cast<const unsigned*>(qr);
                hi = *reinterpret_cast<const unsigned*>(qr + 8);
            }
            qa[s][h] = lo;
            qa[s][2 + h] = hi;
        }
    }
    const float sl2 = scale * 1.4426950408889634f;
    float m0 = -OPTC_INF, m1 = -OPTC_INF, l0 = 0.f, l1 = 0.f;  // log2 scale; l over this lane's columns
    float o[DN][4];
#pragma unroll
    for (int dn = 0; dn < DN; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.f;

    for (int c = 0; c < ntiles; ++c) {
        if (c + 1 < ntiles) {
            load(c + 1, stages + ((c + 1) & 1) * STAGE);
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const T* st = stages + (c & 1) * STAGE;
        const int k0 = kmin + c * KT;
        if (k0 <= whi && k0 + KT > wlo) {
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
                    mma16816((T*)nullptr, s[nb], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b[0], b[1]);
                    mma16816((T*)nullptr, s[nb + 1], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], b[2], b[3]);
                }
            }
            // Causal (and window) mask, then the online softmax of both rows
            // across the four lanes that hold them.
            float mx0 = -OPTC_INF, mx1 = -OPTC_INF;
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = k0 + nb * 8 + 2 * tq + e;
                    s[nb][e] = key >= f0 && key <= p0 ? s[nb][e] * sl2 : -OPTC_INF;
                    s[nb][2 + e] = key >= f1 && key <= p1 ? s[nb][2 + e] * sl2 : -OPTC_INF;
                    mx0 = fmaxf(mx0, s[nb][e]);
                    mx1 = fmaxf(mx1, s[nb][2 + e]);
                }
            }
#pragma unroll
            for (int x = 1; x <= 2; x <<= 1) {
                mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, x));
                mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, x));
            }
            // A row that has seen no key yet keeps m = -inf and gets p = 0.
            const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
            const float b0 = n0 == -OPTC_INF ? 0.f : n0, b1 = n1 == -OPTC_INF ? 0.f : n1;
            const float c0 = exp2f(m0 - b0), c1 = exp2f(m1 - b1);
            m0 = n0;
            m1 = n1;
            l0 *= c0;
            l1 *= c1;
#pragma unroll
            for (int dn = 0; dn < DN; ++dn) {
                o[dn][0] *= c0;
                o[dn][1] *= c0;
                o[dn][2] *= c1;
                o[dn][3] *= c1;
            }
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    s[nb][e] = exp2f(s[nb][e] - b0);
                    s[nb][2 + e] = exp2f(s[nb][2 + e] - b1);
                    l0 += s[nb][e];
                    l1 += s[nb][2 + e];
                }
            }
            // O += P V per 16-key step, P as hi + lo A fragments; two 8-dim
            // column blocks per ldmatrix.
#pragma unroll
            for (int j = 0; j < NB / 2; ++j) {
                unsigned ph[4], pl[4];
#pragma unroll
                for (int f = 0; f < 4; ++f) {
                    // a0: row g keys 2tq..; a1: row g+8; a2, a3: keys + 8.
                    const float* sv = s[2 * j + (f >> 1)] + (f & 1) * 2;
                    ph[f] = pack2((T*)nullptr, sv[0], sv[1]);
                    const float2 h = unpack2((T*)nullptr, ph[f]);
                    pl[f] = pack2((T*)nullptr, sv[0] - h.x, sv[1] - h.y);
                }
#pragma unroll
                for (int dn = 0; dn < DN; dn += 2) {
                    unsigned b[4];
                    ldsm_x4_trans(b, st + (KT + j * 16 + ((lane >> 3) & 1) * 8 + (lane & 7)) * RS + (dn + (lane >> 4)) * 8);
                    mma16816((T*)nullptr, o[dn], ph[0], ph[1], ph[2], ph[3], b[0], b[1]);
                    mma16816((T*)nullptr, o[dn], pl[0], pl[1], pl[2], pl[3], b[0], b[1]);
                    mma16816((T*)nullptr, o[dn + 1], ph[0], ph[1], ph[2], ph[3], b[2], b[3]);
                    mma16816((T*)nullptr, o[dn + 1], pl[0], pl[1], pl[2], pl[3], b[2], b[3]);
                }
            }
        }
        // The next iteration's copies overwrite this stage.
        __syncthreads();
    }
#pragma unroll
    for (int x = 1; x <= 2; x <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, x);
        l1 += __shfl_xor_sync(0xffffffffu, l1, x);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = h ? r1 : r0;
        if (r >= rows) continue;
        const float l = h ? l1 : l0;
        const float inv = l > 0.f ? 1.f / l : 0.f;
        T* orow = out + ((i64)(t0 + r / G) * hq + kh * G + r % G) * D + 2 * tq;
#pragma unroll
        for (int dn = 0; dn < DN; ++dn) {
            *reinterpret_cast<unsigned*>(orow + dn * 8) =
                pack2((T*)nullptr, o[dn][2 * h] * inv, o[dn][2 * h + 1] * inv);
        }
    }
}

// Instantiated by the host for each (dtype, head dim) a graph needs, e.g.
// OPTC_PAGED_PREFILL_MMA(bf16, bf16, 64) defines paged_prefill_mma_bf16_d64.
#define OPTC_PAGED_PREFILL_MMA(T, N, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(128) paged_prefill_mma_##N##_d##D(                       \
        const T* q, const T* kc, const T* vc, const i64* positions, const i64* block_tables,              \
        int max_blocks, const int* tiles, T* out, int hq, int hkv, int bs, float scale, int window) {     \
        pdl_start();                                                                                      \
        paged_prefill_mma_impl<T, D>(q, kc, vc, positions, block_tables, max_blocks, tiles, out, hq, hkv, \
                                     bs, scale, window);                                                 \
    }
