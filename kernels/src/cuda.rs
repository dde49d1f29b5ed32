//! CUDA C sources of the `nvrtc` target, embedded so the binary carries
//! them. The codegen concatenates them (common helpers first) into one
//! NVRTC translation unit, adding instantiations for the head dims a
//! graph needs; see `kernels/cuda/*.cu`.

/// Helpers every kernel file uses (loads/stores in f32, reductions,
/// strided index maths).
pub const COMMON: &str = include_str!("../cuda/common.cuh");

/// The kernel files, in the order they are concatenated after [`COMMON`].
pub const FILES: [(&str, &str); 6] = [
    ("elementwise.cu", include_str!("../cuda/elementwise.cu")),
    ("norm.cu", include_str!("../cuda/norm.cu")),
    ("layout.cu", include_str!("../cuda/layout.cu")),
    ("attention.cu", include_str!("../cuda/attention.cu")),
    ("sample.cu", include_str!("../cuda/sample.cu")),
    ("gemv.cu", include_str!("../cuda/gemv.cu")),
];

/// Most rows of `x` the GEMV kernels take (`gemv_{dtype}_m1`, `_m4`);
/// larger batches go to cuBLASLt.
pub const GEMV_MAX_ROWS: usize = 4;

/// A GEMV kind's block: output columns it covers and its threads
/// (`GemvGeometry` in gemv.cu: WARPS * R columns, WARPS * 32 threads).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvBlock {
    pub cols: usize,
    pub threads: u32,
}

/// `gemv_*`: x as it is (`GemvPlain`).
pub const GEMV_PLAIN: GemvBlock = GemvBlock {
    cols: 8,
    threads: 256,
};

/// `gemv_norm_*`: the RMSNorm in the x load (`GemvNorm`).
pub const GEMV_NORM: GemvBlock = GemvBlock {
    cols: 16,
    threads: 256,
};

/// `gemv_glu_*` and `gemv_norm_glu_*`: SwiGLU as the epilogue, a column's
/// gate and up rows in one warp (`GemvGlu`).
pub const GEMV_GLU: GemvBlock = GemvBlock {
    cols: 4,
    threads: 128,
};

/// Widest linear whose GEMV runs the norm before it (`gemv_norm_*`):
/// every block redoes that prologue from L2, which at an LM head's width
/// costs more than the launch it saves.
pub const GEMV_PROLOGUE_MAX_N: usize = 32 << 10;

/// The most dynamic shared memory a GEMV block asks for (its rows of x).
pub const GEMV_MAX_SMEM: usize = 96 << 10;

/// A ring GEMV kind's geometry (`GemvRing` in gemv.cu): `warps` warps a
/// block, each streaming `rows` output columns at a time through a ring
/// of `stages` tiles of `chunk` elements a weight row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemvRingBlock {
    pub warps: usize,
    pub rows: usize,
    pub stages: usize,
    pub chunk: usize,
}

impl GemvRingBlock {
    /// Threads a block.
    pub fn threads(&self) -> u32 {
        (self.warps * 32) as u32
    }

    /// Dynamic shared memory of a block: `m` rows of x (one more for a
    /// norm's scale, which streams in before the wait), then the warps'
    /// rings (each column's gate and up rows with `glu`).
    pub fn smem_bytes(&self, m: usize, k: usize, elem_bytes: usize, norm: bool, glu: bool) -> usize {
        let ring = self.warps * self.stages * self.rows * if glu { 2 } else { 1 } * self.chunk;
        ((m + usize::from(norm)) * k + ring) * elem_bytes
    }
}

/// `gemv_ring_*` and `gemv_norm_ring_*` (`GemvRingPlain`).
pub const GEMV_RING_PLAIN: GemvRingBlock = GemvRingBlock {
    warps: 8,
    rows: 1,
    stages: 4,
    chunk: 1024,
};

/// `gemv_glu_ring_*` and `gemv_norm_glu_ring_*` (`GemvRingGlu`).
pub const GEMV_RING_GLU: GemvRingBlock = GemvRingBlock {
    warps: 4,
    rows: 1,
    stages: 4,
    chunk: 1024,
};

/// Smallest weight (bytes) a one-row linear streams through the ring
/// GEMV. Smaller ones (a 1B model's QKV and o) take the register GEMV:
/// their blocks leave shared memory free for the next big linear's rings
/// to fill while they and decode attention run, which measured faster
/// than rings everywhere (kernels/bench/step_bench.cu, docs/perf.md).
pub const GEMV_RING_MIN_BYTES: usize = 24 << 20;

/// Ring-GEMV blocks launched an SM, whether or not that many fit: three
/// 72 KB gate/up blocks an H200 SM do; of 80 KB down blocks two do, and
/// the rest start as those finish (warps take output columns
/// grid-stride, so any grid is correct; a 1B model's down projection
/// leaves the last 140 blocks no columns, and they leave at once). Three
/// an SM measured faster than one resident wave of two for the down
/// projection too (923 against 931 µs a step on an H100 in
/// kernels/bench/step_bench.cu): the next kernel launches only as the
/// third wave starts, so the next layer's QKV does not stream its
/// weights while the down projection, on the critical path, still needs
/// the bandwidth.
pub const GEMV_RING_BLOCKS_PER_SM: usize = 3;

/// The most dynamic shared memory a ring-GEMV block may take: two blocks
/// an SM must fit.
pub const GEMV_RING_MAX_SMEM: usize = 96 << 10;

/// Most rows of `x` the tensor-core linear kernels for small batches take
/// (`skinny_{dtype}_m32`, `_m64`, `_m128`, 16-bit types); larger batches
/// go to cuBLASLt.
pub const SKINNY_MAX_ROWS: usize = 128;

/// Weight rows (output features) one skinny-GEMM block streams.
pub const SKINNY_ROWS_PER_BLOCK: usize = 64;

/// The skinny-GEMM kernels as (name suffix, rows of x they cover).
pub const SKINNY_VARIANTS: [(&str, usize); 3] = [("m32", 32), ("m64", 64), ("m128", 128)];

/// Dynamic shared memory of a skinny-GEMM block covering `rows` rows of
/// x: four stages of 64 weight rows and the x rows, 64 elements along k
/// each, padded by 8 (`SKINNY_*` in gemv.cu).
pub fn skinny_smem_bytes(rows: usize, elem_bytes: usize) -> usize {
    4 * (64 + rows) * (64 + 8) * elem_bytes
}

/// Query rows (tokens x heads of one KV group) one paged-attention block
/// handles for head dim `d`: fewer for large heads, whose per-row state
/// would otherwise spill out of registers.
pub fn attention_rows(d: usize) -> usize {
    if d > 128 {
        32
    } else {
        64
    }
}

/// Query heads per KV head the decode kernel holds (`DECODE_GROUP` in
/// attention.cu); larger groups decode on the tiled kernel.
pub const DECODE_GROUP: usize = 8;

/// The largest head dim the decode kernel takes (its static shared memory).
pub const DECODE_MAX_HEAD_DIM: usize = 256;

/// Whether decode runs on the tensor cores (`paged_decode_mma_impl` in
/// attention.cu, which the kernel picks by the same rule): 16-bit types and
/// head dims that are a multiple of 16 up to 128.
pub fn decode_mma_supported(d: usize, elem_bytes: usize) -> bool {
    elem_bytes == 2 && d % 16 == 0 && d > 0 && d <= 128
}

/// Dynamic shared memory of the decode kernel of `warps` warps (8 only on
/// the tensor cores). Tensor-core decode: each warp's two stages of key
/// and value rows (32 keys up to head dim 64, 16 past it; rows padded by
/// 8 elements), reused for the warps' merge. Otherwise: four warps'
/// stages of 32 value rows.
pub fn paged_decode_smem_bytes(d: usize, elem_bytes: usize, warps: usize) -> usize {
    if decode_mma_supported(d, elem_bytes) {
        let keys = if d <= 64 { 32 } else { 16 };
        let stages = warps * 2 * 2 * keys * (d + 8) * elem_bytes;
        let merge = (warps * DECODE_GROUP * (2 + d) + 1) * 4;
        stages.max(merge)
    } else {
        4 * 32 * d * elem_bytes
    }
}

/// Dynamic shared memory of the paged-attention kernel for head dim `d`.
pub fn attention_smem_bytes(d: usize) -> usize {
    (attention_rows(d) * d + 32 * (d + 4) + 32 * d) * 4
}

/// The instantiation lines for the linears of a float type (`f32`, `bf16`,
/// `f16`): the decode GEMVs for one row and for up to four
/// (`gemv_*_{dtype}_m1`/`_m4`, fused kinds included) and, for 16-bit
/// types, the tensor-core skinny GEMMs and the one-row ring GEMVs
/// (`gemv*_ring_{dtype}_m1`). Only the types a graph uses are
/// compiled, each line as its own unit (the four-row GEMVs are the
/// slowest to compile).
pub fn gemv_instances(dtype: &str) -> Vec<String> {
    let c = if dtype == "f32" { "float" } else { dtype };
    let mut v = vec![
        format!("OPTC_GEMV_ROWS({c}, {dtype}, 1)\n"),
        format!("OPTC_GEMV_ROWS({c}, {dtype}, 4)\n"),
    ];
    if dtype != "f32" {
        v.push(format!("OPTC_SKINNY_ALL({c}, {dtype})\n"));
        v.push(format!("OPTC_GEMV_RING({c}, {dtype})\n"));
        // Empty before sm_90 (gemv.cu): bulk copies are sm_90 instructions.
        v.push(format!("OPTC_GEMV_WIDE_DRAM({c}, {dtype})\n"));
    }
    v
}

/// The instantiation lines of the token-pick kernels (`argmax_part_{dtype}`,
/// `sample_{dtype}`) for outputs of a float type: only the types of a
/// graph's 2-D float outputs are compiled.
pub fn pick_instances(dtype: &str) -> Vec<String> {
    let c = if dtype == "f32" { "float" } else { dtype };
    vec![
        format!("OPTC_ARGMAX({c}, {dtype})\n"),
        format!("OPTC_SAMPLE_PARTS({c}, {dtype})\n"),
        format!("OPTC_SAMPLE_PICK({c}, {dtype})\n"),
    ]
}

/// The instantiation line for paged attention on `dtype` (`f32`, `bf16`,
/// `f16`) with head dim `d`; it defines `paged_attention_{dtype}_d{d}`.
pub fn attention_instance(dtype: &str, d: usize) -> String {
    let c = match dtype {
        "f32" => "float",
        other => other,
    };
    format!("OPTC_PAGED_ATTENTION({c}, {dtype}, {d}, {})\n", attention_rows(d))
}

/// The tensor-core prefill kernel (m16n8k16 MMA), compiled as its own
/// module so a failure to build it only costs speed: the scalar kernel
/// takes over.
pub const PREFILL_MMA: &str = include_str!("../cuda/attention_mma.cu");

/// Whether the tensor-core prefill kernel covers this dtype and head dim.
pub fn prefill_mma_supported(dtype: &str, d: usize) -> bool {
    matches!(dtype, "bf16" | "f16") && d % 16 == 0 && d > 0 && d <= 128
}

/// Dynamic shared memory of the tensor-core prefill kernel for head dim
/// `d`: two stages of key and value rows (64 keys up to head dim 64, 32
/// past it), padded by 8 elements.
pub fn prefill_mma_smem_bytes(d: usize) -> usize {
    let keys = if d <= 64 { 64 } else { 32 };
    2 * 2 * keys * (d + 8) * 2
}

/// The instantiation line for the tensor-core prefill kernel; it defines
/// `paged_prefill_mma_{dtype}_d{d}`.
pub fn prefill_mma_instance(dtype: &str, d: usize) -> String {
    format!("OPTC_PAGED_PREFILL_MMA({dtype}, {dtype}, {d})\n")
}

/// The one-token decode megakernel (a layer stack and the LM head in one
/// persistent launch), compiled as its own module like the tensor-core
/// prefill: a failure to build it only costs speed.
pub const MEGA: &str = include_str!("../cuda/mega.cu");

/// Attention pieces a KV head in the megakernel (`MEGA_NSPLIT`).
pub const MEGA_NSPLIT: usize = 16;

/// Dynamic shared memory the megakernel may ask for: the H200's 227 KiB a
/// block, less room for its static shared memory.
pub const MEGA_MAX_SMEM: usize = 224 << 10;

/// Warps a megakernel block (one block an SM).
pub const MEGA_WARPS: usize = 16;

/// Most weight tiles a warp keeps in flight.
pub const MEGA_MAX_STAGES: usize = 6;

/// The shape a megakernel is instantiated for (`MegaShape` in mega.cu):
/// a 16-bit `dtype`, hidden `d`, intermediate `f`, `hq` query and `hkv`
/// key/value heads of `hd`, weight tiles of `ch` elements, and each of
/// `warps` warps a block streaming through `stages` of them; `prefetch`
/// tiles past the ring asked of L2 ahead, and `tma` filling each ring
/// slot with one bulk copy (both off by default; `OPTC_MEGA_PREFETCH`,
/// `OPTC_MEGA_TMA` set them to measure).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MegaShape {
    pub dtype: &'static str,
    pub d: usize,
    pub f: usize,
    pub hq: usize,
    pub hkv: usize,
    pub hd: usize,
    pub ch: usize,
    pub warps: usize,
    pub stages: usize,
    pub prefetch: usize,
    pub tma: bool,
}

impl MegaShape {
    /// The megakernel for a model of this shape, if mega.cu covers it:
    /// bf16 or f16, heads that divide evenly with `hd` a multiple of 8 (at
    /// most 256), and rings of at least two tiles within
    /// [`MEGA_MAX_SMEM`]. The tile is the longest power of two up to
    /// 1,024 elements that divides every k (`d`, `f`, `hq * hd`).
    pub fn new(
        dtype: &'static str,
        d: usize,
        f: usize,
        hq: usize,
        hkv: usize,
        hd: usize,
    ) -> Option<MegaShape> {
        if !matches!(dtype, "bf16" | "f16")
            || hkv == 0
            || hq % hkv != 0
            || hd == 0
            || hd % 8 != 0
            || hd > 256
            || d == 0
            || f == 0
        {
            return None;
        }
        let ch = (3..=10)
            .rev()
            .map(|b| 1usize << b)
            .find(|c| d % c == 0 && f % c == 0 && (hq * hd) % c == 0)?;
        let mut s = MegaShape {
            dtype,
            d,
            f,
            hq,
            hkv,
            hd,
            ch,
            warps: MEGA_WARPS,
            stages: 0,
            prefetch: 0,
            tma: false,
        };
        s.stages = MEGA_MAX_STAGES;
        s.within(MEGA_MAX_SMEM)
    }

    /// The shape with as many ring stages (at most [`MEGA_MAX_STAGES`],
    /// at least two) as `max_smem` bytes of dynamic shared memory hold: a
    /// GPU with less than the H200's gets shorter rings.
    pub fn within(mut self, max_smem: usize) -> Option<MegaShape> {
        let ring = max_smem.checked_sub(self.x_bytes())? / (self.warps * self.ch * 2);
        self.stages = ring.min(MEGA_MAX_STAGES);
        (self.stages >= 2).then_some(self)
    }

    /// x's share of the shared memory: the widest input, or a block's
    /// queries in f32 during attention.
    fn x_bytes(&self) -> usize {
        let x = self.d.max(self.f).max(self.hq * self.hd) * 2;
        x.max(self.warps * (self.hq / self.hkv) * self.hd * 4)
    }

    /// Dynamic shared memory a block asks for (`mega_smem_bytes`).
    pub fn smem_bytes(&self) -> usize {
        self.x_bytes() + self.warps * self.stages * self.ch * 2
    }

    /// Threads a block.
    pub fn threads(&self) -> u32 {
        (self.warps * 32) as u32
    }

    /// The instantiation's numbers, in `OPTC_MEGA_DECODE`'s order after
    /// the type.
    fn numbers(&self) -> [usize; 10] {
        let s = self;
        [
            s.d,
            s.f,
            s.hq,
            s.hkv,
            s.hd,
            s.ch,
            s.warps,
            s.stages,
            s.prefetch,
            usize::from(s.tma),
        ]
    }

    /// The kernel's name (`OPTC_MEGA_DECODE` spells it).
    pub fn function(&self) -> String {
        const JOINS: [&str; 10] = ["_d", "_f", "_h", "x", "x", "_c", "_w", "_s", "_p", "_t"];
        let mut name = format!("mega_decode_{}", self.dtype);
        for (join, n) in JOINS.iter().zip(self.numbers()) {
            name.push_str(&format!("{join}{n}"));
        }
        name
    }

    /// The instantiation line that defines [`MegaShape::function`].
    pub fn instance(&self) -> String {
        let numbers: Vec<String> = self.numbers().iter().map(usize::to_string).collect();
        format!(
            "OPTC_MEGA_DECODE({0}, {0}, {1})\n",
            self.dtype,
            numbers.join(", ")
        )
    }

    /// Elements of each scratch activation a layer: q, att, hmid, hout,
    /// glu (`MegaArgs`).
    pub fn scratch_rows(&self) -> [usize; 5] {
        let ko = self.hq * self.hd;
        [ko, ko, self.d, self.d, self.f]
    }

    /// f32 values of attention's partial results a layer (`part`).
    pub fn part_floats(&self) -> usize {
        self.hkv * MEGA_NSPLIT * (self.hq / self.hkv) * (self.hd + 2)
    }
}

/// The megakernel module's source: helpers, mega.cu, one instantiation.
pub fn mega_source(shape: &MegaShape) -> String {
    format!(
        "{COMMON}\n// ---- mega.cu\n{MEGA}\n// ---- instantiation\n{}",
        shape.instance()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The megakernel's shapes: the longest tile dividing every k, rings
    /// as deep as shared memory holds, 16-bit types and whole heads only.
    #[test]
    fn mega_shapes_fit_their_shared_memory() {
        let s = MegaShape::new("bf16", 2048, 8192, 32, 8, 64).unwrap();
        assert_eq!((s.ch, s.warps, s.stages), (1024, 16, 6));
        assert_eq!(s.smem_bytes(), 8192 * 2 + 16 * 6 * 1024 * 2);
        // Llama-3-8B: attention's queries (32 KiB) outgrow x, and six
        // stages still fit.
        let b = MegaShape::new("bf16", 4096, 14336, 32, 8, 128).unwrap();
        assert_eq!((b.ch, b.stages), (1024, 6));
        assert!(b.smem_bytes() <= MEGA_MAX_SMEM);
        // The fixtures: 64-element tiles.
        let f = MegaShape::new("f16", 64, 128, 4, 2, 16).unwrap();
        assert_eq!((f.ch, f.stages), (64, 6));
        // Less shared memory, shorter rings; too little, none.
        assert_eq!(s.within(163 << 10).map(|s| s.stages), Some(4));
        assert_eq!(s.within(64 << 10), None);
        assert_eq!(MegaShape::new("f32", 2048, 8192, 32, 8, 64), None);
        assert_eq!(MegaShape::new("bf16", 2048, 8192, 30, 8, 64), None);
        assert_eq!(MegaShape::new("bf16", 2048, 8192, 32, 8, 60), None);
        assert_eq!(
            s.instance(),
            "OPTC_MEGA_DECODE(bf16, bf16, 2048, 8192, 32, 8, 64, 1024, 16, 6, 0, 0)\n"
        );
    }

    /// The host's GEMV blocks must match the geometries gemv.cu
    /// instantiates (`using GemvX = GemvGeometry<WARPS, R, U>;`).
    #[test]
    fn gemv_blocks_match_the_kernel_geometries() {
        let src = FILES
            .iter()
            .find(|f| f.0 == "gemv.cu")
            .map(|f| f.1)
            .unwrap_or_default();
        let geometry = |name: &str| -> GemvBlock {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("using {name} = GemvGeometry<")))
                .unwrap_or_else(|| panic!("no {name} in gemv.cu"));
            let args: Vec<usize> = line
                .split('<')
                .nth(1)
                .and_then(|a| a.split('>').next())
                .unwrap_or_default()
                .split(',')
                .take(2)
                .map(|a| a.trim().parse().expect("a number"))
                .collect();
            GemvBlock {
                cols: args[0] * args[1],
                threads: (args[0] * 32) as u32,
            }
        };
        assert_eq!(geometry("GemvPlain"), GEMV_PLAIN);
        assert_eq!(geometry("GemvNorm"), GEMV_NORM);
        assert_eq!(geometry("GemvGlu"), GEMV_GLU);
    }

    /// Likewise the ring geometries (`using GemvRingX = GemvRing<WARPS, R,
    /// S, CH>;`), whose shared memory the host sizes.
    #[test]
    fn ring_gemv_blocks_match_the_kernel_geometries() {
        let src = FILES
            .iter()
            .find(|f| f.0 == "gemv.cu")
            .map(|f| f.1)
            .unwrap_or_default();
        let ring = |name: &str| -> GemvRingBlock {
            let line = src
                .lines()
                .find(|l| l.starts_with(&format!("using {name} = GemvRing<")))
                .unwrap_or_else(|| panic!("no {name} in gemv.cu"));
            let a: Vec<usize> = line
                .split('<')
                .nth(1)
                .and_then(|a| a.split('>').next())
                .unwrap_or_default()
                .split(',')
                .map(|a| a.trim().parse().expect("a number"))
                .collect();
            GemvRingBlock {
                warps: a[0],
                rows: a[1],
                stages: a[2],
                chunk: a[3],
            }
        };
        assert_eq!(ring("GemvRingPlain"), GEMV_RING_PLAIN);
        assert_eq!(ring("GemvRingGlu"), GEMV_RING_GLU);
        // A 1B model's gate/up and down blocks at one row.
        assert_eq!(GEMV_RING_GLU.smem_bytes(1, 2048, 2, true, true), 72 << 10);
        assert_eq!(GEMV_RING_PLAIN.smem_bytes(1, 8192, 2, false, false), 80 << 10);
    }
}
