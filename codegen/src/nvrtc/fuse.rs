//! Fusions at lowering, where one kernel reads what the IR keeps as
//! separate ops: the gate/up split feeding SwiGLU, and the QKV split
//! feeding query/key RoPE and the paged-attention cache write. The split
//! copies, one of the two RoPE launches and the cache write disappear: a
//! Llama layer goes from 16 launches to 10. A matmul's bias add and the
//! tanh GELU after it or a linear become the GEMM's epilogue
//! (`gemm_epilogue`). The IR is left as it is; these are facts
//! about the CUDA kernels, not rewrites every target wants.
//! `OPTC_CUDA_FUSE=0` turns them off (to compare).
//!
//! `fused_gemvs` marks a third kind, decided per run: at decode batch
//! sizes, where each launch costs as much as its work, a linear's GEMV
//! does the RMSNorm (with its residual add) that made its input, and the
//! SwiGLU or the rope + cache write that reads its product. At larger
//! batches the steps run as before.

use std::collections::{HashMap, HashSet};

use optc_ir::dim::normalize_axis;
use optc_ir::ops::{BinaryKind, GeluApprox, Op};
use optc_ir::{Dim, TensorType};

use super::program::{Exec, FusedGemv, Step};
use super::select::Kernel;

/// Who writes and who reads each value.
pub(super) struct Uses {
    pub(super) producer: HashMap<usize, usize>,
    /// A step once for each operand slot that reads the value.
    pub(super) readers: HashMap<usize, Vec<usize>>,
}

impl Uses {
    pub(super) fn new(steps: &[Step]) -> Uses {
        let mut producer = HashMap::new();
        let mut readers: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, s) in steps.iter().enumerate() {
            for &o in &s.outs {
                producer.insert(o, i);
            }
            for &a in &s.args {
                readers.entry(a).or_default().push(i);
            }
        }
        Uses { producer, readers }
    }

    /// The value `v` views (through reshapes), or `v`.
    pub(super) fn root(&self, steps: &[Step], mut v: usize) -> usize {
        while let Some(&p) = self.producer.get(&v) {
            match steps[p].exec {
                Exec::View => v = steps[p].args[0],
                _ => break,
            }
        }
        v
    }

    /// The kernel step that produces `v`, if it is of kind `k`.
    fn kernel_producer(&self, steps: &[Step], v: usize, k: Kernel) -> Option<usize> {
        let p = *self.producer.get(&v)?;
        matches!(&steps[p].exec, Exec::Kernel(kk, _) if *kk == k).then_some(p)
    }

    /// Whether step `to` is the one reader of `v`, directly or through a
    /// chain of views, and `v` is not a graph output.
    fn read_only_by(&self, steps: &[Step], v: usize, to: usize, outputs: &HashSet<usize>) -> bool {
        if outputs.contains(&v) {
            return false;
        }
        match self.readers.get(&v).map(Vec::as_slice) {
            Some(&[r]) if r == to => true,
            Some(&[r]) if matches!(steps[r].exec, Exec::View) => {
                self.read_only_by(steps, steps[r].outs[0], to, outputs)
            }
            _ => false,
        }
    }
}

fn konst(d: &Dim) -> Option<usize> {
    d.as_const().and_then(|c| usize::try_from(c).ok())
}

/// The split step producing exactly `outs` along its input's last axis.
fn last_axis_split(steps: &[Step], types: &[TensorType], sp: usize, outs: &[usize]) -> bool {
    let s = &steps[sp];
    let Op::Split(o) = &s.op else { return false };
    let rank = types[s.args[0]].rank();
    s.outs == outs && normalize_axis(o.axis, rank).ok() == Some(rank.saturating_sub(1))
}

/// Rewrites `steps` in place; returns the counts to move in the summary
/// (kernel name, change).
pub(super) fn fuse(
    steps: &mut Vec<Step>,
    types: &[TensorType],
    outputs: &HashSet<usize>,
) -> Vec<(&'static str, i64)> {
    let mut removed: HashSet<usize> = HashSet::new();
    let mut counts = Vec::new();
    let uses = Uses::new(steps);
    for i in 0..steps.len() {
        if let Some(sp) = swiglu_split(steps, types, outputs, &uses, i) {
            steps[i].args = vec![steps[sp].args[0]];
            steps[i].exec = Exec::Kernel(Kernel::SwiGluSplit, Vec::new());
            removed.insert(sp);
            counts.extend([
                (Kernel::Split.name(), -1),
                (Kernel::SwiGlu.name(), -1),
                (Kernel::SwiGluSplit.name(), 1),
            ]);
        }
        if let Some((sp, rq, rk)) = rope_qkv_cache(steps, types, outputs, &uses, i) {
            let a = &steps[i].args;
            let args = vec![
                steps[sp].args[0],
                steps[rq].args[1],
                steps[rq].args[2],
                a[3],
                a[4],
                a[9],
            ];
            steps[rq].args = args;
            steps[rq].exec = Exec::Kernel(Kernel::RopeQkvCache, Vec::new());
            steps[i].cache_written = true;
            removed.extend([sp, rk]);
            counts.extend([
                (Kernel::Split.name(), -1),
                (Kernel::Rope.name(), -2),
                (Kernel::RopeQkvCache.name(), 1),
            ]);
        }
    }
    for i in 0..steps.len() {
        let Some(e) = gemm_epilogue(steps, types, outputs, &uses, i) else {
            continue;
        };
        if let Some((add, bias)) = e.bias {
            steps[i].args.push(bias);
            removed.insert(add);
            counts.push((Kernel::Binary.name(), -1));
        }
        if let Some((gelu, views)) = e.gelu {
            steps[i].gelu = true;
            removed.insert(gelu);
            removed.extend(views);
            counts.push((Kernel::Gelu.name(), -1));
        }
        steps[i].outs = vec![e.out];
    }
    if !removed.is_empty() {
        drop_fused(steps, &removed);
    }
    counts
}

/// What a GEMM's cuBLASLt epilogue takes over (`gemm_epilogue`).
struct GemmEpilogue {
    /// The bias add (its step, the bias).
    bias: Option<(usize, usize)>,
    /// The tanh GELU after it (its step, the views between).
    gelu: Option<(usize, Vec<usize>)>,
    /// The value the GEMM then writes.
    out: usize,
}

/// A plain 2-D `matmul` (cuBLASLt, one batch) whose product is read only
/// by the add of a bias (a vector as wide as the product's rows), then
/// only by a tanh GELU, through reshapes: each is cuBLASLt's epilogue
/// (BIAS, GELU, GELU_BIAS) instead of a launch of its own. A `linear`
/// (GPT-2's `Conv1D` once `matmul_to_linear` has run, with its bias in)
/// takes the GELU the same way; its decode GEMVs apply it at the store.
/// Both apply them to the f32 sums before the one rounding, where the
/// interpreter rounds the product first (the same in f32). Graph outputs
/// are left alone.
fn gemm_epilogue(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    i: usize,
) -> Option<GemmEpilogue> {
    let s = &steps[i];
    // A linear (its bias is its own) takes only the GELU.
    let linear = matches!(s.exec, Exec::Kernel(Kernel::Linear, _));
    let plain_matmul = matches!(s.exec, Exec::Kernel(Kernel::MatMul, _))
        && s.args.len() == 2
        && s.args.iter().all(|&a| types[a].rank() == 2);
    if !linear && !plain_matmul {
        return None;
    }
    let product = *s.outs.first()?;
    let ty = &types[product];
    let mut out = product;
    let mut bias = None;
    let bias_add = reader_past_views(steps, outputs, uses, product).filter(|(_, v)| v.is_empty() && !linear);
    if let Some((a, _)) = bias_add {
        let add = &steps[a];
        let is_add = matches!(add.exec, Exec::Kernel(Kernel::Binary, _))
            && matches!(add.op, Op::Binary(BinaryKind::Add))
            && add.args.len() == 2;
        if is_add {
            let other = if add.args[0] == product {
                add.args[1]
            } else {
                add.args[0]
            };
            let b = &types[other];
            let width = ty.shape.0.last().and_then(konst);
            let vector = b.rank() == 1 && b.dtype == ty.dtype && b.shape.0.first().and_then(konst) == width;
            // The matmul reads the bias now: it must be ready by then.
            let ready = uses.producer.get(&other).is_none_or(|&p| p < i);
            if vector && ready && width.is_some() && other != product && types[add.outs[0]] == *ty {
                bias = Some((a, other));
                out = add.outs[0];
            }
        }
    }
    // Through reshapes to a tanh GELU of the same element type.
    let gelu = reader_past_views(steps, outputs, uses, out).filter(|&(g, _)| {
        matches!(&steps[g].op, Op::Gelu(o) if o.approximate == GeluApprox::Tanh)
            && matches!(steps[g].exec, Exec::Kernel(Kernel::Gelu, _))
            && types[steps[g].outs[0]].dtype == ty.dtype
    });
    if let Some((g, _)) = &gelu {
        out = steps[*g].outs[0];
    }
    (bias.is_some() || gelu.is_some()).then_some(GemmEpilogue { bias, gelu, out })
}

/// Drops the `removed` steps and the views of what they produced.
pub(super) fn drop_fused(steps: &mut Vec<Step>, removed: &HashSet<usize>) {
    // Drop the fused steps and the views of what they produced, unless a
    // kept step now produces it (a generated kernel storing several).
    let made_by_kept: HashSet<usize> = steps
        .iter()
        .enumerate()
        .filter(|(i, s)| !removed.contains(i) && !matches!(s.exec, Exec::View))
        .flat_map(|(_, s)| s.outs.iter().copied())
        .collect();
    let mut dead: HashSet<usize> = HashSet::new();
    let mut kept = Vec::with_capacity(steps.len());
    for (i, s) in std::mem::take(steps).into_iter().enumerate() {
        let is_dead = removed.contains(&i) || (matches!(s.exec, Exec::View) && dead.contains(&s.args[0]));
        if is_dead {
            dead.extend(s.outs.iter().copied().filter(|o| !made_by_kept.contains(o)));
        } else {
            kept.push(s);
        }
    }
    *steps = kept;
}

/// `swiglu(g, u)` where `g, u` are the two halves of one last-axis split
/// that nothing else reads: the split step.
fn swiglu_split(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    i: usize,
) -> Option<usize> {
    let s = &steps[i];
    if !matches!(s.exec, Exec::Kernel(Kernel::SwiGlu, _)) || s.args.len() != 2 {
        return None;
    }
    let (g, u) = (s.args[0], s.args[1]);
    let sp = uses.kernel_producer(steps, g, Kernel::Split)?;
    let ok = last_axis_split(steps, types, sp, &[g, u])
        && types[g] == types[u]
        && [g, u]
            .iter()
            .all(|&v| !outputs.contains(&v) && uses.readers.get(&v).map(Vec::as_slice) == Some(&[i][..]));
    ok.then_some(sp)
}

/// `paged_attention(q, k, v, ...)` with `q = rope(split.0)`,
/// `k = rope(split.1)` (one cos/sin pair), `v = split.2` (through reshapes,
/// read by nothing else), heads and head dims constant, cos/sin rows per
/// token: the (split, query rope, key rope) steps.
fn rope_qkv_cache(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    p: usize,
) -> Option<(usize, usize, usize)> {
    let s = &steps[p];
    if !matches!(s.exec, Exec::Kernel(Kernel::PagedAttention, _)) || s.args.len() < 10 {
        return None;
    }
    let (q, k, v) = (s.args[0], s.args[1], s.args[2]);
    let (q_out, k_out, v_root) = (uses.root(steps, q), uses.root(steps, k), uses.root(steps, v));
    let rq = uses.kernel_producer(steps, q_out, Kernel::Rope)?;
    let rk = uses.kernel_producer(steps, k_out, Kernel::Rope)?;
    let (Op::Rope(oq), Op::Rope(ok)) = (&steps[rq].op, &steps[rk].op) else {
        return None;
    };
    let (xq, xk) = (steps[rq].args[0], steps[rk].args[0]);
    let (xq_root, xk_root) = (uses.root(steps, xq), uses.root(steps, xk));
    let sp = uses.kernel_producer(steps, v_root, Kernel::Split)?;
    let same_tables = steps[rq].args[1..] == steps[rk].args[1..] && oq.interleaved == ok.interleaved;
    if !same_tables || !last_axis_split(steps, types, sp, &[xq_root, xk_root, v_root]) {
        return None;
    }
    let only = |v: usize, to: usize| uses.read_only_by(steps, v, to, outputs);
    if !(only(xq_root, rq) && only(xk_root, rk) && only(v_root, p) && only(q_out, p) && only(k_out, p)) {
        return None;
    }
    // [T, heads, head dim] with constant heads and head dims.
    let heads = |v: usize| -> Option<(usize, usize)> {
        let d = types[v].shape.dims();
        (d.len() == 3).then_some(())?;
        Some((konst(&d[1])?, konst(&d[2])?))
    };
    let ((hq, dq), (hkv, dk), (hv, dv)) = (heads(q)?, heads(k)?, heads(v)?);
    let width = konst(types[steps[sp].args[0]].shape.dims().last()?)?;
    if dq != dk || hv != hkv || width != hq * dq + hkv * dk + hkv * dv {
        return None;
    }
    // cos/sin: rows of r per token, broadcast over the heads axis.
    let cos = &types[steps[rq].args[1]];
    if types[steps[rq].args[2]] != *cos {
        return None;
    }
    let r = konst(cos.shape.dims().last()?)?;
    if r > dq || r % 2 != 0 {
        return None;
    }
    for (x, h) in [(xq, hq), (xk, hkv)] {
        let xd = types[x].shape.dims();
        let cd = cos.shape.dims();
        // Same rank: every leading axis but the heads one is cos/sin's too.
        if xd.len() < 2 || cd.len() != xd.len() || konst(&xd[xd.len() - 1]) != Some(dq) {
            return None;
        }
        let heads_axis = xd.len() - 2;
        if konst(&xd[heads_axis]) != Some(h) {
            return None;
        }
        let fits = (0..xd.len() - 1).all(|j| {
            if j == heads_axis {
                konst(&cd[j]) == Some(1)
            } else {
                cd[j] == xd[j]
            }
        });
        if !fits {
            return None;
        }
    }
    Some((sp, rq, rk))
}

/// How many linears' GEMVs do each kind of neighbouring work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct GemvFusions {
    /// The (add+)RMSNorm that makes x.
    pub(super) norms: usize,
    /// The split SwiGLU that reads the product.
    pub(super) glus: usize,
    /// The rope + KV cache write (`Kernel::RopeQkvCache`) that reads the
    /// QKV product.
    pub(super) ropes: usize,
}

/// Marks the linears whose GEMV may do a neighbour's work: the RMSNorm or
/// add+RMSNorm that makes x, and the split SwiGLU or the rope + cache
/// write that reads the product, when nothing else reads the value between
/// them (views aside). The linear keeps the norm's operands and results
/// alive until it runs; the norm step gets `deferred_to`.
pub(super) fn fused_gemvs(steps: &mut [Step], types: &[TensorType], outputs: &HashSet<usize>) -> GemvFusions {
    let uses = Uses::new(steps);
    let mut count = GemvFusions::default();
    for li in 0..steps.len() {
        // A GELU epilogue (`gemm_epilogue`) leaves only the plain GEMV.
        if !matches!(steps[li].exec, Exec::Kernel(Kernel::Linear, _)) || steps[li].gelu {
            continue;
        }
        let glu = fusable_glu(steps, types, outputs, &uses, li);
        let rope = fusable_rope(steps, types, outputs, &uses, li);
        // Only the plain GEMV's fill gathers rows.
        let norm = fusable_norm(steps, types, outputs, &uses, li)
            .filter(|&(_, gather)| gather.is_none() || (glu.is_none() && rope.is_none()));
        if norm.is_none() && glu.is_none() && rope.is_none() {
            continue;
        }
        if let Some((p, gather)) = norm {
            let mut reads: Vec<usize> = steps[p].args.iter().chain(&steps[p].outs).copied().collect();
            if let Some(g) = gather {
                reads.extend(steps[g].args.iter().chain(&steps[g].outs));
                steps[g].deferred_to = Some(li);
            }
            steps[li].also_reads = reads;
            steps[p].deferred_to = Some(li);
            count.norms += 1;
        }
        count.glus += usize::from(glu.is_some());
        count.ropes += usize::from(rope.is_some());
        steps[li].fused = Some(FusedGemv {
            norm: norm.map(|(p, _)| p),
            gather: norm.and_then(|(_, g)| g),
            glu,
            rope,
            fns: Vec::new(),
        });
    }
    count
}

/// The RMSNorm or add+RMSNorm step whose normalised result is linear
/// `li`'s x and nothing else's, with a per-column scale if any; or whose
/// rows an index_select picks for x (the logits rows before the LM head),
/// with that step, when nothing reads the norm's sum.
fn fusable_norm(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    li: usize,
) -> Option<(usize, Option<usize>)> {
    let x0 = uses.root(steps, steps[li].args[0]);
    let gather = row_gather(steps, types, outputs, uses, li, x0);
    let (x, to) = match gather {
        Some(g) => (uses.root(steps, steps[g].args[0]), g),
        None => (x0, li),
    };
    let p = *uses.producer.get(&x)?;
    let (y, scale) = match steps[p].exec {
        Exec::Kernel(Kernel::RmsNorm, _) => (steps[p].outs[0], steps[p].args.get(1)),
        Exec::Kernel(Kernel::AddRmsNorm, _) => (steps[p].outs[1], steps[p].args.get(2)),
        _ => return None,
    };
    let k = konst(types[y].shape.dims().last()?)?;
    let scale_ok = scale.is_none_or(|&w| types[w].shape.as_consts() == Some(vec![k as i64]));
    // Gathered rows leave the norm's other rows unmade: nothing may read
    // its sum.
    let sum_unread = gather.is_none()
        || steps[p].outs.len() == 1
        || (!outputs.contains(&steps[p].outs[0]) && !uses.readers.contains_key(&steps[p].outs[0]));
    // The GEMV stores the sum when it runs: nothing may read it before
    // (a generated chain grouped ahead of the linear, say).
    let sum_in_time = steps[p].outs.len() == 1 || read_after(steps, uses, steps[p].outs[0], li);
    (y == x
        && scale_ok
        && sum_unread
        && sum_in_time
        && steps[p].deferred_to.is_none()
        && uses.read_only_by(steps, y, to, outputs))
    .then_some((p, gather))
}

/// Whether every step that reads `v`, directly or through views, comes
/// after step `li`.
fn read_after(steps: &[Step], uses: &Uses, v: usize, li: usize) -> bool {
    uses.readers.get(&v).is_none_or(|rs| {
        rs.iter().all(|&r| match steps[r].exec {
            Exec::View => read_after(steps, uses, steps[r].outs[0], li),
            _ => r > li,
        })
    })
}

/// The index_select step that makes linear `li`'s x (`x`) from rows of a
/// matrix (axis -2, nothing but ones before it), read by nothing else.
fn row_gather(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    li: usize,
    x: usize,
) -> Option<usize> {
    let g = uses.kernel_producer(steps, x, Kernel::IndexSelect)?;
    let Op::IndexSelect(o) = &steps[g].op else {
        return None;
    };
    let dims = types[steps[g].args[0]].shape.dims();
    let rows_axis = normalize_axis(o.axis, dims.len()).ok()? + 2 == dims.len();
    let ones_before = dims[..dims.len().saturating_sub(2)]
        .iter()
        .all(|d| konst(d) == Some(1));
    (rows_axis && ones_before && steps[g].deferred_to.is_none() && uses.read_only_by(steps, x, li, outputs))
        .then_some(g)
}

/// The rope + cache write step (`Kernel::RopeQkvCache`) that is the one
/// reader of linear `li`'s product, whose other operands (cos, sin, the
/// caches, the slots) are ready when the linear runs.
fn fusable_rope(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    li: usize,
) -> Option<usize> {
    let y = steps[li].outs[0];
    let s = sole_reader(steps, outputs, uses, y, Kernel::RopeQkvCache)?;
    let rope = &steps[s];
    if uses.root(steps, rope.args[0]) != y {
        return None;
    }
    // The GEMV reads them through the buffers they view (`owner`).
    let ready = rope.args[1..]
        .iter()
        .all(|&a| uses.producer.get(&uses.root(steps, a)).is_none_or(|&p| p < li));
    let rows = konst(types[steps[li].args[1]].shape.dims().first()?)?;
    (ready && rows % 2 == 0).then_some(s)
}

/// The kernel step of kind `k` that is the one reader of `v` (not a graph
/// output), directly or at the end of a chain of views.
fn sole_reader(steps: &[Step], outputs: &HashSet<usize>, uses: &Uses, v: usize, k: Kernel) -> Option<usize> {
    let (s, _) = reader_past_views(steps, outputs, uses, v)?;
    matches!(&steps[s].exec, Exec::Kernel(kk, _) if *kk == k).then_some(s)
}

/// The one step past views that reads `v`, and those views: `v` and each
/// view's value read by one step and no graph output.
fn reader_past_views(
    steps: &[Step],
    outputs: &HashSet<usize>,
    uses: &Uses,
    v: usize,
) -> Option<(usize, Vec<usize>)> {
    let mut views = Vec::new();
    let mut v = v;
    loop {
        let &[r] = uses.readers.get(&v)?.as_slice() else {
            return None;
        };
        if outputs.contains(&v) {
            return None;
        }
        if !matches!(steps[r].exec, Exec::View) {
            return Some((r, views));
        }
        views.push(r);
        v = steps[r].outs[0];
    }
}

/// The split SwiGLU step that is the one reader of linear `li`'s product
/// (rows of 2f: gate, then up), for a weight of 2f rows.
fn fusable_glu(
    steps: &[Step],
    types: &[TensorType],
    outputs: &HashSet<usize>,
    uses: &Uses,
    li: usize,
) -> Option<usize> {
    let y = steps[li].outs[0];
    let s = sole_reader(steps, outputs, uses, y, Kernel::SwiGluSplit)?;
    let f = konst(types[steps[s].outs[0]].shape.dims().last()?)?;
    let rows = konst(types[steps[li].args[1]].shape.dims().first()?)?;
    (rows == 2 * f && uses.root(steps, steps[s].args[0]) == y).then_some(s)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use optc_ir::ops::{AddRmsNorm, BinaryKind, Linear, Op};
    use optc_ir::{DType, Dim, TensorType};

    use super::super::program::{Exec, Step};
    use super::super::select::Kernel;

    fn step(op: Op, k: Kernel, args: &[usize], outs: &[usize]) -> Step {
        Step::new(
            format!("%{}", outs[0]),
            op,
            args.to_vec(),
            outs.to_vec(),
            Exec::Kernel(k, Vec::new()),
        )
    }

    /// An add+RMSNorm's sum is stored by the GEMV that takes the norm, when
    /// it runs: a step reading the sum before that linear keeps the norm a
    /// kernel of its own; read after it, the norm goes into the GEMV.
    #[test]
    fn a_norm_whose_sum_is_read_before_its_linear_stays_apart() {
        let t = Dim::sym("T");
        let row = |n: i64| TensorType::new(DType::BF16, vec![t.clone(), Dim::constant(n)]);
        let types = vec![
            row(64),                                                                  // 0 a
            row(64),                                                                  // 1 r
            TensorType::new(DType::BF16, vec![Dim::constant(64)]),                    // 2 scale
            row(64),                                                                  // 3 sum
            row(64),                                                                  // 4 y
            TensorType::new(DType::BF16, vec![Dim::constant(32), Dim::constant(64)]), // 5 w
            row(32),                                                                  // 6 linear
            row(64),                                                                  // 7 sum + a
        ];
        let norm = Op::AddRmsNorm(AddRmsNorm { axis: -1, eps: 1e-5 });
        let plan = |sum_reader_first: bool| {
            let norm = step(norm.clone(), Kernel::AddRmsNorm, &[0, 1, 2], &[3, 4]);
            let lin = step(Op::Linear(Linear), Kernel::Linear, &[4, 5], &[6]);
            let add = step(Op::Binary(BinaryKind::Add), Kernel::Binary, &[3, 0], &[7]);
            let mut steps = if sum_reader_first {
                vec![norm, add, lin]
            } else {
                vec![norm, lin, add]
            };
            let outputs: HashSet<usize> = [6, 7].into();
            let n = super::fused_gemvs(&mut steps, &types, &outputs);
            (n.norms, steps[0].deferred_to)
        };
        assert_eq!(plan(false), (1, Some(1)));
        assert_eq!(plan(true), (0, None));
    }
}
