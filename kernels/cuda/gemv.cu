// Linear layers at decode batch sizes: y[m, n] = sum_k x[m, k] w[n, k]
// (+ b[n]) for M <= 4 rows of x, where the time is one pass over the
// weight. The rows of x go to shared memory once per block; each warp
// owns a few weight rows and each lane streams eight elements (16 bytes)
// of each per load, several loads in flight (GemvGeometry); f32
// accumulation, one rounding at the store. Consecutive GEMVs overlap
// through programmatic dependent launch: a block streams its first
// weights before it waits for the kernel before it. Needs k % 8 == 0, 16-byte-aligned operands and M * k
// elements of dynamic shared memory (the host checks).
//
// Two fusions save a launch each where, at one decode token, a launch
// costs as much as the work:
// - the rows of x come from a fill policy, so the RMSNorm (with the
//   residual add) before a linear runs inside its GEMV: each block
//   recomputes it from L2 while its first weight loads are in flight;
// - the sums go out through a store policy: as they are (`GemvStore`);
//   as silu(gate) * up, each warp owning a gate row and its up row
//   (`GemvGluStore`), so the [m, 2f] product is never stored; or, for the
//   QKV projection, rotated and written to the query buffer and the KV
//   cache (`GemvRopeStore`), which saves the rope + cache launch.

// A fill policy makes the block's m rows of x in shared memory after the
// wait for the kernel ahead (`run`), and may start copies of what no
// kernel writes before it (`prefetch`, as one cp.async group, into the k
// elements of shared memory after x's m * k; the host sizes shared memory
// for them). `run<P>` may leave the P groups committed after that one in
// flight (a ring's weight tiles).

// x as it is. Each thread has all its loads in flight before it stores
// any (four 16-byte loads per round), so the fill is one L2 round trip up
// to 4 * 8 * blockDim.x elements.
template <typename T> struct GemvCopy {
    static constexpr int EXTRA = 0;  // rows of k the prefetch takes
    const T* x;
    __device__ void prefetch(T*, int, int) const {}
    template <int P> __device__ void run(T* xs, int m, int k) const {
        constexpr int PER16 = 16 / sizeof(T), B = 4;
        const int step = blockDim.x * PER16;
        for (int i0 = threadIdx.x * PER16; i0 < m * k; i0 += B * step) {
            uint4 v[B];
#pragma unroll
            for (int q = 0; q < B; ++q) {
                const int i = i0 + q * step;
                if (i < m * k) v[q] = *reinterpret_cast<const uint4*>(x + i);
            }
#pragma unroll
            for (int q = 0; q < B; ++q) {
                const int i = i0 + q * step;
                if (i < m * k) *reinterpret_cast<uint4*>(xs + i) = v[q];
            }
        }
    }
};

// x = rms_norm(a + r) * nw, as `add_rms_norm` computes it (the sum rounded
// to T, statistics in f32); the first block also stores the sum, the op's
// first result. `r` null: plain RMSNorm of `a`; `nw` null: no scale. The
// scale is a weight (the host launches the GEMV as a dependent only then):
// it streams into shared memory before the wait, each thread copying the
// pieces it rescales, so after the wait the fill is one L2 round trip.
// With `rows`, row j of x is row rows[j] of a and r (counted from the end
// when negative; zeros outside their `nrows`), as an index_select of the
// norm's result would pick it: the final norm of a step graph runs in the
// LM head's GEMV on the logits rows only (the host passes no `sum` then).
template <typename T, int M> struct GemvAddRmsNorm {
    static constexpr int EXTRA = 1;
    const T *a, *r, *nw;
    T* sum;
    float eps;
    const i64* rows = nullptr;
    int nrows = 0;
    __device__ void prefetch(T* xs, int m, int k) const {
        if (!nw) return;
        for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8) {
#pragma unroll
            for (int h = 0; h < (int)sizeof(T) / 2; ++h)
                cp_async16_ca(xs + m * k + i + h * (16 / sizeof(T)), nw + i + h * (16 / sizeof(T)));
        }
        cp_async_commit();
    }
    // Runs of eight a thread loads before it uses any (one L2 round trip
    // for rows up to 4,096 wide at 128 threads).
    static constexpr int B = 4;
    template <int P> __device__ void run(T* xs, int m, int k) const {
        __shared__ float partial[M][32];
        constexpr int H = sizeof(T) / 2;
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
        const bool keep = sum && blockIdx.x == 0;
        const int step = blockDim.x * 8;
        float ss[M];
#pragma unroll
        for (int j = 0; j < M; ++j) {
            ss[j] = 0.f;
            if (j >= m) continue;
            i64 src = j;
            bool zero = false;
            if (rows) {
                src = rows[j] < 0 ? rows[j] + nrows : rows[j];
                zero = src < 0 || src >= nrows;
            }
            const T* aj = a + (zero ? 0 : src) * k;
            const T* rj = r ? r + (zero ? 0 : src) * k : nullptr;
            for (int i0 = threadIdx.x * 8; i0 < k; i0 += B * step) {
                uint4 ra[B][H], rr[B][H];
#pragma unroll
                for (int q = 0; q < B; ++q) {
                    const int i = i0 + q * step;
#pragma unroll
                    for (int h = 0; h < H; ++h) {
                        ra[q][h] =
                            i < k && !zero ? reinterpret_cast<const uint4*>(aj + i)[h] : make_uint4(0, 0, 0, 0);
                        rr[q][h] = rj && i < k && !zero ? reinterpret_cast<const uint4*>(rj + i)[h]
                                                        : make_uint4(0, 0, 0, 0);
                    }
                }
#pragma unroll
                for (int q = 0; q < B; ++q) {
                    const int i = i0 + q * step;
                    if (i >= k) break;
                    float v[8];
                    ld8(reinterpret_cast<const T*>(ra[q]), v);
                    if (rj) {
                        float o[8];
                        ld8(reinterpret_cast<const T*>(rr[q]), o);
#pragma unroll
                        for (int e = 0; e < 8; ++e) v[e] = rnd<T>(v[e] + o[e]);
                        if (keep) st8(sum + (i64)j * k + i, v);
                    }
#pragma unroll
                    for (int e = 0; e < 8; ++e) ss[j] += v[e] * v[e];
                    st8(xs + j * k + i, v);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < M; ++j) {
            const float t = warp_sum(ss[j]);
            if (lane == 0) partial[j][warp] = t;
        }
        __syncthreads();
        float inv[M];
#pragma unroll
        for (int j = 0; j < M; ++j) {
            float t = 0.f;
#pragma unroll
            for (int q = 0; q < (int)(blockDim.x >> 5); ++q) t += partial[j][q];
            inv[j] = 1.f / sqrtf(t / (float)k + eps);
        }
        // Each thread rescales only the elements it stored, with the
        // pieces of the scale it copied.
        if (nw) cp_async_wait<P>();
        for (int i = threadIdx.x * 8; i < k; i += step) {
            float o[8];
            if (nw) ld8(xs + m * k + i, o);
#pragma unroll
            for (int j = 0; j < M; ++j) {
                if (j >= m) break;
                float v[8], y[8];
                ld8(xs + j * k + i, v);
#pragma unroll
                for (int e = 0; e < 8; ++e) y[e] = nw ? o[e] * (v[e] * inv[j]) : v[e] * inv[j];
                st8(xs + j * k + i, y);
            }
        }
    }
};

// A GEMV's geometry: WARPS warps a block; each warp owns R weight rows
// (R output columns with GLU, each a gate and an up row) and streams them
// in stages of U 16-byte loads a lane a row. With PIPELINE two stages are
// in flight (the next one's loads issue before the current one is used).
// With EARLY_TRIGGER a block lets the next kernel launch as it starts
// (programmatic dependent launch), so that kernel's first weights stream
// in while this one runs. Each kind of GEMV has its own, chosen with
// kernels/bench/gemv_bench.cu on the H200 at Llama-3.2-1B's shapes; the
// host's rows a block and threads (GEMV_* in kernels/src/cuda.rs) follow
// them (a unit test reads these lines).
template <int WARPS_, int R_, int U_, bool PIPELINE_ = true, bool EARLY_TRIGGER_ = true> struct GemvGeometry {
    static constexpr int WARPS = WARPS_, R = R_, U = U_;
    static constexpr bool PIPELINE = PIPELINE_, EARLY_TRIGGER = EARLY_TRIGGER_;
};
using GemvPlain = GemvGeometry<8, 1, 8>;
using GemvNorm = GemvGeometry<8, 2, 4>;
using GemvGlu = GemvGeometry<4, 1, 4>;

// Where a GEMV's sums go. A store names the weight row behind each of
// the n outputs (`weight_row`; with GLU also row n + that, the up row)
// and takes a warp's R consecutive outputs of row j of x (`store`, on
// lane j; with GLU the R gate sums, then the R up sums). What it reads
// besides the sums (rotary rows, cache slots, biases) it loads in
// `prepare`, which the register GEMV at one row calls right after the
// wait for the kernel ahead: those loads are then in flight during the
// fill instead of adding an L2 round trip after the sums (at more rows,
// and in the ring GEMV, it runs at the store).

// y[j, i] = sum (+ b[i]); with GELU, through the tanh GELU (a linear
// whose GELU the host fused as the GEMM's epilogue: `gemv_gelu_*`).
template <typename T, bool GELU = false> struct GemvStore {
    static constexpr bool GLU = false, PICK = false;
    T* y;
    const T* b;
    struct Pre {};
    __device__ int weight_row(int i) const { return i; }
    __device__ Pre prepare(int, int, int) const { return {}; }
    template <int R> __device__ void store(int j, int i0, const float (&v)[R], int n, Pre) const {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int i = i0 + r;
            if (i >= n) continue;
            const float o = b ? v[r] + ld(&b[i]) : v[r];
            if constexpr (GELU) {
                st(&y[(i64)j * n + i], gelu_op(1, o));
            } else {
                st(&y[(i64)j * n + i], o);
            }
        }
    }
};

// GemvStore at one row, which also picks the row's greedy token from the
// values it stores (rounded to T, as `argmax_part_impl` reads them back):
// lane 0 of each warp keeps its units' largest value, first index and sum
// of exp(v - max) as it stores them, in increasing index order; `finish`
// merges a block's warps into part[block] and the last block to get there
// (counted in `counter`, left at 0) merges the parts into the token and
// its log probability, as `argmax_part` would have after this kernel.
template <typename T> struct GemvArgmaxStore {
    static constexpr bool GLU = false, PICK = true;
    T* y;
    const T* b;
    float* part;
    int* counter;
    int* tok;
    float* lp;
    // -inf (OPTC_INF is device-only; nvcc also compiles this for the host).
    mutable float pm = -1.f / 0.f, ps = 0.f;
    mutable int pi = 0x7fffffff;
    struct Pre {};
    __device__ int weight_row(int i) const { return i; }
    __device__ Pre prepare(int, int, int) const { return {}; }
    template <int R> __device__ void store(int j, int i0, const float (&v)[R], int n, Pre) const {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int i = i0 + r;
            if (i >= n) continue;
            const float o = rnd<T>(b ? v[r] + ld(&b[i]) : v[r]);
            st(&y[(i64)j * n + i], o);
            argmax_push(pm, pi, ps, o, i);
        }
    }
    // Every thread of a block with units calls this after its last store;
    // `blocks` is how many blocks have units (each writes one part).
    __device__ void finish(int blocks) const {
        __shared__ int last;
        float m = pm, s = ps;
        int bi = pi;
        argmax_block(m, bi, s);
        if (threadIdx.x == 0) {
            float* p = part + (i64)blockIdx.x * 3;
            p[0] = m;
            p[1] = __int_as_float(bi);
            p[2] = s;
            // The part (written by this thread) is visible before the count.
            __threadfence();
            last = atomicAdd(counter, 1) == blocks - 1;
        }
        __syncthreads();
        if (!last) return;
        __threadfence();
        // Every thread of the last block reads a few parts (L2: other
        // blocks wrote them), so the reads are one round trip or two, not
        // one a part a warp's lane; then the block merges them.
        m = -OPTC_INF, s = 0.f, bi = 0x7fffffff;
        for (int c = threadIdx.x; c < blocks; c += blockDim.x) {
            const float* p = part + (i64)c * 3;
            argmax_merge(m, bi, s, __ldcg(&p[0]), __float_as_int(__ldcg(&p[1])), __ldcg(&p[2]));
        }
        argmax_block(m, bi, s);
        if (threadIdx.x == 0) {
            // As argmax_combine_row: token 0 when nothing won, log p(best)
            // = -log(sum exp(x - max)).
            *tok = bi == 0x7fffffff ? 0 : bi;
            *lp = m == -OPTC_INF ? -OPTC_INF : -logf(s);
            *counter = 0;
        }
    }
};

// y[j, i] = silu(gate) * up, both rounded to T first (as the SwiGLU
// kernel reads them), for w's 2n rows (gate, then up).
template <typename T> struct GemvGluStore {
    static constexpr bool GLU = true, PICK = false;
    T* y;
    const T* b;
    struct Pre {};
    __device__ int weight_row(int i) const { return i; }
    __device__ Pre prepare(int, int, int) const { return {}; }
    template <int WR> __device__ void store(int j, int i0, const float (&v)[WR], int n, Pre) const {
        constexpr int R = WR / 2;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int i = i0 + r;
            if (i >= n) continue;
            const float g = rnd<T>(b ? v[r] + ld(&b[i]) : v[r]);
            const float u = rnd<T>(b ? v[R + r] + ld(&b[n + i]) : v[R + r]);
            st(&y[(i64)j * n + i], g / (1.f + expf(-g)) * u);
        }
    }
};

// The fused QKV projection's outputs (hq query heads, hkv key heads of d,
// hkv value heads of dv) as `rope_qkv_cache_impl` leaves them: queries
// rotated into q ([m, hq, d]), keys rotated and values into their cache
// slots (a negative slot writes nothing), x's row j being token j. A
// warp's two outputs are a RoPE pair: rows (k, k + r/2) of a head for
// k < r/2 (rows 2k, 2k + 1 when `il`, interleaved), then consecutive rows
// past r and in the values. Needs R = 2, an even d and an even n (the
// host checks).
template <typename T> struct GemvRopeStore {
    static constexpr bool GLU = false, PICK = false;
    const T* b;
    const T *cs, *sn;  // [m, r] cos and sin rows
    T *q, *kc, *vc;
    const i64* slots;
    int hq, hkv, d, dv, r, il;
    __device__ int weight_row(int i) const {
        if (il || i >= (hq + hkv) * d) return i;
        const int li = i % d, pl = li >> 1, e = li & 1, half = r >> 1;
        return i - li + (pl < half ? pl + e * half : 2 * pl + e);
    }
    // Token j's slot, the pair's biases and, for a rotated pair, its cos
    // and sin (written by the rotary kernel ahead: loaded after the wait).
    struct Pre {
        i64 slot = -1;
        float ba = 0.f, bb = 0.f, ca = 1.f, cb = 1.f, sa = 0.f, sb = 0.f;
    };
    __device__ Pre prepare(int j, int i0, int n) const {
        Pre p;
        if (i0 >= n) return p;
        const int ia = weight_row(i0), ib = weight_row(i0 + 1), ka = ia % d, kb = ib % d;
        p.slot = slots[j];
        if (b) {
            p.ba = ld(&b[ia]);
            p.bb = ld(&b[ib]);
        }
        if (ia < (hq + hkv) * d && ka < r) {
            const T *c = cs + (i64)j * r, *s = sn + (i64)j * r;
            p.ca = ld(&c[ka]);
            p.cb = ld(&c[kb]);
            p.sa = ld(&s[ka]);
            p.sb = ld(&s[kb]);
        }
        return p;
    }
    template <int R> __device__ void store(int j, int i0, const float (&v)[R], int n, const Pre& p) const {
        static_assert(R == 2, "a RoPE pair a warp");
        if (i0 >= n) return;
        const int ia = weight_row(i0), ib = weight_row(i0 + 1), qk = (hq + hkv) * d;
        const float xa = rnd<T>(b ? v[0] + p.ba : v[0]);
        const float xb = rnd<T>(b ? v[1] + p.bb : v[1]);
        const i64 slot = p.slot;
        if (ia >= qk) {
            if (slot < 0) return;
            T* row = vc + slot * hkv * dv;
            st(&row[ia - qk], xa);
            st(&row[ib - qk], xb);
            return;
        }
        float oa = xa, ob = xb;
        if (ia % d < r) {
            oa = xa * p.ca + (-xb) * p.sa;
            ob = xb * p.cb + xa * p.sb;
        }
        // The head row: queries of token j, or keys at its cache slot.
        T* row;
        int at = ia;
        if (ia < hq * d) {
            row = q + (i64)j * hq * d;
        } else {
            if (slot < 0) return;
            row = kc + slot * hkv * d;
            at -= hq * d;
        }
        st(&row[at], oa);
        st(&row[at + (ib - ia)], ob);
    }
};

// A warp's sums for its outputs from i0 on, each row of x's reduced over
// the lanes (every lane gets the same bits) and row j stored by lane j,
// with what that lane prepared (`Store::prepare(j, i0, n)`).
template <int M, int WR, typename Store>
__device__ __forceinline__ void gemv_store_sums(const Store& out, const float (&acc)[WR][M], int m, int i0, int n,
                                                const typename Store::Pre& pre) {
#pragma unroll
    for (int j = 0; j < M; ++j) {
        if (j >= m) break;
        float v[WR];
#pragma unroll
        for (int r = 0; r < WR; ++r) v[r] = warp_sum(acc[r][j]);
        if ((threadIdx.x & 31) == j) out.store(j, i0, v, n, pre);
    }
}

// n is the output width; with a GLU store w holds 2n rows (gate, then up).
template <typename T, int M, typename Geo, typename Fill, typename Store>
__device__ void gemv_impl(const Fill& fill, const Store& out, const T* w, int n, int k, int m) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    T* xs = reinterpret_cast<T*>(gemv_smem);
    constexpr int R = Geo::R, U = Geo::U, H = sizeof(T) / 2;
    constexpr bool GLU = Store::GLU;
    // Weight rows a warp streams: with GLU, each column's gate and up row.
    constexpr int WR = GLU ? 2 * R : R;
    constexpr int STAGE = 256 * U;  // elements of a row one stage covers
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row0 = (blockIdx.x * Geo::WARPS + warp) * R;
    const T* wr[WR];
#pragma unroll
    for (int r = 0; r < WR; ++r) {
        const int col = out.weight_row(min(row0 + r % R, n - 1));
        wr[r] = w + ((i64)(GLU && r >= R ? n : 0) + col) * k;
    }
    uint4 ra[U][WR][H], rb[U][WR][H];
    auto load = [&](uint4 (&raw)[U][WR][H], int k0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kk = k0 + u * 256;
#pragma unroll
            for (int r = 0; r < WR; ++r) {
#pragma unroll
                for (int h = 0; h < H; ++h)
                    raw[u][r][h] = kk < k ? reinterpret_cast<const uint4*>(wr[r] + kk)[h] : make_uint4(0, 0, 0, 0);
            }
        }
    };
    float acc[WR][M];
#pragma unroll
    for (int r = 0; r < WR; ++r)
#pragma unroll
        for (int j = 0; j < M; ++j) acc[r][j] = 0.f;
    auto use = [&](const uint4 (&raw)[U][WR][H], int k0) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kk = k0 + u * 256;
            if (kk >= k) break;
#pragma unroll
            for (int r = 0; r < WR; ++r) {
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
    };
    // The first weights stream in while the kernel before this one
    // finishes (programmatic dependent launch) and the block fills x.
    if constexpr (Geo::EARLY_TRIGGER) pdl_trigger();
    const int k0 = lane * 8;
    fill.prefetch(xs, m, k);
    load(ra, k0);
    if constexpr (Geo::PIPELINE) {
        if (k0 + STAGE < k) load(rb, k0 + STAGE);
    }
    pdl_wait();
    // At one row, lane 0's part of the store, in flight during the fill.
    // (At more rows it is loaded at the store: held through the weight
    // loop it took the four-row rope GEMV to 147 registers, one block an
    // SM.)
    typename Store::Pre pre{};
    if constexpr (M == 1) {
        if (lane == 0) pre = out.prepare(0, row0, n);
    }
    fill.template run<0>(xs, m, k);
    __syncthreads();
    OPTC_TRACE_MARK(3);
    if (row0 >= n) return;
    if constexpr (Geo::PIPELINE) {
        // Stages alternate between ra and rb; each is refilled two stages
        // ahead right after it is used.
        for (int kc = k0; kc < k; kc += 2 * STAGE) {
            use(ra, kc);
            if (kc + 2 * STAGE < k) load(ra, kc + 2 * STAGE);
            if (kc + STAGE >= k) break;
            use(rb, kc + STAGE);
            if (kc + 3 * STAGE < k) load(rb, kc + 3 * STAGE);
        }
    } else {
        for (int kc = k0; kc < k; kc += STAGE) {
            use(ra, kc);
            if (kc + STAGE < k) load(ra, kc + STAGE);
        }
    }
    if constexpr (!Geo::EARLY_TRIGGER) pdl_trigger();
    if constexpr (M > 1) {
        if (lane < m) pre = out.prepare(lane, row0, n);
    }
    gemv_store_sums<M, WR>(out, acc, m, row0, n, pre);
    OPTC_TRACE_END();
}

// A GEMV whose weights stream through shared memory, for the big
// linears of a decode step: each warp keeps a ring of S tiles (its WR
// weight rows, CH elements of each) that cp.async fills, and every block
// issues its first S tiles a warp before pdl_wait(). Launched a few
// blocks an SM behind a latency-bound kernel (decode attention, a small
// GEMV), it streams a large share of its matrix while that kernel runs,
// which the register pipeline above (two stages, blocks that exit and
// relaunch) cannot. Warps take units of R output columns grid-stride
// (gridDim.x * WARPS warps in all) and a unit's rows chunk by chunk. A
// lane reads the same 8-element pieces of a row in the same order as
// gemv_impl (CH is a multiple of 256), so the sums are bit-equal to it.
// Shared memory: (m + Fill::EXTRA) * k elements of x and the fill's
// prefetch, then WARPS * S * WR * CH elements of rings (the host's
// `GemvRingBlock::smem_bytes`).
//
// Variants the step bench measures (optc instantiates the defaults): L2 > 0
// asks L2 for the tiles L2 places past the ring, the first of them before
// the wait or, with L2_AFTER, right after it, so DRAM stays busy while the
// block fills x with a full ring; TMA fills each slot with bulk copies (one
// a row, completing on the slot's mbarrier), which take none of the SM's
// load slots, instead of 16-byte cp.async pieces; PRE < S starts only PRE
// tiles before the wait and the rest after the fill, so the fill's loads
// are not queued behind a whole ring of weight copies.
template <int WARPS_, int R_, int S_, int CH_, int L2_ = 0, bool L2_AFTER_ = false, bool TMA_ = false,
          int PRE_ = S_>
struct GemvRing {
    static constexpr int WARPS = WARPS_, R = R_, S = S_, CH = CH_, L2 = L2_, PRE = PRE_;
    static constexpr bool L2_AFTER = L2_AFTER_, TMA = TMA_;
    static_assert(CH % 256 == 0, "a lane's pieces as gemv_impl reads them");
    static_assert(PRE >= 0 && PRE <= S, "tiles before the wait: at most the ring");
};
using GemvRingPlain = GemvRing<8, 1, 4, 1024>;
using GemvRingGlu = GemvRing<4, 1, 4, 1024>;

template <typename T, int M, typename Geo, typename Fill, typename Store>
__device__ void gemv_ring_impl(const Fill& fill, const Store& out, const T* w, int n, int k, int m) {
    extern __shared__ __align__(16) unsigned char gemv_smem[];
    constexpr int R = Geo::R, S = Geo::S, CH = Geo::CH;
    constexpr int H = sizeof(T) / 2;       // 16-byte copies an 8-element piece
    constexpr int PIECES = CH / 8 / 32;    // a lane's pieces of a row in a tile
    constexpr bool GLU = Store::GLU;
    constexpr int WR = GLU ? 2 * R : R;
    constexpr int TILE = WR * CH;
    T* xs = reinterpret_cast<T*>(gemv_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T* ring = xs + (m + Fill::EXTRA) * k + warp * S * TILE;
    const int warps = gridDim.x * Geo::WARPS, gw = blockIdx.x * Geo::WARPS + warp;
    const int units = (n + R - 1) / R, nch = (k + CH - 1) / CH;
    const int mine = gw < units ? (units - 1 - gw) / warps + 1 : 0;
    const int ntiles = mine * nch;
    // Row r of tile t (unit t / nch, chunk t % nch), from its chunk's start.
    auto tile_row = [&](int t, int r) {
        const int u = gw + (t / nch) * warps, col = out.weight_row(min(u * R + r % R, n - 1));
        return w + ((i64)(GLU && r >= R ? n : 0) + col) * k + (t % nch) * CH;
    };
    auto tile_bytes = [&](int t) { return (unsigned)(min(CH, k - (t % nch) * CH) * sizeof(T)); };
    // With TMA, slot s's fills complete on bars[s] (phase t / S of tile t).
    __shared__ unsigned long long ring_bars[Geo::TMA ? Geo::WARPS * S : 1];
    unsigned long long* bars = ring_bars + (Geo::TMA ? warp * S : 0);
    // Starts the copies of tile t into its slot; with cp.async a group is
    // committed either way, so wait_group counts tiles.
    auto load = [&](int t) {
        if (t < ntiles) {
            const int k0 = (t % nch) * CH;
            T* dst = ring + (t % S) * TILE;
            if constexpr (Geo::TMA) {
                if (lane == 0) {
                    const unsigned bytes = tile_bytes(t);
                    bulk_expect(&bars[t % S], WR * bytes);
#pragma unroll
                    for (int r = 0; r < WR; ++r) bulk_copy_expected(dst + r * CH, tile_row(t, r), bytes, &bars[t % S]);
                }
            } else {
#pragma unroll
                for (int r = 0; r < WR; ++r) {
                    const T* src = tile_row(t, r) - k0;
#pragma unroll
                    for (int i = 0; i < PIECES; ++i) {
                        const int e = (lane + 32 * i) * 8, kk = k0 + e;
#pragma unroll
                        for (int h = 0; h < H; ++h)
                            cp_async16_or_zero(dst + r * CH + e + h * (8 / H),
                                               kk < k ? src + kk + h * (8 / H) : src, kk < k);
                    }
                }
            }
        }
        if constexpr (!Geo::TMA) cp_async_commit();
    };
    // Asks L2 for tile t (the variants with L2 > 0).
    auto prefetch = [&](int t) {
        if (lane == 0 && t < ntiles)
#pragma unroll
            for (int r = 0; r < WR; ++r) prefetch_l2(tile_row(t, r), tile_bytes(t));
    };
    pdl_trigger();
    // A block past the units (a narrow matrix on a grid sized for the
    // SMs) leaves at once: it would otherwise start as the working blocks
    // end, fill x and so delay the kernel's completion. Block 0 always has
    // a unit and waits, so the grid still ends after the kernel ahead.
    if (blockIdx.x * Geo::WARPS >= units) return;
    if constexpr (Geo::TMA) {
        if (lane == 0)
            for (int i = 0; i < S; ++i) mbar_init(&bars[i]);
        mbar_init_fence();
        __syncwarp();
    }
    fill.prefetch(xs, m, k);
#pragma unroll
    for (int t = 0; t < Geo::PRE; ++t) load(t);
    if constexpr (Geo::L2 > 0 && !Geo::L2_AFTER)
        for (int t = S; t < S + Geo::L2; ++t) prefetch(t);
    pdl_wait();
    if constexpr (Geo::L2 > 0 && Geo::L2_AFTER)
        for (int t = S; t < S + Geo::L2; ++t) prefetch(t);
    // The fill may leave the tiles' cp.async groups in flight (bulk copies
    // commit none).
    fill.template run<Geo::TMA ? 0 : Geo::PRE>(xs, m, k);
#pragma unroll
    for (int t = Geo::PRE; t < S; ++t) load(t);
    __syncthreads();
    OPTC_TRACE_MARK(3);
    float acc[WR][M];
#pragma unroll
    for (int r = 0; r < WR; ++r)
#pragma unroll
        for (int j = 0; j < M; ++j) acc[r][j] = 0.f;
    for (int t = 0; t < ntiles; ++t) {
        if constexpr (Geo::TMA)
            mbar_wait(&bars[t % S], (t / S) & 1);
        else
            cp_async_wait<S - 1>();
        __syncwarp();
        const int c = t % nch, k0 = c * CH;
        const T* tile = ring + (t % S) * TILE;
#pragma unroll
        for (int i = 0; i < PIECES; ++i) {
            const int e = (lane + 32 * i) * 8;
            if (k0 + e >= k) break;
#pragma unroll
            for (int r = 0; r < WR; ++r) {
                float wv[8];
                ld8(tile + r * CH + e, wv);
#pragma unroll
                for (int j = 0; j < M; ++j) {
                    if (j >= m) break;
                    float xv[8];
                    ld8(xs + j * k + k0 + e, xv);
#pragma unroll
                    for (int q = 0; q < 8; ++q) acc[r][j] += wv[q] * xv[q];
                }
            }
        }
        // Every lane is done with the slot before the tile S ahead takes it.
        __syncwarp();
        load(t + S);
        if constexpr (Geo::L2 > 0) prefetch(t + S + Geo::L2);
        if (c == nch - 1) {
            const int i0 = (gw + (t / nch) * warps) * R;
            gemv_store_sums<M, WR>(out, acc, m, i0, n,
                                   lane < m ? out.prepare(lane, i0, n) : typename Store::Pre{});
#pragma unroll
            for (int r = 0; r < WR; ++r)
#pragma unroll
                for (int j = 0; j < M; ++j) acc[r][j] = 0.f;
        }
    }
    if constexpr (Store::PICK) out.finish(min((int)gridDim.x, (units + Geo::WARPS - 1) / Geo::WARPS));
    OPTC_TRACE_END();
}

// The launch bounds are each geometry's WARPS * 32.
static_assert(GemvPlain::WARPS * 32 == 256 && GemvNorm::WARPS * 32 == 256 && GemvGlu::WARPS * 32 == 128,
              "launch bounds out of step with the GEMV geometries");
#define OPTC_GEMV_ROWS(T, N, MR)                                                                           \
    extern "C" __global__ void __launch_bounds__(256) gemv_##N##_m##MR(const T* x, const T* w, const T* b, \
                                                                       T* y, int n, int k, int m) {        \
        gemv_impl<T, MR, GemvPlain>(GemvCopy<T>{x}, GemvStore<T>{y, b}, w, n, k, m);                       \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_gelu_##N##_m##MR(                               \
        const T* x, const T* w, const T* b, T* y, int n, int k, int m) {                                   \
        gemv_impl<T, MR, GemvPlain>(GemvCopy<T>{x}, GemvStore<T, true>{y, b}, w, n, k, m);                 \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                      \
        gemv_norm_##N##_m##MR(const T* a, const T* r, const T* nw, T* sum, float eps, const i64* rows,     \
                              int nrows, const T* w, const T* b, T* y, int n, int k, int m) {              \
        gemv_impl<T, MR, GemvNorm>(GemvAddRmsNorm<T, MR>{a, r, nw, sum, eps, rows, nrows},                 \
                                   GemvStore<T>{y, b}, w, n, k, m);                                        \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128) gemv_glu_##N##_m##MR(                                \
        const T* x, const T* w, const T* b, T* y, int n, int k, int m) {                                   \
        gemv_impl<T, MR, GemvGlu>(GemvCopy<T>{x}, GemvGluStore<T>{y, b}, w, n, k, m);                      \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        gemv_norm_glu_##N##_m##MR(const T* a, const T* r, const T* nw, T* sum, float eps, const T* w,      \
                                  const T* b, T* y, int n, int k, int m) {                                 \
        gemv_impl<T, MR, GemvGlu>(GemvAddRmsNorm<T, MR>{a, r, nw, sum, eps}, GemvGluStore<T>{y, b}, w, n,  \
                                  k, m);                                                                   \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_rope_##N##_m##MR(                               \
        const T* x, const T* w, const T* b, int n, int k, int m, const T* cs, const T* sn, T* q, T* kc,    \
        T* vc, const i64* slots, int hq, int hkv, int d, int dv, int rd, int il) {                         \
        gemv_impl<T, MR, GemvNorm>(GemvCopy<T>{x},                                                         \
                                   GemvRopeStore<T>{b, cs, sn, q, kc, vc, slots, hq, hkv, d, dv, rd, il}, \
                                   w, n, k, m);                                                            \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_norm_rope_##N##_m##MR(                          \
        const T* a, const T* r, const T* nw, T* sum, float eps, const T* w, const T* b, int n, int k,      \
        int m, const T* cs, const T* sn, T* q, T* kc, T* vc, const i64* slots, int hq, int hkv, int d,     \
        int dv, int rd, int il) {                                                                          \
        gemv_impl<T, MR, GemvNorm>(GemvAddRmsNorm<T, MR>{a, r, nw, sum, eps},                              \
                                   GemvRopeStore<T>{b, cs, sn, q, kc, vc, slots, hq, hkv, d, dv, rd, il}, \
                                   w, n, k, m);                                                            \
    }

// The ring GEMVs at one row of x, same arguments as their OPTC_GEMV_ROWS
// kinds (`gemv_instances` adds them for the 16-bit types).
static_assert(GemvRingPlain::WARPS * 32 == 256 && GemvRingGlu::WARPS * 32 == 128,
              "launch bounds out of step with the ring GEMV geometries");
#define OPTC_GEMV_RING(T, N)                                                                               \
    extern "C" __global__ void __launch_bounds__(256) gemv_ring_##N##_m1(const T* x, const T* w,           \
                                                                         const T* b, T* y, int n, int k,   \
                                                                         int m) {                          \
        gemv_ring_impl<T, 1, GemvRingPlain>(GemvCopy<T>{x}, GemvStore<T>{y, b}, w, n, k, m);               \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_gelu_ring_##N##_m1(                             \
        const T* x, const T* w, const T* b, T* y, int n, int k, int m) {                                   \
        gemv_ring_impl<T, 1, GemvRingPlain>(GemvCopy<T>{x}, GemvStore<T, true>{y, b}, w, n, k, m);         \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                      \
        gemv_norm_ring_##N##_m1(const T* a, const T* r, const T* nw, T* sum, float eps, const i64* rows,   \
                                int nrows, const T* w, const T* b, T* y, int n, int k, int m) {            \
        gemv_ring_impl<T, 1, GemvRingPlain>(GemvAddRmsNorm<T, 1>{a, r, nw, sum, eps, rows, nrows},         \
                                            GemvStore<T>{y, b}, w, n, k, m);                               \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128) gemv_glu_ring_##N##_m1(                              \
        const T* x, const T* w, const T* b, T* y, int n, int k, int m) {                                   \
        gemv_ring_impl<T, 1, GemvRingGlu>(GemvCopy<T>{x}, GemvGluStore<T>{y, b}, w, n, k, m);              \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        gemv_norm_glu_ring_##N##_m1(const T* a, const T* r, const T* nw, T* sum, float eps, const T* w,    \
                                    const T* b, T* y, int n, int k, int m) {                               \
        gemv_ring_impl<T, 1, GemvRingGlu>(GemvAddRmsNorm<T, 1>{a, r, nw, sum, eps},                        \
                                          GemvGluStore<T>{y, b}, w, n, k, m);                              \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256)                                                      \
        gemv_ring_argmax_##N##_m1(const T* x, const T* w, const T* b, T* y, int n, int k, int m,           \
                                  float* part, int* counter, int* tok, float* lp) {                        \
        gemv_ring_impl<T, 1, GemvRingPlain>(GemvCopy<T>{x}, GemvArgmaxStore<T>{y, b, part, counter, tok, lp}, \
                                            w, n, k, m);                                                   \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_norm_ring_argmax_##N##_m1(                      \
        const T* a, const T* r, const T* nw, T* sum, float eps, const i64* rows, int nrows, const T* w,    \
        const T* b, T* y, int n, int k, int m, float* part, int* counter, int* tok, float* lp) {           \
        gemv_ring_impl<T, 1, GemvRingPlain>(GemvAddRmsNorm<T, 1>{a, r, nw, sum, eps, rows, nrows},         \
                                            GemvArgmaxStore<T>{y, b, part, counter, tok, lp}, w, n, k, m); \
    }

// The geometries for DRAM that streams 4 TB/s or more (the H200;
// `Gpu::wide_dram` on the host), which the step bench measured faster there
// and not on the H100 (twenty-third session, docs/perf.md): gate/up's ring
// filled by bulk copies, which take none of the SM's load slots (10 µs a
// W1 step), and the QKV GEMV with two loads a stage (7 µs). Same arguments
// and launch shapes as `gemv_*glu_ring_*` and `gemv_*rope_*`. Bulk copies
// are sm_90 instructions: before sm_90 the macro defines nothing, and the
// host finds no such kernels and keeps the standard ones.
using GemvRingGluBulk = GemvRing<4, 1, 4, 1024, 0, false, true>;
using GemvNormTwoLoads = GemvGeometry<8, 2, 2>;
static_assert(GemvRingGluBulk::WARPS * 32 == 128 && GemvNormTwoLoads::WARPS * 32 == 256,
              "launch bounds out of step with the wide-DRAM geometries");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define OPTC_GEMV_WIDE_DRAM(T, N)
#else
#define OPTC_GEMV_WIDE_DRAM(T, N)                                                                          \
    extern "C" __global__ void __launch_bounds__(128) gemv_glu_ring_bulk_##N##_m1(                         \
        const T* x, const T* w, const T* b, T* y, int n, int k, int m) {                                   \
        gemv_ring_impl<T, 1, GemvRingGluBulk>(GemvCopy<T>{x}, GemvGluStore<T>{y, b}, w, n, k, m);          \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        gemv_norm_glu_ring_bulk_##N##_m1(const T* a, const T* r, const T* nw, T* sum, float eps,           \
                                         const T* w, const T* b, T* y, int n, int k, int m) {              \
        gemv_ring_impl<T, 1, GemvRingGluBulk>(GemvAddRmsNorm<T, 1>{a, r, nw, sum, eps},                    \
                                              GemvGluStore<T>{y, b}, w, n, k, m);                          \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_rope2_##N##_m1(                                 \
        const T* x, const T* w, const T* b, int n, int k, int m, const T* cs, const T* sn, T* q, T* kc,    \
        T* vc, const i64* slots, int hq, int hkv, int d, int dv, int rd, int il) {                         \
        gemv_impl<T, 1, GemvNormTwoLoads>(GemvCopy<T>{x},                                                  \
                                          GemvRopeStore<T>{b, cs, sn, q, kc, vc, slots, hq, hkv, d, dv, rd, il}, \
                                          w, n, k, m);                                                     \
    }                                                                                                      \
    extern "C" __global__ void __launch_bounds__(256) gemv_norm_rope2_##N##_m1(                            \
        const T* a, const T* r, const T* nw, T* sum, float eps, const T* w, const T* b, int n, int k,      \
        int m, const T* cs, const T* sn, T* q, T* kc, T* vc, const i64* slots, int hq, int hkv, int d,     \
        int dv, int rd, int il) {                                                                          \
        gemv_impl<T, 1, GemvNormTwoLoads>(GemvAddRmsNorm<T, 1>{a, r, nw, sum, eps},                        \
                                          GemvRopeStore<T>{b, cs, sn, q, kc, vc, slots, hq, hkv, d, dv, rd, il}, \
                                          w, n, k, m);                                                     \
    }
#endif

// Instantiated by the host for each float type a graph's linears use
// (`gemv_instances` in kernels/src/cuda.rs, a unit for each row count):
// most of this file's compile time, so a bf16 model does not build the
// f32 and f16 GEMVs.

// The end of the skinny GEMM (below, and the bench's register-streaming one): the block's [8 MT, 16 WARPS] tile of y
// (acc as mma16816 leaves it: weight rows down, rows of x across) goes
// through shared memory in f32 so the stores run along n; with k split
// over gridDim.y blocks, the last block of a slab adds the partial sums in
// split order. The caller has synced the block: shared memory is free.
template <typename T, int MT, int WARPS>
__device__ void skinny_finish(const float (&acc)[MT][4], const T* b, T* y, float* part, int* counters, int n, int m) {
    constexpr int WROWS = 16 * WARPS;
    constexpr int CS = WROWS + 4;
    extern __shared__ __align__(16) unsigned char skinny_smem[];
    float* cs = reinterpret_cast<float*>(skinny_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * WROWS, z = blockIdx.y, nsplit = gridDim.y;
    const int g = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int j = 0; j < MT; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = j * 8 + 2 * tq + (e & 1), col = warp * 16 + g + (e >> 1) * 8;
            cs[row * CS + col] = acc[j][e];
        }
    }
    __syncthreads();
    const int cols = min(WROWS, n - n0);
    if (nsplit == 1) {
        for (int i = threadIdx.x; i < m * WROWS; i += blockDim.x) {
            const int r = i / WROWS, c = i % WROWS;
            if (c < cols) st(&y[(i64)r * n + n0 + c], b ? cs[r * CS + c] + ld(&b[n0 + c]) : cs[r * CS + c]);
        }
        return;
    }
    // Partials in rows of gridDim.x * 64 floats: 16-byte aligned.
    const i64 np = (i64)gridDim.x * WROWS;
    for (int i = threadIdx.x; i < m * (WROWS / 4); i += blockDim.x) {
        const int r = i / (WROWS / 4), c = (i % (WROWS / 4)) * 4;
        const float* src = cs + r * CS + c;
        __stcg(reinterpret_cast<float4*>(part + ((i64)z * m + r) * np + n0 + c), make_float4(src[0], src[1], src[2], src[3]));
    }
    __threadfence();
    __syncthreads();
    __shared__ int last;
    if (threadIdx.x == 0) {
        int* ctr = counters + blockIdx.x;
        const int done = atomicAdd(ctr, 1);
        last = done == nsplit - 1;
        if (last) *ctr = 0;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Four splits' loads in flight at a time, summed in split order.
    for (int i = threadIdx.x; i < m * (WROWS / 4); i += blockDim.x) {
        const int r = i / (WROWS / 4), c = (i % (WROWS / 4)) * 4;
        if (c >= cols) continue;
        const float4* p = reinterpret_cast<const float4*>(part + (i64)r * np + n0 + c);
        const i64 zs = (i64)m * np / 4;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        int zz = 0;
        for (; zz + 4 <= nsplit; zz += 4) {
            float4 a[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) a[u] = __ldcg(p + (zz + u) * zs);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                v.x += a[u].x;
                v.y += a[u].y;
                v.z += a[u].z;
                v.w += a[u].w;
            }
        }
        for (; zz < nsplit; ++zz) {
            const float4 a = __ldcg(p + zz * zs);
            v.x += a.x;
            v.y += a.y;
            v.z += a.z;
            v.w += a.w;
        }
        const float vs[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            if (c + e < cols) st(&y[(i64)r * n + n0 + c + e], b ? vs[e] + ld(&b[n0 + c + e]) : vs[e]);
        }
    }
}

// Linear layers at small batches (5..128 rows of x) on the tensor cores,
// for 16-bit types: y = x wᵀ (+ b) as yᵀ = w xᵀ, so the weight rows are
// the MMA rows and the few rows of x its columns, and a block streams a
// slab of 16 * WARPS weight rows once (64 as the host launches it:
// SKINNY_ROWS_PER_BLOCK), each warp owning 16. Tiles of BK (64) along k pass
// through STAGES cp.async stages (rows padded by 8 elements for
// ldmatrix). With few slabs (narrow outputs) the k range is split over
// gridDim.y blocks: each leaves f32 partial sums and the last block of a
// slab to finish (counted in `counters`, reset to 0) adds them in a fixed
// order, so the sum does not depend on timing; one rounding at the store.
// Needs k % 8 == 0 and 16-byte-aligned operands (the host checks); MT n8
// column blocks cover up to 8 * MT rows of x. With EARLY the first
// stages' weights are requested before the PDL wait (cuBLASLt's kernels
// cannot start before the kernel ahead ends). kernels/bench/skinny_bench.cu
// times other WARPS, STAGES and EARLY against cuBLASLt.
constexpr int SKINNY_BK = 64, SKINNY_STAGES = 4;

template <typename T, int MT, int WARPS = 4, int STAGES = SKINNY_STAGES, bool EARLY = true, int BK = SKINNY_BK>
__device__ void skinny_gemm_impl(const T* x, const T* w, const T* b, T* y, float* part, int* counters, int n, int k,
                                 int m) {
    constexpr int RS = BK + 8, WROWS = 16 * WARPS, XROWS = 8 * MT;
    constexpr int STAGE = (WROWS + XROWS) * RS;
    extern __shared__ __align__(16) unsigned char skinny_smem[];
    T* smem = reinterpret_cast<T*>(skinny_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n0 = blockIdx.x * WROWS, z = blockIdx.y, nsplit = gridDim.y;
    const int ktiles = (k + BK - 1) / BK;
    const int per = (ktiles + nsplit - 1) / nsplit;
    const int kt0 = z * per, kt1 = min(ktiles, kt0 + per), nk = max(0, kt1 - kt0);

    // Start the copies of k tile kt's weights, and of its x, into stage st.
    auto load_w = [&](int kt, int st) {
        T* ws = smem + st * STAGE;
        const int kb = kt * BK;
        for (int i = threadIdx.x; i < WROWS * (BK / 8); i += blockDim.x) {
            const int r = i / (BK / 8), c = (i % (BK / 8)) * 8, kk = kb + c;
            const bool ok = n0 + r < n && kk < k;
            cp_async16_or_zero(ws + r * RS + c, ok ? w + (i64)(n0 + r) * k + kk : w, ok);
        }
    };
    auto load_x = [&](int kt, int st) {
        T* xs = smem + st * STAGE + WROWS * RS;
        const int kb = kt * BK;
        for (int i = threadIdx.x; i < XROWS * (BK / 8); i += blockDim.x) {
            const int r = i / (BK / 8), c = (i % (BK / 8)) * 8, kk = kb + c;
            const bool ok = r < m && kk < k;
            cp_async16_or_zero(xs + r * RS + c, ok ? x + (i64)r * k + kk : x, ok);
        }
    };
    // The first stages' weights (no kernel of the run writes them) are
    // asked for while the kernel ahead finishes; x only after the wait.
    // The first commit group holds those weights and x's first tile.
    // (Without EARLY, everything after the wait: for the benches.)
    pdl_trigger();
    if (!EARLY) pdl_wait();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s)
        if (s < nk) load_w(kt0 + s, s);
    if (EARLY) pdl_wait();
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) load_x(kt0 + s, s);
        cp_async_commit();
    }
    float acc[MT][4];
#pragma unroll
    for (int j = 0; j < MT; ++j) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const int mblocks = (m + 7) / 8;
    for (int i = 0; i < nk; ++i) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (i + STAGES - 1 < nk) {
            load_w(kt0 + i + STAGES - 1, (i + STAGES - 1) % STAGES);
            load_x(kt0 + i + STAGES - 1, (i + STAGES - 1) % STAGES);
        }
        cp_async_commit();
        const T* ws = smem + (i % STAGES) * STAGE;
        const T* xs = ws + WROWS * RS;
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks) {
            unsigned a[4];
            ldsm_x4(a, ws + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * RS + ks * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < MT; j += 2) {
                if (j * 8 >= m) break;
                unsigned bb[4];
                ldsm_x4(bb, xs + ((j + (lane >> 4)) * 8 + (lane & 7)) * RS + ks * 16 + ((lane >> 3) & 1) * 8);
                mma16816((T*)nullptr, acc[j], a[0], a[1], a[2], a[3], bb[0], bb[1]);
                if (j + 1 < mblocks) mma16816((T*)nullptr, acc[j + 1], a[0], a[1], a[2], a[3], bb[2], bb[3]);
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    skinny_finish<T, MT, WARPS>(acc, b, y, part, counters, n, m);
}

#define OPTC_SKINNY(T, N, MT, NAME)                                                                        \
    extern "C" __global__ void __launch_bounds__(128)                                                      \
        skinny_##N##_##NAME(const T* x, const T* w, const T* b, T* y, float* part, int* counters, int n,   \
                            int k, int m) {                                                                \
        skinny_gemm_impl<T, MT>(x, w, b, y, part, counters, n, k, m);                                      \
    }
// The row variants (`SKINNY_VARIANTS` on the host), instantiated with the
// GEMVs for the 16-bit types.
#define OPTC_SKINNY_ALL(T, N)    \
    OPTC_SKINNY(T, N, 4, m32)    \
    OPTC_SKINNY(T, N, 8, m64)    \
    OPTC_SKINNY(T, N, 16, m128)
