// A one-token decode step's layer stack and LM head as one persistent
// kernel (`mega_decode_*`), one block an SM. At one token a decode step is
// a chain of latency-bound launches, each of which leaves DRAM idle while
// it starts, fills x and drains; here each of a block's WARPS warps owns a
// ring of STAGES weight tiles (CH elements of one weight row) in shared
// memory and walks its tiles of the whole step in order: its rows of every
// linear of every layer, then the LM head's. Weights depend on nothing, so
// a warp keeps STAGES tiles in flight across phase boundaries: while the
// grid waits at a phase's barrier (the next linear needs all of this one's
// output), or a few warps do attention, the rings fill with the next
// linears' weights.
//
// Phases of a layer:
// - QKV: x = rms_norm(h) in shared memory; a warp's unit is a RoPE pair of
//   weight rows, rotated and stored to q or the key cache (values to the
//   value cache);
// - attention: MEGA_NSPLIT pieces of keys a KV head, a warp each; the last
//   piece of a head to finish combines them;
// - o: h' = h + o;
// - gate/up: x = rms_norm(h'); a unit is a gate row and its up row;
//   silu(g) * u;
// - down: h'' = h' + down.
// Then the LM head on rms_norm(h'') of the last layer.
// Every activation has its own buffer a layer (`MegaArgs`), written once
// a step, so no SM reads a stale L1 line; activations made in the same
// launch are read with ld.global.cg. The barrier is a monotonic counter
// each block arrives at once a phase; the last block out resets it.
//
// Rounding follows the separate kernels: each linear's result rounded to T
// once (bias added first), residual sums rounded to T, norms and softmax
// in f32. Needs every block resident at once (the host launches one block
// an SM after checking that one fits); a wait that spins for about two
// seconds traps, so a broken protocol is an error, not a hang.
// kernels/bench/mega_bench.cu times it against the launch chain.

constexpr int MEGA_NSPLIT = 16;  // attention pieces a KV head (the combine reads one a lane)
constexpr int MEGA_PREFETCH_KEYS = 64;  // cached keys a piece asks of L2 ahead
enum MegaKind { MK_QKV = 0, MK_ATT = 1, MK_O = 2, MK_GU = 3, MK_DOWN = 4, MK_HEAD = 5 };

// A layer's operands (the host's table, `MegaLayer` in mega.rs). Biases,
// and a norm's scale, may be null.
template <typename T> struct MegaLayer {
    const T *wqkv, *bqkv, *wo, *bo, *wgu, *bgu, *wd, *bd, *nw1, *nw2;
    T *kc, *vc;  // [blocks, block_size, HKV, HD]
    float eps1, eps2;
};

// A step's operands and scratch (the host's `MegaArgs`: same order, no
// padding, checked by size).
template <typename T> struct MegaArgs {
    const MegaLayer<T>* layers;
    int nlayers, vocab;
    const T* h0;             // the stack's input row [D] (the embedding)
    const T *cs, *sn;        // this token's cos and sin [HD]
    int interleaved, block_size;
    const i64* slot;         // this token's cache slot (negative: no write)
    const i64* pos;          // this token's position (it sees keys 0..pos)
    const i64* table;        // its block table
    int window;              // 0: every key
    float scale;
    const T *fnorm, *whead, *bhead;
    float feps;
    int flags;               // benches only: 1 skips attention, 2 the barriers
    T* logits;               // [vocab]
    // Scratch: [nlayers] rows of each.
    T *q, *att, *hmid, *hout, *glu;
    float* part;             // [nlayers][HKV][MEGA_NSPLIT][GQA][HD + 2]
    unsigned* attcnt;        // [nlayers][HKV], left at 0
    unsigned* bar;           // [2]: arrivals, exits; left at 0
};
static_assert(sizeof(MegaArgs<bf16>) == 23 * 8, "MegaArgs layout (mirrored in mega.rs)");
static_assert(sizeof(MegaLayer<bf16>) == 13 * 8, "MegaLayer layout (mirrored in mega.rs)");

// The model's shape, fixed at instantiation: hidden D, intermediate F,
// HQ query and HKV key/value heads of HD, weight tiles of CH elements.
template <typename T_, int D_, int F_, int HQ_, int HKV_, int HD_, int CH_> struct MegaShape {
    using T = T_;
    static constexpr int D = D_, F = F_, HQ = HQ_, HKV = HKV_, HD = HD_, CH = CH_;
    static constexpr int GQA = HQ / HKV, QK = (HQ + HKV) * HD, QKV = (HQ + 2 * HKV) * HD, KO = HQ * HD;
    // 16-byte pieces a lane copies and reads of a tile (lanes past the
    // tile's end idle).
    static constexpr int PIECES = (CH / 8 + 31) / 32;
    // Value dims a lane in attention.
    static constexpr int DPL = (HD + 31) / 32;
    __host__ __device__ static constexpr int max2(int a, int b) { return a > b ? a : b; }
    // x in shared memory, elements: the widest input (attention's queries
    // use the same space, `mega_smem_bytes`).
    static constexpr int XS = max2(max2(D, F), KO);
    static_assert(sizeof(T) == 2, "16-bit types");
    static_assert(D % CH == 0 && F % CH == 0 && KO % CH == 0 && CH % 8 == 0, "whole tiles");
    static_assert(HQ % HKV == 0 && HD % 8 == 0, "heads");
};

// What a linear phase streams: units (a warp's piece of output), weight
// rows a unit, k, and tiles a row.
struct MegaLinear {
    int units, rows, k, nch;
};
// Layers and vocabulary: the runtime part of the walk.
struct MegaDims {
    int layers, vocab;
    __host__ __device__ int phases() const { return 5 * layers + 1; }
    __host__ __device__ int kind(int p) const { return p == 5 * layers ? MK_HEAD : p % 5; }
};

template <class S> __host__ __device__ inline MegaLinear mega_linear(int kind, const MegaDims& d) {
    switch (kind) {
    case MK_QKV: return {S::QKV / 2, 2, S::D, S::D / S::CH};
    case MK_O: return {S::D, 1, S::KO, S::KO / S::CH};
    case MK_GU: return {S::F, 2, S::D, S::D / S::CH};
    case MK_DOWN: return {S::D, 1, S::F, S::F / S::CH};
    case MK_HEAD: return {d.vocab, 1, S::D, S::D / S::CH};
    default: return {0, 1, S::D, 1};
    }
}

// The weight row of row r of unit u. QKV: a RoPE pair of a head, rows
// (i, i + HD/2) (interleaved: (2i, 2i + 1)); value heads in adjacent
// pairs. Gate/up: the gate row and its up row, F further on.
template <class S> __host__ __device__ inline int mega_row(int kind, int u, int r, int interleaved) {
    if (kind == MK_QKV) {
        const int head = u / (S::HD / 2), i = u % (S::HD / 2);
        if (interleaved || head >= S::HQ + S::HKV) return head * S::HD + 2 * i + r;
        return head * S::HD + i + r * (S::HD / 2);
    }
    if (kind == MK_GU) return u + r * S::F;
    return u;
}

// A warp's walk over its tiles of the step, in order: phase by phase
// (attention has none), its units of each (u = first + i * W, where the
// first is rotated by the units of the phases before, so each warp's total
// stays within one unit of the others'), each unit's tiles chunk by chunk,
// row by row within a chunk.
template <class S> struct MegaWalk {
    int p, u, j;  // phase, unit, tile within the unit
    int rot;      // the phase's rotation
    MegaDims d;
    __host__ __device__ MegaLinear lin() const { return mega_linear<S>(d.kind(p), d); }
    __host__ __device__ void start(int gw, int W, MegaDims dims) {
        d = dims;
        p = -1;
        rot = 0;
        next_phase(gw, W);
    }
    __host__ __device__ bool done() const { return p >= d.phases(); }
    // The first unit of warp gw at the current rotation.
    __host__ __device__ int first(int gw, int W) const { return (int)(((long long)gw - rot % W + W) % W); }
    __host__ __device__ void next_phase(int gw, int W) {
        do {
            if (p >= 0) rot = (int)(((long long)rot + lin().units) % W);
            ++p;
            if (p >= d.phases()) return;
            u = first(gw, W);
            j = 0;
        } while (u >= lin().units);
    }
    __host__ __device__ void next(int gw, int W) {
        const MegaLinear l = lin();
        if (++j < l.rows * l.nch) return;
        j = 0;
        u += W;
        if (u >= l.units) next_phase(gw, W);
    }
};

// The first element of the tile a walk is at.
template <class S>
__device__ __forceinline__ const typename S::T* mega_tile_src(const MegaArgs<typename S::T>& m, const MegaWalk<S>& w,
                                                              int kind) {
    const MegaLinear lin = w.lin();
    const int c = w.j / lin.rows, r = w.j % lin.rows, l = w.p / 5;
    const typename S::T* base;
    switch (kind) {
    case MK_QKV: base = m.layers[l].wqkv; break;
    case MK_O: base = m.layers[l].wo; break;
    case MK_GU: base = m.layers[l].wgu; break;
    case MK_DOWN: base = m.layers[l].wd; break;
    default: base = m.whead;
    }
    return base + (i64)mega_row<S>(kind, w.u, r, m.interleaved) * lin.k + c * S::CH;
}

template <typename T> __device__ __forceinline__ float mega_ldcg(const T* p) {
    const unsigned short b = __ldcg(reinterpret_cast<const unsigned short*>(p));
    T t;
    *reinterpret_cast<unsigned short*>(&t) = b;
    return ld(&t);
}
template <typename T> __device__ __forceinline__ void mega_ldcg8(const T* p, float* o) {
    const uint4 u = __ldcg(reinterpret_cast<const uint4*>(p));
    ld8(reinterpret_cast<const T*>(&u), o);
}
__device__ __forceinline__ unsigned mega_ld_acquire(const unsigned* p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(p) : "memory");
    return v;
}
// prefetch_l2, spin_guard and the bulk-copy helpers (smem_addr, mbar_*,
// bulk_copy) are in common.cuh: the ring GEMV uses them too.

// All blocks have finished the phase before: arrivals counted on one
// monotonic counter (`target` in all). The block's writes are ordered
// before its arrival by the CTA barrier and an acquire-release fence
// (cumulative: it covers what the barrier made visible to thread 0), and
// every later read after the acquire load that sees the last arrival;
// cheaper than a sequentially consistent fence on each side.
__device__ __forceinline__ void mega_grid_barrier(unsigned* count, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        asm volatile("fence.acq_rel.gpu;\n" ::: "memory");
        asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;\n" ::"l"(count) : "memory");
        const long long t0 = clock64();
        while (mega_ld_acquire(count) < target) spin_guard(t0);
    }
    __syncthreads();
}

// x = rms_norm(a) * nw into shared memory, as the GEMVs' fill does it
// (statistics in f32, nw * (a * inv) rounded once; no scale when nw is
// null). Each of the block's THREADS threads loads its pieces of a and of
// the scale at once, into registers: one L2 round trip after the barrier.
template <class S, int THREADS>
__device__ void mega_fill_norm(typename S::T* xs, const typename S::T* a, const typename S::T* nw, float eps,
                               float* scratch) {
    using T = typename S::T;
    constexpr int D = S::D, NP = (D + THREADS * 8 - 1) / (THREADS * 8);
    // Kept as loaded (16 bytes a piece) across the reduction.
    uint4 va[NP], vw[NP];
#pragma unroll
    for (int q = 0; q < NP; ++q) {
        const int i = (q * THREADS + (int)threadIdx.x) * 8;
        if (i < D) {
            va[q] = __ldcg(reinterpret_cast<const uint4*>(a + i));
            if (nw) vw[q] = *reinterpret_cast<const uint4*>(nw + i);
        }
    }
    float ss = 0.f;
#pragma unroll
    for (int q = 0; q < NP; ++q)
        if ((q * THREADS + (int)threadIdx.x) * 8 < D) {
            float v[8];
            ld8(reinterpret_cast<const T*>(&va[q]), v);
#pragma unroll
            for (int e = 0; e < 8; ++e) ss += v[e] * v[e];
        }
    ss = block_sum(ss, scratch);
    const float inv = 1.f / sqrtf(ss / (float)D + eps);
#pragma unroll
    for (int q = 0; q < NP; ++q) {
        const int i = (q * THREADS + (int)threadIdx.x) * 8;
        if (i >= D) continue;
        float v[8], o[8], y[8];
        ld8(reinterpret_cast<const T*>(&va[q]), v);
        if (nw) ld8(reinterpret_cast<const T*>(&vw[q]), o);
#pragma unroll
        for (int e = 0; e < 8; ++e) y[e] = nw ? o[e] * (v[e] * inv) : v[e] * inv;
        st8(xs + i, y);
    }
}
template <typename T> __device__ void mega_fill_copy(T* xs, const T* a, int k) {
    for (int i = threadIdx.x * 8; i < k; i += blockDim.x * 8)
        *reinterpret_cast<uint4*>(xs + i) = __ldcg(reinterpret_cast<const uint4*>(a + i));
}

__device__ __forceinline__ i64 mega_slot_of(const i64* table, int bs, i64 pos) {
    return table[pos / bs] * bs + pos % bs;
}

// This token's rotary tables and cache slot, read once a launch into
// shared memory.
template <class S> struct MegaToken {
    float cs[S::HD], sn[S::HD];
    i64 slot;
};

// A warp's sums of unit u of a linear phase, on lane 0; `res` is the
// residual an o or down unit adds (loaded while its tiles streamed).
template <class S>
__device__ void mega_store_unit(const MegaArgs<typename S::T>& m, const MegaToken<S>& tok, int kind, int l, int u,
                                float a0, float a1, float res) {
    using T = typename S::T;
    constexpr int HD = S::HD;
    switch (kind) {
    case MK_QKV: {
        const MegaLayer<T>& ly = m.layers[l];
        const int ia = mega_row<S>(MK_QKV, u, 0, m.interleaved), ib = mega_row<S>(MK_QKV, u, 1, m.interleaved);
        const float xa = rnd<T>(ly.bqkv ? a0 + ld(&ly.bqkv[ia]) : a0);
        const float xb = rnd<T>(ly.bqkv ? a1 + ld(&ly.bqkv[ib]) : a1);
        const i64 slot = tok.slot;
        if (ia >= S::QK) {
            if (slot < 0) return;
            T* row = ly.vc + slot * S::HKV * HD;
            st(&row[ia - S::QK], xa);
            st(&row[ib - S::QK], xb);
            return;
        }
        const int ka = ia % HD, kb = ib % HD;
        const float oa = xa * tok.cs[ka] + (-xb) * tok.sn[ka];
        const float ob = xb * tok.cs[kb] + xa * tok.sn[kb];
        T* row;
        int at = ia;
        if (ia < S::HQ * HD) {
            row = m.q + (i64)l * S::KO;
        } else {
            if (slot < 0) return;
            row = ly.kc + slot * S::HKV * HD;
            at -= S::HQ * HD;
        }
        st(&row[at], oa);
        st(&row[at + (ib - ia)], ob);
        return;
    }
    case MK_O: {
        const T* bo = m.layers[l].bo;
        st(&m.hmid[(i64)l * S::D + u], res + rnd<T>(bo ? a0 + ld(&bo[u]) : a0));
        return;
    }
    case MK_GU: {
        const T* b = m.layers[l].bgu;
        const float g = rnd<T>(b ? a0 + ld(&b[u]) : a0), up = rnd<T>(b ? a1 + ld(&b[S::F + u]) : a1);
        st(&m.glu[(i64)l * S::F + u], g / (1.f + expf(-g)) * up);
        return;
    }
    case MK_DOWN: {
        const T* b = m.layers[l].bd;
        st(&m.hout[(i64)l * S::D + u], res + rnd<T>(b ? a0 + ld(&b[u]) : a0));
        return;
    }
    default: st(&m.logits[u], m.bhead ? a0 + ld(&m.bhead[u]) : a0);
    }
}

// DPL consecutive 16-bit elements of a row, as one load where DPL is a
// power of two (the lane's dims start at lane * DPL, aligned to their
// size), else one at a time; lanes past the row, or not `valid`, hold 0.
template <int DPL> struct MegaRaw { using U = uint4; };  // (unused where DPL is not a power of two)
template <> struct MegaRaw<1> { using U = unsigned short; };
template <> struct MegaRaw<2> { using U = unsigned; };
template <> struct MegaRaw<4> { using U = uint2; };
template <typename T, int DPL> struct MegaPacked {
    static constexpr bool PACKED = DPL == 1 || DPL == 2 || DPL == 4 || DPL == 8;
    using U = typename MegaRaw<DPL>::U;
    U raw;
    float f[PACKED ? 1 : DPL];
    __device__ __forceinline__ void load(const T* row, int lane, int hd, bool valid) {
        if constexpr (PACKED) {
            raw = U{};
            if (valid && lane * DPL < hd) raw = __ldcg(reinterpret_cast<const U*>(row + lane * DPL));
        } else {
#pragma unroll
            for (int e = 0; e < DPL; ++e)
                f[e] = valid && lane * DPL + e < hd ? mega_ldcg(&row[lane * DPL + e]) : 0.f;
        }
    }
    __device__ __forceinline__ void unpack(float (&out)[DPL]) const {
        if constexpr (PACKED) {
            const T* h = reinterpret_cast<const T*>(&raw);
#pragma unroll
            for (int e = 0; e < DPL; ++e) out[e] = ld(&h[e]);
        } else {
#pragma unroll
            for (int e = 0; e < DPL; ++e) out[e] = f[e];
        }
    }
};

// The keys [k0, k1) of attention piece s of a KV head: the token sees
// keys 0..pos (the last `window` of them with a window), in MEGA_NSPLIT
// near-equal pieces.
template <typename T> __device__ __forceinline__ void mega_piece_keys(const MegaArgs<T>& m, int s, int& k0, int& k1) {
    const int ctx = (int)*m.pos + 1;
    const int lo = m.window > 0 ? max(0, ctx - m.window) : 0;
    const int keys = ctx - lo, per = (keys + MEGA_NSPLIT - 1) / MEGA_NSPLIT;
    k0 = lo + min(keys, s * per);
    k1 = lo + min(keys, s * per + per);
}

// Asks L2 for the cached keys and values attention piece `a` of layer l
// reads, a key a lane, so that after the barrier its loads hit L2 rather
// than DRAM. (This token's own slot is written meanwhile: L2 is where
// that write lands too.)
template <class S> __device__ void mega_attention_prefetch(const MegaArgs<typename S::T>& m, int l, int a) {
    using T = typename S::T;
    int k0, k1;
    mega_piece_keys(m, a % MEGA_NSPLIT, k0, k1);
    const MegaLayer<T>& ly = m.layers[l];
    const i64 head = (a / MEGA_NSPLIT) * S::HD;
    // The first MEGA_PREFETCH_KEYS keys at most: enough to hide the
    // piece's start, and never more than L2 holds at long contexts.
    k1 = min(k1, k0 + MEGA_PREFETCH_KEYS);
    constexpr int BYTES = S::HD * (int)sizeof(T);
    for (int key = k0 + (int)(threadIdx.x & 31); key < k1; key += 32) {
        const i64 at = mega_slot_of(m.table, m.block_size, key) * S::HKV * S::HD + head;
        for (const T* row : {ly.kc + at, ly.vc + at}) {
            // Every 128-byte line the row touches.
            const size_t first = reinterpret_cast<size_t>(row) & ~size_t(127);
            for (size_t line = first; line < reinterpret_cast<size_t>(row) + BYTES; line += 128)
                asm volatile("prefetch.global.L2 [%0];\n" ::"l"(line));
        }
    }
}

// Decode attention piece `a` of layer l (KV head a / MEGA_NSPLIT, its
// keys' piece a % MEGA_NSPLIT): online softmax over the piece's keys for
// the head's GQA query heads, a key a lane for the scores and DPL dims a
// lane for the values; the piece's (max, sum, values) go to `part`, and
// the last piece of the head to finish combines them into att. qs: GQA x
// HD floats of shared memory for this warp.
template <class S> __device__ void mega_attention_piece(const MegaArgs<typename S::T>& m, int l, int a, float* qs) {
    using T = typename S::T;
    constexpr int HD = S::HD, GQA = S::GQA, DPL = S::DPL, NS = MEGA_NSPLIT;
    const int lane = threadIdx.x & 31, g = a / NS, s = a % NS;
    int k0, k1;
    mega_piece_keys(m, s, k0, k1);
    const MegaLayer<T>& ly = m.layers[l];
    const T* kc = ly.kc + g * HD;
    const T* vc = ly.vc + g * HD;
    for (int i = lane * 8; i < GQA * HD; i += 256) {
        float v[8];
        mega_ldcg8(m.q + (i64)l * S::KO + g * GQA * HD + i, v);
#pragma unroll
        for (int e = 0; e < 8; ++e) qs[i + e] = v[e];
    }
    __syncwarp();
    float mx[GQA], sum[GQA], acc[GQA][DPL];
#pragma unroll
    for (int j = 0; j < GQA; ++j) {
        mx[j] = -OPTC_INF, sum[j] = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[j][e] = 0.f;
    }
    for (int kb = k0; kb < k1; kb += 32) {
        const int key = kb + lane;
        const bool valid = key < k1;
        const i64 slot = valid ? mega_slot_of(m.table, m.block_size, key) : 0;
        float sc[GQA];
#pragma unroll
        for (int j = 0; j < GQA; ++j) sc[j] = 0.f;
        if (valid) {
            const T* kr = kc + slot * S::HKV * HD;
#pragma unroll
            for (int c = 0; c < HD / 8; ++c) {
                float kv[8];
                mega_ldcg8(kr + c * 8, kv);
#pragma unroll
                for (int j = 0; j < GQA; ++j)
#pragma unroll
                    for (int e = 0; e < 8; ++e) sc[j] += qs[j * HD + c * 8 + e] * kv[e];
            }
        }
        float p[GQA];
#pragma unroll
        for (int j = 0; j < GQA; ++j) {
            const float sj = valid ? sc[j] * m.scale : -OPTC_INF;
            const float mn = fmaxf(mx[j], warp_max(sj));
            const float corr = expf(mx[j] - mn);
            p[j] = valid ? expf(sj - mn) : 0.f;
            sum[j] = sum[j] * corr + warp_sum(p[j]);
#pragma unroll
            for (int e = 0; e < DPL; ++e) acc[j][e] *= corr;
            mx[j] = mn;
        }
        // Values eight keys at a time, their loads all in flight before
        // any is used (keys past the chunk's end weigh 0 and load 0).
        const int n = min(32, k1 - kb);
        for (int t0 = 0; t0 < n; t0 += 8) {
            // A lane's DPL dims of a row, packed as loaded (half the
            // registers of floats).
            MegaPacked<T, DPL> vr[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                const int t = t0 + u;
                const i64 st_ = __shfl_sync(0xffffffffu, slot, t);
                vr[u].load(vc + st_ * S::HKV * HD, lane, HD, t < n);
            }
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                float vf[DPL];
                vr[u].unpack(vf);
#pragma unroll
                for (int j = 0; j < GQA; ++j) {
                    const float pj = __shfl_sync(0xffffffffu, p[j], t0 + u);
#pragma unroll
                    for (int e = 0; e < DPL; ++e) acc[j][e] += pj * vf[e];
                }
            }
        }
    }
    constexpr int ROW = HD + 2;
    float* mine = m.part + ((i64)(l * S::HKV + g) * NS + s) * GQA * ROW;
#pragma unroll
    for (int j = 0; j < GQA; ++j) {
        if (lane == 0) mine[j * ROW] = mx[j], mine[j * ROW + 1] = sum[j];
#pragma unroll
        for (int e = 0; e < DPL; ++e)
            if (lane * DPL + e < HD) mine[j * ROW + 2 + lane * DPL + e] = acc[j][e];
    }
    __threadfence();
    __syncwarp();
    unsigned old = 0;
    if (lane == 0) old = atomicAdd(&m.attcnt[l * S::HKV + g], 1u);
    old = __shfl_sync(0xffffffffu, old, 0);
    if (old != NS - 1) return;
    // The last piece: combine all of them in order.
    __threadfence();
    const float* all = m.part + (i64)(l * S::HKV + g) * NS * GQA * ROW;
#pragma unroll
    for (int j = 0; j < GQA; ++j) {
        const float ms = lane < NS ? __ldcg(&all[(lane * GQA + j) * ROW]) : -OPTC_INF;
        const float ls = lane < NS ? __ldcg(&all[(lane * GQA + j) * ROW + 1]) : 0.f;
        const float M = warp_max(ms);
        const float wgt = ms == -OPTC_INF ? 0.f : expf(ms - M);
        const float tot = warp_sum(wgt * ls);
        float o[DPL];
#pragma unroll
        for (int e = 0; e < DPL; ++e) o[e] = 0.f;
        // Every piece wrote its part (an empty one zeros, weighing 0):
        // all loads at once.
#pragma unroll
        for (int t = 0; t < NS; ++t) {
            const float wt = __shfl_sync(0xffffffffu, wgt, t);
            const float* pa = &all[(t * GQA + j) * ROW + 2 + lane * DPL];
#pragma unroll
            for (int e = 0; e < DPL; ++e)
                if (lane * DPL + e < HD) {
                    const float v = __ldcg(pa + e);
                    o[e] += wt == 0.f ? 0.f : wt * v;
                }
        }
        T* out = m.att + (i64)l * S::KO + (g * GQA + j) * HD;
#pragma unroll
        for (int e = 0; e < DPL; ++e)
            if (lane * DPL + e < HD) st(&out[lane * DPL + e], o[e] / tot);
    }
    if (lane == 0) m.attcnt[l * S::HKV + g] = 0;
}

// The attention pieces spread over the blocks first: piece a on block
// a % G, warp (a / G) % WARPS (the kernel walks a warp's pieces as
// a = block + G * (warp + WARPS * i)).
__host__ __device__ inline int mega_attention_owner(int a, int G, int warps) { return (a % G) * warps + (a / G) % warps; }

// Shared memory the kernel asks for: x, then each warp's ring.
template <class S, int WARPS, int STAGES> __host__ __device__ constexpr int mega_smem_bytes() {
    constexpr int q = WARPS * S::GQA * S::HD * 4;
    constexpr int x = S::XS * (int)sizeof(typename S::T);
    return (x > q ? x : q) + WARPS * STAGES * S::CH * (int)sizeof(typename S::T);
}

// PF > 0: a lane also asks L2 for the tile PF places past the ring, so
// refills after a stall hit L2. TMA: each slot fills with one bulk copy.
template <class S, int WARPS, int STAGES, int PF, bool TMA>
__device__ void mega_decode_impl(const MegaArgs<typename S::T>& m) {
    using T = typename S::T;
    constexpr int CH = S::CH;
    extern __shared__ __align__(16) unsigned char mega_smem[];
    __shared__ float scratch[32];
    __shared__ unsigned long long slot_bar[TMA ? WARPS * STAGES : 1];
    static_assert(sizeof(MegaToken<S>) + sizeof(slot_bar) + sizeof(scratch) <= 3072,
                  "static shared memory within the host's 3 KiB reserve (Mega::load)");
    constexpr int XBYTES = mega_smem_bytes<S, WARPS, STAGES>() - WARPS * STAGES * CH * (int)sizeof(T);
    T* xs = reinterpret_cast<T*>(mega_smem);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int G = gridDim.x, W = G * WARPS, gw = blockIdx.x * WARPS + warp;
    T* ring = reinterpret_cast<T*>(mega_smem + XBYTES) + warp * STAGES * CH;
    const bool attention = !(m.flags & 1), barriers_on = !(m.flags & 2);
    const MegaDims dims{m.nlayers, m.vocab};
    unsigned long long* bars = slot_bar + (TMA ? warp * STAGES : 0);
    if constexpr (TMA) {
        if (lane == 0)
            for (int i = 0; i < STAGES; ++i) mbar_init(&bars[i]);
        mbar_init_fence();
        __syncwarp();
    }
    MegaWalk<S> ld_walk, pf_walk, use;
    ld_walk.start(gw, W, dims);
    pf_walk.start(gw, W, dims);
    use.start(gw, W, dims);
    // Starts the copies of the load walk's tile into its slot (with
    // cp.async a group is committed either way, so wait_group counts
    // tiles; with TMA the slot's barrier counts its fills), and the L2
    // prefetch of the tile PF further on.
    int issued = 0;
    auto load = [&]() {
        if (!ld_walk.done()) {
            const T* src = mega_tile_src<S>(m, ld_walk, dims.kind(ld_walk.p));
            T* dst = ring + (issued % STAGES) * CH;
            if constexpr (TMA) {
                if (lane == 0) bulk_copy(dst, src, CH * sizeof(T), &bars[issued % STAGES]);
            } else {
#pragma unroll
                for (int i = 0; i < S::PIECES; ++i) {
                    const int e = (lane + 32 * i) * 8;
                    if (CH % 256 == 0 || e < CH) cp_async16(dst + e, src + e);
                }
            }
            ld_walk.next(gw, W);
        }
        if constexpr (!TMA) cp_async_commit();
        ++issued;
        if constexpr (PF > 0) {
            if (pf_walk.done()) return;
            if (lane == 0) prefetch_l2(mega_tile_src<S>(m, pf_walk, dims.kind(pf_walk.p)), CH * sizeof(T));
            pf_walk.next(gw, W);
        }
    };
    if constexpr (PF > 0)
        for (int t = 0; t < PF && !pf_walk.done(); ++t) pf_walk.next(gw, W);
    // Weights first: they depend on no kernel before this one.
#pragma unroll 1
    for (int t = 0; t < STAGES; ++t) load();
    pdl_trigger();
    pdl_wait();
    __shared__ MegaToken<S> tok;
    for (int i = threadIdx.x; i < S::HD; i += blockDim.x) tok.cs[i] = ld(&m.cs[i]), tok.sn[i] = ld(&m.sn[i]);
    if (threadIdx.x == 0) tok.slot = *m.slot;
    __syncthreads();

    int used = 0;  // tiles consumed
    unsigned barriers = 0;
    const int L = m.nlayers;
    for (int p = 0; p < dims.phases(); ++p) {
        const int kind = dims.kind(p), l = p / 5;
        if (kind == MK_ATT && !attention) continue;
        // The layer's attention pieces this warp owns: their cached keys
        // and values on their way to L2 a phase early.
        if (kind == MK_QKV && attention)
            for (int a = blockIdx.x + G * warp; a < S::HKV * MEGA_NSPLIT; a += G * WARPS)
                mega_attention_prefetch<S>(m, l, a);
        if (p > 0 && barriers_on) mega_grid_barrier(&m.bar[0], ++barriers * G);
        // The phase's x.
        if (kind == MK_QKV)
            mega_fill_norm<S, WARPS * 32>(xs, l == 0 ? m.h0 : m.hout + (i64)(l - 1) * S::D, m.layers[l].nw1,
                                          m.layers[l].eps1, scratch);
        else if (kind == MK_GU)
            mega_fill_norm<S, WARPS * 32>(xs, m.hmid + (i64)l * S::D, m.layers[l].nw2, m.layers[l].eps2, scratch);
        else if (kind == MK_HEAD)
            mega_fill_norm<S, WARPS * 32>(xs, m.hout + (i64)(L - 1) * S::D, m.fnorm, m.feps, scratch);
        else if (kind == MK_O)
            mega_fill_copy(xs, m.att + (i64)l * S::KO, S::KO);
        else if (kind == MK_DOWN)
            mega_fill_copy(xs, m.glu + (i64)l * S::F, S::F);
        __syncthreads();
        if (kind == MK_ATT) {
            float* qs = reinterpret_cast<float*>(mega_smem) + warp * S::GQA * S::HD;
            for (int a = blockIdx.x + G * warp; a < S::HKV * MEGA_NSPLIT; a += G * WARPS)
                mega_attention_piece<S>(m, l, a, qs);
            // x is rewritten by the next phase's fill.
            __syncthreads();
            continue;
        }
        // This warp's units of the phase, tile by tile, in the walk's order.
        while (!use.done() && use.p == p) {
            const MegaLinear lin = use.lin();
            const int u = use.u;
            // The residual an o or down unit adds: final barriers ago,
            // loaded now so it is in a register by the store.
            float res = 0.f;
            if (lane == 0 && kind == MK_O) res = mega_ldcg(&(l == 0 ? m.h0 : m.hout + (i64)(l - 1) * S::D)[u]);
            if (lane == 0 && kind == MK_DOWN) res = mega_ldcg(&m.hmid[(i64)l * S::D + u]);
            float acc[2] = {0.f, 0.f};
            for (int j = 0; j < lin.rows * lin.nch; ++j) {
                if constexpr (TMA)
                    mbar_wait(&bars[used % STAGES], (used / STAGES) & 1);
                else
                    cp_async_wait<STAGES - 1>();
                __syncwarp();
                const T* tile = ring + (used % STAGES) * CH;
                const int c = j / lin.rows, r = j % lin.rows, k0 = c * CH;
                float part = 0.f;
#pragma unroll
                for (int i = 0; i < S::PIECES; ++i) {
                    const int e = (lane + 32 * i) * 8;
                    if (CH % 256 == 0 || e < CH) {
                        float wv[8], xv[8];
                        ld8(tile + e, wv);
                        ld8(xs + k0 + e, xv);
#pragma unroll
                        for (int q = 0; q < 8; ++q) part += wv[q] * xv[q];
                    }
                }
                if (r == 0) acc[0] += part;
                else acc[1] += part;
                ++used;
                // Every lane is done with the slot before it refills.
                __syncwarp();
                load();
                use.next(gw, W);
            }
            const float a0 = warp_sum(acc[0]), a1 = warp_sum(acc[1]);
            if (lane == 0) mega_store_unit<S>(m, tok, kind, l, u, a0, a1, res);
        }
        // x is rewritten by the next phase's fill (after its barrier; this
        // keeps the order without barriers too).
        __syncthreads();
    }
    if constexpr (!TMA) cp_async_wait<0>();
    // The last block out resets the counters for the next step.
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        if (atomicAdd(&m.bar[1], 1u) == (unsigned)G - 1) {
            m.bar[0] = 0;
            m.bar[1] = 0;
            __threadfence();
        }
    }
}

// mega_decode_{N}_d{D}_f{F}_h{HQ}x{HKV}x{HD}_c{CH}_w{WARPS}_s{STAGES}_p{PF}_t{TMA}
// (`MegaShape::function` and `MegaShape::instance` in kernels/src/cuda.rs
// spell it).
#define OPTC_MEGA_DECODE(T, N, D, F, HQ, HKV, HD, CH, WARPS, STAGES, PF, TMA)                                 \
    extern "C" __global__ void __launch_bounds__(WARPS * 32, 1)                                                 \
        mega_decode_##N##_d##D##_f##F##_h##HQ##x##HKV##x##HD##_c##CH##_w##WARPS##_s##STAGES##_p##PF##_t##TMA(  \
            const MegaArgs<T> m) {                                                                              \
        mega_decode_impl<MegaShape<T, D, F, HQ, HKV, HD, CH>, WARPS, STAGES, PF, (TMA != 0)>(m);               \
    }
