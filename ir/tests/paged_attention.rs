//! `paged_attention` against `scaled_dot_product_attention`: two sequences
//! of different lengths in one flat batch, blocks of 3 slots in shuffled
//! order, GQA (4 query heads on 2 kv heads), causal and sliding-window,
//! a prefill chunk after cached tokens; and the run-time errors.

use std::collections::BTreeMap;

use optc_ir::{parse, run, DType, Tensor, WeightStore};

const PAGED: &str = "graph p(%q: f32[T, 4, 8], %k: f32[T, 2, 8], %v: f32[T, 2, 8], %kc: f32[NB, 3, 2, 8], %vc: f32[NB, 3, 2, 8], %pos: i64[T], %starts: i64[Q+1], %ctx: i64[Q], %tables: i64[Q, M], %slots: i64[T]) -> (%o: f32[T, 4, 8], %kc2: f32[NB, 3, 2, 8], %vc2: f32[NB, 3, 2, 8]) {
  %0: f32[T, 4, 8], %1: f32[NB, 3, 2, 8], %2: f32[NB, 3, 2, 8] = paged_attention(%q, %k, %v, %kc, %vc, %pos, %starts, %ctx, %tables, %slots) WINDOW
  return %0, %1, %2
}";

const SDPA: &str =
    "graph s(%q: f32[1, 4, S, 8], %k: f32[1, 2, S, 8], %v: f32[1, 2, S, 8]) -> (%o: f32[1, 4, S, 8]) {
  %0: f32[1, 4, S, 8] = scaled_dot_product_attention(%q, %k, %v) {causal = true}
  return %0
}";

const SDPA_MASK: &str = "graph s(%q: f32[1, 4, S, 8], %k: f32[1, 2, S, 8], %v: f32[1, 2, S, 8], %m: bool[S, S]) -> (%o: f32[1, 4, S, 8]) {
  %0: f32[1, 4, S, 8] = scaled_dot_product_attention(%q, %k, %v, %m) {causal = false}
  return %0
}";

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(DType::F32, shape, v)
}

fn i64t(shape: &[usize], v: &[i64]) -> Tensor {
    Tensor::from_i64(DType::I64, shape, v)
}

/// Token-major `[S, H, D]` rows of a sequence to SDPA's `[1, H, S, D]`.
fn heads_first(x: &[f32], s: usize, h: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for t in 0..s {
        for hh in 0..h {
            for i in 0..d {
                out[(hh * s + t) * d + i] = x[(t * h + hh) * d + i];
            }
        }
    }
    out
}

struct Seq {
    len: usize,
    blocks: Vec<i64>,
}

/// Runs the paged op in two steps (first `split[i]` tokens of each
/// sequence, then the rest) and checks the second step's outputs against
/// SDPA over each whole sequence.
fn check(window: Option<usize>) {
    let seqs = [
        Seq {
            len: 7,
            blocks: vec![4, 1, 6],
        },
        Seq {
            len: 5,
            blocks: vec![0, 5],
        },
    ];
    let split = [4usize, 2];
    let (hq, hkv, d, bs, nb) = (4, 2, 8, 3, 7);
    let q: Vec<Vec<f32>> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| random(s.len * hq * d, 11 + i as u64))
        .collect();
    let k: Vec<Vec<f32>> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| random(s.len * hkv * d, 21 + i as u64))
        .collect();
    let v: Vec<Vec<f32>> = seqs
        .iter()
        .enumerate()
        .map(|(i, s)| random(s.len * hkv * d, 31 + i as u64))
        .collect();
    let text = PAGED.replace(
        "WINDOW",
        &window.map_or(String::new(), |w| format!("{{window = {w}}}")),
    );
    let g = parse(&text).unwrap();
    let mut kc = vec![0f32; nb * bs * hkv * d];
    let mut vc = kc.clone();
    let mut last = Vec::new();
    for step in 0..2 {
        let (mut qs, mut ks, mut vs, mut pos, mut slots, mut ctx, mut starts) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![0i64]);
        for (i, s) in seqs.iter().enumerate() {
            let range = if step == 0 { 0..split[i] } else { split[i]..s.len };
            for p in range.clone() {
                qs.extend(&q[i][p * hq * d..(p + 1) * hq * d]);
                ks.extend(&k[i][p * hkv * d..(p + 1) * hkv * d]);
                vs.extend(&v[i][p * hkv * d..(p + 1) * hkv * d]);
                pos.push(p as i64);
                slots.push(s.blocks[p / bs] * bs as i64 + (p % bs) as i64);
            }
            ctx.push(range.end as i64);
            starts.push(pos.len() as i64);
        }
        let t = pos.len();
        let tables: Vec<i64> = seqs
            .iter()
            .flat_map(|s| s.blocks.iter().copied().chain([0]).take(3))
            .collect();
        let inputs = BTreeMap::from([
            ("q".to_string(), f32t(&[t, hq, d], &qs)),
            ("k".to_string(), f32t(&[t, hkv, d], &ks)),
            ("v".to_string(), f32t(&[t, hkv, d], &vs)),
            ("kc".to_string(), f32t(&[nb, bs, hkv, d], &kc)),
            ("vc".to_string(), f32t(&[nb, bs, hkv, d], &vc)),
            ("pos".to_string(), i64t(&[t], &pos)),
            ("starts".to_string(), i64t(&[3], &starts)),
            ("ctx".to_string(), i64t(&[2], &ctx)),
            ("tables".to_string(), i64t(&[2, 3], &tables)),
            ("slots".to_string(), i64t(&[t], &slots)),
        ]);
        let out = run(&g, &inputs, &WeightStore::new()).unwrap();
        kc = out[1].to_f32_vec();
        vc = out[2].to_f32_vec();
        last = out[0].to_f32_vec();
    }
    // The second step's rows are the tail of each sequence.
    let mut row = 0;
    for (i, s) in seqs.iter().enumerate() {
        let sdpa = match window {
            None => parse(&SDPA.replace('S', &s.len.to_string())).unwrap(),
            Some(_) => parse(&SDPA_MASK.replace('S', &s.len.to_string())).unwrap(),
        };
        let mut inputs = BTreeMap::from([
            (
                "q".to_string(),
                f32t(&[1, hq, s.len, d], &heads_first(&q[i], s.len, hq, d)),
            ),
            (
                "k".to_string(),
                f32t(&[1, hkv, s.len, d], &heads_first(&k[i], s.len, hkv, d)),
            ),
            (
                "v".to_string(),
                f32t(&[1, hkv, s.len, d], &heads_first(&v[i], s.len, hkv, d)),
            ),
        ]);
        if let Some(w) = window {
            let m: Vec<bool> = (0..s.len * s.len)
                .map(|x| (x % s.len <= x / s.len) && (x / s.len - x % s.len) < w)
                .collect();
            inputs.insert("m".to_string(), Tensor::from_bool(&[s.len, s.len], &m));
        }
        let want = run(&sdpa, &inputs, &WeightStore::new()).unwrap()[0].to_f32_vec();
        for p in split[i]..s.len {
            for h in 0..hq {
                for j in 0..d {
                    let got = last[(row * hq + h) * d + j];
                    let w = want[(h * s.len + p) * d + j];
                    assert!(
                        (got - w).abs() < 1e-6,
                        "window {window:?} seq {i} pos {p} head {h}: {got} vs {w}"
                    );
                }
            }
            row += 1;
        }
    }
}

#[test]
fn causal_matches_sdpa_over_whole_sequences() {
    check(None);
}

#[test]
fn sliding_window_matches_a_masked_sdpa() {
    check(Some(2));
}

#[test]
fn bad_metadata_is_an_error() {
    let g = parse(&PAGED.replace("WINDOW", "")).unwrap();
    let base = |slots: &[i64], tables: &[i64], ctx: &[i64]| {
        BTreeMap::from([
            ("q".to_string(), f32t(&[2, 4, 8], &random(64, 1))),
            ("k".to_string(), f32t(&[2, 2, 8], &random(32, 2))),
            ("v".to_string(), f32t(&[2, 2, 8], &random(32, 3))),
            ("kc".to_string(), f32t(&[2, 3, 2, 8], &[0.0; 96])),
            ("vc".to_string(), f32t(&[2, 3, 2, 8], &[0.0; 96])),
            ("pos".to_string(), i64t(&[2], &[0, 1])),
            ("starts".to_string(), i64t(&[2], &[0, 2])),
            ("ctx".to_string(), i64t(&[1], ctx)),
            ("tables".to_string(), i64t(&[1, 1], tables)),
            ("slots".to_string(), i64t(&[2], slots)),
        ])
    };
    let err = |i: BTreeMap<String, Tensor>| run(&g, &i, &WeightStore::new()).unwrap_err().to_string();
    assert!(run(&g, &base(&[3, 4], &[1], &[2]), &WeightStore::new()).is_ok());
    assert!(err(base(&[3, 99], &[1], &[2])).contains("slot_mapping[1] = 99 is outside the cache"));
    assert!(err(base(&[3, 4], &[5], &[2])).contains("outside the cache of 2 blocks"));
    assert!(err(base(&[3, 4], &[1], &[1])).contains("outside its sequence's context"));
}
