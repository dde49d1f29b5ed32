//! Weights to the GPU through two page-locked staging buffers: the host
//! fills one from the mapped checkpoint while the GPU copies the other,
//! instead of each copy from pageable memory waiting on the driver's own
//! bounce buffer. Measured on the H200 machine (docs/perf.md), staging
//! alone did not speed the upload up (the host joining fused weights was
//! the cost); with those joins gone the upload takes 0.46-0.56 s for
//! 2.47 GB. Whether staging still adds to that is not measured apart.

use cudarc::driver::{result, sys, CudaEvent};

use super::device::Gpu;

/// Bytes in each staging buffer.
const STAGE_BYTES: usize = 64 << 20;

/// A page-locked host buffer and the event after the copy that reads it.
struct Stage {
    ptr: *mut u8,
    pending: Option<CudaEvent>,
}

/// Copies host bytes to device memory through the staging buffers, in
/// order on the program's stream.
pub(super) struct Staging<'g> {
    gpu: &'g Gpu,
    stages: Vec<Stage>,
    next: usize,
}

impl<'g> Staging<'g> {
    /// Two staging buffers; an error when page-locked memory is short
    /// (the caller then copies from pageable memory).
    pub(super) fn new(gpu: &'g Gpu) -> Result<Staging<'g>, String> {
        gpu.ctx.bind_to_thread().map_err(|e| e.to_string())?;
        let mut stages = Vec::new();
        for _ in 0..2 {
            // SAFETY: cuMemHostAlloc returns STAGE_BYTES bytes or an error.
            let p = unsafe { result::malloc_host(STAGE_BYTES, 0) }
                .map_err(|e| format!("page-locked staging memory: {e}"))?;
            stages.push(Stage {
                ptr: p.cast(),
                pending: None,
            });
        }
        Ok(Staging { gpu, stages, next: 0 })
    }

    /// Queues the copy of `bytes` to `dst`; `bytes` may be dropped on
    /// return (each piece is in a staging buffer before its copy starts).
    pub(super) fn copy(&mut self, dst: u64, bytes: &[u8]) -> Result<(), String> {
        for (i, piece) in bytes.chunks(STAGE_BYTES).enumerate() {
            let stage = &mut self.stages[self.next];
            // The buffer's previous copy must be done before it is refilled.
            if let Some(e) = stage.pending.take() {
                e.synchronize().map_err(|e| format!("copy to the GPU: {e}"))?;
            }
            // SAFETY: `ptr` holds STAGE_BYTES >= piece.len() bytes and no
            // copy reads it now.
            let staged = unsafe {
                std::ptr::copy_nonoverlapping(piece.as_ptr(), stage.ptr, piece.len());
                std::slice::from_raw_parts(stage.ptr, piece.len())
            };
            let at = dst + (i * STAGE_BYTES) as u64;
            // SAFETY: `staged` is page-locked and stays untouched until the
            // event recorded after this copy completes.
            unsafe { result::memcpy_htod_async(at, staged, self.gpu.stream.cu_stream()) }
                .map_err(|e| format!("copy to the GPU: {e}"))?;
            let event = self
                .gpu
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .and_then(|e| e.record(&self.gpu.stream).map(|_| e))
                .map_err(|e| format!("copy to the GPU: {e}"))?;
            stage.pending = Some(event);
            self.next = (self.next + 1) % self.stages.len();
        }
        Ok(())
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        for s in &mut self.stages {
            if let Some(e) = s.pending.take() {
                let _ = e.synchronize();
            }
            // SAFETY: allocated by cuMemHostAlloc; its last copy is done.
            unsafe {
                let _ = result::free_host(s.ptr.cast());
            }
        }
    }
}
