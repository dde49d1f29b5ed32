//! GEMMs through cuBLASLt: one descriptor, layout set and algorithm per
//! distinct shape, chosen on first use and reused, with the bias add fused
//! as an epilogue. The algorithm is cuBLASLt's heuristic first choice or,
//! with tuning on (`OPTC_CUDA_GEMM_TUNE=1`), the fastest of its first few
//! choices, timed once per skinny shape (as TensorRT-LLM profiles its GEMM
//! tactics at build time).
//!
//! Row-major `y[M, N] = x[M, K] · op(w)` is the column-major product
//! `yᵀ = op(w)ᵀ · xᵀ`, so cuBLASLt's A is the weight and B the activation.

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::size_of;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::{CUevent_flags, CUstreamCaptureStatus};
use cudarc::driver::{CudaContext, CudaStream};
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
    /// The tanh GELU applied to the result (after the bias) as cuBLASLt's
    /// epilogue, so the GELU is no launch of its own (`fuse::gemm_epilogue`).
    pub gelu: bool,
}

struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
    /// cuBLASLt's first choices, best first, for a shape to tune (`algo`
    /// is the first until then); emptied once tuned.
    candidates: Vec<sys::cublasLtMatmulAlgo_t>,
}

impl Drop for Plan {
    fn drop(&mut self) {
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
        }
    }
}

/// cuBLASLt objects `make_plan` has created so far: destroyed if it
/// returns early, else the descriptor and layouts move into the plan.
#[derive(Default)]
struct Made {
    desc: Option<sys::cublasLtMatmulDesc_t>,
    layouts: Vec<sys::cublasLtMatrixLayout_t>,
    pref: Option<sys::cublasLtMatmulPreference_t>,
}

impl Drop for Made {
    fn drop(&mut self) {
        unsafe {
            if let Some(d) = self.desc.take() {
                let _ = lt::destroy_matmul_desc(d);
            }
            for l in self.layouts.drain(..) {
                let _ = lt::destroy_matrix_layout(l);
            }
            if let Some(p) = self.pref.take() {
                let _ = lt::destroy_matmul_pref(p);
            }
        }
    }
}

/// Heuristic choices timed for a tuned shape.
const TUNE_CANDIDATES: usize = 8;
/// Shapes with at most this many activation rows are tuned: skinny,
/// memory-bound GEMMs (decode batches, short prefills), where the
/// heuristic's first choice is least sure and the shapes are few. Wider
/// ones are compute-bound, and every new prefill length would pay the
/// timing again.
const TUNE_MAX_ROWS: u64 = 256;
/// Timed runs of each candidate, after one untimed run.
const TUNE_RUNS: usize = 5;
/// The largest scratch output timing runs write (128 MiB: a 128k-token
/// vocabulary's logits at 256 rows); larger shapes keep the heuristic's
/// choice.
const TUNE_SCRATCH_MAX: usize = 128 << 20;

/// Where tuning runs: its own stream, so a stream that is capturing a
/// CUDA graph can still have a new shape timed (its capture began after
/// a sync, so nothing else runs on it meanwhile), and the buffers it
/// keeps (freeing device memory may synchronise, which a capture
/// forbids, so they are kept and only outgrown ones wait to be freed).
struct Tuner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// The timed runs' output (the real one may still be in use).
    scratch: Option<DeviceBox>,
    /// Outgrown scratch buffers, freed when no capture is under way.
    retired: Vec<DeviceBox>,
    /// Written before each timed run, so that the run reads its weights
    /// from DRAM as a decode step does, not from L2: twice the L2's size,
    /// or none where that could not be had.
    flush: Option<DeviceBox>,
}

/// Shapes timed so far, and how many of them took an algorithm other than
/// the heuristic's first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmTuning {
    pub tuned: usize,
    pub changed: usize,
}

/// A cuBLASLt handle, its workspace and the plans made so far.
pub(crate) struct Gemm {
    handle: sys::cublasLtHandle_t,
    workspace: DeviceBox,
    plans: HashMap<GemmShape, Plan>,
    tuner: Option<Tuner>,
    tuning: GemmTuning,
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
            tuner: None,
            tuning: GemmTuning::default(),
        })
    }

    /// Times new skinny shapes' candidates, on a stream of their own of
    /// `ctx`, when `on` is that context (`None` stops); plans made so far
    /// and the counts are dropped, so each shape is chosen again on its
    /// next use.
    pub fn set_tuning(&mut self, on: Option<&Arc<CudaContext>>) -> Result<(), String> {
        self.tuner = match on {
            Some(ctx) => {
                let stream = ctx.new_stream().map_err(|x| format!("GEMM tuning: {x}"))?;
                let l2 = ctx
                    .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
                    .map_or(0, |b| b.max(0) as usize);
                let flush = (l2 > 0).then(|| DeviceBox::new(2 * l2).ok()).flatten();
                Some(Tuner {
                    ctx: ctx.clone(),
                    stream,
                    scratch: None,
                    retired: Vec::new(),
                    flush,
                })
            }
            None => None,
        };
        self.tuning = GemmTuning::default();
        self.plans.clear();
        Ok(())
    }

    /// What tuning did so far.
    pub fn tuning(&self) -> GemmTuning {
        self.tuning
    }

    unsafe fn make_plan(&self, s: GemmShape) -> Result<Plan, String> {
        let dt = data_type(s.dtype)?;
        let compute = sys::cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let mut made = Made::default();
        let desc = lt::create_matmul_desc(compute, sys::cudaDataType::CUDA_R_32F).map_err(e)?;
        made.desc = Some(desc);
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
        let epilogue = match (s.bias, s.gelu) {
            (true, true) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS),
            (true, false) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS),
            (false, true) => Some(sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU),
            (false, false) => None,
        };
        if let Some(epi) = epilogue {
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
        made.layouts.push(a);
        let b = layout(dt, s.k, s.n, s.k as i64, s.batch, s.stride_b)?;
        made.layouts.push(b);
        let c = layout(dt, s.m, s.n, s.m as i64, s.batch, s.stride_c)?;
        made.layouts.push(c);
        let pref = lt::create_matmul_pref().map_err(e)?;
        made.pref = Some(pref);
        let ws = self.workspace.bytes;
        lt::set_matmul_pref_attribute(
            pref,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &ws as *const usize as *const c_void,
            size_of::<usize>(),
        )
        .map_err(e)?;
        let mut want = if self.tuner.is_some() && s.n <= TUNE_MAX_ROWS && s.batch == 1 {
            TUNE_CANDIDATES
        } else {
            1
        };
        if want > 1 && s.dtype != DType::F32 {
            // Split-k candidates sum their parts in f32, never in the 16-bit
            // output (or in place in it): the tuned result is as precise as
            // the heuristic's, whichever candidate wins the timing. Where
            // that cannot be asked, the shape is not tuned.
            let mask = sys::cublasLtReductionScheme_t::CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE as u32;
            if lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                &mask as *const u32 as *const c_void,
                size_of::<u32>(),
            )
            .is_err()
            {
                want = 1;
            }
        }
        let mut found: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![std::mem::zeroed(); want];
        let mut count = 0i32;
        let h = sys::cublasLtMatmulAlgoGetHeuristic(
            self.handle,
            desc,
            a,
            b,
            c,
            c,
            pref,
            want as i32,
            found.as_mut_ptr(),
            &mut count,
        );
        found.truncate(count.max(0) as usize);
        found.retain(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        let first = match found.first() {
            Some(r) if h == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS => r.algo,
            _ => return Err(format!("cuBLASLt has no algorithm for {s:?}: {h:?}")),
        };
        // The plan owns the descriptor and layouts from here; `made` still
        // destroys the preference.
        made.desc = None;
        made.layouts.clear();
        Ok(Plan {
            desc,
            layouts: [a, b, c],
            algo: first,
            candidates: if want > 1 {
                found.iter().map(|r| r.algo).collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Times each candidate of `s`'s new plan (one untimed run, then
    /// `TUNE_RUNS` runs into a scratch output, each after the L2 is
    /// flushed and between its own pair of events) and keeps the fastest.
    /// The main stream's work ends first, so the candidates run alone.
    /// Returns the chosen candidate's index, or `None` where the shape
    /// cannot be timed now (a capture in a bad state, no room for the
    /// scratch output).
    unsafe fn tune(
        &mut self,
        s: GemmShape,
        a: u64,
        b: u64,
        main: &CudaStream,
    ) -> Result<Option<usize>, String> {
        let Gemm {
            handle,
            workspace,
            plans,
            tuner,
            ..
        } = self;
        let (Some(t), Some(p)) = (tuner.as_mut(), plans.get(&s)) else {
            return Ok(None);
        };
        if p.candidates.len() < 2 {
            return Ok((p.candidates.len() == 1).then_some(0));
        }
        let ge = |x: cudarc::driver::DriverError| format!("GEMM tuning: {x}");
        match main.capture_status().map_err(ge)? {
            CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE => {
                main.synchronize().map_err(ge)?;
                t.retired.clear();
            }
            CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE => {}
            _ => return Ok(None),
        }
        let esize = s.dtype.storage_bytes(1) as u64;
        let bytes = (s.m.saturating_mul(s.n).saturating_mul(esize) as usize).max(256);
        if bytes > TUNE_SCRATCH_MAX {
            return Ok(None);
        }
        if t.scratch.as_ref().is_none_or(|d| d.bytes < bytes) {
            let Ok(grown) = DeviceBox::new(bytes) else {
                return Ok(None);
            };
            if let Some(old) = t.scratch.replace(grown) {
                t.retired.push(old);
            }
        }
        let out = t.scratch.as_ref().map_or(0, |d| d.ptr);
        let stream = t.stream.cu_stream();
        let run = |algo: &sys::cublasLtMatmulAlgo_t| {
            matmul(*handle, p, algo, [a, b, out], workspace, stream).is_ok()
        };
        let timed = (|| {
            let event = || t.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(ge);
            let marks = (0..TUNE_RUNS)
                .map(|_| Ok((event()?, event()?)))
                .collect::<Result<Vec<_>, String>>()?;
            let mut best: Option<(f32, usize)> = None;
            for (i, algo) in p.candidates.iter().enumerate() {
                // A candidate that fails to launch is skipped.
                if !run(algo) {
                    continue;
                }
                let mut launched = true;
                for (r, (start, end)) in marks.iter().enumerate() {
                    if let Some(f) = &t.flush {
                        cudarc::driver::result::memset_d8_async(f.ptr, r as u8, f.bytes, stream)
                            .map_err(ge)?;
                    }
                    start.record(&t.stream).map_err(ge)?;
                    launched &= run(algo);
                    end.record(&t.stream).map_err(ge)?;
                }
                t.stream.synchronize().map_err(ge)?;
                if !launched {
                    continue;
                }
                let mut ms = 0f32;
                for (start, end) in &marks {
                    ms += start.elapsed_ms(end).map_err(ge)?;
                }
                if best.is_none_or(|(b, _)| ms < b) {
                    best = Some((ms, i));
                }
            }
            Ok::<_, String>(best)
        })();
        // Nothing of the timing is left running on any path out: the
        // scratch output and the operands are the main stream's again.
        let synced = t.stream.synchronize().map_err(ge);
        let best = timed?;
        synced?;
        if let Some((ms, i)) = best {
            tracing::debug!(shape = ?s, chosen = i, us = 1e3 * ms / TUNE_RUNS as f32, "cuBLASLt algorithm timed");
        }
        Ok(best.map(|(_, i)| i))
    }

    /// `c = op(a) · b (+ bias)` on `stream`; pointers are device addresses.
    pub unsafe fn run(
        &mut self,
        s: GemmShape,
        a: u64,
        b: u64,
        c: u64,
        bias: u64,
        stream: &CudaStream,
    ) -> Result<(), String> {
        if !self.plans.contains_key(&s) {
            let p = self.make_plan(s)?;
            self.plans.insert(s, p);
        }
        let p = self.plans.get(&s).ok_or("cuBLASLt: a plan went missing")?;
        if s.bias {
            set_desc(
                p.desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
            )?;
        }
        // A plan to tune still holds its candidates, until its first run.
        if !p.candidates.is_empty() {
            // Timing is an optimisation: where it fails, the heuristic's
            // first choice stands.
            let chosen = self.tune(s, a, b, stream).unwrap_or_else(|x| {
                tracing::warn!(shape = ?s, error = %x, "cuBLASLt algorithm not timed");
                None
            });
            if let Some(p) = self.plans.get_mut(&s) {
                if let Some(&algo) = chosen.and_then(|i| p.candidates.get(i)) {
                    p.algo = algo;
                    self.tuning.tuned += 1;
                    self.tuning.changed += usize::from(chosen != Some(0));
                }
                p.candidates = Vec::new();
            }
        }
        let p = self.plans.get(&s).ok_or("cuBLASLt: a plan went missing")?;
        matmul(
            self.handle,
            p,
            &p.algo,
            [a, b, c],
            &self.workspace,
            stream.cu_stream(),
        )
        .map_err(|x| format!("cuBLASLt matmul {s:?}: {x:?}"))
    }
}

/// `c = op(a) · b` (+ the bias its descriptor holds) with `algo`, for
/// `[a, b, c]` device addresses on `stream`.
unsafe fn matmul(
    handle: sys::cublasLtHandle_t,
    p: &Plan,
    algo: &sys::cublasLtMatmulAlgo_t,
    [a, b, c]: [u64; 3],
    workspace: &DeviceBox,
    stream: cudarc::driver::sys::CUstream,
) -> Result<(), lt::CublasError> {
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
        algo,
        workspace.ptr as *mut c_void,
        workspace.bytes,
        stream as _,
    )
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // The plans' descriptors go before the handle.
        self.plans.clear();
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
