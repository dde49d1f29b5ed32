//! torch.export archives (`tests/fixtures/fx/*.pt2`, written by
//! `scripts/make_fx_fixtures.py` with torch 2.11 and transformers 5.17)
//! evaluated by the reference interpreter against what torch computed for
//! the same inputs: at the export's example length (8) and at two others
//! (5 and 13), so the symbolic sequence dim is exercised.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use optc::frontends::fx;
use optc::ir::{run, DType, WeightStore};

fn fixture(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fx")
        .join(file)
}

fn check(name: &str, input: &str) {
    let m = fx::load(fixture(&format!("{name}.pt2"))).unwrap_or_else(|e| panic!("{e}"));
    let mut reference = WeightStore::new();
    reference
        .open_safetensors(fixture(&format!("{name}.reference.safetensors")))
        .unwrap();
    for len in [5, 8, 13] {
        let x = reference.get(&format!("input_{len}")).unwrap();
        let want = reference.get(&format!("output_{len}")).unwrap();
        let inputs = BTreeMap::from([(input.to_string(), x)]);
        let got = run(&m.graph, &inputs, &m.weights).unwrap_or_else(|e| panic!("{name} at {len}: {e}"));
        assert_eq!(got.len(), 1, "{name}");
        let got = got[0].cast(DType::F32);
        assert_eq!(got.shape(), want.shape(), "{name} at {len}");
        let err = got.max_abs_diff(&want);
        eprintln!(
            "{name} at length {len}: max abs error {err:.2e} over {:?}",
            want.shape()
        );
        assert!(err <= 1e-4, "{name} at length {len}: max abs error {err}");
    }
}

#[test]
fn llama_matches_torch() {
    check("llama", "input_ids");
}

#[test]
fn qwen2_matches_torch() {
    check("qwen2", "input_ids");
}

#[test]
fn gpt2_matches_torch() {
    check("gpt2", "input_ids");
}

#[test]
fn patch_mlp_matches_torch() {
    check("mlp", "x");
}

#[test]
fn op_zoo_matches_torch() {
    check("ops", "x");
}
