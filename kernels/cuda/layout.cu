// Data movement: strided copies (transpose, slice, split, concat pieces,
// expand), row gathers (index_select, embedding), RoPE.

// Copies `n` elements of a strided source to a strided destination.
// Elements are moved as raw words of their size.
template <typename E> __device__ void copy_impl(const E* x, E* y, i64 n, Strided s) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 a, b;
        strided_offsets(s, i, &a, &b);
        y[b] = x[a];
    }
}

// Id j of a run whose ids may come from the previous run's picks: the
// pick `head` (ids_from_picks's, sample.cu) names for element j, if any,
// else idx[j]. For a few ids only: it scans the head's pairs. The count,
// the picks' address and the first pair are read at once (the head always
// has room for one pair), so at one id (a W1 step's embedding, on the
// critical path) the pick is the second dependent read and the row the
// third.
__device__ __forceinline__ i64 picked_id(const int* head, i64 j, const i64* idx) {
    const int count = head[2], first = head[4], first_row = head[5];
    const int* picks = *reinterpret_cast<const int* const*>(head);
    if (count > 0 && first == j) return picks[first_row];
    for (int c = 1; c < count; ++c)
        if (head[4 + 2 * c] == j) return picks[head[5 + 2 * c]];
    return idx[j];
}

// out[o, j, i] = x[o, idx[j], i]; an index outside [0, len) (which the host
// rejects for graph inputs) writes zeros rather than reading out of bounds.
// With `head`, the ids a run takes from the previous run's picks are read
// there (the run's only reader of its ids is this embedding, so the copy
// into them is left out).
template <typename E>
__device__ void gather_impl(const E* x, const i64* idx, E* y, i64 outer, i64 len, i64 inner, i64 nidx,
                            const int* head = nullptr) {
    i64 n = outer * nidx * inner;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 k = i % inner;
        i64 j = (i / inner) % nidx;
        i64 o = i / (inner * nidx);
        i64 r = head ? picked_id(head, j, idx) : idx[j];
        if (r < 0) r += len;
        y[i] = (r >= 0 && r < len) ? x[(o * len + r) * inner + k] : (E)0;
    }
}

#define OPTC_LAYOUT(E, N)                                                                                 \
    extern "C" __global__ void copy_##N(const E* x, E* y, i64 n, Strided s) {                             \
        pdl_start();                                                                                      \
        copy_impl<E>(x, y, n, s);                                                                         \
    }                                                                                                     \
    extern "C" __global__ void gather_##N(const E* x, const i64* idx, E* y, i64 outer, i64 len, i64 inner, \
                                          i64 nidx) {                                                     \
        pdl_start();                                                                                      \
        gather_impl<E>(x, idx, y, outer, len, inner, nidx);                                               \
    }                                                                                                     \
    /* early: everything it reads is ready before the run and its result is new to the run (the host  \
       decides, run.rs), so it gathers first and waits at its end. */                                     \
    extern "C" __global__ void gather_picked_##N(const E* x, const i64* idx, const int* head, E* y, i64 outer, \
                                                 i64 len, i64 inner, i64 nidx, int early) {               \
        pdl_trigger();                                                                                    \
        if (!early) pdl_wait();                                                                           \
        gather_impl<E>(x, idx, y, outer, len, inner, nidx, head);                                         \
        if (early) pdl_wait();                                                                            \
    }

OPTC_LAYOUT(unsigned char, b1)
OPTC_LAYOUT(unsigned short, b2)
OPTC_LAYOUT(unsigned int, b4)
OPTC_LAYOUT(unsigned long long, b8)

// Asks L2 for the first `bytes` of a batched decode linear's weights while
// the small kernels before that linear run (l2warm.rs launches it on a
// side stream, beside them): one prefetch a 128-byte line, which holds no
// register and waits for nothing, so the kernel ends once its requests
// are out. It reads only weights, which no kernel writes.
extern "C" __global__ void l2_warm(const char* p, unsigned long long bytes) {
    pdl_start();
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x * 128;
    for (unsigned long long i = ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x) * 128; i < bytes;
         i += stride)
        asm volatile("prefetch.global.L2::evict_last [%0];" ::"l"(p + i));
}

// RoPE over rows of `d`: the first `r` values of each row rotate with the
// row's cos/sin (rows of `r`), found through `s` (s.dims: x's leading
// dims; s.src: the cos/sin row strides per leading dim, 0 where they
// broadcast). `interleaved` rotates pairs (2i, 2i+1), else halves.
template <typename T>
__device__ void rope_impl(const T* x, const T* cs, const T* sn, T* y, i64 rows, int d, int r, int interleaved,
                          Strided s) {
    i64 n = rows * d;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        int k = (int)(i % d);
        i64 row = i / d;
        const T* xr = x + row * d;
        if (k >= r) {
            y[i] = xr[k];
            continue;
        }
        i64 crow, unused;
        strided_offsets(s, row, &crow, &unused);
        st(&y[i], rope_rotate(xr, cs + crow * r, sn + crow * r, k, r, interleaved));
    }
}

#define OPTC_ROPE(T, N)                                                                                   \
    extern "C" __global__ void rope_##N(const T* x, const T* c, const T* s, T* y, i64 rows, int d, int r,  \
                                        int il, Strided st_) {                                             \
        pdl_start();                                                                                      \
        rope_impl<T>(x, c, s, y, rows, d, r, il, st_);                                                    \
    }

OPTC_ROPE(float, f32)
OPTC_ROPE(bf16, bf16)
OPTC_ROPE(f16, f16)

// The attention prologue in one launch, straight from the fused QKV
// projection: each row of `qkv` holds hq query heads, hkv key heads (both
// of d) and hkv value heads (of dv). Query and key heads rotate as
// `rope_impl` does (cos/sin rows of `r` per token); queries go to `q`
// ([ntok, hq, d]), keys and values to their cache slots (`slots`, as in
// `cache_write_impl`; a negative slot writes nothing). Replaces the split
// copies, two RoPE launches and the cache write.
template <typename T>
__device__ void rope_qkv_cache_impl(const T* qkv, const T* cs, const T* sn, T* q, T* kc, T* vc, const i64* slots,
                                    i64 ntok, int hq, int hkv, int d, int dv, int r, int interleaved) {
    const int qk = (hq + hkv) * d, w = qk + hkv * dv;
    const i64 n = ntok * w;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        const i64 t = i / w;
        const int c = (int)(i % w);
        const T* x = qkv + t * w;
        if (c >= qk) {
            const i64 s = slots[t];
            if (s >= 0) vc[s * hkv * dv + (c - qk)] = x[c];
            continue;
        }
        const int k = c % d;
        const T* xr = x + (c - k);
        T out;
        if (k >= r) {
            out = xr[k];
        } else {
            st(&out, rope_rotate(xr, cs + t * r, sn + t * r, k, r, interleaved));
        }
        if (c < hq * d) {
            q[t * hq * d + c] = out;
        } else {
            const i64 s = slots[t];
            if (s >= 0) kc[s * hkv * d + (c - hq * d)] = out;
        }
    }
}

#define OPTC_ROPE_QKV(T, N)                                                                               \
    extern "C" __global__ void rope_qkv_cache_##N(const T* qkv, const T* c, const T* s, T* q, T* kc, T* vc, \
                                                  const i64* slots, i64 ntok, int hq, int hkv, int d,     \
                                                  int dv, int r, int il) {                                \
        pdl_trigger(); /* launched as a dependent: see paged_decode */                                    \
        pdl_wait();                                                                                       \
        rope_qkv_cache_impl<T>(qkv, c, s, q, kc, vc, slots, ntok, hq, hkv, d, dv, r, il);                 \
    }

OPTC_ROPE_QKV(float, f32)
OPTC_ROPE_QKV(bf16, bf16)
OPTC_ROPE_QKV(f16, f16)
