//! Which kernel runs an op: the ops and dtypes the CUDA kernels cover,
//! and the kernel functions (by name in the NVRTC module) a step launches.

use optc_ir::dim::normalize_axis;
use optc_ir::ops::{BinaryKind, Op, UnaryKind};
use optc_ir::{DType, TensorType};

use optc_kernels::cuda as src;

use super::strided::MAX_RANK;

/// How many of `UnaryKind::ALL` / `BinaryKind::ALL` (in order) the CUDA
/// elementwise kernels implement.
const CUDA_UNARY_KINDS: usize = 14;
const CUDA_BINARY_KINDS: usize = 7;

/// The kernel family an op lowers to.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Kernel {
    Linear,
    MatMul,
    RmsNorm,
    AddRmsNorm,
    LayerNorm,
    Rope,
    SwiGlu,
    /// SwiGLU over the two halves of one tensor (a split fused away).
    SwiGluSplit,
    /// Query/key RoPE and the KV cache write, straight from the fused QKV
    /// projection (the split copies fused away; see `fuse.rs`).
    RopeQkvCache,
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
    /// A chain of elementwise ops in one generated kernel (`chains.rs`).
    EwChain,
}

impl Kernel {
    pub(super) fn name(self) -> &'static str {
        match self {
            Kernel::Linear => "linear (cuBLASLt)",
            Kernel::MatMul => "matmul (cuBLASLt)",
            Kernel::RmsNorm => "rms_norm",
            Kernel::AddRmsNorm => "add_rms_norm",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Rope => "rope",
            Kernel::SwiGlu => "swiglu",
            Kernel::SwiGluSplit => "swiglu (split fused)",
            Kernel::RopeQkvCache => "rope + kv cache write (split fused)",
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
            Kernel::EwChain => "elementwise chain (generated)",
        }
    }
}

/// A float dtype kernels take, by its suffix in kernel names.
pub(super) fn float_name(d: DType) -> Option<&'static str> {
    match d {
        DType::F32 => Some("f32"),
        DType::BF16 => Some("bf16"),
        DType::F16 => Some("f16"),
        _ => None,
    }
}

/// Raw-word suffix for moving elements of `d` (`None` for sub-byte types).
pub(super) fn word_name(d: DType) -> Option<&'static str> {
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
pub(super) fn choose(op: &Op, args: &[&TensorType], outs: &[TensorType]) -> Option<Kernel> {
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
        Op::AddRmsNorm(o) if fl && same && last_axis(o.axis, args[0]) && args[0] == args[1] => {
            Kernel::AddRmsNorm
        }
        Op::LayerNorm(o) if fl && same && last_axis(o.axis, args[0]) => Kernel::LayerNorm,
        Op::Rope(_) if fl && same && ranked && args[1].rank() >= 1 && args[1].rank() <= args[0].rank() => {
            Kernel::Rope
        }
        Op::SwiGlu(_) if fl && same && args[0] == args[1] => Kernel::SwiGlu,
        Op::Gelu(_) if fl && same => Kernel::Gelu,
        // The CUDA kernels know the kinds by their position in `ALL`, up to
        // the ones the LLM step graphs use.
        Op::Unary(u) if fl && same && UnaryKind::ALL[..CUDA_UNARY_KINDS].contains(u) => Kernel::Unary,
        Op::Binary(b) if fl && same && ranked && BinaryKind::ALL[..CUDA_BINARY_KINDS].contains(b) => {
            Kernel::Binary
        }
        Op::Softmax(s) if fl && same && last_axis(s.axis, args[0]) => Kernel::Softmax,
        Op::Cast(_) if fl && (float_name(args[0].dtype).is_some() || args[0].dtype == DType::I64) => {
            Kernel::Cast
        }
        Op::Transpose(_) if words && same && ranked => Kernel::Transpose,
        Op::Split(_) if words && same && ranked => Kernel::Split,
        Op::Slice(s) if words && same && ranked && s.step > 0 => Kernel::Slice,
        Op::Concat(_) if words && same && ranked => Kernel::Concat,
        Op::Expand(_) if words && same && ranked => Kernel::Expand,
        Op::IndexSelect(_) if words && args[0].dtype == out.dtype && args[1].dtype == DType::I64 => {
            Kernel::IndexSelect
        }
        Op::Embedding(_) if words && args[0].dtype == out.dtype && args[1].dtype == DType::I64 => {
            Kernel::Embedding
        }
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

/// The instantiation lines (of the kernel sources' `OPTC_*` macros) the
/// functions of `function_names(k, .., out)` need besides the ones every
/// program compiles. Paged attention's depend on its head dim and are
/// added where its step is lowered.
pub(super) fn instances_for(k: Kernel, out: &TensorType) -> Vec<String> {
    match (k, float_name(out.dtype)) {
        (Kernel::Linear, Some(f)) => src::gemv_instances(f),
        _ => Vec::new(),
    }
}

/// The name of a linear's kernel for a step whose tanh GELU it applies
/// (`fuse::gemm_epilogue`): the GEMVs' `gemv_gelu_*` instances, which
/// store through the GELU; the other kernels (the skinny GEMM and the
/// picking ring, which the launcher passes over for such a step) as they are.
pub(super) fn gelu_gemv(name: &str) -> String {
    match name.strip_prefix("gemv_") {
        Some(rest) if !rest.starts_with("ring_argmax_") => format!("gemv_gelu_{rest}"),
        _ => name.to_string(),
    }
}

/// The kernel functions a step launches.
pub(super) fn function_names(k: Kernel, args: &[&TensorType], out: &TensorType) -> Vec<String> {
    let f = float_name(out.dtype).unwrap_or("f32");
    let w = word_name(out.dtype).unwrap_or("b4");
    match k {
        // The GEMV kernels for decode batches (1 row; up to 4), then for
        // 16-bit types the tensor-core kernels for up to 128 rows;
        // cuBLASLt otherwise.
        Kernel::Linear => {
            let mut v = vec![format!("gemv_{f}_m1"), format!("gemv_{f}_m4")];
            if matches!(f, "bf16" | "f16") {
                v.extend(
                    src::SKINNY_VARIANTS
                        .iter()
                        .map(|(n, _)| format!("skinny_{f}_{n}")),
                );
                // At `GEMV_RING_AT`: the one-row ring GEMV for big weights,
                // then the same picking the greedy token of its row.
                v.push(format!("gemv_ring_{f}_m1"));
                v.push(format!("gemv_ring_argmax_{f}_m1"));
            }
            v
        }
        // Generated: the step carries its kernel's name (`Step::chain`).
        Kernel::MatMul | Kernel::EwChain => vec![],
        // The general kernel, then the register-resident ones by runs of
        // eight per thread (1, 2, 4).
        Kernel::RmsNorm | Kernel::AddRmsNorm => {
            let n = if k == Kernel::RmsNorm {
                "rms_norm"
            } else {
                "add_rms_norm"
            };
            let mut v = vec![format!("{n}_{f}")];
            v.extend([1, 2, 4].map(|r| format!("{n}_vec{r}_{f}")));
            v
        }
        Kernel::LayerNorm => vec![format!("layer_norm_{f}")],
        Kernel::Rope => vec![format!("rope_{f}")],
        Kernel::SwiGlu => vec![format!("swiglu_{f}")],
        Kernel::SwiGluSplit => vec![format!("swiglu_split_{f}")],
        Kernel::RopeQkvCache => vec![format!("rope_qkv_cache_{f}")],
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
        Kernel::IndexSelect => vec![format!("gather_{w}")],
        // Then the gather that takes a few ids from the previous run's
        // picks (`picked_id` in layout.cu).
        Kernel::Embedding => vec![format!("gather_{w}"), format!("gather_picked_{w}")],
        Kernel::PagedAttention => {
            let d = args[0]
                .shape
                .dims()
                .last()
                .and_then(|d| d.as_const())
                .unwrap_or(0);
            vec![
                format!("cache_write_{f}"),
                format!("paged_attention_{f}_d{d}"),
                format!("attention_combine_{f}"),
                format!("paged_decode_{f}_d{d}"),
                format!("paged_decode8_{f}_d{d}"),
                format!("paged_decode_rope_{f}_d{d}"),
            ]
        }
    }
}

/// Is this op evaluated at lowering? Only when every operand is constant
/// and the result's shape is known.
pub(super) fn foldable(op: &Op, outs: &[TensorType]) -> bool {
    !matches!(op, Op::PagedAttention(_)) && outs.iter().all(|t| t.shape.as_consts().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_cover_the_step_graph_ops() {
        let t = |d: DType, s: &[i64]| {
            TensorType::new(d, s.iter().map(|&x| optc_ir::Dim::from(x)).collect::<Vec<_>>())
        };
        let x = t(DType::BF16, &[1, 4, 64]);
        let w = t(DType::BF16, &[128, 64]);
        let out = [t(DType::BF16, &[1, 4, 128])];
        assert_eq!(
            choose(&Op::Linear(optc_ir::ops::Linear), &[&x, &w], &out),
            Some(Kernel::Linear)
        );
        // Mixed dtypes have no kernel: they run on the host.
        let wf = t(DType::F32, &[128, 64]);
        assert_eq!(choose(&Op::Linear(optc_ir::ops::Linear), &[&x, &wf], &out), None);
    }

    /// Every `extern "C"` kernel the sources define, expanding the
    /// `OPTC_*` instantiation macros (and the attention instances the
    /// host adds), so the names the host asks for are checked without a GPU.
    fn defined_kernels(instances: &str) -> std::collections::HashSet<String> {
        let mut text = String::from(optc_kernels::cuda::COMMON);
        for (_, f) in optc_kernels::cuda::FILES {
            text.push_str(f);
        }
        text.push_str(optc_kernels::cuda::PREFILL_MMA);
        text.push_str(instances);
        let joined = text.replace("\\\n", " ");
        // name -> (params, body)
        let mut macros: Vec<(String, Vec<String>, String)> = Vec::new();
        for line in joined.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("#define OPTC_") {
                if let Some((head, body)) = rest.split_once(')') {
                    if let Some((name, params)) = head.split_once('(') {
                        let params = params.split(',').map(|p| p.trim().to_string()).collect();
                        macros.push((format!("OPTC_{name}"), params, body.to_string()));
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut collect = |body: &str| {
            for part in body.split("__global__ void").skip(1) {
                let part = part.trim_start();
                // Skip `__launch_bounds__(...)` whatever its bounds.
                let part = match part.strip_prefix("__launch_bounds__(") {
                    Some(rest) => rest.split_once(')').map_or(rest, |(_, r)| r).trim_start(),
                    None => part,
                };
                let raw: String = part.chars().take_while(|c| *c != '(').collect();
                names.insert(raw.trim().to_string());
            }
        };
        // Each parameter (a whole identifier) replaced by its argument,
        // then `##` pasted away.
        let substitute = |body: &str, pairs: &[(&String, &String)]| {
            let mut out = String::new();
            let mut ident = String::new();
            for c in body.chars().chain(std::iter::once(' ')) {
                if c.is_ascii_alphanumeric() || c == '_' {
                    ident.push(c);
                    continue;
                }
                let arg = pairs.iter().find(|(p, _)| **p == ident).map(|(_, a)| a.as_str());
                out.push_str(arg.unwrap_or(&ident));
                ident.clear();
                out.push(c);
            }
            out.replace("##", "")
        };
        // Lines, and what macro invocations expand to (nested ones too).
        let mut work: Vec<String> = joined.lines().map(|l| l.trim_start().to_string()).collect();
        while let Some(t) = work.pop() {
            if t.starts_with("extern \"C\" __global__ void") && !t.contains("##") {
                collect(&t);
            }
            for (name, params, body) in &macros {
                let Some(args) = t.strip_prefix(&format!("{name}(")) else {
                    continue;
                };
                let args: Vec<String> = args
                    .split(')')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(|a| a.trim().to_string())
                    .collect();
                let pairs: Vec<(&String, &String)> = params.iter().zip(&args).collect();
                let expanded = substitute(body, &pairs);
                collect(&expanded);
                for nested in expanded.split("OPTC_").skip(1) {
                    work.push(format!("OPTC_{nested}"));
                }
            }
        }
        names
    }

    #[test]
    fn every_kernel_the_host_launches_is_defined() {
        let inst = [
            optc_kernels::cuda::attention_instance("bf16", 64),
            optc_kernels::cuda::attention_instance("f32", 128),
            optc_kernels::cuda::prefill_mma_instance("bf16", 64),
        ]
        .concat();
        let have = defined_kernels(&inst);
        let t = |d: DType, s: &[i64]| {
            TensorType::new(d, s.iter().map(|&x| optc_ir::Dim::from(x)).collect::<Vec<_>>())
        };
        let kernels = [
            Kernel::Linear,
            Kernel::RmsNorm,
            Kernel::AddRmsNorm,
            Kernel::LayerNorm,
            Kernel::Rope,
            Kernel::SwiGlu,
            Kernel::SwiGluSplit,
            Kernel::RopeQkvCache,
            Kernel::Gelu,
            Kernel::Unary,
            Kernel::Binary,
            Kernel::Softmax,
            Kernel::Transpose,
            Kernel::IndexSelect,
            Kernel::Embedding,
        ];
        // The GEMVs exist only for the types the host instantiates.
        assert!(!have.contains("gemv_f32_m1") && !have.contains("skinny_bf16_m32"));
        for d in [DType::F32, DType::BF16, DType::F16, DType::I64, DType::Bool] {
            let x = t(d, &[2, 64]);
            for k in kernels {
                if float_name(d).is_none()
                    && !matches!(k, Kernel::Transpose | Kernel::IndexSelect | Kernel::Embedding)
                {
                    continue;
                }
                let extra = instances_for(k, &x).concat();
                let with = (!extra.is_empty()).then(|| defined_kernels(&format!("{inst}{extra}")));
                let have = with.as_ref().unwrap_or(&have);
                for name in function_names(k, &[&x, &x], &x) {
                    assert!(have.contains(&name), "{name} is not defined; have {have:?}");
                }
            }
        }
        for from in [DType::F32, DType::BF16, DType::F16, DType::I64] {
            for to in [DType::F32, DType::BF16, DType::F16] {
                let (a, o) = (t(from, &[4]), t(to, &[4]));
                for name in function_names(Kernel::Cast, &[&a], &o) {
                    assert!(have.contains(&name), "{name}");
                }
            }
        }
        for (d, hd) in [(DType::BF16, 64), (DType::F32, 128)] {
            let q = t(d, &[3, 4, hd]);
            for name in function_names(Kernel::PagedAttention, &[&q], &q) {
                assert!(have.contains(&name), "{name}");
            }
        }
        for name in ["argmax_combine", "ids_from_picks"] {
            assert!(have.contains(name), "{name}");
        }
        // The pick kernels with the host's instances for each float type.
        for d in ["f32", "bf16", "f16"] {
            assert!(
                !have.contains(&format!("sample_{d}")),
                "{d}: instantiated by the host"
            );
            let have = defined_kernels(&format!(
                "{inst}{}",
                optc_kernels::cuda::pick_instances(d).concat()
            ));
            for name in [
                format!("argmax_part_{d}"),
                format!("sample_stats_{d}"),
                format!("sample_hist_{d}"),
                format!("sample_{d}"),
            ] {
                assert!(have.contains(&name), "{name}");
            }
        }
        // The fused GEMVs (names built in program.rs), with the linears'
        // instances.
        let gemvs: String = ["f32", "bf16", "f16"]
            .map(optc_kernels::cuda::gemv_instances)
            .concat()
            .concat();
        let have = defined_kernels(&format!("{inst}{gemvs}"));
        for name in [
            "gemv_norm_bf16_m1",
            "gemv_glu_f32_m4",
            "gemv_norm_glu_f16_m4",
            "gemv_rope_f32_m1",
            "gemv_norm_rope_bf16_m4",
            "gemv_norm_rope_f16_m1",
            "gemv_ring_bf16_m1",
            "gemv_gelu_f32_m1",
            "gemv_gelu_bf16_m4",
            "gemv_gelu_ring_f16_m1",
            "gemv_glu_ring_bulk_bf16_m1",
            "gemv_norm_glu_ring_bulk_f16_m1",
            "gemv_rope2_f16_m1",
            "gemv_norm_rope2_bf16_m1",
            "gemv_norm_ring_f16_m1",
            "gemv_ring_argmax_bf16_m1",
            "gemv_norm_ring_argmax_f16_m1",
            "gemv_glu_ring_bf16_m1",
            "gemv_norm_glu_ring_bf16_m1",
            "paged_prefill_mma_bf16_d64",
        ] {
            assert!(have.contains(name), "{name}");
        }
        assert!(!have.contains("gemv_ring_f32_m1"), "rings are for 16-bit types");
        // A linear with a GELU epilogue finds every GEMV it launches; the
        // kernels it passes over keep their names.
        let out = TensorType::new(DType::BF16, optc_ir::Shape::of(&[1, 96]));
        for name in function_names(Kernel::Linear, &[&out, &out], &out) {
            let g = super::gelu_gemv(&name);
            assert!(have.contains(&g), "{g}");
            assert_eq!(
                g != name,
                !name.starts_with("skinny_") && !name.contains("argmax"),
                "{name}"
            );
        }
    }

    /// `launch!` launches every kernel as a dependent of the one ahead, so
    /// each entry point must wait for it before it reads or writes: it
    /// starts with `pdl_start()` (or a trigger and a wait), or is one call
    /// to an `_impl` that streams only weights or earlier steps' cache
    /// entries before its own `pdl_wait()`.
    #[test]
    fn entry_points_wait_before_they_work() {
        const WAIT_INSIDE: [&str; 5] = [
            "gemv_impl<",
            "gemv_ring_impl<",
            "skinny_gemm_impl<",
            "paged_decode_impl<",
            "mega_decode_impl<",
        ];
        // (The generated chains' test checks theirs.)
        let mut seen = 0;
        let mega = ("mega.cu", optc_kernels::cuda::MEGA);
        for (file, src) in optc_kernels::cuda::FILES.into_iter().chain([mega]) {
            for (at, _) in src.match_indices("extern \"C\" __global__") {
                let rest = &src[at..];
                let open = rest.find('{').expect("a body");
                let mut depth = 0usize;
                let mut end = open;
                for (i, c) in rest[open..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = open + i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                // The body without macro line ends, comments or spaces.
                let body: String = rest[open + 1..end]
                    .lines()
                    .map(|l| l.split("//").next().unwrap_or(""))
                    .collect::<String>()
                    .replace('\\', "");
                let body = strip_block_comments(&body).replace(char::is_whitespace, "");
                // The picked-ids embedding may gather first when the host
                // says its reads are ready (`early`), then waits at its end.
                let early = body.starts_with("pdl_trigger();if(!early)pdl_wait();")
                    && body.ends_with("if(early)pdl_wait();");
                let starts = body.starts_with("pdl_start();")
                    || body.starts_with("pdl_trigger();pdl_wait();")
                    || early;
                let impl_waits =
                    WAIT_INSIDE.iter().any(|f| body.starts_with(f)) && body.matches(';').count() == 1;
                let head: String = rest.chars().take(120).collect();
                assert!(starts || impl_waits, "{file}: {head} does not wait first: {body}");
                seen += 1;
            }
        }
        assert!(seen > 30, "only {seen} entry points found");
        // The impls that wait inside do.
        let gemv = optc_kernels::cuda::FILES
            .iter()
            .find(|f| f.0 == "gemv.cu")
            .map_or("", |f| f.1);
        for f in [
            "void gemv_impl(",
            "void gemv_ring_impl(",
            "void skinny_gemm_impl(",
        ] {
            let at = gemv.find(f).unwrap_or_else(|| panic!("{f}"));
            assert!(gemv[at..].contains("pdl_wait();"), "{f}");
        }
        let at = mega.1.find("void mega_decode_impl(").expect("mega_decode_impl");
        assert!(mega.1[at..].contains("pdl_wait();"));
    }

    fn strip_block_comments(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("/*") {
            out.push_str(&rest[..i]);
            rest = rest[i..].find("*/").map_or("", |j| &rest[i + j + 2..]);
        }
        out.push_str(rest);
        out
    }
}
