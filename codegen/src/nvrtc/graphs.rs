//! Decode steps as CUDA graphs: one capture per step shape and, where its
//! buffers are small, a second copy, so that consecutive steps alternate
//! between two input arenas. A step's input copy then runs on a side
//! stream while the step before it is still on the GPU, and its picks go
//! back on another while the next step runs: neither copy sits between
//! two steps. The copy of the previous step's picks into this step's ids
//! is the graph's first kernel, reading what to copy from the arena (or,
//! for a few ids that only the embedding reads, the embedding reads the
//! picks itself).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{sys, CudaEvent};
use optc_ir::Bindings;

use super::device::{DeviceBox, Gpu, PinnedHost, Pool};
use super::pick::Pick;
use super::program::{AttentionRun, CaptureKey, CudaProgram, PREFILL_GRAPHS_MAX_BYTES};
use super::run::{IdsHead, StepCx};

/// Largest activation pool (plus arena) a step graph may have for a second
/// copy: the small-batch steps where the copies around a step are a
/// visible share of it. Larger steps keep one copy.
const SECOND_COPY_MAX_BYTES: usize = 32 << 20;

/// Device memory all second copies together may hold: the KV cache was
/// sized before any graph was captured, leaving a reserve this must not
/// eat into.
const SECOND_COPIES_MAX_BYTES: usize = 256 << 20;

/// A decode step captured as a CUDA graph, with the buffers it owns: its
/// input arena (filled before each replay) and its pool of activations.
pub(super) struct Captured {
    pub(super) graph: cudarc::driver::CudaGraph,
    pool: Pool,
    pub(super) arena: DeviceBox,
    pub(super) ptr: Vec<u64>,
    /// Where the graph leaves its picked tokens (when it picks).
    pub(super) picked: u64,
    /// With a second copy: the page-locked buffer its inputs go up from,
    /// and the events that order its side-stream copies.
    staging: Option<(PinnedHost, Arc<ReplayEvents>)>,
}

impl Drop for Captured {
    fn drop(&mut self) {
        // A copy may still read the staging buffer or write the picks.
        if let Some((_, e)) = &self.staging {
            for ev in [&e.uploaded, &e.done, &e.copied] {
                let _ = ev.synchronize();
            }
        }
    }
}

/// Orders a graph copy's replays with the copies on the side streams.
pub(super) struct ReplayEvents {
    /// After the copy's last replay: its arena and picks are free again.
    pub(super) done: CudaEvent,
    /// After the last upload into its arena: its staging buffer is free.
    uploaded: CudaEvent,
    /// After the last copy of its picks to the host: the graph may write
    /// them again.
    pub(super) copied: CudaEvent,
}

/// The copies of one step shape's graph, taken in turn.
pub(super) struct CaptureSet {
    copies: Vec<Captured>,
    next: usize,
    /// Replays of each copy.
    replays: [u64; 2],
}

impl CaptureSet {
    pub(super) fn len(&self) -> usize {
        self.copies.len()
    }

    /// Replays of the first copy and of the second.
    pub(super) fn replays(&self) -> [u64; 2] {
        self.replays
    }

    /// Device memory its copies own (activation pools and input arenas).
    pub(super) fn bytes(&self) -> usize {
        self.copies.iter().map(|c| c.pool.bytes + c.arena.bytes).sum()
    }
}

/// What a replay left for `execute`.
pub(super) struct Replayed {
    pub(super) ptr: Vec<u64>,
    pub(super) picked: u64,
    /// Set when the copy has a twin: the picks then go back on the side
    /// stream, after `done`.
    pub(super) events: Option<Arc<ReplayEvents>>,
    /// Around the launch, when profiling: CUDA events and when it began.
    pub(super) timed: Option<(CudaEvent, CudaEvent, Instant)>,
}

impl CudaProgram {
    /// Keeps a prefill shape's new graph while the prefill graphs fit in
    /// `PREFILL_GRAPHS_MAX_BYTES`; past that it is dropped unreplayed (the
    /// prefill runs eagerly) and no new prefill shape is captured, while
    /// those kept still replay.
    pub(super) fn keep_prefill_capture(&mut self, key: CaptureKey, set: CaptureSet) {
        let held: usize = self
            .prefill_keys
            .iter()
            .filter_map(|k| self.captures.get(k))
            .map(CaptureSet::bytes)
            .sum();
        if held + set.bytes() <= PREFILL_GRAPHS_MAX_BYTES {
            self.prefill_keys.insert(key.clone());
            self.captures.insert(key, set);
        } else {
            tracing::debug!(graph = %self.graph.name, held, "prefill graphs hold their memory budget; new prefill shapes run eagerly");
            self.prefill_captures_closed = true;
        }
    }

    /// Captures a step shape's graph, and a second copy of it when `pairs`
    /// (a decode step, which the next one follows at once), its buffers are
    /// small and `graph_pairs` holds.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn capture_set(
        &mut self,
        arena: &[u8],
        offsets: &[usize],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        attn: &HashMap<usize, AttentionRun>,
        pick: Option<(&Pick, usize)>,
        ids: Option<IdsHead>,
        pairs: bool,
    ) -> Result<CaptureSet, String> {
        let mut first = self.capture(arena, offsets, dims, bindings, attn, pick, ids)?;
        let bytes = first.pool.bytes + first.arena.bytes;
        let held: usize = self
            .captures
            .values()
            .filter_map(|s| s.copies.get(1))
            .map(|c| c.pool.bytes + c.arena.bytes)
            .sum();
        if !pairs
            || !self.graph_pairs
            || bytes > SECOND_COPY_MAX_BYTES
            || held + bytes > SECOND_COPIES_MAX_BYTES
        {
            return Ok(CaptureSet {
                copies: vec![first],
                next: 0,
                replays: [0; 2],
            });
        }
        // The second copy holds the same launches: the counters of what
        // ran count the first only.
        let counted = (
            self.fused_gemv_launches,
            self.ring_gemv_launches.load(Ordering::Relaxed),
            self.mega_launches,
            self.gemv_picks,
            self.embedding_picks,
            self.early_chain_launches,
            self.one_pass_samples,
            self.early_embedding_launches,
        );
        let second = self
            .capture(arena, offsets, dims, bindings, attn, pick, ids)
            .and_then(|mut c| self.add_staging(&mut c, arena.len()).map(|()| c))
            .and_then(|c| self.add_staging(&mut first, arena.len()).map(|()| c));
        self.fused_gemv_launches = counted.0;
        self.ring_gemv_launches.store(counted.1, Ordering::Relaxed);
        self.mega_launches = counted.2;
        self.gemv_picks = counted.3;
        self.embedding_picks = counted.4;
        self.early_chain_launches = counted.5;
        self.one_pass_samples = counted.6;
        self.early_embedding_launches = counted.7;
        let copies = match second {
            Ok(c) => vec![first, c],
            Err(e) => {
                // One copy still runs every step, only less overlapped.
                tracing::debug!(error = %e, "a step graph keeps one copy");
                vec![first]
            }
        };
        Ok(CaptureSet {
            copies,
            next: 0,
            replays: [0; 2],
        })
    }

    /// Gives `c` a staging buffer of `bytes` and the events of a copy with
    /// a twin.
    fn add_staging(&self, c: &mut Captured, bytes: usize) -> Result<(), String> {
        let event = || {
            self.gpu
                .ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING))
                .map_err(|e| format!("CUDA event: {e}"))
        };
        let events = ReplayEvents {
            done: event()?,
            uploaded: event()?,
            copied: event()?,
        };
        c.staging = Some((PinnedHost::new(bytes)?, Arc::new(events)));
        Ok(())
    }

    /// Captures the steps (and the token pick) as a CUDA graph with a
    /// private input arena and activation pool, then leaves it to replay.
    /// With `ids`, the graph starts with the copy of the previous run's
    /// picks into the ids (`ids_from_picks`, a count of 0 when the host
    /// wrote them).
    #[allow(clippy::too_many_arguments)]
    fn capture(
        &mut self,
        arena: &[u8],
        offsets: &[usize],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        attn: &HashMap<usize, AttentionRun>,
        pick: Option<(&Pick, usize)>,
        ids: Option<IdsHead>,
    ) -> Result<Captured, String> {
        let abox = DeviceBox::new(arena.len().max(256))?;
        self.gpu.htod(abox.ptr, arena)?;
        self.gpu.sync()?;
        let mut ptr = self.base_pointers(abox.ptr, offsets);
        let mut pool = Pool::default();
        std::mem::swap(&mut self.pool, &mut pool);
        // The picks' buffer first, so no buffer of the steps is ever it: a
        // replay reads the previous replay's picks (its own, with one copy)
        // while a chain working before its wait may already write its
        // results.
        let rows = pick.map_or(0, |(p, _)| dims[p.value].first().copied().unwrap_or(0));
        let picks = match pick {
            Some(_) => match self.pool.alloc(rows.max(1) * 8) {
                Ok(b) => Some(b),
                Err(e) => {
                    std::mem::swap(&mut self.pool, &mut pool);
                    return Err(e);
                }
            },
            None => None,
        };
        let begun = self
            .gpu
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| format!("CUDA graph capture: {e}"));
        let steps = std::mem::take(&mut self.steps);
        let mut in_gemv = self.gemv_pick(pick.map(|(p, _)| p), dims);
        if let Some(g) = &mut in_gemv {
            g.into = picks;
        }
        // The embedding reads a few picked ids itself; else the copy of
        // the picks into the ids comes first.
        let embedding = ids.and_then(|h| self.ids_embedding(h, abox.ptr));
        let mut r = begun
            .and_then(|_| match ids.filter(|_| embedding.is_none()) {
                Some(h) => self.launch_ids_gather(h, abox.ptr).map_err(|e| e.to_string()),
                None => Ok(()),
            })
            .and_then(|_| {
                let cx = StepCx {
                    arena: abox.ptr,
                    pick: in_gemv.as_mut(),
                    embedding,
                    // `ids_from_picks`, when it runs, writes the ids input.
                    written_input: ids.filter(|_| embedding.is_none()).map(|h| h.input),
                    // A graph launch waits for all work before it.
                    barrier: true,
                };
                self.run_steps(&steps, dims, bindings, &mut ptr, attn, cx)
                    .map_err(|e| e.to_string())
            });
        self.steps = steps;
        let mut picked = 0;
        if let (Ok(()), Some((p, params))) = (&r, pick) {
            match in_gemv.as_ref().and_then(|g| g.buf) {
                // The LM head's ring GEMV picked as it stored the logits.
                Some(b) => picked = b,
                None => {
                    match self.launch_pick(p, ptr[p.value], &dims[p.value], abox.ptr + params as u64, picks) {
                        Ok(b) => picked = b,
                        Err(e) => r = Err(e),
                    }
                }
            }
        }
        let g = self
            .gpu
            .stream
            .end_capture(sys::CUgraphInstantiate_flags(0))
            .map_err(|e| format!("CUDA graph capture: {e}"));
        std::mem::swap(&mut self.pool, &mut pool);
        r?;
        let graph = g?.ok_or("CUDA graph capture produced no graph")?;
        self.gemv_picks += u64::from(in_gemv.is_some_and(|g| g.buf.is_some()));
        self.embedding_picks += u64::from(embedding.is_some());
        Ok(Captured {
            graph,
            pool,
            arena: abox,
            ptr,
            picked,
            staging: None,
        })
    }

    /// Replays the next copy of `key`'s graph on `arena`; `None` when no
    /// graph of that shape was captured.
    pub(super) fn replay(
        &mut self,
        key: &super::program::CaptureKey,
        arena: &[u8],
    ) -> Result<Option<Replayed>, String> {
        let profiling = self.profile.is_some();
        let Some(set) = self.captures.get_mut(key) else {
            return Ok(None);
        };
        let n = set.copies.len().max(1);
        let at = set.next % n;
        let Some(c) = set.copies.get_mut(at) else {
            return Ok(None);
        };
        set.next = (at + 1) % n;
        set.replays[at.min(1)] += 1;
        let gpu = &self.gpu;
        upload(gpu, c, arena)?;
        let event = || {
            gpu.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .and_then(|e| e.record(&gpu.stream).map(|_| e))
                .map_err(|e| format!("CUDA event: {e}"))
        };
        let before = profiling.then(event).transpose()?;
        let t_launch = Instant::now();
        c.graph.launch().map_err(|e| format!("CUDA graph launch: {e}"))?;
        let events = c.staging.as_ref().map(|(_, e)| Arc::clone(e));
        if let Some(e) = &events {
            e.done
                .record(&gpu.stream)
                .map_err(|e| format!("CUDA event: {e}"))?;
        }
        let timed = match before {
            Some(b) => Some((b, event()?, t_launch)),
            None => None,
        };
        Ok(Some(Replayed {
            ptr: c.ptr.clone(),
            picked: c.picked,
            events,
            timed,
        }))
    }
}

/// Puts a replay's inputs in its arena: straight from the host on the
/// main stream for a lone copy (behind the run before, which may read that
/// arena); for one of two copies, through its staging buffer on the up
/// stream once that copy's last replay is done, with the main stream
/// waiting for the upload (and for its last picks to have gone back).
fn upload(gpu: &Gpu, c: &mut Captured, arena: &[u8]) -> Result<(), String> {
    let Some((host, e)) = &mut c.staging else {
        return gpu.htod(c.arena.ptr, arena);
    };
    let err = |e: cudarc::driver::DriverError| format!("queueing a step's input copy: {e}");
    // The upload before read the staging buffer; it went up before this
    // copy's last replay, so it is normally long done.
    e.uploaded.synchronize().map_err(err)?;
    host.write(arena)?;
    gpu.up.wait(&e.done).map_err(err)?;
    if !arena.is_empty() {
        // SAFETY: the arena holds at least `arena.len()` bytes (the capture
        // sized it from this shape's arena), the staging buffer holds them
        // and no one writes it until `uploaded` is reached.
        unsafe { sys::cuMemcpyHtoDAsync_v2(c.arena.ptr, host.ptr().cast(), arena.len(), gpu.up.cu_stream()) }
            .result()
            .map_err(err)?;
    }
    e.uploaded.record(&gpu.up).map_err(err)?;
    gpu.stream.wait(&e.uploaded).map_err(err)?;
    gpu.stream.wait(&e.copied).map_err(err)
}
