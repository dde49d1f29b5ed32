// Microbenchmark of the decode GEMV geometries (gemv.cu's GemvGeometry) on
// the linears of a Llama-3.2-1B decode step at one token: QKV (norm in the
// x load), O, gate/up (norm + SwiGLU), down, and the LM head. Each layer has
// its own weights (1.9 GB for 16 layers, far past L2), launched back to back
// in a CUDA graph, as a decode step replays them. Prints microseconds a
// launch for every geometry of every kind, checks each against the first
// geometry (same per-lane summation order, so the outputs must be equal),
// then times the whole 16-layer sequence with the first and the fastest
// geometries. On the GPU machine, from the repo root:
//   nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/gemv_bench kernels/bench/gemv_bench.cu && /tmp/gemv_bench
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <type_traits>
#include <cuda_runtime.h>

#include "common.cuh"
#include "gemv.cu"
#include "bench.cuh"

template <typename Geo, bool NORM, bool GLU>
__global__ void __launch_bounds__(Geo::WARPS * 32)
    bench_gemv(const bf16* a, const bf16* r, const bf16* nw, bf16* sum, const bf16* w, bf16* y, int n, int k) {
    using Store = std::conditional_t<GLU, GemvGluStore<bf16>, GemvStore<bf16>>;
    if constexpr (NORM)
        gemv_impl<bf16, 1, Geo>(GemvAddRmsNorm<bf16, 1>{a, r, nw, sum, 1e-5f}, Store{y, nullptr}, w, n, k, 1);
    else
        gemv_impl<bf16, 1, Geo>(GemvCopy<bf16>{a}, Store{y, nullptr}, w, n, k, 1);
}

struct Args {
    const bf16 *a, *r, *nw;
    bf16* sum;
    const bf16* w;
    bf16* y;
    int n, k;  // n: output width (GLU: columns; w has 2n rows)
};
typedef void (*Launch)(cudaStream_t, const Args&);

// Launch with programmatic dependent launch (each GEMV may start while the
// one before it finishes).
static bool g_pdl = false;

template <typename Geo, bool NORM, bool GLU> void launch(cudaStream_t s, const Args& g) {
    const int per = Geo::WARPS * Geo::R;
    const int blocks = (g.n + per - 1) / per;
    const int smem = g.k * 2;
    static bool attr = false;
    if (!attr) {
        CK(cudaFuncSetAttribute(bench_gemv<Geo, NORM, GLU>, cudaFuncAttributeMaxDynamicSharedMemorySize, 96 << 10));
        attr = true;
    }
    PdlLaunch l(dim3(blocks), dim3(Geo::WARPS * 32), smem, s, g_pdl);
    CK(cudaLaunchKernelEx(&l.c, bench_gemv<Geo, NORM, GLU>, g.a, g.r, g.nw, g.sum, g.w, g.y, g.n, g.k));
}

struct Variant {
    const char* name;
    Launch f[2];  // plain, GLU
};
// Geometry: warps, rows a warp, loads a stage, pipelined, early PDL trigger.
#define V(W, R, U, P, E)                                                                                   \
    Variant {                                                                                              \
        "w" #W " r" #R " u" #U " " #P " " #E,                                                               \
            {launch<GemvGeometry<W, R, U, P, E>, false, false>, launch<GemvGeometry<W, R, U, P, E>, false, true>}, \
    }
#define VN(W, R, U, P, E)                                                                                  \
    Variant {                                                                                              \
        "w" #W " r" #R " u" #U " " #P " " #E,                                                               \
            {launch<GemvGeometry<W, R, U, P, E>, true, false>, launch<GemvGeometry<W, R, U, P, E>, true, true>}, \
    }

struct Kind {
    const char* name;
    bool norm, glu;
    int n, k;
    std::vector<Variant> variants;
};

int main() {
    const int L = 16, D = 2048;
    // The last variant of each list triggers the next launch at its end.
    std::vector<Variant> plain = {V(4, 2, 4, false, true), V(4, 2, 4, true, true), V(8, 1, 4, true, true),
                                  V(8, 1, 8, true, true),  V(8, 2, 4, true, true), V(16, 1, 8, true, true),
                                  V(8, 1, 8, true, false)};
    std::vector<Variant> normed = {VN(4, 2, 4, false, true), VN(4, 2, 4, true, true), VN(8, 1, 4, true, true),
                                   VN(8, 1, 8, true, true),  VN(8, 2, 4, true, true), VN(16, 1, 8, true, true),
                                   VN(8, 2, 4, true, false)};
    std::vector<Variant> glu = {VN(4, 1, 4, false, true), VN(4, 1, 4, true, true), VN(8, 1, 4, true, true),
                                VN(2, 1, 8, true, true),  VN(4, 2, 4, true, true), VN(16, 1, 4, true, true),
                                VN(8, 1, 4, true, false)};
    std::vector<Kind> kinds = {
        {"qkv (norm)", true, false, 3072, D, normed},
        {"o", false, false, D, D, plain},
        {"gate/up (norm, glu)", true, true, 8192, D, glu},
        {"down", false, false, D, 8192, plain},
        {"lm head", false, false, 128256, D, plain},
    };
    bf16 *x, *res, *nw, *sum, *y, *yref;
    CK(cudaMalloc(&x, 8192 * 2));
    CK(cudaMalloc(&res, 8192 * 2));
    CK(cudaMalloc(&nw, 8192 * 2));
    CK(cudaMalloc(&sum, 8192 * 2));
    CK(cudaMalloc(&y, 128256 * 2));
    CK(cudaMalloc(&yref, 128256 * 2));
    fill_random<<<64, 256>>>(x, 8192, 1, 1.f);
    fill_random<<<64, 256>>>(res, 8192, 2, 1.f);
    fill_random<<<64, 256>>>(nw, 8192, 3, 1.f);
    std::vector<std::vector<bf16*>> w(kinds.size());
    for (size_t i = 0; i < kinds.size(); ++i) {
        const size_t rows = (size_t)kinds[i].n * (kinds[i].glu ? 2 : 1);
        const int copies = i == 4 ? 1 : L;
        for (int l = 0; l < copies; ++l) {
            bf16* p;
            CK(cudaMalloc(&p, rows * kinds[i].k * 2));
            fill_random<<<1024, 256>>>(p, rows * kinds[i].k, 100 + 16 * i + l, 0.05f);
            w[i].push_back(p);
        }
    }
    CK(cudaDeviceSynchronize());
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    auto args = [&](size_t i, int l, bf16* out) {
        const Kind& kd = kinds[i];
        return Args{x, kd.norm ? res : nullptr, kd.norm ? nw : nullptr, kd.norm ? sum : nullptr,
                    w[i][l % w[i].size()], out, kd.n, kd.k};
    };
    std::vector<int> best(kinds.size(), 0), best_pdl(kinds.size(), 0);
    for (size_t i = 0; i < kinds.size(); ++i) {
        const Kind& kd = kinds[i];
        const size_t bytes = (size_t)kd.n * (kd.glu ? 2 : 1) * kd.k * 2;
        printf("== %s: n %d k %d, %.1f MB a launch (us a launch, plain | PDL)\n", kd.name, kd.n, kd.k, bytes / 1e6);
        float best_us[2] = {1e30f, 1e30f};
        for (size_t v = 0; v < kd.variants.size(); ++v) {
            Launch f = kd.variants[v].f[kd.glu ? 1 : 0];
            g_pdl = false;
            f(s, args(i, 0, v == 0 ? yref : y));
            CK(cudaStreamSynchronize(s));
            CK(cudaGetLastError());
            float diff = 0.f;
            if (v > 0) {
                std::vector<unsigned short> a(kd.n), b(kd.n);
                CK(cudaMemcpy(a.data(), yref, kd.n * 2, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(b.data(), y, kd.n * 2, cudaMemcpyDeviceToHost));
                for (int j = 0; j < kd.n; ++j) diff += a[j] != b[j];
            }
            float us[2];
            for (int pdl = 0; pdl < 2; ++pdl) {
                g_pdl = pdl;
                const int launches = 16;
                std::vector<std::pair<Launch, Args>> seq;
                for (int l = 0; l < launches; ++l) seq.push_back({f, args(i, l, y)});
                us[pdl] = time_graph(s, [&] { for (auto& [f, a] : seq) f(s, a); }, 20) * 1000.f / launches;
                if (us[pdl] < best_us[pdl]) best_us[pdl] = us[pdl], (pdl ? best_pdl : best)[i] = (int)v;
            }
            printf("  %-26s %8.2f us %6.2f TB/s | %8.2f us %6.2f TB/s  %s\n", kd.variants[v].name, us[0],
                   bytes / us[0] / 1e6, us[1], bytes / us[1] / 1e6, diff == 0.f ? "equal" : "DIFFERENT");
            if (diff != 0.f) printf("    %g of %d outputs differ\n", diff, kd.n);
        }
    }
    const char* names[4] = {"first geometries", "fastest geometries", "fastest with PDL, PDL", "last (late trigger), PDL"};
    for (int mode = 0; mode < 4; ++mode) {
        g_pdl = mode >= 2;
        std::vector<std::pair<Launch, Args>> seq;
        auto pick = [&](size_t i) {
            const Kind& kd = kinds[i];
            const int v = mode == 0 ? 0 : mode == 1 ? best[i] : mode == 2 ? best_pdl[i] : (int)kd.variants.size() - 1;
            return kd.variants[v].f[kd.glu ? 1 : 0];
        };
        for (int l = 0; l < L; ++l)
            for (size_t i = 0; i < 4; ++i) seq.push_back({pick(i), args(i, l, y)});
        seq.push_back({pick(4), args(4, 0, y)});
        printf("16 layers + LM head, %s: %.1f us\n", names[mode], time_graph(s, [&] { for (auto& [f, a] : seq) f(s, a); }, 20) * 1000.f);
    }
    return 0;
}
