//! GEMMs through cuBLASLt: one descriptor, layout set and heuristic
//! algorithm per distinct shape, chosen on first use and reused, with the
//! bias add fused as an epilogue.
//!
//! Row-major `y[M, N] = x[M, K] · op(w)` is the column-major product
//! `yᵀ = op(w)ᵀ · xᵀ`, so cuBLASLt's A is the weight and B the activation.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;

use cudarc::cublaslt::{result as lt, sys};
use optc_ir::DType;

use super::device::DeviceBox;

/// One GEMM shape (column-major terms: D[m, n] = op(A)[m, k] · B[k, n]).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) struct GemmShape {
    pub dtype: DType,
    /// A (the weight) is read transposed: `linear`'s `[N, K]` weights.
    pub trans_a: bool,
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub batch: i32,
    pub stride_a: i64,
    pub stride_b: i64,
    pub stride_c: i64,
    pub bias: bool,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBox,
    plans: HashMap<GemmShape, Plan>,
}

fn data_type(d: DType) -> Result<sys::cudaDataType, String> {
    Ok(match d {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        other => return Err(format!("no GEMM for {other}")),
    })
}

fn e(x: lt::CublasError) -> String {
    format!("cuBLASLt: {x:?}")
}

unsafe fn set_desc<T>(
    desc: sys::cublasLtMatmulDesc_t,
    attr: sys::cublasLtMatmulDescAttributes_t,
    v: &T,
) -> Result<(), String> {
    lt::set_matmul_desc_attribute(desc, attr, v as *const T as *const c_void, size_of::<T>()).map_err(e)
}

unsafe fn layout(
    dt: sys::cudaDataType,
    rows: u64,
    cols: u64,
    ld: i64,
    batch: i32,
    stride: i64,
) -> Result<sys::cublasLtMatrixLayout_t, String> {
    let l = lt::create_matrix_layout(dt, rows, cols, ld).map_err(e)?;
    if batch > 1 {
        lt::set_matrix_layout_attribute(
            l,
            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
            &batch as *const i32 as *const c_void,
            size_of::<i32>(),
        )
        .map_err(e)?;
        lt::set_matrix_layout_attribute(
            l,
            sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
            &stride as *const i64 as *const c_void,
            size_of::<i64>(),
        )
        .map_err(e)?;
    }
    Ok(l)
}

impl Gemm {
    /// Hopper wants a 32 MiB workspace (NVIDIA's guidance), older GPUs 4.
    pub fn new(arch_major: i32) -> Result<Gemm, String> {
        let handle = lt::create_handle().map_err(e)?;
        let bytes = if arch_major >= 9 { 32 << 20 } else { 4 << 20 };
        Ok(Gemm {
            handle,
            workspace: DeviceBox::new(bytes)?,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, s: GemmShape) -> Result<&Plan, String> {
        if !self.plans.contains_key(&s) {
            let p = unsafe { self.make_plan(s)? };
            self.plans.insert(s, p);
        }
        Ok(&self.plans[&s])
    }

    unsafe fn make_plan(&self, s: GemmShape) -> Result<Plan, String> {
        let dt = data_type(s.dtype)?;
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(e)?;
        let ta: i32 = s.trans_a.into();
        set_desc(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
            &ta,
        )?;
        let tb: i32 = 0;
        set_desc(
            desc,
            sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
            &tb,
        )?;
        if s.bias {
            let epi = sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
            set_desc(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                &epi,
            )?;
        }
        // A: the weight, [k, m] column-major read transposed, or [m, k].
        let a = if s.trans_a {
            layout(dt, s.k, s.m, s.k as i64, s.batch, s.stride_a)?
        } else {
            layout(dt, s.m, s.k, s.m as i64, s.batch, s.stride_a)?
        };
        let b = layout(dt, s.k, s.n, s.k as i64, s.batch, s.stride_b)?;
        let c = layout(dt, s.m, s.n, s.m as i64, s.batch, s.stride_c)?;
        let pref = lt::create_matmul_pref().map_err(e)?;
        let ws = self.workspace.bytes;
        lt::set_matmul_pref_attribute(
            pref,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const usize as *const c_void,
            size_of::<usize>(),
        )
        .map_err(e)?;
        let h = lt::get_matmul_algo_heuristic(self.handle, desc, a, b, c, c, pref);
        let _ = lt::destroy_matmul_pref(pref);
        let h = h.map_err(|x| format!("cuBLASLt has no algorithm for {s:?}: {x:?}"))?;
        Ok(Plan {
            desc,
            layouts: [a, b, c],
            algo: h.algo,
        })
    }

    /// `c = op(a) · b (+ bias)` on `stream`; pointers are device addresses.
    pub unsafe fn run(
        &mut self,
        s: GemmShape,
        a: u64,
        b: u64,
        c: u64,
        bias: u64,
        stream: *mut c_void,
    ) -> Result<(), String> {
        let (handle, ws, wsb) = (self.handle, self.workspace.ptr, self.workspace.bytes);
        let p = self.plan(s)?;
        if s.bias {
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )?;
        }
        let (alpha, beta) = (1f32, 0f32);
        lt::matmul(
            handle,
            p.desc,
            &alpha as *const f32 as *const c_void,
            &beta as *const f32 as *const c_void,
            a as *const c_void,
            p.layouts[0],
            b as *const c_void,
            p.layouts[1],
            c as *const c_void,
            p.layouts[2],
            c as *mut c_void,
            p.layouts[2],
            &p.algo,
            ws as *mut c_void,
            wsb,
            stream as _,
        )
        .map_err(|x| format!("cuBLASLt matmul {s:?}: {x:?}"))
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = lt::destroy_matmul_desc(p.desc);
                for l in p.layouts {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
