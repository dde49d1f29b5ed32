//! Per-head ready counts between a QKV GEMV that does the rope and the
//! decode attention after it (`Gpu::attention_flags`).
//!
//! With programmatic dependent launch, decode attention waits for the
//! whole QKV grid to finish (and its memory to flush) before it reads the
//! queries and the current token's key and value. Yet the attention block
//! of KV head g needs only the rows of g's group: its G query heads, its
//! key and its value. So the GEMV counts, per (token, KV head), the warps
//! that stored those rows (`GemvRopeStore::ready`, one RoPE pair a warp),
//! and the attention block waits for its head's count to reach
//! (G d + d + dv) / 2 (`paged_decode_mma_impl`), then resets it. A head's
//! attention starts as soon as its rows land, and the launch boundary's
//! flush is off the critical path.
//!
//! The protocol is host-side: a GEMV counts only for an attention step
//! that will wait on the counts in the same run (`rope_attention` pairs
//! them at lowering; `CudaProgram::rope_ready` decides per run), so every
//! count is consumed and reset before the next GEMV adds to it. A run that
//! fails between the two leaves counts behind: the next run zeroes them
//! first (`ReadyCounts::dirty`).

use std::collections::HashMap;

use optc_ir::Op;

use super::device::DeviceBox;
use super::program::{AttentionRun, CudaProgram, Exec, Step};
use optc_kernels::cuda as src;

/// Counts a buffer holds: (token, KV head) pairs of one GEMV.
pub(super) const READY_COUNTS: usize = src::GEMV_MAX_ROWS * 1024;

/// The counts on the GPU and the run's state of the protocol.
pub(super) struct ReadyCounts {
    pub(super) buf: DeviceBox,
    /// Rope step → the decode attention step that reads its queries.
    pub(super) pairs: HashMap<usize, usize>,
    /// The attention step the counts now on the GPU are for.
    pub(super) pending: Option<usize>,
    /// Counts may be non-zero outside a GEMV–attention pair (a run failed
    /// between them): zero them before the next run.
    pub(super) dirty: bool,
}

/// The rope steps whose queries, key cache and value cache a paged
/// attention step reads next, and that attention step: the pairs whose
/// GEMV may count for the attention (`owner` maps a value to the one
/// whose buffer it views).
pub(super) fn rope_attention(steps: &[Step], owner: &[usize]) -> HashMap<usize, usize> {
    let mut pairs = HashMap::new();
    for (sa, a) in steps.iter().enumerate() {
        if !matches!((&a.exec, &a.op), (Exec::Kernel(..), Op::PagedAttention(_))) || a.args.len() < 5 {
            continue;
        }
        let q = owner[a.args[0]];
        let found = steps[..sa].iter().rposition(|r| {
            matches!(r.op, Op::Rope(_))
                && r.outs.first() == Some(&q)
                && r.args.len() >= 5
                && owner[r.args[3]] == owner[a.args[3]]
                && owner[r.args[4]] == owner[a.args[4]]
        });
        if let Some(ri) = found {
            // Nothing between them may write the queries or the caches.
            let written_between = steps[ri + 1..sa].iter().any(|s| {
                s.outs
                    .iter()
                    .any(|&o| [q, owner[a.args[3]], owner[a.args[4]]].contains(&owner[o]))
            });
            if !written_between {
                pairs.insert(ri, sa);
            }
        }
    }
    pairs
}

/// What the attention block waits for: the warps that store one KV head's
/// rows, a RoPE pair each (its `g` query heads of `d`, its key of `d` and
/// its value of `dv`), when pairs never straddle heads.
pub(super) fn expected_count(hq: usize, hkv: usize, d: usize, dv: usize) -> Option<u32> {
    if hkv == 0 || hq % hkv != 0 || d % 2 != 0 || dv % 2 != 0 {
        return None;
    }
    u32::try_from((hq / hkv * d + d + dv) / 2).ok()
}

impl CudaProgram {
    /// Zeroes ready counts a failed run left behind (a GEMV counted, its
    /// attention never ran), before a run or a graph replay reads them.
    pub(super) fn clear_stale_ready(&mut self) -> Result<(), String> {
        if let Some(rc) = &mut self.ready {
            if rc.dirty || rc.pending.is_some() {
                self.gpu.zero(rc.buf.ptr, rc.buf.bytes)?;
                rc.dirty = false;
                rc.pending = None;
            }
        }
        Ok(())
    }

    /// The ready counts QKV GEMV `s` (a linear whose GEMV does the rope)
    /// counts into this run, and the attention step that will wait on
    /// them: only when that attention takes the tensor-core decode kernel
    /// (the one that waits on counts), and its heads' rows pair up.
    pub(super) fn rope_ready(
        &self,
        s: &Step,
        steps: &[Step],
        dims: &[Vec<usize>],
        attn: &HashMap<usize, AttentionRun>,
    ) -> Option<(u64, usize)> {
        if !self.gpu.attention_flags {
            return None;
        }
        let rc = self.ready.as_ref()?;
        let &sa = rc.pairs.get(&s.fused.as_ref()?.rope?)?;
        if !attn.get(&sa)?.decode {
            return None;
        }
        let a = &steps[sa].args;
        let (dq, dk, dv) = (&dims[a[0]], &dims[a[1]], &dims[a[2]]);
        let (&ntok, &hq, &d, &hkv, &dvh) = (dq.first()?, dq.get(1)?, dq.get(2)?, dk.get(1)?, dv.get(2)?);
        let esize = self.types[a[0]].dtype.storage_bytes(1);
        let fits = src::decode_mma_supported(d, esize)
            && ntok * hkv <= READY_COUNTS
            && expected_count(hq, hkv, d, dvh).is_some();
        fits.then_some((rc.buf.ptr, sa))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_waits_for_its_group_key_and_value_pairs() {
        // Llama-3.2-1B: 32 query heads over 8 KV heads of 64.
        assert_eq!(expected_count(32, 8, 64, 64), Some(192));
        assert_eq!(expected_count(14, 2, 64, 64), Some(288));
        // A pair would straddle two heads, or the group is not whole.
        assert_eq!(expected_count(8, 8, 64, 63), None);
        assert_eq!(expected_count(6, 4, 64, 64), None);
        assert_eq!(expected_count(4, 0, 64, 64), None);
    }
}
