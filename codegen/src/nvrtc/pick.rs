//! Picking each row's next token where the logits are: greedy (argmax)
//! and sampled (temperature, top-k, top-p, min-p), so a step copies back
//! 8 bytes a sequence instead of a row of logits. Both run inside the
//! captured decode graph; a sampled pick's parameters travel in the input
//! arena, so a replay reads the new ones.

use std::collections::BTreeMap;

use cudarc::driver::CudaFunction;
use optc_ir::Tensor;

use super::device::{PinnedHost, Pool};
use super::graphs::ReplayEvents;
use super::launch::cfg;
use super::program::{node_err, CudaProgram, SPLIT_COUNTERS};
use super::select::float_name;
use crate::CodegenError;

/// Ids of a run to overwrite with the previous run's picks.
pub(super) struct IdsPatch<'a> {
    pub(super) input: &'a str,
    pub(super) ids: &'a [PickedId],
}

/// One row's sampling on the GPU, in the host sampler's terms
/// (`optc_runtime::sampler`): penalties and masks are the host's job, so
/// a row that needs them does not come here.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleRow {
    /// 0 means greedy (the lowest id among the largest logits).
    pub temperature: f32,
    /// Keep the `k` most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest most-likely set reaching this mass, in (0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely, in [0, 1].
    pub min_p: f32,
    /// The request's uniform draw in [0, 1) for this step.
    pub uniform: f64,
}

/// Bytes of one [`SampleRow`] as the kernel reads it (`struct SampleRow`
/// in `sample.cu`).
pub(super) const SAMPLE_ROW_BYTES: usize = 24;

impl SampleRow {
    fn check(&self) -> Result<(), String> {
        let ok = self.temperature >= 0.0
            && self.temperature.is_finite()
            && self.top_p > 0.0
            && self.top_p <= 1.0
            && (0.0..=1.0).contains(&self.min_p)
            && self.top_k != Some(0)
            && (0.0..1.0).contains(&self.uniform);
        if ok {
            Ok(())
        } else {
            Err(format!("bad sampling row {self:?}"))
        }
    }

    fn to_le_bytes(self) -> [u8; SAMPLE_ROW_BYTES] {
        let mut b = [0u8; SAMPLE_ROW_BYTES];
        let k = self.top_k.map_or(0, |k| k.min(i32::MAX as usize) as i32);
        b[0..4].copy_from_slice(&self.temperature.to_le_bytes());
        b[4..8].copy_from_slice(&k.to_le_bytes());
        b[8..12].copy_from_slice(&self.top_p.to_le_bytes());
        b[12..16].copy_from_slice(&self.min_p.to_le_bytes());
        b[16..24].copy_from_slice(&self.uniform.to_le_bytes());
        b
    }
}

/// A submitted run ([`CudaProgram::submit_pick`]) whose picks are not
/// read yet.
pub(super) struct PendingPicks {
    /// The picks on the GPU (tokens, then log probabilities); 0 once
    /// released (a run outside a graph, after the next run read them).
    pub(super) buf: u64,
    pub(super) rows: usize,
    /// Columns of the logits they were picked from (a token's bound).
    pub(super) cols: usize,
    pub(super) captured: bool,
    /// The run's output buffers, released with `buf` (pool buffers unless
    /// `captured`).
    pub(super) ptr: Vec<u64>,
    /// The pinned slot the picks are copied to, and the event after it
    /// (`None` once read, or when the copy could not be queued).
    pub(super) host: Option<(usize, cudarc::driver::CudaEvent)>,
}

/// A greedy pick that the one-row ring GEMV making its logits does as it
/// stores them (`gemv*_ring_argmax_*`), instead of the argmax kernel after
/// it: set up by `execute` for a greedy pick, taken by the launch of the
/// linear whose result `value` is, if that runs on the ring.
pub(super) struct GemvPick {
    pub(super) value: usize,
    /// The picks (tokens, then log probabilities), once a GEMV took it.
    pub(super) buf: Option<u64>,
    /// The buffer to pick into, when the caller allocated it (a capture).
    pub(super) into: Option<u64>,
}

/// What `gemv*_ring_argmax_*` takes besides the GEMV's operands.
pub(super) struct GemvPickArgs {
    pub(super) part: u64,
    pub(super) counter: u64,
    pub(super) tok: u64,
    pub(super) lp: u64,
}

impl GemvPick {
    /// The buffers for a ring GEMV of `blocks` blocks making `out`, when
    /// this pick is for it (`owner` maps values to the buffers they view)
    /// and split counters exist: the picks (kept in `buf`) and the blocks'
    /// parts (the caller releases them once the launch is queued). `None`
    /// leaves the pick to the argmax kernel.
    pub(super) fn args(
        pick: Option<&mut GemvPick>,
        owner: &[usize],
        out: usize,
        counters: Option<u64>,
        pool: &mut Pool,
        blocks: u32,
    ) -> Result<Option<GemvPickArgs>, String> {
        let Some(pick) = pick.filter(|p| p.buf.is_none() && owner[p.value] == out) else {
            return Ok(None);
        };
        let Some(counter) = counters else {
            return Ok(None);
        };
        let buf = match pick.into {
            Some(b) => b,
            None => pool.alloc(8)?,
        };
        let part = match pool.alloc(blocks.max(1) as usize * 12) {
            Ok(p) => p,
            Err(e) => {
                if pick.into.is_none() {
                    pool.release(buf);
                }
                return Err(e);
            }
        };
        pick.buf = Some(buf);
        Ok(Some(GemvPickArgs {
            part,
            counter,
            tok: buf,
            lp: buf + 4,
        }))
    }
}

/// Token ids of a submitted run that are the previous run's picks:
/// element `index` of input `input` gets the token picked for row `row`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PickedId {
    pub index: usize,
    pub row: usize,
}

/// The pick a run ends with, on output value `value`.
pub(super) struct Pick {
    pub(super) value: usize,
    pub(super) kernel: PickKernel,
}

pub(super) enum PickKernel {
    /// `argmax_part_{dtype}` (its last block a row combines; or
    /// `argmax_combine` after it), or `argmax_cluster_{dtype}` with its
    /// blocks a row and threads a block.
    Argmax {
        part: CudaFunction,
        cluster: Option<(CudaFunction, u32, u32)>,
    },
    /// The sampling kernels with the rows' parameters (as they read them).
    Sample {
        kernels: SampleKernels,
        params: Vec<u8>,
        /// The largest top-k when every row samples with one (no greedy
        /// row): whether all rows may take the one-pass kernel
        /// ([`one_pass_rows`]).
        top_k_most: Option<usize>,
    },
}

/// Threads of an `argmax_cluster_*` block: 256 by default, so a block
/// (at most 64 registers a thread, its `__launch_bounds__`) fits on an SM
/// beside the LM head's three ring blocks and waits there for their end;
/// `OPTC_CUDA_ARGMAX_THREADS` of 512 or more takes 512 (about two 16-byte
/// groups a thread instead of four at a 128k vocabulary).
pub(super) fn argmax_cluster_threads() -> u32 {
    let asked = std::env::var("OPTC_CUDA_ARGMAX_THREADS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok());
    if asked.is_some_and(|t| t >= 512) {
        512
    } else {
        256
    }
}

/// Most blocks of `argmax_cluster_*` a row: the largest cluster sm_90
/// allows (16, past the portable 8). At one row, 16 blocks of 256 threads
/// load a 128k-logit row in four 16-byte groups a thread, all at once.
pub(super) const ARGMAX_CLUSTER_MOST: u32 = 16;

/// The blocks of the cluster argmax a row that fit for every kernel of
/// `fs` (blocks of `threads`) on `gpu`: the `asked` size (at most
/// `ARGMAX_CLUSTER_MOST`), else the portable 8 (for asked sizes past it),
/// else 0 (the chunked argmax). 0 and 1 need no cluster.
pub(super) fn argmax_cluster_fit<'a>(
    gpu: &super::device::Gpu,
    fs: impl Iterator<Item = &'a CudaFunction> + Clone,
    asked: u32,
    threads: u32,
) -> u32 {
    let asked = asked.min(ARGMAX_CLUSTER_MOST);
    if asked <= 1 {
        return asked;
    }
    [asked, 8]
        .into_iter()
        .filter(|&b| b <= asked)
        .find(|&b| fs.clone().all(|f| gpu.cluster_fits(f, b, threads)))
        .unwrap_or(0)
}

/// Pairs a piece of a row leaves for the one-pass kernel, at most
/// (`SAMPLE_PIECE_CANDS` in sample.cu), and candidates a row's last block
/// sorts, at most (`SAMPLE_CAP`).
const SAMPLE_PIECE_CANDS: usize = 1024;
const SAMPLE_CAP: usize = 2048;

/// Whether rows of `cols` logits whose top-k is at most `top_k_most`
/// (every row sampled, none greedy) are all sampled by `sample_stats_*`
/// alone: their first top_k are among each piece's first top_k, so no
/// histogram is needed (sample.cu's `sample_by_candidates`, row by row).
fn one_pass_rows(top_k_most: Option<usize>, cols: usize) -> bool {
    let pieces = cols.div_ceil(SAMPLE_CHUNK).max(1);
    top_k_most.is_some_and(|k| k <= SAMPLE_PIECE_CANDS && k * pieces <= SAMPLE_CAP)
}

/// A float type's sampling kernels (sample.cu): each row's pieces of
/// `SAMPLE_CHUNK` logits get their maximum (`sample_stats_*`), then their
/// share of the softmax sums and the coarse histogram (`sample_hist_*`),
/// a block each; `sample_*` adds the parts up and draws, a block a row.
#[derive(Clone)]
pub(super) struct SampleKernels {
    pub(super) stats: CudaFunction,
    pub(super) hist: CudaFunction,
    pub(super) draw: CudaFunction,
}

/// Logits a block of `sample_stats_*` and `sample_hist_*` takes
/// (`SAMPLE_CHUNK` in sample.cu).
const SAMPLE_CHUNK: usize = 4096;

/// Bytes of a piece's `SampleStat` and `SamplePart` (sample.cu).
const SAMPLE_STAT_BYTES: usize = 8;
const SAMPLE_PART_BYTES: usize = 16 + 512 * 12 + 256 * 8;

impl Pick {
    /// Whether the pick samples (a captured graph is one or the other).
    pub(super) fn samples(&self) -> bool {
        matches!(self.kernel, PickKernel::Sample { .. })
    }

    /// What a captured graph's pick launches over rows of `dims`
    /// logits: 0 the argmax, 1 the three sampling kernels, 2 the one-pass
    /// one (`one_pass`: the program may sample rows in one pass).
    pub(super) fn launches(&self, dims: &[usize], one_pass: bool) -> u8 {
        match &self.kernel {
            PickKernel::Argmax { .. } => 0,
            PickKernel::Sample { top_k_most, .. } => {
                let cols = dims.get(1).copied().unwrap_or(0);
                1 + u8::from(one_pass && one_pass_rows(*top_k_most, cols))
            }
        }
    }

    /// The sampling parameters to copy up with the inputs.
    pub(super) fn params(&self) -> &[u8] {
        match &self.kernel {
            PickKernel::Sample { params, .. } => params,
            PickKernel::Argmax { .. } => &[],
        }
    }
}

impl CudaProgram {
    /// Runs the program and returns, for each row of the 2-D float output
    /// `output` (logits), the index of its largest value and that value's
    /// log-softmax: greedy sampling without copying the rows back.
    pub fn run_greedy(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        output: &str,
    ) -> Result<Vec<(u32, f32)>, CodegenError> {
        let pick = self.make_pick(output, None)?;
        self.run_pick(inputs, pick)
    }

    /// Runs the program and samples each row of the 2-D float output
    /// `output` (logits) with its [`SampleRow`]: the token and its log
    /// probability under the tempered logits (before the filters, as the
    /// host sampler reports it). The same rows and uniforms give the same
    /// tokens on every run.
    pub fn run_sample(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        output: &str,
        rows: &[SampleRow],
    ) -> Result<Vec<(u32, f32)>, CodegenError> {
        let pick = self.make_pick(output, Some(rows))?;
        self.run_pick(inputs, pick)
    }

    /// Like [`CudaProgram::run_greedy`] (`rows` `None`) or
    /// [`CudaProgram::run_sample`], but returns once the run is launched;
    /// [`CudaProgram::collect_picks`] returns its picks. While the host
    /// prepares this run, the one submitted before still runs on the GPU;
    /// its picks are read just before this run's inputs go up, and the
    /// elements of input `ids_input` listed in `from_prev` become them
    /// (tokens the host did not know when it planned this run).
    pub fn submit_pick(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        output: &str,
        rows: Option<&[SampleRow]>,
        ids_input: &str,
        from_prev: &[PickedId],
    ) -> Result<(), CodegenError> {
        let pick = self.make_pick(output, rows)?;
        let patch = IdsPatch {
            input: ids_input,
            ids: from_prev,
        };
        let ex = self.execute_patched(inputs, Some(pick), Some(patch))?;
        let buf = ex
            .picked
            .ok_or_else(|| node_err(&self.graph.name)("the run picked no tokens".to_string()))?;
        let (v, _) = self.pick_output(output)?;
        let (rows, cols) = (ex.dims.dims[v][0], ex.dims.dims[v][1]);
        match self.copy_picks_back(buf, rows, ex.replayed.as_deref()) {
            Ok(host) => {
                self.pending.push_back(PendingPicks {
                    buf,
                    rows,
                    cols,
                    captured: ex.captured,
                    ptr: ex.ptr,
                    host: Some(host),
                });
                Ok(())
            }
            Err(e) => {
                // The run is queued but cannot be read: let it end (and a
                // copy back on the side stream), read the runs before (so
                // none points at buffers it reused) and give its buffers
                // back.
                let _ = self.gpu.sync_all();
                self.finish_pending();
                let mut p = PendingPicks {
                    buf,
                    rows,
                    cols,
                    captured: ex.captured,
                    ptr: ex.ptr,
                    host: None,
                };
                self.release_picked(&mut p);
                Err(e)
            }
        }
    }

    /// Queues the copy of a run's picks to a free pinned slot, right behind
    /// the run (so the next run may reuse its buffers and the host reads
    /// them without a sync); returns the slot and the event after the copy.
    /// A replay of a graph with a twin (`replayed`) copies on the side
    /// stream instead, so the next step does not wait for the copy; that
    /// graph waits for it (`copied`) before it writes its picks again.
    fn copy_picks_back(
        &mut self,
        buf: u64,
        rows: usize,
        replayed: Option<&ReplayEvents>,
    ) -> Result<(usize, cudarc::driver::CudaEvent), CodegenError> {
        let err = node_err(&self.graph.name);
        self.gpu.ctx.bind_to_thread().map_err(|e| err(e.to_string()))?;
        let slot = (0..)
            .find(|i| {
                self.pending
                    .iter()
                    .all(|p| p.host.as_ref().is_none_or(|h| h.0 != *i))
            })
            .unwrap_or(0);
        let bytes = rows.max(1) * 8;
        if self.pinned.len() <= slot || self.pinned[slot].len() < bytes {
            let b = PinnedHost::new(bytes.next_power_of_two()).map_err(&err)?;
            if self.pinned.len() <= slot {
                self.pinned.push(b);
            } else {
                self.pinned[slot] = b;
            }
        }
        let stream = match replayed {
            Some(r) => {
                self.gpu
                    .down
                    .wait(&r.done)
                    .map_err(|e| err(format!("copying picks back: {e}")))?;
                &self.gpu.down
            }
            None => &self.gpu.stream,
        };
        if rows > 0 {
            // SAFETY: the slot holds `bytes`, no pending copy targets it,
            // and `buf` holds the run's `rows` picks.
            unsafe {
                cudarc::driver::sys::cuMemcpyDtoHAsync_v2(
                    self.pinned[slot].ptr().cast(),
                    buf,
                    rows * 8,
                    stream.cu_stream(),
                )
            }
            .result()
            .map_err(|e| err(format!("copying picks back: {e}")))?;
        }
        if let Some(r) = replayed {
            r.copied.record(stream).map_err(|e| err(e.to_string()))?;
        }
        let event = self
            .gpu
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
            .and_then(|e| e.record(stream).map(|_| e))
            .map_err(|e| err(e.to_string()))?;
        Ok((slot, event))
    }

    /// The picks of the oldest submitted run not collected yet (waiting
    /// for it if need be).
    pub fn collect_picks(&mut self) -> Result<Vec<(u32, f32)>, CodegenError> {
        let picks = match self.collected.pop_front() {
            Some(p) => p,
            None => {
                let p = self.pending.pop_front().ok_or_else(|| CodegenError::Input {
                    name: self.graph.name.clone(),
                    message: "no submitted run to collect".into(),
                })?;
                self.read_pending(p)
            }
        };
        picks.map_err(node_err(&self.graph.name))
    }

    /// Waits for every submitted run not read yet and keeps their picks (or
    /// why they could not be read) for `collect_picks`; whether there was
    /// one.
    pub(super) fn finish_pending(&mut self) -> bool {
        let any = !self.pending.is_empty();
        while let Some(p) = self.pending.pop_front() {
            let r = self.read_pending(p);
            self.collected.push_back(r);
        }
        // No run is in flight now (the synchronous ones were waited for).
        self.retired.clear();
        any
    }

    /// Waits for a submitted run's picks to reach its pinned slot, reads
    /// them and releases the run's buffers (outside a graph).
    fn read_pending(&mut self, mut p: PendingPicks) -> Result<Vec<(u32, f32)>, String> {
        let t_wait = std::time::Instant::now();
        let Some((slot, event)) = p.host.take() else {
            return Err("a run whose picks were never copied back".into());
        };
        let r = event.synchronize().map_err(|e| format!("waiting for picks: {e}"));
        if r.is_ok() {
            // What the runs up to this one read is free to go.
            self.retired.clear();
        }
        let r = r.map(|()| {
            // SAFETY: the copy into the slot finished (the event after it).
            let bytes = unsafe { std::slice::from_raw_parts(self.pinned[slot].ptr(), p.rows * 8) };
            parse_picks(bytes, p.rows)
        });
        if p.captured {
            if let Some(prof) = &mut self.profile {
                prof.host_time("graph: wait + read tokens", t_wait);
                prof.last_pick = Some(std::time::Instant::now());
            }
        } else {
            self.release_picked(&mut p);
        }
        r
    }

    /// Returns a run's buffers outside a graph to the pool (later work on
    /// the stream may reuse them; what is queued before still reads them).
    pub(super) fn release_picked(&mut self, p: &mut PendingPicks) {
        if !p.captured && p.buf != 0 {
            self.pool.release(p.buf);
            p.buf = 0;
            self.release_outputs(&mut p.ptr);
        }
    }

    /// The pick for output `output`: argmax, or sampling with `rows`.
    fn make_pick(&self, output: &str, rows: Option<&[SampleRow]>) -> Result<Pick, CodegenError> {
        let (v, dtype) = self.pick_output(output)?;
        let Some(rows) = rows else {
            let part = self.argmax.get(dtype).cloned().ok_or_else(|| no_kernel(output))?;
            let (blocks, threads) = (self.argmax_cluster_blocks, self.argmax_cluster_threads);
            let cluster = (blocks > 0)
                .then(|| {
                    self.argmax_cluster
                        .get(dtype)
                        .map(|f| (f.clone(), blocks, threads))
                })
                .flatten();
            return Ok(Pick {
                value: v,
                kernel: PickKernel::Argmax { part, cluster },
            });
        };
        let kernels = self.sample.get(dtype).cloned().ok_or_else(|| no_kernel(output))?;
        let mut params = Vec::with_capacity(rows.len() * SAMPLE_ROW_BYTES);
        let mut top_k_most = Some(0);
        for (i, r) in rows.iter().enumerate() {
            r.check().map_err(|m| CodegenError::Input {
                name: output.into(),
                message: format!("row {i}: {m}"),
            })?;
            params.extend_from_slice(&r.to_le_bytes());
            top_k_most = match r.top_k {
                Some(k) if r.temperature > 0.0 => top_k_most.map(|m: usize| m.max(k)),
                _ => None,
            };
        }
        Ok(Pick {
            value: v,
            kernel: PickKernel::Sample {
                kernels,
                params,
                top_k_most,
            },
        })
    }

    /// The output's value and its float kernel suffix.
    fn pick_output(&self, output: &str) -> Result<(usize, &'static str), CodegenError> {
        let v = self
            .outputs
            .iter()
            .find(|(n, _)| n == output)
            .map(|(_, v)| *v)
            .ok_or_else(|| CodegenError::Input {
                name: output.into(),
                message: "no such output".into(),
            })?;
        let d = float_name(self.types[v].dtype)
            .filter(|_| self.types[v].rank() == 2)
            .ok_or_else(|| CodegenError::Input {
                name: output.into(),
                message: format!("picking tokens needs a 2-D float output, not {}", self.types[v]),
            })?;
        Ok((v, d))
    }

    fn run_pick(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        pick: Pick,
    ) -> Result<Vec<(u32, f32)>, CodegenError> {
        let v = pick.value;
        let ex = self.execute(inputs, Some(pick))?;
        let (rd, mut ptr) = (ex.dims, ex.ptr);
        let rows = rd.dims[v][0];
        let t_wait = std::time::Instant::now();
        let buf = ex
            .picked
            .ok_or_else(|| node_err(&self.graph.name)("the run picked no tokens".to_string()))?;
        let r = self.read_picks(buf, rows);
        if ex.captured {
            if let Some(p) = &mut self.profile {
                p.host_time("graph: wait + read tokens", t_wait);
                p.last_pick = Some(std::time::Instant::now());
            }
        } else {
            self.pool.release(buf);
            self.release_outputs(&mut ptr);
        }
        r.map_err(node_err(&self.graph.name))
    }

    /// Launches `pick` over the rows at `x` into `into` or a pool buffer
    /// (tokens, then log probabilities; `into` holds them, the caller made
    /// sure); `params` is where its sampling parameters are on the GPU.
    pub(super) fn launch_pick(
        &mut self,
        pick: &Pick,
        x: u64,
        dims: &[usize],
        params: u64,
        into: Option<u64>,
    ) -> Result<u64, String> {
        let (rows, cols) = (dims[0], dims[1]);
        if rows > i32::MAX as usize || cols > i32::MAX as usize {
            return Err(format!(
                "picking tokens from {rows} rows of {cols} logits: too large"
            ));
        }
        let buf = match into {
            Some(b) => b,
            None => self.pool.alloc(rows.max(1) * 8)?,
        };
        if rows == 0 {
            return Ok(buf);
        }
        // `execute` checked the sampling rows against the logits rows.
        let r = match &pick.kernel {
            PickKernel::Argmax {
                cluster: Some((f, blocks, threads)),
                ..
            } => self.launch_argmax_cluster(f, (*blocks, *threads), x, rows, cols, buf),
            PickKernel::Argmax { part, .. } => self.launch_argmax(part, x, rows, cols, buf),
            PickKernel::Sample {
                kernels, top_k_most, ..
            } => self.launch_sample(kernels, *top_k_most, x, rows, cols, params, buf),
        };
        if r.is_err() && into.is_none() {
            self.pool.release(buf);
        }
        r.map(|_| buf)
    }

    /// Sampling: the rows' pieces' statistics and histograms in blocks of
    /// `SAMPLE_CHUNK` logits, then one 1024-thread block a row to draw;
    /// with the split counters, rows with a small top-k are sampled by the
    /// first kernel alone, and when all are, the other two are not
    /// launched.
    #[allow(clippy::too_many_arguments)]
    fn launch_sample(
        &mut self,
        k: &SampleKernels,
        top_k_most: Option<usize>,
        x: u64,
        rows: usize,
        cols: usize,
        params: u64,
        buf: u64,
    ) -> Result<(), String> {
        let pieces = cols.div_ceil(SAMPLE_CHUNK).max(1);
        if pieces > 65535 || rows > 65535 {
            return Err(format!("sampling from {rows} rows of {cols} logits is too large"));
        }
        let stats = self.pool.alloc(rows * pieces * SAMPLE_STAT_BYTES)?;
        let parts = match self.pool.alloc(rows * pieces * SAMPLE_PART_BYTES) {
            Ok(p) => p,
            Err(e) => {
                self.pool.release(stats);
                return Err(e);
            }
        };
        // Without the counters `sample_stats` samples no row itself.
        let one_pass = self.one_pass_ok(rows);
        let only_stats = one_pass && one_pass_rows(top_k_most, cols);
        let (counters, one_pass_arg) = if one_pass {
            (self.split_counters.ptr, 1i32)
        } else {
            (0, 0)
        };
        let gpu = &self.gpu;
        let grid = (rows as u32, pieces as u32, 1);
        let n = cols as i32;
        let (tok, lp) = (buf, buf + rows as u64 * 4);
        let r = launch!(gpu, &k.stats, cfg(grid, 256, 0);
                x = x, params = params, stats = stats, parts = parts, n = n, ctr = counters, tok = tok, lp = lp)
        .and_then(|_| {
            if only_stats {
                return Ok(());
            }
            launch!(gpu, &k.hist, cfg(grid, 256, 0);
                    x = x, params = params, stats = stats, parts = parts, n = n, one_pass = one_pass_arg)?;
            launch!(gpu, &k.draw, cfg((rows as u32, 1, 1), 1024, 0);
                    x = x, params = params, tok = tok, lp = lp, n = n, stats = stats,
                    parts = parts, pieces = pieces as i32, one_pass = one_pass_arg)
        });
        self.pool.release(parts);
        self.pool.release(stats);
        self.one_pass_samples += u64::from(only_stats && r.is_ok());
        r
    }

    /// The argmax of each row by a cluster of `blocks` blocks of
    /// `threads` (`argmax_cluster_*`; one block a row needs no cluster).
    fn launch_argmax_cluster(
        &self,
        f: &CudaFunction,
        (blocks, threads): (u32, u32),
        x: u64,
        rows: usize,
        cols: usize,
        buf: u64,
    ) -> Result<(), String> {
        let grid_rows = u32::try_from(rows)
            .ok()
            .filter(|&r| r < 1 << 31)
            .ok_or_else(|| format!("greedy sampling over {rows} rows is too large"))?;
        let cols = i32::try_from(cols)
            .map_err(|_| format!("greedy sampling over rows of {cols} logits is too large"))?;
        let (tok, lp) = (buf, buf + rows as u64 * 4);
        let mut params: [*mut std::ffi::c_void; 4] = [
            &x as *const u64 as *mut _,
            &cols as *const i32 as *mut _,
            &tok as *const u64 as *mut _,
            &lp as *const u64 as *mut _,
        ];
        let config = cfg((grid_rows, blocks, 1), threads, 0);
        // SAFETY: the parameters are argmax_cluster's (x, cols, out, lp),
        // locals that outlive the call; `buf` holds a token and a log
        // probability per row, `x` the rows.
        unsafe { self.gpu.launch_clustered(f, config, blocks, &mut params) }
    }

    /// The argmax in blocks of `ARGMAX_CHUNK` logits, each row's last
    /// block combining them (counted in the split counters); without
    /// enough counters, a second kernel of one warp per row combines.
    fn launch_argmax(
        &mut self,
        f: &CudaFunction,
        x: u64,
        rows: usize,
        cols: usize,
        buf: u64,
    ) -> Result<(), String> {
        const ARGMAX_CHUNK: usize = 1024;
        let chunks = cols.div_ceil(ARGMAX_CHUNK).max(1);
        if chunks > 65535 {
            return Err(format!(
                "greedy sampling over {rows} rows of {cols} logits is too large"
            ));
        }
        let part = self.pool.alloc(rows * chunks * 12)?;
        let counters = if rows <= SPLIT_COUNTERS {
            self.split_counters.ptr
        } else {
            0
        };
        let (gpu, combine) = (&self.gpu, &self.argmax_combine);
        let (tok, lp) = (buf, buf + rows as u64 * 4);
        let r = launch!(gpu, f, cfg((rows as u32, chunks as u32, 1), 256, 0);
                x = x, part = part, c = cols as i32, chunk = ARGMAX_CHUNK as i32, ctr = counters, tok = tok,
                lp = lp)
        .and_then(|_| {
            if counters != 0 {
                return Ok(());
            }
            launch!(gpu, combine, cfg((rows as u32, 1, 1), 32, 0);
                part = part, tok = tok, lp = lp, n = chunks as i32)
        });
        self.pool.release(part);
        r
    }

    /// Whether rows with a small top-k among `rows` may be sampled in one
    /// pass: it is on and each row has a split counter.
    pub(super) fn one_pass_ok(&self, rows: usize) -> bool {
        self.one_pass_sampling && rows <= SPLIT_COUNTERS
    }

    fn read_picks(&self, buf: u64, rows: usize) -> Result<Vec<(u32, f32)>, String> {
        let mut bytes = vec![0u8; rows * 8];
        self.gpu.dtoh(buf, &mut bytes)?;
        Ok(parse_picks(&bytes, rows))
    }
}

/// `rows` tokens then `rows` log probabilities, little-endian.
fn parse_picks(bytes: &[u8], rows: usize) -> Vec<(u32, f32)> {
    let (t, l) = bytes.split_at(rows * 4);
    t.chunks_exact(4)
        .zip(l.chunks_exact(4))
        .map(|(t, l)| {
            (
                u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                f32::from_le_bytes([l[0], l[1], l[2], l[3]]),
            )
        })
        .collect()
}

fn no_kernel(output: &str) -> CodegenError {
    CodegenError::Input {
        name: output.into(),
        message: "no token-picking kernel for this output's dtype".into(),
    }
}

#[cfg(test)]
mod tests {
    /// The host sizes the sampling parts as sample.cu lays them out.
    #[test]
    fn sample_parts_match_the_kernel() {
        let src = optc_kernels::cuda::FILES
            .iter()
            .find(|f| f.0 == "sample.cu")
            .map_or("", |f| f.1);
        let define = |name: &str| -> usize {
            src.lines()
                .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no #define {name} in sample.cu"))
        };
        assert_eq!(define("SAMPLE_CHUNK"), super::SAMPLE_CHUNK);
        assert_eq!(define("SAMPLE_PIECE_CANDS"), super::SAMPLE_PIECE_CANDS);
        assert_eq!(define("SAMPLE_CAP"), super::SAMPLE_CAP);
        // A piece's head (16 bytes) and pairs fit its part.
        const { assert!(16 + 8 * super::SAMPLE_PIECE_CANDS <= super::SAMPLE_PART_BYTES) };
        // se, near, total, an integer mass and a count per bin, then the
        // near elements' keys and ids.
        assert_eq!(
            super::SAMPLE_PART_BYTES,
            16 + define("SAMPLE_BINS") * 12 + define("SAMPLE_NEAR_CAP") * 8
        );
        assert_eq!(super::SAMPLE_PART_BYTES, 8208);
        assert!(src.contains("(8,208 bytes, 8-aligned)"));
    }
}
