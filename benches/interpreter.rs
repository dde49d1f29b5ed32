//! Reference-interpreter speed on the 2-layer tiny decoder (hidden 32,
//! 4 heads / 2 kv heads, vocab 64): measured, never asserted. Run with
//! `cargo bench --bench interpreter`; numbers go to docs/perf.md.

use std::collections::BTreeMap;

use optc::fixtures::{random_ids, tiny_decoder, SplitMix64, TinyDecoderConfig};
use optc::ir::{parse, print, run, verify};

fn main() {
    divan::main();
}

/// One forward pass over `batch` sequences of `seq` tokens.
#[divan::bench(args = [(1, 16), (4, 64)])]
fn tiny_decoder_forward(bencher: divan::Bencher, (batch, seq): (usize, usize)) {
    let cfg = TinyDecoderConfig::default();
    let (g, store) = tiny_decoder(&cfg).expect("fixture builds");
    let ids = random_ids(&[batch, seq], cfg.vocab, &mut SplitMix64(1));
    let inputs = BTreeMap::from([("ids".to_string(), ids)]);
    bencher
        .counter(divan::counter::ItemsCount::new(batch * seq))
        .bench(|| run(&g, &inputs, &store).expect("runs"));
}

/// Text form: print, parse and verify the same graph.
#[divan::bench]
fn tiny_decoder_text_round_trip(bencher: divan::Bencher) {
    let (g, _) = tiny_decoder(&TinyDecoderConfig::default()).expect("fixture builds");
    let text = print(&g);
    bencher.bench(|| {
        let back = parse(&text).expect("parses");
        verify(&back).expect("verifies");
        print(&back)
    });
}
