//! The GPU a program runs on: context, stream, the loaded kernel modules,
//! and a pool of device buffers reused across ops and steps.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule, CudaStream};

/// Whether this machine can run the `nvrtc` target: the CUDA driver,
/// NVRTC and cuBLASLt libraries load and a device is visible.
pub fn available() -> Result<(), String> {
    // cudarc's loaders panic on a missing library: look first.
    if !unsafe { sys::is_culib_present() } {
        return Err("no CUDA driver found (libcuda.so.1); use --target cpu".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("the CUDA driver is present but NVRTC (libnvrtc.so) is not; use --target cpu".into());
    }
    if !unsafe { cudarc::cublaslt::sys::is_culib_present() } {
        return Err(
            "the CUDA driver is present but cuBLASLt (libcublasLt.so) is not; use --target cpu".into(),
        );
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("the CUDA driver sees no GPU; use --target cpu".into()),
        Err(e) => Err(format!("the CUDA driver failed to start ({e}); use --target cpu")),
    }
}

/// The default of `Gpu::decode_chunks`.
const DECODE_CHUNKS_PER_WARP: usize = 4;

/// The most `Gpu::decode_chunks` may be: 1,024 chunks of 32 keys a warp
/// (32K keys) already means "never split"; larger settings are clamped so
/// the split arithmetic cannot overflow.
pub(super) const MAX_DECODE_CHUNKS: usize = 1024;

/// The default of `Gpu::decode_warps`.
const DECODE_WARPS: usize = 8;
/// DRAM bandwidth (TB/s, from the memory clock and bus width) from which
/// the wide-DRAM GEMV geometries pay: an H200's 4.9 does, an H100's 3.35
/// does not (`Gpu::wide_dram`).
const WIDE_DRAM_TBPS: f64 = 4.0;

/// `Gpu::wide_dram`: `forced` ("1" or "0", from `OPTC_CUDA_WIDE_DRAM`),
/// else whether the DRAM bandwidth reaches `WIDE_DRAM_TBPS`.
fn wide_dram(dram_tbps: f64, forced: Option<&str>) -> bool {
    match forced {
        Some("1") => true,
        Some("0") => false,
        _ => dram_tbps >= WIDE_DRAM_TBPS,
    }
}

/// How a kernel is launched besides its grid (`Gpu::launch_opts`).
#[derive(Clone, Copy)]
struct LaunchOpts {
    /// Programmatic dependent launch, where the GPU has it.
    early: bool,
    /// A cooperative launch: all blocks resident at once, or refused.
    cooperative: bool,
    /// Blocks a cluster along y (1: no clusters).
    cluster_y: u32,
}

impl LaunchOpts {
    /// Fills `attrs` with the launch attributes; returns how many.
    fn attributes(self, pdl: bool, attrs: &mut [sys::CUlaunchAttribute; 3]) -> usize {
        let mut n = 0;
        if pdl && self.early {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attrs[n].value.programmaticStreamSerializationAllowed = 1;
            n += 1;
        }
        if self.cooperative {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
            attrs[n].value.cooperative = 1;
            n += 1;
        }
        if self.cluster_y > 1 {
            attrs[n].id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
            attrs[n].value.clusterDim.x = 1;
            attrs[n].value.clusterDim.y = self.cluster_y;
            attrs[n].value.clusterDim.z = 1;
            n += 1;
        }
        n
    }
}

/// One GPU and what a program keeps on it.
pub(crate) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Side streams for the copies around replayed step graphs (inputs up,
    /// picks down): ordered by events, so they run beside the step before
    /// rather than between two steps.
    pub up: Arc<CudaStream>,
    pub down: Arc<CudaStream>,
    pub sms: u32,
    pub name: String,
    pub arch: (i32, i32),
    /// Launch kernels that ask for it (every kernel through `launch!` and
    /// the generated chains; the GEMVs whose weights are weights; decode
    /// attention at ≤ 4 tokens) with programmatic dependent launch (sm_90
    /// and later; `OPTC_CUDA_PDL=0` turns it off): each may start while
    /// the kernel before it runs. A GEMV streams its first weights (which
    /// no kernel writes), decode attention its first cached keys (all but
    /// the current token's, which earlier steps wrote), an early chain its
    /// whole work, before it waits for that kernel (`pdl_wait` in
    /// common.cuh says what may be done early).
    pub pdl: bool,
    /// Key chunks (32 keys; 16 for head dims past 64) each warp of a decode
    /// block takes before the keys are split over more blocks
    /// (flash-decoding). One split merges in shared memory; each more costs
    /// a round of partial results through global memory, which at one
    /// token a step is most of the kernel's time.
    /// `OPTC_DECODE_CHUNKS` overrides it (to compare).
    pub decode_chunks: usize,
    /// Warps of a tensor-core decode block (4 or 8: `paged_decode8_*`
    /// takes a key chunk a warp up to twice the keys before it loops).
    /// `OPTC_DECODE_WARPS` overrides it.
    pub decode_warps: usize,
    /// The DRAM bandwidth the memory clock and bus width give (TB/s; 0 if
    /// the driver does not say): 3.35 on an H100 SXM, 4.9 on an H200.
    pub dram_tbps: f64,
    /// Use the decode GEMV geometries for DRAM of `WIDE_DRAM_TBPS` or more
    /// (`OPTC_GEMV_WIDE_DRAM` in gemv.cu: gate/up's ring filled by bulk
    /// copies, the QKV GEMV with two loads a stage), which the step bench
    /// measured 10 and 7 µs a W1 step faster on an H200 and no faster on an
    /// H100. `OPTC_CUDA_WIDE_DRAM=1`/`0` overrides (to compare).
    pub wide_dram: bool,
    /// One module per compiled unit (see `compile::sources`).
    modules: Vec<Arc<CudaModule>>,
    /// Optional kernels in modules of their own (the tensor-core prefill, the megakernel).
    extra: Vec<Arc<CudaModule>>,
    functions: HashMap<String, CudaFunction>,
}

impl Gpu {
    pub fn new(ordinal: usize) -> Result<Gpu, String> {
        available()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("cannot open GPU {ordinal}: {e}"))?;
        // One stream orders everything; cudarc's per-buffer events would
        // only add work to every launch.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own: CUDA graphs cannot capture the legacy one.
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("cannot create a CUDA stream: {e}"))?;
        let side = || {
            ctx.new_stream()
                .map_err(|e| format!("cannot create a CUDA stream: {e}"))
        };
        let (up, down) = (side()?, side()?);
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| e.to_string())? as u32;
        let arch = ctx.compute_capability().map_err(|e| e.to_string())?;
        let name = ctx.name().unwrap_or_else(|_| "GPU".into());
        let attr = |a| ctx.attribute(a).map_or(0.0, |v| v.max(0) as f64);
        // kHz, double data rate, bits: bytes a second.
        let dram_tbps = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE)
            * 1e3
            * 2.0
            * attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH)
            / 8.0
            / 1e12;
        let wide_dram = wide_dram(dram_tbps, std::env::var("OPTC_CUDA_WIDE_DRAM").ok().as_deref());
        tracing::debug!(gpu = %name, dram_tbps, wide_dram, "device");
        Ok(Gpu {
            ctx,
            stream,
            up,
            down,
            sms,
            name,
            arch,
            dram_tbps,
            wide_dram,
            pdl: arch.0 >= 9 && std::env::var("OPTC_CUDA_PDL").map_or(true, |v| v != "0"),
            decode_chunks: std::env::var("OPTC_DECODE_CHUNKS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n > 0)
                .map(|n: usize| n.min(MAX_DECODE_CHUNKS))
                .unwrap_or(DECODE_CHUNKS_PER_WARP),
            decode_warps: std::env::var("OPTC_DECODE_WARPS")
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&n| n == 4 || n == 8)
                .unwrap_or(DECODE_WARPS),
            modules: Vec::new(),
            extra: Vec::new(),
            functions: HashMap::new(),
        })
    }

    /// Launches `f` on the program's stream with the
    /// programmatic-stream-serialization attribute when `pdl` is on and
    /// the caller asks for it (`early`; a plain launch otherwise), for
    /// kernels that call `pdl_wait()` before they read anything an
    /// earlier kernel writes.
    ///
    /// # Safety
    /// `params` must point at each argument's value, in the kernel's
    /// parameter order and with its parameter types, alive for the call;
    /// pointers among them must be valid for what the kernel does.
    pub unsafe fn launch_dependent(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        early: bool,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), String> {
        self.launch_with(f, cfg, early, false, params)
    }

    /// [`Gpu::launch_dependent`], and as a cooperative launch when
    /// `cooperative` holds: the driver then refuses a grid whose blocks
    /// cannot all be resident at once, rather than letting a kernel with
    /// grid barriers wait forever.
    ///
    /// # Safety
    /// As for [`Gpu::launch_dependent`].
    pub unsafe fn launch_with(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        early: bool,
        cooperative: bool,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), String> {
        let opts = LaunchOpts {
            early,
            cooperative,
            cluster_y: 1,
        };
        self.launch_opts(f, cfg, opts, params)
    }

    /// [`Gpu::launch_dependent`], with the grid's blocks in clusters of
    /// (1, `cluster_y`, 1) (sm_90 and later; see [`Gpu::cluster_fits`]).
    ///
    /// # Safety
    /// As for [`Gpu::launch_dependent`].
    pub unsafe fn launch_clustered(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        cluster_y: u32,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), String> {
        let opts = LaunchOpts {
            early: true,
            cooperative: false,
            cluster_y,
        };
        self.launch_opts(f, cfg, opts, params)
    }

    unsafe fn launch_opts(
        &self,
        f: &CudaFunction,
        cfg: cudarc::driver::LaunchConfig,
        opts: LaunchOpts,
        params: &mut [*mut std::ffi::c_void],
    ) -> Result<(), String> {
        let mut attrs: [sys::CUlaunchAttribute; 3] = std::mem::zeroed();
        let n = opts.attributes(self.pdl, &mut attrs);
        let config = self.launch_config(cfg, &mut attrs[..n]);
        self.ctx
            .bind_to_thread()
            .map_err(|e| format!("kernel launch: {e}"))?;
        sys::cuLaunchKernelEx(
            &config,
            f.cu_function(),
            params.as_mut_ptr(),
            std::ptr::null_mut(),
        )
        .result()
        .map_err(|e| format!("kernel launch: {e}"))
    }

    /// The driver's launch config for `cfg` on the program's stream.
    fn launch_config(
        &self,
        cfg: cudarc::driver::LaunchConfig,
        attrs: &mut [sys::CUlaunchAttribute],
    ) -> sys::CUlaunchConfig {
        sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: attrs.len() as u32,
        }
    }

    /// Asks for the SM's largest shared-memory carveout while `f` runs (a
    /// hint; a kernel with little shared memory of its own would otherwise
    /// prefer a smaller one than kernels it may share an SM with).
    pub fn prefer_shared_memory(&self, f: &CudaFunction) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: `f` is a loaded function of this context. A refusal
        // leaves the default, which only costs co-residence.
        let _ = unsafe {
            sys::cuFuncSetAttribute(
                f.cu_function(),
                sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            )
        };
    }

    /// Whether clusters of `cluster_y` blocks of `threads` threads of `f`
    /// can be resident on this GPU (sm_90 and later), allowing sizes past
    /// the portable 8 on `f` first when asked for. The driver refuses a
    /// clustered launch that cannot be placed, so a kernel asks here once
    /// and launches without clusters otherwise.
    pub fn cluster_fits(&self, f: &CudaFunction, cluster_y: u32, threads: u32) -> bool {
        if self.arch.0 < 9 || cluster_y < 2 || self.ctx.bind_to_thread().is_err() {
            return false;
        }
        // SAFETY: `f` is a loaded function of this context, and `config`
        // and its attributes outlive the calls that read them.
        unsafe {
            if cluster_y > 8
                && sys::cuFuncSetAttribute(
                    f.cu_function(),
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                    1,
                )
                .result()
                .is_err()
            {
                return false;
            }
            let mut attrs: [sys::CUlaunchAttribute; 3] = std::mem::zeroed();
            let opts = LaunchOpts {
                early: false,
                cooperative: false,
                cluster_y,
            };
            let n = opts.attributes(false, &mut attrs);
            let cfg = cudarc::driver::LaunchConfig {
                grid_dim: (1, cluster_y, 1),
                block_dim: (threads, 1, 1),
                shared_mem_bytes: 0,
            };
            let config = self.launch_config(cfg, &mut attrs[..n]);
            let mut clusters = 0;
            sys::cuOccupancyMaxActiveClusters(&mut clusters, f.cu_function(), &config)
                .result()
                .is_ok_and(|_| clusters > 0)
        }
    }

    pub fn load(&mut self, images: Vec<cudarc::nvrtc::Ptx>) -> Result<(), String> {
        self.modules = images
            .into_iter()
            .map(|image| self.ctx.load_module(image))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("loading the compiled kernels: {e}"))?;
        self.functions.clear();
        Ok(())
    }

    pub fn load_extra(&mut self, ptx: cudarc::nvrtc::Ptx) -> Result<(), String> {
        let m = self
            .ctx
            .load_module(ptx)
            .map_err(|e| format!("loading the compiled kernels: {e}"))?;
        self.extra.push(m);
        Ok(())
    }

    /// A kernel of the optional modules, if it was built.
    pub fn extra_function(&mut self, name: &str) -> Option<CudaFunction> {
        self.extra.iter().find_map(|m| m.load_function(name).ok())
    }

    /// A kernel of the loaded modules, looked up once.
    pub fn function(&mut self, name: &str) -> Result<CudaFunction, String> {
        if let Some(f) = self.functions.get(name) {
            return Ok(f.clone());
        }
        if self.modules.is_empty() {
            return Err("no kernels are loaded".into());
        }
        let f = self
            .modules
            .iter()
            .find_map(|m| m.load_function(name).ok())
            .ok_or_else(|| format!("kernel {name} is missing from the compiled modules"))?;
        self.functions.insert(name.to_string(), f.clone());
        Ok(f)
    }

    pub fn sync(&self) -> Result<(), String> {
        self.stream.synchronize().map_err(|e| format!("GPU error: {e}"))
    }

    /// Waits for the side streams' copies too.
    pub fn sync_all(&self) -> Result<(), String> {
        for s in [&self.stream, &self.up, &self.down] {
            s.synchronize().map_err(|e| format!("GPU error: {e}"))?;
        }
        Ok(())
    }

    pub fn htod(&self, dst: u64, bytes: &[u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        unsafe { result::memcpy_htod_async(dst, bytes, self.stream.cu_stream()) }
            .map_err(|e| format!("copy to the GPU: {e}"))
    }

    /// Copies device bytes to the host (waits for the stream first).
    pub fn dtoh(&self, src: u64, bytes: &mut [u8]) -> Result<(), String> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.sync()?;
        unsafe { result::memcpy_dtoh_sync(bytes, src) }.map_err(|e| format!("copy from the GPU: {e}"))
    }

    pub fn zero(&self, dst: u64, bytes: usize) -> Result<(), String> {
        if bytes == 0 {
            return Ok(());
        }
        unsafe { result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .map_err(|e| format!("GPU memset: {e}"))
    }

    /// Free and total device memory, in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize), String> {
        self.ctx.mem_get_info().map_err(|e| e.to_string())
    }
}

/// A page-locked host buffer: copies between it and the GPU are truly
/// asynchronous (from pageable memory the driver stages them, and a copy
/// back waits for the GPU).
pub(crate) struct PinnedHost {
    ptr: *mut u8,
    len: usize,
}

impl PinnedHost {
    pub fn new(len: usize) -> Result<PinnedHost, String> {
        let mut p: *mut std::ffi::c_void = std::ptr::null_mut();
        // SAFETY: cuMemAllocHost writes a pointer to `len` bytes into `p`.
        unsafe { sys::cuMemAllocHost_v2(&mut p, len.max(1)) }
            .result()
            .map_err(|e| format!("{len} bytes of pinned host memory: {e}"))?;
        Ok(PinnedHost { ptr: p.cast(), len })
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `bytes` at the start. The caller makes sure no copy that
    /// reads this buffer is still pending.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() > self.len {
            return Err(format!(
                "{} bytes for a pinned buffer of {}",
                bytes.len(),
                self.len
            ));
        }
        // SAFETY: `ptr` holds `len` bytes, which this borrow owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len)[..bytes.len()].copy_from_slice(bytes) };
        Ok(())
    }
}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        // SAFETY: allocated by cuMemAllocHost; owners wait for the copies
        // that use it before dropping it.
        unsafe {
            let _ = sys::cuMemFreeHost(self.ptr.cast());
        }
    }
}

/// Device buffers by capacity. A freed buffer goes back to the pool and is
/// handed out again for a request it fits (within 2x), so steady-state
/// steps allocate nothing; one stream orders all use, so reuse right after
/// the last reader was queued is safe.
#[derive(Default)]
pub(crate) struct Pool {
    // (capacity, pointer) of buffers not in use.
    free: Vec<(usize, u64)>,
    caps: HashMap<u64, usize>,
    /// Bytes allocated from the driver.
    pub bytes: usize,
    /// Buffers handed back so far: a run during which this has not moved
    /// hands out only buffers no kernel of it has used.
    pub released: u64,
}

impl Pool {
    pub fn alloc(&mut self, bytes: usize) -> Result<u64, String> {
        // Sizes round up to 64 KiB, so slightly larger requests later
        // still fit; a free buffer serves a request up to half its size.
        let cap = bytes.max(1).div_ceil(1 << 16) << 16;
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, &(c, _))| c >= bytes && c <= cap.saturating_mul(2))
            .min_by_key(|(_, &(c, p))| (c, p))
            .map(|(i, _)| i);
        if let Some(i) = best {
            return Ok(self.free.swap_remove(i).1);
        }
        let ptr = unsafe { result::malloc_sync(cap) }.map_err(|e| {
            format!(
                "out of GPU memory: {cap} bytes requested with {} already held ({e})",
                self.bytes
            )
        })?;
        self.bytes += cap;
        self.caps.insert(ptr, cap);
        Ok(ptr)
    }

    pub fn release(&mut self, ptr: u64) {
        if let Some(&cap) = self.caps.get(&ptr) {
            self.free.push((cap, ptr));
            self.released += 1;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (&ptr, _) in self.caps.iter() {
            unsafe {
                let _ = result::free_sync(ptr);
            }
        }
    }
}

/// A device allocation that lives as long as the program (weights, state).
pub(crate) struct DeviceBox {
    pub ptr: u64,
    pub bytes: usize,
}

impl DeviceBox {
    pub fn new(bytes: usize) -> Result<DeviceBox, String> {
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }
            .map_err(|e| format!("out of GPU memory allocating {bytes} bytes ({e})"))?;
        Ok(DeviceBox { ptr, bytes })
    }
}

impl Drop for DeviceBox {
    fn drop(&mut self) {
        unsafe {
            let _ = result::free_sync(self.ptr);
        }
    }
}

#[cfg(test)]
mod tests {
    /// An H200 (HBM3e: 3,201 MHz, 6,144 bits) gets the wide-DRAM GEMVs, an
    /// H100 SXM (HBM3: 2,619 MHz, 5,120 bits) and a driver that reports no
    /// clock do not; the switch forces either way.
    #[test]
    fn wide_dram_is_the_h200_not_the_h100() {
        let tbps = |mhz: f64, bits: f64| mhz * 1e6 * 2.0 * bits / 8.0 / 1e12;
        assert!(super::wide_dram(tbps(3201.0, 6144.0), None));
        assert!(!super::wide_dram(tbps(2619.0, 5120.0), None));
        assert!(!super::wide_dram(0.0, None));
        assert!(super::wide_dram(0.0, Some("1")));
        assert!(!super::wide_dram(9.0, Some("0")));
        assert!(!super::wide_dram(3.35, Some("yes")));
    }
}
