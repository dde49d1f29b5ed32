// What the step benches share (step_bench.cu, mega_bench.cu): one stream,
// kernels launched on it as programmatic dependents (as optc's `launch!`
// does), and bf16 buffers filled with hashed values.
#pragma once
#include "bench.cuh"

static cudaStream_t stream;

template <typename... Args>
static void launch(void (*k)(Args...), unsigned gx, unsigned gy, unsigned gz, unsigned threads, unsigned smem,
                   Args... args) {
    cudaLaunchConfig_t c = {};
    c.gridDim = dim3(gx, gy, gz);
    c.blockDim = dim3(threads);
    c.dynamicSmemBytes = smem;
    c.stream = stream;
    cudaLaunchAttribute at[1];
    at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at[0].val.programmaticStreamSerializationAllowed = 1;
    c.attrs = at;
    c.numAttrs = 1;
    CK(cudaLaunchKernelEx(&c, k, args...));
}

static bf16* dalloc(size_t n, unsigned seed, float scale) {
    bf16* p;
    CK(cudaMalloc(&p, n * 2));
    fill_random<<<1024, 256>>>(p, n, seed, scale);
    return p;
}
