//! Helpers shared by the top-level integration tests.

/// `n` values uniform in [-spread/2, spread/2) from a 64-bit LCG whose
/// state the caller keeps, so consecutive tensors draw different values
/// and a test's weights repeat from run to run without an RNG crate.
#[allow(dead_code)] // not every test binary draws random weights
pub fn lcg_uniform(state: &mut u64, n: usize, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * spread
        })
        .collect()
}

/// Runs `scripts/check_onnx_export.py` on `dir` (folders of `model.onnx`
/// and test data sets: onnx.checker, then onnxruntime against the
/// interpreter's outputs) and fails on any disagreement. Without Python's
/// `onnx` and `onnxruntime` it says so and returns, unless
/// `OPTC_REQUIRE_ONNXRUNTIME=1` (set by `.ci/run`) makes them required.
#[allow(dead_code)] // not every test binary checks ONNX files
pub fn check_under_onnxruntime(dir: &std::path::Path) {
    use std::process::Command;
    let required = std::env::var("OPTC_REQUIRE_ONNXRUNTIME").is_ok_and(|v| v == "1");
    let probe = Command::new("python3")
        .args(["-c", "import onnx, onnxruntime"])
        .output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        assert!(
            !required,
            "OPTC_REQUIRE_ONNXRUNTIME=1 but python3 cannot import onnx and onnxruntime"
        );
        eprintln!("skipping the onnxruntime half: python3 with onnx and onnxruntime not found (pip install onnx onnxruntime)");
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check_onnx_export.py");
    let out = Command::new("python3").arg(script).arg(dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "onnxruntime disagrees with the interpreter:\n{text}"
    );
}

/// Writes `t` as one ONNX `TensorProto` file named `name` (the backend
/// test layout's `input_K.pb` / `output_K.pb`).
#[allow(dead_code)] // not every test binary writes ONNX test data
pub fn write_pb(path: &std::path::Path, name: &str, t: &optc::ir::Tensor) {
    use prost::Message;
    let proto = optc::frontends::onnx::tensor::from_tensor(name, t);
    std::fs::write(path, proto.encode_to_vec()).unwrap();
}
