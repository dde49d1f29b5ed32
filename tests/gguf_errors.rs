//! Malformed or unsupported GGUF files give errors naming the file, the byte
//! offset or tensor, and what is wrong. The files are written here by a
//! minimal GGUF writer.

use std::path::PathBuf;

use optc::frontends::gguf;

/// A metadata value as GGUF encodes it.
enum V {
    U32(u32),
    U64(u64),
    F32(f32),
    Str(&'static str),
    Strs(Vec<String>),
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A GGUF v3 file: metadata, then tensors `(name, ggml dims, type, data)`.
fn gguf_file(meta: &[(&str, V)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        put_str(&mut b, k);
        match v {
            V::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::U64(x) => {
                b.extend(10u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            V::Strs(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                for s in v {
                    put_str(&mut b, s);
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        put_str(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        b.extend(data);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    b
}

/// Metadata of a 1-layer llama with hidden 32 (the loader needs these).
fn llama_meta() -> Vec<(&'static str, V)> {
    vec![
        ("general.architecture", V::Str("llama")),
        ("llama.embedding_length", V::U32(32)),
        ("llama.feed_forward_length", V::U32(64)),
        ("llama.block_count", V::U32(1)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        (
            "tokenizer.ggml.tokens",
            V::Strs((0..16).map(|i| format!("t{i}")).collect()),
        ),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
    ]
}

fn write(tag: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("optc-gguf-{}-{tag}.gguf", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    p
}

fn err(tag: &str, bytes: &[u8]) -> String {
    let p = write(tag, bytes);
    match gguf::load(&p) {
        Ok(_) => panic!("{tag} should not load"),
        Err(e) => e.to_string().replace(&p.display().to_string(), "FILE"),
    }
}

#[test]
fn malformed_headers() {
    assert_eq!(
        err("magic", b"GGML\x03\x00\x00\x00"),
        "FILE: malformed GGUF header at byte 0: not a GGUF file (magic [47, 47, 4d, 4c], expected \"GGUF\")"
    );
    let mut v1 = gguf_file(&[], &[]);
    v1[4] = 1;
    assert_eq!(
        err("version", &v1),
        "FILE: malformed GGUF header at byte 4: GGUF version 1 is not supported (supported: 2, 3)"
    );
    let full = gguf_file(&llama_meta(), &[]);
    assert_eq!(
        err("truncated", &full[..60]),
        "FILE: malformed GGUF header at byte 56: file ends inside string value (8 bytes needed)"
    );
    let mut huge = gguf_file(&[], &[]);
    huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(
        err("count", &huge),
        "FILE: malformed GGUF header at byte 8: tensor count 18446744073709551615 is implausibly large"
    );
    assert!(err("empty", b"").contains("file ends inside magic"));
    // 2^24 tensors announced in a file of a few bytes: not a 1 GiB table.
    let mut many = gguf_file(&[], &[]);
    many[8..16].copy_from_slice(&(1u64 << 24).to_le_bytes());
    assert_eq!(
        err("many", &many),
        "FILE: malformed GGUF header at byte 8: tensor count 16777216 needs more tensor entries than the 8 bytes left hold"
    );
}

#[test]
fn unsupported_quant_type_names_the_tensor() {
    // Q5_K (type 13) is not one optc dequantises.
    let t = ("token_embd.weight", vec![256, 16], 13u32, vec![0u8; 176 * 16]);
    assert_eq!(
        err("q5k", &gguf_file(&llama_meta(), &[t])),
        "FILE: tensor 'token_embd.weight' has type Q5_K, which optc cannot dequantise (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    );
}

#[test]
fn tensor_data_outside_the_file() {
    let mut bytes = gguf_file(
        &llama_meta(),
        &[("token_embd.weight", vec![32, 16], 0, vec![0u8; 32 * 16 * 4])],
    );
    bytes.truncate(bytes.len() - 64);
    let e = err("short", &bytes);
    assert!(
        e.starts_with(
            "FILE: tensor 'token_embd.weight': data at offset 0 (2048 bytes) lies outside the file"
        ),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_and_missing_metadata() {
    let meta = vec![("general.architecture", V::Str("mamba"))];
    assert_eq!(
        err("arch", &gguf_file(&meta, &[])),
        "FILE: general.architecture \"mamba\" is not supported (supported: llama)"
    );
    let meta: Vec<_> = llama_meta()
        .into_iter()
        .filter(|(k, _)| *k != "llama.block_count")
        .collect();
    assert_eq!(
        err("meta", &gguf_file(&meta, &[])),
        "FILE: metadata 'llama.block_count': missing"
    );
}

#[test]
fn missing_tensors_are_named() {
    let t = ("token_embd.weight", vec![32, 16], 0u32, vec![0u8; 32 * 16 * 4]);
    let e = err("tensors", &gguf_file(&llama_meta(), &[t]));
    assert_eq!(e, "FILE: missing tensor 'blk.0.attn_norm.weight'");
}

#[test]
fn implausible_sizes_are_errors_not_overflows() {
    // 2^63 heads over a hidden size of 0 passed the divisibility checks,
    // and the rotary pair check then took a remainder by 2 * 2^63 = 0.
    let meta: Vec<_> = llama_meta()
        .into_iter()
        .map(|(k, v)| match k {
            "llama.embedding_length" => (k, V::U32(0)),
            "llama.attention.head_count" | "llama.attention.head_count_kv" => (k, V::U64(1 << 63)),
            _ => (k, v),
        })
        .collect();
    let e = err("heads", &gguf_file(&meta, &[]));
    assert!(
        e.contains("llama.attention.head_count") && e.contains("do not divide hidden size 0"),
        "{e}"
    );
    // A key length of 10^12 would size the rotary tables.
    let mut meta = llama_meta();
    meta.push(("llama.attention.key_length", V::U64(1_000_000_000_000)));
    assert_eq!(
        err("keylen", &gguf_file(&meta, &[])),
        "FILE: metadata 'llama.attention.key_length': 1000000000000 is not in 1..=16777216"
    );
    // 2^62 f32 values need 2^64 bytes: more than a u64 counts.
    let t = ("token_embd.weight", vec![1 << 62], 0u32, vec![0u8; 64]);
    let e = err("huge", &gguf_file(&llama_meta(), &[t]));
    assert!(
        e.contains("tensor 'token_embd.weight'") && e.contains("too many to address"),
        "{e}"
    );
}
