// Searches cuBLASLt's whole configuration space for the linears of a
// batched decode step (W2: 32 rows, W3: 128) on a Llama-3.2-1B shape,
// against the heuristic's first choice that optc runs: every algorithm id
// cuBLASLt has for bf16 in / bf16 out / f32 compute, each at every tile,
// stage count, split-k count (with each reduction scheme it allows) and
// custom option it reports (the first eight), as cuBLASLt's own
// custom-find sample does.
// `OPTC_CUDA_GEMM_TUNE` only timed the heuristic's first eight (and lost,
// docs/perf.md); this says whether any configuration streams the skinny
// linears faster, and by how much, before optc grows an ahead-of-time
// search. Each shape has 16 weight copies (a step's layers, far past L2)
// launched back to back in a CUDA graph. A first pass times every valid
// configuration with 3 replays, a second the best 12 with 50; each of
// those is checked against the heuristic's output. On the GPU machine:
//   nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/lt_search kernels/bench/lt_search.cu -lcublasLt
//   /tmp/lt_search [SECONDS-A-SHAPE [ROWS...]]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>
#include <cublasLt.h>

#include "common.cuh"
#include "bench.cuh"
#include "lt.cuh"

// One configuration: the algorithm and the attributes it was given (read
// back for printing), with its time a launch.
struct Config {
    cublasLtMatmulAlgo_t algo;
    int id = -1;
    uint32_t tile = 0, stages = 0, splitk = 1, reduction = 0, swizzle = 0, custom = 0;
    uint16_t inner = 0, cluster = 0;
    size_t workspace = 0;
    float us = 0.f;
    const char* origin = "search";
};

// One attribute of an algorithm through `get` (its config or its
// capabilities: both getters have this shape).
template <typename V, typename Attr>
static V algo_get(cublasStatus_t (*get)(const cublasLtMatmulAlgo_t*, Attr, void*, size_t, size_t*),
                  const cublasLtMatmulAlgo_t& a, Attr at) {
    V v{};
    size_t w = 0;
    get(&a, at, &v, sizeof v, &w);
    return v;
}
template <typename V> static V config_get(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoConfigAttributes_t at) {
    return algo_get<V>(cublasLtMatmulAlgoConfigGetAttribute, a, at);
}
template <typename V> static V cap_get(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t at) {
    return algo_get<V>(cublasLtMatmulAlgoCapGetAttribute, a, at);
}

template <typename V> static void config_set(Config& c, cublasLtMatmulAlgoConfigAttributes_t at, V v) {
    cublasLtMatmulAlgoConfigSetAttribute(&c.algo, at, &v, sizeof v);
}

// Calls f(split, reduction) for every split-k count of `splits` that
// `algo` allows, with each reduction scheme it allows (none at 1).
template <typename F>
static void for_each_split(const cublasLtMatmulAlgo_t& algo, const std::vector<uint32_t>& splits, F f) {
    const int32_t splitk_ok = cap_get<int32_t>(algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT);
    const uint32_t red_mask = cap_get<uint32_t>(algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK);
    for (uint32_t split : splits) {
        if (split == 1) {
            f(split, 0u);
            continue;
        }
        if (!splitk_ok) break;
        for (uint32_t red = 1; red <= 4; red <<= 1)
            if (red & red_mask) f(split, red);
    }
}

static void read_back(Config& c) {
    c.id = config_get<int32_t>(c.algo, CUBLASLT_ALGO_CONFIG_ID);
    c.tile = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_TILE_ID);
    c.stages = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID);
    c.splitk = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
    c.reduction = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME);
    c.swizzle = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING);
    c.custom = config_get<uint32_t>(c.algo, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION);
    c.inner = config_get<uint16_t>(c.algo, CUBLASLT_ALGO_CONFIG_INNER_SHAPE_ID);
    c.cluster = config_get<uint16_t>(c.algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID);
}

// The ids an array capability lists (tiles, stages); empty when none.
static std::vector<uint32_t> cap_ids(const cublasLtMatmulAlgo_t& a, cublasLtMatmulAlgoCapAttributes_t at) {
    size_t bytes = 0;
    if (cublasLtMatmulAlgoCapGetAttribute(&a, at, nullptr, 0, &bytes) != CUBLAS_STATUS_SUCCESS || bytes == 0) return {};
    std::vector<uint32_t> ids(bytes / sizeof(uint32_t));
    size_t w = 0;
    cublasLtMatmulAlgoCapGetAttribute(&a, at, ids.data(), bytes, &w);
    return ids;
}

struct Problem : LtLinear {
    std::vector<bf16*> w;
    bf16 *x, *y;
    Problem(cublasLtHandle_t h, void* ws, size_t ws_bytes, int n, int k, int m, int layers)
        : LtLinear(h, ws, ws_bytes, n, k, m), w(layers) {
        const size_t wn = (size_t)n * k;
        for (auto& p : w) {
            CK(cudaMalloc(&p, wn * 2));
            fill_random<<<1024, 256>>>(p, wn, (unsigned)(size_t)p, 0.05f);
        }
        CK(cudaMalloc(&x, (size_t)m * k * 2));
        CK(cudaMalloc(&y, (size_t)m * n * 2));
        fill_random<<<256, 256>>>(x, (size_t)m * k, 7u, 1.f);
        CK(cudaDeviceSynchronize());
    }
    ~Problem() {
        for (auto p : w) cudaFree(p);
        cudaFree(x);
        cudaFree(y);
    }
    bool valid(Config& c) {
        cublasLtMatmulHeuristicResult_t r{};
        if (cublasLtMatmulAlgoCheck(h, op, la, lb, lc, lc, &c.algo, &r) != CUBLAS_STATUS_SUCCESS) return false;
        c.workspace = r.workspaceSize;
        return r.workspaceSize <= ws_bytes;
    }
    cublasStatus_t run(cudaStream_t s, const cublasLtMatmulAlgo_t& a, int layer) {
        return LtLinear::run(s, a, w[layer], x, y);
    }
    // Median µs a launch over `reps` replays of the 16 launches in a graph;
    // negative when a launch or the capture fails.
    float time(cudaStream_t s, const cublasLtMatmulAlgo_t& a, int reps) {
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
        bool ok = true;
        for (int l = 0; l < (int)w.size() && ok; ++l) ok = run(s, a, l) == CUBLAS_STATUS_SUCCESS;
        g = nullptr;
        const bool captured = cudaStreamEndCapture(s, &g) == cudaSuccess;
        if (!captured || !ok) {
            if (g) cudaGraphDestroy(g);
            cudaGetLastError();
            return -1.f;
        }
        if (cudaGraphInstantiate(&ge, g, 0) != cudaSuccess) {
            cudaGetLastError();
            cudaGraphDestroy(g);
            return -1.f;
        }
        const std::vector<float> ts = replay_ms(ge, s, 1, reps);
        CK(cudaGraphExecDestroy(ge));
        CK(cudaGraphDestroy(g));
        return ts[ts.size() / 2] * 1e3f / w.size();
    }
    // The output of layer 0's weights, for the check against the heuristic.
    std::vector<bf16> output(cudaStream_t s, const cublasLtMatmulAlgo_t& a, size_t count) {
        std::vector<bf16> o(count);
        CK(cudaMemsetAsync(y, 0, count * 2, s));
        if (run(s, a, 0) != CUBLAS_STATUS_SUCCESS) return {};
        CK(cudaStreamSynchronize(s));
        CK(cudaMemcpy(o.data(), y, count * 2, cudaMemcpyDeviceToHost));
        return o;
    }
};

static float max_rel_diff(const std::vector<bf16>& a, const std::vector<bf16>& b) {
    if (a.size() != b.size() || a.empty()) return INFINITY;
    float big = 0.f, diff = 0.f;
    for (size_t i = 0; i < a.size(); ++i) {
        const float p = __bfloat162float(a[i]), q = __bfloat162float(b[i]);
        big = std::max(big, std::fabs(q));
        diff = std::max(diff, std::fabs(p - q));
    }
    return big > 0.f ? diff / big : diff;
}

static void print(const char* shape, int m, const Config& c, double gb, const char* extra) {
    printf("rows %3d %-8s %-10s id %3d tile %3u stages %3u splitk %2u red %u swz %u custom %2u inner %2u cluster %2u "
           "ws %8zu  %7.2f us  %5.2f TB/s%s\n",
           m, shape, c.origin, c.id, c.tile, c.stages, c.splitk, c.reduction, c.swizzle, c.custom, c.inner, c.cluster,
           c.workspace, c.us, gb / (c.us * 1e-6) * 1e-3, extra);
}

int main(int argc, char** argv) {
    const double budget_s = argc > 1 ? atof(argv[1]) : 15.0;
    std::vector<int> rows_list;
    for (int i = 2; i < argc; ++i) rows_list.push_back(atoi(argv[i]));
    if (rows_list.empty()) rows_list = {32, 128};
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("%s, %d SMs, cuBLASLt %zu\n", prop.name, prop.multiProcessorCount, cublasLtGetVersion());
    constexpr int LAYERS = 16, FIRST_REPS = 3, FINAL_REPS = 50, FINALISTS = 12;
    struct Shape {
        const char* name;
        int n, k;
    } shapes[] = {{"qkv", 3072, 2048}, {"o", 2048, 2048}, {"gate/up", 16384, 2048}, {"down", 2048, 8192}};
    const std::vector<uint32_t> splits = {1, 2, 3, 4, 5, 6, 8, 12, 16};
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    cublasLtHandle_t h;
    CL(cublasLtCreate(&h));
    const size_t ws_bytes = 32 << 20;
    void* ws;
    CK(cudaMalloc(&ws, ws_bytes));
    int ids[512];
    int nids = 0;
    CL(cublasLtMatmulAlgoGetIds(h, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                                512, ids, &nids));
    printf("%d algorithm ids\n", nids);
    for (int m : rows_list) {
        for (auto& sh : shapes) {
            const auto t0 = std::chrono::steady_clock::now();
            auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
            Problem p(h, ws, ws_bytes, sh.n, sh.k, m, LAYERS);
            const double gb = (double)sh.n * sh.k * 2 * 1e-9;
            // The heuristic's choices first (the first is optc's).
            std::vector<Config> found;
            const auto heur = p.heuristic(32);
            for (size_t i = 0; i < heur.size(); ++i) {
                Config c;
                c.algo = heur[i].algo;
                c.workspace = heur[i].workspaceSize;
                c.origin = i == 0 ? "heuristic" : "heur-next";
                read_back(c);
                found.push_back(c);
            }
            const std::vector<bf16> ref = p.output(s, found[0].algo, (size_t)m * sh.n);
            size_t tried = 0, valid = 0, left = 0;
            for (auto& c : found) c.us = p.time(s, c.algo, FIRST_REPS);
            // A configuration cuBLASLt accepts is timed and kept.
            auto consider = [&](Config c) {
                ++tried;
                if (!p.valid(c)) return;
                ++valid;
                read_back(c);
                c.us = p.time(s, c.algo, FIRST_REPS);
                found.push_back(c);
            };
            // Each heuristic choice at every split-k count and reduction
            // scheme its algorithm allows (a fresh AlgoInit of a Hopper
            // algorithm lacks the heuristic's cluster and inner shapes).
            const size_t seeds = found.size();
            for (size_t i = 0; i < seeds; ++i) {
                const Config seed = found[i];
                for_each_split(seed.algo, splits, [&](uint32_t split, uint32_t red) {
                    if (split == seed.splitk && red == seed.reduction) return;
                    Config c = seed;
                    c.origin = "heur-split";
                    config_set(c, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, split);
                    config_set(c, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, red);
                    consider(c);
                });
            }
            // The heuristic's algorithm ids first, then the rest, so a search
            // cut short by its time budget has seen the likeliest ones.
            std::vector<int> order;
            for (auto& c : found)
                if (std::find(order.begin(), order.end(), c.id) == order.end()) order.push_back(c.id);
            for (int i = 0; i < nids; ++i)
                if (std::find(order.begin(), order.end(), ids[i]) == order.end()) order.push_back(ids[i]);
            for (int id : order) {
                Config base;
                if (cublasLtMatmulAlgoInit(h, CUBLAS_COMPUTE_32F, CUDA_R_32F, CUDA_R_16BF, CUDA_R_16BF, CUDA_R_16BF,
                                           CUDA_R_16BF, id, &base.algo) != CUBLAS_STATUS_SUCCESS)
                    continue;
                std::vector<uint32_t> tiles = cap_ids(base.algo, CUBLASLT_ALGO_CAP_TILE_IDS);
                std::vector<uint32_t> stages = cap_ids(base.algo, CUBLASLT_ALGO_CAP_STAGES_IDS);
                if (tiles.empty()) tiles.push_back(0);
                if (stages.empty()) stages.push_back(0);
                const int32_t custom_max = std::min(cap_get<int32_t>(base.algo, CUBLASLT_ALGO_CAP_CUSTOM_OPTION_MAX), 7);
                for (uint32_t tile : tiles)
                    for (uint32_t stage : stages)
                        for (int32_t custom = 0; custom <= custom_max; ++custom)
                            for_each_split(base.algo, splits, [&](uint32_t split, uint32_t red) {
                                if (elapsed() > budget_s) {
                                    ++left;
                                    return;
                                }
                                Config c = base;
                                config_set(c, CUBLASLT_ALGO_CONFIG_TILE_ID, tile);
                                config_set(c, CUBLASLT_ALGO_CONFIG_STAGES_ID, stage);
                                config_set(c, CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, (uint32_t)custom);
                                config_set(c, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, split);
                                config_set(c, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, red);
                                consider(c);
                            });
            }
            const Config heuristic = found[0];
            std::vector<Config> ok;
            for (auto& c : found)
                if (c.us > 0.f) ok.push_back(c);
            std::sort(ok.begin(), ok.end(), [](const Config& a, const Config& b) { return a.us < b.us; });
            if (ok.size() > FINALISTS) ok.resize(FINALISTS);
            printf("rows %3d %-8s n %5d k %5d: %zu configurations tried, %zu valid, %zu timed, %zu left for time, "
                   "%.1f s\n",
                   m, sh.name, sh.n, sh.k, tried, valid, found.size(), left, elapsed());
            Config hc = heuristic;
            hc.us = p.time(s, hc.algo, FINAL_REPS);
            print(sh.name, m, hc, gb, "");
            for (auto& c : ok) {
                c.us = p.time(s, c.algo, FINAL_REPS);
                char extra[64];
                snprintf(extra, sizeof extra, "  x%.2f  diff %.1e", hc.us / c.us,
                         max_rel_diff(p.output(s, c.algo, (size_t)m * sh.n), ref));
                print(sh.name, m, c, gb, extra);
            }
            fflush(stdout);
        }
    }
    return 0;
}
