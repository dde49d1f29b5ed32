// What the cuBLASLt benches share: a status checker, and one decode linear
// y[m, n] = x[m, k] w[n, k]^T set up as gemm.rs sets it up (column-major
// C[n, m] = A^T B with A = w, k x n, ld k; B = x, k x m, ld k), bf16 in and
// out, f32 compute.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cublasLt.h>

#define CL(x)                                                                                   \
    do {                                                                                        \
        cublasStatus_t e = (x);                                                                 \
        if (e != CUBLAS_STATUS_SUCCESS) {                                                       \
            fprintf(stderr, "%s:%d %s: cuBLASLt status %d\n", __FILE__, __LINE__, #x, (int)e); \
            exit(1);                                                                            \
        }                                                                                       \
    } while (0)

struct LtLinear {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    void* ws;
    size_t ws_bytes;
    LtLinear(cublasLtHandle_t h_, void* ws_, size_t ws_bytes_, int n, int k, int m)
        : h(h_), ws(ws_), ws_bytes(ws_bytes_) {
        CL(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t t = CUBLAS_OP_T, nn = CUBLAS_OP_N;
        CL(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &t, sizeof(t)));
        CL(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &nn, sizeof(nn)));
        CL(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, k, n, k));
        CL(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, k, m, k));
        CL(cublasLtMatrixLayoutCreate(&lc, CUDA_R_16BF, n, m, n));
    }
    LtLinear(const LtLinear&) = delete;
    LtLinear& operator=(const LtLinear&) = delete;
    ~LtLinear() {
        cublasLtMatrixLayoutDestroy(la);
        cublasLtMatrixLayoutDestroy(lb);
        cublasLtMatrixLayoutDestroy(lc);
        cublasLtMatmulDescDestroy(op);
    }
    // The heuristic's first `count` choices that it says work, best first.
    std::vector<cublasLtMatmulHeuristicResult_t> heuristic(int count) const {
        cublasLtMatmulPreference_t pref;
        CL(cublasLtMatmulPreferenceCreate(&pref));
        CL(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                sizeof(ws_bytes)));
        std::vector<cublasLtMatmulHeuristicResult_t> r(count);
        int got = 0;
        CL(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, lc, pref, count, r.data(), &got));
        cublasLtMatmulPreferenceDestroy(pref);
        std::vector<cublasLtMatmulHeuristicResult_t> ok;
        for (int i = 0; i < got; ++i)
            if (r[i].state == CUBLAS_STATUS_SUCCESS) ok.push_back(r[i]);
        if (ok.empty()) {
            fprintf(stderr, "no cuBLASLt algorithm\n");
            exit(1);
        }
        return ok;
    }
    cublasStatus_t run(cudaStream_t s, const cublasLtMatmulAlgo_t& a, const void* w, const void* x, void* y) const {
        float one = 1.f, zero = 0.f;
        return cublasLtMatmul(h, op, &one, w, la, x, lb, &zero, y, lc, y, lc, &a, ws, ws_bytes, s);
    }
};
