//! Paged attention over a block-table KV cache (the `paged_attention` op):
//! new keys/values are written into their slots, then every query token
//! attends causally (optionally within a sliding window) over its
//! sequence's cached positions. Queries run in parallel, one token's heads
//! per task; scores accumulate in f32.

use rayon::prelude::*;

use super::gemm::{axpy, dot};

/// Sizes of one paged-attention call.
#[derive(Clone, Copy, Debug)]
pub struct PagedShape {
    pub tokens: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub v_dim: usize,
    pub num_blocks: usize,
    pub block_size: usize,
}

/// The step's metadata (see the op's documentation in `optc-ir`).
pub struct PagedMeta<'a> {
    pub positions: &'a [i64],
    pub seq_starts: &'a [i64],
    pub context_lens: &'a [i64],
    /// `[seqs, max_blocks]` row-major.
    pub block_tables: &'a [i64],
    pub max_blocks: usize,
    pub slot_mapping: &'a [i64],
}

/// Checks the step metadata against the cache shape (every slot, block
/// and position in range, `seq_starts` rising from 0 to the token count)
/// and returns each token's sequence. Every target runs this before
/// touching a cache, so bad metadata is an error, never a stray write.
pub fn check_paged_meta(s: PagedShape, meta: &PagedMeta) -> Result<Vec<usize>, String> {
    let PagedShape {
        tokens,
        q_heads: hq,
        kv_heads: hkv,
        num_blocks: nb,
        block_size: bs,
        ..
    } = s;
    if hkv == 0 || hq % hkv != 0 {
        return Err(format!("{hq} query heads are not a multiple of {hkv} kv heads"));
    }
    if meta.slot_mapping.len() != tokens || meta.positions.len() != tokens {
        return Err(format!(
            "{tokens} tokens but {} positions and {} slots",
            meta.positions.len(),
            meta.slot_mapping.len()
        ));
    }
    for (t, &slot) in meta.slot_mapping.iter().enumerate() {
        if slot >= 0 && slot as usize >= nb * bs {
            return Err(format!(
                "slot_mapping[{t}] = {slot} is outside the cache ({nb} blocks of {bs})"
            ));
        }
    }
    let seqs = meta.context_lens.len();
    if meta.seq_starts.len() != seqs + 1
        || meta.seq_starts.first() != Some(&0)
        || meta.seq_starts.last() != Some(&(tokens as i64))
        || meta.seq_starts.windows(2).any(|w| w[1] < w[0])
    {
        return Err(format!(
            "seq_starts must rise from 0 to the token count {tokens}, got {:?}",
            meta.seq_starts
        ));
    }
    let mut seq_of = vec![0usize; tokens];
    for sq in 0..seqs {
        for x in &mut seq_of[meta.seq_starts[sq] as usize..meta.seq_starts[sq + 1] as usize] {
            *x = sq;
        }
    }
    // Check every position and block id up front, so the parallel part
    // cannot fail.
    for (t, (&sq, &pos)) in seq_of.iter().zip(meta.positions).enumerate() {
        if pos < 0 || pos >= meta.context_lens[sq] {
            return Err(format!(
                "token {t} has position {pos} outside its sequence's context of {}",
                meta.context_lens[sq]
            ));
        }
        let need = pos as usize / bs + 1;
        if need > meta.max_blocks {
            return Err(format!(
                "sequence {sq} needs {need} blocks for position {pos} but its block table has {}",
                meta.max_blocks
            ));
        }
        for bi in 0..need {
            let b = meta.block_tables[sq * meta.max_blocks + bi];
            if b < 0 || b as usize >= nb {
                return Err(format!(
                    "block_tables[{sq}][{bi}] = {b} is outside the cache of {nb} blocks"
                ));
            }
        }
    }
    Ok(seq_of)
}

/// Writes `k`/`v` into the caches, then `out[T, Hq, Dv]` = attention.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    s: PagedShape,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    k_cache: &mut [f32],
    v_cache: &mut [f32],
    meta: &PagedMeta,
    scale: f32,
    window: Option<usize>,
    out: &mut [f32],
) -> Result<(), String> {
    let PagedShape {
        tokens,
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
        v_dim: dv,
        block_size: bs,
        ..
    } = s;
    let seq_of = check_paged_meta(s, meta)?;
    let (kw, vw) = (hkv * d, hkv * dv);
    for (t, &slot) in meta.slot_mapping.iter().enumerate() {
        if slot >= 0 {
            let slot = slot as usize;
            k_cache[slot * kw..(slot + 1) * kw].copy_from_slice(&k[t * kw..(t + 1) * kw]);
            v_cache[slot * vw..(slot + 1) * vw].copy_from_slice(&v[t * vw..(t + 1) * vw]);
        }
    }
    let group = hq / hkv;
    if tokens == 0 || hq * dv == 0 {
        return Ok(());
    }
    let (kc, vc) = (&*k_cache, &*v_cache);
    out.par_chunks_mut(hq * dv).enumerate().for_each(|(t, o)| {
        let sq = seq_of[t];
        let pos = meta.positions[t] as usize;
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let table = &meta.block_tables[sq * meta.max_blocks..(sq + 1) * meta.max_blocks];
        let slots: Vec<usize> = (first..=pos)
            .map(|j| table[j / bs] as usize * bs + j % bs)
            .collect();
        let mut p = vec![0f32; slots.len()];
        for h in 0..hq {
            let kh = h / group;
            let qi = &q[(t * hq + h) * d..(t * hq + h + 1) * d];
            let mut max = f32::NEG_INFINITY;
            for (pj, &slot) in p.iter_mut().zip(&slots) {
                let kj = &kc[slot * kw + kh * d..slot * kw + (kh + 1) * d];
                let sc = dot(qi, kj) * scale;
                max = max.max(sc);
                *pj = sc;
            }
            let mut sum = 0f32;
            for pj in p.iter_mut() {
                *pj = (*pj - max).exp();
                sum += *pj;
            }
            let oh = &mut o[h * dv..(h + 1) * dv];
            oh.fill(0.0);
            for (&w, &slot) in p.iter().zip(&slots) {
                let w = w / sum;
                axpy(w, &vc[slot * vw + kh * dv..slot * vw + (kh + 1) * dv], oh);
            }
        }
    });
    Ok(())
}
