//! CPU target kernels at SmolLM2-135M shapes (hidden 576, MLP 1536, vocab
//! 49152): the `linear` that decode steps (1 row) and prefill chunks (128
//! rows) spend their time in, with f32, f16 and bf16 weights; and paged
//! attention for a decode step over a long context. Measured, never
//! asserted: `cargo bench --bench cpu_kernels`; numbers in docs/perf.md.

use half::{bf16, f16};
use optc::codegen::cpu::CpuProgram;
use optc_kernels::cpu::attention::{paged_attention, PagedMeta, PagedShape};
use optc_kernels::cpu::gemm::{linear, WeightRef};

fn main() {
    divan::main();
}

fn values(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 1000.0)
        .collect()
}

/// `[rows, 576] x [1536, 576]ᵀ` with weights in each dtype.
#[divan::bench(args = [1, 128], consts = [0, 1, 2])]
fn linear_576_to_1536<const DT: usize>(bencher: divan::Bencher, rows: usize) {
    let (k, n) = (576, 1536);
    let x = values(rows * k);
    let w = values(n * k);
    let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
    let wr = match DT {
        0 => WeightRef::F32(&w),
        1 => WeightRef::F16(&wh),
        _ => WeightRef::BF16(&wb),
    };
    let mut out = vec![0f32; rows * n];
    bencher
        .counter(divan::counter::BytesCount::new(n * k * [4, 2, 2][DT]))
        .bench_local(|| linear(&x, rows, k, wr, n, None, &mut out));
}

/// A decode step of 8 sequences over 1024 cached tokens each (9 query
/// heads, 3 kv heads, head size 64, 16-token blocks).
#[divan::bench]
fn paged_attention_decode_8x1024(bencher: divan::Bencher) {
    let (seqs, ctx, hq, hkv, d, bs) = (8usize, 1024usize, 9, 3, 64, 16);
    let per = ctx / bs;
    let nb = seqs * per;
    let mut kc = values(nb * bs * hkv * d);
    let mut vc = kc.clone();
    let q = values(seqs * hq * d);
    let k = values(seqs * hkv * d);
    let positions: Vec<i64> = vec![ctx as i64 - 1; seqs];
    let seq_starts: Vec<i64> = (0..=seqs as i64).collect();
    let context_lens = vec![ctx as i64; seqs];
    let block_tables: Vec<i64> = (0..nb as i64).collect();
    let slot_mapping: Vec<i64> = (0..seqs)
        .map(|s| ((s * per + per - 1) * bs + bs - 1) as i64)
        .collect();
    let meta = PagedMeta {
        positions: &positions,
        seq_starts: &seq_starts,
        context_lens: &context_lens,
        block_tables: &block_tables,
        max_blocks: per,
        slot_mapping: &slot_mapping,
    };
    let shape = PagedShape {
        tokens: seqs,
        q_heads: hq,
        kv_heads: hkv,
        head_dim: d,
        v_dim: d,
        num_blocks: nb,
        block_size: bs,
    };
    let mut out = vec![0f32; seqs * hq * d];
    bencher.bench_local(|| {
        paged_attention(shape, &q, &k, &k, &mut kc, &mut vc, &meta, 0.125, None, &mut out)
            .expect("valid metadata")
    });
}

/// One full forward of the tiny decoder fixture through the CPU target
/// (lowering overheads dominate at this size).
#[divan::bench]
fn tiny_decoder_cpu_forward(bencher: divan::Bencher) {
    use optc::fixtures::{random_ids, tiny_decoder, SplitMix64, TinyDecoderConfig};
    let cfg = TinyDecoderConfig::default();
    let (g, store) = tiny_decoder(&cfg).expect("fixture builds");
    let ids = random_ids(&[1, 16], cfg.vocab, &mut SplitMix64(1));
    let inputs = std::collections::BTreeMap::from([("ids".to_string(), ids)]);
    let mut p = CpuProgram::new(&g, &store).expect("lowers");
    bencher.bench_local(|| p.run(&inputs).expect("runs"));
}
