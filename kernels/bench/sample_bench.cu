// Where a sampled decode step's sampling time goes: sample.cu's three
// kernels (sample_stats, sample_hist, sample) on rows of a Llama-3.2
// vocabulary (128,256 bf16 logits), launched as optc's `Pick::launch_sample`
// launches them, each timed with CUDA events (median of REPS rounds), and
// the three back to back. Rows are "flat" (hashed values in [-0.5, 0.5):
// at temperature 0.8 some 6,400 logits a 1/16-nat bin, as a random-weight
// model gives, so top-p alone lists the bin of its cut) or "peaked" (the
// same plus 64 logits raised by 6 to 13.5: a trained model's shape, where
// the histogram settles every cut), at 1 and 32 rows
// and the bench workloads' sampling settings. It also prints the token of
// the first row, so a changed kernel can be checked to draw the same.
// Each kernel is timed alone (an event after each) and 20 picks queued
// back to back, as a stream of decode steps queues them. Built with
// -DOPTC_SAMPLE_TRACE it also prints, per setting, when each phase of one
// pick ended (sample.cu's SAMPLE_MARK numbers, µs from sample_stats'
// start). To compare a change, build against two kernel folders and run
// both, as scripts/gpu-run.sh's `samplebench` stage does
// (SAMPLE_KERNELS="NAME=DIR"). On the GPU machine, from the repo root:
//   nvcc -O3 -std=c++17 -arch=sm_90 -I kernels/cuda -o /tmp/sample_bench kernels/bench/sample_bench.cu && /tmp/sample_bench
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#include "common.cuh"
#include "sample.cu"
#include "bench.cuh"

OPTC_SAMPLE(bf16, bf16)

// Adds `bump` (6 to 13.5, by a hash) to `count` logits of each row spread
// over the vocabulary: a few likely tokens above a flat tail.
__global__ void raise_some(bf16* x, int rows, int n, int count) {
    const int r = blockIdx.x;
    for (int j = threadIdx.x; j < count; j += blockDim.x) {
        unsigned h = (unsigned)(r * 7919 + j) * 2654435761u;
        h ^= h >> 13;
        const int i = (int)(h % (unsigned)n);
        const float bump = 6.f + (float)(h >> 28) * 0.5f;
        x[(size_t)r * n + i] = __float2bfloat16(__bfloat162float(x[(size_t)r * n + i]) + bump);
    }
}

struct Setting {
    const char* name;
    float temperature;
    int top_k;
    float top_p;
};

static float median(std::vector<float> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

int main() {
    const int n = 128256, max_rows = 32, reps = getenv("REPS") ? atoi(getenv("REPS")) : 200;
    const int pieces = (n + SAMPLE_CHUNK - 1) / SAMPLE_CHUNK;
    bf16* x;
    SampleRow* params;
    SampleStat* stats;
    SamplePart* parts;
    int* tok;
    float* lp;
    int* counters;  // zero, as the last block of a row leaves them
    CK(cudaMalloc(&counters, sizeof(int) * max_rows));
    CK(cudaMemset(counters, 0, sizeof(int) * max_rows));
    CK(cudaMalloc(&x, sizeof(bf16) * (size_t)max_rows * n));
    CK(cudaMalloc(&params, sizeof(SampleRow) * max_rows));
    CK(cudaMalloc(&stats, sizeof(SampleStat) * max_rows * pieces));
    CK(cudaMalloc(&parts, sizeof(SamplePart) * max_rows * pieces));
    CK(cudaMalloc(&tok, sizeof(int) * max_rows));
    CK(cudaMalloc(&lp, sizeof(float) * max_rows));
    cudaEvent_t ev[4];
    for (auto& event : ev) CK(cudaEventCreate(&event));
    const Setting settings[] = {
        {"T 0.8, top-k 50, top-p 0.9", 0.8f, 50, 0.9f},
        {"T 0.8, top-p 0.9", 0.8f, 0, 0.9f},
        {"T 0.8", 0.8f, 0, 1.f},
    };
    printf("µs, median of %d rounds: sample_stats / sample_hist / sample / the three back to back / one pick of 20 "
           "queued; token of row 0\n",
           reps);
    for (int peaked = 0; peaked < 2; ++peaked) {
        fill_random<<<1024, 256>>>(x, (size_t)max_rows * n, 17u, 0.5f);
        if (peaked) raise_some<<<max_rows, 64>>>(x, max_rows, n, 64);
        CK(cudaGetLastError());
        for (int rows : {1, 32}) {
            for (const Setting& s : settings) {
                std::vector<SampleRow> host(rows);
                for (int r = 0; r < rows; ++r) host[r] = SampleRow{s.temperature, s.top_k, s.top_p, 0.f, 0.37 + 0.01 * r};
                CK(cudaMemcpy(params, host.data(), sizeof(SampleRow) * rows, cudaMemcpyHostToDevice));
#ifdef SAMPLE_PIECE_CANDS
                const bool one_pass = sample_by_candidates(host[0], pieces);
#endif
                const dim3 grid(rows, pieces);
                // The kernels of one pick; with `marks`, an event after each.
                auto pick = [&](bool marks) {
#ifdef SAMPLE_PIECE_CANDS
                    // As optc launches them: rows with a small top-k are
                    // done by the first kernel (with the counters), and
                    // when every row is, the other two are not launched.
                    sample_stats_bf16<<<grid, 256>>>(x, params, stats, parts, n, counters, tok, lp);
                    if (marks) CK(cudaEventRecord(ev[1]));
                    if (!one_pass) sample_hist_bf16<<<grid, 256>>>(x, params, stats, parts, n, 1);
                    if (marks) CK(cudaEventRecord(ev[2]));
                    if (!one_pass) sample_bf16<<<rows, 1024>>>(x, params, tok, lp, n, stats, parts, pieces, 1);
#else  // kernels from before the one-pass rows (to compare against)
                    sample_stats_bf16<<<grid, 256>>>(x, params, stats, n);
                    if (marks) CK(cudaEventRecord(ev[1]));
                    sample_hist_bf16<<<grid, 256>>>(x, params, stats, parts, n);
                    if (marks) CK(cudaEventRecord(ev[2]));
                    sample_bf16<<<rows, 1024>>>(x, params, tok, lp, n, stats, parts, pieces);
#endif
                };
                std::vector<float> t[4];
                for (int i = 0; i < reps + 5; ++i) {
                    CK(cudaEventRecord(ev[0]));
                    pick(true);
                    CK(cudaEventRecord(ev[3]));
                    CK(cudaEventSynchronize(ev[3]));
                    if (i < 5) continue;  // warm-up
                    for (int k = 0; k < 3; ++k) {
                        float ms;
                        CK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
                        t[k].push_back(ms * 1e3f);
                    }
                    float all;
                    CK(cudaEventElapsedTime(&all, ev[0], ev[3]));
                    t[3].push_back(all * 1e3f);
                }
                // Picks back to back, as a stream of decode steps queues
                // them: no event between the kernels, so launch gaps hide.
                const int queued = 20;
                CK(cudaEventRecord(ev[0]));
                for (int i = 0; i < queued; ++i) pick(false);
                CK(cudaEventRecord(ev[3]));
                CK(cudaEventSynchronize(ev[3]));
                float back;
                CK(cudaEventElapsedTime(&back, ev[0], ev[3]));
                CK(cudaGetLastError());
                int first;
                CK(cudaMemcpy(&first, tok, sizeof(int), cudaMemcpyDeviceToHost));
                printf("  %-6s rows %2d  %-28s %7.1f %7.1f %7.1f %8.1f %8.1f   token %d\n", peaked ? "peaked" : "flat",
                       rows, s.name, median(t[0]), median(t[1]), median(t[2]), median(t[3]), back * 1e3f / queued,
                       first);
#ifdef OPTC_SAMPLE_TRACE
                // One pick's phases (sample.cu's SAMPLE_MARK), in µs from
                // the first kernel's start.
                unsigned long long marks[64] = {};
                CK(cudaMemcpyToSymbol(optc_sample_marks, marks, sizeof(marks)));
                pick(false);
                CK(cudaDeviceSynchronize());
                CK(cudaMemcpyFromSymbol(marks, optc_sample_marks, sizeof(marks)));
                printf("    marks:");
                for (int k = 0; k < 64; ++k)
                    if (marks[k]) printf(" %d:%.1f", k, (double)(marks[k] - marks[0]) * 1e-3);
                printf("\n");
#endif
            }
        }
    }
    return 0;
}
