//! `CpuExecutor`: the CPU target behind the runtime's [`Executor`] trait.
//! It owns the lowered step graph (with the paged KV caches as state) and
//! turns each scheduled step into the graph's token and metadata inputs.

use optc_codegen::cpu::CpuProgram;
use optc_ir::{Bindings, DType, Graph, WeightStore};
use optc_passes::kv_cache::StepInputs;
use optc_runtime::engine::{Executor, RowSampling, StepSeq};

use crate::llm::LlmError;

/// Runs step graphs (from `insert_kv_cache`) on the CPU.
pub struct CpuExecutor {
    program: CpuProgram,
    ids_dtype: DType,
    vocab: usize,
    /// Bytes of KV cache allocated.
    pub cache_bytes: usize,
}

/// The dtype of the step graph's `ids` input.
fn ids_dtype(graph: &Graph) -> Result<DType, LlmError> {
    graph
        .inputs()
        .iter()
        .find(|&&i| graph.node_name(i) == Some("ids"))
        .map(|&i| graph.node(i).outputs[0].dtype)
        .ok_or_else(|| LlmError::Load("the step graph has no ids input (run insert_kv_cache)".into()))
}

/// The step's `logits` output as one f32 row per sampled sequence.
fn logit_rows(
    out: &std::collections::BTreeMap<String, optc_ir::Tensor>,
    vocab: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let logits = out.get("logits").ok_or("the step graph has no logits output")?;
    let v = logits.cast(DType::F32).to_f32_vec();
    Ok(v.chunks(vocab).map(<[f32]>::to_vec).collect())
}

impl CpuExecutor {
    /// Lowers `graph` and allocates a cache of `num_blocks` blocks.
    pub fn new(
        graph: &Graph,
        weights: &WeightStore,
        num_blocks: usize,
        vocab: usize,
    ) -> Result<CpuExecutor, LlmError> {
        let ids_dtype = ids_dtype(graph)?;
        let mut program = CpuProgram::new(graph, weights).map_err(|e| LlmError::Load(e.to_string()))?;
        let cache_bytes = program
            .init_state(&Bindings::from([("NB".to_string(), num_blocks as i64)]))
            .map_err(|e| LlmError::Load(e.to_string()))?;
        tracing::info!(summary = ?program.summary(), cache_bytes, "cpu program ready");
        Ok(CpuExecutor {
            program,
            ids_dtype,
            vocab,
            cache_bytes,
        })
    }

    pub fn program(&self) -> &CpuProgram {
        &self.program
    }
}

/// The step graph's inputs for the scheduled sequences: their new tokens,
/// positions from `start`, the engine's slots and block tables.
pub fn step_inputs(seqs: &[StepSeq]) -> Result<StepInputs, String> {
    let mut s = StepInputs::default();
    for q in seqs {
        if q.slots.len() != q.tokens.len() {
            return Err(format!(
                "the engine gave {} cache slots for {} tokens of sequence {}",
                q.slots.len(),
                q.tokens.len(),
                q.seq
            ));
        }
        s.ids.extend(q.tokens.iter().map(|&t| i64::from(t)));
        let blocks: Vec<i64> = q.block_table.iter().map(|b| i64::from(b.0)).collect();
        let slots: Vec<i64> = q.slots.iter().map(|&x| x as i64).collect();
        s.push_with_slots(&blocks, q.start, &slots, q.sample);
    }
    Ok(s)
}

impl Executor for CpuExecutor {
    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        let s = step_inputs(seqs)?;
        let out = self
            .program
            .run(&s.metadata(self.ids_dtype))
            .map_err(|e| e.to_string())?;
        logit_rows(&out, self.vocab)
    }
}

/// Runs step graphs on one NVIDIA GPU through the `nvrtc` target: NVRTC
/// kernels and cuBLASLt GEMMs, the paged KV cache in device memory.
pub struct CudaExecutor {
    program: optc_codegen::nvrtc::CudaProgram,
    ids_dtype: DType,
    vocab: usize,
    /// Blocks of KV cache allocated, and their bytes.
    pub num_blocks: usize,
    pub cache_bytes: usize,
    /// Steps may be submitted before the previous one's tokens are read
    /// (`Executor::submit`; `OPTC_ASYNC_SCHEDULING=0` turns it off).
    asynchronous: bool,
}

/// How many KV blocks the GPU holds: `utilization` of its memory, less
/// what is in use (weights, the context) and a reserve for activations.
fn blocks_for_memory(free: usize, total: usize, utilization: f32, per_block: usize) -> usize {
    // In whole MiB: 0.9 as an f32 is a hair under 0.9.
    let mib = (1usize << 20) as f64;
    let budget = ((total as f64 * f64::from(utilization.clamp(0.05, 1.0)) / mib).round() * mib) as usize;
    let used = total.saturating_sub(free);
    let reserve = (total / 20).max(1 << 30);
    budget.saturating_sub(used + reserve) / per_block.max(1)
}

impl CudaExecutor {
    /// Lowers `graph` onto GPU 0 and allocates `num_blocks` cache blocks,
    /// or, with `num_blocks == None`, as many as `gpu_memory_utilization`
    /// of the GPU's memory allows, up to `max_blocks` (what the longest
    /// batch can use).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        graph: &Graph,
        weights: &WeightStore,
        num_blocks: Option<usize>,
        gpu_memory_utilization: f32,
        max_blocks: usize,
        vocab: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<CudaExecutor, LlmError> {
        let ids_dtype = ids_dtype(graph)?;
        let mut program = optc_codegen::nvrtc::CudaProgram::new(graph, weights, progress)
            .map_err(|e| LlmError::Load(e.to_string()))?;
        let per_block = program
            .state_bytes(&Bindings::from([("NB".to_string(), 1)]))
            .map_err(|e| LlmError::Load(e.to_string()))?;
        let num_blocks = match num_blocks {
            Some(n) => n,
            None => {
                let (free, total) = program.mem_info().map_err(|e| LlmError::Load(e.to_string()))?;
                blocks_for_memory(free, total, gpu_memory_utilization, per_block).min(max_blocks)
            }
        };
        if num_blocks == 0 {
            return Err(LlmError::Load(format!(
                "no room for a KV cache on the GPU ({per_block} bytes per block); raise --gpu-memory-utilization"
            )));
        }
        let cache_bytes = program
            .init_state(&Bindings::from([("NB".to_string(), num_blocks as i64)]))
            .map_err(|e| LlmError::Load(e.to_string()))?;
        tracing::info!(summary = ?program.summary(), num_blocks, cache_bytes, "cuda program ready");
        Ok(CudaExecutor {
            program,
            ids_dtype,
            vocab,
            num_blocks,
            cache_bytes,
            asynchronous: std::env::var("OPTC_ASYNC_SCHEDULING").map_or(true, |v| v != "0"),
        })
    }

    pub fn program(&self) -> &optc_codegen::nvrtc::CudaProgram {
        &self.program
    }
}

/// The step inputs with the block table padded to a power-of-two width:
/// decode steps then keep one shape (one CUDA graph) for many tokens.
/// Public for the host-work benchmark (`benches/engine_host.rs`).
pub fn gpu_step_inputs(
    seqs: &[StepSeq],
    ids_dtype: DType,
) -> Result<std::collections::BTreeMap<String, optc_ir::Tensor>, String> {
    let s = step_inputs(seqs)?;
    let width = s.block_table_width().next_power_of_two().max(8);
    Ok(s.metadata_with_width(ids_dtype, width))
}

impl Executor for CudaExecutor {
    /// Which decode paths the run took (graph copies, the pick in the LM
    /// head's GEMV, the embedding reading picks, the megakernel), so a
    /// benchmark with the `OPTC_CUDA_*` switches says which path its
    /// numbers are.
    fn report(&self) -> Option<String> {
        let p = &self.program;
        let s = p.summary();
        let [first, second] = p.graph_replays();
        let mut line = format!(
            "nvrtc: decode graphs: {} shapes, {} copies, {first} + {second} replays; greedy picks in the LM head's GEMV: {}; picked ids read by the embedding: {}; argmax blocks a row (0: chunked): {} of {} threads; early embeddings: {}",
            p.captured_graphs(),
            p.graph_copies(),
            p.gemv_picks(),
            p.embedding_picks(),
            p.argmax_cluster_blocks(),
            p.argmax_cluster_threads(),
            p.early_embeddings()
        );
        let (shapes, replays) = p.prefill_graphs();
        if shapes > 0 {
            line += &format!("; prefill graphs: {shapes} shapes, {replays} replays");
        }
        if p.l2_warms() > 0 {
            line += &format!("; L2 warms ahead of batched linears: {}", p.l2_warms());
        }
        let tuning = p.gemm_tuning();
        if tuning.tuned > 0 {
            line += &format!(
                "; cuBLASLt shapes timed: {} ({} off the heuristic's first choice)",
                tuning.tuned, tuning.changed
            );
        }
        if let Some(kernel) = s.mega_kernel.as_deref() {
            line += &format!(
                "; one-token decode megakernel {kernel}: {}",
                s.mega.as_deref().unwrap_or("off")
            );
        }
        Some(line)
    }

    fn step(&mut self, seqs: &[StepSeq]) -> Result<Vec<Vec<f32>>, String> {
        let out = self
            .program
            .run(&gpu_step_inputs(seqs, self.ids_dtype)?)
            .map_err(|e| e.to_string())?;
        logit_rows(&out, self.vocab)
    }

    fn step_greedy(&mut self, seqs: &[StepSeq]) -> Option<Result<Vec<(u32, f32)>, String>> {
        Some(
            gpu_step_inputs(seqs, self.ids_dtype)
                .and_then(|m| self.program.run_greedy(&m, "logits").map_err(|e| e.to_string())),
        )
    }

    fn step_sample(
        &mut self,
        seqs: &[StepSeq],
        rows: &[RowSampling],
    ) -> Option<Result<Vec<(u32, f32)>, String>> {
        let rows = sample_rows(rows);
        Some(gpu_step_inputs(seqs, self.ids_dtype).and_then(|m| {
            self.program
                .run_sample(&m, "logits", &rows)
                .map_err(|e| e.to_string())
        }))
    }

    fn submit(&mut self, seqs: &[StepSeq], rows: Option<&[RowSampling]>) -> Option<Result<(), String>> {
        if !self.asynchronous {
            return None;
        }
        // Each placeholder's place in the flat ids input.
        let mut from_prev = Vec::new();
        let mut at = 0;
        for s in seqs {
            if let Some(row) = s.prev_pick {
                from_prev.push(optc_codegen::nvrtc::PickedId { index: at, row });
            }
            at += s.tokens.len();
        }
        let rows = rows.map(sample_rows);
        Some(gpu_step_inputs(seqs, self.ids_dtype).and_then(|m| {
            self.program
                .submit_pick(&m, "logits", rows.as_deref(), "ids", &from_prev)
                .map_err(|e| e.to_string())
        }))
    }

    fn collect(&mut self) -> Result<Vec<(u32, f32)>, String> {
        self.program.collect_picks().map_err(|e| e.to_string())
    }
}

/// The engine's sampling rows in the GPU program's terms.
fn sample_rows(rows: &[RowSampling]) -> Vec<optc_codegen::nvrtc::SampleRow> {
    rows.iter()
        .map(|r| optc_codegen::nvrtc::SampleRow {
            temperature: r.temperature,
            top_k: r.top_k,
            top_p: r.top_p,
            min_p: r.min_p,
            uniform: r.uniform,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn gpu_block_tables_pad_to_a_power_of_two_of_at_least_8() {
        use optc_runtime::block_manager::BlockId;
        let seq = |id: u64, blocks: &[u32], start: usize| optc_runtime::engine::StepSeq {
            seq: id,
            start,
            tokens: vec![1],
            slots: vec![start],
            block_table: blocks.iter().map(|&b| BlockId(b)).collect(),
            history: Vec::new(),
            sample: true,
            prev_pick: None,
        };
        let seqs = [
            seq(0, &[4, 2, 9], 40),
            seq(1, &[1, 3, 5, 7, 8, 6, 0, 11, 12], 130),
        ];
        let m = super::gpu_step_inputs(&seqs, optc_ir::DType::I64).unwrap();
        let t = &m["block_tables"];
        assert_eq!(t.shape(), &[2, 16]);
        let v = t.to_i64_vec();
        assert_eq!(&v[..4], &[4, 2, 9, 0]);
        assert!(v[3..16].iter().all(|&x| x == 0));
        assert_eq!(&v[16..26], &[1, 3, 5, 7, 8, 6, 0, 11, 12, 0]);
        let one = super::gpu_step_inputs(&seqs[..1], optc_ir::DType::I64).unwrap();
        assert_eq!(one["block_tables"].shape(), &[1, 8]);
    }

    #[test]
    fn kv_blocks_fill_the_memory_budget_after_a_reserve() {
        let gib = 1usize << 30;
        // 100 GiB card, 10 in use, 90%: 90 - 10 - 5 (reserve) = 75 GiB.
        assert_eq!(super::blocks_for_memory(90 * gib, 100 * gib, 0.9, gib), 75);
        assert_eq!(super::blocks_for_memory(gib, 100 * gib, 0.9, gib), 0);
    }
}
