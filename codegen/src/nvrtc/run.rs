//! Running a lowered program: input checks and the one input copy, the
//! step loop over the buffer pool, and CUDA graph capture and replay for
//! decode steps (with the token pick of `pick.rs` at their end).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

use optc_ir::dim::normalize_axis;
use optc_ir::ops::{EvalCx, Op};
use optc_ir::{Bindings, DType, Tensor};
use optc_kernels::cpu::attention::{check_paged_meta, PagedMeta, PagedShape};
use optc_kernels::cuda as src;

use super::device::DeviceBox;
use super::pick::{GemvPick, IdsPatch, Pick, SAMPLE_ROW_BYTES};
use super::program::{
    node_err, AttentionRun, CaptureKey, CudaProgram, Exec, Executed, Loc, Step, ATTENTION_MMA, MAX_CAPTURES,
    MAX_PREFILL_CAPTURES, SPLIT_COUNTERS,
};
use super::select::Kernel;
use crate::CodegenError;

/// Where `ids_from_picks` finds a run's ids and what to copy into them
/// (its head in the arena, for up to `capacity` ids): the previous run's
/// picks on the GPU, or nothing when the host wrote the ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct IdsHead {
    /// The ids input.
    pub(super) input: usize,
    ids_offset: usize,
    head_offset: usize,
    capacity: usize,
}

/// Most ids an embedding reads through the head itself by default (each
/// of its threads scans the head's pairs); past this the ids are copied
/// first (`CudaProgram::set_ids_in_embedding`, `OPTC_CUDA_IDS_IN_EMBEDDING`).
pub(super) const IDS_IN_EMBEDDING_MAX: usize = 8;

impl CudaProgram {
    /// The embedding step that reads the picks through head `h` (its step
    /// and the head's address for inputs at `base`), when the ids' only
    /// reader is that embedding and they are few.
    pub(super) fn ids_embedding(&self, h: IdsHead, base: u64) -> Option<(usize, u64)> {
        let si = self.ids_embedding.get(h.input).copied().flatten()?;
        (h.capacity <= self.ids_in_embedding_max).then_some((si, base + h.head_offset as u64))
    }
}

/// What a run's steps take from around them.
pub(super) struct StepCx<'a> {
    /// Where the run's input arena is on the GPU.
    pub(super) arena: u64,
    /// A greedy pick the LM head's ring GEMV may make.
    pub(super) pick: Option<&'a mut GemvPick>,
    /// The embedding step that reads picked ids through the head, and the
    /// head's address.
    pub(super) embedding: Option<(usize, u64)>,
    /// The input `ids_from_picks` writes in this run, if it runs.
    pub(super) written_input: Option<usize>,
    /// The run starts behind a full barrier (an input copy, or a graph
    /// launch): every earlier run has ended, so a generated chain may work
    /// before its wait (`early` in chains.rs).
    pub(super) barrier: bool,
}

/// Bytes of the head before its (ids element, pick row) pairs: the pick
/// buffer's address, the count, whether the ids are 64-bit.
const IDS_HEAD_BYTES: usize = 16;

/// Appends the head `ids_from_picks` reads (`map`: its (element, row)
/// pairs as little-endian i32s) with room for `capacity` pairs (one at
/// least: the embedding reads the first pair with the count, layout.cu's
/// `picked_id`), so every step of a shape has the same arena layout;
/// returns its offset.
fn push_ids_head(arena: &mut Vec<u8>, picks: u64, i64ids: bool, map: &[u8], capacity: usize) -> usize {
    let at = arena.len();
    arena.extend_from_slice(&picks.to_le_bytes());
    arena.extend_from_slice(&((map.len() / 8) as i32).to_le_bytes());
    arena.extend_from_slice(&i32::from(i64ids).to_le_bytes());
    arena.extend_from_slice(map);
    arena.resize(
        (at + IDS_HEAD_BYTES + 8 * capacity.max(map.len() / 8).max(1)).div_ceil(256) * 256,
        0,
    );
    at
}

impl CudaProgram {
    /// Runs the program on the non-state inputs; returns the non-state
    /// outputs by name. State persists on the GPU, updated in place.
    pub fn run(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
    ) -> Result<BTreeMap<String, Tensor>, CodegenError> {
        let ex = self.execute(inputs, None)?;
        let (rd, mut ptr) = (ex.dims, ex.ptr);
        let dims = &rd.dims;
        let mut out = BTreeMap::new();
        let mut r = Ok(());
        for (name, v) in &self.outputs {
            match self.download(ptr[*v], self.types[*v].dtype, &dims[*v]) {
                Ok(t) => {
                    out.insert(name.clone(), t);
                }
                Err(e) => {
                    r = Err(node_err(&self.graph.name)(e));
                    break;
                }
            }
        }
        if !ex.captured {
            self.release_outputs(&mut ptr);
        }
        r.map(|_| out)
    }

    /// Appends the head `ids_from_picks` reads to the arena; `None` when
    /// the patched input is not integer ids. The head copies the previous
    /// run's picks into this run's ids when that applies (one run in
    /// flight, and every token it can pick a row of the tables the ids
    /// index); else its count is 0 and the host writes and checks them.
    /// Returns the head and its count.
    fn ids_head(
        &self,
        patch: &IdsPatch,
        inputs: &BTreeMap<String, Tensor>,
        gather_rows: &[usize],
        offsets: &[usize],
        arena: &mut Vec<u8>,
    ) -> Result<Option<(IdsHead, usize)>, CodegenError> {
        let Some(i) = self.inputs.iter().position(|(n, _)| n == patch.input) else {
            return Ok(None);
        };
        let i64ids = match self.types[self.inputs[i].1].dtype {
            DType::I64 => true,
            DType::I32 => false,
            _ => return Ok(None),
        };
        let n = inputs.get(patch.input).map_or(0, Tensor::numel);
        if n > i32::MAX as usize / 2 {
            return Ok(None);
        }
        let prev = self
            .pending
            .front()
            .filter(|p| self.pending.len() == 1 && p.cols <= gather_rows[i] && p.buf != 0);
        let mut map = Vec::new();
        if let Some(prev) = prev {
            map.reserve(patch.ids.len() * 8);
            let mut seen = std::collections::HashSet::new();
            for p in patch.ids {
                if !seen.insert(p.index) {
                    return Err(CodegenError::Input {
                        name: patch.input.into(),
                        message: format!(
                            "element {} of the ids from the previous run's picks twice",
                            p.index
                        ),
                    });
                }
                if p.row >= prev.rows || p.index >= n {
                    return Err(CodegenError::Input {
                        name: patch.input.into(),
                        message: format!(
                            "element {} of {n} ids from row {} of the previous run's {} picks",
                            p.index, p.row, prev.rows
                        ),
                    });
                }
                map.extend_from_slice(&(p.index as i32).to_le_bytes());
                map.extend_from_slice(&(p.row as i32).to_le_bytes());
            }
        }
        // Distinct elements below n: at most n pairs.
        let count = map.len() / 8;
        let picks = prev.filter(|_| count > 0).map_or(0, |p| p.buf);
        let head_offset = push_ids_head(arena, picks, i64ids, &map, n);
        let head = IdsHead {
            input: i,
            ids_offset: offsets[i],
            head_offset,
            capacity: n,
        };
        Ok(Some((head, count)))
    }

    /// Queues `ids_from_picks` for the run whose inputs are at `base`.
    pub(super) fn launch_ids_gather(&self, h: IdsHead, base: u64) -> Result<(), CodegenError> {
        let gpu = &self.gpu;
        let blocks = h.capacity.div_ceil(128).max(1) as u32;
        launch!(gpu, &self.ids_from_picks, super::launch::cfg((blocks, 1, 1), 128, 0);
            ids = base + h.ids_offset as u64, head = base + h.head_offset as u64)
        .map_err(node_err(&self.graph.name))
    }

    /// The previous run's buffers outside a graph go back to the pool once
    /// the copy that reads its picks is queued.
    fn release_gathered(&mut self) {
        if let Some(mut p) = self.pending.pop_front() {
            self.release_picked(&mut p);
            self.pending.push_front(p);
        }
    }

    /// Writes `prev`'s picked tokens over the ids `patch` names, in the
    /// input arena (little-endian, in the ids input's integer type), with
    /// the check `execute` makes of ids a gather indexes with: each must be
    /// below `gather_rows` of its input.
    fn patch_ids(
        &self,
        arena: &mut [u8],
        offsets: &[usize],
        inputs: &BTreeMap<String, Tensor>,
        gather_rows: &[usize],
        patch: &IdsPatch,
        prev: &[(u32, f32)],
    ) -> Result<(), CodegenError> {
        let err = |message: String| CodegenError::Input {
            name: patch.input.into(),
            message,
        };
        let i = self
            .inputs
            .iter()
            .position(|(n, _)| n == patch.input)
            .ok_or_else(|| err("no such input".into()))?;
        let dtype = self.types[self.inputs[i].1].dtype;
        let size = match dtype {
            DType::I64 => 8,
            DType::I32 => 4,
            d => return Err(err(format!("token ids of type {d:?}"))),
        };
        let n = inputs.get(patch.input).map_or(0, Tensor::numel);
        let rows = gather_rows[i];
        for p in patch.ids {
            let &(token, _) = prev.get(p.row).ok_or_else(|| {
                err(format!(
                    "row {} of the previous run's {} picks",
                    p.row,
                    prev.len()
                ))
            })?;
            if p.index >= n {
                return Err(err(format!("element {} of {n} ids", p.index)));
            }
            if token as usize >= rows {
                return Err(err(format!(
                    "the previous run picked token {token}, outside the {rows} rows of the embedding"
                )));
            }
            let at = offsets[i] + p.index * size;
            let bytes = i64::from(token).to_le_bytes();
            arena[at..at + size].copy_from_slice(&bytes[..size]);
        }
        Ok(())
    }

    pub(super) fn release_outputs(&mut self, ptr: &mut [u64]) {
        for (_, v) in &self.outputs {
            let o = self.owner[*v];
            if self.locs[o] == Loc::Temp && ptr[o] != 0 {
                self.pool.release(ptr[o]);
                ptr[o] = 0;
            }
        }
    }

    /// Everything up to the outputs: checks, the input copy, every step.
    pub(super) fn execute(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        pick: Option<Pick>,
    ) -> Result<Executed, CodegenError> {
        self.execute_patched(inputs, pick, None)
    }

    /// `execute`, first finishing a submitted run still on the GPU once
    /// this run's host work is done, and writing its picks into the ids
    /// `patch` names.
    pub(super) fn execute_patched(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        pick: Option<Pick>,
        patch: Option<IdsPatch>,
    ) -> Result<Executed, CodegenError> {
        let _span = tracing::debug_span!("cuda_run", graph = %self.graph.name).entered();
        let t_start = Instant::now();
        if let Some(t) = self.profile.as_mut().and_then(|p| p.last_pick.take()) {
            if let Some(p) = &mut self.profile {
                p.host_time("between runs (caller)", t);
            }
        }
        self.gpu.ctx.bind_to_thread().map_err(|e| CodegenError::Node {
            node: self.graph.name.clone(),
            message: e.to_string(),
        })?;
        let mut shapes = crate::lowering::input_shapes(&self.inputs, &self.types, inputs)?;
        for i in 0..self.state_names.len() {
            shapes.insert(self.state_names[i].clone(), self.state_shape(i)?);
        }
        let rd = self
            .dims_cache
            .get(&self.graph, &self.types, shapes, &self.inputs)?;
        let (bindings, dims) = (&rd.bindings, &rd.dims);
        self.mega_prepare()?;
        // Host-side checks of what kernels index with, and the attention
        // tiles; then everything goes up in one copy.
        let mut arena: Vec<u8> = Vec::new();
        let mut offsets = vec![0usize; self.inputs.len()];
        for (i, (name, _)) in self.inputs.iter().enumerate() {
            offsets[i] = arena.len();
            arena.extend_from_slice(&inputs[name].to_le_bytes());
            arena.resize(arena.len().div_ceil(256) * 256, 0);
        }
        let host_i64 = |v: usize| -> Option<Vec<i64>> {
            match self.locs[v] {
                Loc::Input(i) => Some(inputs[&self.inputs[i].0].to_i64_vec()),
                _ => None,
            }
        };
        // Per input: the rows of the smallest table a gather indexes with
        // it (what ids written in later must stay below).
        let mut gather_rows = vec![usize::MAX; self.inputs.len()];
        let mut attn: HashMap<usize, AttentionRun> = HashMap::new();
        type MetaKey = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>);
        let mut seen: HashMap<MetaKey, usize> = HashMap::new();
        for (si, s) in self.steps.iter().enumerate() {
            match (&s.exec, &s.op) {
                (Exec::Kernel(Kernel::Embedding, _), _) | (Exec::Kernel(Kernel::IndexSelect, _), _) => {
                    let (table, idx) = (s.args[0], s.args[1]);
                    let len = match &s.op {
                        Op::IndexSelect(ix) => {
                            let d = &dims[table];
                            d[normalize_axis(ix.axis, d.len()).map_err(node_err(&s.node))?]
                        }
                        _ => dims[table][0],
                    };
                    if let Loc::Input(i) = self.locs[idx] {
                        gather_rows[i] = gather_rows[i].min(len);
                    }
                    if let Some(ids) = host_i64(idx) {
                        let neg_ok = matches!(s.op, Op::IndexSelect(_));
                        if let Some(&bad) = ids
                            .iter()
                            .find(|&&i| i >= len as i64 || i < if neg_ok { -(len as i64) } else { 0 })
                        {
                            return Err(CodegenError::Node {
                                node: s.node.clone(),
                                message: format!("index {bad} is outside the {len} rows"),
                            });
                        }
                    }
                }
                (Exec::Kernel(Kernel::PagedAttention, _), Op::PagedAttention(_)) => {
                    let a = &s.args;
                    // Layers share their metadata: check and tile it once.
                    let key = (
                        a[5..10].to_vec(),
                        dims[a[0]].clone(),
                        dims[a[1]].clone(),
                        dims[a[3]].clone(),
                    );
                    if let Some(&prev) = seen.get(&key) {
                        let r = attn[&prev];
                        attn.insert(si, r);
                        continue;
                    }
                    seen.insert(key, si);
                    let meta_of = |v: usize| {
                        host_i64(v).ok_or_else(|| CodegenError::Node {
                            node: s.node.clone(),
                            message: "paged_attention metadata must be graph inputs on the GPU".into(),
                        })
                    };
                    let (positions, seq_starts, context_lens, block_tables, slot_mapping) = (
                        meta_of(a[5])?,
                        meta_of(a[6])?,
                        meta_of(a[7])?,
                        meta_of(a[8])?,
                        meta_of(a[9])?,
                    );
                    let (dq, dk, dc) = (&dims[a[0]], &dims[a[1]], &dims[a[3]]);
                    let shape = PagedShape {
                        tokens: dq[0],
                        q_heads: dq[1],
                        kv_heads: dk[1],
                        head_dim: dq[2],
                        v_dim: dims[a[2]][2],
                        num_blocks: dc[0],
                        block_size: dc[1],
                    };
                    let meta = PagedMeta {
                        positions: &positions,
                        seq_starts: &seq_starts,
                        context_lens: &context_lens,
                        block_tables: &block_tables,
                        max_blocks: dims[a[8]][1],
                        slot_mapping: &slot_mapping,
                    };
                    check_paged_meta(shape, &meta).map_err(node_err(&s.node))?;
                    let group = shape.q_heads / shape.kv_heads.max(1);
                    let rows = src::attention_rows(shape.head_dim);
                    if group > rows {
                        return Err(CodegenError::Node {
                            node: s.node.clone(),
                            message: format!(
                                "{group} query heads per KV head exceed the kernel's {rows} rows"
                            ),
                        });
                    }
                    let per_tile = (rows / group).max(1);
                    // The keys a query at position `hi` sees.
                    let window = match &s.op {
                        Op::PagedAttention(p) => p.window.and_then(|w| usize::try_from(w).ok()),
                        _ => None,
                    };
                    let span = |hi: usize| window.filter(|&w| w > 0).map_or(hi + 1, |w| (hi + 1).min(w));
                    let mut tiles: Vec<i32> = Vec::new();
                    let mut max_chunks = 1usize;
                    for q in 0..context_lens.len() {
                        let (b, e) = (seq_starts[q] as usize, seq_starts[q + 1] as usize);
                        let mut t = b;
                        while t < e {
                            let n = per_tile.min(e - t);
                            tiles.extend([q as i32, t as i32, n as i32]);
                            let hi = positions[t..t + n].iter().copied().max().unwrap_or(0) as usize;
                            max_chunks = max_chunks.max((span(hi) - 1) / 32 + 1);
                            t += n;
                        }
                    }
                    let ntiles = tiles.len() / 3;
                    let has_mma = matches!(&s.exec, Exec::Kernel(_, fns) if fns.len() > ATTENTION_MMA);
                    // Prefill-like steps (two or more tokens a tile) on the
                    // tensor cores, which do not split: even a short prompt
                    // runs faster there than split on the CUDA cores.
                    let prefill_mma = has_mma && shape.tokens >= 2 * ntiles;
                    let blocks = ntiles * shape.kv_heads;
                    let target = 2 * self.gpu.sms as usize;
                    let nsplit = if prefill_mma || blocks == 0 || blocks >= target {
                        1
                    } else {
                        // Powers of two: fewer distinct shapes for CUDA graphs.
                        target
                            .div_ceil(blocks)
                            .min(max_chunks.next_power_of_two())
                            .clamp(1, 32)
                    };
                    let off = arena.len();
                    for t in &tiles {
                        arena.extend_from_slice(&t.to_le_bytes());
                    }
                    arena.resize(arena.len().div_ceil(256) * 256, 0);
                    // Decode: one token per sequence, a group the decode
                    // kernel holds, rows it reads 16 bytes at a time.
                    let decode = shape.tokens == context_lens.len()
                        && seq_starts.windows(2).all(|w| w[1] - w[0] == 1)
                        && group <= src::DECODE_GROUP
                        && shape.head_dim % 8 == 0
                        && shape.head_dim <= src::DECODE_MAX_HEAD_DIM
                        && shape.tokens * shape.kv_heads <= SPLIT_COUNTERS
                        // The tensor-core decode keeps cache slots in 32 bits.
                        && shape.num_blocks * shape.block_size <= i32::MAX as usize;
                    let esize = self.types[s.args[0]].dtype.storage_bytes(1);
                    let nfns = match &s.exec {
                        Exec::Kernel(_, fns) => fns.len(),
                        _ => 0,
                    };
                    let warps = self.decode_warps(shape.tokens * shape.kv_heads, nfns, shape.head_dim, esize);
                    let nsplit = if decode {
                        // Each of a block's warps takes up to
                        // `decode_chunks` key chunks; split while the
                        // grid still fits in one wave (the blocks the SMs
                        // hold at once, by shared memory and at most four),
                        // else twice the SMs (CUDA cores).
                        let blocks = shape.tokens * shape.kv_heads;
                        let fill = if src::decode_mma_supported(shape.head_dim, esize) {
                            let smem = src::paged_decode_smem_bytes(shape.head_dim, esize, warps) + 1024;
                            let per_sm = ((228 << 10) / smem).clamp(1, 4);
                            let f = (per_sm * self.gpu.sms as usize / blocks.max(1)).max(1);
                            1 << f.ilog2()
                        } else {
                            (2 * self.gpu.sms as usize)
                                .div_ceil(blocks.max(1))
                                .next_power_of_two()
                        };
                        max_chunks
                            .div_ceil(warps * self.gpu.decode_chunks)
                            .next_power_of_two()
                            .min(fill)
                            .clamp(1, 64)
                    } else {
                        nsplit
                    };
                    attn.insert(
                        si,
                        AttentionRun {
                            tiles_offset: off,
                            tiles: ntiles,
                            nsplit,
                            // Never with `decode`: that has one token a tile.
                            mma: prefill_mma,
                            decode,
                            warps,
                            rope_from: None,
                        },
                    );
                }
                _ => {}
            }
        }
        // The pick's sampling parameters go up with the inputs, so a
        // replayed graph reads this step's.
        let params_offset = arena.len();
        if let Some(p) = &pick {
            let rows = dims[p.value].first().copied().unwrap_or(0);
            if p.samples() && p.params().len() != rows * SAMPLE_ROW_BYTES {
                return Err(CodegenError::Input {
                    name: self.graph.name.clone(),
                    message: format!(
                        "{} sampling rows for {rows} rows of logits",
                        p.params().len() / SAMPLE_ROW_BYTES
                    ),
                });
            }
            arena.extend_from_slice(p.params());
            arena.resize(arena.len().div_ceil(256) * 256, 0);
        }
        // Decode attention that does its rope + cache write step's work
        // (per step: layers share their runs, not their rope steps).
        for (&si, r) in attn.iter_mut() {
            r.rope_from = if r.decode && r.tiles > 0 && r.warps == 4 {
                self.decode_rope_step(&self.steps, si, dims)
            } else {
                None
            };
        }
        // (The megakernel's attention is its own.)
        let mega = self
            .mega
            .as_ref()
            .filter(|_| self.mega_takes(dims))
            .map(|m| m.stack.first..=m.stack.last);
        for (_, r) in attn
            .iter()
            .filter(|(si, r)| r.tiles > 0 && !mega.as_ref().is_some_and(|m| m.contains(si)))
        {
            let p = &mut self.attention_paths;
            match (r.decode, r.mma) {
                (true, _) => {
                    p.decode += 1;
                    p.decode8 += u64::from(r.warps == 8);
                    p.decode_rope += u64::from(r.rope_from.is_some());
                }
                (false, true) => p.prefill_mma += 1,
                (false, false) => p.tiled += 1,
            }
        }
        // With the run before still in flight, its picks become this run's
        // ids on the GPU (`ids_from_picks`, queued behind this run's input
        // copy, first in a step graph), so this run is queued before that
        // one ends.
        let head = match &patch {
            Some(p) => self.ids_head(p, inputs, &gather_rows, &offsets, &mut arena)?,
            None => None,
        };
        let gathering = head.is_some_and(|(_, count)| count > 0);
        if !gathering {
            // Otherwise the runs before end here, once this run's host work
            // is done, and their picks are written into the ids on the host.
            self.finish_pending();
            if let Some(patch) = patch.filter(|p| !p.ids.is_empty()) {
                // The last run submitted is the newest one read (runs are
                // read in order, and the caller collects a run only after
                // submitting the next).
                let prev = match self.collected.back() {
                    Some(Ok(p)) => p,
                    Some(Err(e)) => return Err(node_err(&self.graph.name)(e.clone())),
                    None => {
                        return Err(CodegenError::Input {
                            name: patch.input.into(),
                            message: "ids from the previous run's picks, but no run was submitted before"
                                .into(),
                        })
                    }
                };
                self.patch_ids(&mut arena, &offsets, inputs, &gather_rows, &patch, prev)?;
            }
        }
        let head = head.map(|(h, _)| h);
        // Decode steps (one token per sequence, all on the GPU) replay a
        // graph captured on the first step of their shape, and so do short
        // prefills (`prefill_graph_tokens`) of the first few shapes.
        let on_gpu = self.graphs
            && self.profile.as_ref().is_none_or(|p| !p.per_kernel)
            && !attn.is_empty()
            && self.steps.iter().all(|s| !matches!(s.exec, Exec::Host));
        let attention_tokens = |most: usize, per_seq: bool| {
            self.steps.iter().all(|s| match &s.exec {
                Exec::Kernel(Kernel::PagedAttention, _) => {
                    let tokens = dims[s.args[0]][0];
                    tokens <= most && (!per_seq || tokens == dims[s.args[7]][0])
                }
                _ => true,
            })
        };
        let decode = on_gpu && attention_tokens(1024, true);
        let prefill = on_gpu
            && !decode
            && self.prefill_graph_tokens > 0
            && attention_tokens(self.prefill_graph_tokens, false);
        if decode || prefill {
            let mut attention: Vec<(usize, AttentionRun)> = attn.iter().map(|(k, v)| (*k, *v)).collect();
            attention.sort_unstable_by_key(|x| x.0);
            let key = CaptureKey {
                input_dims: self.inputs.iter().map(|(_, v)| dims[*v].clone()).collect(),
                attention,
                arena_bytes: arena.len(),
                pick: pick.as_ref().map(|p| {
                    let d = &dims[p.value];
                    (
                        p.value,
                        p.launches(d, self.one_pass_ok(d.first().copied().unwrap_or(0))),
                    )
                }),
                ids: head,
            };
            let room = self.captures.len() < MAX_CAPTURES;
            let capture = !self.captures.contains_key(&key)
                && room
                && (decode
                    || !self.prefill_captures_closed && self.prefill_keys.len() < MAX_PREFILL_CAPTURES);
            if capture {
                let set = self.capture_set(
                    &arena,
                    &offsets,
                    dims,
                    bindings,
                    &attn,
                    pick.as_ref().map(|p| (p, params_offset)),
                    head,
                    decode,
                );
                match set {
                    Ok(set) if decode => {
                        self.captures.insert(key.clone(), set);
                    }
                    Ok(set) => self.keep_prefill_capture(key.clone(), set),
                    Err(e) if decode => return Err(node_err(&self.graph.name)(e)),
                    // A capture that failed once, out of memory most
                    // likely, would fail again.
                    Err(e) => {
                        tracing::warn!(graph = %self.graph.name, error = %e, "a prefill graph could not be captured; new prefill shapes run without graphs");
                        self.prefill_captures_closed = true;
                    }
                }
            }
            let t_upload = Instant::now();
            if let Some(r) = self.replay(&key, &arena).map_err(node_err(&self.graph.name))? {
                if let (Some((before, after, t_launch)), Some(p)) = (r.timed, &mut self.profile) {
                    p.host_time("graph: prepare + launch", t_start);
                    p.host_time("graph: upload + launch", t_upload);
                    p.host_time("graph: launch", t_launch);
                    p.replays.push((before, after));
                }
                let out = Executed {
                    dims: rd.clone(),
                    ptr: r.ptr,
                    captured: true,
                    picked: pick.is_some().then_some(r.picked),
                    replayed: r.events,
                };
                if gathering {
                    self.release_gathered();
                }
                return Ok(out);
            }
        }
        if self.arena.as_ref().is_none_or(|b| b.bytes < arena.len()) {
            // A run still in flight may read the old one.
            self.retired.extend(self.arena.take());
            let cap = (arena.len().max(1 << 20)).next_power_of_two();
            self.arena = Some(DeviceBox::new(cap).map_err(node_err(&self.graph.name))?);
        }
        let base = self.arena.as_ref().map_or(0, |b| b.ptr);
        self.gpu.htod(base, &arena).map_err(node_err(&self.graph.name))?;
        let embedding = head.and_then(|h| self.ids_embedding(h, base));
        self.embedding_picks += u64::from(embedding.is_some());
        // `ids_from_picks` runs unless the embedding reads the picks itself.
        let gather = head.filter(|_| gathering && embedding.is_none());
        if let Some(h) = gather {
            self.launch_ids_gather(h, base)?;
        }
        let mut ptr = self.base_pointers(base, &offsets);
        let steps = std::mem::take(&mut self.steps);
        let t_steps = Instant::now();
        let mut in_gemv = self.gemv_pick(pick.as_ref(), dims);
        let cx = StepCx {
            arena: base,
            pick: in_gemv.as_mut(),
            embedding,
            written_input: gather.map(|h| h.input),
            // The input copy orders this run after every earlier one
            // (`Gpu::htod` queues nothing for an empty arena).
            barrier: !arena.is_empty(),
        };
        let r = self.run_steps(&steps, dims, bindings, &mut ptr, &attn, cx);
        self.steps = steps;
        if gathering {
            self.release_gathered();
        }
        if let Some(p) = &mut self.profile {
            p.host
                .entry("prepare (checks, inputs)")
                .or_default()
                .push((t_steps - t_start).as_secs_f64() * 1e3);
            p.host_time("launch + wait", t_steps);
            p.runs += 1;
        }
        let taken = in_gemv.and_then(|g| g.buf);
        self.gemv_picks += u64::from(taken.is_some() && r.is_ok());
        let r = r.and_then(|()| match (&pick, taken) {
            (Some(_), Some(buf)) => Ok(Some(buf)),
            (Some(p), None) => self
                .launch_pick(p, ptr[p.value], &dims[p.value], base + params_offset as u64, None)
                .map(Some)
                .map_err(node_err(&self.graph.name)),
            (None, _) => Ok(None),
        });
        let picked = match r {
            Ok(b) => b,
            Err(e) => {
                // Return every temp buffer: the next run starts clean.
                for (v, &p) in ptr.iter().enumerate() {
                    if p != 0 && self.locs[v] == Loc::Temp && self.owner[v] == v {
                        self.pool.release(p);
                    }
                }
                if let Some(buf) = taken {
                    self.pool.release(buf);
                }
                return Err(e);
            }
        };
        Ok(Executed {
            dims: rd.clone(),
            ptr,
            captured: false,
            picked,
            replayed: None,
        })
    }

    /// A greedy pick of one row for the ring GEMV that makes its logits to
    /// take (`GemvPick`), unless `pick_in_gemv` is off.
    pub(super) fn gemv_pick(&self, pick: Option<&Pick>, dims: &[Vec<usize>]) -> Option<GemvPick> {
        pick.filter(|p| self.pick_in_gemv && !p.samples() && dims[p.value].first() == Some(&1))
            .map(|p| GemvPick {
                value: p.value,
                buf: None,
                into: None,
            })
    }

    /// Value pointers for a run with its inputs at `base`.
    pub(super) fn base_pointers(&self, base: u64, offsets: &[usize]) -> Vec<u64> {
        self.locs
            .iter()
            .map(|l| match *l {
                Loc::Input(i) => base + offsets[i] as u64,
                Loc::Weight(w) => self.weights[w].ptr,
                Loc::State(s) => self.state[s].as_ref().map_or(0, |b| b.ptr),
                Loc::Temp => 0,
            })
            .collect()
    }

    pub(super) fn run_steps(
        &mut self,
        steps: &[Step],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        ptr: &mut [u64],
        attn: &HashMap<usize, AttentionRun>,
        cx: StepCx,
    ) -> Result<(), CodegenError> {
        let r = self.launch_steps(steps, dims, bindings, ptr, attn, cx);
        // The run's last L2 warm joins the program's stream (a captured
        // graph must join every branch it forked); after a failed launch
        // it is dropped with the run.
        if let Some(w) = self.l2warm.as_mut() {
            match &r {
                Ok(()) => w.finish(&self.gpu.stream).map_err(node_err(&self.graph.name))?,
                Err(_) => w.abandon(),
            }
        }
        r
    }

    /// The linears of `steps` (by their place in the launch order) whose
    /// weights an L2 warm asks ahead (`l2warm.rs`): past the GEMVs' rows
    /// (so on cuBLASLt), at most the warm's `max_rows`, reading a weight.
    /// With the weights' pointer and bytes.
    fn l2_warm_targets(
        &self,
        steps: &[Step],
        dims: &[Vec<usize>],
        ptr: &[u64],
        order: impl Fn(usize) -> usize,
    ) -> Vec<(usize, u64, usize)> {
        let Some(max_rows) = self.l2warm.as_ref().map(|w| w.max_rows) else {
            return Vec::new();
        };
        // The skinny GEMM (an experiment, off by default) streams its own
        // weights early; the warms are for cuBLASLt's linears.
        if !matches!(self.skinny, super::program::SkinnyGemm::Off) {
            return Vec::new();
        }
        (0..steps.len())
            .filter_map(|k| {
                let s = &steps[order(k)];
                if !matches!(s.exec, Exec::Kernel(Kernel::Linear, _)) || s.args.len() < 2 {
                    return None;
                }
                let (x, w) = (s.args[0], s.args[1]);
                let cols = dims[x].last().copied().unwrap_or(0);
                let rows = dims[x].iter().product::<usize>().checked_div(cols)?;
                // A view of a weight shares its buffer (its own pointer is
                // set only when its view step runs).
                let owner = self.owner[w];
                let weight = matches!(self.locs[owner], Loc::Weight(_));
                let len = self.types[w].dtype.storage_bytes(dims[w].iter().product());
                (weight && rows > src::GEMV_MAX_ROWS && rows <= max_rows && ptr[owner] != 0)
                    .then_some((k, ptr[owner], len))
            })
            .collect()
    }

    /// `run_steps` without the last warm's join.
    fn launch_steps(
        &mut self,
        steps: &[Step],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        ptr: &mut [u64],
        attn: &HashMap<usize, AttentionRun>,
        mut cx: StepCx,
    ) -> Result<(), CodegenError> {
        let mut events = Vec::new();
        // Until a buffer goes back to the pool, a result's buffer is new to
        // this run (earlier runs have ended: see `pdl_wait` in common.cuh).
        let released_before = self.pool.released;
        // Fused GEMVs (see `fused_gemv_fits`): linears that do their norm
        // step's work in this run, and SwiGLU steps a GEMV already did.
        let mut runs_norm = vec![false; steps.len()];
        let mut done = vec![false; steps.len()];
        // Rope + cache write steps a decode attention does: not launched,
        // their operands kept until that attention has run.
        let mut rope_of: HashMap<usize, usize> = HashMap::new();
        for (&ai, r) in attn {
            if let Some(ri) = r.rope_from {
                done[ri] = true;
                rope_of.insert(ai, ri);
            }
        }
        let roped: HashSet<usize> = rope_of.values().copied().collect();
        // The megakernel's first step, and its last once it launched: the
        // steps between are its work.
        let mega_first = self.mega.as_ref().filter(|m| m.on).map(|m| m.stack.first);
        let mut mega_last = None;
        // With the early embedding, in a run whose embedding reads the
        // picked ids behind a full barrier, the steps that read only the
        // inputs go first (`inputs_first`), and a buffer goes back to the
        // pool after its last reader in that order (`launch_last_use`).
        let hoist = self.early_embedding
            && cx.embedding.is_some()
            && cx.barrier
            && self.launch_order.len() == steps.len();
        let order = |k: usize| if hoist { self.launch_order[k] } else { k };
        let warm_targets = self.l2_warm_targets(steps, dims, ptr, order);
        let mut next_warm = 0;
        for k in 0..steps.len() {
            let si = if hoist { self.launch_order[k] } else { k };
            let s = &steps[si];
            // A linear whose weights a warm asked ahead waits for it.
            let warm_target = warm_targets.get(next_warm).is_some_and(|t| t.0 == k);
            if let (true, Some(w)) = (warm_target, self.l2warm.as_mut()) {
                w.before_linear(&self.gpu.stream).map_err(node_err(&s.node))?;
            }
            if let Exec::View = s.exec {
                ptr[s.outs[0]] = ptr[s.args[0]];
                continue;
            }
            // (Inside the megakernel's range only its launch is timed.)
            let inside = mega_last.is_some_and(|l| si <= l);
            if !inside && self.profile.as_ref().is_some_and(|p| p.per_kernel) {
                events.push((si, self.record_event()?));
            }
            if mega_first == Some(si) && self.mega_fits(dims, ptr) {
                let Some(m) = self.mega.as_ref() else { continue };
                let (head, last) = (m.stack.head, m.stack.last);
                let logits = steps[head].outs[0];
                let bytes = self.types[logits]
                    .dtype
                    .storage_bytes(dims[logits].iter().product());
                ptr[logits] = self.pool.alloc(bytes).map_err(node_err(&s.node))?;
                self.launch_mega(steps, dims, ptr).map_err(node_err(&s.node))?;
                self.mega_launches += 1;
                mega_last = Some(last);
            }
            if mega_last.is_some_and(|l| si <= l) {
                done[si] = true;
            }
            for &o in &s.outs {
                if self.locs[o] == Loc::Temp && !done[si] {
                    let bytes = self.types[o].dtype.storage_bytes(dims[o].iter().product());
                    ptr[o] = self.pool.alloc(bytes).map_err(node_err(&s.node))?;
                }
            }
            let deferred = s
                .deferred_to
                .is_some_and(|li| self.fused_gemv_fits(&steps[li], steps, dims, ptr));
            if let (true, Some(li)) = (deferred, s.deferred_to) {
                runs_norm[li] = true;
            }
            let fused = s.fused.as_ref().is_some_and(|z| match z.norm {
                Some(_) => runs_norm[si],
                None => self.fused_gemv_fits(s, steps, dims, ptr),
            });
            // Its results' buffers are new to this run (a kernel that
            // reads only what is ready before the run may then work
            // before its wait).
            let fresh =
                s.outs.iter().all(|&o| self.locs[o] == Loc::Temp) && self.pool.released == released_before;
            let r = match &s.exec {
                _ if deferred || done[si] => Ok(()),
                Exec::Kernel(..) if fused => {
                    self.fused_gemv_launches += 1;
                    self.launch_fused_gemv(s, steps, dims, ptr, &mut done, cx.pick.as_deref_mut())
                }
                Exec::Kernel(Kernel::Embedding, fns) if cx.embedding.is_some_and(|(e, _)| e == si) => {
                    let head = cx.embedding.map_or(0, |(_, h)| h);
                    // Its table is a weight, the head in the arena, the
                    // picks the previous run's: ready before the run, so
                    // with a fresh result buffer it may gather first
                    // (`hoist` holds only behind a full barrier).
                    let early = hoist && fresh;
                    self.early_embedding_launches += u64::from(early);
                    self.launch_embedding_picked(fns, s, dims, ptr, head, early)
                }
                Exec::Kernel(Kernel::EwChain, fns) => {
                    // Works before its wait when its operands are ready
                    // before the run and its results' buffers new to it.
                    let ready = s.args.iter().all(|&a| match self.locs[self.owner[a]] {
                        Loc::Weight(_) => true,
                        Loc::Input(i) => Some(i) != cx.written_input,
                        _ => false,
                    });
                    let early = self.early_chains && cx.barrier && ready && fresh;
                    self.early_chain_launches += u64::from(early);
                    self.launch_chain(fns, s, dims, ptr, early)
                }
                Exec::Kernel(k, fns) => self.launch(
                    *k,
                    fns,
                    s,
                    dims,
                    ptr,
                    attn.get(&si),
                    rope_of.get(&si).map(|&ri| &steps[ri]),
                    cx.arena,
                    cx.pick.as_deref_mut(),
                ),
                _ => self.host_step(s, dims, bindings, ptr),
            };
            r.map_err(node_err(&s.node))?;
            // Once this linear has run, the next one's weights go to L2
            // beside the kernels between them.
            if warm_target {
                next_warm += 1;
                if let (Some(&(_, wp, len)), Some(w)) = (warm_targets.get(next_warm), self.l2warm.as_mut()) {
                    w.start(&self.gpu.stream, wp, len).map_err(node_err(&s.node))?;
                }
            }
            // What this step read last (for an attention that did a rope
            // step's work, what that step read last too; a rope step done
            // so keeps its operands for that attention).
            let readers = std::iter::once(si)
                .filter(|i| !roped.contains(i))
                .chain(rope_of.get(&si).copied());
            for i in readers {
                for &a in steps[i].args.iter().chain(&steps[i].also_reads) {
                    let o = self.owner[a];
                    let last = if hoist {
                        self.launch_last_use.get(&o)
                    } else {
                        self.last_use.get(&o)
                    };
                    if last == Some(&i) && self.locs[o] == Loc::Temp && ptr[o] != 0 {
                        self.pool.release(ptr[o]);
                        ptr[o] = 0;
                    }
                }
            }
            for &o in &s.outs {
                if !self.last_use.contains_key(&o) && self.locs[o] == Loc::Temp && ptr[o] != 0 {
                    self.pool.release(ptr[o]);
                    ptr[o] = 0;
                }
            }
        }
        if !events.is_empty() {
            // Decode steps (one token per sequence) apart from prefill and
            // mixed ones: their kernels differ and so do their bottlenecks.
            let phase = if attn.values().any(|a| a.decode) {
                "decode"
            } else {
                "prefill"
            };
            let end = self.record_event()?;
            let Some(p) = &mut self.profile else {
                return Ok(());
            };
            end.synchronize()
                .map_err(|e| node_err(&self.graph.name)(e.to_string()))?;
            for (i, (si, ev)) in events.iter().enumerate() {
                let next = events.get(i + 1).map_or(&end, |(_, e)| e);
                let ms = f64::from(ev.elapsed_ms(next).unwrap_or(0.0));
                let kind = match &steps[*si].exec {
                    _ if mega_last.is_some() && mega_first == Some(*si) => {
                        format!("{phase} megakernel (layers and LM head)")
                    }
                    Exec::Kernel(k, _) => format!("{phase} {}", k.name()),
                    _ => format!("{phase} host {}", steps[*si].op.name()),
                };
                let e = p.gpu.entry(kind).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += ms;
            }
        }
        Ok(())
    }

    /// An event recorded on the stream now (for `OPTC_CUDA_PROFILE`).
    pub(super) fn record_event(&self) -> Result<cudarc::driver::CudaEvent, CodegenError> {
        self.gpu
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .and_then(|e| e.record(&self.gpu.stream).map(|_| e))
            .map_err(|e| node_err(&self.graph.name)(e.to_string()))
    }

    /// The op's reference semantics on the host.
    fn host_step(
        &self,
        s: &Step,
        dims: &[Vec<usize>],
        bindings: &Bindings,
        ptr: &[u64],
    ) -> Result<(), String> {
        let args: Vec<Tensor> = s
            .args
            .iter()
            .map(|&a| self.download(ptr[a], self.types[a].dtype, &dims[a]))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&Tensor> = args.iter().collect();
        let res = s.op.eval(&refs, &EvalCx { bindings })?;
        for (i, t) in res.iter().enumerate() {
            let o = s.outs[i];
            if t.shape() != dims[o].as_slice() {
                return Err(format!(
                    "result {i} has shape {:?}, declared {:?}",
                    t.shape(),
                    dims[o]
                ));
            }
            let t = if t.dtype() == self.types[o].dtype {
                t.clone()
            } else {
                t.cast(self.types[o].dtype)
            };
            self.gpu.htod(ptr[o], &t.to_le_bytes())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// The head as `ids_from_picks` reads it: 32-bit words, the pick
    /// buffer's address in the first two, the count, the id width, then
    /// (element, row) pairs; the arena stays 256-byte aligned.
    #[test]
    fn the_ids_head_is_laid_out_as_the_kernel_reads_it() {
        let mut arena = vec![7u8; 256];
        let pairs = [(3i32, 1i32), (0, 2)];
        let map: Vec<u8> = pairs
            .iter()
            .flat_map(|&(e, r)| e.to_le_bytes().into_iter().chain(r.to_le_bytes()))
            .collect();
        let at = super::push_ids_head(&mut arena, 0x1234_5678_9abc_def0, true, &map, 40);
        assert_eq!(at, 256);
        assert_eq!(arena.len() % 256, 0);
        assert!(arena.len() >= at + 16 + 8 * 40);
        let word = |i: usize| i32::from_le_bytes(arena[at + 4 * i..at + 4 * i + 4].try_into().unwrap());
        let ptr = u64::from_le_bytes(arena[at..at + 8].try_into().unwrap());
        assert_eq!(ptr, 0x1234_5678_9abc_def0);
        assert_eq!((word(2), word(3)), (2, 1));
        for (j, &(e, r)) in pairs.iter().enumerate() {
            assert_eq!((word(4 + 2 * j), word(5 + 2 * j)), (e, r));
        }
        // Past the pairs, up to the capacity: zeros.
        assert!(arena[at + 16 + 16..at + 16 + 8 * 40].iter().all(|&b| b == 0));
        // The reads of `ids_from_picks` and of the embedding that reads the
        // picks itself (`picked_id`), as their sources write them.
        let body = |file: &str, start: &str| -> &'static str {
            let (_, src) = optc_kernels::cuda::FILES
                .iter()
                .find(|(f, _)| *f == file)
                .unwrap();
            let from = &src[src.find(start).unwrap()..];
            &from[..from.find("\n}").unwrap()]
        };
        let gather = body("sample.cu", "void ids_from_picks");
        for read in [
            "head[2]",
            "head[3]",
            "head[4 + 2 * j]",
            "head[5 + 2 * j]",
            "const int* const*>(head)",
        ] {
            assert!(gather.contains(read), "ids_from_picks: {read}");
        }
        let picked = body("layout.cu", "i64 picked_id(");
        for read in [
            "head[2]",
            "head[4]",
            "head[5]",
            "head[4 + 2 * c]",
            "head[5 + 2 * c]",
            "const int* const*>(head)",
        ] {
            assert!(picked.contains(read), "picked_id: {read}");
        }
        // `picked_id` reads the first pair whatever the count: a head with
        // no pairs and no capacity still has room for one, zeroed.
        let mut arena = vec![7u8; 40];
        let at = super::push_ids_head(&mut arena, 0, false, &[], 0);
        assert_eq!(at, 40);
        assert!(arena.len() >= at + 24);
        assert!(arena[at + 8..at + 24].iter().all(|&b| b == 0));
    }
}
