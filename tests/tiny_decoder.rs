//! The tiny decoder fixture end to end on the interpreter: its text form is
//! a reviewed snapshot, it survives print/parse, and its outputs behave as a
//! causal language model must (no peeking at later tokens, batch rows
//! independent, deterministic).

use std::collections::BTreeMap;

use optc::fixtures::{random_ids, tiny_decoder, SplitMix64, TinyDecoderConfig};
use optc::ir::{parse, print, run, DType, Tensor};

fn logits(ids: &Tensor) -> Tensor {
    let (g, store) = tiny_decoder(&TinyDecoderConfig::default()).unwrap();
    let inputs = BTreeMap::from([("ids".to_string(), ids.clone())]);
    run(&g, &inputs, &store).unwrap().remove(0)
}

#[test]
fn text_form_snapshot() {
    let (g, _) = tiny_decoder(&TinyDecoderConfig::default()).unwrap();
    let text = print(&g);
    assert_eq!(parse(&text).unwrap(), g);
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("tiny_decoder_ir", text);
    });
}

#[test]
fn later_tokens_do_not_change_earlier_logits() {
    let cfg = TinyDecoderConfig::default();
    let ids = random_ids(&[1, 8], cfg.vocab, &mut SplitMix64(1));
    let mut changed = ids.to_i64_vec();
    changed[6] = (changed[6] + 1) % cfg.vocab as i64;
    changed[7] = (changed[7] + 5) % cfg.vocab as i64;
    let a = logits(&ids).to_f32_vec();
    let b = logits(&Tensor::from_i64(DType::I64, &[1, 8], &changed)).to_f32_vec();
    let v = cfg.vocab;
    assert_eq!(
        a[..6 * v],
        b[..6 * v],
        "positions 0..6 must not see tokens 6 and 7"
    );
    assert_ne!(
        a[6 * v..],
        b[6 * v..],
        "positions 6 and 7 must depend on their tokens"
    );
}

#[test]
fn batch_rows_are_independent_and_runs_deterministic() {
    let cfg = TinyDecoderConfig::default();
    let row = random_ids(&[1, 5], cfg.vocab, &mut SplitMix64(2)).to_i64_vec();
    let other = random_ids(&[1, 5], cfg.vocab, &mut SplitMix64(3)).to_i64_vec();
    let single = logits(&Tensor::from_i64(DType::I64, &[1, 5], &row)).to_f32_vec();
    let both: Vec<i64> = other.iter().chain(&row).copied().collect();
    let batched = logits(&Tensor::from_i64(DType::I64, &[2, 5], &both));
    assert_eq!(batched.shape(), &[2, 5, cfg.vocab]);
    assert_eq!(batched.to_f32_vec()[5 * cfg.vocab..], single[..]);
    let again = logits(&Tensor::from_i64(DType::I64, &[2, 5], &both));
    assert_eq!(again, batched);
    assert!(single.iter().all(|x| x.is_finite()));
}
