//! ONNX export: fixture graphs (as imported, and after the default
//! pipeline) are exported, re-imported and run on the interpreter
//! (`import(export(g))` computes what `g` computes), and written in the ONNX
//! backend-test layout for `scripts/check_onnx_export.py`, which runs
//! `onnx.checker` and onnxruntime on them against the interpreter's outputs.
//! That half needs Python with `onnx` and `onnxruntime`; it is skipped with
//! a message when they are missing, unless `OPTC_REQUIRE_ONNXRUNTIME=1`
//! (set by `.ci/run`) makes it required.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use optc::frontends::hf;
use optc::frontends::onnx::{self, export, ImportOptions};
use optc::ir::{self, DType, Graph, Tensor, WeightStore};
use optc::Compiler;
use prost::Message;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ids(n: usize) -> Tensor {
    let v: Vec<i64> = (0..n).map(|i| (i * 37 % 300) as i64 + 1).collect();
    Tensor::from_i64(DType::I64, &[1, n], &v)
}

/// The graphs the test exports: each fixture as imported and compiled.
fn cases() -> Vec<(String, Graph, WeightStore)> {
    let mut out = Vec::new();
    for name in ["llama", "qwen2", "gpt2", "phi3"] {
        let m = hf::load(root().join("tests/fixtures/hf").join(name)).unwrap();
        out.push((format!("{name}_imported"), m.graph.clone(), m.weights));
        let mut m = hf::load(root().join("tests/fixtures/hf").join(name)).unwrap();
        Compiler::new().compile(&mut m.graph, &mut m.weights).unwrap();
        out.push((format!("{name}_compiled"), m.graph, m.weights));
    }
    out
}

#[test]
fn exported_models_round_trip_and_run_under_onnxruntime() {
    let dir = root().join("target/onnx-export-test");
    let _ = std::fs::remove_dir_all(&dir);
    for (name, g, w) in cases() {
        let inputs = BTreeMap::from([("ids".to_string(), ids(7))]);
        let want = ir::run(&g, &inputs, &w).unwrap();
        let case = dir.join(&name);
        let data = case.join("test_data_set_0");
        std::fs::create_dir_all(&data).unwrap();
        // Inline weights for half the cases, external data for the others.
        let external = name.ends_with("_compiled");
        export::write(&case.join("model.onnx"), &g, &w, external).unwrap();
        common::write_pb(&data.join("input_0.pb"), "ids", &inputs["ids"]);
        for (k, t) in want.iter().enumerate() {
            common::write_pb(&data.join(format!("output_{k}.pb")), &g.outputs()[k].name, t);
        }
        // Round trip through optc's own importer.
        let back = onnx::load(case.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.graph.symbols(), g.symbols(), "{name}: symbols survive");
        for len in [7, 3] {
            let inp = BTreeMap::from([("ids".to_string(), ids(len))]);
            let a = ir::run(&g, &inp, &w).unwrap();
            let b = ir::run(&back.graph, &inp, &back.weights).unwrap();
            let err = a[0].max_abs_diff(&b[0]);
            assert!(
                err <= 1e-5,
                "{name}: round trip moved logits by {err} at length {len}"
            );
        }
    }
    common::check_under_onnxruntime(&dir);
}

#[test]
fn non_onnx_ops_are_export_errors_naming_the_node() {
    let text = "graph g(%x: f32[2, 4]) -> (%y: f32[2, 4]) {\n  %0: f32[2, 4] = relu(%x)\n  return %0\n}\n";
    let g = ir::parse(text).unwrap();
    let (m, _) = export::export(&g, &WeightStore::new(), &export::WeightPlacement::Inline).unwrap();
    let back = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap();
    let x = Tensor::from_f32(DType::F32, &[2, 4], &[-1.0, 2.0, -3.0, 4.0, 0.5, -0.5, 0.0, 9.0]);
    let inp = BTreeMap::from([("x".to_string(), x)]);
    assert_eq!(
        ir::run(&g, &inp, &WeightStore::new()).unwrap(),
        ir::run(&back.graph, &inp, &back.weights).unwrap()
    );
    let shifts = "graph g(%a: i32[3], %b: i32[3]) -> (%y: i32[3]) {\n  %0: i32[3] = shift_left(%a, %b)\n  return %0\n}\n";
    let g = ir::parse(shifts).unwrap();
    let err = export::export(&g, &WeightStore::new(), &export::WeightPlacement::Inline)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shift_left") && err.contains("unsigned"), "{err}");
    // Written with external weights, a failed export leaves the folder as
    // it was: an older model and its side file are not split apart.
    let dir = root().join("target/onnx-export-failed");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.onnx");
    std::fs::write(&model, b"older model").unwrap();
    std::fs::write(dir.join("model.onnx.data"), b"older weights").unwrap();
    let err = export::write(&model, &g, &WeightStore::new(), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shift_left"), "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), b"older model");
    assert_eq!(
        std::fs::read(dir.join("model.onnx.data")).unwrap(),
        b"older weights"
    );
    assert!(!dir.join("model.onnx.data.partial").exists());
}

/// An MLP exported to ONNX comes back as `Transpose` of each weight into a
/// `MatMul` and an `Add` of the bias (what exporters write for a linear);
/// the default pipeline makes them linears again (`matmul_to_linear`),
/// reading the weights as they are, with their biases (and `fuse_gelu`
/// finds the spelled-out GELU), and the re-imported graph computes what
/// the original did. The weights are past the
/// importer's folding limit (64 Ki elements), as a real model's are.
#[test]
fn exported_linears_compile_back_to_linears() {
    let text = "graph mlp(%x: f32[B, 256]) -> (%y: f32[B, 256]) {
  weight @up: f32[320, 256] = \"up.weight\"
  weight @up_b: f32[320] = \"up.bias\"
  weight @down: f32[256, 320] = \"down.weight\"
  %0: f32[B, 320] = linear(%x, @up, @up_b)
  %1: f32[B, 320] = gelu(%0) {approximate = \"tanh\"}
  %2: f32[B, 256] = linear(%1, @down)
  return %2
}";
    let g = ir::parse(text).unwrap();
    let mut w = WeightStore::new();
    let mut seed = 11u64;
    for (name, shape) in [
        ("up.weight", vec![320, 256]),
        ("up.bias", vec![320]),
        ("down.weight", vec![256, 320]),
    ] {
        let v = common::lcg_uniform(&mut seed, shape.iter().product(), 0.2);
        w.insert(name, Tensor::from_f32(DType::F32, &shape, &v)).unwrap();
    }
    let (m, _) = export::export(&g, &w, &export::WeightPlacement::Inline).unwrap();
    let mut back = onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).unwrap();
    let counts = back.graph.op_counts();
    assert_eq!(
        (counts.get("matmul"), counts.get("linear")),
        (Some(&2), None),
        "{counts:?}"
    );
    Compiler::new()
        .compile(&mut back.graph, &mut back.weights)
        .unwrap();
    let counts = back.graph.op_counts();
    assert_eq!(
        (counts.get("linear"), counts.get("matmul")),
        (Some(&2), None),
        "{counts:?}"
    );
    // The GELU the exporter spells out (x³ as x · x · x) is one op again.
    assert_eq!(
        (counts.get("transpose"), counts.get("gelu")),
        (None, Some(&1)),
        "{counts:?}"
    );
    assert_eq!(
        (counts.get("add"), counts.get("tanh")),
        (None, None),
        "{counts:?}"
    );
    // The bias is the first linear's again.
    let biased = back
        .graph
        .node_ids()
        .filter(|&n| back.graph.node(n).op().is_some_and(|o| o.name() == "linear"))
        .map(|n| back.graph.operands(n).len())
        .collect::<Vec<_>>();
    assert_eq!(biased, [3, 2]);
    let x: Vec<f32> = (0..3 * 256)
        .map(|i| ((i * 7919) % 200) as f32 / 100.0 - 1.0)
        .collect();
    let inp = BTreeMap::from([("x".to_string(), Tensor::from_f32(DType::F32, &[3, 256], &x))]);
    let want = ir::run(&g, &inp, &w).unwrap();
    let got = ir::run(&back.graph, &inp, &back.weights).unwrap();
    let err = want[0].max_abs_diff(&got[0]);
    assert!(err <= 1e-5, "the re-imported MLP moved by {err}");
}
