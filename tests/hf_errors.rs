//! Bad model folders give errors that name the file and the tensor or key:
//! missing files, truncated or malformed safetensors, tensors whose shape
//! disagrees with the config, unsupported dtypes and architectures.

use std::path::{Path, PathBuf};

use optc::frontends::hf;
use optc::ir::weights::write_safetensors;
use optc::ir::{DType, Tensor, WeightStore};

/// A fresh copy of a fixture folder.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hf")
        .join(name);
    let dst = std::env::temp_dir().join(format!("optc-hf-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn load_err(dir: &Path) -> String {
    match hf::load(dir) {
        Ok(_) => panic!("{} should not load", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites model.safetensors with `f` applied to its tensor list.
fn edit_weights(dir: &Path, f: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let p = dir.join("model.safetensors");
    let mut s = WeightStore::new();
    s.open_safetensors(&p).unwrap();
    let mut v: Vec<(String, Tensor)> = s.names().map(|n| (n.to_string(), s.get(n).unwrap())).collect();
    drop(s);
    f(&mut v);
    write_safetensors(&p, &v).unwrap();
}

#[test]
fn missing_files() {
    let dir = copy_fixture("llama", "missing");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: no model.safetensors or model.safetensors.index.json",
            dir.display()
        )
    );
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(load_err(&dir).starts_with(&format!("{}: ", dir.join("config.json").display())));
}

#[test]
fn truncated_safetensors() {
    let dir = copy_fixture("llama", "truncated");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.starts_with(&format!("{}: not a valid safetensors file", p.display())),
        "{e}"
    );
}

#[test]
fn tensor_shape_disagrees_with_config() {
    let dir = copy_fixture("llama", "shape");
    edit_config(&dir, |c| c["intermediate_size"] = 100.into());
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: tensor 'model.layers.0.mlp.gate_proj.weight' has shape [128, 64] but the config implies [100, 64]",
            dir.join("model.safetensors").display()
        )
    );
}

#[test]
fn missing_tensor() {
    let dir = copy_fixture("llama", "tensor");
    edit_weights(&dir, |v| {
        v.retain(|(n, _)| n != "model.layers.1.self_attn.k_proj.weight")
    });
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: missing tensor 'model.layers.1.self_attn.k_proj.weight'",
            dir.join("model.safetensors").display()
        )
    );
}

#[test]
fn unsupported_dtypes() {
    let dir = copy_fixture("llama", "dtype");
    edit_weights(&dir, |v| {
        for (n, t) in v.iter_mut() {
            if n == "model.norm.weight" {
                *t = t.cast(DType::I32);
            }
        }
    });
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: tensor 'model.norm.weight' has dtype i32; weights must be f32, f16 or bf16",
            dir.join("model.safetensors").display()
        )
    );
    // A dtype optc has no type for at all (6-bit MX floats), written by hand.
    let p = dir.join("model.safetensors");
    let header = br#"{"x":{"dtype":"F6_E2M3","shape":[8],"data_offsets":[0,6]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 6]);
    std::fs::write(&p, bytes).unwrap();
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: tensor 'x' has dtype F6_E2M3, which optc does not support",
            p.display()
        )
    );
}

#[test]
fn unknown_architecture_lists_the_supported_ones() {
    let dir = copy_fixture("llama", "arch");
    edit_config(&dir, |c| {
        c["architectures"] = serde_json::json!(["BertForMaskedLM"]);
        c["model_type"] = "bert".into();
    });
    assert_eq!(
        load_err(&dir),
        format!(
            "{}: architecture BertForMaskedLM is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Phi3ForCausalLM, GPT2LMHeadModel)",
            dir.join("config.json").display()
        )
    );
}

/// The llama fixture's load error after `edit` changes its config.json,
/// less the "PATH/config.json: " every such error starts with.
fn config_error(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let dir = copy_fixture("llama", tag);
    edit_config(&dir, edit);
    let e = load_err(&dir);
    let prefix = format!("{}: ", dir.join("config.json").display());
    e.strip_prefix(&prefix).map_or(e.clone(), str::to_string)
}

#[test]
fn malformed_config_values() {
    let dir = copy_fixture("llama", "config");
    std::fs::write(
        dir.join("config.json"),
        "{\"architectures\": [\"LlamaForCausalLM\"], ",
    )
    .unwrap();
    assert!(load_err(&dir).contains("config.json: invalid JSON"));
    assert_eq!(
        config_error("config2", |c| c["hidden_size"] = "big".into()),
        "'hidden_size' must be a non-negative integer, found \"big\""
    );
    assert_eq!(
        config_error("config3", |c| c["rope_scaling"]["rope_type"] = "yarn".into()),
        "rope type 'yarn' is not supported (supported: default, linear, llama3)"
    );
    // A head_dim of 10^12 would have built a rotary table of 5 * 10^11
    // floats before any weight's shape was checked.
    assert_eq!(
        config_error("config4", |c| c["head_dim"] = 1_000_000_000_000u64.into()),
        "head_dim 1000000000000 is not in 1..=16777216"
    );
    // A zero vocabulary (random prompts take ids modulo it).
    assert_eq!(
        config_error("config5", |c| c["vocab_size"] = 0.into()),
        "vocab_size 0 is not in 1..=16777216"
    );
}

#[test]
fn broken_shard_index() {
    let dir = copy_fixture("mistral", "shards");
    let index = dir.join("model.safetensors.index.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    let shard = v["weight_map"]["model.norm.weight"].as_str().unwrap().to_string();
    std::fs::remove_file(dir.join(&shard)).unwrap();
    assert!(load_err(&dir).starts_with(&format!("{}: ", dir.join(&shard).display())));
}
