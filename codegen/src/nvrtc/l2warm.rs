//! Weights asked of L2 ahead of a batched decode linear.
//!
//! At decode batches past the GEMVs' rows (W2's 32, W3's 128) the linears
//! run on cuBLASLt, which streams the weights at 1.3–2.5 TB/s and cannot
//! start before the kernel ahead of it ends; between two linears DRAM idles
//! while the small kernels run (add + RMSNorm, rope, attention, SwiGLU).
//! Right after a linear is launched, a side stream waits for it and then
//! runs `l2_warm` (layout.cu) over the first bytes of the next linear's
//! weights, beside those small kernels; the next linear waits for that
//! kernel too. Captured step graphs get the same fork and join as
//! branches. `kernels/bench/l2warm_bench.cu` measured 0.5–2.2 µs a linear
//! on an H100 at 32 rows. End to end (H100, docs/perf.md, twenty-first
//! session) W2 gained 2.6–3.2 % with 8 MiB from 16 blocks, 1.6 % with
//! 4 MiB; more MiB, or 8 blocks (the linear then waits for the warm's
//! requests to go out), lost; W3's 128 rows neither gained nor lost with
//! 16 blocks (1–2 % lost with 66), hence the defaults below.

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaFunction, CudaStream, LaunchConfig, PushKernelArg};

use super::device::Gpu;

/// MiB of each linear's weights asked ahead by default
/// (`OPTC_CUDA_L2_WARM_MB` overrides it; 0 turns it off).
const L2_WARM_MIB: usize = 8;

/// Most rows of a linear whose weights are asked ahead: at W3's 128-row
/// decode steps it gained nothing, and the more rows, the more a linear
/// is bound by its arithmetic rather than its weights. (Short prefills
/// and mixed steps of 5-64 rows get warms too.)
const L2_WARM_MAX_ROWS: usize = 64;

/// Threads of an `l2_warm` block.
const THREADS: u32 = 512;

/// `l2_warm` blocks (`OPTC_CUDA_L2_WARM_BLOCKS` overrides it): few, so
/// the small kernels it runs beside keep the GPU, but enough that its
/// requests are out before the gap ends (8 blocks lost 4 % at W2, 32
/// gained half of what 16 did).
const BLOCKS: u32 = 16;

/// Most `l2_warm` blocks `OPTC_CUDA_L2_WARM_BLOCKS` may ask for.
const MAX_BLOCKS: u32 = 4096;

/// The side stream, the two events that fork it from the program's stream
/// and join it back, and whether a warm is in flight.
pub(super) struct L2Warm {
    f: CudaFunction,
    stream: Arc<CudaStream>,
    fork: CudaEvent,
    join: CudaEvent,
    /// Bytes of each linear's weights asked ahead.
    bytes: usize,
    /// Linears with fewer bytes of weights get no warm
    /// (`OPTC_CUDA_L2_WARM_MIN_MB`, default 0): a small linear's time on
    /// cuBLASLt is mostly its fixed cost.
    min_bytes: usize,
    pending: bool,
    blocks: u32,
    /// Whether each linear waits for its warm (the default), or only the
    /// run's end does (`OPTC_CUDA_L2_WARM_JOIN=run`): a warm whose
    /// requests are late then overlaps its linear instead of delaying it.
    join_each: bool,
    /// Most rows of a linear whose weights are asked ahead
    /// (`L2_WARM_MAX_ROWS`; `OPTC_CUDA_L2_WARM_ROWS` overrides it).
    pub(super) max_rows: usize,
    /// Warm launches so far (a graph replay does not count).
    pub(super) launches: u64,
}

impl L2Warm {
    /// MiB to ask ahead: `OPTC_CUDA_L2_WARM_MB`, else `L2_WARM_MIB`.
    pub(super) fn mib_from_env() -> usize {
        std::env::var("OPTC_CUDA_L2_WARM_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(L2_WARM_MIB)
    }

    /// The warm asking `mib` MiB of each linear's weights ahead on `gpu`;
    /// `None` when `mib` is 0 (off).
    pub(super) fn new(gpu: &mut Gpu, mib: usize) -> Result<Option<L2Warm>, String> {
        if mib == 0 {
            return Ok(None);
        }
        let f = gpu.function("l2_warm")?;
        let ctx = gpu.stream.context();
        let err = |e: cudarc::driver::DriverError| format!("L2 warm stream: {e}");
        Ok(Some(L2Warm {
            f,
            stream: ctx.new_stream().map_err(err)?,
            fork: ctx.new_event(None).map_err(err)?,
            join: ctx.new_event(None).map_err(err)?,
            bytes: mib.saturating_mul(1 << 20),
            min_bytes: std::env::var("OPTC_CUDA_L2_WARM_MIN_MB")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .map_or(0, |mib| mib.saturating_mul(1 << 20)),
            pending: false,
            blocks: std::env::var("OPTC_CUDA_L2_WARM_BLOCKS")
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&b| b > 0)
                .map_or(BLOCKS, |b| b.min(MAX_BLOCKS)),
            join_each: std::env::var("OPTC_CUDA_L2_WARM_JOIN").map_or(true, |v| v != "run"),
            max_rows: std::env::var("OPTC_CUDA_L2_WARM_ROWS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(L2_WARM_MAX_ROWS),
            launches: 0,
        }))
    }

    /// Asks L2 for the first `self.bytes` of the `len` bytes at `weights`
    /// once what `main` holds so far has run. No warm is in flight then
    /// unless only the run's end joins (the linear the last one was for
    /// joined it just before its launch). Weights under `min_bytes` get
    /// none.
    pub(super) fn start(&mut self, main: &CudaStream, weights: u64, len: usize) -> Result<(), String> {
        if len < self.min_bytes {
            return Ok(());
        }
        let bytes = self.bytes.min(len) as u64;
        let err = |e: cudarc::driver::DriverError| format!("L2 warm: {e}");
        self.fork.record(main).map_err(err)?;
        self.stream.wait(&self.fork).map_err(err)?;
        let cfg = LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut launch = self.stream.launch_builder(&self.f);
        launch.arg(&weights).arg(&bytes);
        // SAFETY: `l2_warm(const char*, unsigned long long)` takes these two
        // arguments, and it only issues prefetches inside the weights.
        unsafe { launch.launch(cfg) }.map_err(err)?;
        self.join.record(&self.stream).map_err(err)?;
        self.pending = true;
        self.launches += 1;
        Ok(())
    }

    /// Asks `mib` (> 0) MiB of each linear's weights ahead from now on.
    pub(super) fn set_mib(&mut self, mib: usize) {
        self.bytes = mib.saturating_mul(1 << 20);
    }

    /// Before the linear a warm was for: `main` waits for it, unless only
    /// the run's end joins.
    pub(super) fn before_linear(&mut self, main: &CudaStream) -> Result<(), String> {
        if self.join_each {
            self.finish(main)?;
        }
        Ok(())
    }

    /// Makes `main` wait for the warms in flight, if any (the side stream
    /// runs them in order, so the last one's join covers all): before a
    /// run ends, since a captured graph must join every branch it forked.
    pub(super) fn finish(&mut self, main: &CudaStream) -> Result<(), String> {
        if self.pending {
            // Cleared first: a failed wait leaves nothing for later runs
            // to wait on (the run fails, and a capture with it).
            self.pending = false;
            main.wait(&self.join).map_err(|e| format!("L2 warm join: {e}"))?;
        }
        Ok(())
    }

    /// Forgets the warm in flight without a join: its run failed (and a
    /// capture with it), so nothing waits for that warm.
    pub(super) fn abandon(&mut self) {
        self.pending = false;
    }
}
