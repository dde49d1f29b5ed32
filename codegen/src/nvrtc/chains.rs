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

/// A generated kernel, on the step whose result it stores (its args are
/// the chain's operands).
#[derive(Clone, Debug)]
pub(super) struct EwChain {
    /// The kernel's name: `ew_` and a hash of its body.
    pub(super) name: String,
    /// The kernel's CUDA C (after `common.cuh`).
    pub(super) source: String,
    /// The elementwise ops it does.
    pub(super) ops: usize,
}

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

/// The CUDA C of the chain `members` (steps in order, the last one's
/// result stored) over `leaves`, under a name from its body.
fn generate(steps: &[Step], types: &[TensorType], members: &[usize], leaves: &[usize]) -> Option<EwChain> {
    let mut var: HashMap<usize, String> = HashMap::new();
    let mut params = String::new();
    let mut body = String::new();
    let _ = writeln!(body, "        i64 o[{}];", leaves.len());
    let _ = writeln!(body, "        ew_offsets<{}>(ix, i, o);", leaves.len());
    for (l, &v) in leaves.iter().enumerate() {
        let _ = write!(params, "const {}* __restrict__ a{l}, ", c_type(types[v].dtype)?);
        let _ = writeln!(body, "        const float v{l} = ld(&a{l}[o[{l}]]);");
        var.insert(v, format!("v{l}"));
    }
    for (t, &m) in members.iter().enumerate() {
        let s = &steps[m];
        let x: Vec<String> = s
            .args
            .iter()
            .map(|a| var.get(a).cloned())
            .collect::<Option<_>>()?;
        let out = c_type(types[s.outs[0]].dtype)?;
        let _ = writeln!(
            body,
            "        const float t{t} = rnd<{out}>({});",
            expression(&s.op, &x)?
        );
        var.insert(s.outs[0], format!("t{t}"));
    }
    let last = *members.last()?;
    let out = c_type(types[steps[last].outs[0]].dtype)?;
    let _ = writeln!(body, "        st(&y[i], t{});", members.len() - 1);
    let signature = format!("({params}{out}* __restrict__ y, i64 n, EwIndex ix)");
    let name = format!(
        "ew_{:016x}",
        super::compile::fnv1a(&[signature.as_bytes(), body.as_bytes()])
    );
    let source = format!(
        "extern \"C\" __global__ void {name}{signature} {{\n    \
         pdl_start();\n    \
         for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {{\n\
         {body}    }}\n}}\n"
    );
    Some(EwChain {
        name,
        source,
        ops: members.len(),
    })
}

/// Merges elementwise steps into chains, in place: a step takes in the
/// elementwise step that makes one of its operands when it is that value's
/// one reader, reads it unbroadcast (same shape as its own result) and the
/// value is not a graph output, while the chain reads at most
/// `MAX_LEAVES` values. Returns the counts to move in the summary (kernel
/// name, change).
pub(super) fn fuse_chains(
    steps: &mut Vec<Step>,
    types: &[TensorType],
    outputs: &HashSet<usize>,
) -> Vec<(&'static str, i64)> {
    // Runs before `fused_gemvs`, so no step reads more than its args yet.
    let uses = Uses::new(steps);
    // Each chain by the step that ends it: its members in order.
    let mut chains: HashMap<usize, Vec<usize>> = HashMap::new();
    let leaves_of = |members: &[usize], steps: &[Step]| -> Vec<usize> {
        let made: HashSet<usize> = members.iter().map(|&m| steps[m].outs[0]).collect();
        let mut v: Vec<usize> = Vec::new();
        for &m in members {
            for &a in &steps[m].args {
                if !made.contains(&a) && !v.contains(&a) {
                    v.push(a);
                }
            }
        }
        v
    };
    for c in 0..steps.len() {
        if !elementwise(&steps[c], types) {
            continue;
        }
        let out_shape = &types[steps[c].outs[0]].shape;
        let mut members = vec![c];
        for &a in &steps[c].args {
            let Some(&p) = uses.producer.get(&a) else { continue };
            let inline = p != c
                && chains.contains_key(&p)
                && uses.readers.get(&a).map(Vec::len) == Some(1)
                && !outputs.contains(&a)
                && types[a].shape == *out_shape;
            if !inline {
                continue;
            }
            let mut merged: Vec<usize> = chains[&p].clone();
            merged.extend(members.iter().copied());
            merged.sort_unstable();
            merged.dedup();
            if leaves_of(&merged, steps).len() <= MAX_LEAVES {
                chains.remove(&p);
                members = merged;
            }
        }
        chains.insert(c, members);
    }
    let mut counts = Vec::new();
    let mut removed: HashSet<usize> = HashSet::new();
    let mut ends: Vec<usize> = chains.keys().copied().filter(|e| chains[e].len() > 1).collect();
    ends.sort_unstable();
    for end in ends {
        let members = &chains[&end];
        let leaves = leaves_of(members, steps);
        let Some(chain) = generate(steps, types, members, &leaves) else {
            continue;
        };
        for &m in members {
            if let Exec::Kernel(k, _) = steps[m].exec {
                counts.push((k.name(), -1));
            }
        }
        counts.push((Kernel::EwChain.name(), 1));
        removed.extend(members.iter().copied().filter(|&m| m != end));
        let s = &mut steps[end];
        s.node = format!("{} (and {} elementwise ops before it)", s.node, chain.ops - 1);
        s.args = leaves;
        s.exec = Exec::Kernel(Kernel::EwChain, Vec::new());
        s.chain = Some(Box::new(chain));
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
        Step {
            node: format!("%{out}"),
            op,
            args: args.to_vec(),
            outs: vec![out],
            exec: Exec::Kernel(k, Vec::new()),
            cache_written: false,
            fused: None,
            deferred_to: None,
            also_reads: Vec::new(),
            chain: None,
        }
    }

    /// The rotary tables' shape of chain: `cast(cos(x))` and
    /// `cast(sin(x))` (x read twice, so not inlined), the first then added
    /// to a broadcast row; `exp(x)` read by two steps stays a kernel.
    #[test]
    fn single_reader_elementwise_steps_fuse_and_compile() {
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
            rows(DType::F32),                               // 8 neg(exp)
            rows(DType::F32),                               // 9 abs(exp)
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
        let chains: Vec<(&[usize], usize)> = steps
            .iter()
            .filter_map(|s| s.chain.as_ref().map(|c| (&s.args[..], c.ops)))
            .collect();
        assert_eq!(chains, vec![(&[0, 3][..], 3), (&[0][..], 2)]);
        // exp, neg and abs stay: exp's result has two readers.
        assert_eq!(steps.len(), 5);
        let net: i64 = counts.iter().map(|(_, n)| n).sum();
        assert_eq!(net, -3, "{counts:?}");
        let unit = super::unit(&steps).unwrap();
        assert_eq!(unit.matches("__global__ void ew_").count(), 2, "{unit}");
        // Each op rounds to its result type, as its own kernel stores it.
        assert!(unit.contains("rnd<bf16>(binary_op(0, t1, v1))"), "{unit}");
        // Launched as dependents (`launch!`): each waits before it works.
        for body in unit.split("__global__ void ew_").skip(1) {
            let after = body.split_once('{').map_or("", |(_, b)| b).trim_start();
            assert!(after.starts_with("pdl_start();"), "{body}");
        }
        let includes = super::super::compile::include_paths();
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } || includes.is_empty() {
            eprintln!("skipping the compile: no NVRTC or no CUDA headers (set CUDA_HOME)");
            return;
        }
        let mut options = vec!["--gpu-architecture=sm_90".to_string(), "--std=c++17".into()];
        options.extend(includes.iter().map(|d| format!("--include-path={d}")));
        let cubin =
            super::super::compile::nvrtc_cubin(&unit, &options).unwrap_or_else(|e| panic!("{e}\n{unit}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
    }

    /// A sum of ten inputs folds into one chain only up to `MAX_LEAVES`
    /// operands; an intermediate read with broadcasting (a row added to a
    /// matrix) or a graph output is stored, not inlined.
    #[test]
    fn chains_stop_at_the_operand_bound_broadcasts_and_outputs() {
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
        // Eight operands: seven adds; the last two adds form a chain of two.
        assert_eq!(ends, vec![(16, 7), (18, 2)]);
        assert!(steps.iter().all(|s| s.args.len() <= super::MAX_LEAVES));

        // exp(row) feeds a broadcasting add, so it is stored; add -> neg
        // fuse; neg's result is a graph output, so abs reads it stored.
        let types = vec![row.clone(), row, mat.clone(), mat.clone(), mat.clone(), mat];
        let mut steps = vec![
            step(Op::Unary(UnaryKind::Exp), Kernel::Unary, &[0], 1),
            step(add, Kernel::Binary, &[2, 1], 3),
            step(Op::Unary(UnaryKind::Neg), Kernel::Unary, &[3], 4),
            step(Op::Unary(UnaryKind::Abs), Kernel::Unary, &[4], 5),
        ];
        let outputs: HashSet<usize> = [4, 5].into();
        let counts = super::fuse_chains(&mut steps, &types, &outputs);
        assert_eq!(steps.len(), 3, "{counts:?}");
        assert_eq!(steps[1].chain.as_ref().map(|c| c.ops), Some(2));
        assert_eq!(steps[1].args, vec![2, 1]);
    }
}
