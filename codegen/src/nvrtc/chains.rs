//! Fused elementwise chains: elementwise steps (unary maps, binaries,
//! casts, GELU) whose results only the next of them reads become one
//! kernel, generated from the IR as CUDA C: each output element is
//! computed in registers from the chain's operands (each broadcast over
//! the output by its strides), so the intermediates are never stored and
//! one launch does the work of several. Every op still rounds to its
//! result type, as its own kernel would at its store: the result equals
//! the unfused kernels' bit for bit. A Llama step graph's rotary tables
//! (`cast(cos(..))`, `cast(sin(..))`) are such chains.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use cudarc::driver::DeviceRepr;
use optc_ir::ops::{BinaryKind, GeluApprox, Op, UnaryKind};
use optc_ir::{DType, TensorType};

use super::fuse::{drop_fused, Uses};
use super::program::{Exec, Step};
use super::select::{float_name, Kernel};
use super::strided::MAX_RANK;

/// Most operands a generated kernel reads (`OPTC_EW_LEAVES` in common.cuh).
pub(super) const MAX_LEAVES: usize = 8;

/// Mirrors `EwIndex` in `kernels/cuda/common.cuh`: the output's dims and
/// each operand's element strides over them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct EwIndex {
    pub(super) rank: i32,
    pub(super) dims: [i64; MAX_RANK],
    pub(super) st: [[i64; MAX_RANK]; MAX_LEAVES],
}

unsafe impl DeviceRepr for EwIndex {}

/// A generated kernel, on the step whose results it stores (its args are
/// the chain's operands, its outs the results).
#[derive(Clone, Debug)]
pub(super) struct EwChain {
    /// The kernel's name: `ew_` and a hash of its body.
    pub(super) name: String,
    /// The kernel's CUDA C (after `common.cuh`).
    pub(super) source: String,
    /// The elementwise ops it does.
    pub(super) ops: usize,
    /// For each operand, the value whose dims index it: the operand
    /// itself, or, for an operand of a step inlined where the chain read a
    /// view of that step's result (or read it broadcast), that view: the
    /// operand has the inlined result's shape and element order.
    pub(super) index_as: Vec<usize>,
}

/// Most ops a chain recomputes where its result is read more than once,
/// read broadcast, or read through a view: cheap maps, whose
/// recomputation costs less than a launch and a store.
const MAX_RECOMPUTED: usize = 4;

/// Most results one generated kernel stores (chains of one shape merged
/// side by side, such as the rotary tables' cos and sin).
const MAX_RESULTS: usize = 4;
/// The C type a generated kernel reads or writes `d` as.
fn c_type(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 => Some("float"),
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        DType::I64 => Some("i64"),
        _ => None,
    }
}

/// Whether step `s` may be part of a chain: an elementwise kernel with a
/// float result of a rank the index walk covers.
fn elementwise(s: &Step, types: &[TensorType]) -> bool {
    let out = &types[s.outs[0]];
    matches!(
        s.exec,
        Exec::Kernel(Kernel::Unary | Kernel::Binary | Kernel::Cast | Kernel::Gelu, _)
    ) && s.outs.len() == 1
        && float_name(out.dtype).is_some()
        && out.rank() <= MAX_RANK
        && s.args.iter().all(|&a| c_type(types[a].dtype).is_some())
}

/// The expression step `s` computes from its operands' values.
fn expression(op: &Op, x: &[String]) -> Option<String> {
    // The kernels' op codes are the kinds' positions in `ALL`.
    Some(match op {
        Op::Unary(u) => format!(
            "unary_op({}, {})",
            UnaryKind::ALL.iter().position(|v| v == u)?,
            x.first()?
        ),
        Op::Binary(b) => format!(
            "binary_op({}, {}, {})",
            BinaryKind::ALL.iter().position(|v| v == b)?,
            x.first()?,
            x.get(1)?
        ),
        Op::Gelu(g) => format!(
            "gelu_op({}, {})",
            i32::from(g.approximate == GeluApprox::Tanh),
            x.first()?
        ),
        Op::Cast(_) => x.first()?.clone(),
        _ => return None,
    })
}

/// The CUDA C of a kernel doing `members` (steps in order) over `leaves`
/// (operand, value whose dims index it) and storing the results of
/// `ends`, under a name from its body.
fn generate(
    steps: &[Step],
    types: &[TensorType],
    view_of: &HashMap<usize, usize>,
    members: &[usize],
    leaves: &[(usize, usize)],
    ends: &[usize],
) -> Option<EwChain> {
    let mut var: HashMap<usize, String> = HashMap::new();
    let mut params = String::new();
    let mut body = String::new();
    let _ = writeln!(body, "        i64 o[{}];", leaves.len());
    let _ = writeln!(body, "        ew_offsets<{}>(ix, i, o);", leaves.len());
    for (l, &(v, _)) in leaves.iter().enumerate() {
        let _ = write!(params, "const {}* __restrict__ a{l}, ", c_type(types[v].dtype)?);
        let _ = writeln!(body, "        const float v{l} = ld(&a{l}[o[{l}]]);");
        var.insert(v, format!("v{l}"));
    }
    for (t, &m) in members.iter().enumerate() {
        let s = &steps[m];
        let x: Vec<String> = s
            .args
            .iter()
            .map(|a| var.get(a).or_else(|| var.get(&root_of(view_of, *a))).cloned())
            .collect::<Option<_>>()?;
        let out = c_type(types[s.outs[0]].dtype)?;
        let _ = writeln!(
            body,
            "        const float t{t} = rnd<{out}>({});",
            expression(&s.op, &x)?
        );
        // A value is an operand or made here, never both.
        if var.insert(s.outs[0], format!("t{t}")).is_some() {
            return None;
        }
    }
    for (r, &e) in ends.iter().enumerate() {
        let out = steps[e].outs[0];
        let _ = write!(params, "{}* __restrict__ y{r}, ", c_type(types[out].dtype)?);
        let _ = writeln!(body, "        st(&y{r}[i], {});", var.get(&out)?);
    }
    let signature = format!("({params}i64 n, EwIndex ix, int early)");
    let name = format!(
        "ew_{:016x}",
        super::compile::fnv1a(&[signature.as_bytes(), body.as_bytes()])
    );
    // `early`: the operands are ready before the run (inputs no kernel of
    // it writes, weights) and the results' buffers are new to it, so the
    // work may run before the wait; the wait at the end keeps the grid
    // from finishing before the kernel ahead.
    let source = format!(
        "extern \"C\" __global__ void {name}{signature} {{\n    \
         pdl_trigger();\n    \
         if (!early) pdl_wait();\n    \
         for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {{\n\
         {body}    }}\n    \
         if (early) pdl_wait();\n}}\n"
    );
    Some(EwChain {
        name,
        source,
        ops: members.len(),
        index_as: leaves.iter().map(|&(_, ix)| ix).collect(),
    })
}

/// The value `v` views (through view steps), or `v`.
fn root_of(view_of: &HashMap<usize, usize>, mut v: usize) -> usize {
    while let Some(&a) = view_of.get(&v) {
        v = a;
    }
    v
}

/// The steps, other than views, that read `v` directly or through views
/// (each once); `None` when `v` or a view of it is a graph output.
fn end_readers(steps: &[Step], uses: &Uses, outputs: &HashSet<usize>, v: usize) -> Option<Vec<usize>> {
    let mut found = Vec::new();
    let mut todo = vec![v];
    while let Some(v) = todo.pop() {
        if outputs.contains(&v) {
            return None;
        }
        for &r in uses.readers.get(&v).map_or(&[][..], Vec::as_slice) {
            if matches!(steps[r].exec, Exec::View) {
                todo.push(steps[r].outs[0]);
            } else if !found.contains(&r) {
                found.push(r);
            }
        }
    }
    found.sort_unstable();
    Some(found)
}

/// Where values are written in place (the KV caches): at an attention
/// step, and at a rope + cache write step and at the linear whose product
/// it reads (`fused_gemvs` may move the write there, after this pass).
/// Memory is named by the value that first held it: an attention step's
/// returned caches share its cache operands' memory, so a read of either
/// is seen to change at a later write to that memory.
struct InPlaceWrites {
    /// (step position, memories written).
    at: Vec<(usize, Vec<usize>)>,
    /// A returned cache's root: the value whose memory it shares.
    shares: HashMap<usize, usize>,
}

impl InPlaceWrites {
    fn new(steps: &[Step], uses: &Uses, view_of: &HashMap<usize, usize>) -> InPlaceWrites {
        let mut w = InPlaceWrites {
            at: Vec::new(),
            shares: HashMap::new(),
        };
        for (i, s) in steps.iter().enumerate() {
            let Exec::Kernel(k @ (Kernel::PagedAttention | Kernel::RopeQkvCache), _) = s.exec else {
                continue;
            };
            let caches: Vec<usize> = s
                .args
                .iter()
                .skip(3)
                .take(2)
                .map(|&a| w.memory_of(view_of, a))
                .collect();
            if k == Kernel::PagedAttention {
                for (o, m) in s.outs.iter().skip(1).zip(&caches) {
                    w.shares.insert(root_of(view_of, *o), *m);
                }
            }
            if k == Kernel::RopeQkvCache {
                if let Some(&li) = s
                    .args
                    .first()
                    .and_then(|&a| uses.producer.get(&root_of(view_of, a)))
                {
                    w.at.push((li, caches.clone()));
                }
            }
            w.at.push((i, caches));
        }
        w
    }

    /// The value that first held `v`'s memory.
    fn memory_of(&self, view_of: &HashMap<usize, usize>, v: usize) -> usize {
        let mut r = root_of(view_of, v);
        while let Some(&m) = self.shares.get(&r) {
            r = m;
        }
        r
    }

    /// Whether a write at a position in `lo..hi` changes one of `leaves`:
    /// reading them at `hi` instead of `lo` would read other values.
    fn between(
        &self,
        view_of: &HashMap<usize, usize>,
        lo: usize,
        hi: usize,
        leaves: &[(usize, usize)],
    ) -> bool {
        self.at.iter().any(|(at, written)| {
            (lo..hi).contains(at)
                && leaves
                    .iter()
                    .any(|&(v, _)| written.contains(&self.memory_of(view_of, v)))
        })
    }
}

/// Operands, each with the value whose dims index it.
type Leaves = Vec<(usize, usize)>;

/// A chain being built: its steps in order, and its operands, each with
/// the value whose dims index it (see `EwChain::index_as`).
#[derive(Clone, Debug)]
struct Chain {
    members: Vec<usize>,
    leaves: Vec<(usize, usize)>,
}

impl Chain {
    /// Adds `leaves`, unless an operand would be read two ways or there
    /// would be more than `MAX_LEAVES`.
    fn with_leaves(mut self, leaves: &[(usize, usize)]) -> Option<Chain> {
        for &(v, ix) in leaves {
            match self.leaves.iter().find(|l| l.0 == v) {
                Some(&(_, other)) if other != ix => return None,
                Some(_) => {}
                None => self.leaves.push((v, ix)),
            }
        }
        (self.leaves.len() <= MAX_LEAVES).then_some(self)
    }

    /// The chain with `p`'s chain inlined where step `c` reads `a`, a
    /// view of `p`'s result `r` or `r` itself (see `fuse_chains`).
    #[allow(clippy::too_many_arguments)]
    fn inline(
        &self,
        p: &Chain,
        steps: &[Step],
        types: &[TensorType],
        view_of: &HashMap<usize, usize>,
        c: usize,
        a: usize,
        r: usize,
        shared: bool,
    ) -> Option<Chain> {
        let out_shape = &types[steps[c].outs[0]].shape;
        let same_frame = a == r && types[a].shape == *out_shape;
        let broadcast = types[a].shape != *out_shape;
        if (shared || broadcast) && p.members.len() > MAX_RECOMPUTED {
            return None;
        }
        // Read in another frame (through a view, or broadcast), p's steps
        // are evaluated at the element of `a` this element reads: each of
        // p's operands, of r's shape and element order, is indexed as `a`.
        let leaves: Vec<(usize, usize)> = if same_frame {
            p.leaves.clone()
        } else {
            let plain = p
                .members
                .iter()
                .all(|&m| types[steps[m].outs[0]].shape == types[r].shape)
                && p.leaves
                    .iter()
                    .all(|&(v, ix)| v == ix && types[v].shape == types[r].shape);
            if !plain {
                return None;
            }
            p.leaves.iter().map(|&(v, _)| (v, a)).collect()
        };
        let made: HashSet<usize> = p.members.iter().map(|&m| steps[m].outs[0]).collect();
        // One variable a value: every operand of this chain that p now
        // makes must be r read as `a` reads it (same root, same dims), and
        // p must not read stored what this chain computes.
        let (dropped, kept): (Leaves, Leaves) = self
            .leaves
            .iter()
            .partition(|&&(v, _)| made.contains(&root_of(view_of, v)));
        let same_layout = dropped
            .iter()
            .all(|&(v, ix)| root_of(view_of, v) == r && types[ix].shape == types[a].shape);
        let mine: HashSet<usize> = self.members.iter().map(|&m| steps[m].outs[0]).collect();
        if !same_layout || p.leaves.iter().any(|&(v, _)| mine.contains(&root_of(view_of, v))) {
            return None;
        }
        let mut members: Vec<usize> = p.members.iter().chain(&self.members).copied().collect();
        members.sort_unstable();
        members.dedup();
        Chain {
            members,
            leaves: Vec::new(),
        }
        .with_leaves(&leaves)?
        .with_leaves(&kept)
    }
}

/// Merges elementwise steps into generated kernels, in place, and returns
/// the counts to move in the summary (kernel name, change).
///
/// A step takes in the chain that makes one of its operands when that
/// value is not a graph output and the result reads at most `MAX_LEAVES`
/// operands. A chain of at most `MAX_RECOMPUTED` ops is also recomputed
/// where its result is read by several steps (each takes in a copy; it is
/// dropped once all have), read broadcast (once per element read), or
/// read through a view (its operands are then indexed as that view; it
/// must be a plain same-shape chain for that). Then chains whose results
/// have one shape, and whose operands are all ready at the first of them,
/// become one kernel storing several results. A Llama step graph's rotary
/// tables (the positions' cast, their product with the inverse
/// frequencies, cos, sin and the casts to the model's type) become one
/// kernel.
pub(super) fn fuse_chains(
    steps: &mut Vec<Step>,
    types: &[TensorType],
    outputs: &HashSet<usize>,
) -> Vec<(&'static str, i64)> {
    // Runs before `fused_gemvs`, so no step reads more than its args yet.
    let uses = Uses::new(steps);
    let view_of: HashMap<usize, usize> = steps
        .iter()
        .filter(|s| matches!(s.exec, Exec::View))
        .map(|s| (s.outs[0], s.args[0]))
        .collect();
    let writes = InPlaceWrites::new(steps, &uses, &view_of);
    // Each chain by the step that ends it; readers a shared chain still
    // waits for.
    let mut chains: HashMap<usize, Chain> = HashMap::new();
    let mut waiting: HashMap<usize, usize> = HashMap::new();
    for c in 0..steps.len() {
        if !elementwise(&steps[c], types) {
            continue;
        }
        let mut args: Vec<usize> = Vec::new();
        for &a in &steps[c].args {
            if !args.contains(&a) {
                args.push(a);
            }
        }
        let mut chain = Chain {
            members: vec![c],
            leaves: args.iter().map(|&a| (a, a)).collect(),
        };
        for &a in &args {
            let r = root_of(&view_of, a);
            let Some(&p) = uses.producer.get(&r) else { continue };
            let internal = chain.members.iter().any(|&m| steps[m].outs[0] == r);
            let (Some(pc), false) = (chains.get(&p), internal || p == c) else {
                continue;
            };
            let Some(readers) = end_readers(steps, &uses, outputs, r) else {
                continue;
            };
            // Computed at c instead, it must read what it read at p.
            if writes.between(&view_of, p, c, &pc.leaves) {
                continue;
            }
            let shared = readers.len() > 1;
            if let Some(merged) = chain.inline(pc, steps, types, &view_of, c, a, r, shared) {
                chain = merged;
                let left = waiting.entry(p).or_insert(readers.len());
                *left -= 1;
                if *left == 0 {
                    chains.remove(&p);
                    waiting.remove(&p);
                }
            }
        }
        chains.insert(c, chain);
    }
    // Chains of one shape side by side, led by the first.
    let position: HashMap<usize, usize> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.outs.iter().map(move |&o| (o, i)))
        .collect();
    let mut ends: Vec<usize> = chains.keys().copied().collect();
    ends.sort_unstable();
    let mut groups: Vec<(Vec<usize>, Chain)> = Vec::new();
    let mut grouped: HashSet<usize> = HashSet::new();
    for (i, &lead) in ends.iter().enumerate() {
        if grouped.contains(&lead) {
            continue;
        }
        let shape = &types[steps[lead].outs[0]].shape;
        let mut group = vec![lead];
        let mut merged = chains[&lead].clone();
        for &e in &ends[i + 1..] {
            if group.len() == MAX_RESULTS {
                break;
            }
            let other = &chains[&e];
            // Its operands made before the first, and none written in place
            // (the KV caches) in between: reading them earlier reads the
            // same values. Neither reads stored what the other computes.
            let ready = other
                .leaves
                .iter()
                .all(|&(v, _)| position.get(&v).is_none_or(|&at| at < lead))
                && !writes.between(&view_of, lead, e, &other.leaves);
            let made =
                |c: &Chain| -> HashSet<usize> { c.members.iter().map(|&m| steps[m].outs[0]).collect() };
            let (made_here, made_there) = (made(&merged), made(other));
            let apart = !other
                .leaves
                .iter()
                .any(|&(v, _)| made_here.contains(&root_of(&view_of, v)))
                && !merged
                    .leaves
                    .iter()
                    .any(|&(v, _)| made_there.contains(&root_of(&view_of, v)));
            if grouped.contains(&e) || types[steps[e].outs[0]].shape != *shape || !ready || !apart {
                continue;
            }
            let mut members: Vec<usize> = merged.members.iter().chain(&other.members).copied().collect();
            members.sort_unstable();
            members.dedup();
            if let Some(m) = (Chain {
                members,
                leaves: merged.leaves.clone(),
            })
            .with_leaves(&other.leaves)
            {
                merged = m;
                group.push(e);
            }
        }
        if group.len() > 1 || merged.members.len() > 1 {
            grouped.extend(group.iter().copied());
            groups.push((group, merged));
        }
    }
    // Every kernel is written before any step changes; if one cannot be
    // (a lowering bug), the steps stay as they were.
    let Some(kernels) = groups
        .iter()
        .map(|(group, chain)| generate(steps, types, &view_of, &chain.members, &chain.leaves, group))
        .collect::<Option<Vec<EwChain>>>()
    else {
        tracing::warn!("an elementwise chain could not be generated; its steps run as they are");
        return Vec::new();
    };
    let live: HashSet<usize> = chains.keys().copied().collect();
    let mut counts = Vec::new();
    let mut removed: HashSet<usize> = HashSet::new();
    for ((group, chain), kernel) in groups.iter().zip(kernels) {
        for &m in &chain.members {
            if !live.contains(&m) || group.contains(&m) {
                removed.insert(m);
            }
        }
        let lead = group[0];
        removed.remove(&lead);
        counts.push((Kernel::EwChain.name(), 1));
        let outs: Vec<usize> = group.iter().map(|&e| steps[e].outs[0]).collect();
        let s = &mut steps[lead];
        if let Exec::Kernel(k, _) = s.exec {
            counts.push((k.name(), -1));
        }
        s.node = format!("{} (and {} elementwise ops with it)", s.node, kernel.ops - 1);
        s.args = chain.leaves.iter().map(|&(v, _)| v).collect();
        s.outs = outs;
        s.exec = Exec::Kernel(Kernel::EwChain, Vec::new());
        s.chain = Some(Box::new(kernel));
    }
    let mut gone: Vec<usize> = removed.iter().copied().collect();
    gone.sort_unstable();
    for &m in &gone {
        if let Exec::Kernel(k, _) = steps[m].exec {
            counts.push((k.name(), -1));
        }
    }
    if !removed.is_empty() {
        drop_fused(steps, &removed);
    }
    counts
}

/// The translation unit of a program's generated kernels (one each).
pub(super) fn unit(steps: &[Step]) -> Option<String> {
    let mut seen = HashSet::new();
    let mut text = String::new();
    for c in steps.iter().filter_map(|s| s.chain.as_deref()) {
        if seen.insert(c.name.as_str()) {
            text.push_str(&c.source);
        }
    }
    (!text.is_empty()).then(|| {
        format!(
            "{}\n// ---- generated elementwise chains\n{text}",
            optc_kernels::cuda::COMMON
        )
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use optc_ir::ops::{BinaryKind, Cast, Op, UnaryKind};
    use optc_ir::{DType, Dim, Shape, TensorType};

    use super::super::program::{Exec, Step};
    use super::super::select::Kernel;

    fn step(op: Op, k: Kernel, args: &[usize], out: usize) -> Step {
        Step::new(
            format!("%{out}"),
            op,
            args.to_vec(),
            vec![out],
            Exec::Kernel(k, Vec::new()),
        )
    }

    fn view(arg: usize, out: usize) -> Step {
        Step {
            exec: Exec::View,
            ..step(
                Op::Unsqueeze(optc_ir::ops::Unsqueeze { axes: vec![0] }),
                Kernel::Cast,
                &[arg],
                out,
            )
        }
    }

    /// Compiles `unit` with NVRTC where it and the CUDA headers are here.
    fn compiles(unit: &str) {
        let includes = super::super::compile::include_paths();
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } || includes.is_empty() {
            eprintln!("skipping the compile: no NVRTC or no CUDA headers (set CUDA_HOME)");
            return;
        }
        let mut options = vec!["--gpu-architecture=sm_90".to_string(), "--std=c++17".into()];
        options.extend(includes.iter().map(|d| format!("--include-path={d}")));
        let cubin =
            super::super::compile::nvrtc_cubin(unit, &options).unwrap_or_else(|e| panic!("{e}\n{unit}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }

    /// `cast(cos(x))` added to a broadcast row, `cast(sin(x))`, and
    /// `exp(x)` read by two steps (`neg`, `abs`): exp is recomputed in
    /// each, and the four chains (one shape, operands ready at the first)
    /// become one kernel storing four results.
    #[test]
    fn elementwise_steps_fuse_into_one_kernel_and_compile() {
        let t = Dim::sym("T");
        let rows = |d: DType| TensorType::new(d, vec![t.clone(), Dim::constant(64)]);
        let types = vec![
            rows(DType::F32),                               // 0 x
            rows(DType::F32),                               // 1 cos
            rows(DType::BF16),                              // 2 cast
            TensorType::new(DType::BF16, Shape::of(&[64])), // 3 row
            rows(DType::BF16),                              // 4 add (output)
            rows(DType::F32),                               // 5 sin
            rows(DType::BF16),                              // 6 cast (output)
            rows(DType::F32),                               // 7 exp
            rows(DType::F32),                               // 8 neg(exp) (output)
            rows(DType::F32),                               // 9 abs(exp) (output)
        ];
        let cast = |to| Op::Cast(Cast { to });
        let mut steps = vec![
            step(Op::Unary(UnaryKind::Cos), Kernel::Unary, &[0], 1),
            step(cast(DType::BF16), Kernel::Cast, &[1], 2),
            step(Op::Binary(BinaryKind::Add), Kernel::Binary, &[2, 3], 4),
            step(Op::Unary(UnaryKind::Sin), Kernel::Unary, &[0], 5),
            step(cast(DType::BF16), Kernel::Cast, &[5], 6),
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[0], 7),
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[7], 8),
            step(Op::Unary(UnaryKind::Abs), Kernel::Unary, &[7], 9),
        ];
        let outputs: HashSet<usize> = [4, 6, 8, 9].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert_eq!(steps.len(), 1);
        let s = &steps[0];
        assert_eq!((&s.args[..], &s.outs[..]), (&[0, 3][..], &[4, 6, 8, 9][..]));
        let chain = s.chain.as_ref().unwrap();
        assert_eq!((chain.ops, &chain.index_as[..]), (8, &[0, 3][..]));
        let net: i64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(net, -7, "{counts:?}");
        let unit = super::unit(&steps).unwrap();
        assert_eq!(unit.matches("__global__ void ew_").count(), 1, "{unit}");
        // Each op rounds to its result type, as its own kernel stores it;
        // exp is computed once.
        assert!(unit.contains("rnd<bf16>(binary_op(0, t1, v1))"), "{unit}");
        assert_eq!(unit.matches("unary_op(2,").count(), 1, "{unit}");
        assert_eq!(unit.matches("st(&y").count(), 4, "{unit}");
        // Launched as dependents (`launch_chain`): each waits before it
        // works, or, early, after (every thread once either way).
        for body in unit.split("__global__ void ew_").skip(1) {
            let after = body.split_once('{').map_or("", |(_, b)| b).trim_start();
            assert!(
                after.starts_with("pdl_trigger();\n    if (!early) pdl_wait();"),
                "{body}"
            );
            assert!(after.contains("}\n    if (early) pdl_wait();\n}"), "{body}");
        }
        compiles(&unit);
    }

    /// A Llama step graph's rotary tables: the positions cast to f32 and
    /// viewed as a column, times a row of inverse frequencies, then cos
    /// and sin, each cast to bf16 and viewed for the rope. One kernel with
    /// two results; the positions are read as the column view (index_as),
    /// the product computed once for both.
    #[test]
    fn rotary_tables_become_one_kernel() {
        let t = Dim::sym("T");
        let ty = |d: DType, dims: Vec<Dim>| TensorType::new(d, dims);
        let c = Dim::constant;
        let types = vec![
            ty(DType::I64, vec![t.clone()]),               // 0 positions
            ty(DType::F32, vec![t.clone()]),               // 1 cast
            ty(DType::F32, vec![c(1), t.clone()]),         // 2 unsqueeze (view)
            ty(DType::F32, vec![t.clone(), c(1)]),         // 3 transpose (view)
            ty(DType::F32, vec![c(1), c(64)]),             // 4 inverse frequencies
            ty(DType::F32, vec![t.clone(), c(64)]),        // 5 product
            ty(DType::F32, vec![t.clone(), c(64)]),        // 6 cos
            ty(DType::F32, vec![t.clone(), c(64)]),        // 7 sin
            ty(DType::BF16, vec![t.clone(), c(64)]),       // 8 cast
            ty(DType::BF16, vec![t.clone(), c(64)]),       // 9 cast
            ty(DType::BF16, vec![c(1), t.clone(), c(64)]), // 10 view (output)
            ty(DType::BF16, vec![c(1), t.clone(), c(64)]), // 11 view (output)
        ];
        let cast = |to| Op::Cast(Cast { to });
        let mut steps = vec![
            step(cast(DType::F32), Kernel::Cast, &[0], 1),
            view(1, 2),
            view(2, 3),
            step(Op::Binary(BinaryKind::Mul), Kernel::Binary, &[4, 3], 5),
            step(Op::Unary(UnaryKind::Cos), Kernel::Unary, &[5], 6),
            step(Op::Unary(UnaryKind::Sin), Kernel::Unary, &[5], 7),
            step(cast(DType::BF16), Kernel::Cast, &[6], 8),
            step(cast(DType::BF16), Kernel::Cast, &[7], 9),
            view(8, 10),
            view(9, 11),
        ];
        let outputs: HashSet<usize> = [10, 11].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        let net: i64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(net, -5, "{counts:?}");
        // The kernel, then the two views of its results.
        let left: Vec<(&[usize], &[usize])> = steps.iter().map(|s| (&s.args[..], &s.outs[..])).collect();
        assert_eq!(steps.len(), 3, "{left:?}");
        let s = &steps[0];
        assert_eq!((&s.args[..], &s.outs[..]), (&[0, 4][..], &[8, 9][..]));
        let chain = s.chain.as_ref().unwrap();
        assert_eq!((chain.ops, &chain.index_as[..]), (6, &[3, 4][..]));
        assert_eq!((&steps[1].args[..], &steps[2].args[..]), (&[8][..], &[9][..]));
        let unit = super::unit(&steps).unwrap();
        assert!(unit.contains("rnd<float>(binary_op(2, v1, t0))"), "{unit}");
        assert_eq!(unit.matches("binary_op(2,").count(), 1, "{unit}");
        compiles(&unit);
    }

    /// A value read in two layouts by one step stays stored: `pos[i] -
    /// pos[j]` from a cast row viewed as a column and as a row (an
    /// ALiBi-like pattern); inlining it would compute one layout for both.
    /// `exp(x)` read through a column view by a product and as a row by
    /// the add after it is recomputed in each, in its own layout, and the
    /// add does not take in the product (which would mix the two).
    #[test]
    fn a_value_read_in_two_layouts_is_not_inlined() {
        let t = Dim::sym("T");
        let ty = |d: DType, dims: Vec<Dim>| TensorType::new(d, dims);
        let c = Dim::constant;
        let types = vec![
            ty(DType::I64, vec![t.clone()]),            // 0 positions
            ty(DType::F32, vec![t.clone()]),            // 1 cast
            ty(DType::F32, vec![t.clone(), c(1)]),      // 2 column view
            ty(DType::F32, vec![c(1), t.clone()]),      // 3 row view
            ty(DType::F32, vec![t.clone(), t.clone()]), // 4 column - row
        ];
        let cast = |to| Op::Cast(Cast { to });
        let mut steps = vec![
            step(cast(DType::F32), Kernel::Cast, &[0], 1),
            view(1, 2),
            view(1, 3),
            step(Op::Binary(BinaryKind::Sub), Kernel::Binary, &[2, 3], 4),
        ];
        let outputs: HashSet<usize> = [4].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert!(counts.is_empty(), "{counts:?}");
        assert_eq!(steps.len(), 4);

        let v = |n| ty(DType::F32, vec![c(n)]);
        let types = vec![
            v(64),                              // 0 x
            v(64),                              // 1 exp(x)
            ty(DType::F32, vec![c(64), c(1)]),  // 2 column view
            ty(DType::F32, vec![c(1), c(64)]),  // 3 y
            ty(DType::F32, vec![c(64), c(64)]), // 4 column * y
            ty(DType::F32, vec![c(64), c(64)]), // 5 + exp(x) as a row
        ];
        let mut steps = vec![
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[0], 1),
            view(1, 2),
            step(Op::Binary(BinaryKind::Mul), Kernel::Binary, &[2, 3], 4),
            step(Op::Binary(BinaryKind::Add), Kernel::Binary, &[4, 1], 5),
        ];
        let outputs: HashSet<usize> = [5].into();
        super::fuse_chains(&mut steps, &types, &outputs);
        let got: Vec<(&[usize], &[usize], &[usize])> = steps
            .iter()
            .map(|s| {
                (
                    &s.args[..],
                    &s.outs[..],
                    s.chain.as_ref().map_or(&[][..], |c| &c.index_as[..]),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (&[0, 3][..], &[4][..], &[2, 3][..]),
                (&[0, 4][..], &[5][..], &[1, 4][..])
            ]
        );
    }

    /// A value written in place between two elementwise steps (a KV cache
    /// and the attention that writes it) keeps them apart: exp(cache)
    /// before the write is not recomputed after it (in neg), and
    /// abs(cache) after it does not join exp's kernel; neg and abs, both
    /// after the write, become one kernel.
    #[test]
    fn chains_do_not_move_reads_past_an_in_place_write() {
        let m = TensorType::new(DType::F32, Shape::of(&[4, 8]));
        let types = vec![m.clone(); 6];
        let attention = Step {
            exec: Exec::Kernel(Kernel::PagedAttention, Vec::new()),
            args: vec![3, 3, 3, 0],
            ..step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[], 2)
        };
        let mut steps = vec![
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[0], 1),
            attention,
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[1], 4),
            step(Op::Unary(UnaryKind::Abs), Kernel::Unary, &[0], 5),
        ];
        let outputs: HashSet<usize> = [4, 5].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        let net: i64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(net, -1, "{counts:?}");
        assert_eq!(steps.len(), 3);
        assert!(steps[0].chain.is_none() && steps[0].outs == [1]);
        let merged = &steps[2];
        assert_eq!((&merged.args[..], &merged.outs[..]), (&[1, 0][..], &[4, 5][..]));
    }

    /// A cache an attention step returns shares its operand's memory: two
    /// attention steps that write the same cache (6, 7 and 10, 11 are the
    /// caches each returns) keep exp(6), read before the second write,
    /// from being recomputed in neg's kernel after it.
    #[test]
    fn a_returned_cache_is_written_by_a_later_write_to_its_memory() {
        let m = TensorType::new(DType::F32, Shape::of(&[4, 8]));
        let types = vec![m.clone(); 13];
        let attention = |outs: &[usize]| Step {
            exec: Exec::Kernel(Kernel::PagedAttention, Vec::new()),
            args: vec![3, 3, 3, 0, 1],
            outs: outs.to_vec(),
            ..step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[], outs[0])
        };
        let mut steps = vec![
            attention(&[2, 6, 7]),
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[6], 8),
            attention(&[9, 10, 11]),
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[8], 12),
        ];
        let outputs: HashSet<usize> = [12].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert!(counts.is_empty(), "{counts:?}");
        assert_eq!(steps.len(), 4);
        // Without the second write the two become one kernel.
        let mut steps = vec![
            attention(&[2, 6, 7]),
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[6], 8),
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[8], 12),
        ];
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<i64>(), -1, "{counts:?}");
        assert_eq!(steps.len(), 2);
    }

    /// A sum of ten inputs folds into one chain only up to `MAX_LEAVES`
    /// operands; a chain read broadcast is recomputed (a row's exp, read
    /// by an add over a matrix); a graph output is stored, not inlined.
    #[test]
    fn chains_stop_at_the_operand_bound_and_outputs() {
        let mat = TensorType::new(DType::F32, Shape::of(&[3, 8]));
        let row = TensorType::new(DType::F32, Shape::of(&[8]));
        // Values 0..10: inputs; 10..19: the running sums s_i = s_{i-1} + x_{i+1}.
        let types = vec![mat.clone(); 19];
        let add = Op::Binary(BinaryKind::Add);
        let mut steps = vec![step(add.clone(), Kernel::Binary, &[0, 1], 10)];
        for i in 1..9 {
            steps.push(step(add.clone(), Kernel::Binary, &[9 + i, i + 1], 10 + i));
        }
        let outputs: HashSet<usize> = [18].into();
        super::fuse_chains(&mut steps, &types, &outputs);
        let ends: Vec<(usize, usize)> = steps
            .iter()
            .filter_map(|s| s.chain.as_ref().map(|c| (s.outs[0], c.ops)))
            .collect();
        // Eight operands: seven adds; the last two adds form a chain of
        // two, which reads the first's result (so they stay apart).
        assert_eq!(ends, vec![(16, 7), (18, 2)]);
        assert!(steps.iter().all(|s| s.args.len() <= super::MAX_LEAVES));

        // exp(row) feeds a broadcasting add: recomputed there, the row
        // indexed as exp's result is; add -> neg fuse; neg's result is a
        // graph output, so abs reads it stored.
        let types = vec![row.clone(), row, mat.clone(), mat.clone(), mat.clone(), mat];
        let mut steps = vec![
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[0], 1),
            step(add, Kernel::Binary, &[2, 1], 3),
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[3], 4),
            step(Op::Unary(UnaryKind::Abs), Kernel::Unary, &[4], 5),
        ];
        let outputs: HashSet<usize> = [4, 5].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert_eq!(steps.len(), 2, "{counts:?}");
        let chain = steps[0].chain.as_ref().unwrap();
        assert_eq!(
            (chain.ops, &steps[0].args[..], &chain.index_as[..]),
            (3, &[0, 2][..], &[1, 2][..])
        );
        assert_eq!(steps[1].args, vec![4]);
    }
}
