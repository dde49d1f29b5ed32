//! The tensorrt target: `optc compile MODEL --target tensorrt -o DIR`
//! writes the decoder-with-past network (`Pipeline::decoder_with_past`) as
//! ONNX, with its `trtexec` build line and manifest. TensorRT is not
//! installable here, so the network is checked the way its parser would
//! see it, against the reference interpreter running the imported model
//! over whole sequences:
//! - the compiled graph, called in chunks (a prefill, a decode step, three
//!   tokens after a past) with each call's `present` fed back as `past`,
//!   gives the whole sequence's logits, on every fixture architecture
//!   (Mistral's sliding window of 4 included);
//! - so does the written `model.onnx`, read back by optc's ONNX importer;
//! - and under onnxruntime (`scripts/check_onnx_export.py`, one test data
//!   set per call), which needs Python with `onnx` and `onnxruntime`: it is
//!   skipped with a message when they are missing, unless
//!   `OPTC_REQUIRE_ONNXRUNTIME=1` (set by `.ci/run`).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use optc::frontends::hf;
use optc::frontends::onnx;
use optc::ir::{self, DType, Graph, Tensor, WeightStore};
use optc::passes::Pipeline;
use optc::Compiler;

const FIXTURES: [&str; 5] = ["llama", "mistral", "qwen2", "gpt2", "phi3"];
/// Tokens per call: a prefill, a decode step, three tokens after a past.
const CHUNKS: [usize; 3] = [5, 1, 3];
const BATCH: usize = 2;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/hf").join(name)
}

/// Two different sequences of token ids under the fixtures' vocab (320),
/// as long as [`CHUNKS`] together.
fn sequences() -> Vec<Vec<i64>> {
    let n: usize = CHUNKS.iter().sum();
    (0..BATCH)
        .map(|row| (0..n).map(|i| ((i * 37 + row * 101) % 300) as i64 + 1).collect())
        .collect()
}

/// Token ids `[BATCH, end - start]`: columns `start..end` of `rows`.
fn ids(rows: &[Vec<i64>], start: usize, end: usize) -> Tensor {
    let v: Vec<i64> = rows.iter().flat_map(|r| r[start..end].iter().copied()).collect();
    Tensor::from_i64(DType::I64, &[rows.len(), end - start], &v)
}

/// The largest gap between `got` (`[B, len, V]`) and columns
/// `start..start + len` of `want` (`[B, n, V]`), and `want`'s largest
/// magnitude there.
fn gap(want: &Tensor, start: usize, got: &Tensor) -> (f64, f64) {
    let (w, g) = (want.to_f64_vec(), got.to_f64_vec());
    let [b, n, v] = [want.shape()[0], want.shape()[1], want.shape()[2]];
    let len = got.shape()[1];
    assert_eq!(got.shape(), [b, len, v]);
    let (mut worst, mut scale) = (0f64, 0f64);
    for row in 0..b {
        for t in 0..len {
            for k in 0..v {
                let x = w[(row * n + start + t) * v + k];
                worst = worst.max((x - g[(row * len + t) * v + k]).abs());
                scale = scale.max(x.abs());
            }
        }
    }
    (worst, scale)
}

/// One call of a decoder-with-past graph: its inputs and outputs.
struct Call {
    inputs: Vec<(String, Tensor)>,
    outputs: Vec<Tensor>,
}

/// Runs `g` over `rows` in calls of [`CHUNKS`] tokens, each call's
/// `present.*` outputs fed to the next as `past_key_values.*` (empty at
/// first).
fn run_in_calls(g: &Graph, w: &WeightStore, rows: &[Vec<i64>]) -> Vec<Call> {
    let mut past: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut calls = Vec::new();
    let mut start = 0;
    for len in CHUNKS {
        let mut inputs = Vec::new();
        for &i in g.inputs() {
            let name = g.node_name(i).unwrap().to_string();
            let t = if name == "ids" {
                ids(rows, start, start + len)
            } else if let Some(t) = past.get(&name) {
                t.clone()
            } else {
                let ty = &g.node(i).outputs[0];
                let d = ty.shape.dims();
                let shape = [
                    rows.len(),
                    d[1].as_const().unwrap() as usize,
                    0,
                    d[3].as_const().unwrap() as usize,
                ];
                Tensor::from_f64(ty.dtype, &shape, &[])
            };
            inputs.push((name, t));
        }
        let feed: BTreeMap<String, Tensor> = inputs.iter().cloned().collect();
        let outputs = ir::run(g, &feed, w).unwrap();
        for (o, t) in g.outputs().iter().zip(&outputs) {
            if let Some(layer) = o.name.strip_prefix("present.") {
                past.insert(format!("past_key_values.{layer}"), t.clone());
            }
        }
        calls.push(Call { inputs, outputs });
        start += len;
    }
    calls
}

/// Checks each call's logits against the whole sequence's, within `rel`
/// of the largest logit.
fn check_calls(name: &str, want: &Tensor, calls: &[Call], rel: f64) {
    let mut start = 0;
    for (c, len) in calls.iter().zip(CHUNKS) {
        let (worst, scale) = gap(want, start, &c.outputs[0]);
        eprintln!(
            "{name}: tokens {start}..{}: {worst:.3e} off, largest {scale:.3e}",
            start + len
        );
        assert!(
            worst <= rel * scale.max(1.0),
            "{name}: logits of tokens {start}..{} are {worst} off (largest {scale})",
            start + len
        );
        start += len;
    }
}

fn reference(name: &str, rows: &[Vec<i64>]) -> Tensor {
    let m = hf::load(fixture(name)).unwrap();
    let n = rows[0].len();
    let inputs = BTreeMap::from([("ids".to_string(), ids(rows, 0, n))]);
    ir::run(&m.graph, &inputs, &m.weights).unwrap().remove(0)
}

#[test]
fn the_decoder_with_past_gives_the_whole_sequences_logits() {
    let rows = sequences();
    for name in FIXTURES {
        let want = reference(name, &rows);
        let mut m = hf::load(fixture(name)).unwrap();
        let mut c = Compiler::new();
        c.set_pipeline(Pipeline::decoder_with_past());
        c.compile(&mut m.graph, &mut m.weights).unwrap();
        let layers = m.config.num_layers;
        let past = m
            .graph
            .inputs()
            .iter()
            .filter(|&&i| m.graph.node_name(i).unwrap().starts_with("past_key_values."))
            .count();
        assert_eq!(past, 2 * layers, "{name}: a key and a value input per layer");
        assert_eq!(m.graph.outputs().len(), 1 + 2 * layers, "{name}");
        check_calls(name, &want, &run_in_calls(&m.graph, &m.weights, &rows), 1e-4);
    }
}

fn optc(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .output()
        .unwrap()
}

/// `optc compile FIXTURE --target tensorrt -o OUT EXTRA...`; its manifest.
fn write_network(name: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let model = fixture(name);
    let mut args = vec!["compile", model.to_str().unwrap(), "--target", "tensorrt", "-o"];
    args.push(out.to_str().unwrap());
    args.extend(extra);
    let o = optc(&args);
    assert!(
        o.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out.join("network.json")).unwrap()).unwrap()
}

#[test]
fn the_written_network_runs_under_onnx_importers_and_onnxruntime() {
    let dir = root().join("target/tensorrt-target-test");
    let _ = std::fs::remove_dir_all(&dir);
    let rows = sequences();
    for name in FIXTURES {
        let out = dir.join(name);
        let manifest = write_network(name, &out, &["--max-batch-size", "4", "--max-input-len", "16"]);
        assert_eq!(manifest["symbols"]["past"], "P");
        let longest = hf::load(fixture(name)).unwrap().config.max_position_embeddings;
        assert_eq!(
            manifest["max_seq_len"], longest,
            "{name}: max_position_embeddings"
        );
        assert_eq!(manifest["profile"]["min"]["ids"], serde_json::json!([1, 1]));
        assert_eq!(manifest["profile"]["opt"]["ids"], serde_json::json!([4, 1]));
        assert_eq!(manifest["max_input_len"], 16);
        assert_eq!(manifest["profile"]["max"]["ids"], serde_json::json!([4, 16]));
        let key = &manifest["profile"]["max"]["past_key_values.0.key"];
        assert_eq!(
            (key[0].clone(), key[2].clone()),
            (4.into(), (longest - 1).into()),
            "{name}"
        );
        // The build line names every input at the profile's three points.
        let script = std::fs::read_to_string(out.join("build_engine.sh")).unwrap();
        let inputs = manifest["inputs"].as_array().unwrap();
        for i in inputs {
            let input = i["name"].as_str().unwrap();
            assert_eq!(script.matches(&format!("{input}:")).count(), 3, "{name}: {input}");
        }
        // Run with a stand-in trtexec that records its arguments, from
        // another folder: the model is found next to the script, the
        // engine path and extra options are the caller's.
        // (Beside the cases' folder, which holds only cases.)
        let bin = root().join("target/tensorrt-target-bin");
        std::fs::create_dir_all(&bin).unwrap();
        let args_file = bin.join(format!("{name}.args"));
        std::fs::write(
            bin.join("trtexec"),
            format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\n", args_file.display()),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(bin.join("trtexec"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
        for (extra, engine) in [
            (vec![], format!("{}/model.plan", out.display())),
            (vec!["my.plan", "--verbose"], "my.plan".into()),
        ] {
            let run = Command::new("sh")
                .arg(out.join("build_engine.sh"))
                .args(&extra)
                .env("PATH", &path)
                .current_dir(std::env::temp_dir())
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&run.stderr)
            );
            let args = std::fs::read_to_string(&args_file).unwrap();
            let args: Vec<&str> = args.lines().collect();
            assert_eq!(args[0], format!("--onnx={}/model.onnx", out.display()), "{name}");
            assert_eq!(args[1], format!("--saveEngine={engine}"), "{name}");
            assert_eq!(args[2], "--stronglyTyped");
            let ids_at = |k: usize| {
                let p = &manifest["profile"][["min", "opt", "max"][k]]["ids"];
                format!("ids:{}x{}", p[0], p[1])
            };
            for (k, flag) in ["--minShapes=", "--optShapes=", "--maxShapes="]
                .iter()
                .enumerate()
            {
                assert!(
                    args[3 + k].starts_with(flag) && args[3 + k].contains(&ids_at(k)),
                    "{name}: {}",
                    args[3 + k]
                );
            }
            assert_eq!(args.len(), 6 + usize::from(!extra.is_empty()), "{name}: {args:?}");
        }
        // Read back by optc's importer, the network computes the same.
        let back = onnx::load(out.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let names: Vec<&str> = back
            .graph
            .inputs()
            .iter()
            .map(|&i| back.graph.node_name(i).unwrap())
            .collect();
        let listed: Vec<&str> = inputs.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, listed, "{name}");
        let want = reference(name, &rows);
        let calls = run_in_calls(&back.graph, &back.weights, &rows);
        check_calls(name, &want, &calls, 1e-4);
        // One test data set per call, for onnxruntime.
        for (k, c) in calls.iter().enumerate() {
            let data = out.join(format!("test_data_set_{k}"));
            std::fs::create_dir_all(&data).unwrap();
            for (j, (input, t)) in c.inputs.iter().enumerate() {
                common::write_pb(&data.join(format!("input_{j}.pb")), input, t);
            }
            for (j, t) in c.outputs.iter().enumerate() {
                common::write_pb(
                    &data.join(format!("output_{j}.pb")),
                    &back.graph.outputs()[j].name,
                    t,
                );
            }
        }
    }
    common::check_under_onnxruntime(&dir);
}

/// A bf16 or f16 checkpoint gives a network in its own dtype (so the
/// `--stronglyTyped` engine computes in it): its caches and logits are
/// half, onnx.checker accepts it, and read back by optc's importer it
/// gives the whole sequences' logits within half precision. (onnxruntime's
/// CPU kernels do not cover bf16, so it does not run here.)
#[test]
fn half_precision_networks_keep_their_dtype() {
    let dir = root().join("target/tensorrt-target-half");
    let _ = std::fs::remove_dir_all(&dir);
    let rows = sequences();
    for (name, dtype) in [("llama_bf16", "bf16"), ("qwen2_f16", "f16")] {
        let out = dir.join(name);
        let manifest = write_network(name, &out, &[]);
        for t in manifest["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .chain(manifest["outputs"].as_array().unwrap())
        {
            let want = if t["name"] == "ids" { "i64" } else { dtype };
            assert_eq!(t["dtype"], want, "{name}: {}", t["name"]);
        }
        let back = onnx::load(out.join("model.onnx")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = reference(name, &rows);
        check_calls(
            name,
            &want,
            &run_in_calls(&back.graph, &back.weights, &rows),
            3e-2,
        );
    }
    common::check_under_onnxruntime(&dir);
}

/// A network whose token ids have a fixed batch (torch.export writes a
/// batch of one as the number 1) keeps it: the profile does not range
/// over it, the manifest says so, and its calls give the whole sequence's
/// logits.
#[test]
fn a_fixed_batch_stays_fixed() {
    let m = hf::load(fixture("llama")).unwrap();
    let text = ir::print(&m.graph).replace("[B, ", "[1, ");
    let mut g = ir::parse(&text).unwrap();
    let mut weights = m.weights;
    let mut c = Compiler::new();
    c.set_pipeline(Pipeline::decoder_with_past());
    c.compile(&mut g, &mut weights).unwrap();
    let dir = root().join("target/tensorrt-target-fixed");
    let _ = std::fs::remove_dir_all(&dir);
    let profile = optc::codegen::tensorrt::EngineProfile {
        max_batch: 8,
        max_input_len: 16,
        max_seq_len: 128,
    };
    let net =
        optc::codegen::tensorrt::write(&dir, &g, &weights, optc::passes::past_kv::PAST, &profile).unwrap();
    assert_eq!(net.max_batch, 1);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("network.json")).unwrap()).unwrap();
    assert_eq!(manifest["symbols"]["batch"], 1);
    assert_eq!(manifest["max_batch_size"], 1);
    assert_eq!(manifest["profile"]["opt"]["ids"], serde_json::json!([1, 1]));
    assert_eq!(
        manifest["profile"]["max"]["past_key_values.1.value"],
        serde_json::json!([1, 2, 127, 16])
    );
    let rows = &sequences()[..1];
    check_calls(
        "llama, batch 1",
        &reference("llama", rows),
        &run_in_calls(&g, &weights, rows),
        1e-4,
    );
}
