// Where does a W1 decode step's time go between its kernels? The kernels
// of one Llama-3.2-1B decode step at one token, as optc's step graph
// launches them (per layer: the QKV GEMV with the norm, rope and cache
// write; decode attention; the o GEMV; gate/up with the norm and SwiGLU;
// down; then the final norm and the LM head), back to back with
// programmatic dependent launch in a CUDA graph, over random weights and
// a random KV cache. Variants leave kernels out, or change how x is
// filled, so the differences say what each costs on the critical path
// (not what it costs alone, which ncu measures); `rings` variants run the
// linears of at least GEMV_RING_MIN_BYTES through the ring GEMV, as optc
// does, or every linear (`rings everywhere`). Prints microseconds a step,
// median of 50 replays, at three context lengths (STEP_ONLY picks
// variants by name; STEP_CHECK=1 first checks the ring variants' results
// against optc's rings, bit for bit, and stops if any differs).
// On the GPU machine, from the repo root:
//   nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/step_bench kernels/bench/step_bench.cu && /tmp/step_bench
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <string>
#include <cuda_runtime.h>

#include "common.cuh"
#include "gemv.cu"
#include "attention.cu"
#include "sample.cu"
#include "step_launch.cuh"

OPTC_GEMV_ROWS(bf16, bf16, 1)
OPTC_GEMV_RING(bf16, bf16)
OPTC_PAGED_ATTENTION(bf16, bf16, 64, 64)
OPTC_ARGMAX(bf16, bf16)

// The layer GEMVs through shared-memory rings (gemv_ring_impl): one
// geometry set a template argument, S tiles of CH elements a warp.
template <int S, int CH> struct RingSet {
    using Plain = GemvRing<8, 1, S, CH>;
    using Glu = GemvRing<4, 1, S, CH>;
    using Rope = GemvRing<4, 2, S, CH>;
};
// x left as it is in shared memory: what the fill costs, by difference.
struct NoFill {
    static constexpr int EXTRA = 0;
    __device__ void prefetch(bf16*, int, int) const {}
    template <int P> __device__ void run(bf16*, int, int) const {}
};
__global__ void __launch_bounds__(128) glu_nofill(const bf16* w, bf16* y, int n, int k) {
    gemv_impl<bf16, 1, GemvGlu>(NoFill{}, GemvGluStore<bf16>{y, nullptr}, w, n, k, 1);
}
__global__ void __launch_bounds__(256) plain_nofill(const bf16* w, bf16* y, int n, int k) {
    gemv_impl<bf16, 1, GemvPlain>(NoFill{}, GemvStore<bf16>{y, nullptr}, w, n, k, 1);
}
// The o projection in other register geometries (`o_geo` 1 to 3): two
// stages instead of one, the next kernel launched only at the end, four
// warps a block.
template <typename Geo>
__global__ void __launch_bounds__(256) o_geo(const bf16* x, const bf16* w, bf16* y, int n, int k) {
    gemv_impl<bf16, 1, Geo>(GemvCopy<bf16>{x}, GemvStore<bf16>{y, nullptr}, w, n, k, 1);
}
using OGeo1 = GemvGeometry<8, 1, 4>;
using OGeo2 = GemvGeometry<8, 1, 8, true, false>;
using OGeo3 = GemvGeometry<4, 1, 8>;
// The QKV projection through a ring (optc keeps the rope GEMVs on
// registers; this is the `rings everywhere` comparison).
__global__ void __launch_bounds__(128)
    ring_norm_rope(const bf16* a, const bf16* r, const bf16* nw, bf16* sum, const bf16* w, int n, int k,
                   const bf16* cs, const bf16* sn, bf16* q, bf16* kc, bf16* vc, const i64* slots, int hq, int hkv,
                   int d) {
    gemv_ring_impl<bf16, 1, GemvRing<4, 2, 4, 1024>>(
        GemvAddRmsNorm<bf16, 1>{a, r, nw, sum, 1e-5f},
        GemvRopeStore<bf16>{nullptr, cs, sn, q, kc, vc, slots, hq, hkv, d, d, d, 0}, w, n, k, 1);
}

// The QKV GEMV (norm, rope, cache write) in other register geometries
// (`qkv_geo` 1 and 2): four warps a block, and two loads a stage; a warp
// keeps its two rows (a RoPE pair).
template <typename Geo>
__global__ void __launch_bounds__(256)
    qkv_geo(const bf16* a, const bf16* r, const bf16* nw, bf16* sum, float eps, const bf16* w, int n, int k,
            const bf16* cs, const bf16* sn, bf16* q, bf16* kc, bf16* vc, const i64* slots, int hq, int hkv, int d) {
    gemv_impl<bf16, 1, Geo>(GemvAddRmsNorm<bf16, 1>{a, r, nw, sum, eps},
                            GemvRopeStore<bf16>{nullptr, cs, sn, q, kc, vc, slots, hq, hkv, d, d, d, 0}, w, n, k, 1);
}
using QkvGeo1 = GemvGeometry<4, 2, 4>;
using QkvGeo2 = GemvGeometry<8, 2, 2>;

// The o projection that also does the norm before gate/up at its end
// (`o_norm` variants): the last block to finish adds the residual to o's
// result, normalizes it and writes x, so gate/up's blocks copy x
// (`gemv_glu_ring`) instead of each redoing the add and the norm (their
// fill takes 3.8 µs traced on the H200, a plain copy 1.0). For a
// Llama-3.2-1B layer: n = k = 2,048, 256 blocks, 8 elements a thread.
__global__ void __launch_bounds__(256) o_then_norm(const bf16* x, const bf16* w, bf16* y, int n, int k,
                                                   const bf16* resid, const bf16* nw, bf16* sum, bf16* xn, float eps,
                                                   int* counter) {
    gemv_impl<bf16, 1, GemvPlain>(GemvCopy<bf16>{x}, GemvStore<bf16>{y, nullptr}, w, n, k, 1);
    __shared__ int last;
    __shared__ float part[8];
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        last = atomicAdd(counter, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int i = threadIdx.x * 8, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float v[8], r[8], g[8], ss = 0.f;
    const uint4 yv = __ldcg(reinterpret_cast<const uint4*>(y + i));
    ld8(reinterpret_cast<const bf16*>(&yv), v);
    ld8(resid + i, r);
    ld8(nw + i, g);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        v[e] = rnd<bf16>(v[e] + r[e]);
        ss += v[e] * v[e];
    }
    st8(sum + i, v);
    ss = warp_sum(ss);
    if (lane == 0) part[warp] = ss;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int q = 0; q < 8; ++q) t += part[q];
    const float inv = 1.f / sqrtf(t / (float)n + eps);
#pragma unroll
    for (int e = 0; e < 8; ++e) v[e] = g[e] * (v[e] * inv);
    st8(xn + i, v);
    if (threadIdx.x == 0) *counter = 0;
}

// Weights a later kernel reads first, asked of L2 by a latency-bound
// kernel while DRAM would otherwise idle (the `pf` variants). Two ranges
// of `bytes` each (a GLU's gate rows and its up rows; `b` may be null),
// in 4 KiB pieces spread over the grid's threads. `bytes` is a multiple
// of 16, the ranges 16-byte aligned. (optc's decode attention asked this
// way for a session, behind a switch; it lost at every size on an H200,
// see docs/perf.md, twelfth session.)
struct L2Ahead {
    const unsigned char *a, *b;
    long long bytes;
    __device__ void operator()() const {
        if (!a || bytes <= 0) return;
        constexpr long long PIECE = 4096;
        const int ranges = b ? 2 : 1;
        const long long pieces = (bytes + PIECE - 1) / PIECE * ranges;
        const long long threads = (long long)gridDim.x * gridDim.y * gridDim.z * blockDim.x;
        const long long tid =
            (((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
        for (long long i = tid; i < pieces; i += threads) {
            const long long off = i / ranges * PIECE;
            prefetch_l2((i % ranges ? b : a) + off, (unsigned)(bytes - off < PIECE ? bytes - off : PIECE));
        }
    }
};

// Gate/up's first weights asked of L2 while the latency-bound kernels
// before it (QKV, attention, o) leave DRAM idle (`pf` variants): the
// first `rows` gate rows and as many up rows of a [2f, k] gate/up matrix,
// through L2Ahead. A ring warp's first tiles are rows gw and gw + warps (GemvRingGlu: 1,584 warps at 132 SMs), so
// rows below 3,168 are what gate/up's rings load first.
__device__ L2Ahead gu_ahead(const bf16* gu, int rows, int f, int k) {
    const auto* a = reinterpret_cast<const unsigned char*>(gu);
    return L2Ahead{a, a + (i64)f * k * sizeof(bf16), (long long)rows * k * (long long)sizeof(bf16)};
}
// x as GemvCopy fills it, with the prefetch before o's wait (BEFORE) or
// at the start of its fill, right after the wait.
template <bool BEFORE> struct CopyAndPrefetch : GemvCopy<bf16> {
    L2Ahead ahead;
    __device__ void prefetch(bf16*, int, int) const {
        if (BEFORE) ahead();
    }
    template <int P> __device__ void run(bf16* xs, int m, int k) const {
        if (!BEFORE) ahead();
        GemvCopy<bf16>::run<P>(xs, m, k);
    }
};
template <bool BEFORE>
__global__ void __launch_bounds__(256) o_pf(const bf16* x, const bf16* w, bf16* y, int n, int k, const bf16* gu,
                                            int rows, int f) {
    gemv_impl<bf16, 1, GemvPlain>(CopyAndPrefetch<BEFORE>{{x}, gu_ahead(gu, rows, f, k)},
                                  GemvStore<bf16>{y, nullptr}, w, n, k, 1);
}
// Eight-warp decode attention with the prefetch at its start (`at` 0:
// before its wait, so while QKV runs) or at each block's end (1: while o
// runs).
__global__ void __launch_bounds__(256) att8_pf(const bf16* q, const bf16* kc, const bf16* vc, const i64* positions,
                                               const i64* block_tables, int max_blocks, bf16* out, float* part,
                                               int* counters, int ntok, int hq, int hkv, int bs, float scale,
                                               int window, const bf16* gu, int rows, int f, int k, int at) {
    const L2Ahead ahead = gu_ahead(gu, rows, f, k);
    if (at == 0) ahead();
    paged_decode_impl<bf16, 64, 8>(q, kc, vc, positions, block_tables, max_blocks, out, part, counters, ntok, hq,
                                   hkv, bs, scale, window);
    if (at == 1) ahead();
}

// The big linears' rings in the variants `GemvRing` offers (L2 prefetch
// past the ring, before or after the wait; slots filled by bulk copies):
// `RingVar` picks one per kind, `ring_var` a variant's set.
template <typename Geo>
__global__ void __launch_bounds__(128) gu_ring(const bf16* a, const bf16* r, const bf16* nw, bf16* sum, float eps,
                                               const bf16* w, bf16* y, int n, int k) {
    gemv_ring_impl<bf16, 1, Geo>(GemvAddRmsNorm<bf16, 1>{a, r, nw, sum, eps}, GemvGluStore<bf16>{y, nullptr}, w, n,
                                 k, 1);
}
template <typename Geo>
__global__ void __launch_bounds__(256) plain_ring(const bf16* x, const bf16* w, bf16* y, int n, int k) {
    gemv_ring_impl<bf16, 1, Geo>(GemvCopy<bf16>{x}, GemvStore<bf16>{y, nullptr}, w, n, k, 1);
}
using GuBase = GemvRingGlu;
using GuL2Before2 = GemvRing<4, 1, 4, 1024, 2, false>;
using GuL2After2 = GemvRing<4, 1, 4, 1024, 2, true>;
using GuL2After4 = GemvRing<4, 1, 4, 1024, 4, true>;
using GuTma = GemvRing<4, 1, 4, 1024, 0, false, true>;
using GuPre2 = GemvRing<4, 1, 4, 1024, 0, false, false, 2>;
using GuPre0 = GemvRing<4, 1, 4, 1024, 0, false, false, 0>;
using PlainBase = GemvRingPlain;
using PlainL2Before4 = GemvRing<8, 1, 4, 1024, 4, false>;
using PlainL2After4 = GemvRing<8, 1, 4, 1024, 4, true>;
using PlainTma = GemvRing<8, 1, 4, 1024, 0, false, true>;
using PlainPre2 = GemvRing<8, 1, 4, 1024, 0, false, false, 2>;
// One ring set: gate/up, down and the LM head's kernels.
struct RingVar {
    decltype(&gu_ring<GuBase>) gu;
    decltype(&plain_ring<PlainBase>) down, head;
};
static const RingVar ring_vars[] = {
    {gu_ring<GuBase>, plain_ring<PlainBase>, plain_ring<PlainBase>},            // 0: optc's
    {gu_ring<GuL2Before2>, plain_ring<PlainBase>, plain_ring<PlainBase>},       // 1
    {gu_ring<GuL2After2>, plain_ring<PlainBase>, plain_ring<PlainBase>},        // 2
    {gu_ring<GuL2After4>, plain_ring<PlainBase>, plain_ring<PlainBase>},        // 3
    {gu_ring<GuBase>, plain_ring<PlainL2Before4>, plain_ring<PlainBase>},       // 4
    {gu_ring<GuBase>, plain_ring<PlainL2After4>, plain_ring<PlainBase>},        // 5
    {gu_ring<GuL2After2>, plain_ring<PlainL2After4>, plain_ring<PlainBase>},    // 6
    {gu_ring<GuBase>, plain_ring<PlainBase>, plain_ring<PlainL2After4>},        // 7
    {gu_ring<GuL2After2>, plain_ring<PlainL2After4>, plain_ring<PlainL2After4>}, // 8
    {gu_ring<GuTma>, plain_ring<PlainBase>, plain_ring<PlainBase>},             // 9
    {gu_ring<GuBase>, plain_ring<PlainTma>, plain_ring<PlainBase>},             // 10
    {gu_ring<GuBase>, plain_ring<PlainBase>, plain_ring<PlainTma>},             // 11
    {gu_ring<GuTma>, plain_ring<PlainTma>, plain_ring<PlainTma>},               // 12
    {gu_ring<GuPre2>, plain_ring<PlainBase>, plain_ring<PlainBase>},            // 13
    {gu_ring<GuPre0>, plain_ring<PlainBase>, plain_ring<PlainBase>},            // 14
    {gu_ring<GuPre2>, plain_ring<PlainPre2>, plain_ring<PlainBase>},            // 15
};
constexpr int RING_VARS = sizeof(ring_vars) / sizeof(ring_vars[0]);

#ifdef OPTC_TRACE
#include <map>
#include <cstring>
// The timeline build (`-DOPTC_TRACE`, the `steptrace` stage of
// scripts/gpu-run.sh): replays a variant's graph with the kernels logging
// per block when they reached pdl_wait(), when it returned and when each
// warp ended (common.cuh), and prints, for each kernel of a layer
// (averaged over layers 1 to L - 2 and 10 replays), where its time on the
// critical path went:
//   crit  = its release (first block out of pdl_wait) to the next kernel's
//   run   = release to its last warp's end
//   gap   = its end to the next kernel's release (completion, flush, PDL)
//   early = its first block's arrival at pdl_wait to its release (how
//           long its prefetched weights had to stream)
//   all   = its last block's arrival to its release (< 0: blocks arrived
//           after the release, so not all were resident before it)
//   marks = what a kernel's OPTC_TRACE_MARKs say (common.cuh): m3 the
//           GEMVs' fill done; for decode attention m3 its queries' loads
//           issued, m4 warp 0's chunks done, m5 all warps' (the merge
//           follows)
// A block reserves its records with one atomic as it reaches pdl_wait()
// and writes the rest as plain stores (common.cuh), so marks no longer
// cost a round trip each; the traced step is still a little slower than
// the untraced one printed above it (not yet measured since that change).
struct KernelSpan {
    unsigned long long arrive0 = ~0ull, arrive1 = 0, release = ~0ull, end = 0;
    std::map<unsigned, unsigned long long> released;  // block: its release
    std::vector<std::pair<unsigned, const OptcTraceRecord*>> marks;
};
constexpr int MARKS = 3;  // kinds 3 to 5
static void trace_step(cudaGraphExec_t ge, const std::vector<const char*>& names, int per_layer, int layers) {
    const int reps = 10, n = (int)names.size();
    std::vector<double> crit(n, 0), run(n, 0), gap(n, 0), early(n, 0), all(n, 0), total(1, 0);
    // Marks: mean over blocks of (mark - the block's release), and the last
    // block's (mark - the kernel's release); count of blocks that set it.
    std::vector<std::vector<double>> mark_mean(n, std::vector<double>(MARKS, 0)),
        mark_last(n, std::vector<double>(MARKS, 0));
    std::vector<std::vector<int>> mark_seen(n, std::vector<int>(MARKS, 0));
    std::vector<OptcTraceRecord> log, all_sms(OPTC_TRACE_SMS * OPTC_TRACE_PER_SM);
    unsigned long long tick = ~0ull;
    for (int rep = 0; rep < reps; ++rep) {
        std::vector<unsigned> counts(OPTC_TRACE_SMS, 0);
        CK(cudaMemcpyToSymbol(optc_trace_count, counts.data(), counts.size() * 4));
        // Reserved slots nobody writes stay OPTC_TRACE_EMPTY (all ones).
        void* log_ptr = nullptr;
        CK(cudaGetSymbolAddress(&log_ptr, optc_trace_log));
        CK(cudaMemset(log_ptr, 0xff, all_sms.size() * sizeof(OptcTraceRecord)));
        CK(cudaGraphLaunch(ge, stream));
        CK(cudaStreamSynchronize(stream));
        CK(cudaMemcpyFromSymbol(counts.data(), optc_trace_count, counts.size() * 4));
        CK(cudaMemcpyFromSymbol(all_sms.data(), optc_trace_log, all_sms.size() * sizeof(OptcTraceRecord)));
        log.clear();
        for (unsigned sm = 0; sm < OPTC_TRACE_SMS; ++sm) {
            const unsigned c = std::min(counts[sm], OPTC_TRACE_PER_SM);
            log.insert(log.end(), all_sms.begin() + sm * OPTC_TRACE_PER_SM,
                       all_sms.begin() + sm * OPTC_TRACE_PER_SM + c);
        }
        std::map<unsigned long long, KernelSpan> by_grid;
        std::vector<unsigned long long> stamps;
        for (const OptcTraceRecord& r : log) {
            if (r.kind == OPTC_TRACE_EMPTY) continue;
            KernelSpan& k = by_grid[r.grid];
            if (r.kind == OPTC_TRACE_WARP_END) {
                k.end = std::max(k.end, r.t);
            } else if (r.kind == OPTC_TRACE_ARRIVE) {
                k.arrive0 = std::min(k.arrive0, r.t);
                k.arrive1 = std::max(k.arrive1, r.t);
            } else if (r.kind == OPTC_TRACE_RELEASE) {
                k.release = std::min(k.release, r.t);
                k.released[r.block] = r.t;
            } else if (r.kind >= 3 && r.kind < 3 + MARKS) {
                k.marks.push_back({r.kind - 3, &r});
            }
            stamps.push_back(r.t);
        }
        std::sort(stamps.begin(), stamps.end());
        for (size_t i = 1; i < stamps.size(); ++i)
            if (stamps[i] > stamps[i - 1]) tick = std::min(tick, stamps[i] - stamps[i - 1]);
        std::vector<KernelSpan*> ks;
        for (auto& [g, k] : by_grid) ks.push_back(&k);
        std::sort(ks.begin(), ks.end(), [](const KernelSpan* a, const KernelSpan* b) { return a->release < b->release; });
        if ((int)ks.size() != n) {
            printf("  trace: %zu kernels logged, %d launched (%zu records)\n", ks.size(), n, log.size());
            return;
        }
        for (int i = 0; i < n; ++i) {
            const KernelSpan& k = *ks[i];
            const double next = i + 1 < n ? (double)ks[i + 1]->release : (double)k.end;
            crit[i] += (next - k.release) / reps;
            run[i] += ((double)k.end - k.release) / reps;
            gap[i] += (next - k.end) / reps;
            early[i] += ((double)k.release - k.arrive0) / reps;
            all[i] += ((double)k.release - k.arrive1) / reps;
            std::vector<double> sum(MARKS, 0), last(MARKS, 0);
            std::vector<int> seen(MARKS, 0);
            for (auto& [m, r] : k.marks) {
                auto it = k.released.find(r->block);
                if (it == k.released.end()) continue;
                sum[m] += (double)r->t - it->second;
                last[m] = std::max(last[m], (double)r->t - k.release);
                ++seen[m];
            }
            for (int m = 0; m < MARKS; ++m)
                if (seen[m]) {
                    mark_mean[i][m] += sum[m] / seen[m] / reps;
                    mark_last[i][m] += last[m] / reps;
                    mark_seen[i][m] = 1;
                }
        }
        total[0] += ((double)ks[n - 1]->end - ks[0]->arrive0) / reps;
    }
    printf("  timeline (ns; globaltimer tick %llu ns), first arrival to last end %.0f ns:\n", tick, total[0]);
    printf("    %-10s %7s %7s %7s %7s %7s | marks: mean from own release / last from first release\n", "kernel",
           "crit", "run", "gap", "early", "all");
    auto row = [&](const char* name, const std::vector<int>& at) {
        double c = 0, r = 0, g = 0, e = 0, a = 0;
        for (int i : at) c += crit[i], r += run[i], g += gap[i], e += early[i], a += all[i];
        const double m = at.size();
        printf("    %-10s %7.0f %7.0f %7.0f %7.0f %7.0f |", name, c / m, r / m, g / m, e / m, a / m);
        for (int k = 0; k < MARKS; ++k) {
            if (!mark_seen[at[0]][k]) continue;
            double mm = 0, ml = 0;
            for (int i : at) mm += mark_mean[i][k], ml += mark_last[i][k];
            printf(" m%d %.0f/%.0f", k + 3, mm / m, ml / m);
        }
        printf("\n");
    };
    double layer_sum = 0;
    for (int j = 0; j < per_layer; ++j) {
        std::vector<int> at;
        for (int l = 1; l < layers - 1; ++l) at.push_back(l * per_layer + j);
        row(names[j], at);
        for (int i : at) layer_sum += crit[i] / at.size();
    }
    printf("    %-10s %7.0f\n", "a layer", layer_sum);
    for (int i = layers * per_layer; i < n; ++i) row(names[i], {i});
}
#endif

// Which kernels a variant launches, and how.
struct Variant {
    const char* name;
    bool qkv, attention, o, gate_up, down, head;
    // 0: optc's register GEMVs; 1: the ring GEMV for weights of at least
    // GEMV_RING_MIN_BYTES (gate/up, down, LM head), as optc does; 2: rings
    // for every linear; 3 and 4: optc's rings and the QKV's or the o's.
    int rings = 0;
    // 1: gate/up and QKV without the norm (a plain copy of x); 2: gate/up
    // and down with no fill at all.
    int fill = 0;
    int nsplit = 1;  // decode attention's splits
    int o_geo = 0;   // 0: GemvPlain; 1 to 3: OGeo1 to OGeo3
    int att_warps = 4;
    int ring_var = 0;  // the big linears' ring kernels (`ring_vars`)
    int qkv_geo = 0;   // 0: GemvNorm; 1, 2: QkvGeo1, QkvGeo2
    // The step's end: 0, a final norm kernel and the LM head; 1, the norm
    // in the LM head's ring (on the logits row) and the chunked argmax
    // kernel after it (optc's default); 2, the norm and the greedy pick in
    // the ring (`gemv_norm_ring_argmax`, OPTC_CUDA_PICK_IN_GEMV=1); 3, the
    // norm in the ring and the cluster argmax (16 blocks, 8 where 16 do
    // not fit; OPTC_CUDA_ARGMAX_CLUSTER).
    int head_mode = 0;
    bool o_norm = false;  // o_then_norm, then gate/up copying x
    // Gate/up's first `pf_rows` gate and up rows asked of L2 (gu_ahead)
    // by: 1, o before its wait; 2, o after it; 3, attention at its start;
    // 4, attention at its end.
    int pf = 0, pf_rows = 0;
    // Gate/up's ring grid: 0, three blocks an SM (optc's); 1, the fewest
    // blocks that keep its warps' most units a warp, so every warp gets
    // the same number (no warps left with one unit more after the rest).
    int gu_grid = 0;
};

// STEP_CHECK=1: each ring variant's gate/up, down and LM head results
// against optc's rings on the same operands, bit for bit (a lane sums the
// same pieces in the same order whichever way they reached the ring).
static int check_ring_vars(const bf16* h, const bf16* resid, const bf16* nw, bf16* sum, const bf16* wgu,
                           const bf16* wd, const bf16* whead, int D, int F, int V, unsigned grid) {
    const int n_out[3] = {F, D, V};
    std::vector<bf16*> want(3), got(3);
    for (int i = 0; i < 3; ++i) {
        CK(cudaMalloc(&want[i], (size_t)n_out[i] * 2));
        CK(cudaMalloc(&got[i], (size_t)n_out[i] * 2));
    }
    // Down's operand: any F-wide row.
    bf16* glu_x;
    CK(cudaMalloc(&glu_x, (size_t)F * 2));
    fill_random<<<64, 256>>>(glu_x, F, 77, 1.f);
    int bad = 0;
    auto run = [&](const RingVar& r, std::vector<bf16*>& out) {
        launch(r.gu, grid, 1, 1, 128, 2 * D * 2 + (64 << 10), h, resid, nw, sum, 1e-5f, wgu, out[0], F, D);
        launch(r.down, grid, 1, 1, 256, F * 2 + (64 << 10), (const bf16*)glu_x, wd, out[1], D, F);
        launch(r.head, grid, 1, 1, 256, D * 2 + (64 << 10), h, whead, out[2], V, D);
        CK(cudaStreamSynchronize(stream));
    };
    run(ring_vars[0], want);
    for (int v = 1; v < RING_VARS; ++v) {
        for (int i = 0; i < 3; ++i) CK(cudaMemset(got[i], 0xff, (size_t)n_out[i] * 2));
        run(ring_vars[v], got);
        const char* kind[3] = {"gate/up", "down", "LM head"};
        for (int i = 0; i < 3; ++i) {
            std::vector<unsigned short> a(n_out[i]), b(n_out[i]);
            CK(cudaMemcpy(a.data(), want[i], a.size() * 2, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(b.data(), got[i], b.size() * 2, cudaMemcpyDeviceToHost));
            const bool same = a == b;
            bad += !same;
            printf("  check ring variant %2d %-8s %s\n", v, kind[i], same ? "bit-equal" : "DIFFERS");
        }
    }
    for (int i = 0; i < 3; ++i) {
        CK(cudaFree(want[i]));
        CK(cudaFree(got[i]));
    }
    CK(cudaFree(glu_x));
    return bad;
}

// STEP_ONLY: the variants to run, names separated by '|' (all if unset).
static bool wanted(const char* name) {
    const char* only = getenv("STEP_ONLY");
    if (!only || !*only) return true;
    const std::string list = std::string("|") + only + "|";
    return list.find(std::string("|") + name + "|") != std::string::npos;
}

int main() {
    const int L = 16, D = 2048, F = 8192, HQ = 32, HKV = 8, HD = 64, V = 128256, BS = 16, CTX = 512;
    const int QKV = (HQ + 2 * HKV) * HD;
    const float eps = 1e-5f, scale = 0.125f;
    int sms = 0;
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    CK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    // Activations (one token).
    bf16 *h = dalloc(D, 1, 1.f), *resid = dalloc(D, 2, 1.f), *sum = dalloc(D, 3, 1.f);
    bf16 *q = dalloc(HQ * HD, 4, 1.f), *att = dalloc(HQ * HD, 5, 1.f), *ob = dalloc(D, 6, 1.f);
    bf16 *glu = dalloc(F, 7, 1.f), *down = dalloc(D, 8, 1.f), *logits = dalloc(V, 9, 1.f);
    bf16 *cs = dalloc(HD, 10, 1.f), *sn = dalloc(HD, 11, 1.f), *fnorm = dalloc(D, 12, 1.f);
    bf16* xn = dalloc(D, 13, 1.f);  // x for gate/up, normalized at o's end (`o_norm`)
    // Weights and caches per layer.
    std::vector<bf16*> wqkv, wo, wgu, wd, nw1, nw2, kc, vc;
    for (int l = 0; l < L; ++l) {
        wqkv.push_back(dalloc((size_t)QKV * D, 100 + l, 0.05f));
        wo.push_back(dalloc((size_t)D * D, 200 + l, 0.05f));
        wgu.push_back(dalloc((size_t)2 * F * D, 300 + l, 0.05f));
        wd.push_back(dalloc((size_t)D * F, 400 + l, 0.05f));
        nw1.push_back(dalloc(D, 500 + l, 1.f));
        nw2.push_back(dalloc(D, 600 + l, 1.f));
        kc.push_back(dalloc((size_t)CTX * HKV * HD, 700 + l, 1.f));
        vc.push_back(dalloc((size_t)CTX * HKV * HD, 800 + l, 1.f));
    }
    bf16* whead = dalloc((size_t)V * D, 900, 0.05f);
    // One sequence whose blocks are scattered over the cache.
    const int max_blocks = CTX / BS;
    std::vector<i64> table(max_blocks);
    for (int b = 0; b < max_blocks; ++b) table[b] = (b * 7) % max_blocks;
    i64 *dtable, *dpos, *dslot;
    CK(cudaMalloc(&dtable, max_blocks * 8));
    CK(cudaMalloc(&dpos, 8));
    CK(cudaMalloc(&dslot, 8));
    CK(cudaMemcpy(dtable, table.data(), max_blocks * 8, cudaMemcpyHostToDevice));
    float* part;
    int *counters, *picks;
    CK(cudaMalloc(&part, 64 * HQ * (HD + 2) * 4));
    CK(cudaMalloc(&counters, 64 * 4));
    CK(cudaMemset(counters, 0, 64 * 4));
    // The greedy pick (token, log probability) and the logits row the
    // LM head's fused norm reads (row 0).
    CK(cudaMalloc(&picks, 8));
    i64* drow;
    CK(cudaMalloc(&drow, 8));
    CK(cudaMemset(drow, 0, 8));
    const unsigned att_smem = 4 * 2 * 2 * 32 * (HD + 8) * 2;
    CK(cudaFuncSetAttribute(paged_decode_bf16_d64, cudaFuncAttributeMaxDynamicSharedMemorySize, att_smem));
    CK(cudaFuncSetAttribute(paged_decode8_bf16_d64, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * att_smem));
    CK(cudaFuncSetAttribute(att8_pf, cudaFuncAttributeMaxDynamicSharedMemorySize, 2 * att_smem));
    for (auto f : {(const void*)gemv_ring_bf16_m1, (const void*)gemv_norm_glu_ring_bf16_m1,
                   (const void*)gemv_glu_ring_bf16_m1,
                   (const void*)ring_norm_rope, (const void*)gemv_norm_ring_bf16_m1,
                   (const void*)gemv_norm_ring_argmax_bf16_m1})
        CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 << 10));
    for (const RingVar& r : ring_vars)
        for (auto f : {(const void*)r.gu, (const void*)r.down, (const void*)r.head})
            CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 << 10));
    CK(cudaDeviceSynchronize());
    // Ring launches as the host makes them (GemvRingBlock, GEMV_RING_* in
    // kernels/src/cuda.rs): three blocks an SM; x (and the norm's scale)
    // then 64 KB of rings a block.
    const unsigned ring_grid = 3 * sms, ring = 64 << 10;
    const int big = 24 << 20;  // GEMV_RING_MIN_BYTES
    // Gate/up's F units over GemvRingGlu's 4 warps a block: the most a warp
    // takes on ring_grid blocks, then the fewest blocks that keep it.
    const unsigned gu_most = (F + 4 * ring_grid - 1) / (4 * ring_grid);
    const unsigned gu_even = (F + 4 * gu_most - 1) / (4 * gu_most);
    printf("== gate/up: %u units a warp at most on %u blocks; even on %u\n", gu_most, ring_grid, gu_even);
    // The cluster argmax's blocks a row, as optc picks them (pick.rs's
    // argmax_cluster_fit): 16 where such clusters fit, else 8; 256
    // threads a block (optc's default).
    unsigned argmax_blocks = 8;
    {
        // A card without non-portable clusters refuses this: 8 then.
        cudaFuncSetAttribute((const void*)argmax_cluster_bf16, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
        // As optc (Gpu::prefer_shared_memory): the SM's largest carveout.
        cudaFuncSetAttribute((const void*)argmax_cluster_bf16, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
        cudaLaunchConfig_t c = {};
        c.gridDim = dim3(1, 16, 1);
        c.blockDim = dim3(256);
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeClusterDimension;
        at[0].val.clusterDim.x = 1;
        at[0].val.clusterDim.y = 16;
        at[0].val.clusterDim.z = 1;
        c.attrs = at;
        c.numAttrs = 1;
        int clusters = 0;
        if (cudaOccupancyMaxActiveClusters(&clusters, (const void*)argmax_cluster_bf16, &c) == cudaSuccess &&
            clusters > 0)
            argmax_blocks = 16;
        cudaGetLastError();
        printf("== cluster argmax: %u blocks a row\n", argmax_blocks);
    }
    if (getenv("STEP_CHECK") && atoi(getenv("STEP_CHECK")) == 1) {
        const int bad = check_ring_vars(h, resid, nw2[0], sum, wgu[0], wd[0], whead, D, F, V, ring_grid);
        printf("== ring variants: %d results differ from optc's rings\n", bad);
        if (bad) return 1;
    }

    const Variant variants[] = {
        {"whole step", true, true, true, true, true, true},
        {"no attention", true, false, true, true, true, true},
        {"no attention, no LM head", true, false, true, true, true, false},
        {"attention only", false, true, false, false, false, false},
        {"QKV only", true, false, false, false, false, false},
        {"o only", false, false, true, false, false, false},
        {"gate/up only", false, false, false, true, false, false},
        {"down only", false, false, false, false, true, false},
        {"LM head only", false, false, false, false, false, true},
        {"QKV only, no norm", true, false, false, false, false, false, 0, 1},
        {"gate/up only, no norm", false, false, false, true, false, false, 0, 1},
        {"gate/up only, no fill", false, false, false, true, false, false, 0, 2},
        {"down only, no fill", false, false, false, false, true, false, 0, 2},
        {"whole step, attention split 4", true, true, true, true, true, true, 0, 0, 4},
        {"rings: whole step", true, true, true, true, true, true, 1},
        {"rings: no attention", true, false, true, true, true, true, 1},
        {"rings: no QKV", false, true, true, true, true, true, 1},
        {"rings: no o", true, true, false, true, true, true, 1},
        {"rings: no LM head", true, true, true, true, true, false, 1},
        {"rings: QKV + attention + o only", true, true, true, false, false, false, 1},
        {"rings: gate/up + down only", false, false, false, true, true, false, 1},
        {"rings: gate/up only", false, false, false, true, false, false, 1},
        {"rings: down only", false, false, false, false, true, false, 1},
        {"rings: LM head only", false, false, false, false, false, true, 1},
        {"rings and the QKV's: whole step", true, true, true, true, true, true, 3},
        {"rings and the o's: whole step", true, true, true, true, true, true, 4},
        {"rings everywhere: whole step", true, true, true, true, true, true, 2},
        {"rings, o in two stages: whole step", true, true, true, true, true, true, 1, 0, 1, 1},
        {"rings, o triggering late: whole step", true, true, true, true, true, true, 1, 0, 1, 2},
        {"rings, o of 4 warps: whole step", true, true, true, true, true, true, 1, 0, 1, 3},
        {"rings, attention of 8 warps: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8},
        {"rings, attention of 8 warps: no LM head", true, true, true, true, true, false, 1, 0, 1, 0, 8},
        {"rings, attention of 8 warps: QKV + attention + o only", true, true, true, false, false, false, 1, 0, 1, 0, 8},
        // The ring variants (`ring_vars`), eight-warp attention as optc.
        {"8 warps, gate/up L2 +2 before: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 1},
        {"8 warps, gate/up L2 +2 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 2},
        {"8 warps, gate/up L2 +4 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 3},
        {"8 warps, down L2 +4 before: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 4},
        {"8 warps, down L2 +4 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 5},
        {"8 warps, gate/up +2 and down +4 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 6},
        {"8 warps, LM head L2 +4 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 7},
        {"8 warps, all L2 after: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 8},
        {"8 warps, gate/up by bulk copies: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 9},
        {"8 warps, down by bulk copies: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 10},
        {"8 warps, LM head by bulk copies: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 11},
        {"8 warps, every ring by bulk copies: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 12},
        {"8 warps, gate/up 2 tiles before the wait: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 13},
        {"8 warps, gate/up no tiles before the wait: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 14},
        {"8 warps, gate/up and down 2 tiles before the wait: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 15},
        {"8 warps, head as optc before: norm in the ring, argmax kernel: whole step", true, true, true, true, true,
         true, 1, 0, 1, 0, 8, 0, 0, 1},
        {"8 warps, head with the pick in the ring: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8,
         0, 0, 2},
        {"8 warps, head: norm in the ring, cluster argmax: whole step", true, true, true, true, true, true, 1, 0, 1,
         0, 8, 0, 0, 3},
        {"8 warps, head: norm in the ring, cluster argmax, gate/up units even: whole step", true, true, true, true,
         true, true, 1, 0, 1, 0, 8, 0, 0, 3, false, 0, 0, 1},
        {"rings: gate/up only, units even", false, false, false, true, false, false, 1, 0, 1, 0, 4, 0, 0, 0, false, 0,
         0, 1},
        {"8 warps, the gate/up norm at o's end: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, true},
        {"8 warps, QKV of 4 warps: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0, 1},
        {"8 warps, QKV in stages of 2: whole step", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0, 2},
        {"8 warps, gate/up 8 MB to L2 by o before its wait", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, false, 1, 1024},
        {"8 warps, gate/up 16 MB to L2 by o before its wait", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, false, 1, 2048},
        {"8 warps, gate/up 8 MB to L2 by o after its wait", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0, 0,
         0, false, 2, 1024},
        {"8 warps, gate/up 16 MB to L2 by o after its wait", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, false, 2, 2048},
        {"8 warps, gate/up 4 MB to L2 by attention at its start", true, true, true, true, true, true, 1, 0, 1, 0, 8,
         0, 0, 0, false, 3, 512},
        {"8 warps, gate/up 8 MB to L2 by attention at its start", true, true, true, true, true, true, 1, 0, 1, 0, 8,
         0, 0, 0, false, 3, 1024},
        {"8 warps, gate/up 16 MB to L2 by attention at its start", true, true, true, true, true, true, 1, 0, 1, 0,
         8, 0, 0, 0, false, 3, 2048},
        {"8 warps, gate/up 4 MB to L2 by attention at its end", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, false, 4, 512},
        {"8 warps, gate/up 8 MB to L2 by attention at its end", true, true, true, true, true, true, 1, 0, 1, 0, 8, 0,
         0, 0, false, 4, 1024},
        {"8 warps, gate/up 16 MB to L2 by attention at its end", true, true, true, true, true, true, 1, 0, 1, 0, 8,
         0, 0, 0, false, 4, 2048},
        {"8 warps, gate/up 24 MB to L2 by attention at its end", true, true, true, true, true, true, 1, 0, 1, 0, 8,
         0, 0, 0, false, 4, 3072},
    };
    for (int pos : {127, 255, 383}) {
        const i64 p = pos;
        CK(cudaMemcpy(dpos, &p, 8, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(dslot, &p, 8, cudaMemcpyHostToDevice));
        printf("== decode at position %d (%d keys)\n", pos, pos + 1);
        for (const Variant& v : variants) {
            if (!wanted(v.name)) continue;
            // Whether a linear of this weight takes the ring.
            auto rings = [&](size_t bytes) {
                return v.rings == 2 || (v.rings >= 1 && bytes >= (size_t)big) ||
                       (v.rings == 3 && bytes == (size_t)QKV * D * 2) || (v.rings == 4 && bytes == (size_t)D * D * 2);
            };
            cudaGraph_t g;
            cudaGraphExec_t ge;
            // The kernels' roles in launch order (the timeline's names).
            std::vector<const char*> names;
            [[maybe_unused]] const int per_layer = v.qkv + v.attention + v.o + v.gate_up + v.down;
            CK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
            for (int l = 0; l < L; ++l) {
                const bf16 *hc = h, *rc = resid;
                for (auto [on, name] : {std::pair{v.qkv, "QKV"}, {v.attention, "attention"}, {v.o, "o"},
                                        {v.gate_up, "gate/up"}, {v.down, "down"}})
                    if (on) names.push_back(name);
                if (v.qkv && v.fill == 1)
                    launch(gemv_rope_bf16_m1, QKV / 16, 1, 1, 256, D * 2, hc, (const bf16*)wqkv[l],
                           (const bf16*)nullptr, QKV, D, 1, (const bf16*)cs, (const bf16*)sn, q, kc[l], vc[l],
                           (const i64*)dslot, HQ, HKV, HD, HD, HD, 0);
                else if (v.qkv && rings((size_t)QKV * D * 2))
                    launch(ring_norm_rope, ring_grid, 1, 1, 128, 2 * D * 2 + ring, hc, rc, (const bf16*)nw1[l],
                           sum, (const bf16*)wqkv[l], QKV, D, (const bf16*)cs, (const bf16*)sn, q, kc[l], vc[l],
                           (const i64*)dslot, HQ, HKV, HD);
                else if (v.qkv && v.qkv_geo == 1)
                    launch(qkv_geo<QkvGeo1>, QKV / 8, 1, 1, 128, 2 * D * 2, hc, rc, (const bf16*)nw1[l], sum, eps,
                           (const bf16*)wqkv[l], QKV, D, (const bf16*)cs, (const bf16*)sn, q, kc[l], vc[l],
                           (const i64*)dslot, HQ, HKV, HD);
                else if (v.qkv && v.qkv_geo == 2)
                    launch(qkv_geo<QkvGeo2>, QKV / 16, 1, 1, 256, 2 * D * 2, hc, rc, (const bf16*)nw1[l], sum, eps,
                           (const bf16*)wqkv[l], QKV, D, (const bf16*)cs, (const bf16*)sn, q, kc[l], vc[l],
                           (const i64*)dslot, HQ, HKV, HD);
                else if (v.qkv)
                    launch(gemv_norm_rope_bf16_m1, QKV / 16, 1, 1, 256, 2 * D * 2, hc, rc, (const bf16*)nw1[l], sum,
                           eps, (const bf16*)wqkv[l], (const bf16*)nullptr, QKV, D, 1, (const bf16*)cs,
                           (const bf16*)sn, q, kc[l], vc[l], (const i64*)dslot, HQ, HKV, HD, HD, HD, 0);
                if (v.attention && (v.pf == 3 || v.pf == 4))
                    launch(att8_pf, 1, HKV, v.nsplit, 256, 2 * att_smem, (const bf16*)q, (const bf16*)kc[l],
                           (const bf16*)vc[l], (const i64*)dpos, (const i64*)dtable, max_blocks, att, part, counters,
                           1, HQ, HKV, BS, scale, 0, (const bf16*)wgu[l], v.pf_rows, F, D, v.pf - 3);
                else if (v.attention)
                    launch(v.att_warps == 8 ? paged_decode8_bf16_d64 : paged_decode_bf16_d64, 1, HKV, v.nsplit,
                           32 * v.att_warps, v.att_warps / 4 * att_smem, (const bf16*)q, (const bf16*)kc[l],
                           (const bf16*)vc[l], (const i64*)dpos, (const i64*)dtable, max_blocks, att, part, counters,
                           1, HQ, HKV, BS, scale, 0);
                if (v.o && v.o_norm)
                    launch(o_then_norm, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D,
                           (const bf16*)resid, (const bf16*)nw2[l], sum, xn, eps, counters + 40);
                else if (v.o && v.pf == 1)
                    launch(o_pf<true>, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D,
                           (const bf16*)wgu[l], v.pf_rows, F);
                else if (v.o && v.pf == 2)
                    launch(o_pf<false>, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D,
                           (const bf16*)wgu[l], v.pf_rows, F);
                else if (v.o && rings((size_t)D * D * 2))
                    launch(gemv_ring_bf16_m1, ring_grid, 1, 1, 256, D * 2 + ring, (const bf16*)att,
                           (const bf16*)wo[l], (const bf16*)nullptr, ob, D, D, 1);
                else if (v.o && v.o_geo == 1)
                    launch(o_geo<OGeo1>, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D);
                else if (v.o && v.o_geo == 2)
                    launch(o_geo<OGeo2>, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D);
                else if (v.o && v.o_geo == 3)
                    launch(o_geo<OGeo3>, D / 4, 1, 1, 128, D * 2, (const bf16*)att, (const bf16*)wo[l], ob, D, D);
                else if (v.o)
                    launch(gemv_bf16_m1, D / 8, 1, 1, 256, D * 2, (const bf16*)att, (const bf16*)wo[l],
                           (const bf16*)nullptr, ob, D, D, 1);
                if (v.gate_up && v.o_norm)
                    launch(gemv_glu_ring_bf16_m1, ring_grid, 1, 1, 128, D * 2 + ring, (const bf16*)xn,
                           (const bf16*)wgu[l], (const bf16*)nullptr, glu, F, D, 1);
                else if (v.gate_up && v.fill == 1)
                    launch(gemv_glu_bf16_m1, F / 4, 1, 1, 128, D * 2, (const bf16*)ob, (const bf16*)wgu[l],
                           (const bf16*)nullptr, glu, F, D, 1);
                else if (v.gate_up && v.fill == 2)
                    launch(glu_nofill, F / 4, 1, 1, 128, D * 2, (const bf16*)wgu[l], glu, F, D);
                else if (v.gate_up && v.ring_var && rings((size_t)2 * F * D * 2))
                    launch(ring_vars[v.ring_var].gu, ring_grid, 1, 1, 128, 2 * D * 2 + ring, (const bf16*)ob,
                           (const bf16*)sum, (const bf16*)nw2[l], resid, eps, (const bf16*)wgu[l], glu, F, D);
                else if (v.gate_up && rings((size_t)2 * F * D * 2))
                    launch(gemv_norm_glu_ring_bf16_m1, v.gu_grid ? gu_even : ring_grid, 1, 1, 128, 2 * D * 2 + ring,
                           (const bf16*)ob,
                           (const bf16*)sum, (const bf16*)nw2[l], resid, eps, (const bf16*)wgu[l],
                           (const bf16*)nullptr, glu, F, D, 1);
                else if (v.gate_up)
                    launch(gemv_norm_glu_bf16_m1, F / 4, 1, 1, 128, 2 * D * 2, (const bf16*)ob, (const bf16*)sum,
                           (const bf16*)nw2[l], resid, eps, (const bf16*)wgu[l], (const bf16*)nullptr, glu, F, D,
                           1);
                if (v.down && v.fill == 2)
                    launch(plain_nofill, D / 8, 1, 1, 256, F * 2, (const bf16*)wd[l], down, D, F);
                else if (v.down && v.ring_var && rings((size_t)D * F * 2))
                    launch(ring_vars[v.ring_var].down, ring_grid, 1, 1, 256, F * 2 + ring, (const bf16*)glu,
                           (const bf16*)wd[l], down, D, F);
                else if (v.down && rings((size_t)D * F * 2))
                    launch(gemv_ring_bf16_m1, ring_grid, 1, 1, 256, F * 2 + ring, (const bf16*)glu,
                           (const bf16*)wd[l], (const bf16*)nullptr, down, D, F, 1);
                else if (v.down)
                    launch(gemv_bf16_m1, D / 8, 1, 1, 256, F * 2, (const bf16*)glu, (const bf16*)wd[l],
                           (const bf16*)nullptr, down, D, F, 1);
            }
            if (v.head && v.head_mode == 1) {
                names.push_back("LM head");
                names.push_back("argmax");
                launch(gemv_norm_ring_bf16_m1, ring_grid, 1, 1, 256, 2 * D * 2 + ring, (const bf16*)down,
                       (const bf16*)resid, (const bf16*)fnorm, (bf16*)nullptr, eps, (const i64*)drow, 1,
                       (const bf16*)whead, (const bf16*)nullptr, logits, V, D, 1);
                launch(argmax_part_bf16, 1, (V + 1023) / 1024, 1, 256, 0, (const bf16*)logits, part, V, 1024,
                       counters + 32, picks, (float*)(picks + 1));
            } else if (v.head && v.head_mode == 3) {
                names.push_back("LM head");
                names.push_back("argmax");
                launch(gemv_norm_ring_bf16_m1, ring_grid, 1, 1, 256, 2 * D * 2 + ring, (const bf16*)down,
                       (const bf16*)resid, (const bf16*)fnorm, (bf16*)nullptr, eps, (const i64*)drow, 1,
                       (const bf16*)whead, (const bf16*)nullptr, logits, V, D, 1);
                launch_clustered(argmax_cluster_bf16, argmax_blocks, 1, argmax_blocks, 1, 256, 0, (const bf16*)logits,
                                 V, picks, (float*)(picks + 1));
            } else if (v.head && v.head_mode == 2) {
                names.push_back("LM head");
                launch(gemv_norm_ring_argmax_bf16_m1, ring_grid, 1, 1, 256, 2 * D * 2 + ring, (const bf16*)down,
                       (const bf16*)resid, (const bf16*)fnorm, (bf16*)nullptr, eps, (const i64*)drow, 1,
                       (const bf16*)whead, (const bf16*)nullptr, logits, V, D, 1, part, counters + 32, picks,
                       (float*)(picks + 1));
            } else if (v.head) {
                names.push_back("final norm");
                names.push_back("LM head");
                // The final norm is a kernel of its own at this width (no
                // prologue past GEMV_PROLOGUE_MAX_N); its stand-in is a
                // one-block GEMV of the same cost class.
                launch(gemv_norm_bf16_m1, 1, 1, 1, 256, 2 * D * 2, (const bf16*)down, (const bf16*)resid,
                       (const bf16*)fnorm, sum, eps, (const i64*)nullptr, 0, (const bf16*)wd[0],
                       (const bf16*)nullptr, h, 16, D, 1);
                if (v.ring_var && rings((size_t)V * D * 2))
                    launch(ring_vars[v.ring_var].head, ring_grid, 1, 1, 256, D * 2 + ring, (const bf16*)h,
                           (const bf16*)whead, logits, V, D);
                else if (rings((size_t)V * D * 2))
                    launch(gemv_ring_bf16_m1, ring_grid, 1, 1, 256, D * 2 + ring, (const bf16*)h,
                           (const bf16*)whead, (const bf16*)nullptr, logits, V, D, 1);
                else
                    launch(gemv_bf16_m1, (V + 7) / 8, 1, 1, 256, D * 2, (const bf16*)h, (const bf16*)whead,
                           (const bf16*)nullptr, logits, V, D, 1);
            }
            CK(cudaStreamEndCapture(stream, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            const std::vector<float> ts = replay_times(ge);
            printf("  %-34s %8.1f us  (min %.1f)\n", v.name, ts[ts.size() / 2], ts[0]);
#ifdef OPTC_TRACE
            const char* want = getenv("STEP_TRACE");
            if (strstr(v.name, want ? want : "rings: whole step") || (want && !strcmp(want, "all")))
                trace_step(ge, names, per_layer, L);
#endif
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }
    }
    return 0;
}
