//! The glue from a lowered step to its kernel launch or cuBLASLt call:
//! grid sizes, strides and arguments per kernel.

use cudarc::driver::{CudaFunction, LaunchConfig};
use optc_ir::dim::normalize_axis;
use optc_ir::ops::{BinaryKind, GeluApprox, Op, UnaryKind};
use optc_kernels::cuda as src;

use super::chains::{EwIndex, MAX_LEAVES};
use super::gemm::GemmShape;
use super::pick::GemvPick;
use super::program::{
    AttentionRun, CudaProgram, Exec, Loc, SkinnyGemm, Step, ATTENTION_DECODE8, ATTENTION_DECODE_ROPE,
    ATTENTION_MMA, GEMV_RING_AT, SPLIT_COUNTERS,
};
use super::select::Kernel;
use super::strided::{broadcast_strides, contiguous, strided, MAX_RANK};

pub(super) fn cfg(grid: (u32, u32, u32), block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: grid,
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// The register-resident norm kernel for rows of `cols`, if it applies:
/// its index among the step's functions (general, then 1, 2, 4 runs of
/// eight per thread) and the block size. Needs whole 16-byte runs at
/// 16-byte-aligned addresses (a null optional operand is fine).
fn vec_rows(cols: usize, ptrs: &[u64]) -> Option<(usize, u32)> {
    if cols == 0 || cols % 8 != 0 || ptrs.iter().any(|p| p % 16 != 0) {
        return None;
    }
    let runs = cols / 8;
    let block = (runs.div_ceil(32) * 32).min(256);
    match runs.div_ceil(block) {
        1 => Some((1, block as u32)),
        2 => Some((2, block as u32)),
        3 | 4 => Some((3, block as u32)),
        _ => None,
    }
}

/// The shapes of a rope + cache write step (`Kernel::RopeQkvCache`: qkv,
/// cos, sin, k cache, v cache, slot mapping -> q) this run.
struct RopeQkv {
    ntok: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    dv: usize,
    /// Rotated channels of a head (cos/sin's last extent).
    r: usize,
    /// A row of qkv: hq + hkv heads of d, then hkv of dv.
    width: usize,
}

impl RopeQkv {
    fn of(s: &Step, dims: &[Vec<usize>]) -> Result<RopeQkv, String> {
        let a = &s.args;
        let numel = |v: usize| dims[v].iter().product::<usize>();
        let last = |v: usize| dims[v].last().copied().unwrap_or(1);
        let (dk, dv) = (&dims[a[3]], &dims[a[4]]);
        let dq = &dims[s.outs[0]];
        let (Some(&hkv), Some(&d), Some(&dvh), Some(&hq)) = (
            dk.get(2),
            dk.get(3),
            dv.get(3),
            dq.get(dq.len().saturating_sub(2)),
        ) else {
            return Err(format!(
                "fused rope: caches {dk:?}, {dv:?} and queries {dq:?} (a lowering bug)"
            ));
        };
        let (ntok, r) = (numel(a[5]), last(a[1]));
        let width = (hq + hkv) * d + hkv * dvh;
        if numel(a[0]) != ntok * width || numel(s.outs[0]) != ntok * hq * d || numel(a[1]) != ntok * r {
            return Err(format!(
                "fused rope: {} QKV values, {} cos values and {} query values for {ntok} tokens \
                 of {hq}+{hkv} heads (a lowering bug)",
                numel(a[0]),
                numel(a[1]),
                numel(s.outs[0])
            ));
        }
        Ok(RopeQkv {
            ntok,
            hq,
            hkv,
            d,
            dv: dvh,
            r,
            width,
        })
    }

    /// Whether a GEMV of `m` rows and `n` outputs can do this step at its
    /// store (`GemvRopeStore`: RoPE pairs within a warp).
    fn fits_gemv(&self, m: usize, n: usize) -> bool {
        self.ntok == m
            && self.width == n
            && n % 2 == 0
            && self.d % 2 == 0
            && self.r % 2 == 0
            && self.r <= self.d
    }
}

/// The rope operands of a QKV GEMV, in the kernel's order.
struct GemvRopeArgs {
    cs: u64,
    sn: u64,
    q: u64,
    kc: u64,
    vc: u64,
    slots: u64,
    hq: i32,
    hkv: i32,
    d: i32,
    dv: i32,
    rd: i32,
    il: i32,
}

/// A fused norm step's operands as `gemv_norm_*` takes them: (x, r, nw,
/// sum, eps) for add_rms_norm(x, r, w) -> (sum, y) or rms_norm(x, w) -> y.
fn norm_args(p: &Step, ptr: &[u64]) -> Result<(u64, u64, u64, u64, f32), String> {
    let (pa, po) = (&p.args, &p.outs);
    let opt = |i: usize| pa.get(i).map_or(0u64, |&v| ptr[v]);
    match &p.op {
        Op::AddRmsNorm(o) => Ok((ptr[pa[0]], ptr[pa[1]], opt(2), ptr[po[0]], o.eps as f32)),
        Op::RmsNorm(o) => Ok((ptr[pa[0]], 0, opt(1), 0, o.eps as f32)),
        op => Err(format!("no fused GEMV after {} (a lowering bug)", op.name())),
    }
}

/// A linear's GEMV this run: rows of x, k, output columns (gate and up
/// rows together with `glu`), element bytes, and the fused work that
/// sizes a ring GEMV's shared memory (the norm's scale, SwiGLU).
#[derive(Clone, Copy, Debug)]
pub(super) struct GemvShape {
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) esize: usize,
    pub(super) norm: bool,
    pub(super) glu: bool,
}

impl CudaProgram {
    /// Linear `lin`'s GEMV this run (with its fusions, if it has any).
    fn gemv_shape(&self, lin: &Step, dims: &[Vec<usize>]) -> GemvShape {
        let k = dims[lin.args[0]].last().copied().unwrap_or(0);
        let m = dims[lin.args[0]]
            .iter()
            .product::<usize>()
            .checked_div(k)
            .unwrap_or(0);
        let z = lin.fused.as_ref();
        GemvShape {
            m,
            k,
            n: dims[lin.args[1]][0],
            esize: self.types[lin.outs[0]].dtype.storage_bytes(1),
            norm: z.is_some_and(|z| z.norm.is_some()),
            glu: z.is_some_and(|z| z.glu.is_some()),
        }
    }

    /// Whether linear `lin` runs its fused GEMV on this run: one to four
    /// rows, a k the GEMV takes, 16-byte-aligned operands and, with a
    /// norm, outputs no wider than `GEMV_PROLOGUE_MAX_N` (past that every
    /// block redoing the norm costs more than the launch it saves) unless
    /// the ring GEMV, whose blocks are few, takes it (an LM head). Needs
    /// only what exists when the norm step comes up: the linear's result
    /// (and the SwiGLU's) are pool buffers, aligned.
    pub(super) fn fused_gemv_fits(
        &self,
        lin: &Step,
        steps: &[Step],
        dims: &[Vec<usize>],
        ptr: &[u64],
    ) -> bool {
        let Some(z) = &lin.fused else { return false };
        if z.fns.len() < 2 {
            return false;
        }
        let shape = self.gemv_shape(lin, dims);
        let (m, kd, nn, esize) = (shape.m, shape.k, shape.n, shape.esize);
        let aligned = |vs: &[usize]| vs.iter().all(|&v| ptr[v] % 16 == 0);
        // A ring GEMV's few blocks redo the norm at any width.
        let ring = z.fns.len() > 2 && self.ring_gemv_cfg(&shape).is_some();
        let norm_ok = match z.norm {
            Some(p) => {
                (nn <= src::GEMV_PROLOGUE_MAX_N || ring) && aligned(&steps[p].args) && aligned(&steps[p].outs)
            }
            None => aligned(&lin.args[..1]),
        };
        let rope_ok = z
            .rope
            .is_none_or(|ri| RopeQkv::of(&steps[ri], dims).is_ok_and(|g| g.fits_gemv(m, nn)));
        (1..=src::GEMV_MAX_ROWS).contains(&m)
            && rope_ok
            && kd % 8 == 0
            && (m + usize::from(z.norm.is_some())) * kd * esize <= src::GEMV_MAX_SMEM
            && nn <= i32::MAX as usize
            && (z.glu.is_none() || nn % 2 == 0)
            && aligned(&lin.args[1..])
            && norm_ok
    }

    /// Linear `lin` on its fused GEMV, for a run where `fused_gemv_fits`
    /// held: the norm step's launch was skipped, and the SwiGLU or rope
    /// step is marked in `done` (its result allocated here) so it is
    /// skipped too.
    pub(super) fn launch_fused_gemv(
        &mut self,
        lin: &Step,
        steps: &[Step],
        dims: &[Vec<usize>],
        ptr: &mut [u64],
        done: &mut [bool],
        pick: Option<&mut GemvPick>,
    ) -> Result<(), String> {
        let Some(z) = &lin.fused else {
            return Err("a plain linear sent to the fused GEMV (a lowering bug)".into());
        };
        let a = &lin.args;
        let shape = self.gemv_shape(lin, dims);
        let (m, kd, nn, esize) = (shape.m, shape.k, shape.n, shape.esize);
        // The result of a step this GEMV does, allocated here.
        let mut take_over = |step: usize, ptr: &mut [u64]| -> Result<u64, String> {
            let o = steps[step].outs[0];
            if self.locs[o] == Loc::Temp && ptr[o] == 0 {
                let bytes = self.types[o].dtype.storage_bytes(dims[o].iter().product());
                ptr[o] = self.pool.alloc(bytes)?;
            }
            done[step] = true;
            Ok(ptr[o])
        };
        let (y, n, geo) = match (z.glu, z.rope) {
            (Some(g), _) => (take_over(g, ptr)?, nn / 2, src::GEMV_GLU),
            (None, Some(ri)) => (take_over(ri, ptr)?, nn, src::GEMV_NORM),
            (None, None) => (ptr[lin.outs[0]], nn, src::GEMV_NORM),
        };
        if y % 16 != 0 {
            return Err("a fused GEMV result outside the pool (a lowering bug)".into());
        }
        // The GEMV streams its matrix, and the norm's scale, before it
        // waits for the kernel ahead: only weights (which no kernel
        // writes) may be read that early.
        let is_weight = |v: usize| matches!(self.locs[self.owner[v]], Loc::Weight(_));
        let scale_is_weight = z.norm.is_none_or(|p| {
            let at = if matches!(steps[p].op, Op::AddRmsNorm(_)) {
                2
            } else {
                1
            };
            steps[p].args.get(at).is_none_or(|&v| is_weight(v))
        });
        let weight_first = is_weight(a[1]) && scale_is_weight;
        let ring = self.ring_gemv(z.fns.get(2), &shape);
        let on_ring = ring.is_some();
        let (f, c) = match ring {
            Some(fc) => fc,
            None => {
                let f = if m == 1 { &z.fns[0] } else { &z.fns[1] };
                let blocks = n.div_ceil(geo.cols) as u32;
                let rows = m + usize::from(z.norm.is_some());
                (f, cfg((blocks, 1, 1), geo.threads, (rows * kd * esize) as u32))
            }
        };
        let bias = a.get(2).map_or(0u64, |&v| ptr[v]);
        let norm = z.norm.map(|p| norm_args(&steps[p], ptr)).transpose()?;
        // The greedy pick of its logits, as the ring stores them (the
        // final norm's LM head).
        let picking = match z.fns.get(3) {
            Some(fa) if on_ring && z.norm.is_some() && z.glu.is_none() && z.rope.is_none() => {
                let counters = Some(self.split_counters.ptr);
                GemvPick::args(
                    pick,
                    &self.owner,
                    lin.outs[0],
                    counters,
                    &mut self.pool,
                    c.grid_dim.0,
                )?
                .map(|pa| (fa, pa))
            }
            _ => None,
        };
        let (n, k, m) = (n as i32, kd as i32, m as i32);
        let gpu = &self.gpu;
        let w = ptr[a[1]];
        if let Some(ri) = z.rope {
            let g = self.gemv_rope_args(&steps[ri], dims, ptr)?;
            let (cs, sn, q, kc, vc, slots) = (g.cs, g.sn, g.q, g.kc, g.vc, g.slots);
            let (hq, hkv, d, dv, rd, il) = (g.hq, g.hkv, g.d, g.dv, g.rd, g.il);
            let Some((x, r, nw, sum, eps)) = norm else {
                return launch_dependent!(gpu, f, c, weight_first;
                    x = ptr[a[0]], w = w, b = bias, n = n, k = k, m = m, cs = cs, sn = sn, q = q, kc = kc,
                    vc = vc, slots = slots, hq = hq, hkv = hkv, d = d, dv = dv, rd = rd, il = il);
            };
            return launch_dependent!(gpu, f, c, weight_first;
                x = x, r = r, nw = nw, sum = sum, eps = eps, w = w, b = bias, n = n, k = k, m = m, cs = cs,
                sn = sn, q = q, kc = kc, vc = vc, slots = slots, hq = hq, hkv = hkv, d = d, dv = dv, rd = rd,
                il = il);
        }
        let Some((x, r, nw, sum, eps)) = norm else {
            return launch_dependent!(gpu, f, c, weight_first; x = ptr[a[0]], w = w, b = bias, y = y, n = n, k = k, m = m);
        };
        if z.glu.is_some() {
            return launch_dependent!(gpu, f, c, weight_first;
                x = x, r = r, nw = nw, sum = sum, eps = eps, w = w, b = bias, y = y, n = n, k = k, m = m);
        }
        // The plain GEMV may take x's rows from the norm's operands
        // (`gather`): then only those rows are normalised, and the sum,
        // which nothing reads, is not stored.
        let (rows, nrows, sum) = match (z.gather, z.norm) {
            (Some(g), Some(p)) => {
                let a0 = steps[p].args[0];
                let nrows = dims[a0].iter().product::<usize>() / kd.max(1);
                (ptr[steps[g].args[1]], nrows as i32, 0u64)
            }
            _ => (0u64, 0i32, sum),
        };
        if let Some((fa, pa)) = picking {
            let r = launch_dependent!(gpu, fa, c, weight_first;
                x = x, r = r, nw = nw, sum = sum, eps = eps, rows = rows, nrows = nrows, w = w, b = bias,
                y = y, n = n, k = k, m = m, part = pa.part, counter = pa.counter, tok = pa.tok, lp = pa.lp);
            self.pool.release(pa.part);
            return r;
        }
        launch_dependent!(gpu, f, c, weight_first;
            x = x, r = r, nw = nw, sum = sum, eps = eps, rows = rows, nrows = nrows, w = w, b = bias, y = y,
            n = n, k = k, m = m)
    }

    /// The launch of the ring GEMV (`gemv*_ring_*_m1`) for linear `g`,
    /// when it takes it: one row, a weight of at least
    /// `gemv_ring_min_bytes`, and a block that leaves room for a second
    /// on its SM. `GEMV_RING_BLOCKS_PER_SM` blocks an SM, whether or not
    /// they all fit at once (see that constant).
    pub(super) fn ring_gemv_cfg(&self, g: &GemvShape) -> Option<LaunchConfig> {
        let geo = if g.glu {
            src::GEMV_RING_GLU
        } else {
            src::GEMV_RING_PLAIN
        };
        let smem = geo.smem_bytes(g.m, g.k, g.esize, g.norm, g.glu);
        let big = g.n.saturating_mul(g.k).saturating_mul(g.esize) >= self.gemv_ring_min_bytes;
        (g.m == 1 && big && smem <= src::GEMV_RING_MAX_SMEM).then(|| {
            let blocks = self.gpu.sms as usize * src::GEMV_RING_BLOCKS_PER_SM;
            cfg((blocks as u32, 1, 1), geo.threads(), smem as u32)
        })
    }

    /// The rope + cache write step whose work decode attention step `ai`
    /// can do itself this run (`paged_decode_rope_*`): the step that made
    /// its queries and wrote its cache, past the GEMV's rows (up to them
    /// the QKV GEMV does it), on the tensor-core decode kernel (the
    /// caller checks four warps), values as wide as keys. Saves a launch
    /// a layer.
    pub(super) fn decode_rope_step(&self, steps: &[Step], ai: usize, dims: &[Vec<usize>]) -> Option<usize> {
        let s = &steps[ai];
        let Exec::Kernel(Kernel::PagedAttention, fns) = &s.exec else {
            return None;
        };
        if !self.decode_rope || !s.cache_written || fns.len() <= ATTENTION_DECODE_ROPE {
            return None;
        }
        let q = self.owner[*s.args.first()?];
        let ri = (0..ai).rev().find(|&j| {
            matches!(steps[j].exec, Exec::Kernel(Kernel::RopeQkvCache, _))
                && steps[j].outs.first().is_some_and(|&o| self.owner[o] == q)
        })?;
        let g = RopeQkv::of(&steps[ri], dims).ok()?;
        let esize = self.types[s.args[0]].dtype.storage_bytes(1);
        let fits = g.ntok > src::GEMV_MAX_ROWS
            && g.dv == g.d
            && g.r <= g.d
            && dims[s.args[0]].last() == Some(&g.d)
            && src::decode_mma_supported(g.d, esize)
            && g.width <= i32::MAX as usize;
        fits.then_some(ri)
    }

    /// Warps of the decode attention blocks of a grid of `blocks`
    /// (sequences × KV heads) for head dim `d` of `esize`-byte elements,
    /// given the step's `nfns` functions: `Gpu::decode_warps` where the
    /// eight-warp kernel applies (the tensor cores, with the shared memory
    /// it needs) and its grid fits the SMs one block each, else four. A
    /// bigger grid gains nothing from shorter walks and loses the four-warp
    /// kernel's three blocks an SM (on the H200, W2 and W3 were 2–5 %
    /// slower with eight; W1, eight blocks, 3 % faster).
    pub(super) fn decode_warps(&self, blocks: usize, nfns: usize, d: usize, esize: usize) -> usize {
        let fits = self.decode8
            && nfns > ATTENTION_DECODE8
            && src::decode_mma_supported(d, esize)
            && blocks <= self.gpu.sms as usize;
        if self.gpu.decode_warps == 8 && fits {
            8
        } else {
            4
        }
    }

    /// The ring GEMV `f` (when the linear has one) and its launch, when
    /// `ring_gemv_cfg` takes the linear; counted in `ring_gemv_launches`.
    fn ring_gemv<'f>(
        &self,
        f: Option<&'f CudaFunction>,
        g: &GemvShape,
    ) -> Option<(&'f CudaFunction, LaunchConfig)> {
        let c = self.ring_gemv_cfg(g)?;
        let f = f?;
        self.ring_gemv_launches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some((f, c))
    }

    /// What `gemv_rope_*` / `gemv_norm_rope_*` take besides the GEMV's own
    /// operands, for rope step `rs`: its product goes straight to the
    /// queries and the caches. The step's operands are read through the
    /// buffers they view: the GEMV runs before the views of cos and sin
    /// are made.
    fn gemv_rope_args(&self, rs: &Step, dims: &[Vec<usize>], ptr: &[u64]) -> Result<GemvRopeArgs, String> {
        let Op::Rope(o) = &rs.op else {
            return Err(format!("no fused rope for {} (a lowering bug)", rs.op.name()));
        };
        let g = RopeQkv::of(rs, dims)?;
        let arg = |i: usize| ptr[self.owner[rs.args[i]]];
        let args = GemvRopeArgs {
            cs: arg(1),
            sn: arg(2),
            q: ptr[rs.outs[0]],
            kc: arg(3),
            vc: arg(4),
            slots: arg(5),
            hq: g.hq as i32,
            hkv: g.hkv as i32,
            d: g.d as i32,
            dv: g.dv as i32,
            rd: g.r as i32,
            il: i32::from(o.interleaved),
        };
        if [args.cs, args.sn, args.q, args.kc, args.vc, args.slots].contains(&0) {
            return Err("a fused rope operand is not ready at its GEMV (a lowering bug)".into());
        }
        Ok(args)
    }

    /// The launch of an elementwise kernel over `n` elements: 256 threads
    /// a block, a grid-stride loop past 16 blocks an SM.
    fn ew_cfg(&self, n: usize) -> LaunchConfig {
        cfg(
            (n.div_ceil(256).clamp(1, self.gpu.sms as usize * 16) as u32, 1, 1),
            256,
            0,
        )
    }

    /// A generated elementwise chain (`chains.rs`); `early` lets it work
    /// before its wait (operands ready before the run, results' buffers
    /// new to it: `run_steps` decides).
    pub(super) fn launch_chain(
        &self,
        fns: &[CudaFunction],
        s: &Step,
        dims: &[Vec<usize>],
        ptr: &[u64],
        early: bool,
    ) -> Result<(), String> {
        let (a, o0) = (&s.args, s.outs[0]);
        let n: usize = dims[o0].iter().product();
        if s.outs.iter().all(|&o| dims[o].iter().product::<usize>() == 0) {
            return Ok(());
        }
        let gpu = &self.gpu;
        let chain = s
            .chain
            .as_deref()
            .ok_or("a generated kernel without its source (a lowering bug)")?;
        let od = &dims[o0];
        if a.len() > MAX_LEAVES || od.len() > MAX_RANK {
            return Err(format!(
                "{}: {} operands of rank {} (a lowering bug)",
                chain.name,
                a.len(),
                od.len()
            ));
        }
        let mut ix = EwIndex {
            rank: od.len() as i32,
            dims: [0; MAX_RANK],
            st: [[0; MAX_RANK]; MAX_LEAVES],
        };
        for (d, &e) in od.iter().enumerate() {
            ix.dims[d] = e as i64;
        }
        if chain.index_as.len() != a.len() || s.outs.iter().any(|&o| dims[o] != *od) {
            return Err(format!(
                "{}: operands or results out of step (a lowering bug)",
                chain.name
            ));
        }
        for (l, &v) in chain.index_as.iter().enumerate() {
            if dims[v].len() > od.len() {
                return Err(format!(
                    "{}: operand {l} of rank above the result's (a lowering bug)",
                    chain.name
                ));
            }
            for (d, st) in broadcast_strides(&dims[v], od).into_iter().enumerate() {
                ix.st[l][d] = st;
            }
        }
        let ptrs: Vec<u64> = a.iter().chain(&s.outs).map(|&v| ptr[v]).collect();
        let n = n as i64;
        let mut params: Vec<*mut std::ffi::c_void> = ptrs
            .iter()
            .map(|p| p as *const u64 as *mut std::ffi::c_void)
            .collect();
        let early = i32::from(early);
        params.push(&n as *const i64 as *mut std::ffi::c_void);
        params.push(&ix as *const EwIndex as *mut std::ffi::c_void);
        params.push(&early as *const i32 as *mut std::ffi::c_void);
        // SAFETY: the generated kernel takes the operands' pointers, the
        // results', the element count, the index and `early`, in that
        // order (`chains::generate`); the locals outlive the call.
        // As a dependent, as `launch!` launches the other kernels.
        unsafe { gpu.launch_dependent(&fns[0], self.ew_cfg(n as usize), true, &mut params) }
    }

    /// Embedding step `s` reading the ids the previous run picked through
    /// `head` (`gather_picked_*`, `fns[1]`): its run leaves out the copy of
    /// those picks into the ids, which nothing else reads.
    pub(super) fn launch_embedding_picked(
        &self,
        fns: &[CudaFunction],
        s: &Step,
        dims: &[Vec<usize>],
        ptr: &[u64],
        head: u64,
        early: bool,
    ) -> Result<(), String> {
        let (a, o0) = (&s.args, s.outs[0]);
        let f = fns
            .get(1)
            .ok_or("an embedding without its picked-ids kernel (a lowering bug)")?;
        let numel = |v: usize| dims[v].iter().product::<usize>();
        let n = numel(o0);
        if n == 0 {
            return Ok(());
        }
        let di = &dims[a[0]];
        let inner: usize = di[1..].iter().product();
        let gpu = &self.gpu;
        launch!(gpu, f, self.ew_cfg(n); x = ptr[a[0]], i = ptr[a[1]], head = head, y = ptr[o0],
            o = 1i64, l = di[0] as i64, inn = inner as i64, ni = numel(a[1]) as i64, early = i32::from(early))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        &mut self,
        k: Kernel,
        fns: &[CudaFunction],
        s: &Step,
        dims: &[Vec<usize>],
        ptr: &[u64],
        attn: Option<&AttentionRun>,
        rope: Option<&Step>,
        arena: u64,
        pick: Option<&mut GemvPick>,
    ) -> Result<(), String> {
        let a = &s.args;
        let o0 = s.outs[0];
        let numel = |v: usize| dims[v].iter().product::<usize>();
        if s.outs.iter().all(|&o| numel(o) == 0) {
            return Ok(());
        }
        let n = numel(o0);
        let sms = self.gpu.sms;
        let ew = |n: usize| self.ew_cfg(n);
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
                let bytes = m * kd * esize as usize;
                let aligned = [ptr[a[0]], ptr[a[1]], ptr[o0], opt(2)]
                    .iter()
                    .all(|p| p % 16 == 0);
                if fns.len() >= 2
                    && (1..=src::GEMV_MAX_ROWS).contains(&m)
                    && kd % 8 == 0
                    && aligned
                    && bytes <= src::GEMV_MAX_SMEM
                    && nn <= i32::MAX as usize
                {
                    let plain = GemvShape {
                        m,
                        k: kd,
                        n: nn,
                        esize: esize as usize,
                        norm: false,
                        glu: false,
                    };
                    let ring = self.ring_gemv(fns.get(GEMV_RING_AT), &plain);
                    let on_ring = ring.is_some();
                    let (f, c) = match ring {
                        Some(fc) => fc,
                        None => {
                            let f = if m == 1 { &fns[0] } else { &fns[1] };
                            let blocks = nn.div_ceil(src::GEMV_PLAIN.cols) as u32;
                            (f, cfg((blocks, 1, 1), src::GEMV_PLAIN.threads, bytes as u32))
                        }
                    };
                    // Streamed before the wait: only a weight may be.
                    let early = matches!(self.locs[self.owner[a[1]]], Loc::Weight(_));
                    // The greedy pick of its logits, as the ring stores them.
                    if let Some(fa) = fns.get(GEMV_RING_AT + 1).filter(|_| on_ring && !s.gelu) {
                        let counters = Some(self.split_counters.ptr);
                        let args =
                            GemvPick::args(pick, &self.owner, o0, counters, &mut self.pool, c.grid_dim.0)?;
                        if let Some(pa) = args {
                            let r = launch_dependent!(&self.gpu, fa, c, early;
                                x = ptr[a[0]], w = ptr[a[1]], b = opt(2), y = ptr[o0], n = nn as i32,
                                k = kd as i32, m = m as i32, part = pa.part, counter = pa.counter, tok = pa.tok,
                                lp = pa.lp);
                            self.pool.release(pa.part);
                            return r;
                        }
                    }
                    let gpu = &self.gpu;
                    return launch_dependent!(gpu, f, c, early;
                        x = ptr[a[0]], w = ptr[a[1]], b = opt(2), y = ptr[o0], n = nn as i32, k = kd as i32,
                        m = m as i32);
                }
                let tiles = nn.div_ceil(src::SKINNY_ROWS_PER_BLOCK);
                if fns.len() >= 2 + src::SKINNY_VARIANTS.len()
                    && (src::GEMV_MAX_ROWS + 1..=src::SKINNY_MAX_ROWS).contains(&m)
                    && kd % 8 == 0
                    && aligned
                    && nn <= i32::MAX as usize
                    && kd <= i32::MAX as usize
                    && tiles <= SPLIT_COUNTERS
                    && !s.gelu
                    && match self.skinny {
                        SkinnyGemm::Off => false,
                        SkinnyGemm::Narrow => tiles < sms as usize,
                        SkinnyGemm::All => true,
                    }
                {
                    let v = src::SKINNY_VARIANTS
                        .iter()
                        .position(|&(_, rows)| m <= rows)
                        .unwrap_or(src::SKINNY_VARIANTS.len() - 1);
                    let smem = src::skinny_smem_bytes(src::SKINNY_VARIANTS[v].1, esize as usize) as u32;
                    // Narrow outputs split k until the grid fills the GPU
                    // twice, keeping at least four 64-wide k tiles a block.
                    let ktiles = kd.div_ceil(64);
                    let nsplit = if tiles >= sms as usize {
                        1
                    } else {
                        (2 * sms as usize).div_ceil(tiles).min(ktiles / 4).max(1)
                    };
                    let part = if nsplit > 1 {
                        self.pool
                            .alloc(nsplit * m * tiles * src::SKINNY_ROWS_PER_BLOCK * 4)?
                    } else {
                        0
                    };
                    let counters = self.split_counters.ptr;
                    // Its first weight tiles are requested before the wait:
                    // only a weight (which no kernel writes) may be.
                    let early = matches!(self.locs[self.owner[a[1]]], Loc::Weight(_));
                    let gpu = &self.gpu;
                    let r = launch_dependent!(gpu, &fns[2 + v], cfg((tiles as u32, nsplit as u32, 1), 128, smem), early;
                        x = ptr[a[0]], w = ptr[a[1]], b = opt(2), y = ptr[o0], part = part, ctr = counters,
                        n = nn as i32, k = kd as i32, m = m as i32);
                    if part != 0 {
                        self.pool.release(part);
                    }
                    return r;
                }
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
                    gelu: s.gelu,
                };
                unsafe {
                    self.gemm
                        .run(shape, ptr[a[1]], ptr[a[0]], ptr[o0], opt(2), &gpu.stream)
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
                    // A bias and a GELU fused at lowering (`fuse::gemm_epilogue`).
                    bias: a.len() > 2,
                    gelu: s.gelu,
                };
                unsafe {
                    self.gemm
                        .run(shape, ptr[a[1]], ptr[a[0]], ptr[o0], opt(2), &gpu.stream)
                }
            }
            (Kernel::RmsNorm, Op::RmsNorm(o)) => {
                let cols = last(a[0]);
                let (f, c) = match vec_rows(cols, &[ptr[a[0]], opt(1), ptr[o0]]) {
                    Some((i, block)) => (&fns[i], cfg(((n / cols) as u32, 1, 1), block, 0)),
                    None => (&fns[0], rows_cfg(n / cols, cols)),
                };
                launch!(gpu, f, c; x = ptr[a[0]], w = opt(1), y = ptr[o0], c = cols as i32, eps = o.eps as f32)
            }
            (Kernel::AddRmsNorm, Op::AddRmsNorm(o)) => {
                let cols = last(a[0]);
                let all = [ptr[a[0]], ptr[a[1]], opt(2), ptr[o0], ptr[s.outs[1]]];
                let (f, c) = match vec_rows(cols, &all) {
                    Some((i, block)) => (&fns[i], cfg(((n / cols) as u32, 1, 1), block, 0)),
                    None => (&fns[0], rows_cfg(n / cols, cols)),
                };
                launch!(gpu, f, c;
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
            (Kernel::SwiGlu, _) => {
                launch!(gpu, &fns[0], ew(n); g = ptr[a[0]], u = ptr[a[1]], y = ptr[o0], n = n as i64)
            }
            (Kernel::SwiGluSplit, _) => {
                let f = last(o0);
                if last(a[0]) != 2 * f {
                    return Err(format!("swiglu over halves of {} columns into {f}", last(a[0])));
                }
                let rows = n.checked_div(f).unwrap_or(0);
                let vec = f % 8 == 0 && ptr[a[0]] % 16 == 0 && ptr[o0] % 16 == 0;
                let threads = if vec { n / 8 } else { n };
                launch!(gpu, &fns[0], ew(threads);
                    x = ptr[a[0]], y = ptr[o0], rows = rows as i64, f = f as i64, v = i32::from(vec))
            }
            (Kernel::RopeQkvCache, Op::Rope(o)) => {
                let g = RopeQkv::of(s, dims)?;
                // Early only between GEMVs (decode batches): at larger
                // batches it measured 1-3 % slower on the H200.
                launch_dependent!(gpu, &fns[0], ew(g.ntok * g.width), g.ntok <= src::GEMV_MAX_ROWS;
                    qkv = ptr[a[0]], c = ptr[a[1]], sn = ptr[a[2]], q = ptr[o0], kc = ptr[a[3]], vc = ptr[a[4]],
                    sl = ptr[a[5]], nt = g.ntok as i64, hq = g.hq as i32, hkv = g.hkv as i32, d = g.d as i32,
                    dv = g.dv as i32, r = g.r as i32, il = i32::from(o.interleaved))
            }
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
                    strided(
                        od,
                        &broadcast_strides(&dims[a[0]], od),
                        &broadcast_strides(&dims[a[1]], od),
                    )
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
                let (outer, len, inner): (usize, usize, usize) = (
                    di[..axis].iter().product(),
                    di[axis],
                    di[axis + 1..].iter().product(),
                );
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
                if !s.cache_written {
                    launch!(gpu, &fns[0], ew(ntok * kw.max(vw));
                        k = ptr[a[1]], v = ptr[a[2]], kc = ptr[a[3]], vc = ptr[a[4]], sl = ptr[a[9]],
                        nt = ntok as i64, kw = kw as i32, vw = vw as i32)?;
                }
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
                if run.decode {
                    let counters = self.split_counters.ptr;
                    let grid = (ntok as u32, hkv as u32, run.nsplit as u32);
                    // Four warps, or eight (`decode_warps`: the splits were sized for them).
                    let warps = run.warps;
                    let smem = src::paged_decode_smem_bytes(d, esize as usize, warps) as u32;
                    let r = match rope.map(|rs| (rs, &rs.op, RopeQkv::of(rs, dims))) {
                        // The rope + cache write step's work too: its
                        // operands instead of the queries.
                        Some((rs, Op::Rope(ro), Ok(g))) => {
                            let ra = &rs.args;
                            launch!(gpu, &fns[ATTENTION_DECODE_ROPE], cfg(grid, 128, smem);
                                qkv = ptr[ra[0]], c = ptr[ra[1]], sn = ptr[ra[2]], sl = ptr[ra[5]],
                                width = g.width as i32, r = g.r as i32, il = i32::from(ro.interleaved),
                                kc = ptr[a[3]], vc = ptr[a[4]], pos = ptr[a[5]], bt = ptr[a[8]],
                                mb = dims[a[8]][1] as i32, out = ptr[o0], part = part, ctr = counters,
                                nt = ntok as i32, hq = hq as i32, hkv = hkv as i32, bs = bs as i32, scale = scale,
                                window = window)
                        }
                        Some((_, _, Err(e))) => Err(e),
                        Some((rs, ..)) => Err(format!("{} fused as a rope (a lowering bug)", rs.op.name())),
                        None => {
                            let f = if warps == 8 {
                                &fns[ATTENTION_DECODE8]
                            } else {
                                &fns[3]
                            };
                            launch_dependent!(gpu, f, cfg(grid, 32 * warps as u32, smem), ntok <= src::GEMV_MAX_ROWS;
                                q = ptr[a[0]], kc = ptr[a[3]], vc = ptr[a[4]], pos = ptr[a[5]], bt = ptr[a[8]],
                                mb = dims[a[8]][1] as i32, out = ptr[o0], part = part, ctr = counters,
                                nt = ntok as i32, hq = hq as i32, hkv = hkv as i32, bs = bs as i32, scale = scale,
                                window = window)
                        }
                    };
                    if part != 0 {
                        self.pool.release(part);
                    }
                    return r;
                }
                if run.mma {
                    let smem = src::prefill_mma_smem_bytes(d) as u32;
                    return launch!(gpu, &fns[ATTENTION_MMA], cfg((run.tiles as u32, hkv as u32, 1), 128, smem);
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
            (Kernel::EwChain, _) => self.launch_chain(fns, s, dims, ptr, false),
            _ => Err(format!(
                "kernel {} does not match op {} (a lowering bug)",
                k.name(),
                s.op.name()
            )),
        }
    }
}
