//! The text IR of the Llama fixture after each pass of the default
//! pipeline, as reviewed snapshots in `snapshots/`.

use std::path::Path;

use optc::frontends::hf;
use optc::passes::{PassManager, PassRegistry, PassSpec, Pipeline};

#[test]
fn llama_after_each_pass() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let mut m = hf::load(dir).unwrap();
    let registry = PassRegistry::builtin();
    for (i, spec) in Pipeline::default_pipeline().passes.into_iter().enumerate() {
        let name = spec.name.clone();
        let one = Pipeline {
            passes: vec![PassSpec { ..spec }],
        };
        PassManager::new(&registry, &one)
            .unwrap()
            .run(&mut m.graph, &mut m.weights)
            .unwrap();
        let snap = format!("llama_{:02}_{name}", i + 1);
        insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(snap, optc::ir::print(&m.graph));
        });
    }
}

/// The step graph of the serving pipeline (`insert_kv_cache` and its
/// cleanup after the default passes), with 16-token cache blocks.
#[test]
fn llama_serving_step_graph() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let mut m = hf::load(dir).unwrap();
    PassManager::new(&PassRegistry::builtin(), &Pipeline::serving(16))
        .unwrap()
        .run(&mut m.graph, &mut m.weights)
        .unwrap();
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("llama_serving_step", optc::ir::print(&m.graph));
    });
}

/// The tensorrt target's network (`insert_past_kv` and its cleanup after
/// the default passes) for Mistral, whose sliding window is rebuilt over
/// the past: contiguous `past_key_values` inputs, `present` outputs.
#[test]
fn mistral_decoder_with_past_graph() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/mistral");
    let mut m = hf::load(dir).unwrap();
    PassManager::new(&PassRegistry::builtin(), &Pipeline::decoder_with_past())
        .unwrap()
        .run(&mut m.graph, &mut m.weights)
        .unwrap();
    insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
        insta::assert_snapshot!("mistral_decoder_with_past", optc::ir::print(&m.graph));
    });
}
