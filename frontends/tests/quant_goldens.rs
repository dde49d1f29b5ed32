//! Dequantisation of every supported ggml block format against the `gguf`
//! Python package (llama.cpp's numpy reference), on random blocks recorded by
//! `scripts/make_quant_goldens.py`.

use optc_frontends::gguf::quant::{dequantize, GgmlType};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn matches_llama_cpp_reference() {
    let doc: serde_json::Value = serde_json::from_str(include_str!("data/quant_goldens.json")).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    let mut seen = Vec::new();
    for c in cases {
        let name = c["type"].as_str().unwrap();
        let ty = GgmlType::from_code(c["code"].as_u64().unwrap() as u32).unwrap();
        let n = c["n"].as_u64().unwrap() as usize;
        let bytes = hex(c["bytes"].as_str().unwrap());
        assert_eq!(ty.bytes_for(n as u64), Some(bytes.len() as u64), "{name}");
        let got = dequantize(ty, &bytes, n);
        for (i, (g, w)) in got.iter().zip(c["values"].as_array().unwrap()).enumerate() {
            let w = w.as_f64().unwrap() as f32;
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{name} value {i}: {g} vs {w}"
            );
        }
        seen.push(name.to_string());
    }
    assert_eq!(seen, ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K", "F16", "BF16"]);
}
