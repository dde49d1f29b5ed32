// What the standalone CUDA benches share: a call checker that exits
// with the failing call and CUDA's message, and a deterministic fill of
// bf16 buffers with hashed values in [-scale, scale).
#pragma once
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>
#include <cuda_runtime.h>

#define CK(x)                                                                                      \
    do {                                                                                           \
        cudaError_t e = (x);                                                                       \
        if (e != cudaSuccess) {                                                                    \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e));     \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

__global__ void fill_random(bf16* p, size_t n, unsigned seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        p[i] = __float2bfloat16((float)(h & 0xffff) / 32768.f * scale - scale);
    }
}

// Replays graph `ge` on `s` `warm` times untimed, then `reps` times, each
// between its own two events; those `reps` times in ms, sorted.
static std::vector<float> replay_ms(cudaGraphExec_t ge, cudaStream_t s, int warm, int reps) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int i = 0; i < warm; ++i) CK(cudaGraphLaunch(ge, s));
    std::vector<float> ts;
    for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(e0, s));
        CK(cudaGraphLaunch(ge, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        ts.push_back(ms);
    }
    CK(cudaGetLastError());
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    std::sort(ts.begin(), ts.end());
    return ts;
}

// Captures what `body` launches on `s` into a CUDA graph and returns the
// median of `reps` replays in ms (after three untimed ones).
static float time_graph(cudaStream_t s, const std::function<void()>& body, int reps) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    body();
    CK(cudaStreamEndCapture(s, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    const std::vector<float> ts = replay_ms(ge, s, 3, reps);
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    return ts[ts.size() / 2];
}

// A launch on `s` as optc launches its kernels: with programmatic stream
// serialization (PDL: the kernel may start while the one ahead ends) when
// `pdl`. Use it in place (its config points at its own attribute).
struct PdlLaunch {
    cudaLaunchConfig_t c = {};
    cudaLaunchAttribute at[2];
    // With `cluster_x` or `cluster_y` > 1, in thread block clusters of
    // (cluster_x, cluster_y, 1) blocks.
    PdlLaunch(dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl = true, unsigned cluster_x = 1,
              unsigned cluster_y = 1) {
        c.gridDim = grid;
        c.blockDim = block;
        c.dynamicSmemBytes = smem;
        c.stream = s;
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        at[1].id = cudaLaunchAttributeClusterDimension;
        at[1].val.clusterDim.x = cluster_x;
        at[1].val.clusterDim.y = cluster_y;
        at[1].val.clusterDim.z = 1;
        // The cluster attribute alone sits in slot 0 when PDL is off.
        if (!pdl) at[0] = at[1];
        c.attrs = at;
        c.numAttrs = (pdl ? 1 : 0) + (cluster_x * cluster_y > 1 ? 1 : 0);
    }
    PdlLaunch(const PdlLaunch&) = delete;
    PdlLaunch& operator=(const PdlLaunch&) = delete;
};
