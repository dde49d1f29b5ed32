// Shared helpers for optc's CUDA kernels. The host concatenates this file
// with the kernel files into one NVRTC translation unit; nothing here may
// include headers beyond the CUDA ones NVRTC ships.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

typedef long long i64;
typedef __nv_bfloat16 bf16;
typedef __half f16;

#define OPTC_INF __int_as_float(0x7f800000)
#define OPTC_MAX_RANK 6

// Loads and stores: every kernel computes in f32 and rounds once, to
// nearest even, when it stores (the interpreter's semantics).
__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const bf16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float ld(const f16* p) { return __half2float(*p); }
__device__ __forceinline__ float ld(const i64* p) { return (float)(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(bf16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void st(f16* p, float v) { *p = __float2half_rn(v); }

// Eight consecutive elements from a 16-byte-aligned address (32 for f32).
__device__ __forceinline__ void ld8(const float* p, float* o) {
    float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
    o[0] = a.x; o[1] = a.y; o[2] = a.z; o[3] = a.w;
    o[4] = b.x; o[5] = b.y; o[6] = b.z; o[7] = b.w;
}
__device__ __forceinline__ void ld8(const bf16* p, float* o) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __bfloat1622float2(h[i]);
        o[2 * i] = f.x;
        o[2 * i + 1] = f.y;
    }
}
__device__ __forceinline__ void ld8(const f16* p, float* o) {
    uint4 u = *reinterpret_cast<const uint4*>(p);
    const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 f = __half22float2(h[i]);
        o[2 * i] = f.x;
        o[2 * i + 1] = f.y;
    }
}

// Eight consecutive elements to a 16-byte-aligned address, each rounded
// once to nearest even.
__device__ __forceinline__ void st8(float* p, const float* v) {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
}
__device__ __forceinline__ void st8(bf16* p, const float* v) {
    uint4 u;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
}
__device__ __forceinline__ void st8(f16* p, const float* v) {
    uint4 u;
    __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = u;
}

// Unary op codes: the order of the IR's UnaryKind.
__device__ __forceinline__ float unary_op(int op, float x) {
    switch (op) {
    case 0: return -x;
    case 1: return fabsf(x);
    case 2: return expf(x);
    case 3: return logf(x);
    case 4: return sqrtf(x);
    case 5: return 1.f / sqrtf(x);
    case 6: return 1.f / x;
    case 7: return tanhf(x);
    case 8: return erff(x);
    case 9: return 1.f / (1.f + expf(-x));
    case 10: return (x > 0.f || x != x) ? x : 0.f;
    case 11: return x / (1.f + expf(-x));
    case 12: return sinf(x);
    case 13: return cosf(x);
    default: return x;
    }
}

// Binary op codes: the order of the IR's BinaryKind.
__device__ __forceinline__ float binary_op(int op, float a, float b) {
    switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    case 3: return a / b;
    case 4: return powf(a, b);
    case 5: return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b);
    case 6: return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
    default: return a;
    }
}

__device__ __forceinline__ float gelu_op(int tanh_form, float v) {
    return tanh_form ? 0.5f * v * (1.f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)))
                     : 0.5f * v * (1.f + erff(v * 0.7071067811865476f));
}

// A value rounded to T and read back.
template <typename T> __device__ __forceinline__ float rnd(float v) {
    T t;
    st(&t, v);
    return ld(&t);
}

// ---- L2 prefetches and bulk copies (TMA, sm_90): the megakernel and the
// ring GEMV's variants. Every kernel file is compiled for the GPU's own
// arch, so the prefetch is a no-op before sm_90.
// RoPE of channel k (< r) of a head's row xr, with that token's cos/sin
// rows (of r): pairs (2i, 2i + 1) when interleaved, else the halves. In
// f32, before the caller rounds it to T (rope_impl, rope_qkv_cache_impl,
// the rope-doing decode attention).
template <typename T>
__device__ __forceinline__ float rope_rotate(const T* xr, const T* cs_row, const T* sn_row, int k, int r,
                                             int interleaved) {
    const int half = r / 2;
    float rot;
    if (interleaved) {
        rot = (k % 2 == 0) ? -ld(&xr[k + 1]) : ld(&xr[k - 1]);
    } else {
        rot = k < half ? -ld(&xr[k + half]) : ld(&xr[k - half]);
    }
    return ld(&xr[k]) * ld(&cs_row[k]) + rot * ld(&sn_row[k]);
}

__device__ __forceinline__ void prefetch_l2(const void* p, unsigned bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#endif
}
// A wait that has spun for about two seconds is a bug, not a slow GPU.
__device__ __forceinline__ void spin_guard(long long t0) {
    if (clock64() - t0 > (4ll << 30)) __trap();
}

// Bulk copies (TMA, sm_90) completing on an mbarrier: one instruction a
// tile where cp.async takes one a 16-byte piece.
__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void mbar_init(unsigned long long* b) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(b)) : "memory");
}
__device__ __forceinline__ void mbar_init_fence() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
// One arrival on barrier b expecting `bytes` more, for fills of several
// copies (`bulk_copy_expected` each): b's phase completes when all land.
__device__ __forceinline__ void bulk_expect(unsigned long long* b, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(b)), "r"(bytes)
                 : "memory");
}
// Copies `bytes` from global src to shared dst, which `bulk_expect`
// announced on b. The proxy fence orders this warp's earlier reads of dst
// before the copy's writes.
__device__ __forceinline__ void bulk_copy_expected(void* dst, const void* src, unsigned bytes, unsigned long long* b) {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
            smem_addr(dst)),
        "l"(src), "r"(bytes), "r"(smem_addr(b))
        : "memory");
}
// Expects `bytes` on barrier b, then copies them; b's phase completes when
// they land.
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, unsigned long long* b) {
    bulk_expect(b, bytes);
    bulk_copy_expected(dst, src, bytes, b);
}
// Waits until barrier b has completed the phase of parity `parity`.
__device__ __forceinline__ void mbar_wait(unsigned long long* b, unsigned parity) {
    const long long t0 = clock64();
    unsigned ready = 0;
    while (!ready) {
        asm volatile(
            "{\n"
            ".reg .pred p;\n"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
            "selp.u32 %0, 1, 0, p;\n"
            "}\n"
            : "=r"(ready)
            : "r"(smem_addr(b)), "r"(parity)
            : "memory");
        if (!ready) spin_guard(t0);
    }
}

// ---- Greedy picks (sample.cu, and the ring GEMV at an LM head): a
// row's largest value, its index and the sum of exp(x - max), merged.

// (m, i, s) merged with (om, oi, os): the larger max wins, the lower index
// on ties; the sums are rescaled to the winning max.
__device__ __forceinline__ void argmax_merge(float& m, int& i, float& s, float om, int oi, float os) {
    float nm = fmaxf(m, om);
    if (nm == -OPTC_INF) {
        // Both empty or all -inf: nothing to sum yet.
        if (oi < i) i = oi;
        return;
    }
    // A side at the maximum keeps its sum as it is (exp(0); inf - inf
    // would be NaN when the maximum is +inf).
    float a = s > 0.f ? (m == nm ? s : s * expf(m - nm)) : 0.f;
    float b = os > 0.f ? (om == nm ? os : os * expf(om - nm)) : 0.f;
    if (om > m || (om == m && oi < i)) i = oi;
    m = nm;
    s = a + b;
}

// Value v at index at, taken into a running (m, i, s) in index order: a
// larger value wins (the first index on ties); NaN never wins and takes
// no mass, as in the host sampler; values at the maximum add exactly 1, so
// k logits at +inf give log p = -ln k.
__device__ __forceinline__ void argmax_push(float& m, int& i, float& s, float v, int at) {
    if (v > m) {
        s = (s > 0.f ? s * expf(m - v) : 0.f) + 1.f;
        m = v;
        i = at;
    } else if (m > -OPTC_INF && v == v) {
        s += v == m ? 1.f : expf(v - m);
    }
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

// Every thread's (m, i, s) merged over the block, onto warp 0's lanes (the
// others keep their warp's); all the block's threads call it. A second call
// in one kernel needs a __syncthreads() after warp 0 has read the first's.
__device__ __forceinline__ void argmax_block(float& m, int& i, float& s) {
    __shared__ float sm[32], ss[32];
    __shared__ int si[32];
    argmax_warp(m, i, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) {
        sm[warp] = m;
        si[warp] = i;
        ss[warp] = s;
    }
    __syncthreads();
    if (warp == 0) {
        m = lane < nw ? sm[lane] : -OPTC_INF;
        i = lane < nw ? si[lane] : 0x7fffffff;
        s = lane < nw ? ss[lane] : 0.f;
        argmax_warp(m, i, s);
    }
}

// Row r's token in `out[r]`, log p(token) in `logprob[r]`, from its
// `chunks` parts, by one warp (L2 reads: other blocks wrote the parts).
__device__ void argmax_combine_row(const float* part, i64 r, int* out, float* logprob, int chunks) {
    const int lane = threadIdx.x & 31;
    float m = -OPTC_INF, s = 0.f;
    int bi = 0x7fffffff;
    for (int c = lane; c < chunks; c += 32) {
        const float* p = part + (r * chunks + c) * 3;
        argmax_merge(m, bi, s, __ldcg(&p[0]), __float_as_int(__ldcg(&p[1])), __ldcg(&p[2]));
    }
    argmax_warp(m, bi, s);
    if (lane == 0) {
        out[r] = bi == 0x7fffffff ? 0 : bi;
        // log p(best) = -log(sum exp(x - max)).
        logprob[r] = m == -OPTC_INF ? -OPTC_INF : -logf(s);
    }
}

// Sum over the warp, of floats or of 64-bit integers (exact masses).
template <typename V> __device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `scratch` holds 32 values.
template <typename V> __device__ __forceinline__ V block_sum(V v, V* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? scratch[lane] : V(0);
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    int nw = blockDim.x >> 5;
    v = lane < nw ? scratch[lane] : -OPTC_INF;
    return warp_max(v);
}

// A strided view of up to OPTC_MAX_RANK dims: element strides of the
// source and destination for a row-major walk over `dims`.
struct Strided {
    int rank;
    i64 dims[OPTC_MAX_RANK];
    i64 src[OPTC_MAX_RANK];
    i64 dst[OPTC_MAX_RANK];
};

// Offsets of linear index `i` (over `dims`) in the source and destination.
// 32-bit division when everything fits (64-bit division is many times
// slower on the GPU).
__device__ __forceinline__ void strided_offsets(const Strided& s, i64 i, i64* src, i64* dst) {
    i64 a = 0, b = 0;
    bool small = i < 0x7fffffff;
    for (int d = 0; d < s.rank; ++d) small = small && s.dims[d] < 0x7fffffff;
    if (small) {
        unsigned int j = (unsigned int)i;
        for (int d = s.rank - 1; d >= 0; --d) {
            unsigned int n = (unsigned int)s.dims[d];
            unsigned int c = j % n;
            j /= n;
            a += (i64)c * s.src[d];
            b += (i64)c * s.dst[d];
        }
    } else {
        for (int d = s.rank - 1; d >= 0; --d) {
            i64 n = s.dims[d];
            i64 c = i % n;
            i /= n;
            a += c * s.src[d];
            b += c * s.dst[d];
        }
    }
    *src = a;
    *dst = b;
}

// The operands of a generated elementwise kernel (a fused chain, see
// codegen/src/nvrtc/chains.rs): a row-major walk over the output's `dims`
// and each of up to OPTC_EW_LEAVES operands' element strides over them
// (0 where it broadcasts). Mirrored by `EwIndex` there.
#define OPTC_EW_LEAVES 8
struct EwIndex {
    int rank;
    i64 dims[OPTC_MAX_RANK];
    i64 st[OPTC_EW_LEAVES][OPTC_MAX_RANK];
};

// The offsets of output element `i` in the first L operands.
template <int L> __device__ __forceinline__ void ew_offsets(const EwIndex& ix, i64 i, i64 (&o)[L]) {
#pragma unroll
    for (int l = 0; l < L; ++l) o[l] = 0;
    bool small = i < 0x7fffffff;
    for (int d = 0; d < ix.rank; ++d) small = small && ix.dims[d] < 0x7fffffff;
    if (small) {
        unsigned int j = (unsigned int)i;
        for (int d = ix.rank - 1; d >= 0; --d) {
            const unsigned int n = (unsigned int)ix.dims[d], c = j % n;
            j /= n;
#pragma unroll
            for (int l = 0; l < L; ++l) o[l] += (i64)c * ix.st[l][d];
        }
    } else {
        for (int d = ix.rank - 1; d >= 0; --d) {
            const i64 n = ix.dims[d], c = i % n;
            i /= n;
#pragma unroll
            for (int l = 0; l < L; ++l) o[l] += c * ix.st[l][d];
        }
    }
}

// OPTC_TRACE (defined only by kernels/bench/step_bench.cu's timeline
// build, never by optc): each block's thread 0 logs when it reached
// pdl_wait() and when the wait returned, each warp's lane 0 when it
// finished (OPTC_TRACE_END at the end of the GEMV and decode `_impl`s),
// and thread 0 the marks a kernel sets (OPTC_TRACE_MARK(k), k from 3:
// the GEMVs' fills done, decode attention's steps), tagged with the
// launch's %gridid and the block, so the bench can lay a CUDA graph's
// kernels out in time: no profiler on the GPU machine does.
#ifdef OPTC_TRACE
enum : unsigned { OPTC_TRACE_ARRIVE = 0, OPTC_TRACE_RELEASE = 1, OPTC_TRACE_WARP_END = 2 };
constexpr unsigned OPTC_TRACE_EMPTY = ~0u;  // a reserved slot nobody wrote
struct OptcTraceRecord {
    unsigned long long grid, t;
    unsigned block, kind;
};
// A log and a count an SM (%smid), so that warps ending together on
// different SMs do not queue on one atomic (which would delay their
// grid's completion and so the timeline being measured). A block takes
// OPTC_TRACE_SLOTS records with one atomic as it reaches pdl_wait(), so
// what it logs after the release is a plain store, no round trip:
// slot 0 its arrival, 1 its release, 2 to 7 marks 3 to 8, then one a warp
// (warps past those slots log through an atomic of their own).
constexpr unsigned OPTC_TRACE_SMS = 256, OPTC_TRACE_PER_SM = 1u << 14, OPTC_TRACE_SLOTS = 16;
__device__ OptcTraceRecord optc_trace_log[OPTC_TRACE_SMS * OPTC_TRACE_PER_SM];
__device__ unsigned optc_trace_count[OPTC_TRACE_SMS];
__device__ __forceinline__ unsigned long long optc_trace_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned optc_trace_sm() {
    unsigned sm;
    asm("mov.u32 %0, %%smid;" : "=r"(sm));
    return sm % OPTC_TRACE_SMS;
}
__device__ __forceinline__ OptcTraceRecord optc_trace_record(unsigned long long t, unsigned kind) {
    unsigned long long g;
    asm("mov.u64 %0, %%gridid;" : "=l"(g));
    return {g, t, blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z), kind};
}
// The block's first reserved record (OPTC_TRACE_EMPTY: none), in shared
// memory: set by thread 0 before the wait, read by others after a barrier.
__device__ __forceinline__ unsigned& optc_trace_base() {
    __shared__ unsigned base;
    return base;
}
__device__ __forceinline__ void optc_trace_reserve() {
    const unsigned sm = optc_trace_sm();
    const unsigned i = atomicAdd(&optc_trace_count[sm], OPTC_TRACE_SLOTS);
    optc_trace_base() = i + OPTC_TRACE_SLOTS <= OPTC_TRACE_PER_SM ? sm * OPTC_TRACE_PER_SM + i : OPTC_TRACE_EMPTY;
}
// Record `kind` at time t into the block's slot, or (no slot) through an atomic.
__device__ __forceinline__ void optc_trace_put(unsigned slot, unsigned long long t, unsigned kind) {
    const unsigned base = optc_trace_base();
    if (slot < OPTC_TRACE_SLOTS) {
        if (base != OPTC_TRACE_EMPTY) optc_trace_log[base + slot] = optc_trace_record(t, kind);
        return;
    }
    const unsigned sm = optc_trace_sm();
    const unsigned i = atomicAdd(&optc_trace_count[sm], 1u);
    if (i < OPTC_TRACE_PER_SM) optc_trace_log[sm * OPTC_TRACE_PER_SM + i] = optc_trace_record(t, kind);
}
#define OPTC_TRACE_END()                                                                                     \
    do {                                                                                                     \
        if ((threadIdx.x & 31) == 0)                                                                         \
            optc_trace_put(8 + (threadIdx.x >> 5), optc_trace_now(), OPTC_TRACE_WARP_END);                   \
    } while (0)
#define OPTC_TRACE_MARK(k)                                               \
    do {                                                                 \
        if (threadIdx.x == 0) optc_trace_put((k) - 1, optc_trace_now(), k); \
    } while (0)
#else
#define OPTC_TRACE_END() \
    do {                 \
    } while (0)
#define OPTC_TRACE_MARK(k) \
    do {                   \
    } while (0)
#endif

// ---- Programmatic dependent launch (sm_90). A kernel launched with the
// programmatic-serialization attribute may start while the kernel before
// it in the stream still runs: before pdl_wait() it may only read what no
// kernel of this run writes and write nothing; pdl_wait() returns once the
// kernels before it have finished and their writes are visible. What that
// allows: weights; the run's inputs (positions, block tables: every run
// starts with the host's copy of its input arena, which orders it after
// the previous run); cached keys and values of earlier steps (a decode
// step writes only its own token's slot, and a block another sequence
// shares is full, so never written). Two exceptions work first and wait at
// their end: a generated chain whose operands are all ready before the run
// and whose results' buffers are new to it (`early` in chains.rs), and the
// embedding reading picked ids through the head under the same conditions
// (`gather_picked_*` in layout.cu; the host decides, run.rs).
// pdl_trigger() lets the next kernel start launching (it waits in turn).
// Without the attribute both return at once.
__device__ __forceinline__ void pdl_wait() {
#ifdef OPTC_TRACE
    if (threadIdx.x == 0) {
        const unsigned long long t0 = optc_trace_now();
        optc_trace_reserve();
        optc_trace_put(0, t0, OPTC_TRACE_ARRIVE);
    }
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
#ifdef OPTC_TRACE
    if (threadIdx.x == 0) optc_trace_put(1, optc_trace_now(), OPTC_TRACE_RELEASE);
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// The first statement of every kernel that streams nothing early: the
// next kernel may launch, and nothing here runs until the kernel ahead is
// done. Every thread waits before any returns, so the grid cannot finish
// before the one ahead. The host launches every kernel as a dependent
// (`launch!`); a unit test checks each entry point starts so or calls an
// `_impl` that waits itself.
__device__ __forceinline__ void pdl_start() {
    pdl_trigger();
    pdl_wait();
}

// ---- Tensor-core helpers (sm_80 and later): packing, m16n8k16 MMA,
// ldmatrix and cp.async, shared by the attention kernels.
__device__ __forceinline__ unsigned pack2(bf16*, float a, float b) {
    __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ unsigned pack2(f16*, float a, float b) {
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<unsigned*>(&h);
}
__device__ __forceinline__ float2 unpack2(bf16*, unsigned u) {
    return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&u));
}
__device__ __forceinline__ float2 unpack2(f16*, unsigned u) { return __half22float2(*reinterpret_cast<__half2*>(&u)); }

// c += a b for one m16n8k16 tile (row-major a, column-major b), f32
// accumulation, in the fragment layouts of the PTX ISA.
__device__ __forceinline__ void mma16816(bf16*, float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void mma16816(f16*, float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                         unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const void* p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const void* p) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

// A 16-byte copy to shared memory, bypassing L1 (cp.async).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
// The same, cached in L1 on the way: for what every block of a
// many-wave kernel reads (a GEMV's x and norm scale).
__device__ __forceinline__ void cp_async16_ca(void* smem, const void* gmem) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
// A 16-byte copy to shared memory that writes zeros when `valid` is false.
__device__ __forceinline__ void cp_async16_or_zero(void* smem, const void* gmem, bool valid) {
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
