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
use std::time::Instant;

use cudarc::driver::{CudaFunction, DeviceRepr, LaunchConfig, PushKernelArg};
use optc_ir::dim::normalize_axis;
use optc_ir::ops::{BinaryKind, EvalCx, GeluApprox, Op, UnaryKind};
use optc_ir::{bind_symbols_from_shapes, verify, Bindings, DType, Graph, NodeKind, Tensor, TensorType, Value, WeightStore};
use optc_kernels::cpu::attention::{check_paged_meta, PagedMeta, PagedShape};
use optc_kernels::cuda as src;

use super::compile::{self, CompileReport};
use super::device::{DeviceBox, Gpu, Pool};
use super::gemm::{Gemm, GemmShape};
use crate::CodegenError;

const MAX_RANK: usize = 6;

/// Mirrors `Strided` in `kernels/cuda/common.cuh`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Strided {
    rank: i32,
    dims: [i64; MAX_RANK],
    src: [i64; MAX_RANK],
    dst: [i64; MAX_RANK],
}

unsafe impl DeviceRepr for Strided {}

fn contiguous(d: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1] as i64;
    }
    s
}

/// Strides of `from` (right-aligned) read over `to`, 0 where it broadcasts.
fn broadcast_strides(from: &[usize], to: &[usize]) -> Vec<i64> {
    let cs = contiguous(from);
    let off = to.len() - from.len();
    (0..to.len())
        .map(|i| {
            if i < off || from[i - off] == 1 {
                0
            } else {
                cs[i - off]
            }
        })
        .collect()
}

fn strided(dims: &[usize], src: &[i64], dst: &[i64]) -> Strided {
    let mut s = Strided::default();
    if dims.is_empty() {
        s.rank = 1;
        s.dims[0] = 1;
        return s;
    }
    s.rank = dims.len() as i32;
    for i in 0..dims.len() {
        s.dims[i] = dims[i] as i64;
        s.src[i] = src[i];
        s.dst[i] = dst[i];
    }
    s
}

/// Where a value lives.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Loc {
    /// A graph input, in the per-run input arena.
    Input(usize),
    Weight(usize),
    /// State the program owns across runs (a KV cache).
    State(usize),
    /// A pool buffer, from its op until its last reader.
    Temp,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kernel {
    Linear,
    MatMul,
    RmsNorm,
    AddRmsNorm,
    LayerNorm,
    Rope,
    SwiGlu,
    Gelu,
    Unary,
    Binary,
    Softmax,
    Cast,
    Transpose,
    Split,
    Slice,
    Concat,
    Expand,
    IndexSelect,
    Embedding,
    PagedAttention,
}

impl Kernel {
    fn name(self) -> &'static str {
        match self {
            Kernel::Linear => "linear (cuBLASLt)",
            Kernel::MatMul => "matmul (cuBLASLt)",
            Kernel::RmsNorm => "rms_norm",
            Kernel::AddRmsNorm => "add_rms_norm",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Rope => "rope",
            Kernel::SwiGlu => "swiglu",
            Kernel::Gelu => "gelu",
            Kernel::Unary => "unary",
            Kernel::Binary => "binary",
            Kernel::Softmax => "softmax",
            Kernel::Cast => "cast",
            Kernel::Transpose => "transpose",
            Kernel::Split => "split",
            Kernel::Slice => "slice",
            Kernel::Concat => "concat",
            Kernel::Expand => "expand",
            Kernel::IndexSelect => "index_select",
            Kernel::Embedding => "embedding",
            Kernel::PagedAttention => "paged_attention",
        }
    }
}

enum Exec {
    View,
    Kernel(Kernel, Vec<CudaFunction>),
    Host,
}

struct Step {
    node: String,
    op: Op,
    args: Vec<usize>,
    outs: Vec<usize>,
    exec: Exec,
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
    pub compile: Option<CompileReport>,
    /// The tensor-core prefill kernel: "on", or why it is off.
    pub prefill_mma: Option<String>,
}

/// A float dtype kernels take, by its suffix in kernel names.
fn float_name(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 => Some("f32"),
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        _ => None,
    }
}

/// Raw-word suffix for moving elements of `d` (`None` for sub-byte types).
fn word_name(d: DType) -> Option<&'static str> {
    if d.bits() < 8 {
        return None;
    }
    match d.storage_bytes(1) {
        1 => Some("b1"),
        2 => Some("b2"),
        4 => Some("b4"),
        8 => Some("b8"),
        _ => None,
    }
}

fn last_axis(axis: i64, t: &TensorType) -> bool {
    normalize_axis(axis, t.rank()).ok() == Some(t.rank().saturating_sub(1))
}

/// The kernel for `op`, if one covers these operand and result types.
fn choose(op: &Op, args: &[&TensorType], outs: &[TensorType]) -> Option<Kernel> {
    let out = outs.first()?;
    let fl = float_name(out.dtype).is_some();
    let same = args.iter().all(|t| t.dtype == out.dtype);
    let ranked = outs.iter().all(|t| t.rank() <= MAX_RANK) && args.iter().all(|t| t.rank() <= MAX_RANK);
    let words = word_name(out.dtype).is_some();
    let k = match op {
        Op::Linear(_) if fl && same && args[1].rank() == 2 && args[0].rank() >= 1 => Kernel::Linear,
        Op::MatMul(_) if fl && same && args[0].rank() >= 2 && args[1].rank() >= 2 => {
            let (a, b) = (args[0].shape.dims(), args[1].shape.dims());
            let batched = a.len() == b.len() && a[..a.len() - 2] == b[..b.len() - 2];
            if b.len() == 2 || batched {
                Kernel::MatMul
            } else {
                return None;
            }
        }
        Op::RmsNorm(o) if fl && same && last_axis(o.axis, args[0]) => Kernel::RmsNorm,
        Op::AddRmsNorm(o) if fl && same && last_axis(o.axis, args[0]) && args[0] == args[1] => Kernel::AddRmsNorm,
        Op::LayerNorm(o) if fl && same && last_axis(o.axis, args[0]) => Kernel::LayerNorm,
        Op::Rope(_) if fl && same && ranked && args[1].rank() >= 1 && args[1].rank() <= args[0].rank() => Kernel::Rope,
        Op::SwiGlu(_) if fl && same && args[0] == args[1] => Kernel::SwiGlu,
        Op::Gelu(_) if fl && same => Kernel::Gelu,
        Op::Unary(_) if fl && same => Kernel::Unary,
        Op::Binary(_) if fl && same && ranked => Kernel::Binary,
        Op::Softmax(s) if fl && same && last_axis(s.axis, args[0]) => Kernel::Softmax,
        Op::Cast(_)
            if fl && (float_name(args[0].dtype).is_some() || args[0].dtype == DType::I64) =>
        {
            Kernel::Cast
        }
        Op::Transpose(_) if words && same && ranked => Kernel::Transpose,
        Op::Split(_) if words && same && ranked => Kernel::Split,
        Op::Slice(s) if words && same && ranked && s.step > 0 => Kernel::Slice,
        Op::Concat(_) if words && same && ranked => Kernel::Concat,
        Op::Expand(_) if words && same && ranked => Kernel::Expand,
        Op::IndexSelect(_) if words && args[0].dtype == out.dtype && args[1].dtype == DType::I64 => Kernel::IndexSelect,
        Op::Embedding(_) if words && args[0].dtype == out.dtype && args[1].dtype == DType::I64 => Kernel::Embedding,
        Op::PagedAttention(_)
            if fl
                && args[..5].iter().all(|t| t.dtype == out.dtype)
                && args[0].shape.dims().last() == args[2].shape.dims().last() =>
        {
            Kernel::PagedAttention
        }
        _ => return None,
    };
    Some(k)
}

/// The kernel functions a step launches.
fn function_names(k: Kernel, args: &[&TensorType], out: &TensorType) -> Vec<String> {
    let f = float_name(out.dtype).unwrap_or("f32");
    let w = word_name(out.dtype).unwrap_or("b4");
    match k {
        Kernel::Linear | Kernel::MatMul => vec![],
        Kernel::RmsNorm => vec![format!("rms_norm_{f}")],
        Kernel::AddRmsNorm => vec![format!("add_rms_norm_{f}")],
        Kernel::LayerNorm => vec![format!("layer_norm_{f}")],
        Kernel::Rope => vec![format!("rope_{f}")],
        Kernel::SwiGlu => vec![format!("swiglu_{f}")],
        Kernel::Gelu => vec![format!("gelu_{f}")],
        Kernel::Unary => vec![format!("unary_{f}")],
        Kernel::Binary => vec![format!("binary_{f}")],
        Kernel::Softmax => vec![format!("softmax_{f}")],
        Kernel::Cast => {
            let from = float_name(args[0].dtype).unwrap_or("i64");
            vec![format!("cast_{from}_{f}")]
        }
        Kernel::Transpose | Kernel::Split | Kernel::Slice | Kernel::Concat | Kernel::Expand => {
            vec![format!("copy_{w}")]
        }
        Kernel::IndexSelect | Kernel::Embedding => vec![format!("gather_{w}")],
        Kernel::PagedAttention => {
            let d = args[0].shape.dims().last().and_then(|d| d.as_const()).unwrap_or(0);
            vec![
                format!("cache_write_{f}"),
                format!("paged_attention_{f}_d{d}"),
                format!("attention_combine_{f}"),
            ]
        }
    }
}

/// Is this op evaluated at lowering? Only when every operand is constant
/// and the result's shape is known.
fn foldable(op: &Op, outs: &[TensorType]) -> bool {
    !matches!(op, Op::PagedAttention(_)) && outs.iter().all(|t| t.shape.as_consts().is_some())
}

macro_rules! launch {
    ($gpu:expr, $f:expr, $cfg:expr; $($name:ident = $val:expr),* $(,)?) => {{
        // The config first: argument names may shadow what it reads.
        let launch_cfg = $cfg;
        $( let $name = $val; )*
        let mut b = $gpu.stream.launch_builder($f);
        $( b.arg(&$name); )*
        unsafe { b.launch(launch_cfg) }.map(|_| ()).map_err(|e| format!("kernel launch: {e}"))
    }};
}

fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// Per-run metadata of one paged-attention step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct AttentionRun {
    tiles_offset: usize,
    tiles: usize,
    nsplit: usize,
    /// Prefill on the tensor cores (the WMMA kernel).
    mma: bool,
}

/// A graph lowered to CUDA kernels and cuBLASLt GEMMs, with its weights on
/// the GPU and its state (KV caches) allocated there.
pub struct CudaProgram {
    gpu: Gpu,
    gemm: Gemm,
    pool: Pool,
    graph: Graph,
    types: Vec<TensorType>,
    locs: Vec<Loc>,
    /// The value whose buffer each value uses (itself unless a view).
    owner: Vec<usize>,
    /// Last step reading each owner (absent: never read; MAX: an output).
    last_use: HashMap<usize, usize>,
    steps: Vec<Step>,
    inputs: Vec<(String, usize)>,
    outputs: Vec<(String, usize)>,
    state_names: Vec<String>,
    state_types: Vec<TensorType>,
    state: Vec<Option<DeviceBox>>,
    weights: Vec<DeviceBox>,
    arena: Option<DeviceBox>,
    /// `argmax_{dtype}` kernels for greedy sampling.
    argmax: HashMap<&'static str, CudaFunction>,
    summary: CudaSummary,
    /// With `OPTC_CUDA_PROFILE=1`: GPU time per kernel kind (CUDA events
    /// around every step) and host time per phase, reported on drop.
    profile: Option<Profile>,
    /// Decode steps (one token per sequence) replay a CUDA graph per
    /// shape; `OPTC_CUDA_GRAPHS=0` turns this off.
    graphs: bool,
    captures: HashMap<CaptureKey, Captured>,
}

/// What a captured graph depends on: every input's shape and the
/// attention tiling (from the metadata values), and whether it ends in
/// greedy sampling.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CaptureKey {
    input_dims: Vec<Vec<usize>>,
    attention: Vec<(usize, AttentionRun)>,
    arena_bytes: usize,
    greedy: Option<usize>,
}

/// A decode step captured as a CUDA graph, with the buffers it owns: its
/// input arena (filled before each replay) and its pool of activations.
struct Captured {
    graph: cudarc::driver::CudaGraph,
    _pool: Pool,
    arena: DeviceBox,
    ptr: Vec<u64>,
    argmax: u64,
}

const MAX_CAPTURES: usize = 64;

/// What [`CudaProgram::execute`] leaves for the caller.
struct Executed {
    dims: Vec<Vec<usize>>,
    ptr: Vec<u64>,
    /// The buffers belong to a captured graph (do not release them).
    captured: bool,
    /// Greedy results (tokens, then logprobs) already computed on the GPU.
    argmax: Option<u64>,
}

#[derive(Default)]
struct Profile {
    /// kind -> (calls, GPU ms)
    gpu: BTreeMap<String, (usize, f64)>,
    /// phase -> host ms
    host: BTreeMap<&'static str, f64>,
    runs: usize,
}

impl Profile {
    fn report(&self) -> String {
        let total: f64 = self.gpu.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = self.gpu.iter().collect();
        rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
        let mut s = format!("nvrtc profile over {} runs: {total:.1} ms of GPU time in steps\n", self.runs);
        for (k, (n, ms)) in rows {
            s.push_str(&format!(
                "  {k:<28} {n:>8} calls {ms:>10.2} ms {:>5.1}%\n",
                100.0 * ms / total.max(1e-9)
            ));
        }
        for (k, ms) in &self.host {
            s.push_str(&format!("  host {k:<23} {ms:>10.2} ms\n"));
        }
        s
    }
}

impl Drop for CudaProgram {
    fn drop(&mut self) {
        if let Some(p) = &self.profile {
            eprint!("{}", p.report());
        }
    }
}

fn node_err(node: &str) -> impl Fn(String) -> CodegenError + '_ {
    move |message| CodegenError::Node {
        node: node.to_string(),
        message,
    }
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
        verify(g)?;
        let names = g.value_names();
        let order = g.topo_order().map_err(|n| CodegenError::Node {
            node: g.describe(n),
            message: "the graph has a cycle".into(),
        })?;
        let mut vid: HashMap<Value, usize> = HashMap::new();
        let mut types = Vec::new();
        for &id in &order {
            for (i, t) in g.node(id).outputs.iter().enumerate() {
                vid.insert(
                    Value {
                        node: id,
                        index: i as u32,
                    },
                    types.len(),
                );
                types.push(t.clone());
            }
        }
        let out_names: HashMap<&str, &TensorType> = g.outputs().iter().map(|o| (o.name.as_str(), &o.ty)).collect();
        let mut locs: Vec<Option<Loc>> = vec![None; types.len()];
        let mut inputs = Vec::new();
        let mut state_names = Vec::new();
        let mut state_types = Vec::new();
        // Constant values (weights and folded ops) by value id.
        let mut consts: HashSet<usize> = HashSet::new();
        let mut steps = Vec::new();
        let mut summary = CudaSummary {
            device: gpu.name.clone(),
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
                    let describe = names
                        .get(&Value::of(id))
                        .map(|n| {
                            format!(
                                "{n} = {}{}",
                                op.name(),
                                node.loc.as_ref().map(|l| format!(" ({l})")).unwrap_or_default()
                            )
                        })
                        .unwrap_or_else(|| g.describe(id));
                    if args.iter().all(|a| consts.contains(a)) && foldable(op, &node.outputs) {
                        consts.extend(outs.iter().copied());
                        steps.push(Step {
                            node: describe,
                            op: op.clone(),
                            args,
                            outs,
                            exec: Exec::Host,
                        });
                        summary.folded += 1;
                        continue;
                    }
                    let arg_types: Vec<&TensorType> = args.iter().map(|&a| &types[a]).collect();
                    let exec = if matches!(op, Op::Reshape(_) | Op::Unsqueeze(_) | Op::Squeeze(_)) {
                        summary.views += 1;
                        Exec::View
                    } else if let Some(k) = choose(op, &arg_types, &node.outputs) {
                        *summary.kernels.entry(k.name().to_string()).or_insert(0) += 1;
                        let fns = function_names(k, &arg_types, &node.outputs[0]);
                        if k == Kernel::PagedAttention {
                            let d = fns[1].rsplit("_d").next().and_then(|d| d.parse::<usize>().ok()).unwrap_or(0);
                            let inst = src::attention_instance(float_name(node.outputs[0].dtype).unwrap_or("f32"), d);
                            if d == 0 {
                                return Err(CodegenError::Node {
                                    node: describe,
                                    message: "paged_attention needs a constant head dim".into(),
                                });
                            }
                            if !instances.contains(&inst) {
                                instances.push(inst);
                            }
                            let f = float_name(node.outputs[0].dtype).unwrap_or("f32");
                            if src::prefill_mma_supported(f, d) {
                                let i = src::prefill_mma_instance(f, d);
                                if !mma_instances.contains(&i) {
                                    mma_instances.push(i);
                                }
                            }
                            // The caches are updated in place.
                            for (o, a) in [(1, 3), (2, 4)] {
                                match locs[args[a]] {
                                    Some(Loc::State(s)) => locs[outs[o]] = Some(Loc::State(s)),
                                    _ => {
                                        return Err(CodegenError::Node {
                                            node: describe,
                                            message: "the KV caches must be graph inputs that are also outputs (state)"
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
                    steps.push(Step {
                        node: describe,
                        op: op.clone(),
                        args,
                        outs,
                        exec,
                    });
                }
            }
        }
        // Compile (or load) the kernels and resolve each step's functions.
        let (ptx, report) = compile::compile(&compile::source(&instances), gpu.arch).map_err(&gerr)?;
        tracing::info!(cache_hit = report.cache_hit, ms = report.millis, "nvrtc kernels ready");
        summary.compile = Some(report);
        gpu.load(ptx).map_err(&gerr)?;
        // The tensor-core prefill is optional: without it, the scalar
        // kernel serves prefill too.
        let mut mma = false;
        if !mma_instances.is_empty() && std::env::var("OPTC_PREFILL_MMA").map_or(true, |v| v != "0") {
            match compile::compile(&compile::mma_source(&mma_instances), gpu.arch).and_then(|(p, _)| gpu.load_extra(p)) {
                Ok(()) => mma = true,
                Err(e) => {
                    tracing::warn!(error = %e, "the WMMA prefill kernel did not build; prefill uses the scalar kernel");
                    summary.prefill_mma = Some(format!("off: {e}"));
                }
            }
        }
        if mma {
            summary.prefill_mma = Some("on".into());
        }
        for s in &mut steps {
            if let Exec::Kernel(k, fns) = &mut s.exec {
                let arg_types: Vec<&TensorType> = s.args.iter().map(|&a| &types[a]).collect();
                for name in function_names(*k, &arg_types, &types[s.outs[0]]) {
                    fns.push(gpu.function(&name).map_err(node_err(&s.node))?);
                }
                if *k == Kernel::PagedAttention {
                    let d = arg_types[0].shape.dims().last().and_then(|d| d.as_const()).unwrap_or(0) as usize;
                    let smem = src::attention_smem_bytes(d);
                    // Always: the static shared memory counts against the
                    // same 48 KiB default.
                    {
                        fns[1]
                            .set_attribute(
                                cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                smem as i32,
                            )
                            .map_err(|e| CodegenError::Node {
                                node: s.node.clone(),
                                message: format!("head dim {d} needs {smem} bytes of shared memory: {e}"),
                            })?;
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
        let mut argmax = HashMap::new();
        for d in ["f32", "bf16", "f16"] {
            argmax.insert(d, gpu.function(&format!("argmax_{d}")).map_err(&gerr)?);
        }
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
            let t = weights_get(store, name, key, &types[v])?;
            host.insert(v, t);
            Ok(())
        };
        let total: usize = read_on_device
            .iter()
            .map(|&v| {
                types[v]
                    .dtype
                    .storage_bytes(types[v].shape.as_consts().map_or(0, |d| d.iter().product::<i64>() as usize))
            })
            .sum();
        let mut weights = Vec::new();
        let mut done = 0usize;
        let mut upload = |v: usize, t: &Tensor, weights: &mut Vec<DeviceBox>, locs: &mut Vec<Option<Loc>>| -> Result<(), CodegenError> {
            let bytes = t.to_le_bytes();
            let b = DeviceBox::new(bytes.len()).map_err(&gerr)?;
            gpu.htod(b.ptr, &bytes).map_err(&gerr)?;
            done += bytes.len();
            progress(done, total);
            locs[v] = Some(Loc::Weight(weights.len()));
            weights.push(b);
            Ok(())
        };
        let mut kept = Vec::new();
        for s in steps.drain(..) {
            if !s.outs.iter().all(|o| consts.contains(o)) {
                kept.push(s);
                continue;
            }
            for &a in &s.args {
                if weight_node.contains_key(&a) {
                    fetch(a, &mut host)?;
                }
            }
            let refs: Vec<&Tensor> = s.args.iter().map(|a| &host[a]).collect();
            let res = s
                .op
                .eval(&refs, &EvalCx { bindings: &Bindings::new() })
                .map_err(node_err(&s.node))?;
            for (&o, t) in s.outs.iter().zip(res) {
                host.insert(o, t);
            }
        }
        let mut steps = kept;
        let mut ups: Vec<usize> = read_on_device.iter().copied().collect();
        ups.sort_unstable();
        for v in ups {
            if weight_node.contains_key(&v) {
                fetch(v, &mut host)?;
            }
            let t = host.remove(&v).ok_or_else(|| CodegenError::Node {
                node: g.name.clone(),
                message: format!("constant value {v} was not evaluated (a lowering bug)"),
            })?;
            upload(v, &t, &mut weights, &mut locs)?;
        }
        drop(host);
        summary.weight_bytes = weights.iter().map(|w| w.bytes).sum();
        // Buffer owners and liveness.
        let mut owner: Vec<usize> = (0..types.len()).collect();
        for s in &steps {
            if let Exec::View = s.exec {
                owner[s.outs[0]] = owner[s.args[0]];
                locs[s.outs[0]] = locs[s.args[0]];
            }
        }
        let mut last_use: HashMap<usize, usize> = HashMap::new();
        for (si, s) in steps.iter().enumerate() {
            for &a in &s.args {
                last_use.insert(owner[a], si);
            }
        }
        for o in g.outputs() {
            last_use.insert(owner[vid[&o.value]], usize::MAX);
        }
        let locs: Vec<Loc> = locs.into_iter().map(|l| l.unwrap_or(Loc::Temp)).collect();
        for s in &mut steps {
            if let Exec::View = s.exec {
                continue;
            }
            for &o in &s.outs {
                if locs[o] != Loc::Temp && !matches!(locs[o], Loc::State(_)) {
                    return Err(gerr(format!("{}: result placed outside the pool (a lowering bug)", s.node)));
                }
            }
        }
        let outputs = g
            .outputs()
            .iter()
            .filter(|o| !state_names.contains(&o.name))
            .map(|o| (o.name.clone(), vid[&o.value]))
            .collect();
        let gemm = Gemm::new(gpu.arch.0).map_err(&gerr)?;
        Ok(CudaProgram {
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
            summary,
            profile: std::env::var("OPTC_CUDA_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(Profile::default),
            graphs: std::env::var("OPTC_CUDA_GRAPHS").map_or(true, |v| v != "0"),
            captures: HashMap::new(),
        })
    }

    pub fn summary(&self) -> &CudaSummary {
        &self.summary
    }

    /// Turns CUDA graph capture of decode steps on or off (on by default
    /// unless `OPTC_CUDA_GRAPHS=0`).
    pub fn set_cuda_graphs(&mut self, on: bool) {
        self.graphs = on;
        if !on {
            self.captures.clear();
        }
    }

    /// Decode shapes captured as CUDA graphs so far.
    pub fn captured_graphs(&self) -> usize {
        self.captures.len()
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
        let mut total = 0;
        for i in 0..self.state_types.len() {
            let ty = &self.state_types[i];
            let shape = ty.shape.eval(bindings).map_err(|message| CodegenError::Input {
                name: self.state_names[i].clone(),
                message,
            })?;
            let bytes = ty.dtype.storage_bytes(shape.iter().product());
            // Captured graphs point at the old state.
            self.captures.clear();
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
    fn state_shape(&self, i: usize) -> Result<Vec<usize>, CodegenError> {
        let ty = &self.state_types[i];
        let name = &self.state_names[i];
        let b = self.state[i].as_ref().ok_or_else(|| CodegenError::Input {
            name: name.clone(),
            message: "state is not allocated (call init_state)".into(),
        })?;
        let rest: Option<Vec<usize>> = ty.shape.dims()[1..]
            .iter()
            .map(|d| d.as_const().map(|c| c as usize))
            .collect();
        let rest = rest.ok_or_else(|| CodegenError::Input {
            name: name.clone(),
            message: format!("state {ty} may only have a symbolic leading dim"),
        })?;
        let inner = ty.dtype.storage_bytes(rest.iter().product());
        let mut shape = vec![b.bytes.checked_div(inner).unwrap_or(0)];
        shape.extend(rest);
        Ok(shape)
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

    fn download(&self, ptr: u64, dtype: DType, dims: &[usize]) -> Result<Tensor, String> {
        let mut bytes = vec![0u8; dtype.storage_bytes(dims.iter().product())];
        self.gpu.dtoh(ptr, &mut bytes)?;
        Tensor::from_le_bytes(dtype, dims, &bytes).map_err(|e| e.to_string())
    }

    /// Runs the program on the non-state inputs; returns the non-state
    /// outputs by name. State persists on the GPU, updated in place.
    pub fn run(&mut self, inputs: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Tensor>, CodegenError> {
        let ex = self.execute(inputs, None)?;
        let (dims, mut ptr) = (ex.dims, ex.ptr);
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

    /// Runs the program and returns, for each row of the 2-D float output
    /// `output` (logits), the index of its largest value and that value's
    /// log-softmax: greedy sampling without copying the rows back.
    pub fn run_greedy(&mut self, inputs: &BTreeMap<String, Tensor>, output: &str) -> Result<Vec<(u32, f32)>, CodegenError> {
        let v = self
            .outputs
            .iter()
            .find(|(n, _)| n == output)
            .map(|(_, v)| *v)
            .ok_or_else(|| CodegenError::Input {
                name: output.into(),
                message: "no such output".into(),
            })?;
        let f = float_name(self.types[v].dtype)
            .filter(|_| self.types[v].rank() == 2)
            .and_then(|n| self.argmax.get(n).cloned())
            .ok_or_else(|| CodegenError::Input {
                name: output.into(),
                message: format!("greedy sampling needs a 2-D float output, not {}", self.types[v]),
            })?;
        let ex = self.execute(inputs, Some((v, f.clone())))?;
        let (dims, mut ptr) = (ex.dims, ex.ptr);
        let rows = dims[v][0];
        let r = match ex.argmax {
            Some(buf) => self.read_argmax(buf, rows),
            None => self.argmax_rows(&f, ptr[v], &dims[v]),
        };
        if !ex.captured {
            self.release_outputs(&mut ptr);
        }
        r.map_err(node_err(&self.graph.name))
    }

    /// Launches the argmax over `dims[0]` rows at `x` into a pool buffer.
    fn launch_argmax(&mut self, f: &CudaFunction, x: u64, dims: &[usize]) -> Result<u64, String> {
        let (rows, cols) = (dims[0], dims[1]);
        let buf = self.pool.alloc(rows.max(1) * 8)?;
        let gpu = &self.gpu;
        if rows > 0 {
            launch!(gpu, f, cfg((rows as u32, 1, 1), 256, 0);
                x = x, tok = buf, lp = buf + rows as u64 * 4, c = cols as i32)?;
        }
        Ok(buf)
    }

    fn read_argmax(&self, buf: u64, rows: usize) -> Result<Vec<(u32, f32)>, String> {
        let mut bytes = vec![0u8; rows * 8];
        self.gpu.dtoh(buf, &mut bytes)?;
        let (t, l) = bytes.split_at(rows * 4);
        Ok(t.chunks_exact(4)
            .zip(l.chunks_exact(4))
            .map(|(t, l)| {
                (
                    u32::from_le_bytes([t[0], t[1], t[2], t[3]]),
                    f32::from_le_bytes([l[0], l[1], l[2], l[3]]),
                )
            })
            .collect())
    }

    fn argmax_rows(&mut self, f: &CudaFunction, x: u64, dims: &[usize]) -> Result<Vec<(u32, f32)>, String> {
        let rows = dims[0];
        if rows == 0 {
            return Ok(Vec::new());
        }
        let buf = self.launch_argmax(f, x, dims)?;
        let r = self.read_argmax(buf, rows);
        self.pool.release(buf);
        r
    }

    fn release_outputs(&mut self, ptr: &mut [u64]) {
        for (_, v) in &self.outputs {
            let o = self.owner[*v];
            if self.locs[o] == Loc::Temp && ptr[o] != 0 {
                self.pool.release(ptr[o]);
                ptr[o] = 0;
            }
        }
    }

    /// Everything up to the outputs: checks, the input copy, every step.
    fn execute(
        &mut self,
        inputs: &BTreeMap<String, Tensor>,
        greedy: Option<(usize, CudaFunction)>,
    ) -> Result<Executed, CodegenError> {
        let _span = tracing::debug_span!("cuda_run", graph = %self.graph.name).entered();
        let t_start = Instant::now();
        self.gpu.ctx.bind_to_thread().map_err(|e| CodegenError::Node {
            node: self.graph.name.clone(),
            message: e.to_string(),
        })?;
        let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (name, v) in &self.inputs {
            let t = inputs.get(name).ok_or_else(|| CodegenError::Input {
                name: name.clone(),
                message: "missing".into(),
            })?;
            let ty = &self.types[*v];
            if t.dtype() != ty.dtype || t.rank() != ty.rank() {
                return Err(CodegenError::Input {
                    name: name.clone(),
                    message: format!("expected {ty}, got {}{:?}", t.dtype(), t.shape()),
                });
            }
            shapes.insert(name.clone(), t.shape().to_vec());
        }
        if let Some(extra) = inputs.keys().find(|k| !self.inputs.iter().any(|(n, _)| n == *k)) {
            return Err(CodegenError::Input {
                name: extra.clone(),
                message: "the graph has no such input (or it is state the program owns)".into(),
            });
        }
        for i in 0..self.state_names.len() {
            shapes.insert(self.state_names[i].clone(), self.state_shape(i)?);
        }
        let bindings = bind_symbols_from_shapes(&self.graph, &shapes).map_err(|e| CodegenError::Input {
            name: "(symbols)".into(),
            message: e.to_string(),
        })?;
        let dims: Vec<Vec<usize>> = self
            .types
            .iter()
            .map(|t| t.shape.eval(&bindings))
            .collect::<Result<_, _>>()
            .map_err(node_err(&self.graph.name))?;
        for (name, v) in &self.inputs {
            if dims[*v] != inputs[name].shape() {
                return Err(CodegenError::Input {
                    name: name.clone(),
                    message: format!("expected {} = {:?}, got {:?}", self.types[*v], dims[*v], inputs[name].shape()),
                });
            }
        }
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
                    let (positions, seq_starts, context_lens, block_tables, slot_mapping) =
                        (meta_of(a[5])?, meta_of(a[6])?, meta_of(a[7])?, meta_of(a[8])?, meta_of(a[9])?);
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
                            message: format!("{group} query heads per KV head exceed the kernel's {rows} rows"),
                        });
                    }
                    let per_tile = (rows / group).max(1);
                    let mut tiles: Vec<i32> = Vec::new();
                    let mut max_chunks = 1usize;
                    for q in 0..context_lens.len() {
                        let (b, e) = (seq_starts[q] as usize, seq_starts[q + 1] as usize);
                        let mut t = b;
                        while t < e {
                            let n = per_tile.min(e - t);
                            tiles.extend([q as i32, t as i32, n as i32]);
                            let hi = positions[t..t + n].iter().copied().max().unwrap_or(0) as usize;
                            max_chunks = max_chunks.max(hi / 32 + 1);
                            t += n;
                        }
                    }
                    let ntiles = tiles.len() / 3;
                    let blocks = ntiles * shape.kv_heads;
                    let target = 2 * self.gpu.sms as usize;
                    let nsplit = if blocks == 0 || blocks >= target {
                        1
                    } else {
                        // Powers of two: fewer distinct shapes for CUDA graphs.
                        target.div_ceil(blocks).min(max_chunks.next_power_of_two()).clamp(1, 32)
                    };
                    let off = arena.len();
                    for t in &tiles {
                        arena.extend_from_slice(&t.to_le_bytes());
                    }
                    arena.resize(arena.len().div_ceil(256) * 256, 0);
                    let has_mma = matches!(&s.exec, Exec::Kernel(_, fns) if fns.len() > 3);
                    attn.insert(
                        si,
                        AttentionRun {
                            tiles_offset: off,
                            tiles: ntiles,
                            nsplit,
                            // Prefill-like steps: two or more tokens per tile.
                            mma: has_mma && nsplit == 1 && shape.tokens >= 2 * ntiles,
                        },
                    );
                }
                _ => {}
            }
        }
        // Decode steps (one token per sequence, all on the GPU) replay a
        // graph captured on the first step of their shape.
        let graphable = self.graphs
            && self.profile.is_none()
            && !attn.is_empty()
            && self.steps.iter().all(|s| match &s.exec {
                Exec::Host => false,
                Exec::Kernel(Kernel::PagedAttention, _) => {
                    dims[s.args[0]][0] == dims[s.args[7]][0] && dims[s.args[0]][0] <= 1024
                }
                _ => true,
            });
        if graphable {
            let mut attention: Vec<(usize, AttentionRun)> = attn.iter().map(|(k, v)| (*k, *v)).collect();
            attention.sort_unstable_by_key(|x| x.0);
            let key = CaptureKey {
                input_dims: self.inputs.iter().map(|(_, v)| dims[*v].clone()).collect(),
                attention,
                arena_bytes: arena.len(),
                greedy: greedy.as_ref().map(|g| g.0),
            };
            if !self.captures.contains_key(&key) && self.captures.len() < MAX_CAPTURES {
                let c = self
                    .capture(&arena, &offsets, &dims, &bindings, &attn, greedy.as_ref())
                    .map_err(node_err(&self.graph.name))?;
                self.captures.insert(key.clone(), c);
            }
            if let Some(c) = self.captures.get(&key) {
                self.gpu.htod(c.arena.ptr, &arena).map_err(node_err(&self.graph.name))?;
                c.graph
                    .launch()
                    .map_err(|e| node_err(&self.graph.name)(format!("CUDA graph launch: {e}")))?;
                return Ok(Executed {
                    dims,
                    ptr: c.ptr.clone(),
                    captured: true,
                    argmax: greedy.is_some().then_some(c.argmax),
                });
            }
        }
        if self.arena.as_ref().is_none_or(|b| b.bytes < arena.len()) {
            self.arena = None;
            let cap = (arena.len().max(1 << 20)).next_power_of_two();
            self.arena = Some(DeviceBox::new(cap).map_err(node_err(&self.graph.name))?);
        }
        let base = self.arena.as_ref().map_or(0, |b| b.ptr);
        self.gpu.htod(base, &arena).map_err(node_err(&self.graph.name))?;
        let mut ptr = self.base_pointers(base, &offsets);
        let steps = std::mem::take(&mut self.steps);
        let t_steps = Instant::now();
        let r = self.run_steps(&steps, &dims, &bindings, &mut ptr, &attn, base);
        self.steps = steps;
        if let Some(p) = &mut self.profile {
            *p.host.entry("prepare (checks, inputs)").or_insert(0.0) += (t_steps - t_start).as_secs_f64() * 1e3;
            *p.host.entry("launch + wait").or_insert(0.0) += t_steps.elapsed().as_secs_f64() * 1e3;
            p.runs += 1;
        }
        if let Err(e) = r {
            // Return every temp buffer: the next run starts clean.
            for (v, &p) in ptr.iter().enumerate() {
                if p != 0 && self.locs[v] == Loc::Temp && self.owner[v] == v {
                    self.pool.release(p);
                }
            }
            return Err(e);
        }
        Ok(Executed {
            dims,
            ptr,
            captured: false,
            argmax: None,
        })
    }

    /// Value pointers for a run with its inputs at `base`.
    fn base_pointers(&self, base: u64, offsets: &[usize]) -> Vec<u64> {
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

    /// Captures the steps (and the greedy argmax) as a CUDA graph with a
    /// private input arena and activation pool, then leaves it to replay.
    #[allow(clippy::too_many_arguments)]
    fn capture(
        &mut self,
        arena: &[u8],
        offsets: &[usize],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        attn: &HashMap<usize, AttentionRun>,
        greedy: Option<&(usize, CudaFunction)>,
    ) -> Result<Captured, String> {
        let abox = DeviceBox::new(arena.len().max(256))?;
        self.gpu.htod(abox.ptr, arena)?;
        self.gpu.sync()?;
        let mut ptr = self.base_pointers(abox.ptr, offsets);
        let mut pool = Pool::default();
        std::mem::swap(&mut self.pool, &mut pool);
        let begun = self
            .gpu
            .stream
            .begin_capture(cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .map_err(|e| format!("CUDA graph capture: {e}"));
        let steps = std::mem::take(&mut self.steps);
        let mut r = begun.and_then(|_| {
            self.run_steps(&steps, dims, bindings, &mut ptr, attn, abox.ptr)
                .map_err(|e| e.to_string())
        });
        self.steps = steps;
        let mut argmax = 0;
        if let (Ok(()), Some((v, f))) = (&r, greedy) {
            match self.launch_argmax(f, ptr[*v], &dims[*v]) {
                Ok(b) => argmax = b,
                Err(e) => r = Err(e),
            }
        }
        let g = self
            .gpu
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(|e| format!("CUDA graph capture: {e}"));
        std::mem::swap(&mut self.pool, &mut pool);
        r?;
        let graph = g?.ok_or("CUDA graph capture produced no graph")?;
        Ok(Captured {
            graph,
            _pool: pool,
            arena: abox,
            ptr,
            argmax,
        })
    }

    fn run_steps(
        &mut self,
        steps: &[Step],
        dims: &[Vec<usize>],
        bindings: &Bindings,
        ptr: &mut [u64],
        attn: &HashMap<usize, AttentionRun>,
        arena: u64,
    ) -> Result<(), CodegenError> {
        let mut events = Vec::new();
        for (si, s) in steps.iter().enumerate() {
            if let Exec::View = s.exec {
                ptr[s.outs[0]] = ptr[s.args[0]];
                continue;
            }
            if self.profile.is_some() {
                let ev = self
                    .gpu
                    .ctx
                    .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                    .and_then(|e| e.record(&self.gpu.stream).map(|_| e))
                    .map_err(|e| node_err(&s.node)(e.to_string()))?;
                events.push((si, ev));
            }
            for &o in &s.outs {
                if self.locs[o] == Loc::Temp {
                    let bytes = self.types[o].dtype.storage_bytes(dims[o].iter().product());
                    ptr[o] = self.pool.alloc(bytes).map_err(node_err(&s.node))?;
                }
            }
            let r = match &s.exec {
                Exec::Kernel(k, fns) => self.launch(*k, fns, s, dims, ptr, attn.get(&si), arena),
                _ => self.host_step(s, dims, bindings, ptr),
            };
            r.map_err(node_err(&s.node))?;
            for &a in &s.args {
                let o = self.owner[a];
                if self.last_use.get(&o) == Some(&si) && self.locs[o] == Loc::Temp && ptr[o] != 0 {
                    self.pool.release(ptr[o]);
                    ptr[o] = 0;
                }
            }
            for &o in &s.outs {
                if !self.last_use.contains_key(&o) && self.locs[o] == Loc::Temp && ptr[o] != 0 {
                    self.pool.release(ptr[o]);
                    ptr[o] = 0;
                }
            }
        }
        if let Some(p) = &mut self.profile {
            let end = self
                .gpu
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .and_then(|e| e.record(&self.gpu.stream).map(|_| e))
                .map_err(|e| node_err(&self.graph.name)(e.to_string()))?;
            end.synchronize().map_err(|e| node_err(&self.graph.name)(e.to_string()))?;
            for (i, (si, ev)) in events.iter().enumerate() {
                let next = events.get(i + 1).map_or(&end, |(_, e)| e);
                let ms = f64::from(ev.elapsed_ms(next).unwrap_or(0.0));
                let kind = match &steps[*si].exec {
                    Exec::Kernel(k, _) => k.name().to_string(),
                    _ => format!("host {}", steps[*si].op.name()),
                };
                let e = p.gpu.entry(kind).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += ms;
            }
        }
        Ok(())
    }

    /// The op's reference semantics on the host.
    fn host_step(&self, s: &Step, dims: &[Vec<usize>], bindings: &Bindings, ptr: &[u64]) -> Result<(), String> {
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
                return Err(format!("result {i} has shape {:?}, declared {:?}", t.shape(), dims[o]));
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

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        k: Kernel,
        fns: &[CudaFunction],
        s: &Step,
        dims: &[Vec<usize>],
        ptr: &[u64],
        attn: Option<&AttentionRun>,
        arena: u64,
    ) -> Result<(), String> {
        let a = &s.args;
        let o0 = s.outs[0];
        let numel = |v: usize| dims[v].iter().product::<usize>();
        if s.outs.iter().all(|&o| numel(o) == 0) {
            return Ok(());
        }
        let n = numel(o0);
        let sms = self.gpu.sms;
        let ew = |n: usize| cfg((n.div_ceil(256).clamp(1, sms as usize * 16) as u32, 1, 1), 256, 0);
        let dtype = self.types[o0].dtype;
        let esize = dtype.storage_bytes(1) as u64;
        let opt = |i: usize| a.get(i).map_or(0u64, |&v| ptr[v]);
        let last = |v: usize| *dims[v].last().unwrap_or(&1);
        let rows_cfg = |rows: usize, cols: usize| {
            let block = (cols.div_ceil(32) * 32).clamp(32, 256) as u32;
            cfg((rows as u32, 1, 1), block, 0)
        };
        let gpu = &self.gpu;
        match (k, &s.op) {
            (Kernel::Linear, _) => {
                let kd = last(a[0]);
                let m = numel(a[0]).checked_div(kd).unwrap_or(0);
                let nn = dims[a[1]][0];
                let shape = GemmShape {
                    dtype,
                    trans_a: true,
                    m: nn as u64,
                    n: m as u64,
                    k: kd as u64,
                    batch: 1,
                    stride_a: 0,
                    stride_b: 0,
                    stride_c: 0,
                    bias: a.len() > 2,
                };
                unsafe {
                    self.gemm
                        .run(shape, ptr[a[1]], ptr[a[0]], ptr[o0], opt(2), gpu.stream.cu_stream() as _)
                }
            }
            (Kernel::MatMul, _) => {
                let (da, db) = (&dims[a[0]], &dims[a[1]]);
                let (m, kd, nn) = (da[da.len() - 2], da[da.len() - 1], db[db.len() - 1]);
                let batch: usize = da[..da.len() - 2].iter().product();
                let shape = GemmShape {
                    dtype,
                    trans_a: false,
                    m: nn as u64,
                    n: m as u64,
                    k: kd as u64,
                    batch: batch as i32,
                    stride_a: if db.len() == 2 { 0 } else { (kd * nn) as i64 },
                    stride_b: (m * kd) as i64,
                    stride_c: (m * nn) as i64,
                    bias: false,
                };
                unsafe { self.gemm.run(shape, ptr[a[1]], ptr[a[0]], ptr[o0], 0, gpu.stream.cu_stream() as _) }
            }
            (Kernel::RmsNorm, Op::RmsNorm(o)) => {
                let cols = last(a[0]);
                launch!(gpu, &fns[0], rows_cfg(n / cols, cols);
                    x = ptr[a[0]], w = opt(1), y = ptr[o0], c = cols as i32, eps = o.eps as f32)
            }
            (Kernel::AddRmsNorm, Op::AddRmsNorm(o)) => {
                let cols = last(a[0]);
                launch!(gpu, &fns[0], rows_cfg(n / cols, cols);
                    x = ptr[a[0]], y = ptr[a[1]], w = opt(2), sum = ptr[o0], out = ptr[s.outs[1]],
                    c = cols as i32, eps = o.eps as f32)
            }
            (Kernel::LayerNorm, Op::LayerNorm(o)) => {
                let cols = last(a[0]);
                launch!(gpu, &fns[0], rows_cfg(n / cols, cols);
                    x = ptr[a[0]], w = opt(1), b = opt(2), y = ptr[o0], c = cols as i32, eps = o.eps as f32)
            }
            (Kernel::Softmax, Op::Softmax(o)) => {
                let cols = last(a[0]);
                launch!(gpu, &fns[0], rows_cfg(n / cols, cols);
                    x = ptr[a[0]], y = ptr[o0], c = cols as i32, l = i32::from(o.log))
            }
            (Kernel::Rope, Op::Rope(o)) => {
                let (dx, dc) = (&dims[a[0]], &dims[a[1]]);
                let d = last(a[0]);
                let r = last(a[1]);
                let lead = &dx[..dx.len() - 1];
                let clead = &dc[..dc.len() - 1];
                let st = strided(lead, &broadcast_strides(clead, lead), &vec![0; lead.len()]);
                let rows: usize = lead.iter().product();
                launch!(gpu, &fns[0], ew(n);
                    x = ptr[a[0]], c = ptr[a[1]], sn = ptr[a[2]], y = ptr[o0], rows = rows as i64,
                    d = d as i32, r = r as i32, il = i32::from(o.interleaved), st = st)
            }
            (Kernel::SwiGlu, _) => launch!(gpu, &fns[0], ew(n); g = ptr[a[0]], u = ptr[a[1]], y = ptr[o0], n = n as i64),
            (Kernel::Gelu, Op::Gelu(gl)) => launch!(gpu, &fns[0], ew(n);
                t = i32::from(gl.approximate == GeluApprox::Tanh), x = ptr[a[0]], y = ptr[o0], n = n as i64),
            (Kernel::Unary, Op::Unary(u)) => {
                let code = UnaryKind::ALL.iter().position(|x| x == u).unwrap_or(0) as i32;
                launch!(gpu, &fns[0], ew(n); op = code, x = ptr[a[0]], y = ptr[o0], n = n as i64)
            }
            (Kernel::Binary, Op::Binary(b)) => {
                let code = BinaryKind::ALL.iter().position(|x| x == b).unwrap_or(0) as i32;
                let od = &dims[o0];
                let st = if dims[a[0]] == *od && dims[a[1]] == *od {
                    strided(&[n], &[1], &[1])
                } else {
                    strided(od, &broadcast_strides(&dims[a[0]], od), &broadcast_strides(&dims[a[1]], od))
                };
                launch!(gpu, &fns[0], ew(n); op = code, x = ptr[a[0]], y = ptr[a[1]], out = ptr[o0], n = n as i64, st = st)
            }
            (Kernel::Cast, _) => launch!(gpu, &fns[0], ew(n); x = ptr[a[0]], y = ptr[o0], n = n as i64),
            (Kernel::Transpose, Op::Transpose(t)) => {
                let di = &dims[a[0]];
                let cs = contiguous(di);
                let perm: Vec<usize> = t
                    .perm
                    .iter()
                    .map(|&p| normalize_axis(p, di.len()))
                    .collect::<Result<_, _>>()?;
                let srcs: Vec<i64> = perm.iter().map(|&p| cs[p]).collect();
                let od = &dims[o0];
                let st = strided(od, &srcs, &contiguous(od));
                launch!(gpu, &fns[0], ew(n); x = ptr[a[0]], y = ptr[o0], n = n as i64, st = st)
            }
            (Kernel::Split, Op::Split(sp)) => {
                let di = &dims[a[0]];
                let axis = normalize_axis(sp.axis, di.len())?;
                let cs = contiguous(di);
                let mut start = 0usize;
                for &o in &s.outs {
                    let od = &dims[o];
                    let cnt = numel(o);
                    if cnt > 0 {
                        let st = strided(od, &cs, &contiguous(od));
                        let from = ptr[a[0]] + start as u64 * cs[axis] as u64 * esize;
                        launch!(gpu, &fns[0], ew(cnt); x = from, y = ptr[o], n = cnt as i64, st = st)?;
                    }
                    start += od[axis];
                }
                Ok(())
            }
            (Kernel::Slice, Op::Slice(sl)) => {
                let di = &dims[a[0]];
                let axis = normalize_axis(sl.axis, di.len())?;
                let len = di[axis] as i64;
                let start = if sl.start < 0 { sl.start + len } else { sl.start }.clamp(0, len);
                let mut cs = contiguous(di);
                let from = ptr[a[0]] + (start * cs[axis]) as u64 * esize;
                cs[axis] *= sl.step;
                let od = &dims[o0];
                let st = strided(od, &cs, &contiguous(od));
                launch!(gpu, &fns[0], ew(n); x = from, y = ptr[o0], n = n as i64, st = st)
            }
            (Kernel::Concat, Op::Concat(c)) => {
                let od = &dims[o0];
                let axis = normalize_axis(c.axis, od.len())?;
                let co = contiguous(od);
                let mut at = 0usize;
                for &v in a.iter() {
                    let di = &dims[v];
                    let cnt = numel(v);
                    if cnt > 0 {
                        let st = strided(di, &contiguous(di), &co);
                        let to = ptr[o0] + at as u64 * co[axis] as u64 * esize;
                        launch!(gpu, &fns[0], ew(cnt); x = ptr[v], y = to, n = cnt as i64, st = st)?;
                    }
                    at += di[axis];
                }
                Ok(())
            }
            (Kernel::Expand, _) => {
                let od = &dims[o0];
                let st = strided(od, &broadcast_strides(&dims[a[0]], od), &contiguous(od));
                launch!(gpu, &fns[0], ew(n); x = ptr[a[0]], y = ptr[o0], n = n as i64, st = st)
            }
            (Kernel::IndexSelect, Op::IndexSelect(ix)) => {
                let di = &dims[a[0]];
                let axis = normalize_axis(ix.axis, di.len())?;
                let (outer, len, inner): (usize, usize, usize) =
                    (di[..axis].iter().product(), di[axis], di[axis + 1..].iter().product());
                launch!(gpu, &fns[0], ew(n); x = ptr[a[0]], i = ptr[a[1]], y = ptr[o0],
                    o = outer as i64, l = len as i64, inn = inner as i64, ni = numel(a[1]) as i64)
            }
            (Kernel::Embedding, _) => {
                let di = &dims[a[0]];
                let inner: usize = di[1..].iter().product();
                launch!(gpu, &fns[0], ew(n); x = ptr[a[0]], i = ptr[a[1]], y = ptr[o0],
                    o = 1i64, l = di[0] as i64, inn = inner as i64, ni = numel(a[1]) as i64)
            }
            (Kernel::PagedAttention, Op::PagedAttention(p)) => {
                let run = attn.ok_or("no attention metadata for this step (a lowering bug)")?;
                let (dq, dk, dv, dc) = (&dims[a[0]], &dims[a[1]], &dims[a[2]], &dims[a[3]]);
                let (ntok, hq, d) = (dq[0], dq[1], dq[2]);
                let (hkv, bs) = (dk[1], dc[1]);
                let (kw, vw) = (hkv * d, hkv * dv[2]);
                launch!(gpu, &fns[0], ew(ntok * kw.max(vw));
                    k = ptr[a[1]], v = ptr[a[2]], kc = ptr[a[3]], vc = ptr[a[4]], sl = ptr[a[9]],
                    nt = ntok as i64, kw = kw as i32, vw = vw as i32)?;
                if run.tiles == 0 {
                    return Ok(());
                }
                let scale = p.scale.unwrap_or(1.0 / (d as f64).sqrt()) as f32;
                let window = p.window.unwrap_or(0) as i32;
                let smem = src::attention_smem_bytes(d) as u32;
                let part = if run.nsplit > 1 {
                    self.pool.alloc(run.nsplit * ntok * hq * (d + 2) * 4)?
                } else {
                    0
                };
                let gpu = &self.gpu;
                if run.mma {
                    let smem = src::prefill_mma_smem_bytes(d) as u32;
                    return launch!(gpu, &fns[3], cfg((run.tiles as u32, hkv as u32, 1), 128, smem);
                        q = ptr[a[0]], kc = ptr[a[3]], vc = ptr[a[4]], pos = ptr[a[5]], bt = ptr[a[8]],
                        mb = dims[a[8]][1] as i32, tiles = arena + run.tiles_offset as u64, out = ptr[o0],
                        hq = hq as i32, hkv = hkv as i32, bs = bs as i32, scale = scale, window = window);
                }
                let grid = (run.tiles as u32, hkv as u32, run.nsplit as u32);
                let r = launch!(gpu, &fns[1], cfg(grid, 128, smem);
                    q = ptr[a[0]], kc = ptr[a[3]], vc = ptr[a[4]], pos = ptr[a[5]], bt = ptr[a[8]],
                    mb = dims[a[8]][1] as i32, tiles = arena + run.tiles_offset as u64, out = ptr[o0], part = part,
                    nt = ntok as i64, hq = hq as i32, hkv = hkv as i32, bs = bs as i32, scale = scale,
                    window = window, ns = run.nsplit as i32);
                let r = r.and_then(|_| {
                    if run.nsplit > 1 {
                        let block = (d.div_ceil(32) * 32).clamp(32, 128) as u32;
                        launch!(gpu, &fns[2], cfg(((ntok * hq) as u32, 1, 1), block, 0);
                            part = part, out = ptr[o0], rows = (ntok * hq) as i64, d = d as i32,
                            ns = run.nsplit as i32)
                    } else {
                        Ok(())
                    }
                });
                if part != 0 {
                    self.pool.release(part);
                }
                r
            }
            _ => Err(format!("kernel {} does not match op {} (a lowering bug)", k.name(), s.op.name())),
        }
    }

    /// Runs and waits, timing the whole step on the host (for benchmarks).
    pub fn run_timed(&mut self, inputs: &BTreeMap<String, Tensor>) -> Result<(BTreeMap<String, Tensor>, f64), CodegenError> {
        let t = Instant::now();
        let r = self.run(inputs)?;
        Ok((r, t.elapsed().as_secs_f64()))
    }
}

fn weights_get(store: &WeightStore, name: &str, key: &str, ty: &TensorType) -> Result<Tensor, CodegenError> {
    let t = store.get(key).map_err(|e| CodegenError::Weight {
        name: name.into(),
        message: e.to_string(),
    })?;
    let want = ty
        .shape
        .as_consts()
        .map(|v| v.into_iter().map(|d| d as usize).collect::<Vec<_>>());
    if t.dtype() != ty.dtype || want.as_deref() != Some(t.shape()) {
        return Err(CodegenError::Weight {
            name: name.into(),
            message: format!("declared {ty} but the store holds {}{:?}", t.dtype(), t.shape()),
        });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_zero_the_broadcast_dims() {
        assert_eq!(broadcast_strides(&[3, 1], &[2, 3, 4]), vec![0, 1, 0]);
        assert_eq!(broadcast_strides(&[2, 3, 4], &[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(broadcast_strides(&[], &[5]), vec![0]);
    }

    #[test]
    fn the_strided_struct_matches_the_c_layout() {
        // int rank (padded to 8) + three arrays of six i64.
        assert_eq!(std::mem::size_of::<Strided>(), 8 + 3 * 48);
    }

    #[test]
    fn kernels_cover_the_step_graph_ops() {
        let t = |d: DType, s: &[i64]| TensorType::new(d, s.to_vec());
        let x = t(DType::BF16, &[1, 4, 64]);
        let w = t(DType::BF16, &[128, 64]);
        let out = [t(DType::BF16, &[1, 4, 128])];
        assert_eq!(choose(&Op::Linear(Default::default()), &[&x, &w], &out), Some(Kernel::Linear));
        // Mixed dtypes have no kernel: they run on the host.
        let wf = t(DType::F32, &[128, 64]);
        assert_eq!(choose(&Op::Linear(Default::default()), &[&x, &wf], &out), None);
    }
}
