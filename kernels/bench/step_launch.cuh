// What the step benches share (step_bench.cu, mega_bench.cu): one stream,
// kernels launched on it as programmatic dependents (as optc's `launch!`
// does), and bf16 buffers filled with hashed values.
#pragma once
#include <algorithm>
#include <vector>
#include "bench.cuh"

static cudaStream_t stream;
// The kernels `launch` started, in order (the timeline build of
// step_bench.cu names a captured graph's kernels by it).
static std::vector<const void*> launched;

// Launches k as a programmatic dependent; with `cluster_y` > 1, in
// clusters of (1, cluster_y, 1) blocks (as optc's cluster argmax).
template <typename... Args>
static void launch_clustered(void (*k)(Args...), unsigned cluster_y, unsigned gx, unsigned gy, unsigned gz,
                             unsigned threads, unsigned smem, Args... args) {
    PdlLaunch l(dim3(gx, gy, gz), dim3(threads), smem, stream, true, 1, cluster_y);
    CK(cudaLaunchKernelEx(&l.c, k, args...));
    launched.push_back((const void*)k);
}

template <typename... Args>
static void launch(void (*k)(Args...), unsigned gx, unsigned gy, unsigned gz, unsigned threads, unsigned smem,
                   Args... args) {
    launch_clustered(k, 1, gx, gy, gz, threads, smem, args...);
}

static bf16* dalloc(size_t n, unsigned seed, float scale) {
    bf16* p;
    CK(cudaMalloc(&p, n * 2));
    fill_random<<<1024, 256>>>(p, n, seed, scale);
    return p;
}

// Replays graph `ge` on the stream 55 times; the last 50's times in
// microseconds, sorted (median at the middle, minimum first).
static std::vector<float> replay_times(cudaGraphExec_t ge) {
    std::vector<float> ts = replay_ms(ge, stream, 5, 50);
    for (float& t : ts) t *= 1000.f;
    return ts;
}
