//! The one-token decode megakernel (`kernels/cuda/mega.cu`): a step
//! graph's whole layer stack and LM head as one persistent launch at
//! batch 1, where the launch chain leaves DRAM idle at every kernel
//! boundary. Planning finds the stack among the lowered steps (Llama-like
//! layers after the lowering fusions: norm → QKV GEMV with rope and cache
//! write → decode attention → o → add+norm → gate/up GEMV with SwiGLU →
//! down, then the final norm → row gather → LM head); a run with one
//! sequence of one token launches the kernel in place of those steps.
//! Off unless asked for (`OPTC_CUDA_MEGA=1`, [`CudaProgram::set_mega`]):
//! on the H200 it measured slower than the chain (docs/perf.md).

use std::collections::HashSet;

use cudarc::driver::CudaFunction;
use optc_ir::ops::Op;
use optc_ir::{DType, TensorType};
use optc_kernels::cuda::{self as src, MegaShape};

use super::device::DeviceBox;
use super::fuse::Uses;
use super::program::{node_err, CudaProgram, Exec, Loc, Step};
use super::select::Kernel;
use crate::CodegenError;

/// Whether programs launch the megakernel unless `OPTC_CUDA_MEGA` says
/// otherwise (`=1` on, `=0` off). Off: on the H200 a W1 step took
/// 1.24 ms with it against 0.80 ms on the launch chain (docs/perf.md).
pub(super) const MEGA_BY_DEFAULT: bool = false;

/// The steps of one layer of the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LayerSteps {
    /// The norm before QKV: rms_norm of the stack's input at layer 0,
    /// else add_rms_norm(residual, down) whose sum is the layer's input.
    pub(super) norm1: usize,
    pub(super) qkv: usize,
    /// The rope + cache write the QKV GEMV does.
    pub(super) rope: usize,
    pub(super) attention: usize,
    pub(super) o: usize,
    /// add_rms_norm(input, o) before gate/up.
    pub(super) norm2: usize,
    pub(super) gate_up: usize,
    pub(super) down: usize,
}

/// A decode step's layer stack and LM head, as the megakernel runs them.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct MegaStack {
    /// The first and last steps it replaces (views between included).
    pub(super) first: usize,
    pub(super) last: usize,
    pub(super) layers: Vec<LayerSteps>,
    /// add_rms_norm(residual, down) of the last layer, the logits rows'
    /// index_select, and the LM head.
    pub(super) final_norm: usize,
    pub(super) head: usize,
    /// The stack's input (the embedding's result).
    pub(super) input: usize,
    /// The values it reads besides weights and caches: the rotary
    /// tables, the cache slots, the paged metadata, the logits rows.
    pub(super) cos: usize,
    pub(super) sin: usize,
    pub(super) slots: usize,
    pub(super) positions: usize,
    pub(super) context_lens: usize,
    pub(super) block_tables: usize,
    pub(super) rows: usize,
    pub(super) vocab: usize,
    pub(super) interleaved: bool,
    pub(super) scale: f32,
    pub(super) window: i32,
    pub(super) shape: MegaShape,
}

fn konst(t: &TensorType, axis: usize) -> Option<usize> {
    t.shape
        .dims()
        .get(axis)?
        .as_const()
        .and_then(|c| usize::try_from(c).ok())
}

/// A weight's constant [rows, cols].
fn matrix(t: &TensorType) -> Option<(usize, usize)> {
    (t.rank() == 2).then_some(())?;
    Some((konst(t, 0)?, konst(t, 1)?))
}

/// The next step after `i` that is not a view.
fn next_work(steps: &[Step], i: usize) -> Option<usize> {
    (i + 1..steps.len()).find(|&j| !matches!(steps[j].exec, Exec::View))
}

fn is_kernel(s: &Step, k: Kernel) -> bool {
    matches!(&s.exec, Exec::Kernel(kk, _) if *kk == k)
}

/// The (sum, normalised) operands of add_rms_norm step `p` as a set:
/// whether they are `a` and `b` in either order.
fn adds(s: &Step, a: usize, b: usize) -> bool {
    let x = (s.args[0], s.args[1]);
    x == (a, b) || x == (b, a)
}

struct Finder<'a> {
    steps: &'a [Step],
    types: &'a [TensorType],
    /// Values folded at lowering: steps making only these are evaluated
    /// once, not run.
    consts: &'a HashSet<usize>,
    uses: Uses,
}

impl Finder<'_> {
    fn root(&self, v: usize) -> usize {
        self.uses.root(self.steps, v)
    }

    /// One layer from its QKV norm step `n1`, whose residual input is
    /// `res` (the stack's input at layer 0, else `n1`'s sum): the layer's
    /// steps, and the step after it (the next norm).
    fn layer(&self, n1: usize, res: usize) -> Option<(LayerSteps, usize)> {
        let st = self.steps;
        let qkv = st[n1].deferred_to?;
        let z = st[qkv].fused.as_ref()?;
        let rope = z.rope?;
        if z.norm != Some(n1)
            || z.glu.is_some()
            || z.gather.is_some()
            || !is_kernel(&st[rope], Kernel::RopeQkvCache)
        {
            return None;
        }
        let attention = next_work(st, rope)?;
        let a = &st[attention];
        let q = st[rope].outs[0];
        let cache_ok = a.args.len() == 10 && a.args[3] == st[rope].args[3] && a.args[4] == st[rope].args[4];
        if !is_kernel(a, Kernel::PagedAttention) || !a.cache_written || !cache_ok || self.root(a.args[0]) != q
        {
            return None;
        }
        let o = next_work(st, attention)?;
        if !is_kernel(&st[o], Kernel::Linear)
            || st[o].fused.is_some()
            || self.root(st[o].args[0]) != a.outs[0]
        {
            return None;
        }
        let norm2 = next_work(st, o)?;
        if !is_kernel(&st[norm2], Kernel::AddRmsNorm) || !adds(&st[norm2], res, st[o].outs[0]) {
            return None;
        }
        let gate_up = st[norm2].deferred_to?;
        let zg = st[gate_up].fused.as_ref()?;
        let glu = zg.glu?;
        if zg.norm != Some(norm2)
            || zg.rope.is_some()
            || zg.gather.is_some()
            || next_work(st, norm2)? != gate_up
        {
            return None;
        }
        let down = next_work(st, glu)?;
        if next_work(st, gate_up)? != glu
            || !is_kernel(&st[down], Kernel::Linear)
            || st[down].fused.is_some()
            || self.root(st[down].args[0]) != st[glu].outs[0]
        {
            return None;
        }
        let after = next_work(st, down)?;
        if !is_kernel(&st[after], Kernel::AddRmsNorm)
            || !adds(&st[after], st[norm2].outs[0], st[down].outs[0])
        {
            return None;
        }
        let layer = LayerSteps {
            norm1: n1,
            qkv,
            rope,
            attention,
            o,
            norm2,
            gate_up,
            down,
        };
        Some((layer, after))
    }

    /// The stack whose first step is the rms_norm `n1`.
    fn stack(&self, n1: usize, outputs: &HashSet<usize>) -> Option<MegaStack> {
        let (st, ty) = (self.steps, self.types);
        if !is_kernel(&st[n1], Kernel::RmsNorm) {
            return None;
        }
        let input = st[n1].args[0];
        let mut layers = Vec::new();
        let (mut norm, mut res) = (n1, input);
        let (final_norm, head) = loop {
            let (layer, after) = self.layer(norm, res)?;
            layers.push(layer);
            let next = st[after].deferred_to?;
            let z = st[next].fused.as_ref()?;
            if z.rope.is_some() {
                (norm, res) = (after, st[after].outs[0]);
                continue;
            }
            if z.norm != Some(after) || z.gather.is_none() || z.glu.is_some() {
                return None;
            }
            break (after, next);
        };
        // Shapes: every weight constant and consistent.
        let l0 = &layers[0];
        let (qkv_rows, d) = matrix(&ty[st[l0.qkv].args[1]])?;
        let cache = &ty[st[l0.rope].args[3]];
        let (hkv, hd) = (konst(cache, 2)?, konst(cache, 3)?);
        let heads = qkv_rows.checked_div(hd)?.checked_sub(2 * hkv)?;
        let (gu_rows, _) = matrix(&ty[st[l0.gate_up].args[1]])?;
        let f = gu_rows / 2;
        let (vocab, _) = matrix(&ty[st[head].args[1]])?;
        let dtype = match ty[st[head].outs[0]].dtype {
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            _ => return None,
        };
        let shape = MegaShape::new(dtype, d, f, heads, hkv, hd)?;
        let (Op::Rope(r), Op::PagedAttention(pa)) = (&st[l0.rope].op, &st[l0.attention].op) else {
            return None;
        };
        let (interleaved, window, scale) = (r.interleaved, pa.window, pa.scale);
        let cos = st[l0.rope].args[1];
        let gather = st[head].fused.as_ref()?.gather?;
        let t = ty[input].dtype;
        for l in &layers {
            let weights = [
                (st[l.qkv].args[1], (qkv_rows, d)),
                (st[l.o].args[1], (d, heads * hd)),
                (st[l.gate_up].args[1], (2 * f, d)),
                (st[l.down].args[1], (d, f)),
            ];
            // Every operand of the stack's type T (biases and scales too).
            let operands = [l.qkv, l.o, l.gate_up, l.down, l.norm1, l.norm2]
                .into_iter()
                .flat_map(|i| st[i].args.iter().copied())
                .chain(st[l.rope].args[1..5].iter().copied());
            let shapes_ok = weights.iter().all(|&(w, rc)| matrix(&ty[w]) == Some(rc))
                && operands.into_iter().all(|v| ty[v].dtype == t);
            let (Op::Rope(r), Op::PagedAttention(p)) = (&st[l.rope].op, &st[l.attention].op) else {
                return None;
            };
            let c = &ty[st[l.rope].args[3]];
            let same = r.interleaved == interleaved
                && p.window == window
                && p.scale == scale
                && st[l.rope].args[1] == cos
                && st[l.rope].args[2] == st[l0.rope].args[2]
                && st[l.rope].args[5] == st[l0.rope].args[5]
                && st[l.attention].args[5..] == st[l0.attention].args[5..]
                && konst(c, 1) == konst(cache, 1)
                && konst(c, 2) == Some(hkv)
                && konst(c, 3) == Some(hd)
                && ty[st[l.rope].args[4]] == *c;
            if !shapes_ok || !same {
                return None;
            }
        }
        // The whole head dim rotates; every value of the stack is 16-bit.
        if konst(&ty[cos], ty[cos].rank().checked_sub(1)?) != Some(hd)
            || matrix(&ty[st[head].args[1]])?.1 != d
            || ty[input].dtype != ty[st[head].outs[0]].dtype
        {
            return None;
        }
        let window = match window {
            None => 0,
            Some(w) => i32::try_from(w).ok().filter(|&w| w > 0)?,
        };
        let scale = scale.map_or(1.0 / (hd as f64).sqrt(), |s| s) as f32;
        let a0 = &st[l0.attention];
        let mut head_ops = st[final_norm].args.iter().chain(&st[head].args[1..]);
        if !head_ops.all(|&v| ty[v].dtype == t) {
            return None;
        }
        let stack = MegaStack {
            first: n1,
            last: head,
            final_norm,
            head,
            input,
            cos,
            sin: st[l0.rope].args[2],
            slots: st[l0.rope].args[5],
            positions: a0.args[5],
            context_lens: a0.args[7],
            block_tables: a0.args[8],
            rows: st[gather].args[1],
            layers,
            vocab,
            interleaved,
            scale,
            window,
            shape,
        };
        self.closed(&stack, outputs).then_some(stack)
    }

    /// Whether the stack's steps are all the work in its range, and
    /// nothing outside reads what it makes but the logits and the caches.
    fn closed(&self, s: &MegaStack, outputs: &HashSet<usize>) -> bool {
        let st = self.steps;
        let mut mine: HashSet<usize> = HashSet::new();
        for l in &s.layers {
            mine.extend([
                l.norm1,
                l.qkv,
                l.rope,
                l.attention,
                l.o,
                l.norm2,
                l.gate_up,
                l.down,
            ]);
            mine.extend(st[l.gate_up].fused.as_ref().and_then(|z| z.glu));
        }
        mine.extend([s.final_norm, s.head]);
        mine.extend(st[s.head].fused.as_ref().and_then(|z| z.gather));
        let range = s.first..=s.last;
        let runs = |i: usize| {
            !matches!(st[i].exec, Exec::View) && !st[i].outs.iter().all(|o| self.consts.contains(o))
        };
        if range.clone().any(|i| !mine.contains(&i) && runs(i)) {
            return false;
        }
        // The caches the attention steps update in place.
        let caches: HashSet<usize> = s
            .layers
            .iter()
            .flat_map(|l| st[l.attention].outs[1..].iter().copied())
            .collect();
        let logits = st[s.head].outs[0];
        range.clone().all(|i| {
            st[i].outs.iter().all(|&v| {
                v == logits
                    || caches.contains(&v)
                    || (!outputs.contains(&v)
                        && self
                            .uses
                            .readers
                            .get(&v)
                            .is_none_or(|r| r.iter().all(|j| range.contains(j))))
            })
        })
    }
}

/// The decode layer stack of `steps`, if the megakernel can run it
/// (`consts`: the values folded at lowering; `outputs`: the graph's).
pub(super) fn find(
    steps: &[Step],
    types: &[TensorType],
    consts: &HashSet<usize>,
    outputs: &HashSet<usize>,
) -> Option<MegaStack> {
    let f = Finder {
        steps,
        types,
        consts,
        uses: Uses::new(steps),
    };
    (0..steps.len()).find_map(|i| f.stack(i, outputs))
}

/// A layer's operands as mega.cu's `MegaLayer` takes them (null: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LayerArgs {
    wqkv: u64,
    bqkv: u64,
    wo: u64,
    bo: u64,
    wgu: u64,
    bgu: u64,
    wd: u64,
    bd: u64,
    nw1: u64,
    nw2: u64,
    kc: u64,
    vc: u64,
    eps1: f32,
    eps2: f32,
}
const _: () = assert!(std::mem::size_of::<LayerArgs>() == 13 * 8);

/// A step's operands as mega.cu's `MegaArgs` takes them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct StepArgs {
    layers: u64,
    nlayers: i32,
    vocab: i32,
    h0: u64,
    cs: u64,
    sn: u64,
    interleaved: i32,
    block_size: i32,
    slot: u64,
    pos: u64,
    table: u64,
    window: i32,
    scale: f32,
    fnorm: u64,
    whead: u64,
    bhead: u64,
    feps: f32,
    flags: i32,
    logits: u64,
    q: u64,
    att: u64,
    hmid: u64,
    hout: u64,
    glu: u64,
    part: u64,
    attcnt: u64,
    bar: u64,
}
const _: () = assert!(std::mem::size_of::<StepArgs>() == 23 * 8);

/// The megakernel of a program, loaded: its function, scratch and layer
/// table.
pub(super) struct Mega {
    pub(super) stack: MegaStack,
    func: CudaFunction,
    /// Activations a layer (q, att, hmid, hout, glu), attention's partial
    /// results, and the counters (left at zero by each launch).
    scratch: DeviceBox,
    /// Offsets in `scratch` of q, att, hmid, hout, glu, part, attcnt, bar.
    offsets: [usize; 8],
    table: DeviceBox,
    /// Whether `table` holds the current state's layer table (the
    /// caches' addresses move with `init_state`).
    uploaded: bool,
    /// Whether one-token runs launch it.
    pub(super) on: bool,
    /// Launch it cooperatively (`OPTC_MEGA_COOPERATIVE=1`).
    cooperative: bool,
}

/// The scratch layout for `s` (offsets, total bytes), each piece aligned
/// to 256 bytes.
fn scratch_layout(s: &MegaStack) -> ([usize; 8], usize) {
    let l = s.layers.len();
    let rows = s.shape.scratch_rows();
    let sizes = [
        rows[0] * 2 * l,
        rows[1] * 2 * l,
        rows[2] * 2 * l,
        rows[3] * 2 * l,
        rows[4] * 2 * l,
        s.shape.part_floats() * 4 * l,
        s.shape.hkv * 4 * l,
        2 * 4,
    ];
    let mut offsets = [0; 8];
    let mut at = 0;
    for (o, n) in offsets.iter_mut().zip(sizes) {
        *o = at;
        at += n.div_ceil(256) * 256;
    }
    (offsets, at)
}

impl Mega {
    /// Compiles (or finds in the cache) and loads the megakernel for
    /// `stack`, checks that a block fits on an SM, and allocates its
    /// scratch, zeroed.
    pub(super) fn load(gpu: &mut super::device::Gpu, mut stack: MegaStack) -> Result<Mega, String> {
        // This GPU's shared memory a block, less the kernel's static share
        // (at most 3 KiB: the rotary tables at head dim 256, the TMA
        // variant's barriers).
        let optin = gpu
            .ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(|e| e.to_string())?;
        let max_smem = usize::try_from(optin).unwrap_or(0).saturating_sub(3 << 10);
        stack.shape = stack
            .shape
            .within(max_smem.min(src::MEGA_MAX_SMEM))
            .ok_or_else(|| format!("{max_smem} bytes of shared memory a block hold no two-stage rings"))?;
        // Variants to measure (kernels/bench/mega_bench.cu times them too).
        stack.shape.prefetch = std::env::var("OPTC_MEGA_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        stack.shape.tma = std::env::var("OPTC_MEGA_TMA").is_ok_and(|v| v == "1");
        let shape = stack.shape;
        let (ptx, _) = super::compile::compile(&src::mega_source(&shape), gpu.arch)?;
        gpu.load_extra(ptx)?;
        let name = shape.function();
        let func = gpu
            .extra_function(&name)
            .ok_or_else(|| format!("{name} is missing from its module"))?;
        super::program::allow_smem(&func, shape.smem_bytes())
            .map_err(|e| format!("{name} needs {} bytes of shared memory: {e}", shape.smem_bytes()))?;
        let fit = func
            .occupancy_max_active_blocks_per_multiprocessor(shape.threads(), shape.smem_bytes(), None)
            .map_err(|e| format!("{name}: {e}"))?;
        if fit < 1 {
            return Err(format!("a block of {name} does not fit on an SM"));
        }
        let (offsets, bytes) = scratch_layout(&stack);
        let scratch = DeviceBox::new(bytes)?;
        gpu.zero(scratch.ptr, bytes)?;
        let table = DeviceBox::new(stack.layers.len() * std::mem::size_of::<LayerArgs>())?;
        Ok(Mega {
            stack,
            func,
            scratch,
            offsets,
            table,
            uploaded: false,
            on: false,
            cooperative: std::env::var("OPTC_MEGA_COOPERATIVE").is_ok_and(|v| v == "1"),
        })
    }

    /// The layer table must be uploaded again (the state moved).
    pub(super) fn invalidate(&mut self) {
        self.uploaded = false;
    }
}

fn eps_of(op: &Op) -> f32 {
    match op {
        Op::RmsNorm(o) => o.eps as f32,
        Op::AddRmsNorm(o) => o.eps as f32,
        _ => 0.0,
    }
}

/// A norm step's scale operand, if any.
fn norm_scale(s: &Step) -> Option<usize> {
    match s.op {
        Op::AddRmsNorm(_) => s.args.get(2).copied(),
        _ => s.args.get(1).copied(),
    }
}

impl CudaProgram {
    /// The device address of a weight or state value (0 for none); `None`
    /// when `v` is neither.
    fn fixed_ptr(&self, v: Option<usize>) -> Option<u64> {
        let Some(v) = v else { return Some(0) };
        match self.locs[self.owner[v]] {
            Loc::Weight(w) => Some(self.weights[w].ptr),
            Loc::State(s) => self.state[s].as_ref().map(|b| b.ptr),
            _ => None,
        }
    }

    /// The layer table of the stack: weights and caches, which every run
    /// shares.
    fn mega_layer_table(&self, stack: &MegaStack) -> Option<Vec<LayerArgs>> {
        let st = &self.steps;
        let p = |v: Option<usize>| self.fixed_ptr(v);
        stack
            .layers
            .iter()
            .map(|l| {
                let lin = |i: usize| (p(Some(st[i].args[1])), p(st[i].args.get(2).copied()));
                let ((wqkv, bqkv), (wo, bo)) = (lin(l.qkv), lin(l.o));
                let ((wgu, bgu), (wd, bd)) = (lin(l.gate_up), lin(l.down));
                Some(LayerArgs {
                    wqkv: wqkv?,
                    bqkv: bqkv?,
                    wo: wo?,
                    bo: bo?,
                    wgu: wgu?,
                    bgu: bgu?,
                    wd: wd?,
                    bd: bd?,
                    nw1: p(norm_scale(&st[l.norm1]))?,
                    nw2: p(norm_scale(&st[l.norm2]))?,
                    kc: p(Some(st[l.rope].args[3]))?,
                    vc: p(Some(st[l.rope].args[4]))?,
                    eps1: eps_of(&st[l.norm1].op),
                    eps2: eps_of(&st[l.norm2].op),
                })
            })
            .collect()
    }

    /// Before a run: the layer table on the GPU, when the megakernel is on
    /// and the state moved since it was uploaded.
    pub(super) fn mega_prepare(&mut self) -> Result<(), CodegenError> {
        let Some(m) = self.mega.as_ref().filter(|m| m.on && !m.uploaded) else {
            return Ok(());
        };
        if self.state.iter().any(Option::is_none) {
            return Ok(());
        }
        let Some(table) = self.mega_layer_table(&m.stack) else {
            // Not weights or state after all: off, with the reason.
            self.summary.mega = Some("off: an operand of the stack is not a weight or state".into());
            if let Some(m) = &mut self.mega {
                m.on = false;
            }
            return Ok(());
        };
        // SAFETY: LayerArgs is plain old data (repr(C), no padding).
        let bytes = unsafe {
            std::slice::from_raw_parts(
                table.as_ptr().cast::<u8>(),
                std::mem::size_of_val(table.as_slice()),
            )
        };
        self.gpu
            .htod(m.table.ptr, bytes)
            .map_err(node_err(&self.graph.name))?;
        if let Some(m) = &mut self.mega {
            m.uploaded = true;
        }
        Ok(())
    }

    /// Whether this run's step graph goes through the megakernel: it is on
    /// and its table uploaded, and the run is one sequence of one token
    /// with one logits row.
    pub(super) fn mega_fits(&self, dims: &[Vec<usize>], ptr: &[u64]) -> bool {
        let Some(m) = self.mega.as_ref() else { return false };
        let s = &m.stack;
        // Views of these may not have run yet: their buffers' owners.
        let own = |v: usize| ptr[self.owner[v]];
        self.mega_takes(dims)
            && [s.input, s.cos, s.sin]
                .iter()
                .all(|&v| own(v) != 0 && own(v) % 16 == 0)
            && [s.positions, s.slots, s.block_tables]
                .iter()
                .all(|&v| own(v) != 0)
    }

    /// The shape half of `mega_fits`, known before a run's buffers: on,
    /// its table uploaded, one sequence of one token with one logits row.
    pub(super) fn mega_takes(&self, dims: &[Vec<usize>]) -> bool {
        let Some(m) = self.mega.as_ref().filter(|m| m.on && m.uploaded) else {
            return false;
        };
        let s = &m.stack;
        let numel = |v: usize| dims[v].iter().product::<usize>();
        numel(s.input) == s.shape.d
            && numel(s.context_lens) == 1
            && numel(s.positions) == 1
            && numel(s.slots) == 1
            && numel(s.rows) == 1
            && dims[s.block_tables].first() == Some(&1)
    }

    /// Launches the megakernel for this run (`mega_fits` held), its
    /// logits allocated. `steps` are the program's, which `run_steps`
    /// holds while it runs (`self.steps` is empty then).
    pub(super) fn launch_mega(
        &mut self,
        steps: &[Step],
        dims: &[Vec<usize>],
        ptr: &[u64],
    ) -> Result<(), String> {
        let m = self.mega.as_ref().ok_or("no megakernel (a lowering bug)")?;
        let (s, st) = (&m.stack, steps);
        let rope = &st[s.layers[0].rope];
        // Views of these may not have run yet: their buffers' owners.
        let own = |v: usize| ptr[self.owner[v]];
        let fnorm = self
            .fixed_ptr(norm_scale(&st[s.final_norm]))
            .ok_or("final norm scale")?;
        let whead = self.fixed_ptr(Some(st[s.head].args[1])).ok_or("LM head weight")?;
        let bhead = self
            .fixed_ptr(st[s.head].args.get(2).copied())
            .ok_or("LM head bias")?;
        let at = |i: usize| m.scratch.ptr + m.offsets[i] as u64;
        let args = StepArgs {
            layers: m.table.ptr,
            nlayers: s.layers.len() as i32,
            vocab: s.vocab as i32,
            h0: own(s.input),
            cs: own(s.cos),
            sn: own(s.sin),
            interleaved: i32::from(s.interleaved),
            block_size: dims[rope.args[3]].get(1).copied().unwrap_or(0) as i32,
            slot: own(s.slots),
            pos: own(s.positions),
            table: own(s.block_tables),
            window: s.window,
            scale: s.scale,
            fnorm,
            whead,
            bhead,
            feps: eps_of(&st[s.final_norm].op),
            flags: 0,
            logits: own(st[s.head].outs[0]),
            q: at(0),
            att: at(1),
            hmid: at(2),
            hout: at(3),
            glu: at(4),
            part: at(5),
            attcnt: at(6),
            bar: at(7),
        };
        let cfg = super::launch::cfg(
            (self.gpu.sms, 1, 1),
            s.shape.threads(),
            s.shape.smem_bytes() as u32,
        );
        // One block an SM, each of which fits (`Mega::load`): every block
        // is resident at once, as the kernel's grid barriers need, unless
        // something else holds SMs (another process, another program's
        // megakernel on another stream). A cooperative launch
        // (`OPTC_MEGA_COOPERATIVE=1`) has the driver refuse that case.
        let mut params: Vec<*mut std::ffi::c_void> = vec![&args as *const StepArgs as *mut _];
        // (A cooperative launch goes without programmatic dependent
        // launch: the pair is not known to be accepted.)
        let early = !m.cooperative;
        // SAFETY: the one parameter is a `MegaArgs<T>` by value, which
        // `StepArgs` mirrors; its pointers are the run's live buffers.
        unsafe {
            self.gpu
                .launch_with(&m.func, cfg, early, m.cooperative, &mut params)
        }
    }
}

impl MegaStack {
    /// The stack with its step indices moved as `moved` says (steps
    /// folded at lowering drop out); `None` if one of its steps went.
    pub(super) fn remap(&self, moved: &std::collections::HashMap<usize, usize>) -> Option<MegaStack> {
        let m = |i: usize| moved.get(&i).copied();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Some(LayerSteps {
                    norm1: m(l.norm1)?,
                    qkv: m(l.qkv)?,
                    rope: m(l.rope)?,
                    attention: m(l.attention)?,
                    o: m(l.o)?,
                    norm2: m(l.norm2)?,
                    gate_up: m(l.gate_up)?,
                    down: m(l.down)?,
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(MegaStack {
            first: m(self.first)?,
            last: m(self.last)?,
            layers,
            final_norm: m(self.final_norm)?,
            head: m(self.head)?,
            ..self.clone()
        })
    }
}
