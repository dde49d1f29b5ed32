//! Lowering a graph to CUDA launches, and the run loop.
//!
//! Per op, lowering picks a kernel (cuBLASLt for `linear`/`matmul`, an
//! NVRTC kernel from `kernels/cuda` otherwise), a view (`reshape`,
//! `unsqueeze`, `squeeze`: the same device buffer), or the op's reference
//! semantics on the host for ops no kernel covers (the operands are copied
//! back, evaluated, and the results copied up; the summary counts them).
//! Ops whose operands are all weights are evaluated once at lowering and
//! kept as weights. Values keep their declared dtype on the device; kernels
//! compute in f32 and round once when they store.

use std::collections::{BTreeMap, HashMap, HashSet};

use cudarc::driver::CudaFunction;
use optc_ir::ops::{EvalCx, Op};
use optc_ir::{verify, Bindings, DType, Graph, NodeKind, Tensor, TensorType, Value, WeightStore};
use optc_kernels::cuda as src;

use super::compile::{self, CompileReport};
use super::device::{DeviceBox, Gpu, Pool};
use super::gemm::{Gemm, GemmTuning};
use super::l2warm::L2Warm;
use super::profile::Profile;
use super::select::{choose, float_name, foldable, function_names, instances_for, Kernel};
use crate::CodegenError;

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Loc {
    /// A graph input, in the per-run input arena.
    Input(usize),
    Weight(usize),
    /// State the program owns across runs (a KV cache).
    State(usize),
    /// A pool buffer, from its op until its last reader.
    Temp,
}

pub(super) enum Exec {
    View,
    Kernel(Kernel, Vec<CudaFunction>),
    Host,
}

pub(super) struct Step {
    pub(super) node: String,
    pub(super) op: Op,
    pub(super) args: Vec<usize>,
    pub(super) outs: Vec<usize>,
    pub(super) exec: Exec,
    /// A paged-attention step whose cache write an earlier kernel did
    /// (`Kernel::RopeQkvCache`, see `fuse.rs`).
    pub(super) cache_written: bool,
    /// On a linear: the neighbouring steps whose work its GEMV may do at
    /// decode batch sizes (see `fuse::fused_gemvs`), and its kernels.
    pub(super) fused: Option<FusedGemv>,
    /// On a norm step: the linear that may do its work. Whether it does
    /// is decided per run, from the row count.
    pub(super) deferred_to: Option<usize>,
    /// Values read besides `args` (a fused norm's operands and results),
    /// kept alive until this step has run.
    pub(super) also_reads: Vec<usize>,
    /// On a `Kernel::EwChain` step: its generated kernel.
    pub(super) chain: Option<Box<super::chains::EwChain>>,
    /// On a `Kernel::MatMul` step: cuBLASLt applies the tanh GELU that read
    /// its product (`fuse::gemm_epilogue`); its output is the GELU's.
    pub(super) gelu: bool,
}

impl Step {
    /// A step of `op` as lowering first plans it: no fusion yet.
    pub(super) fn new(node: String, op: Op, args: Vec<usize>, outs: Vec<usize>, exec: Exec) -> Step {
        Step {
            node,
            op,
            args,
            outs,
            exec,
            cache_written: false,
            fused: None,
            deferred_to: None,
            also_reads: Vec::new(),
            chain: None,
            gelu: false,
        }
    }
}

/// Work a linear's GEMV does besides the product, at one to four rows.
pub(super) struct FusedGemv {
    /// The (add+)RMSNorm step that makes x, done as the block fills x.
    pub(super) norm: Option<usize>,
    /// The index_select that picks x's rows from the norm's result: the
    /// fill normalises those rows only (`rows` of `gemv_norm_*`).
    pub(super) gather: Option<usize>,
    /// The SwiGLU step that reads the product, done at the store.
    pub(super) glu: Option<usize>,
    /// The rope + cache write step that reads the (QKV) product, done at
    /// the store.
    pub(super) rope: Option<usize>,
    /// The fused GEMV for one row of x, then for up to four.
    pub(super) fns: Vec<CudaFunction>,
}

/// What lowering decided, for `optc compile --target nvrtc` and logs.
#[derive(Clone, Debug, Default)]
pub struct CudaSummary {
    pub device: String,
    /// Ops per kernel.
    pub kernels: BTreeMap<String, usize>,
    /// Ops that run their reference semantics on the host, by op name.
    pub host: BTreeMap<String, usize>,
    pub views: usize,
    /// Ops evaluated once at lowering (all operands weights).
    pub folded: usize,
    pub weight_bytes: usize,
    /// Reading the weights (and building fused ones) and copying them to
    /// the GPU: most of a warm start.
    pub upload_millis: f64,
    pub compile: Option<CompileReport>,
    /// Linears whose GEMV runs the norm that made their input, at decode
    /// batch sizes.
    pub gemv_norms: usize,
    /// Gate/up linears whose GEMV stores SwiGLU of its product, at
    /// decode batch sizes.
    pub gemv_glus: usize,
    /// QKV linears whose GEMV rotates its product and writes the KV
    /// cache, at decode batch sizes.
    pub gemv_ropes: usize,
    /// Matmuls whose bias add cuBLASLt does as its epilogue.
    pub gemm_biases: usize,
    /// Matmuls and linears whose tanh GELU the GEMM (cuBLASLt's epilogue,
    /// or the decode GEMV's store) applies.
    pub gemm_gelus: usize,
    /// The tensor-core prefill kernel: "on", or why it is off.
    pub prefill_mma: Option<String>,
    /// The GPU's DRAM bandwidth from its memory clock and bus width (TB/s)
    /// and whether the wide-DRAM GEMV geometries are on (`Gpu::wide_dram`);
    /// `None` when planned without a GPU.
    pub dram: Option<(f64, bool)>,
    /// Layers of the decode stack the one-token megakernel covers (0:
    /// none), with the LM head.
    pub mega_layers: usize,
    /// The megakernel's function, when a stack was found.
    pub mega_kernel: Option<String>,
    /// Whether one-token runs launch it: "on", or why not.
    pub mega: Option<String>,
}

/// Per-run metadata of one paged-attention step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct AttentionRun {
    pub(super) tiles_offset: usize,
    pub(super) tiles: usize,
    pub(super) nsplit: usize,
    /// Prefill on the tensor cores (the MMA kernel in attention_mma.cu).
    pub(super) mma: bool,
    /// Decode (one token per sequence) on the one-launch decode kernel.
    pub(super) decode: bool,
    /// Its warps a block (`CudaProgram::decode_warps`; the splits assume them).
    pub(super) warps: usize,
    /// The rope + cache write step whose work the decode kernel does this
    /// run (`CudaProgram::decode_rope_step`): that step is not launched.
    pub(super) rope_from: Option<usize>,
}

/// How many paged-attention launches took each kernel since the program
/// was built, so tests and benchmarks can check which path ran (a
/// heuristic that quietly routes around a kernel leaves it untested).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttentionPaths {
    /// Decode steps on the one-launch decode kernel.
    pub decode: u64,
    /// Those of them on its eight-warp form (`OPTC_DECODE_WARPS=8`).
    pub decode8: u64,
    /// Those of them that rotated the queries and the new key and wrote
    /// the cache themselves (`OPTC_CUDA_DECODE_ROPE`).
    pub decode_rope: u64,
    /// Prefill-like steps on the tensor-core prefill kernel.
    pub prefill_mma: u64,
    /// Steps on the tiled CUDA-core kernel (split or not).
    pub tiled: u64,
}

/// A paged-attention step's functions: the cache write, the tiled kernel,
/// its split combine, the decode kernels of four and of eight warps, the
/// four-warp decode kernel that does the rope + cache write itself, then
/// (when it built) the MMA prefill at this index.
pub(super) const ATTENTION_MMA: usize = 6;

/// Where the decode kernel with the rope + cache write is among them.
pub(super) const ATTENTION_DECODE_ROPE: usize = 5;

/// Where the eight-warp decode kernel is among them.
pub(super) const ATTENTION_DECODE8: usize = 4;

/// Where a 16-bit linear's kernels hold the one-row ring GEMV: after the
/// two register GEMVs and the skinny GEMMs (`function_names`).
pub(super) const GEMV_RING_AT: usize = 2 + src::SKINNY_VARIANTS.len();

/// Split counters of the decode attention and the skinny GEMM: at most
/// this many (token, KV head) pairs or 64-row weight slabs per launch.
pub(super) const SPLIT_COUNTERS: usize = 1 << 18;

/// A graph lowered to CUDA kernels and cuBLASLt GEMMs, with its weights on
/// the GPU and its state (KV caches) allocated there.
pub struct CudaProgram {
    pub(super) gpu: Gpu,
    pub(super) gemm: Gemm,
    pub(super) pool: Pool,
    pub(super) graph: Graph,
    pub(super) types: Vec<TensorType>,
    pub(super) locs: Vec<Loc>,
    /// The value whose buffer each value uses (itself unless a view).
    pub(super) owner: Vec<usize>,
    /// Last step reading each owner (absent: never read; MAX: an output).
    pub(super) last_use: HashMap<usize, usize>,
    pub(super) steps: Vec<Step>,
    pub(super) inputs: Vec<(String, usize)>,
    pub(super) outputs: Vec<(String, usize)>,
    pub(super) state_names: Vec<String>,
    pub(super) state_types: Vec<TensorType>,
    pub(super) state: Vec<Option<DeviceBox>>,
    pub(super) weights: Vec<DeviceBox>,
    pub(super) arena: Option<DeviceBox>,
    /// `argmax_part_{dtype}` kernels for greedy sampling (chunks of rows),
    /// and the kernel that combines a row's chunks.
    pub(super) argmax: HashMap<&'static str, CudaFunction>,
    pub(super) argmax_combine: CudaFunction,
    /// `argmax_cluster_{dtype}`: a row's greedy pick by one cluster of
    /// blocks that merge in shared memory, without argmax_part's rounds
    /// through global memory (the pick is on every decode step's critical
    /// path). Used with `argmax_cluster_blocks` blocks a row when that is
    /// not 0.
    pub(super) argmax_cluster: HashMap<&'static str, CudaFunction>,
    /// Blocks of `argmax_cluster_*` a row: 2 to 16 in one cluster where
    /// such clusters fit (16 by default, else 8, else 0), 0 for
    /// argmax_part, 1 for a block a row without clusters
    /// (`OPTC_CUDA_ARGMAX_CLUSTER`).
    pub(super) argmax_cluster_blocks: u32,
    /// Threads of an `argmax_cluster_*` block (`argmax_cluster_threads`).
    pub(super) argmax_cluster_threads: u32,
    /// The blocks a row last asked for (`OPTC_CUDA_ARGMAX_CLUSTER` or
    /// `set_argmax_cluster`), which a change of threads fits again.
    pub(super) argmax_cluster_asked: u32,
    /// Copies a run's picked tokens into the next run's ids on the GPU.
    pub(super) ids_from_picks: CudaFunction,
    /// `sample_{stats,hist,}_{dtype}`: temperature, top-k, top-p and min-p.
    pub(super) sample: HashMap<&'static str, super::pick::SampleKernels>,
    pub(super) summary: CudaSummary,
    /// With `OPTC_CUDA_PROFILE=1`: GPU time per kernel kind (CUDA events
    /// around every step) and host time per phase, reported on drop.
    pub(super) profile: Option<Profile>,
    /// Decode steps (one token per sequence) replay a CUDA graph per
    /// shape; `OPTC_CUDA_GRAPHS=0` turns this off.
    pub(super) graphs: bool,
    pub(super) captures: HashMap<CaptureKey, super::graphs::CaptureSet>,
    /// Small step graphs get a second copy, taken in turn, so the copies
    /// around a step run beside the step before (`OPTC_CUDA_GRAPH_PAIRS=0`
    /// keeps one).
    pub(super) graph_pairs: bool,
    /// Prefill-like steps of at most this many tokens a paged attention
    /// replay a graph of their exact shape too, for the first
    /// `MAX_PREFILL_CAPTURES` shapes; `OPTC_CUDA_PREFILL_GRAPHS` (default
    /// `PREFILL_GRAPH_TOKENS`, 0: never). A short prompt's prefill
    /// otherwise waits on the host launching each kernel and cuBLASLt call
    /// in turn.
    pub(super) prefill_graph_tokens: usize,
    /// The captured shapes that are prefills.
    pub(super) prefill_keys: HashSet<CaptureKey>,
    /// No more prefill shapes are captured (those captured still replay):
    /// a capture failed, or they reached `PREFILL_GRAPHS_MAX_BYTES`.
    pub(super) prefill_captures_closed: bool,
    /// A greedy pick is made by the LM head's one-row ring GEMV as it
    /// stores the logits (`gemv*_ring_argmax_*`), where it runs there,
    /// instead of by the argmax kernel after it (`OPTC_CUDA_PICK_IN_GEMV=1`
    /// turns this on).
    pub(super) pick_in_gemv: bool,
    /// Whether rows with a small top-k are sampled in one kernel
    /// (`Pick::launches`); off, they take the three-kernel path too.
    pub(super) one_pass_sampling: bool,
    /// Sampling launches whose rows were all sampled in one pass.
    pub(super) one_pass_samples: u64,
    /// Runs (and captures) whose greedy pick the ring GEMV made.
    pub(super) gemv_picks: u64,
    /// Per input: the embedding step that is its only reader, if any (i64
    /// ids). A run taking a few of those ids from the previous run's picks
    /// lets that embedding read them through the head (`gather_picked_*`)
    /// rather than copying them into the ids first.
    pub(super) ids_embedding: Vec<Option<usize>>,
    /// Most ids an embedding reads through the head (`IDS_IN_EMBEDDING_MAX`).
    pub(super) ids_in_embedding_max: usize,
    /// Runs (and captures) whose embedding read picked ids that way.
    pub(super) embedding_picks: u64,
    /// Generated chains whose operands are ready before the run (the
    /// rotary tables: positions and constants) work before their wait
    /// (`OPTC_CUDA_EARLY_CHAINS=0` turns this off).
    pub(super) early_chains: bool,
    /// Chain launches that worked before their wait.
    pub(super) early_chain_launches: u64,
    /// Steps reading only the run's inputs (the rotary tables) launch
    /// first (`launch_order`), and an embedding reading picked ids
    /// through the head, behind a full barrier into a fresh buffer,
    /// gathers before its wait (on unless `OPTC_CUDA_EARLY_EMBEDDING=0`):
    /// one kernel boundary fewer at a decode step's start.
    pub(super) early_embedding: bool,
    /// `inputs_first` of the steps.
    pub(super) launch_order: Vec<usize>,
    /// `last_use` for steps launched in `launch_order`: a buffer goes back
    /// to the pool after its last reader in that order.
    pub(super) launch_last_use: HashMap<usize, usize>,
    /// Embedding launches that gathered before their wait.
    pub(super) early_embedding_launches: u64,
    /// Split counters of the decode attention, the skinny GEMM and the
    /// token picks (zero between launches: the last block of each group
    /// resets its own).
    pub(super) split_counters: DeviceBox,
    /// Where linears of 5..=128 rows (16-bit) take the tensor-core skinny
    /// GEMM instead of cuBLASLt.
    pub(super) skinny: SkinnyGemm,
    /// Whether decode attention past the GEMV's rows does the rope + cache
    /// write before it (`decode_rope_step`; `OPTC_CUDA_DECODE_ROPE=1`). Off
    /// by default: W2 and W3 measured 1–3 % slower with it on an H100.
    pub(super) decode_rope: bool,
    /// Asks L2 for the next batched decode linear's weights beside the
    /// kernels before it (`l2warm.rs`; `OPTC_CUDA_L2_WARM_MB`, 0: off).
    pub(super) l2warm: Option<L2Warm>,
    /// Every value's dims per input-shape set seen lately.
    pub(super) dims_cache: crate::lowering::DimsCache,
    pub(super) attention_paths: AttentionPaths,
    /// Linear launches on a fused GEMV (`gemv_norm_*`, `gemv_glu_*`).
    pub(super) fused_gemv_launches: u64,
    /// Smallest weight a one-row linear streams through the ring GEMV
    /// (`GEMV_RING_MIN_BYTES`; `OPTC_GEMV_RING_MIN_BYTES` overrides it).
    pub(super) gemv_ring_min_bytes: usize,
    /// Linear launches on a ring GEMV (plain or fused); counted where
    /// the GPU is borrowed, hence atomic.
    pub(super) ring_gemv_launches: std::sync::atomic::AtomicU64,
    /// Submitted runs whose picks are not read yet, oldest first (at most
    /// two: the one the host collects and the one it just submitted), and
    /// the picks of earlier ones read but not collected (`submit_pick`).
    pub(super) pending: std::collections::VecDeque<super::pick::PendingPicks>,
    /// Page-locked host buffers the picks of submitted runs are copied to
    /// asynchronously, one per run in flight.
    pub(super) pinned: Vec<super::device::PinnedHost>,
    /// Device buffers replaced while a run that reads them may be in
    /// flight; freed once the runs in flight are read (freeing at once
    /// would wait for the whole device).
    pub(super) retired: Vec<DeviceBox>,
    pub(super) collected: std::collections::VecDeque<Result<Vec<(u32, f32)>, String>>,
    /// The decode layer stack the megakernel covers, if any, and the
    /// megakernel once loaded (`set_mega`).
    pub(super) mega_stack: Option<super::mega::MegaStack>,
    pub(super) mega: Option<super::mega::Mega>,
    /// Runs that launched the megakernel.
    pub(super) mega_launches: u64,
    /// Whether every eight-warp decode kernel got the shared memory it
    /// needs (not on GPUs with less than Hopper's per-block limit):
    /// otherwise decode keeps four warps.
    pub(super) decode8: bool,
}

/// Where linears of 5..=128 rows of a 16-bit type run on optc's
/// tensor-core skinny GEMM (`skinny_*` in gemv.cu) rather than cuBLASLt.
/// Off by default: on the H200 it has not yet beaten cuBLASLt (see
/// docs/perf.md); `OPTC_CUDA_SKINNY=1` picks `Narrow`, `=all` picks `All`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkinnyGemm {
    /// cuBLASLt for every linear past the GEMV's rows.
    Off,
    /// The skinny GEMM for outputs narrower than 64 columns per SM.
    Narrow,
    /// The skinny GEMM for every width.
    All,
}

impl SkinnyGemm {
    fn from_env() -> SkinnyGemm {
        match std::env::var("OPTC_CUDA_SKINNY").as_deref() {
            Ok("1") => SkinnyGemm::Narrow,
            Ok("all") => SkinnyGemm::All,
            _ => SkinnyGemm::Off,
        }
    }
}

/// What a captured graph depends on: every input's shape and the
/// attention tiling (from the metadata values), and the token pick it
/// ends with (the output, and what it launches: `Pick::launches`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct CaptureKey {
    pub(super) input_dims: Vec<Vec<usize>>,
    pub(super) attention: Vec<(usize, AttentionRun)>,
    pub(super) arena_bytes: usize,
    pub(super) pick: Option<(usize, u8)>,
    /// Where the graph's first kernel finds the ids it may copy from the
    /// previous run's picks.
    pub(super) ids: Option<super::run::IdsHead>,
}

pub(super) const MAX_CAPTURES: usize = 64;

/// Prefill shapes captured at most: each holds its own activations, and
/// prompts of many lengths would otherwise fill the graphs' room. (Each
/// capture costs about one eager prefill's host time, once.)
pub(super) const MAX_PREFILL_CAPTURES: usize = 8;

/// Device memory the prefill graphs together may hold (their activation
/// pools and arenas): as for second copies, the KV cache was sized before
/// any graph was captured, and a decode capture must still fit.
pub(super) const PREFILL_GRAPHS_MAX_BYTES: usize = 256 << 20;

/// The largest prefill (tokens a paged attention) replayed from a graph
/// unless `OPTC_CUDA_PREFILL_GRAPHS` says otherwise; vLLM's largest
/// captured size is 512 too. W1's 128-token prefill: TTFT 1.4 ms against
/// 1.6–1.7 eager on an H200 (eighteenth session, perf.md).
pub(super) const PREFILL_GRAPH_TOKENS: usize = 512;

/// What [`CudaProgram::execute`] leaves for the caller.
pub(super) struct Executed {
    pub(super) dims: std::sync::Arc<crate::lowering::RunDims>,
    pub(super) ptr: Vec<u64>,
    /// The buffers belong to a captured graph (do not release them).
    pub(super) captured: bool,
    /// Picked tokens, then their log probabilities, when the run picked
    /// (a pool buffer unless `captured`).
    pub(super) picked: Option<u64>,
    /// A replay of a graph with a twin: its picks go back on the side
    /// stream (`graphs.rs`).
    pub(super) replayed: Option<std::sync::Arc<super::graphs::ReplayEvents>>,
}

/// Per input, the embedding step that is its only reader (through views),
/// when the input is i64 ids, not an output, and the step has its
/// `gather_picked_*` kernel.
fn sole_embeddings(
    inputs: &[(String, usize)],
    steps: &[Step],
    owner: &[usize],
    types: &[TensorType],
    last_use: &HashMap<usize, usize>,
) -> Vec<Option<usize>> {
    inputs
        .iter()
        .map(|&(_, v)| {
            if types[v].dtype != DType::I64 || last_use.get(&owner[v]) == Some(&usize::MAX) {
                return None;
            }
            let mut readers = steps.iter().enumerate().filter(|(_, s)| {
                !matches!(s.exec, Exec::View)
                    && s.args.iter().chain(&s.also_reads).any(|&a| owner[a] == owner[v])
            });
            let (si, s) = readers.next()?;
            let only = readers.next().is_none();
            let embedding = matches!(&s.exec, Exec::Kernel(Kernel::Embedding, fns) if fns.len() >= 2)
                && s.args.get(1).is_some_and(|&a| owner[a] == owner[v])
                && owner[s.args[0]] != owner[v];
            (only && embedding).then_some(si)
        })
        .collect()
}

/// The buffer owner of each value: a view's result is its operand's
/// buffer, and takes its place (`locs`) too.
fn alias_views(steps: &[Step], locs: &mut [Option<Loc>]) -> Vec<usize> {
    let mut owner: Vec<usize> = (0..locs.len()).collect();
    for s in steps {
        if let Exec::View = s.exec {
            owner[s.outs[0]] = owner[s.args[0]];
            locs[s.outs[0]] = locs[s.args[0]];
        }
    }
    owner
}

/// Per buffer (owner), the step after which it goes back to the pool:
/// its last reader when the steps launch in `order`; `usize::MAX` for the
/// graph's outputs (`outputs`, owners), which outlive the run.
pub(super) fn last_readers(
    steps: &[Step],
    owner: &[usize],
    order: impl Iterator<Item = usize>,
    outputs: &[usize],
) -> HashMap<usize, usize> {
    let mut last = HashMap::new();
    for si in order {
        let s = &steps[si];
        for &a in s.args.iter().chain(&s.also_reads) {
            last.insert(owner[a], si);
        }
    }
    for &o in outputs {
        last.insert(o, usize::MAX);
    }
    last
}

/// The order `run_steps` launches steps in when the embedding gathers
/// early (`early_embedding`): the steps that read only the run's inputs
/// and weights (directly or through such steps) and write pool buffers,
/// the rotary tables' chain for one, first; then every other step in its
/// order. Embeddings stay where they are, so at one token the embedding
/// is the kernel right before the first layer's GEMV: each kernel waits
/// for the one ahead, so its end covers the hoisted kernels' too, and
/// their completion no longer lies between the embedding and that GEMV.
pub(super) fn inputs_first(steps: &[Step], locs: &[Loc], owner: &[usize]) -> Vec<usize> {
    let mut hoisted = vec![false; locs.len()];
    let (mut first, mut rest) = (Vec::new(), Vec::new());
    for (si, s) in steps.iter().enumerate() {
        let movable = match &s.exec {
            Exec::View => true,
            Exec::Kernel(k, _) => {
                *k != Kernel::Embedding
                    && s.fused.is_none()
                    && s.deferred_to.is_none()
                    && s.outs.iter().all(|&o| locs[owner[o]] == Loc::Temp)
            }
            Exec::Host => false,
        };
        let reads = || s.args.iter().chain(&s.also_reads).map(|&a| owner[a]);
        let from_inputs = reads().all(|o| matches!(locs[o], Loc::Input(_) | Loc::Weight(_)) || hoisted[o])
            && reads().any(|o| matches!(locs[o], Loc::Input(_)) || hoisted[o]);
        if movable && from_inputs {
            for &o in &s.outs {
                hoisted[owner[o]] = true;
            }
            first.push(si);
        } else {
            rest.push(si);
        }
    }
    first.extend(rest);
    first
}

/// Adds instantiation line `i` unless it is there already.
fn push_new(instances: &mut Vec<String>, i: String) {
    if !instances.contains(&i) {
        instances.push(i);
    }
}

/// A transpose that keeps the order of every axis longer than one (the
/// rotary tables' `[1, 1, T, r] -> [1, T, 1, r]`): the same bytes, so a
/// view. Symbolic extents count as longer than one.
fn moves_only_unit_axes(op: &Op, x: &TensorType) -> bool {
    let Op::Transpose(t) = op else { return false };
    let dims = x.shape.dims();
    let kept: Option<Vec<usize>> = t
        .perm
        .iter()
        .map(|&p| optc_ir::dim::normalize_axis(p, dims.len()).ok())
        .filter(|p| p.is_none_or(|p| dims[p].as_const() != Some(1)))
        .collect();
    t.perm.len() == dims.len() && kept.is_some_and(|k| k.windows(2).all(|w| w[0] < w[1]))
}

/// Lets `f` take `bytes` of dynamic shared memory (past the 48 KiB default).
/// Makes linear `li` a plain one again (its fused kernels did not build,
/// or a step it fused was evaluated at lowering).
fn unfuse(steps: &mut [Step], li: usize, summary: &mut CudaSummary) {
    let Some(z) = steps[li].fused.take() else {
        return;
    };
    steps[li].also_reads.clear();
    if let Some(p) = z.norm {
        summary.gemv_norms = summary.gemv_norms.saturating_sub(1);
        if let Some(s) = steps.get_mut(p) {
            s.deferred_to = None;
        }
    }
    if let Some(s) = z.gather.and_then(|g| steps.get_mut(g)) {
        s.deferred_to = None;
    }
    if z.glu.is_some() {
        summary.gemv_glus = summary.gemv_glus.saturating_sub(1);
    }
    if z.rope.is_some() {
        summary.gemv_ropes = summary.gemv_ropes.saturating_sub(1);
    }
}

/// The kernel `preferred` names where the GPU has it (a variant built only
/// for some architectures), else `name`'s; `None` if neither is defined.
fn first_defined(gpu: &mut Gpu, preferred: Option<String>, name: &str) -> Option<CudaFunction> {
    preferred
        .and_then(|p| gpu.function(&p).ok())
        .or_else(|| gpu.function(name).ok())
}

pub(super) fn allow_smem(f: &CudaFunction, bytes: usize) -> Result<(), cudarc::driver::DriverError> {
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
}

pub(super) fn node_err(node: &str) -> impl Fn(String) -> CodegenError + '_ {
    move |message| CodegenError::Node {
        node: node.to_string(),
        message,
    }
}

/// The GPU-free half of lowering: the steps with their kernels chosen and
/// the lowering-time fusions done, and what compiling, uploading and
/// launching need of the graph.
struct Plan {
    order: Vec<optc_ir::NodeId>,
    vid: HashMap<Value, usize>,
    types: Vec<TensorType>,
    locs: Vec<Option<Loc>>,
    inputs: Vec<(String, usize)>,
    state_names: Vec<String>,
    state_types: Vec<TensorType>,
    /// Weights and the values folded from them.
    consts: HashSet<usize>,
    steps: Vec<Step>,
    summary: CudaSummary,
    /// The kernel sources' instantiation lines the steps need.
    instances: Vec<String>,
    mma_instances: Vec<String>,
    /// The decode layer stack the megakernel can run at one token.
    mega: Option<super::mega::MegaStack>,
}

/// Plans the lowering of `g` for a GPU named `device`, without touching
/// one.
fn plan(g: &Graph, device: &str) -> Result<Plan, CodegenError> {
    verify(g)?;
    let names = g.value_names();
    let crate::lowering::Numbered { order, vid, types } = crate::lowering::number_values(g)?;
    let out_names: HashMap<&str, &TensorType> =
        g.outputs().iter().map(|o| (o.name.as_str(), &o.ty)).collect();
    let mut locs: Vec<Option<Loc>> = vec![None; types.len()];
    let mut inputs = Vec::new();
    let mut state_names = Vec::new();
    let mut state_types = Vec::new();
    // Constant values (weights and folded ops) by value id.
    let mut consts: HashSet<usize> = HashSet::new();
    let mut steps = Vec::new();
    let mut summary = CudaSummary {
        device: device.to_string(),
        ..Default::default()
    };
    let mut instances: Vec<String> = Vec::new();
    let mut mma_instances: Vec<String> = Vec::new();
    for &id in &order {
        let node = g.node(id);
        let v0 = vid[&Value::of(id)];
        match &node.kind {
            NodeKind::Input { name } => {
                if out_names.get(name.as_str()) == Some(&&node.outputs[0]) {
                    locs[v0] = Some(Loc::State(state_names.len()));
                    state_names.push(name.clone());
                    state_types.push(node.outputs[0].clone());
                } else {
                    locs[v0] = Some(Loc::Input(inputs.len()));
                    inputs.push((name.clone(), v0));
                }
            }
            NodeKind::Weight { .. } => {
                consts.insert(v0);
            }
            NodeKind::Op(op) => {
                let args: Vec<usize> = g.operands(id).iter().map(|v| vid[v]).collect();
                let outs: Vec<usize> = (0..node.outputs.len())
                    .map(|i| {
                        vid[&Value {
                            node: id,
                            index: i as u32,
                        }]
                    })
                    .collect();
                let describe = crate::lowering::describe_op(g, &names, id, op);
                if args.iter().all(|a| consts.contains(a)) && foldable(op, &node.outputs) {
                    consts.extend(outs.iter().copied());
                    steps.push(Step::new(describe, op.clone(), args, outs, Exec::Host));
                    summary.folded += 1;
                    continue;
                }
                let arg_types: Vec<&TensorType> = args.iter().map(|&a| &types[a]).collect();
                let exec = if matches!(op, Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_))
                    || args.first().is_some_and(|&a| moves_only_unit_axes(op, &types[a]))
                {
                    summary.views += 1;
                    Exec::View
                } else if let Some(k) = choose(op, &arg_types, &node.outputs) {
                    *summary.kernels.entry(k.name().to_string()).or_insert(0) += 1;
                    let fns = function_names(k, &arg_types, &node.outputs[0]);
                    for i in instances_for(k, &node.outputs[0]) {
                        push_new(&mut instances, i);
                    }
                    if k == Kernel::PagedAttention {
                        let d = fns[1]
                            .rsplit("_d")
                            .next()
                            .and_then(|d| d.parse::<usize>().ok())
                            .unwrap_or(0);
                        let inst =
                            src::attention_instance(float_name(node.outputs[0].dtype).unwrap_or("f32"), d);
                        if d == 0 {
                            return Err(CodegenError::Node {
                                node: describe,
                                message: "paged_attention needs a constant head dim".into(),
                            });
                        }
                        push_new(&mut instances, inst);
                        let f = float_name(node.outputs[0].dtype).unwrap_or("f32");
                        if src::prefill_mma_supported(f, d) {
                            let i = src::prefill_mma_instance(f, d);
                            push_new(&mut mma_instances, i);
                        }
                        // The caches are updated in place.
                        for (o, a) in [(1, 3), (2, 4)] {
                            match locs[args[a]] {
                                Some(Loc::State(s)) => locs[outs[o]] = Some(Loc::State(s)),
                                _ => {
                                    return Err(CodegenError::Node {
                                        node: describe,
                                        message:
                                            "the KV caches must be graph inputs that are also outputs (state)"
                                                .into(),
                                    })
                                }
                            }
                        }
                    }
                    Exec::Kernel(k, Vec::new())
                } else {
                    if matches!(op, Op::PagedAttention(_)) {
                        return Err(CodegenError::Node {
                            node: describe,
                            message: "paged_attention on the GPU needs f32/bf16/f16 operands of one dtype and equal K and V head dims".into(),
                        });
                    }
                    *summary.host.entry(op.name().to_string()).or_insert(0) += 1;
                    Exec::Host
                };
                steps.push(Step::new(describe, op.clone(), args, outs, exec));
            }
        }
    }
    let mut mega = None;
    if std::env::var("OPTC_CUDA_FUSE").map_or(true, |v| v != "0") {
        let outputs: HashSet<usize> = g.outputs().iter().map(|o| vid[&o.value]).collect();
        let counts = [
            super::fuse::fuse(&mut steps, &types, &outputs),
            super::chains::fuse_chains(&mut steps, &types, &outputs),
        ];
        for (name, by) in counts.concat() {
            let n = summary.kernels.entry(name.to_string()).or_insert(0);
            *n = n.saturating_add_signed(by as isize);
        }
        summary.kernels.retain(|_, n| *n > 0);
        let matmuls = steps
            .iter()
            .filter(|s| matches!(s.exec, Exec::Kernel(Kernel::MatMul, _)));
        summary.gemm_biases = matmuls.clone().filter(|s| s.args.len() > 2).count();
        summary.gemm_gelus = steps.iter().filter(|s| s.gelu).count();
        if std::env::var("OPTC_CUDA_FUSE_GEMV").map_or(true, |v| v != "0") {
            let n = super::fuse::fused_gemvs(&mut steps, &types, &outputs);
            (summary.gemv_norms, summary.gemv_glus, summary.gemv_ropes) = (n.norms, n.glus, n.ropes);
            mega = super::mega::find(&steps, &types, &consts, &outputs);
            if let Some(m) = &mega {
                summary.mega_layers = m.layers.len();
                summary.mega_kernel = Some(m.shape.function());
            }
        }
    }
    Ok(Plan {
        order,
        vid,
        types,
        locs,
        inputs,
        state_names,
        state_types,
        consts,
        steps,
        summary,
        instances,
        mma_instances,
        mega,
    })
}

/// What lowering `g` for the GPU launches (kernels by kind, the fusions
/// decided at lowering), worked out without a GPU: the planning
/// `CudaProgram::new` does before it compiles and uploads. Kernel counts
/// are per run of the graph; whether a fused GEMV runs fused is decided
/// per run, from its rows.
pub fn plan_summary(g: &Graph) -> Result<CudaSummary, CodegenError> {
    plan(g, "(planned without a GPU)").map(|p| p.summary)
}

impl CudaProgram {
    /// Lowers `g` for GPU 0, uploading its weights from `store`;
    /// `progress(done, total)` follows the upload in bytes.
    pub fn new(
        g: &Graph,
        store: &WeightStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<CudaProgram, CodegenError> {
        let gerr = node_err(&g.name);
        let mut gpu = Gpu::new(0).map_err(&gerr)?;
        let Plan {
            order,
            vid,
            types,
            mut locs,
            inputs,
            state_names,
            state_types,
            consts,
            mut steps,
            mut summary,
            mut instances,
            mma_instances,
            mega: mega_stack,
        } = plan(g, &gpu.name)?;
        // Token picks read 2-D float outputs: their kernels for those types.
        let pick_types: Vec<&'static str> = {
            let mut v: Vec<&'static str> = g
                .outputs()
                .iter()
                .filter(|o| o.ty.rank() == 2)
                .filter_map(|o| float_name(o.ty.dtype))
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        for d in &pick_types {
            for i in src::pick_instances(d) {
                push_new(&mut instances, i);
            }
        }
        // Compile (or load) the kernels and resolve each step's functions.
        let mut units = compile::sources(&instances).map_err(&gerr)?;
        units.extend(super::chains::unit(&steps));
        let (ptx, report) = compile::compile_all(&units, gpu.arch).map_err(&gerr)?;
        tracing::info!(
            cache_hit = report.cache_hit,
            ms = report.millis,
            "nvrtc kernels ready"
        );
        summary.compile = Some(report);
        gpu.load(ptx).map_err(&gerr)?;
        // The tensor-core prefill is optional: without it, the scalar
        // kernel serves prefill too.
        let mut mma = false;
        if !mma_instances.is_empty() && std::env::var("OPTC_PREFILL_MMA").map_or(true, |v| v != "0") {
            match compile::compile(&compile::mma_source(&mma_instances), gpu.arch)
                .and_then(|(p, _)| gpu.load_extra(p))
            {
                Ok(()) => mma = true,
                Err(e) => {
                    tracing::warn!(error = %e, "the tensor-core prefill kernel did not build; prefill uses the scalar kernel");
                    summary.prefill_mma = Some(format!("off: {e}"));
                }
            }
        }
        if mma {
            summary.prefill_mma = Some("on".into());
        }
        summary.dram = Some((gpu.dram_tbps, gpu.wide_dram));
        let mut decode8 = true;
        for s in &mut steps {
            if let Exec::Kernel(k, fns) = &mut s.exec {
                let arg_types: Vec<&TensorType> = s.args.iter().map(|&a| &types[a]).collect();
                for name in function_names(*k, &arg_types, &types[s.outs[0]]) {
                    // A linear with a GELU epilogue: the GEMVs that apply it.
                    let name = if s.gelu {
                        super::select::gelu_gemv(&name)
                    } else {
                        name
                    };
                    fns.push(gpu.function(&name).map_err(node_err(&s.node))?);
                }
                if let Some(c) = &s.chain {
                    fns.push(gpu.function(&c.name).map_err(node_err(&s.node))?);
                }
                if *k == Kernel::Linear {
                    let esize = types[s.outs[0]].dtype.storage_bytes(1);
                    // The ring GEMV is optional: without its shared memory
                    // the register GEMV takes its linears.
                    if fns.len() > GEMV_RING_AT
                        && allow_smem(&fns[GEMV_RING_AT], src::GEMV_RING_MAX_SMEM).is_err()
                    {
                        fns.truncate(GEMV_RING_AT);
                    }
                    if fns.len() > GEMV_RING_AT + 1
                        && allow_smem(&fns[GEMV_RING_AT + 1], src::GEMV_RING_MAX_SMEM).is_err()
                    {
                        fns.truncate(GEMV_RING_AT + 1);
                    }
                    let smem = |i: usize| match i {
                        0 | 1 => src::GEMV_MAX_SMEM,
                        _ => src::skinny_smem_bytes(src::SKINNY_VARIANTS[i - 2].1, esize),
                    };
                    let ok = fns
                        .iter()
                        .take(GEMV_RING_AT)
                        .enumerate()
                        .all(|(i, f)| allow_smem(f, smem(i)).is_ok());
                    // Without the shared memory the GEMV is off: cuBLASLt.
                    if !ok || std::env::var("OPTC_CUDA_GEMV").is_ok_and(|v| v == "0") {
                        fns.clear();
                    }
                }
                if *k == Kernel::PagedAttention {
                    let d = arg_types[0]
                        .shape
                        .dims()
                        .last()
                        .and_then(|d| d.as_const())
                        .unwrap_or(0) as usize;
                    let smem = src::attention_smem_bytes(d);
                    // Always: the static shared memory counts against the
                    // same 48 KiB default.
                    {
                        allow_smem(&fns[1], smem).map_err(|e| CodegenError::Node {
                            node: s.node.clone(),
                            message: format!("head dim {d} needs {smem} bytes of shared memory: {e}"),
                        })?;
                    }
                    if d % 8 == 0 && d <= src::DECODE_MAX_HEAD_DIM {
                        let esize = types[s.outs[0]].dtype.storage_bytes(1);
                        let bytes = src::paged_decode_smem_bytes(d, esize, 4);
                        // The four-warp kernel, and its rope-doing form.
                        let four = |f: &CudaFunction| {
                            allow_smem(f, bytes).map_err(|e| CodegenError::Node {
                                node: s.node.clone(),
                                message: format!(
                                    "decode attention for head dim {d} needs {bytes} bytes of shared memory: {e}"
                                ),
                            })
                        };
                        four(&fns[3])?;
                        // Eight warps (tensor cores only) are optional: past
                        // the GPU's per-block shared memory, decode keeps four.
                        if src::decode_mma_supported(d, esize) {
                            let bytes = src::paged_decode_smem_bytes(d, esize, 8);
                            decode8 &= allow_smem(&fns[ATTENTION_DECODE8], bytes).is_ok();
                            four(&fns[ATTENTION_DECODE_ROPE])?;
                        }
                    }
                    let f = float_name(types[s.outs[0]].dtype).unwrap_or("f32");
                    if mma && src::prefill_mma_supported(f, d) {
                        if let Some(func) = gpu.extra_function(&format!("paged_prefill_mma_{f}_d{d}")) {
                            let bytes = src::prefill_mma_smem_bytes(d) as i32;
                            if func
                                .set_attribute(
                                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                    bytes,
                                )
                                .is_ok()
                            {
                                fns.push(func);
                            }
                        }
                    }
                }
            }
        }
        // A fused GEMV needs its kernels and the plain GEMV's shared
        // memory; without either the steps run apart.
        for li in 0..steps.len() {
            let Some((norm, glu, rope)) = steps[li].fused.as_ref().map(|z| (z.norm, z.glu, z.rope)) else {
                continue;
            };
            let f = float_name(types[steps[li].outs[0]].dtype).unwrap_or("f32");
            let name = format!(
                "gemv{}{}{}_{f}",
                if norm.is_some() { "_norm" } else { "" },
                if glu.is_some() { "_glu" } else { "" },
                if rope.is_some() { "_rope" } else { "" }
            );
            let gemv_on = matches!(&steps[li].exec, Exec::Kernel(_, fns) if !fns.is_empty());
            let mut fns: Vec<CudaFunction> = Vec::new();
            for m in ["m1", "m4"] {
                // On wide DRAM the one-row QKV GEMV takes two loads a
                // stage (`gemv_*rope2_*`, where built: sm_90).
                let two_loads = gpu.wide_dram && rope.is_some() && m == "m1";
                let wide = two_loads.then(|| format!("{}_{m}", name.replace("_rope_", "_rope2_")));
                let func = first_defined(&mut gpu, wide, &format!("{name}_{m}"));
                fns.extend(func.filter(|func| allow_smem(func, src::GEMV_MAX_SMEM).is_ok()));
            }
            // The one-row ring GEMV of this kind, where one exists (16-bit
            // types, not the rope kinds): `fns[2]`.
            if rope.is_none() && fns.len() == 2 {
                let ring = format!(
                    "gemv{}{}_ring_{f}_m1",
                    if norm.is_some() { "_norm" } else { "" },
                    if glu.is_some() { "_glu" } else { "" }
                );
                // On wide DRAM gate/up's ring fills by bulk copies
                // (`gemv_*glu_ring_bulk_*`, where built: sm_90).
                let bulk = (gpu.wide_dram && glu.is_some()).then(|| ring.replace("_ring_", "_ring_bulk_"));
                if let Some(func) = first_defined(&mut gpu, bulk, &ring) {
                    if allow_smem(&func, src::GEMV_RING_MAX_SMEM).is_ok() {
                        fns.push(func);
                    }
                }
                // `fns[3]`: the plain one picking the greedy token of its
                // row (an LM head after the final norm).
                let argmax = format!("gemv_norm_ring_argmax_{f}_m1");
                if norm.is_some() && glu.is_none() && fns.len() == 3 {
                    if let Ok(func) = gpu.function(&argmax) {
                        if allow_smem(&func, src::GEMV_RING_MAX_SMEM).is_ok() {
                            fns.push(func);
                        }
                    }
                }
            }
            if gemv_on && fns.len() >= 2 {
                if let Some(z) = steps[li].fused.as_mut() {
                    z.fns = fns;
                }
            } else {
                unfuse(&mut steps, li, &mut summary);
            }
        }
        // The token-pick kernels, one per float dtype of a 2-D output.
        let (mut argmax, mut sample) = (HashMap::new(), HashMap::new());
        let mut argmax_cluster = HashMap::new();
        let argmax_cluster_threads = super::pick::argmax_cluster_threads();
        let argmax_cluster_asked = std::env::var("OPTC_CUDA_ARGMAX_CLUSTER")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(super::pick::ARGMAX_CLUSTER_MOST)
            .min(super::pick::ARGMAX_CLUSTER_MOST);
        for d in pick_types {
            argmax.insert(d, gpu.function(&format!("argmax_part_{d}")).map_err(&gerr)?);
            let f = gpu.function(&format!("argmax_cluster_{d}")).map_err(&gerr)?;
            // Little shared memory of its own: the most for the SM, so its
            // blocks can share one with the LM head's ring blocks.
            gpu.prefer_shared_memory(&f);
            argmax_cluster.insert(d, f);
            let kernels = super::pick::SampleKernels {
                stats: gpu.function(&format!("sample_stats_{d}")).map_err(&gerr)?,
                hist: gpu.function(&format!("sample_hist_{d}")).map_err(&gerr)?,
                draw: gpu.function(&format!("sample_{d}")).map_err(&gerr)?,
            };
            sample.insert(d, kernels);
        }
        let argmax_cluster_blocks = super::pick::argmax_cluster_fit(
            &gpu,
            argmax_cluster.values(),
            argmax_cluster_asked,
            argmax_cluster_threads,
        );
        let argmax_combine = gpu.function("argmax_combine").map_err(&gerr)?;
        let ids_from_picks = gpu.function("ids_from_picks").map_err(&gerr)?;
        let l2warm = L2Warm::new(&mut gpu, L2Warm::mib_from_env()).map_err(&gerr)?;
        // Evaluate folded ops and upload the constants kernels read.
        let mut host: HashMap<usize, Tensor> = HashMap::new();
        let weight_node: HashMap<usize, (String, String)> = order
            .iter()
            .filter_map(|&id| match &g.node(id).kind {
                NodeKind::Weight { name, key } => Some((vid[&Value::of(id)], (name.clone(), key.clone()))),
                _ => None,
            })
            .collect();
        let mut read_on_device: HashSet<usize> = HashSet::new();
        for s in &steps {
            let folded = s.outs.iter().all(|o| consts.contains(o));
            if !folded {
                read_on_device.extend(s.args.iter().copied().filter(|a| consts.contains(a)));
            }
        }
        for o in g.outputs() {
            let v = vid[&o.value];
            if consts.contains(&v) {
                read_on_device.insert(v);
            }
        }
        let fetch = |v: usize, host: &mut HashMap<usize, Tensor>| -> Result<(), CodegenError> {
            if host.contains_key(&v) {
                return Ok(());
            }
            let (name, key) = weight_node.get(&v).ok_or_else(|| CodegenError::Node {
                node: g.name.clone(),
                message: format!("constant value {v} has no weight (a lowering bug)"),
            })?;
            let t = crate::lowering::weights_get(store, name, key, &types[v])?;
            host.insert(v, t);
            Ok(())
        };
        let total: usize = read_on_device
            .iter()
            .map(|&v| {
                types[v].dtype.storage_bytes(
                    types[v]
                        .shape
                        .as_consts()
                        .map_or(0, |d| d.iter().product::<i64>() as usize),
                )
            })
            .sum();
        let mut weights = Vec::new();
        let mut done = 0usize;
        // Through page-locked staging buffers when there are some to be had.
        let mut staging = super::staging::Staging::new(&gpu)
            .map_err(|e| tracing::warn!(error = %e, "weights are copied from pageable memory"))
            .ok();
        let mut upload =
            |v: usize, parts: &[&[u8]], weights: &mut Vec<DeviceBox>, locs: &mut Vec<Option<Loc>>| {
                let len: usize = parts.iter().map(|p| p.len()).sum();
                let b = DeviceBox::new(len).map_err(&gerr)?;
                let mut at = b.ptr;
                for bytes in parts {
                    match staging.as_mut() {
                        Some(st) => st.copy(at, bytes),
                        None => gpu.htod(at, bytes),
                    }
                    .map_err(&gerr)?;
                    at += bytes.len() as u64;
                }
                done += len;
                progress(done, total);
                locs[v] = Some(Loc::Weight(weights.len()));
                weights.push(b);
                Ok::<(), CodegenError>(())
            };
        let mut kept = Vec::new();
        // Old step index -> index among the kept steps (fusion links).
        let mut moved: HashMap<usize, usize> = HashMap::new();
        for (i, s) in steps.drain(..).enumerate() {
            if !s.outs.iter().all(|o| consts.contains(o)) {
                moved.insert(i, kept.len());
                kept.push(s);
                continue;
            }
            for &a in &s.args {
                if weight_node.contains_key(&a) {
                    fetch(a, &mut host)?;
                }
            }
            let refs: Vec<&Tensor> = s.args.iter().map(|a| &host[a]).collect();
            let res =
                s.op.eval(
                    &refs,
                    &EvalCx {
                        bindings: &Bindings::new(),
                    },
                )
                .map_err(node_err(&s.node))?;
            for (&o, t) in s.outs.iter().zip(res) {
                host.insert(o, t);
            }
        }
        let mut steps = kept;
        // Fusion links follow their steps. A linear is kept whenever a
        // step it fuses is (x or its product is computed on the device),
        // and a norm evaluated here leaves its linear a plain one.
        for li in 0..steps.len() {
            let Some(z) = steps[li].fused.as_mut() else {
                steps[li].deferred_to = steps[li].deferred_to.and_then(|l| moved.get(&l).copied());
                continue;
            };
            let (norm, gather, glu, rope) = (
                z.norm.map(|i| moved.get(&i).copied()),
                z.gather.map(|i| moved.get(&i).copied()),
                z.glu.map(|i| moved.get(&i).copied()),
                z.rope.map(|i| moved.get(&i).copied()),
            );
            z.norm = norm.flatten();
            z.gather = gather.flatten();
            z.glu = glu.flatten();
            z.rope = rope.flatten();
            if [norm, gather, glu, rope].contains(&Some(None)) {
                unfuse(&mut steps, li, &mut summary);
            }
        }
        let mega_stack = mega_stack.and_then(|m| m.remap(&moved));
        let upload_start = std::time::Instant::now();
        let mut ups: Vec<usize> = read_on_device.iter().copied().collect();
        ups.sort_unstable();
        for v in ups {
            if let Some(t) = host.remove(&v) {
                upload(v, &[&t.to_le_bytes()], &mut weights, &mut locs)?;
                continue;
            }
            // A checkpoint weight: its bytes straight from the mapped file.
            let (name, key) = weight_node.get(&v).ok_or_else(|| CodegenError::Node {
                node: g.name.clone(),
                message: format!("constant value {v} was not evaluated (a lowering bug)"),
            })?;
            let werr = |message: String| CodegenError::Weight {
                name: name.clone(),
                message,
            };
            let (dtype, shape) = store.info(key).map_err(|e| werr(e.to_string()))?;
            let want = types[v]
                .shape
                .as_consts()
                .map(|d| d.into_iter().map(|x| x as usize).collect::<Vec<_>>());
            if dtype != types[v].dtype || want.as_deref() != Some(shape.as_slice()) {
                return Err(werr(format!(
                    "declared {} but the store holds {dtype}{shape:?}",
                    types[v]
                )));
            }
            let parts = store.get_le_parts(key).map_err(|e| werr(e.to_string()))?;
            let len: usize = parts.iter().map(|p| p.len()).sum();
            if len != dtype.storage_bytes(shape.iter().product()) {
                return Err(werr(format!("{len} bytes for {dtype}{shape:?}")));
            }
            let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_ref()).collect();
            upload(v, &parts, &mut weights, &mut locs)?;
        }
        drop(host);
        // Waits for the last staged copies.
        drop(staging);
        summary.weight_bytes = weights.iter().map(|w| w.bytes).sum();
        summary.upload_millis = upload_start.elapsed().as_secs_f64() * 1e3;
        // Buffer owners and liveness.
        let owner = alias_views(&steps, &mut locs);
        let output_owners: Vec<usize> = g.outputs().iter().map(|o| owner[vid[&o.value]]).collect();
        let last_use = last_readers(&steps, &owner, 0..steps.len(), &output_owners);
        let locs: Vec<Loc> = locs.into_iter().map(|l| l.unwrap_or(Loc::Temp)).collect();
        for s in &mut steps {
            if let Exec::View = s.exec {
                continue;
            }
            for &o in &s.outs {
                if locs[o] != Loc::Temp && !matches!(locs[o], Loc::State(_)) {
                    return Err(gerr(format!(
                        "{}: result placed outside the pool (a lowering bug)",
                        s.node
                    )));
                }
            }
        }
        let outputs = g
            .outputs()
            .iter()
            .filter(|o| !state_names.contains(&o.name))
            .map(|o| (o.name.clone(), vid[&o.value]))
            .collect();
        let mut gemm = Gemm::new(gpu.arch.0).map_err(&gerr)?;
        if std::env::var("OPTC_CUDA_GEMM_TUNE").is_ok_and(|v| v != "0") {
            gemm.set_tuning(Some(&gpu.ctx)).map_err(&gerr)?;
        }
        // Split GEMVs and attention count their blocks here, and so do
        // the token picks, which any program may run over an output.
        let split_counters = DeviceBox::new(SPLIT_COUNTERS * 4).map_err(&gerr)?;
        gpu.zero(split_counters.ptr, split_counters.bytes)
            .and_then(|_| gpu.sync())
            .map_err(&gerr)?;
        let ids_embedding = sole_embeddings(&inputs, &steps, &owner, &types, &last_use);
        let launch_order = inputs_first(&steps, &locs, &owner);
        let launch_last_use = last_readers(&steps, &owner, launch_order.iter().copied(), &output_owners);
        let mut p = CudaProgram {
            gpu,
            gemm,
            pool: Pool::default(),
            graph: g.clone(),
            types,
            locs,
            owner,
            last_use,
            steps,
            inputs,
            outputs,
            state: (0..state_names.len()).map(|_| None).collect(),
            state_names,
            state_types,
            weights,
            arena: None,
            argmax,
            argmax_combine,
            argmax_cluster,
            argmax_cluster_blocks,
            argmax_cluster_threads,
            argmax_cluster_asked,
            ids_from_picks,
            sample,
            summary,
            profile: Profile::from_env(),
            graphs: std::env::var("OPTC_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            captures: HashMap::new(),
            graph_pairs: std::env::var("OPTC_CUDA_GRAPH_PAIRS").map_or(true, |v| v != "0"),
            prefill_graph_tokens: std::env::var("OPTC_CUDA_PREFILL_GRAPHS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(PREFILL_GRAPH_TOKENS),
            prefill_keys: HashSet::new(),
            prefill_captures_closed: false,
            // Off by default: on an H100 it measured 1.6 % slower at W1
            // than the argmax kernel (tenth session; see perf.md).
            pick_in_gemv: std::env::var("OPTC_CUDA_PICK_IN_GEMV").is_ok_and(|v| v != "0"),
            one_pass_sampling: true,
            one_pass_samples: 0,
            gemv_picks: 0,
            ids_embedding,
            // To compare at W2 (32 ids), where a scan of the pairs a thread
            // may beat the copy kernel ahead of the embedding.
            ids_in_embedding_max: std::env::var("OPTC_CUDA_IDS_IN_EMBEDDING")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(super::run::IDS_IN_EMBEDDING_MAX),
            embedding_picks: 0,
            early_chains: std::env::var("OPTC_CUDA_EARLY_CHAINS").map_or(true, |v| v != "0"),
            early_chain_launches: 0,
            // +0.1 % at W1 on an H200 (eighteenth session, perf.md).
            early_embedding: std::env::var("OPTC_CUDA_EARLY_EMBEDDING").map_or(true, |v| v != "0"),
            launch_order,
            launch_last_use,
            early_embedding_launches: 0,
            split_counters,
            skinny: SkinnyGemm::from_env(),
            decode_rope: std::env::var("OPTC_CUDA_DECODE_ROPE").is_ok_and(|v| v != "0"),
            l2warm,
            dims_cache: Default::default(),
            attention_paths: AttentionPaths::default(),
            fused_gemv_launches: 0,
            gemv_ring_min_bytes: std::env::var("OPTC_GEMV_RING_MIN_BYTES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(src::GEMV_RING_MIN_BYTES),
            ring_gemv_launches: std::sync::atomic::AtomicU64::new(0),
            pending: Default::default(),
            pinned: Vec::new(),
            retired: Vec::new(),
            collected: Default::default(),
            mega_stack,
            mega: None,
            mega_launches: 0,
            decode8,
        };
        let asked = std::env::var("OPTC_CUDA_MEGA").ok();
        if asked
            .as_deref()
            .map_or(super::mega::MEGA_BY_DEFAULT, |v| v == "1")
        {
            if !p.set_mega(true)? && p.mega_stack.is_none() && asked.is_some() {
                tracing::warn!(
                    graph = %p.graph.name,
                    "OPTC_CUDA_MEGA=1, but the step graph has no decode layer stack the megakernel covers"
                );
            }
        } else if p.mega_stack.is_some() {
            p.summary.mega = Some(match asked {
                Some(v) => format!("off (OPTC_CUDA_MEGA={v})"),
                None => "off (OPTC_CUDA_MEGA=1 turns it on)".into(),
            });
        }
        Ok(p)
    }

    /// Which attention kernels this program's runs have launched.
    pub fn attention_paths(&self) -> AttentionPaths {
        self.attention_paths
    }

    /// How many linear launches ran a fused GEMV (the norm before or the
    /// SwiGLU after done inside it), so tests can check that path ran.
    pub fn fused_gemv_launches(&self) -> u64 {
        self.fused_gemv_launches
    }

    /// How many linear launches ran a ring GEMV.
    pub fn ring_gemv_launches(&self) -> u64 {
        self.ring_gemv_launches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Overrides the smallest weight (bytes) a one-row linear streams
    /// through the ring GEMV (`usize::MAX`: never; 0: always).
    /// Captured graphs are dropped.
    pub fn set_gemv_ring_min_bytes(&mut self, bytes: usize) {
        self.drop_captures();
        self.gemv_ring_min_bytes = bytes;
    }

    /// Times cuBLASLt's first few algorithms for each new skinny GEMM shape
    /// (at most 256 activation rows) and keeps the fastest,
    /// when `on`, as `OPTC_CUDA_GEMM_TUNE=1` does at construction; else
    /// takes the heuristic's first. Shapes chosen so far and captured
    /// graphs are dropped, so each shape is chosen again.
    pub fn set_gemm_tuning(&mut self, on: bool) -> Result<(), CodegenError> {
        self.drop_captures();
        self.gemm
            .set_tuning(on.then_some(&self.gpu.ctx))
            .map_err(node_err(&self.graph.name))
    }

    /// GEMM shapes timed so far, and how many took other than cuBLASLt's
    /// first choice (`set_gemm_tuning`).
    pub fn gemm_tuning(&self) -> GemmTuning {
        self.gemm.tuning()
    }

    /// Overrides `OPTC_CUDA_SKINNY` for this program's linears. Captured
    /// graphs are dropped.
    pub fn set_skinny_gemm(&mut self, mode: SkinnyGemm) {
        self.drop_captures();
        self.skinny = mode;
    }

    /// Overrides `OPTC_CUDA_DECODE_ROPE`: whether decode attention does
    /// the rope + cache write before it. Captured graphs are dropped.
    pub fn set_decode_rope(&mut self, on: bool) {
        self.drop_captures();
        self.decode_rope = on;
    }

    /// Runs one-token decode steps (one sequence, one token) through the
    /// megakernel (`kernels/cuda/mega.cu`: the layer stack and LM head in
    /// one persistent launch) when `on`, compiling it on first use, as
    /// `OPTC_CUDA_MEGA=1` does at construction. Returns whether it will
    /// run: the step graph has a stack it covers and it built and fits
    /// this GPU (`summary().mega` says why not). Captured graphs are
    /// dropped, since they hold the other path's launches.
    pub fn set_mega(&mut self, on: bool) -> Result<bool, CodegenError> {
        self.drop_captures();
        if !on {
            if let Some(m) = &mut self.mega {
                m.on = false;
            }
            if self.mega_stack.is_some() {
                self.summary.mega = Some("off".into());
            }
            return Ok(false);
        }
        let Some(stack) = self.mega_stack.clone() else {
            return Ok(false);
        };
        if self.mega.is_none() {
            match super::mega::Mega::load(&mut self.gpu, stack) {
                Ok(m) => self.mega = Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "the decode megakernel is off");
                    self.summary.mega = Some(format!("off: {e}"));
                    return Ok(false);
                }
            }
        }
        if let Some(m) = &mut self.mega {
            m.on = true;
            m.invalidate();
        }
        self.summary.mega = Some("on".into());
        Ok(true)
    }

    /// Runs that launched the one-token decode megakernel outside a CUDA
    /// graph, plus graph captures that hold it (a replay does not count;
    /// `attention_paths` leaves out every run it took, replays included).
    pub fn mega_launches(&self) -> u64 {
        self.mega_launches
    }

    pub fn summary(&self) -> &CudaSummary {
        &self.summary
    }

    /// Overrides `OPTC_DECODE_WARPS` (4 or 8; anything else is ignored):
    /// the warps of a tensor-core decode attention block. Captured graphs
    /// are dropped.
    pub fn set_decode_warps(&mut self, warps: usize) {
        if warps == 4 || warps == 8 {
            self.drop_captures();
            self.gpu.decode_warps = warps;
        }
    }

    /// Overrides `OPTC_DECODE_CHUNKS` (1 to 1,024): the key chunks each
    /// decode warp takes before the keys are split over more blocks, so
    /// tests can force the split path at short contexts. Captured graphs
    /// are dropped.
    pub fn set_decode_chunks(&mut self, chunks: usize) {
        self.drop_captures();
        self.gpu.decode_chunks = chunks.clamp(1, super::device::MAX_DECODE_CHUNKS);
    }

    /// Turns CUDA graph capture of decode steps on or off (on by default
    /// unless `OPTC_CUDA_GRAPHS=0`).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = on;
        if !on {
            // A submitted run may still use a graph's buffers.
            self.drop_captures();
        }
    }

    /// Drops the captured graphs once the runs in flight are read: a
    /// setting they were captured under changed.
    fn drop_captures(&mut self) {
        self.finish_pending();
        self.captures.clear();
        self.prefill_keys.clear();
        self.prefill_captures_closed = false;
    }

    /// Replays prefill-like steps of up to `max_tokens` tokens a paged
    /// attention from graphs of their exact shape, for the first
    /// `MAX_PREFILL_CAPTURES` shapes (0 turns this off). Captured graphs
    /// are dropped.
    pub fn set_prefill_graphs(&mut self, max_tokens: usize) {
        self.drop_captures();
        self.prefill_graph_tokens = max_tokens;
    }

    /// Prefill shapes captured as graphs, and their replays.
    pub fn prefill_graphs(&self) -> (usize, u64) {
        let replays = self
            .prefill_keys
            .iter()
            .filter_map(|k| self.captures.get(k))
            .map(|s| s.replays()[0] + s.replays()[1])
            .sum();
        (self.prefill_keys.len(), replays)
    }

    /// Gives small step graphs a second copy (the default unless
    /// `OPTC_CUDA_GRAPH_PAIRS=0`), or keeps one. Captured graphs are
    /// dropped.
    pub fn set_graph_pairs(&mut self, on: bool) {
        self.drop_captures();
        self.graph_pairs = on;
    }

    /// Lets the LM head's one-row ring GEMV pick greedy tokens as it
    /// stores the logits (off unless `OPTC_CUDA_PICK_IN_GEMV=1`), or
    /// leaves that to the argmax kernel. Captured graphs are dropped.
    pub fn set_pick_in_gemv(&mut self, on: bool) {
        self.drop_captures();
        self.pick_in_gemv = on;
    }

    /// Samples rows with a small top-k in one kernel from each piece's
    /// first k (on by default), or through the histogram kernels as
    /// other rows are: the two paths check each other in the tests.
    pub fn set_one_pass_sampling(&mut self, on: bool) {
        self.drop_captures();
        self.one_pass_sampling = on;
    }

    /// Asks L2 for the first `mib` MiB of each batched decode linear's
    /// weights beside the kernels before it (`OPTC_CUDA_L2_WARM_MB`,
    /// default `L2_WARM_MIB`), or not (0). Captured graphs are dropped.
    pub fn set_l2_warm_mib(&mut self, mib: usize) -> Result<(), CodegenError> {
        self.drop_captures();
        if mib == 0 {
            self.l2warm = None;
            return Ok(());
        }
        if let Some(w) = self.l2warm.as_mut() {
            w.set_mib(mib);
            return Ok(());
        }
        self.l2warm = L2Warm::new(&mut self.gpu, mib).map_err(node_err(&self.graph.name))?;
        Ok(())
    }

    /// L2 warm launches so far (a graph replay does not count).
    pub fn l2_warms(&self) -> u64 {
        self.l2warm.as_ref().map_or(0, |w| w.launches)
    }

    /// Generated chain launches that worked before their wait (a graph
    /// replay does not count).
    pub fn early_chains(&self) -> u64 {
        self.early_chain_launches
    }

    /// Lets generated chains whose operands are ready before the run work
    /// before their wait (the default unless `OPTC_CUDA_EARLY_CHAINS=0`),
    /// or not. Captured graphs are dropped.
    pub fn set_early_chains(&mut self, on: bool) {
        self.drop_captures();
        self.early_chains = on;
    }

    /// Launches the steps that read only the run's inputs first and lets
    /// an embedding reading picked ids gather before its wait (on unless
    /// `OPTC_CUDA_EARLY_EMBEDDING=0`), or not. Captured graphs are
    /// dropped.
    pub fn set_early_embedding(&mut self, on: bool) {
        self.drop_captures();
        self.early_embedding = on;
    }

    /// Embedding launches that gathered before their wait (a graph replay
    /// does not count).
    pub fn early_embeddings(&self) -> u64 {
        self.early_embedding_launches
    }

    /// Runs, and graph captures, whose embedding read the ids taken from
    /// the previous run's picks itself (`gather_picked_*`; a replay does
    /// not count).
    pub fn embedding_picks(&self) -> u64 {
        self.embedding_picks
    }

    /// Most ids taken from the previous run's picks that the embedding
    /// reads itself (default 8; 0 always copies them into the ids first,
    /// with `ids_from_picks`). Captured graphs are dropped.
    pub fn set_ids_in_embedding(&mut self, max: usize) {
        self.drop_captures();
        self.ids_in_embedding_max = max;
    }

    /// Blocks of the cluster argmax a row (0: the argmax in chunks with
    /// its last block merging, `argmax_part_*`).
    pub fn argmax_cluster_blocks(&self) -> u32 {
        self.argmax_cluster_blocks
    }

    /// Picks greedy tokens with `blocks` blocks of the cluster argmax a
    /// row (1 without clusters; 0 the chunked argmax), where such
    /// clusters fit on this GPU, else with 8 (for more than 8), else with
    /// the chunked argmax, as `OPTC_CUDA_ARGMAX_CLUSTER` does; returns the
    /// number taken. Captured graphs are dropped.
    pub fn set_argmax_cluster(&mut self, blocks: u32) -> u32 {
        self.drop_captures();
        self.argmax_cluster_asked = blocks.min(super::pick::ARGMAX_CLUSTER_MOST);
        self.argmax_cluster_blocks = super::pick::argmax_cluster_fit(
            &self.gpu,
            self.argmax_cluster.values(),
            self.argmax_cluster_asked,
            self.argmax_cluster_threads,
        );
        self.argmax_cluster_blocks
    }

    /// Threads of a cluster argmax block: 512 for `threads` of 512 or
    /// more, else 256 (the default unless `OPTC_CUDA_ARGMAX_THREADS=512`);
    /// returns the number taken. The blocks a row last asked for are
    /// fitted again (`set_argmax_cluster`). Captured graphs are dropped.
    pub fn set_argmax_threads(&mut self, threads: u32) -> u32 {
        self.argmax_cluster_threads = if threads >= 512 { 512 } else { 256 };
        self.set_argmax_cluster(self.argmax_cluster_asked);
        self.argmax_cluster_threads
    }

    /// Threads of a cluster argmax block (`set_argmax_threads`).
    pub fn argmax_cluster_threads(&self) -> u32 {
        self.argmax_cluster_threads
    }

    /// Runs, and graph captures, whose greedy pick the LM head's ring
    /// GEMV made (a replay does not count).
    pub fn gemv_picks(&self) -> u64 {
        self.gemv_picks
    }

    /// Runs, and graph captures, whose rows were all sampled in one pass
    /// (a replay does not count).
    pub fn one_pass_samples(&self) -> u64 {
        self.one_pass_samples
    }

    /// Decode shapes captured as CUDA graphs so far.
    pub fn captured_graphs(&self) -> usize {
        self.decode_sets().count()
    }

    /// Decode graphs captured so far, counting each shape's second copy.
    pub fn graph_copies(&self) -> usize {
        self.decode_sets().map(super::graphs::CaptureSet::len).sum()
    }

    /// The captured decode shapes' graphs (prefill shapes left out).
    fn decode_sets(&self) -> impl Iterator<Item = &super::graphs::CaptureSet> {
        self.captures
            .iter()
            .filter(|(k, _)| !self.prefill_keys.contains(*k))
            .map(|(_, s)| s)
    }

    /// Replays so far of the shapes' first copies and of their second
    /// copies (taken in turn with the first).
    pub fn graph_replays(&self) -> [u64; 2] {
        self.decode_sets().fold([0, 0], |t, s| {
            let r = s.replays();
            [t[0] + r[0], t[1] + r[1]]
        })
    }

    pub fn state_names(&self) -> &[String] {
        &self.state_names
    }

    /// Free and total GPU memory in bytes (for sizing the KV cache).
    pub fn mem_info(&self) -> Result<(usize, usize), CodegenError> {
        self.gpu.mem_info().map_err(node_err(&self.graph.name))
    }

    /// Bytes of state per unit of the symbols in `bindings` — what one KV
    /// block costs, with `NB = 1`.
    pub fn state_bytes(&self, bindings: &Bindings) -> Result<usize, CodegenError> {
        let mut bytes = 0;
        for (i, ty) in self.state_types.iter().enumerate() {
            let shape = ty.shape.eval(bindings).map_err(|message| CodegenError::Input {
                name: self.state_names[i].clone(),
                message,
            })?;
            bytes += ty.dtype.storage_bytes(shape.iter().product());
        }
        Ok(bytes)
    }

    /// Allocates zeroed state for the symbols in `bindings` (e.g. `NB`);
    /// returns the bytes allocated.
    pub fn init_state(&mut self, bindings: &Bindings) -> Result<usize, CodegenError> {
        // A submitted run may still use the state and a graph's buffers.
        self.finish_pending();
        let mut total = 0;
        for i in 0..self.state_types.len() {
            let ty = &self.state_types[i];
            let shape = ty.shape.eval(bindings).map_err(|message| CodegenError::Input {
                name: self.state_names[i].clone(),
                message,
            })?;
            let bytes = ty.dtype.storage_bytes(shape.iter().product());
            // Captured graphs and the megakernel's layer table point at
            // the old state.
            self.drop_captures();
            if let Some(m) = &mut self.mega {
                m.invalidate();
            }
            self.state[i] = None;
            let b = DeviceBox::new(bytes).map_err(|message| CodegenError::Input {
                name: self.state_names[i].clone(),
                message,
            })?;
            self.gpu.zero(b.ptr, bytes).map_err(node_err(&self.graph.name))?;
            total += bytes;
            self.state[i] = Some(b);
        }
        self.gpu.sync().map_err(node_err(&self.graph.name))?;
        Ok(total)
    }

    /// The shape of state `i` as allocated (its leading dim follows from the size).
    pub(super) fn state_shape(&self, i: usize) -> Result<Vec<usize>, CodegenError> {
        let ty = &self.state_types[i];
        let name = &self.state_names[i];
        let b = self.state[i].as_ref().ok_or_else(|| CodegenError::Input {
            name: name.clone(),
            message: "state is not allocated (call init_state)".into(),
        })?;
        crate::lowering::state_shape(name, ty, b.bytes, |e| ty.dtype.storage_bytes(e))
    }

    /// A state buffer as a tensor (for tests and debugging).
    pub fn state_tensor(&self, name: &str) -> Result<Tensor, CodegenError> {
        let i = self
            .state_names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| CodegenError::Input {
                name: name.into(),
                message: "no such state".into(),
            })?;
        let shape = self.state_shape(i)?;
        let ptr = self.state[i].as_ref().map_or(0, |b| b.ptr);
        self.download(ptr, self.state_types[i].dtype, &shape)
            .map_err(node_err(&self.graph.name))
    }

    pub(super) fn download(&self, ptr: u64, dtype: DType, dims: &[usize]) -> Result<Tensor, String> {
        let mut bytes = vec![0u8; dtype.storage_bytes(dims.iter().product())];
        self.gpu.dtoh(ptr, &mut bytes)?;
        Tensor::from_le_bytes(dtype, dims, &bytes).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use optc_ir::ops::{Op, Transpose};
    use optc_ir::{DType, Dim, TensorType};

    use super::{alias_views, inputs_first, moves_only_unit_axes, plan, Exec, Loc};
    use crate::nvrtc::select::Kernel;

    fn transpose_is_view(dims: &[Dim], perm: &[i64]) -> bool {
        let x = TensorType::new(DType::F32, dims.to_vec());
        moves_only_unit_axes(&Op::Transpose(Transpose { perm: perm.to_vec() }), &x)
    }

    #[test]
    fn transposes_that_move_only_unit_axes_are_views() {
        let (c, t) = (Dim::constant, || Dim::sym("T"));
        // The rotary tables' [1, 1, T, r] -> [1, T, 1, r].
        assert!(transpose_is_view(&[c(1), c(1), t(), c(16)], &[0, 2, 1, 3]));
        assert!(transpose_is_view(&[c(1), c(8)], &[1, 0]));
        assert!(transpose_is_view(&[c(1), c(8)], &[-1, 0]));
        // Two axes longer than one swap; a symbol may be longer than one.
        assert!(!transpose_is_view(&[t(), c(4), c(1), c(16)], &[1, 0, 2, 3]));
        assert!(!transpose_is_view(&[c(8), t()], &[1, 0]));
        assert!(!transpose_is_view(&[c(1), t(), c(4)], &[2, 1, 0]));
        // A malformed permutation is not a view (the kernel reports it).
        assert!(!transpose_is_view(&[c(1), c(8)], &[1]));
        assert!(!transpose_is_view(&[c(1), c(8)], &[0, 5]));
    }

    /// `graph`'s plan as `CudaProgram::new` sees it (locs with views
    /// carried over, weights and folded values as weights, owners), and
    /// its launch order with the early embedding.
    fn launch_plan(graph: &str) -> (super::Plan, Vec<Loc>, Vec<usize>, Vec<usize>) {
        let g = optc_ir::parse(graph).unwrap();
        let p = plan(&g, "test").unwrap();
        let mut locs = p.locs.clone();
        for (v, l) in locs.iter_mut().enumerate() {
            if l.is_none() && p.consts.contains(&v) {
                *l = Some(Loc::Weight(0));
            }
        }
        let owner = alias_views(&p.steps, &mut locs);
        let locs: Vec<Loc> = locs.into_iter().map(|l| l.unwrap_or(Loc::Temp)).collect();
        let order = inputs_first(&p.steps, &locs, &owner);
        (p, locs, owner, order)
    }

    /// Runs the pool's bookkeeping over `order` as `run_steps` does
    /// (buffers taken by their producer, given back after their last
    /// reader in `last`): every read must find its buffer taken and not
    /// yet given back. Returns the first read that does not, if any.
    fn first_stale_read(
        p: &super::Plan,
        locs: &[Loc],
        owner: &[usize],
        order: &[usize],
        last: &std::collections::HashMap<usize, usize>,
    ) -> Option<(usize, usize)> {
        let (mut taken, mut back) = (vec![false; locs.len()], vec![false; locs.len()]);
        for &si in order {
            let s = &p.steps[si];
            for &a in s.args.iter().chain(&s.also_reads) {
                let o = owner[a];
                if locs[o] == Loc::Temp && (!taken[o] || back[o]) {
                    return Some((si, a));
                }
            }
            for &o in &s.outs {
                taken[owner[o]] = true;
            }
            for &a in s.args.iter().chain(&s.also_reads) {
                if last.get(&owner[a]) == Some(&si) {
                    back[owner[a]] = true;
                }
            }
        }
        None
    }

    /// A decode step's start as lowering plans it: the embedding, then the
    /// rotary tables from the positions, then the first layer's work on
    /// both. With the early embedding the tables' steps launch first and
    /// the embedding right before the work that reads it; every step
    /// still comes after the steps whose results it reads, and a buffer
    /// goes back to the pool only after its last reader in launch order
    /// (the second graph has a hoisted reader of a table past an unhoisted
    /// one, which the steps' own order would give back too early).
    #[test]
    fn the_steps_that_read_only_inputs_launch_first() {
        let start = "graph g(%ids: i64[T], %positions: i64[T]) -> (%y: f32[T, 8]) {
  weight @emb: f32[32, 8] = \"emb\"
  weight @w: f32[8, 8] = \"w\"
  %0: f32[T, 8] = embedding(@emb, %ids)
  %1: f32[T] = cast(%positions) {to = f32}
  %2: f32[T, 1] = unsqueeze(%1) {axes = [1]}
  %3: f32[T, 1] = cos(%2)
  %4: f32[T, 8] = mul(%0, %3)
  %5: f32[T, 8] = linear(%4, @w)
  return %5
}";
        let late_reader = "graph g(%ids: i64[T], %positions: i64[T]) -> (%y: f32[T, 8]) {
  weight @emb: f32[32, 8] = \"emb\"
  weight @w9: f32[8, 9] = \"w9\"
  weight @w2: f32[8, 2] = \"w2\"
  %0: f32[T, 8] = embedding(@emb, %ids)
  %1: f32[T] = cast(%positions) {to = f32}
  %2: f32[T, 1] = unsqueeze(%1) {axes = [1]}
  %3: f32[T, 9] = concat(%0, %2) {axis = 1}
  %4: f32[T, 8] = linear(%3, @w9)
  %5: f32[T, 2] = concat(%2, %2) {axis = 1}
  %6: f32[T, 8] = linear(%5, @w2)
  %7: f32[T, 8] = add(%4, %6)
  return %7
}";
        for (graph, stale_in_step_order) in [(start, false), (late_reader, true)] {
            let (p, locs, owner, order) = launch_plan(graph);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..p.steps.len()).collect::<Vec<_>>(), "a permutation");
            let is_embedding = |s: &super::Step| matches!(s.exec, Exec::Kernel(Kernel::Embedding, _));
            let reads_positions = |s: &super::Step| {
                !matches!(s.exec, Exec::View)
                    && s.args
                        .iter()
                        .any(|&a| matches!(locs[owner[a]], Loc::Input(i) if p.inputs[i].0 == "positions"))
            };
            let at = |pred: &dyn Fn(&super::Step) -> bool| order.iter().position(|&si| pred(&p.steps[si]));
            let planned = |pred: &dyn Fn(&super::Step) -> bool| p.steps.iter().position(pred);
            assert!(
                planned(&reads_positions) > planned(&is_embedding),
                "the plan has the embedding first"
            );
            assert!(
                at(&reads_positions) < at(&is_embedding),
                "the tables first: {order:?}"
            );
            // Every step after the producers of what it reads, and every
            // buffer given back after its last reader in launch order.
            let outputs: Vec<usize> = Vec::new();
            let last = super::last_readers(&p.steps, &owner, order.iter().copied(), &outputs);
            assert_eq!(
                first_stale_read(&p, &locs, &owner, &order, &last),
                None,
                "{order:?}"
            );
            // The steps' own order's release points would not do here.
            let by_index = super::last_readers(&p.steps, &owner, 0..p.steps.len(), &outputs);
            let stale = first_stale_read(&p, &locs, &owner, &order, &by_index);
            assert_eq!(stale.is_some(), stale_in_step_order, "{order:?}: {stale:?}");
        }
        // At a decode step's start the embedding is the last step before
        // the one that reads it.
        let (p, _, _, order) = launch_plan(start);
        let embedding = order
            .iter()
            .position(|&si| matches!(p.steps[si].exec, Exec::Kernel(Kernel::Embedding, _)))
            .unwrap();
        let out = p.steps[order[embedding]].outs[0];
        let reader = order
            .iter()
            .position(|&si| p.steps[si].args.contains(&out))
            .unwrap();
        assert_eq!(reader, embedding + 1, "{order:?}");
    }
}
