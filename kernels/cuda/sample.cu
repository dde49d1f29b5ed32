// Greedy sampling on the GPU: the index of each row's largest logit and
// its log probability, so a greedy step copies back 8 bytes per sequence
// instead of a row of logits. Ties go to the lowest index, NaN never wins
// (as the host sampler).
//
// A vocabulary row is far too long for one block (128k logits took 0.28 ms
// that way): `argmax_part` gives each block one chunk of a row and leaves
// (max, its index, sum of exp(x - max)) per chunk; the last block of a row
// to finish (counted in `counters`, left at 0) merges the row's chunks with
// one warp, in chunk order, so the result does not depend on timing.
// Without counters `argmax_combine` does that merge as a second kernel.

// argmax_merge, argmax_warp and argmax_combine_row are in common.cuh (the
// LM head's ring GEMV merges its argmax with them too).

// Grid (rows, chunks); part[(row * chunks + chunk) * 3 + {0, 1, 2}] = max,
// index (as int bits), sum of exp(x - max). With `counters`, the row's
// last block also merges them into `out` and `logprob`.
template <typename T>
__device__ void argmax_part_impl(const T* x, float* part, int cols, int chunk, int* counters, int* out,
                                 float* logprob) {
    const i64 r = blockIdx.x;
    const int b = blockIdx.y * chunk, e = min(cols, b + chunk);
    x += r * cols;
    float m = -OPTC_INF, s = 0.f;
    int bi = 0x7fffffff;
#pragma unroll 4
    for (int i = b + threadIdx.x; i < e; i += blockDim.x) {
        argmax_push(m, bi, s, ld(&x[i]), i);
    }
    argmax_block(m, bi, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) {
        float* p = part + (r * gridDim.y + blockIdx.y) * 3;
        p[0] = m;
        p[1] = __int_as_float(bi);
        p[2] = s;
    }
    if (!counters) return;
    __shared__ int last;
    if (threadIdx.x == 0) {
        // The part (written by this thread) is visible before the count.
        __threadfence();
        last = atomicAdd(&counters[r], 1) == (int)gridDim.y - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (warp == 0) {
        argmax_combine_row(part, r, out, logprob, gridDim.y);
        if (lane == 0) counters[r] = 0;
    }
}

// One warp per row.
extern "C" __global__ void argmax_combine(const float* part, int* out, float* lp, int chunks) {
    pdl_start();
    argmax_combine_row(part, blockIdx.x, out, lp, chunks);
}

// Asynchronous scheduling: a decode step planned before the step ahead of
// it picked its tokens takes them from that step's pick buffer (tokens
// first) on the GPU, so it can be queued before the step ahead ends. What
// to copy travels in the step's input arena, so a CUDA graph that starts
// with this kernel reads each replay's own: `head` is the address of the
// pick buffer (8 bytes; not followed when the count is 0), the count, whether
// the ids are 64-bit, then (ids element, pick row) pairs.
extern "C" __global__ void ids_from_picks(void* ids, const int* head) {
    pdl_start();
    const int count = head[2];
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= count) return;
    const int* picks = *reinterpret_cast<const int* const*>(head);
    const int index = head[4 + 2 * j], tok = picks[head[5 + 2 * j]];
    if (head[3])
        reinterpret_cast<long long*>(ids)[index] = tok;
    else
        reinterpret_cast<int*>(ids)[index] = tok;
}

// ---- The greedy pick of a row by one thread block cluster (sm_90) ----
//
// argmax_part's blocks meet through global memory: a part stored, a
// fence, a ticket, then the last block reading every part, several L2
// round trips on the critical path of every decode step, where nothing
// else runs. Here a row's gridDim.y blocks form one cluster: each thread
// loads its few 16-byte groups of the row at once, the blocks merge in
// shared memory, and block 0 reads the others' results through
// distributed shared memory after one cluster barrier. The merge order is
// fixed by the grid, so the result does not depend on timing. NaN never
// wins and takes no mass (as the host sampler); a row of -inf and NaN
// gives token 0 at -inf.

// The elements of a thread's groups, in index order (`v[a]` holds the
// row's elements at[a] .. at[a] + 7 where at[a] >= 0), merged into the
// running (m, i, s): their maximum first, then one exp each.
template <int A>
__device__ __forceinline__ void argmax_push_groups(float& m, int& i, float& s, const float (&v)[A][8],
                                                   const int (&at)[A]) {
    float gm = -OPTC_INF;
#pragma unroll
    for (int a = 0; a < A; ++a)
#pragma unroll
        for (int q = 0; q < 8; ++q)
            if (at[a] >= 0) gm = fmaxf(gm, v[a][q]);  // fmaxf skips NaN
    if (gm == -OPTC_INF) return;  // only -inf and NaN: nothing to take
    int gi = 0x7fffffff;
    float gs = 0.f;
#pragma unroll
    for (int a = A - 1; a >= 0; --a)
#pragma unroll
        for (int q = 7; q >= 0; --q) {
            if (at[a] < 0) continue;
            const float x = v[a][q];
            if (x == gm) gi = at[a] + q;
            gs += x == gm ? 1.f : (x == x ? expf(x - gm) : 0.f);
        }
    argmax_merge(m, i, s, gm, gi, gs);
}

// This block's rank in its cluster and the cluster's blocks, and a
// barrier over the cluster's threads (release/acquire: shared memory
// written before it is visible to the cluster's blocks after it).
__device__ __forceinline__ void cluster_place(unsigned& rank, unsigned& blocks) {
    rank = 0;
    blocks = 1;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("mov.u32 %0, %%cluster_ctarank;\nmov.u32 %1, %%cluster_nctarank;\n" : "=r"(rank), "=r"(blocks));
#endif
}
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// The word at `local`'s place in the shared memory of the cluster's block
// `rank`.
__device__ __forceinline__ unsigned ld_cluster_u32(const void* local, unsigned rank) {
    unsigned v = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    unsigned a = (unsigned)__cvta_generic_to_shared(local), remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(a), "r"(rank));
    asm volatile("ld.shared::cluster.u32 %0, [%1];\n" : "=r"(v) : "r"(remote) : "memory");
#endif
    return v;
}

// Groups of 8 a thread loads before it uses any (a 128,256-logit row
// over 16 blocks of 256 threads is four a thread).
constexpr int ARGMAX_AHEAD = 4;

// Grid (rows, blocks a row), launched with clusters of (1, gridDim.y, 1)
// (up to 16 blocks; one needs no cluster).
template <typename T> __device__ void argmax_cluster_impl(const T* x, int cols, int* out, float* logprob) {
    const i64 r = blockIdx.x;
    const T* row = x + r * (i64)cols;
    const int nt = gridDim.y * blockDim.x;
    unsigned rank = 0, blocks = 1;
    if (gridDim.y > 1) cluster_place(rank, blocks);
    // The row's blocks must be one cluster (the host launches them so).
    if (blocks != gridDim.y) __trap();
    const int t = rank * blockDim.x + threadIdx.x;
    float m = -OPTC_INF, s = 0.f;
    int bi = 0x7fffffff;
    // The elements before the row's first 16-byte boundary one at a time
    // (rows of a width that is not a multiple of 16 bytes start anywhere),
    // then whole 8-element groups, then the tail; the groups and the tail
    // go in index order.
    const int lead = (int)min((i64)cols, (i64)(((16 - (reinterpret_cast<unsigned long long>(row) & 15)) & 15) /
                                               sizeof(T)));
    // Loaded now, merged last (argmax_merge settles ties by index in any
    // order), so it does not hold up the groups' loads.
    const float lead_v = t < lead ? ld(&row[t]) : -OPTC_INF;
    const int groups = (cols - lead) / 8;
    for (int g = t; g < groups; g += ARGMAX_AHEAD * nt) {
        float v[ARGMAX_AHEAD][8];
        int at[ARGMAX_AHEAD];
#pragma unroll
        for (int a = 0; a < ARGMAX_AHEAD; ++a) {
            const int ga = g + a * nt;
            at[a] = ga < groups ? lead + ga * 8 : -1;
            if (ga < groups) ld8(row + lead + (i64)ga * 8, v[a]);
        }
        argmax_push_groups<ARGMAX_AHEAD>(m, bi, s, v, at);
    }
    for (i64 i = lead + (i64)groups * 8 + t; i < cols; i += nt) argmax_push(m, bi, s, ld(&row[i]), (int)i);
    if (lead_v > -OPTC_INF) argmax_merge(m, bi, s, lead_v, t, 1.f);  // NaN and -inf take nothing
    argmax_block(m, bi, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    // Block 0 of the row writes the pick from (m, bi, s) on its warp 0.
    auto write = [&]() {
        if (lane == 0) {
            out[r] = bi == 0x7fffffff ? 0 : bi;
            // log p(best) = -log(sum exp(x - max)).
            logprob[r] = m == -OPTC_INF ? -OPTC_INF : -logf(s);
        }
    };
    if (gridDim.y == 1) {
        if (warp == 0) write();
        return;
    }
    __shared__ unsigned mine[3];
    if (threadIdx.x == 0) {
        mine[0] = __float_as_uint(m);
        mine[1] = (unsigned)bi;
        mine[2] = __float_as_uint(s);
    }
    cluster_barrier();
    if (rank == 0 && warp == 0) {
        const bool has = lane < (int)gridDim.y;
        m = has ? __uint_as_float(ld_cluster_u32(&mine[0], lane)) : -OPTC_INF;
        bi = has ? (int)ld_cluster_u32(&mine[1], lane) : 0x7fffffff;
        s = has ? __uint_as_float(ld_cluster_u32(&mine[2], lane)) : 0.f;
        argmax_warp(m, bi, s);
        write();
    }
    // Every block's shared memory stays until block 0 has read it.
    cluster_barrier();
}

#define OPTC_ARGMAX(T, N)                                                                            \
    extern "C" __global__ void argmax_part_##N(const T* x, float* part, int cols, int chunk, int* counters, \
                                               int* out, float* lp) {                                      \
        pdl_start();                                                                                 \
        argmax_part_impl<T>(x, part, cols, chunk, counters, out, lp);                                \
    }                                                                                                \
    /* At most 64 registers a thread: a 256-thread block fits beside the LM head's ring blocks. */     \
    extern "C" __global__ void __launch_bounds__(512, 2) argmax_cluster_##N(const T* x, int cols, int* out, \
                                                                             float* lp) {             \
        pdl_start();                                                                                 \
        argmax_cluster_impl<T>(x, cols, out, lp);                                                    \
    }

// OPTC_ARGMAX, OPTC_SAMPLE_PARTS and OPTC_SAMPLE_PICK are instantiated by the host for the float
// types of the outputs tokens are picked from (`pick_instances`).

// ---- Sampling: temperature, top-k, top-p and min-p on the GPU ----
//
// Three kernels (one for rows with a small top-k: `sample_by_candidates`
// below). `sample_stats` and `sample_hist` split each row into
// SAMPLE_CHUNK pieces, a block each: the first finds each piece's maximum
// and how many of its elements can be sampled; the second, knowing the
// row's maximum, its softmax denominator, total mass and coarse histogram
// (below). Each block writes its part, and `sample` adds them in piece
// order. Every sum that decides a token is an integer, so no draw depends
// on the order of atomics. `sample_hist` also lists each piece's elements
// near the row's maximum (SAMPLE_NEAR_BINS), from which the fast path
// gathers a peaked row's candidates. `sample`, one block of 1024 threads per row, adds
// the parts in piece order and does the rest. The host sampler keeps a prefix of
// the row in its order (decreasing probability, ties by lower id), so each
// filter is a cut in that order. The fast path (`SampleFast`) gathers the
// few tokens a coarse histogram says the cut can reach, sorts them in that
// order and cuts and draws as the host does. With no top-k or min-p cut
// (temperature alone, or top-p over a flat row) the histogram's exact
// integer mass per bin says which bin the top-p cut and the draw fall in,
// and only those bins are gathered and sorted (the bin path). Otherwise a cut (key, id)
// keeps the elements whose order key is above `key`, and those equal to
// it whose id is at most `id`: top-k and top-p cuts come from radix
// selects over 32-bit order-preserving keys of the scaled logits (weights:
// 1 to count, fixed-point probability mass for top-p), ties settled by a
// second select over ids; min-p is a key threshold; the draw is a select
// over the kept masses, in the host's walk order too. Integer masses make
// every sum independent of the order of atomics, so a seeded draw repeats
// exactly.

typedef unsigned long long u64;

// What the host lays out per row (24 bytes, 8-byte aligned).
struct SampleRow {
    float temperature;  // 0: greedy (then top_k acts as 1)
    int top_k;          // 0: no top-k
    float top_p;        // 1: no top-p
    float min_p;        // 0: no min-p
    double u;           // uniform in [0, 1)
};

// OPTC_SAMPLE_TRACE (defined only by kernels/bench/sample_bench.cu's
// phase build, never by optc): thread 0 of the block a mark names logs
// %globaltimer into optc_sample_marks[k] as a phase ends, so the bench can
// say where each sampling kernel's time goes. Empty in optc's build.
#ifdef OPTC_SAMPLE_TRACE
__device__ unsigned long long optc_sample_marks[64];
#define SAMPLE_MARK(k, when)                                                 \
    do {                                                                     \
        if ((when) && threadIdx.x == 0) {                                    \
            unsigned long long t_;                                           \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));           \
            optc_sample_marks[k] = t_;                                       \
        }                                                                    \
    } while (0)
#else
#define SAMPLE_MARK(k, when) \
    do {                     \
        (void)(when);        \
    } while (0)
#endif

// exp(z - max) in units of 2^-40: a row's total stays below 2^58.
#define OPTC_MASS_ONE 1099511627776.0f

__device__ __forceinline__ unsigned order_key(float z) {
    unsigned b = __float_as_uint(z);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// The logit over the temperature, as the host computes it (-0 as +0).
template <typename T> __device__ __forceinline__ float scaled_logit(const T* x, int i, float t) {
    float v = ld(&x[i]);
    return (t > 0.f ? __fdiv_rn(v, t) : v) + 0.f;
}

// Calls f with every element's scaled logit. One block walks a row
// that lives in L2 (the LM head just wrote it), so what bounds a pass is
// the loads in flight: each thread takes runs of 16 bytes (8 bf16), four
// runs loaded before any is used; scalar loads for the tail and for rows
// that are not 16-byte aligned. The elements a thread visits differ from
// a scalar walk's, so only order-free reductions may depend on them.
// Every lane of a warp calls f(i, z, live) the same number of times
// (live false past the row's end, z then 0), so f may use warp
// collectives.
template <typename T, class F>
__device__ __forceinline__ void for_each_scaled_uniform(const T* x, int n, float t, F&& f) {
    constexpr int V = 16 / sizeof(T), U = 4;
    int done = 0;
    if ((reinterpret_cast<unsigned long long>(x) & 15ull) == 0) {
        const int nv = n / V;
        const uint4* xv = reinterpret_cast<const uint4*>(x);
        for (int b = 0; b < nv; b += U * blockDim.x) {
            uint4 raw[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = b + u * blockDim.x + threadIdx.x;
                raw[u] = j < nv ? xv[j] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = b + u * blockDim.x + threadIdx.x;
                const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
                for (int q = 0; q < V; ++q) {
                    const float v = ld(&e[q]);
                    f(j * V + q, (t > 0.f ? __fdiv_rn(v, t) : v) + 0.f, j < nv);
                }
            }
        }
        done = nv * V;
    }
    for (int b = done; b < n; b += blockDim.x) {
        const int i = b + threadIdx.x;
        f(i, i < n ? scaled_logit(x, i, t) : 0.f, i < n);
    }
}

// f(i, z) for the live elements only, for walks that need no collectives.
template <typename T, class F> __device__ __forceinline__ void for_each_scaled(const T* x, int n, float t, F&& f) {
    for_each_scaled_uniform(x, n, t, [&](int i, float z, bool live) {
        if (live) f(i, z);
    });
}

// NaN and -inf are never sampled: key 0, below every other key.
__device__ __forceinline__ unsigned sample_key(float z) {
    return (z != z || z == -OPTC_INF) ? 0u : order_key(z);
}

// The order key of the smallest f32 z min-p keeps: z - m >= ln(min_p),
// decided in f64 as the host sampler does (an f32 sum could round below).
__device__ unsigned min_p_floor_key(float m, float min_p) {
    const double lim = log((double)min_p);
    float f = (float)((double)m + lim);
    while ((double)f - (double)m < lim) f = nextafterf(f, OPTC_INF);
    for (;;) {
        const float g = nextafterf(f, -OPTC_INF);
        if ((double)g - (double)m < lim) break;
        f = g;
    }
    return order_key(f);
}

__device__ __forceinline__ u64 sample_mass(float z, float m) {
    float e = expf(z - m);
    return e > 0.f ? (u64)(e * OPTC_MASS_ONE) : 0ull;
}

// Exclusive prefix sum over the block in thread order; `*total` gets the
// sum. `scratch` holds 33 values.
__device__ __forceinline__ u64 block_exclusive_u64(u64 v, u64* scratch, u64* total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    u64 inc = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u64 y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
    }
    __syncthreads();
    if (lane == 31) scratch[warp] = inc;
    __syncthreads();
    if (warp == 0) {
        u64 w = lane < nw ? scratch[lane] : 0ull, wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            u64 y = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += y;
        }
        scratch[lane] = wi - w;
        if (lane == 31) scratch[32] = wi;
    }
    __syncthreads();
    *total = scratch[32];
    return scratch[warp] + inc - v;
}

// A select's histogram in SELECT_COPIES copies, a warp adding to copy
// warp % SELECT_COPIES: a shared 64-bit add is a compare-and-swap loop on
// sm_90, and on a flat row the 32 warps of `sample` all add to one digit,
// so one copy serialised them (11 µs a pass over 6,400 listed pairs).
#define SELECT_COPIES 4
struct SelectScratch {
    u64 hist[SELECT_COPIES * 256];
    u64 above, at;
    int digit;
};

// Adds w to hist[d] (in the warp's copy, of SELECT_COPIES) for every lane
// whose d is below 256; the lanes of a warp that share a digit add once,
// together. A flat row puts most of a pass's elements under one digit,
// and 1024 threads adding to one shared word one by one took
// milliseconds a step. Weights stay below 2^51, so 32 of them summed in
// two 32-bit halves (24 low bits, the rest) fit. Every lane of the warp
// must call it.
__device__ __forceinline__ void hist_add(u64* hist, unsigned d, u64 w) {
    hist += ((threadIdx.x >> 5) % SELECT_COPIES) * 256;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#ifdef OPTC_HIST_ADD_UNIFORM
    // Not yet measured (sample_bench with BENCH_NVCC_FLAGS=-DOPTC_HIST_ADD_UNIFORM):
    // a warp whose lanes share one digit (a flat row's first passes) sums
    // without __match_any_sync, which measured slow on sm_90.
    if (__all_sync(0xffffffffu, d == __shfl_sync(0xffffffffu, d, 0))) {
        const unsigned lo = __reduce_add_sync(0xffffffffu, (unsigned)(w & 0xffffffull));
        const unsigned hi = __reduce_add_sync(0xffffffffu, (unsigned)(w >> 24));
        const u64 sum = ((u64)hi << 24) + lo;
        if (d < 256u && (threadIdx.x & 31) == 0 && sum) atomicAdd(&hist[d], sum);
        return;
    }
#endif
    const unsigned peers = __match_any_sync(0xffffffffu, d);
    const unsigned lo = __reduce_add_sync(peers, (unsigned)(w & 0xffffffull));
    const unsigned hi = __reduce_add_sync(peers, (unsigned)(w >> 24));
    if (d < 256u && (threadIdx.x & 31) == __ffs(peers) - 1) {
        const u64 sum = ((u64)hi << 24) + lo;
        if (sum) atomicAdd(&hist[d], sum);
    }
#else
    if (d < 256u && w) atomicAdd(&hist[d], w);
#endif
}


// Of the elements `walk` visits (walk(g) calls g(i, z, live) for each,
// warp-uniformly: a whole row, or a bin's listed elements) those
// `kw(i, z, key)` weighs (z: the scaled logit; weight 0: left out; every
// weight below 2^51), the largest key t such that those with key >= t
// weigh at least `target` (at most their total); `*above` gets the weight
// of those with key > t, `*at` of those with key t. Keys use their low
// `bits` bits (at least 1); eight bits a pass, from the top.
// Not inlined (nor are tie_select, list_bin and sample_gather_sorted):
// sample_impl calls it from seven places, and inlined into that one
// 1,024-thread kernel (64 registers) ptxas took 20 s, the bound of a cold
// compile; as calls it takes 5 s, and the kernel spills less. They cost
// 7-8 % of the slow path on flat rows (about 1 us on peaked ones); taking
// the walk and the weights by value (the callers' lambdas capture by
// value) won back 2-6 % (sample_bf16's stack frame 256 -> 128 bytes;
// docs/perf.md, twenty-first session).
template <class W, class KW>
__device__ __noinline__ unsigned radix_select(const W walk, const KW kw, int bits, u64 target, u64* above_out,
                                              u64* at_out, SelectScratch& s) {
    unsigned prefix = 0, mask = 0;
    u64 above = 0;
    for (int shift = (bits + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < SELECT_COPIES * 256; d += blockDim.x) s.hist[d] = 0;
        __syncthreads();
        walk([&](int i, float z, bool live) {
            unsigned k = 0;
            const u64 w = live ? kw(i, z, k) : 0ull;
            const bool in = w && (k & mask) == prefix;
            hist_add(s.hist, in ? (k >> shift) & 255u : 256u, in ? w : 0ull);
        });
        __syncthreads();
        // The copies added into the first.
        for (int d = threadIdx.x; d < 256; d += blockDim.x) {
            u64 v = s.hist[d];
#pragma unroll
            for (int c = 1; c < SELECT_COPIES; ++c) v += s.hist[c * 256 + d];
            s.hist[d] = v;
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l owns digits 8l..8l+7; weights above each lane's digits
            // by a suffix sum over the lanes, then one lane walks its eight.
            const int lane = threadIdx.x;
            u64 own = 0;
            for (int e = 0; e < 8; ++e) own += s.hist[lane * 8 + e];
            u64 suf = own;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                u64 v = __shfl_down_sync(0xffffffffu, suf, o);
                if (lane + o < 32) suf += v;
            }
            const u64 hi = above + suf - own;
            const unsigned mine = __ballot_sync(0xffffffffu, hi < target && target <= hi + own);
            if (lane == (mine ? __ffs(mine) - 1 : 0)) {
                u64 acc = hi;
                int d = lane * 8 + 7;
                for (; d > lane * 8 && acc + s.hist[d] < target; --d) acc += s.hist[d];
                s.digit = d;
                s.above = acc;
                s.at = s.hist[d];
            }
        }
        __syncthreads();
        prefix |= (unsigned)s.digit << shift;
        mask |= 255u << shift;
        above = s.above;
        __syncthreads();
    }
    *above_out = above;
    *at_out = s.at;
    return prefix;
}

// The fast path: a coarse histogram of each element's distance below the
// row's maximum (SAMPLE_BINS bins of 1/SAMPLE_BIN_SCALE) bounds the prefix
// the filters can keep; when at most SAMPLE_CAP elements lie in it, they
// are gathered, sorted in the host sampler's order (bitonic, in shared
// memory), and cut and drawn exactly as the host does, walk order included.
#define SAMPLE_BINS 512
#define SAMPLE_BIN_SCALE 16.f
#define SAMPLE_CAP 2048

__device__ __forceinline__ int sample_bin(float z, float m) {
    return min(SAMPLE_BINS - 1, (int)((m - z) * SAMPLE_BIN_SCALE));
}

// One warp: the first bin whose running total from bin 0 reaches `target`
// (SAMPLE_BINS - 1 when none does); lanes own 16 bins each (integer
// totals: counts or masses).
template <typename V> __device__ int first_bin_reaching(const V* h, V target) {
    const int lane = threadIdx.x & 31;
    V own = 0;
    for (int e = 0; e < 16; ++e) own += h[lane * 16 + e];
    V inc = own;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        V y = __shfl_up_sync(0xffffffffu, inc, o);
        if (lane >= o) inc += y;
    }
    const unsigned hit = __ballot_sync(0xffffffffu, inc >= target);
    if (!hit) return SAMPLE_BINS - 1;
    const int L = __ffs(hit) - 1;
    int b = L * 16 + 15;
    if (lane == L) {
        V acc = inc - own;
        for (int e = 0; e < 16; ++e) {
            acc += h[L * 16 + e];
            if (acc >= target) {
                b = L * 16 + e;
                break;
            }
        }
    }
    return __shfl_sync(0xffffffffu, b, L);
}

struct SampleFast {
    unsigned key[SAMPLE_CAP];
    int id[SAMPLE_CAP];
    u64 cum[SAMPLE_CAP];
    unsigned count[SAMPLE_BINS];
    u64 bmass[SAMPLE_BINS];  // integer mass per bin (exact)
    int last_bin, n, keep;
};

// Logits a block of `sample_stats` / `sample_hist` takes (the host's
// SAMPLE_CHUNK).
#define SAMPLE_CHUNK 4096

// A piece's maximum scaled logit and how many elements can be sampled.
struct SampleStat {
    float m;
    unsigned valid;
};

// The elements of a piece within SAMPLE_NEAR_BINS bins of the row's
// maximum are listed in its part (up to SAMPLE_NEAR_CAP of them), so the
// fast path gathers a peaked row's few candidates from the parts rather
// than walk the whole row with one block (20 µs of a sampled step).
#define SAMPLE_NEAR_BINS 128
#define SAMPLE_NEAR_CAP 256

// A piece's share of the row's softmax denominator, total mass and coarse
// histogram (integer mass and count per bin), all relative to the row's
// maximum, and its listed near elements (8,208 bytes, 8-aligned).
struct SamplePart {
    float se;
    unsigned near;  // elements in bins below SAMPLE_NEAR_BINS (listed: at most SAMPLE_NEAR_CAP)
    u64 total;
    u64 bmass[SAMPLE_BINS];
    unsigned count[SAMPLE_BINS];
    unsigned near_key[SAMPLE_NEAR_CAP];
    int near_id[SAMPLE_NEAR_CAP];
};

// The row's maximum and sampleable count from its pieces.
__device__ __forceinline__ void sample_row_stats(const SampleStat* st, int parts, float* m, u64* valid,
                                                 float* fred, u64* ured) {
    float mm = -OPTC_INF;
    u64 v = 0;
    for (int c = threadIdx.x; c < parts; c += blockDim.x) {
        mm = fmaxf(mm, st[c].m);
        v += st[c].valid;
    }
    *m = block_max(mm, fred);
    *valid = block_sum(v, ured);
}

// ---- Rows with a small top-k: one kernel ----
//
// A row whose top-k is small enough (`sample_by_candidates`) needs no
// histogram and no walk over the row after the first: its first top_k
// tokens are among its pieces' first top_k, and the softmax sum splits
// over the pieces. So `sample_stats`, given the split counters, samples
// such a row by itself. Each block leaves in its piece's part the
// piece's maximum, sampleable count and sum of exp(z - max) (f64), and
// its first top_k (key, id) pairs in the host's order. The row's last
// block to finish adds the sums (in a fixed order), sorts the candidates
// at or above the row's top-k cut, and cuts and draws over the first
// top_k as the host sampler does, in f64: log probabilities z - lse,
// top-p's running sum, min-p's floor, the draw's walk. It keeps the
// host's token wherever the two sums' rounding does not decide it.
// `sample_hist` and `sample` leave such rows alone, and when every row
// is one the host launches neither. A flat row, whose top-k cut falls
// in a bin too full to sort, costs what any other does here.
#define SAMPLE_PIECE_CANDS 1024

__host__ __device__ __forceinline__ bool sample_by_candidates(const SampleRow& p, int pieces) {
    return p.temperature > 0.f && p.top_k > 0 && p.top_k <= SAMPLE_PIECE_CANDS && p.top_k * pieces <= SAMPLE_CAP;
}

// What a piece of such a row leaves at the start of its part, followed
// by SAMPLE_PIECE_CANDS keys and as many ids.
struct SampleCandHead {
    float m;         // the piece's largest scaled logit
    unsigned valid;  // its sampleable elements
    double s;        // sum of exp(z - m) over them
};

__device__ __forceinline__ SampleCandHead* cand_head(SamplePart* part) {
    return reinterpret_cast<SampleCandHead*>(part);
}
__device__ __forceinline__ unsigned* cand_keys(SamplePart* part) {
    return reinterpret_cast<unsigned*>(reinterpret_cast<char*>(part) + sizeof(SampleCandHead));
}
__device__ __forceinline__ int* cand_ids(SamplePart* part) {
    return reinterpret_cast<int*>(cand_keys(part) + SAMPLE_PIECE_CANDS);
}

// Adds 1 to hist[d] for every lane whose d is below 256. Plain 32-bit
// shared adds (native on sm_90): grouping a warp's equal digits first
// with __match_any_sync made the one-pass kernel 5 µs slower a row
// (docs/perf.md, fifteenth session).
__device__ __forceinline__ void count_add(unsigned* hist, unsigned d) {
    if (d < 256u) atomicAdd(&hist[d], 1u);
}

// Where the `want` largest of some keys end: the kept are those whose
// key masked by `mask` is above `prefix`, and `need` of those equal to
// it (all of them when `need` is their count).
struct RadixCut {
    unsigned prefix, mask, need;
};

// The cut for the `want` (at least 1, at most their count) largest
// nonzero keys among those `get(e)` gives each thread of the block for
// e < E: a radix select, eight bits a pass from the top, that stops once
// every key left at the prefix is kept.
template <int E, class Get> __device__ RadixCut radix_cut(const Get& get, unsigned want, unsigned* hist) {
    __shared__ unsigned sel_digit, sel_above, sel_at;
    RadixCut c{0u, 0u, want};
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int d = threadIdx.x; d < 256; d += blockDim.x) hist[d] = 0;
        __syncthreads();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const unsigned k = get(e);
            count_add(hist, k && (k & c.mask) == c.prefix ? (k >> shift) & 255u : 256u);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            // Lane l owns digits 8l..8l+7: the count above each lane's
            // digits by a suffix sum over the lanes, then one lane walks
            // its eight.
            const int lane = threadIdx.x;
            unsigned mine = 0;
            for (int e = 0; e < 8; ++e) mine += hist[lane * 8 + e];
            unsigned suf = mine;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned v = __shfl_down_sync(0xffffffffu, suf, o);
                if (lane + o < 32) suf += v;
            }
            const unsigned hi = suf - mine;
            const unsigned hit = __ballot_sync(0xffffffffu, hi < c.need && c.need <= hi + mine);
            if (lane == (hit ? __ffs(hit) - 1 : 0)) {
                unsigned acc = hi;
                int d = lane * 8 + 7;
                for (; d > lane * 8 && acc + hist[d] < c.need; --d) acc += hist[d];
                sel_digit = (unsigned)d;
                sel_above = acc;
                sel_at = hist[d];
            }
        }
        __syncthreads();
        c.prefix |= sel_digit << shift;
        c.mask |= 255u << shift;
        c.need -= sel_above;
        const bool whole = sel_at == c.need;
        __syncthreads();
        if (whole) break;
    }
    return c;
}

// The piece's first `want` sampleable elements in the host's order
// (larger key first, lower id on ties) as (key, id) pairs into `part`.
// Thread t holds elements 16t to 16t + 15 (`own`, key 0: not
// sampleable), so ties at the cut rank by id through one block scan.
__device__ void piece_candidates(const unsigned (&own)[SAMPLE_CHUNK / 256], int b0, unsigned want, SamplePart* part,
                                 unsigned* hist, u64* scan) {
    constexpr int E = SAMPLE_CHUNK / 256;
    const RadixCut c = radix_cut<E>([&](int e) { return own[e]; }, want, hist);
    unsigned ties = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) ties += own[e] && (own[e] & c.mask) == c.prefix;
    u64 all;
    unsigned rank = (unsigned)block_exclusive_u64(ties, scan, &all);
    bool in[E];
    unsigned kept = 0;
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const unsigned k = own[e];
        const bool tie = k && (k & c.mask) == c.prefix;
        in[e] = k && ((k & c.mask) > c.prefix || (tie && rank < c.need));
        rank += tie;
        kept += in[e];
    }
    unsigned slot = (unsigned)block_exclusive_u64(kept, scan, &all);
    unsigned* key_out = cand_keys(part);
    int* id_out = cand_ids(part);
#pragma unroll
    for (int e = 0; e < E; ++e) {
        if (in[e]) {
            key_out[slot] = own[e];
            id_out[slot] = b0 + threadIdx.x * E + e;
            ++slot;
        }
    }
}

// Sorts the first `count` (at most SAMPLE_CAP) pairs into the host's
// order (bitonic, in shared memory; the arrays hold SAMPLE_CAP).
__device__ void sort_pairs(unsigned* key, int* id, int count) {
    int pn = 1;
    while (pn < count) pn <<= 1;
    for (int j = count + threadIdx.x; j < pn; j += blockDim.x) {
        key[j] = 0u;
        id[j] = 0x7fffffff;
    }
    __syncthreads();
    for (int size = 2; size <= pn; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int q = threadIdx.x; q < pn / 2; q += blockDim.x) {
                const int lo = 2 * q - (q & (stride - 1)), hi = lo + stride;
                const bool up = (lo & size) == 0;
                const bool hi_first = key[hi] > key[lo] || (key[hi] == key[lo] && id[hi] < id[lo]);
                if (up == hi_first) {
                    const unsigned tk = key[lo];
                    const int ti = id[lo];
                    key[lo] = key[hi];
                    id[lo] = id[hi];
                    key[hi] = tk;
                    id[hi] = ti;
                }
            }
            __syncthreads();
        }
    }
}

// The row's last block: its token and log probability from the pieces'
// parts. `scratch` holds 2 * SAMPLE_CAP words (the block's own keys are
// spent).
__device__ void sample_from_candidates(SamplePart* parts, int pieces, const SampleRow& p, int* tok, float* lp,
                                       i64 r, unsigned* scratch, unsigned* hist, u64* scan) {
    __shared__ unsigned sk[SAMPLE_CAP];
    __shared__ int sid[SAMPLE_CAP];
    __shared__ double pd[SAMPLE_PIECE_CANDS];
    __shared__ float row_m;
    __shared__ unsigned row_valid;
    __shared__ double row_lse;
    __shared__ unsigned off[33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    // The row's maximum, sampleable count and lse, in a fixed order.
    if (warp == 0) {
        float m = -OPTC_INF;
        unsigned v = 0;
        for (int q = lane; q < pieces; q += 32) {
            const SampleCandHead* h = cand_head(parts + q);
            m = fmaxf(m, __ldcg(&h->m));
            v += __ldcg(&h->valid);
        }
        m = warp_max(m);
        v = warp_sum(v);
        double s = 0.0;
        for (int q = lane; q < pieces; q += 32) {
            const SampleCandHead* h = cand_head(parts + q);
            if (__ldcg(&h->valid)) s += __ldcg(&h->s) * exp((double)__ldcg(&h->m) - (double)m);
        }
        s = warp_sum(s);
        if (lane == 0) {
            row_m = m;
            row_valid = v;
            row_lse = log(s) + (double)m;
        }
    }
    __syncthreads();
    SAMPLE_MARK(5, r == 0);
    if (row_valid == 0 || row_m == OPTC_INF) {
        // Nothing to sample, or an infinite logit (as `sample`).
        if (threadIdx.x == 0) {
            tok[r] = 0;
            lp[r] = row_valid == 0 ? -OPTC_INF : __int_as_float(0x7fc00000);
        }
        return;
    }
    const double lse = row_lse;
    const unsigned k = (unsigned)p.top_k;
    // The pieces' candidates, 32 pieces at a time, each after the one before.
    unsigned* ck = scratch;
    int* cid = reinterpret_cast<int*>(scratch + SAMPLE_CAP);
    unsigned count = 0;
    for (int base = 0; base < pieces; base += 32) {
        if (warp == 0) {
            const int q = base + lane;
            const unsigned c = q < pieces ? min(k, __ldcg(&cand_head(parts + q)->valid)) : 0u;
            unsigned inc = c;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const unsigned y = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o) inc += y;
            }
            off[lane] = count + inc - c;
            if (lane == 31) off[32] = count + inc;
        }
        __syncthreads();
        for (int j = warp; j < 32 && base + j < pieces; j += nw) {
            SamplePart* part = parts + base + j;
            const unsigned at = off[j], len = off[j + 1] - at;
            for (unsigned e = lane; e < len; e += 32) {
                ck[at + e] = __ldcg(cand_keys(part) + e);
                cid[at + e] = __ldcg(cand_ids(part) + e);
            }
        }
        count = off[32];
        __syncthreads();
    }
    SAMPLE_MARK(6, r == 0);
    // Those at or above the row's top-k cut, sorted; the first `want`
    // are the row's first top_k.
    const unsigned want = min(k, count);
    constexpr int E = SAMPLE_CAP / 256;
    auto get = [&](int e) {
        const unsigned j = e * blockDim.x + threadIdx.x;
        return j < count ? ck[j] : 0u;
    };
    const RadixCut c = want < count ? radix_cut<E>(get, want, hist) : RadixCut{0u, 0u, count};
    SAMPLE_MARK(7, r == 0);
    unsigned mine = 0;
    for (int e = 0; e < E; ++e) {
        const unsigned key = get(e);
        mine += key && (key & c.mask) >= c.prefix;
    }
    u64 all;
    unsigned slot = (unsigned)block_exclusive_u64(mine, scan, &all);
    for (int e = 0; e < E; ++e) {
        const unsigned key = get(e);
        if (key && (key & c.mask) >= c.prefix) {
            sk[slot] = key;
            sid[slot] = cid[e * blockDim.x + threadIdx.x];
            ++slot;
        }
    }
    __syncthreads();
    SAMPLE_MARK(8, r == 0);
    sort_pairs(sk, sid, (int)all);
    SAMPLE_MARK(9, r == 0);
    for (unsigned j = threadIdx.x; j < want; j += blockDim.x) pd[j] = exp((double)key_value(sk[j]) - lse);
    __syncthreads();
    if (threadIdx.x == 0) {
        // The host sampler's cuts and walk.
        unsigned keep = want;
        if (p.top_p < 1.f) {
            double acc = 0.0;
            keep = 0;
            while (keep < want) {
                acc += pd[keep++];
                if (acc >= (double)p.top_p) break;
            }
            keep = max(keep, 1u);
        }
        if (p.min_p > 0.f) {
            const double floor = ((double)key_value(sk[0]) - lse) + log((double)p.min_p);
            unsigned j = 1;
            while (j < keep && (double)key_value(sk[j]) - lse >= floor) ++j;
            keep = j;
        }
        double total = 0.0;
        for (unsigned j = 0; j < keep; ++j) total += pd[j];
        double u = p.u * total;
        unsigned pick = keep - 1;
        for (unsigned j = 0; j < keep; ++j) {
            u -= pd[j];
            if (u < 0.0) {
                pick = j;
                break;
            }
        }
        tok[r] = sid[pick];
        lp[r] = (float)((double)key_value(sk[pick]) - lse);
    }
    SAMPLE_MARK(10, r == 0);
}

// Grid (rows, pieces), SAMPLE_CHUNK / 16 threads. With `counters` (the
// split counters, left at 0), rows sampled from candidates are sampled
// here into tok/lp; other rows get their pieces' maxima and counts.
template <typename T>
__device__ void sample_stats_impl(const T* x, const SampleRow* rows, SampleStat* out, SamplePart* parts, int n,
                                  int* counters, int* tok, float* lp) {
    __shared__ float fred[32];
    __shared__ unsigned ured[32];
    __shared__ double dred[32];
    __shared__ u64 scan[33];
    __shared__ unsigned hist[256];
    __shared__ unsigned keys[SAMPLE_CHUNK + SAMPLE_CHUNK / 32];
    __shared__ bool last;
    constexpr int E = SAMPLE_CHUNK / 256;
    const i64 r = blockIdx.x;
    const int pieces = gridDim.y;
    const SampleRow p = rows[r];
    const float t = p.temperature > 0.f ? p.temperature : 0.f;
    const bool by_cands = counters && sample_by_candidates(p, pieces);
    const int b0 = blockIdx.y * SAMPLE_CHUNK, len = min(SAMPLE_CHUNK, n - b0);
    const bool traced = r == 0 && blockIdx.y == 0;
    SAMPLE_MARK(0, traced);
    float m = -OPTC_INF;
    unsigned valid = 0;
    if (len > 0) {
        // Element i's key at i + i / 32: thread t reads its own 16 below
        // without bank conflicts.
        for_each_scaled(x + r * n + b0, len, t, [&](int i, float z) {
            const unsigned k = sample_key(z);
            if (k) {
                m = fmaxf(m, z);
                ++valid;
            }
            if (by_cands) keys[i + (i >> 5)] = k;
        });
    }
    m = block_max(m, fred);
    valid = block_sum(valid, ured);
    SAMPLE_MARK(1, traced);
    if (!by_cands) {
        if (threadIdx.x == 0) out[r * pieces + blockIdx.y] = SampleStat{m, valid};
        return;
    }
    SamplePart* part = parts + r * pieces + blockIdx.y;
    unsigned own[E];
#pragma unroll
    for (int e = 0; e < E; ++e) {
        const int i = threadIdx.x * E + e;
        own[e] = i < len ? keys[i + (i >> 5)] : 0u;
    }
    double s = 0.0;
#pragma unroll
    for (int e = 0; e < E; ++e)
        if (own[e]) s += exp((double)key_value(own[e]) - (double)m);
    s = block_sum(s, dred);
    if (threadIdx.x == 0) *cand_head(part) = SampleCandHead{m, valid, s};
    SAMPLE_MARK(2, traced);
    if (valid > 0) piece_candidates(own, b0, min(valid, (unsigned)p.top_k), part, hist, scan);
    SAMPLE_MARK(3, traced);
    // Every thread's pairs are visible before the count says so.
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[r], 1) == pieces - 1;
    __syncthreads();
    if (!last) return;
    SAMPLE_MARK(4, r == 0);
    __threadfence();
    sample_from_candidates(parts + r * pieces, pieces, p, tok, lp, r, keys, hist, scan);
    if (threadIdx.x == 0) counters[r] = 0;
}

// Grid (rows, pieces), after `sample_stats`. With `one_pass`, rows
// sampled from candidates are done already.
template <typename T>
__device__ void sample_hist_impl(const T* x, const SampleRow* rows, const SampleStat* stats, SamplePart* out, int n,
                                 int one_pass) {
    __shared__ float fred[32];
    __shared__ u64 ured[32];
    // A bin's integer mass in 32-bit words (shared 64-bit adds are
    // compare-and-swap loops on sm_90; 32-bit adds are native): bits 0-19
    // and 20-39 of each element's mass (the sums of 4,096 fit), and the
    // elements of mass 2^40 (the maximum's, bin 0).
    __shared__ unsigned mass_lo[SAMPLE_BINS], mass_mid[SAMPLE_BINS];
    __shared__ unsigned count[SAMPLE_BINS];
    __shared__ unsigned at_max, near_n;
    const i64 r = blockIdx.x;
    const int parts = gridDim.y;
    const SampleRow p = rows[r];
    if (one_pass && sample_by_candidates(p, parts)) return;
    SAMPLE_MARK(12, r == 0 && blockIdx.y == 0);
    const float t = p.temperature > 0.f ? p.temperature : 0.f;
    float m;
    u64 valid;
    sample_row_stats(stats + r * parts, parts, &m, &valid, fred, ured);
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += blockDim.x) {
        mass_lo[b] = 0;
        mass_mid[b] = 0;
        count[b] = 0;
    }
    if (threadIdx.x == 0) {
        at_max = 0;
        near_n = 0;
    }
    __syncthreads();
    float se = 0.f;
    u64 total = 0;
    const int b0 = blockIdx.y * SAMPLE_CHUNK, len = min(SAMPLE_CHUNK, n - b0);
    SamplePart* o = out + r * parts + blockIdx.y;
    const int lane = threadIdx.x & 31;
    // (`sample` stops before it reads a part when nothing can be drawn.)
    if (len > 0 && valid > 0 && m < OPTC_INF) {
        for_each_scaled_uniform(x + r * n + b0, len, t, [&](int i, float z, bool live) {
            const unsigned k = live ? sample_key(z) : 0u;
            int b = SAMPLE_BINS;
            u64 w = 0;
            if (k) {
                const float e = expf(z - m);
                w = e > 0.f ? (u64)(e * OPTC_MASS_ONE) : 0ull;  // sample_mass(z, m)
                se += e;
                total += w;
                b = sample_bin(z, m);
                if (w >> 40) atomicAdd(&at_max, 1u);
            }
            // (Plain adds: aggregating a warp's lanes by bin with
            // __match_any_sync measured 2-3x slower here.)
            if (b < SAMPLE_BINS) {
                const unsigned lo = (unsigned)(w & 0xfffffull), mid = (unsigned)((w >> 20) & 0xfffffull);
                atomicAdd(&count[b], 1u);
                if (lo) atomicAdd(&mass_lo[b], lo);
                if (mid) atomicAdd(&mass_mid[b], mid);
            }
            // The near elements, listed in any order (a slot a warp claims).
#ifdef OPTC_NEAR_SKIP_FULL
            // Not yet measured: once the piece has more than it lists (a
            // flat row), stop claiming slots; its count stays over the cap.
            const bool near = b < SAMPLE_NEAR_BINS && *(volatile unsigned*)&near_n <= SAMPLE_NEAR_CAP;
#else
            const bool near = b < SAMPLE_NEAR_BINS;
#endif
            const unsigned mask = __ballot_sync(0xffffffffu, near);
            if (!mask) return;
            const int leader = __ffs(mask) - 1;
            unsigned base = 0;
            if (lane == leader) base = atomicAdd(&near_n, (unsigned)__popc(mask));
            base = __shfl_sync(0xffffffffu, base, leader);
            const unsigned slot = base + __popc(mask & ((1u << lane) - 1u));
            if (near && slot < SAMPLE_NEAR_CAP) {
                o->near_key[slot] = k;
                o->near_id[slot] = b0 + i;
            }
        });
    }
    se = block_sum(se, fred);
    total = block_sum(total, ured);
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += blockDim.x) {
        o->bmass[b] = (u64)mass_lo[b] + ((u64)mass_mid[b] << 20) + (b == 0 ? (u64)at_max << 40 : 0ull);
        o->count[b] = count[b];
    }
    if (threadIdx.x == 0) {
        o->se = se;
        o->near = near_n;
        o->total = total;
    }
    SAMPLE_MARK(13, r == 0 && blockIdx.y == 0);
}

// Nothing left to draw from: token 0 with log probability -inf, as the
// host sampler gives.
__device__ __forceinline__ void sample_none(int* out, float* lp, i64 r) {
    if (threadIdx.x == 0) {
        out[r] = 0;
        lp[r] = -OPTC_INF;
    }
}

// Gathers the `cands` (at most SAMPLE_CAP) sampleable elements whose bin
// lies in [lo, hi] into f, sorts them into the host's order (bitonic, in
// shared memory) and sets f.cum[j] to `base` plus the masses of the first
// j + 1 of them. False (f unusable) when the gather did not find exactly
// `cands`: the histogram and the gather disagree, and the caller falls
// back to the radix selects rather than write past f or read an empty f.
// With `near` (the row's parts, when every piece listed its near elements
// and hi < SAMPLE_NEAR_BINS) it gathers from their lists, not the row.
template <typename T>
__device__ __noinline__ bool sample_gather_sorted(const T* x, int n, float t, float m, int lo, int hi, int cands,
                                                  u64 base, SampleFast& f, u64* ured, const SamplePart* near, int nparts) {
    if (threadIdx.x == 0) f.n = 0;
    __syncthreads();
    // In any order; the sort orders them.
    auto take = [&](int i, float z, unsigned k) {
        const int b = sample_bin(z, m);
        if (b >= lo && b <= hi) {
            const int slot = atomicAdd(&f.n, 1);
            if (slot < SAMPLE_CAP) {
                f.key[slot] = k;
                f.id[slot] = i;
            }
        }
    };
    if (near) {
        for (int g = threadIdx.x; g < nparts * SAMPLE_NEAR_CAP; g += blockDim.x) {
            const SamplePart& q = near[g / SAMPLE_NEAR_CAP];
            const unsigned j = (unsigned)(g % SAMPLE_NEAR_CAP);
            if (j < q.near) {
                const unsigned k = q.near_key[j];
                take(q.near_id[j], key_value(k), k);
            }
        }
    } else {
        for_each_scaled(x, n, t, [&](int i, float z) {
            const unsigned k = sample_key(z);
            if (k) take(i, z, k);
        });
    }
    __syncthreads();
    if (f.n != cands || cands < 1) return false;
    sort_pairs(f.key, f.id, cands);
    // Running masses in that order: two candidates a thread.
    const int j0 = 2 * threadIdx.x;
    const u64 w0 = j0 < cands ? sample_mass(key_value(f.key[j0]), m) : 0ull;
    const u64 w1 = j0 + 1 < cands ? sample_mass(key_value(f.key[j0 + 1]), m) : 0ull;
    u64 all;
    const u64 before = base + block_exclusive_u64(w0 + w1, ured, &all);
    if (j0 < SAMPLE_CAP) {
        f.cum[j0] = before + w0;
        f.cum[j0 + 1] = before + w0 + w1;
    }
    __syncthreads();
    return true;
}

// One warp: the integer mass of the bins before bin `b`.
__device__ u64 sample_mass_before(const u64* h, int b) {
    const int lane = threadIdx.x & 31;
    u64 v = 0;
    for (int e = lane; e < b; e += 32) v += h[e];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Bins too full to sort are listed (`list_bin`) and the radix selects walk
// the list rather than the row: a pass over a few thousand pairs instead
// of every logit again (measured: docs/perf.md, thirteenth session).

// What radix_select walks: the whole row (scaled logits)...
template <typename T> struct RowWalk {
    const T* x;
    int n;
    float t;
    template <class G> __device__ void operator()(G&& g) const { for_each_scaled_uniform(x, n, t, g); }
};
// ...or a bin's listed (key, id) pairs (`list_bin`), `*count` of them.
// (Function objects, not generic lambdas: NVRTC 13.0 takes a generic
// lambda in device code for a host function; 13.5 does not mind.)
struct ListWalk {
    const unsigned* key;
    const int* id;
    const int* count;
    // Four pairs a thread loaded before any is used: a pass over a
    // listed bin is bound by the list's L2 round trips, not the work.
    template <class G> __device__ void operator()(G&& g) const {
        constexpr int U = 4;
        const int c = *count;
        for (int b0 = 0; b0 < c; b0 += U * blockDim.x) {
            unsigned k[U];
            int i[U];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = b0 + u * blockDim.x + threadIdx.x;
                k[u] = j < c ? key[j] : 0u;
                i[u] = j < c ? id[j] : 0;
            }
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const bool live = b0 + u * blockDim.x + threadIdx.x < c;
                g(i[u], live ? key_value(k[u]) : 0.f, live);
            }
        }
    }
};

// Of the elements `walk` visits, the largest id among the first `need`
// (by id) whose key is `tau`: where a cut or a draw ends among ties.
template <class W> __device__ __noinline__ int tie_select(const W walk, int n, unsigned tau, u64 need, SelectScratch& s) {
    auto ties = [=](int i, float z, unsigned& k) -> u64 {
        k = (unsigned)(n - 1 - i);
        return sample_key(z) == tau ? 1ull : 0ull;
    };
    u64 above, at;
    return n - 1 - (int)radix_select(walk, ties, 32 - __clz(max(n - 1, 1)), need, &above, &at, s);
}

// Lists the sampleable elements of bin `b` as (key, id) pairs in
// `key`/`id` (global scratch, `cap` pairs), in any order; returns how many
// there are (more than `cap`: only the first `cap` were listed). For a
// bin too full to sort in shared memory, so that the selects after it
// walk its elements instead of the whole row. `count` is shared.
template <typename T>
__device__ __noinline__ int list_bin(const T* x, int n, float t, float m, int b, unsigned* key, int* id, int cap, int* count) {
    if (threadIdx.x == 0) *count = 0;
    __syncthreads();
    const int lane = threadIdx.x & 31;
    for_each_scaled_uniform(x, n, t, [&](int i, float z, bool live) {
        const unsigned k = live ? sample_key(z) : 0u;
        const bool in = k && sample_bin(z, m) == b;
        const unsigned mask = __ballot_sync(0xffffffffu, in);
        if (!mask) return;
        const int leader = __ffs(mask) - 1;
        int base = 0;
        if (lane == leader) base = atomicAdd(count, __popc(mask));
        base = __shfl_sync(0xffffffffu, base, leader);
        const int slot = base + __popc(mask & ((1u << lane) - 1u));
        if (in && slot < cap) {
            key[slot] = k;
            id[slot] = i;
        }
    });
    __syncthreads();
    const int listed = *count;
    __syncthreads();
    return listed;
}

// Grid (rows), 1024 threads: out[row] the sampled token, lp[row] its log
// probability under the scaled logits (before the filters, as the host).
// With `one_pass`, rows sampled from candidates are done already.
template <typename T>
__device__ void sample_impl(const T* x, const SampleRow* rows, int* out, float* lp, int n, const SampleStat* stats,
                            SamplePart* parts, int nparts, int one_pass) {
    __shared__ SelectScratch s;
    __shared__ SampleFast f;
    __shared__ float fred[32];
    __shared__ u64 ured[33];
    __shared__ float se_s;
    __shared__ u64 total_s, bin_base;
    __shared__ int list_count;
    __shared__ bool near_listed;
    const i64 r = blockIdx.x;
    x += r * n;
    stats += r * nparts;
    parts += r * nparts;
    const SampleRow p = rows[r];
    if (one_pass && sample_by_candidates(p, nparts)) return;
    const bool traced = r == 0;
    SAMPLE_MARK(16, traced);
    const bool greedy = !(p.temperature > 0.f);
    const float t = greedy ? 0.f : p.temperature;
    const int top_k = greedy ? 1 : p.top_k;

    // The row's maximum and how many elements can be sampled.
    float m;
    u64 valid;
    sample_row_stats(stats, nparts, &m, &valid, fred, ured);
    SAMPLE_MARK(17, traced);
    if (valid == 0 || m == OPTC_INF) {
        // Nothing to sample (the host sampler also gives token 0).
        if (threadIdx.x == 0) {
            out[r] = 0;
            lp[r] = valid == 0 ? -OPTC_INF : __int_as_float(0x7fc00000);
        }
        return;
    }
    // Softmax denominator (for the log probability), the total mass, and
    // the coarse histogram (count and mass per bin below the maximum):
    // the pieces' parts, added in piece order.
    for (int b = threadIdx.x; b < SAMPLE_BINS; b += blockDim.x) {
        unsigned c = 0;
        u64 iw = 0;
        for (int q = 0; q < nparts; ++q) {
            c += parts[q].count[b];
            iw += parts[q].bmass[b];
        }
        f.count[b] = c;
        f.bmass[b] = iw;
    }
    if (threadIdx.x < 32) {
        // Whether every piece listed all its near elements.
        unsigned over = 0;
        for (int q = threadIdx.x; q < nparts; q += 32) over |= parts[q].near > SAMPLE_NEAR_CAP;
        over = __any_sync(0xffffffffu, over);
        if (threadIdx.x == 0) {
            float a = 0.f;
            u64 b = 0;
            for (int q = 0; q < nparts; ++q) {
                a += parts[q].se;
                b += parts[q].total;
            }
            se_s = a;
            total_s = b;
            near_listed = !over;
        }
    }
    __syncthreads();
    SAMPLE_MARK(18, traced);
    const float se = se_s;
    const u64 total = total_s;
    // The row's parts are read (all but their near lists, which the
    // gathers read until `list_bin` overwrites them: `near_ok`): their
    // bytes (8,208 a piece) hold the (key, id) pairs of a bin too full to
    // sort (`list_bin`).
    const int list_cap = nparts * (int)(sizeof(SamplePart) / 8);
    unsigned* list_key = reinterpret_cast<unsigned*>(parts);
    int* list_id = reinterpret_cast<int*>(list_key + list_cap);
    // Walks the whole row, or the listed pairs, for radix_select.
    const RowWalk<T> row_walk{x, n, t};
    int listed = 0;
    const ListWalk list_walk{list_key, list_id, &listed};
    const u64 top_p_target =
        min(max((u64)ceil((double)p.top_p * (double)total), 1ull), total);

    // The last bin the kept prefix can reach: the first bin where each
    // filter's prefix is sure to end, the earliest of them.
    if (threadIdx.x < 32) {
        int last = SAMPLE_BINS - 1;
        if (top_k > 0 && (u64)top_k < valid)
            last = min(last, first_bin_reaching<unsigned>(f.count, (unsigned)top_k));
        // The integer masses decide the top-p cut, so its bin bounds it exactly.
        if (!greedy && p.top_p < 1.f) last = min(last, first_bin_reaching<u64>(f.bmass, top_p_target));
        if (!greedy && p.min_p > 0.f)
            last = min(last, min(SAMPLE_BINS - 1, (int)(-logf(p.min_p) * SAMPLE_BIN_SCALE) + 1));
        unsigned in = 0;
        for (int b = threadIdx.x; b <= last; b += 32) in += f.count[b];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) in += __shfl_xor_sync(0xffffffffu, in, o);
        if (threadIdx.x == 0) {
            f.last_bin = last;
            f.keep = (int)in;
            f.n = 0;
        }
    }
    __syncthreads();
    SAMPLE_MARK(19, traced);
    const int cands = f.keep;
    // Whether the pieces' near lists hold every element of bins up to b
    // (until a bin too full to sort is listed over them).
    bool near_ok = near_listed;
    auto near_for = [&](int b) { return near_ok && b < SAMPLE_NEAR_BINS ? parts : nullptr; };
    if (cands <= SAMPLE_CAP &&
        sample_gather_sorted(x, n, t, m, 0, f.last_bin, cands, 0ull, f, ured, near_for(f.last_bin), nparts)) {
        SAMPLE_MARK(20, traced);
        if (threadIdx.x == 0) f.keep = cands;
        __syncthreads();
        // How many to keep: each filter's cut, the shortest.
        const unsigned floor_key = (!greedy && p.min_p > 0.f) ? min_p_floor_key(m, p.min_p) : 0u;
        for (int j = threadIdx.x; j < cands; j += blockDim.x) {
            if (top_k > 0 && j == top_k) atomicMin(&f.keep, j);
            if (!greedy && p.top_p < 1.f && f.cum[j] >= top_p_target && (j == 0 || f.cum[j - 1] < top_p_target))
                atomicMin(&f.keep, j + 1);
            if (f.key[j] < floor_key && (j == 0 || f.key[j - 1] >= floor_key)) atomicMin(&f.keep, max(j, 1));
        }
        __syncthreads();
        const int keep = f.keep;
        const u64 kept = f.cum[keep - 1];
        if (kept == 0) {
            sample_none(out, lp, r);
            return;
        }
        u64 goal = (u64)(p.u * (double)kept);
        if (goal >= kept) goal = kept - 1;
        for (int j = threadIdx.x; j < keep; j += blockDim.x) {
            if (f.cum[j] > goal && (j == 0 || f.cum[j - 1] <= goal)) {
                out[r] = f.id[j];
                lp[r] = key_value(f.key[j]) - m - logf(se);
            }
        }
        SAMPLE_MARK(21, traced);
        return;
    }
    SAMPLE_MARK(22, traced);

    // The bin path, when neither top-k nor min-p cuts (temperature alone,
    // or top-p over a flat row): the exact integer mass per bin says which
    // bin the top-p cut falls in and which the draw does; only those bins'
    // elements are gathered and sorted. Bins run in the host's order (a
    // larger logit is never in a later bin), so bins before the one found
    // are whole prefixes of it. A bin too full to sort in shared memory is
    // listed in the scratch, and radix selects over its elements find the
    // cut and the draw (a row pass each instead of a dozen).
    if (!(top_k > 0 && (u64)top_k < valid) && !(!greedy && p.min_p > 0.f)) {
        u64 kept = total;
        int sorted_bin = -1;  // the bin f holds sorted, its kept prefix in f.keep
        int listed_bin = -1;  // the bin the scratch lists
        // The top-p cut found in a listed bin, cut_bin: its keys above
        // cut_key are kept, and those equal to it whose id is at most cut_id.
        int cut_bin = -1;
        unsigned cut_key = 0;
        int cut_id = 0x7fffffff;
        bool fits = true;
        // The first bin whose running mass reaches `reach` (its mass
        // before in bin_base), for the whole block.
        auto locate_bin = [&](u64 reach) {
            if (threadIdx.x < 32) {
                const int b = first_bin_reaching<u64>(f.bmass, reach);
                const u64 base = sample_mass_before(f.bmass, b);
                if (threadIdx.x == 0) {
                    f.last_bin = b;
                    bin_base = base;
                }
            }
            __syncthreads();
            return f.last_bin;
        };
        // Lists bin b unless it already is; false when it does not fit
        // or the listing disagrees with the histogram.
        auto list = [&](int b) {
            if (b == listed_bin) return true;
            const int want = (int)f.count[b];
            if (want > list_cap) return false;
            near_ok = false;
            listed = list_bin(x, n, t, m, b, list_key, list_id, list_cap, &list_count);
            listed_bin = listed == want ? b : -1;
            return listed == want;
        };
        if (!greedy && p.top_p < 1.f) {
            const int bp = locate_bin(top_p_target);
            SAMPLE_MARK(23, traced);
            const u64 base = bin_base;
            const int in_bin = (int)f.count[bp];
            __syncthreads();
            if (in_bin <= SAMPLE_CAP &&
                sample_gather_sorted(x, n, t, m, bp, bp, in_bin, base, f, ured, near_for(bp), nparts)) {
                if (threadIdx.x == 0) f.keep = in_bin;
                __syncthreads();
                for (int j = threadIdx.x; j < in_bin; j += blockDim.x)
                    if (f.cum[j] >= top_p_target && (j == 0 || f.cum[j - 1] < top_p_target)) atomicMin(&f.keep, j + 1);
                __syncthreads();
                kept = f.cum[f.keep - 1];
                sorted_bin = bp;
            } else if (in_bin > SAMPLE_CAP && list(bp)) {
                SAMPLE_MARK(24, traced);
                // The cut within the bin: the bins before it weigh `base`.
                auto weigh = [=](int, float z, unsigned& k) -> u64 {
                    k = sample_key(z);
                    return sample_mass(z, m);
                };
                u64 above, at;
                cut_key = radix_select(list_walk, weigh, 32, top_p_target - base, &above, &at, s);
                SAMPLE_MARK(25, traced);
                // Every element with key cut_key weighs the same.
                const u64 w = sample_mass(key_value(cut_key), m);
                const u64 ties = w ? at / w : 0ull;
                const u64 need = max(w ? (top_p_target - base - above + w - 1) / w : 1ull, 1ull);
                const u64 keep = min(need, ties);
                if (keep < ties) cut_id = tie_select(list_walk, n, cut_key, keep, s);
                SAMPLE_MARK(26, traced);
                kept = base + above + keep * w;
                cut_bin = bp;
            } else {
                fits = false;
            }
        }
        if (fits && kept == 0) {
            sample_none(out, lp, r);
            return;
        }
        u64 goal = (u64)(p.u * (double)kept);
        if (goal >= kept) goal = kept - 1;
        int len = 0;
        if (fits) {
            // The draw's bin: the first whose running mass passes the goal.
            const int bd = locate_bin(goal + 1);
            SAMPLE_MARK(27, traced);
            if (bd == sorted_bin) {
                len = f.keep;
            } else {
                const u64 base = bin_base;
                const int in_bin = (int)f.count[bd];
                __syncthreads();
                if (in_bin <= SAMPLE_CAP &&
                    sample_gather_sorted(x, n, t, m, bd, bd, in_bin, base, f, ured, near_for(bd), nparts)) {
                    len = in_bin;
                } else if (in_bin > SAMPLE_CAP && list(bd)) {
                    SAMPLE_MARK(28, traced);
                    // The draw among the bin's kept elements (all of them
                    // unless it holds the top-p cut), in the host's order.
                    const bool cut = bd == cut_bin;
                    auto in_draw = [&](int i, float z, unsigned& k) -> u64 {
                        k = sample_key(z);
                        const bool in = !cut || k > cut_key || (k == cut_key && i <= cut_id);
                        return in ? sample_mass(z, m) : 0ull;
                    };
                    u64 above, at;
                    const unsigned tau = radix_select(list_walk, in_draw, 32, goal - base + 1, &above, &at, s);
                    SAMPLE_MARK(29, traced);
                    const u64 w = sample_mass(key_value(tau), m);
                    const int id = tie_select(list_walk, n, tau, w ? (goal - base - above) / w + 1 : 1ull, s);
                    if (threadIdx.x == 0) {
                        out[r] = id;
                        lp[r] = key_value(tau) - m - logf(se);
                    }
                    SAMPLE_MARK(30, traced);
                    return;
                } else {
                    fits = false;
                }
            }
        }
        if (fits) {
            SAMPLE_MARK(31, traced);
            for (int j = threadIdx.x; j < len; j += blockDim.x) {
                if (f.cum[j] > goal && (j == 0 || f.cum[j - 1] <= goal)) {
                    out[r] = f.id[j];
                    lp[r] = key_value(f.key[j]) - m - logf(se);
                }
            }
            SAMPLE_MARK(32, traced);
            return;
        }
    }

    SAMPLE_MARK(33, traced);
    // The cut: everything, then each filter's prefix, keeping the shortest.
    unsigned cut_key = 1;
    int cut_id = 0x7fffffff;
    auto tighten = [&](unsigned k, int id) {
        if (k > cut_key || (k == cut_key && id < cut_id)) {
            cut_key = k;
            cut_id = id;
        }
    };
    if (top_k > 0 && (u64)top_k < valid) {
        auto count = [](int, float z, unsigned& k) -> u64 {
            k = sample_key(z);
            return k ? 1ull : 0ull;
        };
        u64 above, at;
        unsigned tau = radix_select(row_walk, count, 32, (u64)top_k, &above, &at, s);
        // No id select when every tie at the cut is kept.
        const u64 need = (u64)top_k - above;
        tighten(tau, need >= at ? 0x7fffffff : tie_select(row_walk, n, tau, need, s));
    }
    if (!greedy && p.top_p < 1.f) {
        const u64 target = top_p_target;
        auto weigh = [=](int, float z, unsigned& k) -> u64 {
            k = sample_key(z);
            return k ? sample_mass(z, m) : 0ull;
        };
        u64 above, at;
        unsigned tau = radix_select(row_walk, weigh, 32, target, &above, &at, s);
        // Every element with key tau weighs the same.
        const u64 w = sample_mass(key_value(tau), m);
        const u64 need = max(w ? (target - above + w - 1) / w : 1ull, 1ull);
        tighten(tau, w == 0 || need >= at / w ? 0x7fffffff : tie_select(row_walk, n, tau, need, s));
    }
    if (!greedy && p.min_p > 0.f) tighten(min_p_floor_key(m, p.min_p), 0x7fffffff);

    // The draw, in the host's order as on the fast path: the kept element
    // where the running mass in (key, lower id) order first passes the
    // goal. A select over the kept masses finds its key, a select over ids
    // its place among that key's ties (the kept ones are the lowest ids).
    auto kept = [=](int i, float z, unsigned& k) -> u64 {
        k = sample_key(z);
        const bool in = k && (k > cut_key || (k == cut_key && i <= cut_id));
        return in ? sample_mass(z, m) : 0ull;
    };
    u64 all = 0;
    for_each_scaled(x, n, t, [&](int i, float z) {
        unsigned k;
        all += kept(i, z, k);
    });
    all = block_sum(all, ured);
    if (all == 0) {
        sample_none(out, lp, r);
        return;
    }
    u64 goal = (u64)(p.u * (double)all);
    if (goal >= all) goal = all - 1;
    u64 above, at;
    const unsigned tau = radix_select(row_walk, kept, 32, goal + 1, &above, &at, s);
    // Every kept element with key tau weighs w (> 0: tau holds kept mass).
    const u64 w = sample_mass(key_value(tau), m);
    const int id = tie_select(row_walk, n, tau, w ? (goal - above) / w + 1 : 1ull, s);
    if (threadIdx.x == 0) {
        out[r] = id;
        lp[r] = key_value(tau) - m - logf(se);
    }
    SAMPLE_MARK(34, traced);
}

// The row statistics and histogram kernels, and the pick, are separate
// instantiations so that NVRTC compiles them as separate units (in
// parallel: the pick alone bounds a cold compile).
#define OPTC_SAMPLE_PARTS(T, N)                                                                        \
    extern "C" __global__ void __launch_bounds__(256)                                                  \
        sample_stats_##N(const T* x, const SampleRow* rows, SampleStat* out, SamplePart* parts, int n, \
                         int* counters, int* tok, float* lp) {                                         \
        pdl_start();                                                                                   \
        sample_stats_impl<T>(x, rows, out, parts, n, counters, tok, lp);                               \
    }                                                                                                  \
    extern "C" __global__ void __launch_bounds__(256)                                                  \
        sample_hist_##N(const T* x, const SampleRow* rows, const SampleStat* stats, SamplePart* out,   \
                        int n, int one_pass) {                                                         \
        pdl_start();                                                                                   \
        sample_hist_impl<T>(x, rows, stats, out, n, one_pass);                                         \
    }
#define OPTC_SAMPLE_PICK(T, N)                                                                         \
    extern "C" __global__ void __launch_bounds__(1024)                                                 \
        sample_##N(const T* x, const SampleRow* rows, int* out, float* lp, int n,                     \
                   const SampleStat* stats, SamplePart* parts, int nparts, int one_pass) {            \
        pdl_start();                                                                                   \
        sample_impl<T>(x, rows, out, lp, n, stats, parts, nparts, one_pass);                           \
    }
// All three in one unit (the kernel benches).
#define OPTC_SAMPLE(T, N) OPTC_SAMPLE_PARTS(T, N) OPTC_SAMPLE_PICK(T, N)
