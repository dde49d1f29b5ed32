//! Fuzzes the ONNX reader end to end (protobuf decode, tensors, the graph
//! walk and every op handler): no input may panic; malformed models must
//! come back as errors.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = optc_frontends::onnx::ImportOptions::default();
    let _ = optc_frontends::onnx::load_bytes(data, None, &opts);
});
