//! Bad `.pt2` archives give errors that say what is wrong, never a panic:
//! truncated or non-zip files, wrong format markers, an unknown schema
//! version, missing or short weights, unmapped ops (all listed), type
//! mismatches against torch's metadata, use-before-definition, mutating
//! graphs; plus a deterministic mutation sweep over a real archive.

use std::io::{Cursor, Read, Write};
use std::path::Path;

use optc::frontends::fx::{self, FxErrorKind};
use serde_json::Value as Json;

fn original() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fx/llama.pt2")).unwrap()
}

/// Rebuilds the archive, letting `edit` replace (Some) or drop (None) each
/// entry by its name relative to the root folder.
fn rewrite(edit: impl Fn(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let src = original();
    let mut zin = zip::ZipArchive::new(Cursor::new(&src)).unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zin.len() {
        let mut f = zin.by_index(i).unwrap();
        let name = f.name().to_string();
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes).unwrap();
        let rel = name.split_once('/').unwrap().1.to_string();
        if let Some(b) = edit(&rel, bytes) {
            out.start_file(name, opts).unwrap();
            out.write_all(&b).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

/// Rewrites `models/model.json` through `f`.
fn edit_program(f: impl Fn(&mut Json)) -> Vec<u8> {
    rewrite(|rel, bytes| {
        if rel != "models/model.json" {
            return Some(bytes);
        }
        let mut v: Json = serde_json::from_slice(&bytes).unwrap();
        f(&mut v);
        Some(serde_json::to_vec(&v).unwrap())
    })
}

fn error(bytes: &[u8]) -> String {
    match fx::load_bytes(bytes) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    }
}

fn nodes(v: &mut Json) -> &mut Vec<Json> {
    v["graph_module"]["graph"]["nodes"].as_array_mut().unwrap()
}

#[test]
fn the_fixture_itself_loads_from_bytes() {
    fx::load_bytes(&original()).unwrap();
    fx::load_bytes(&rewrite(|_, b| Some(b))).unwrap();
}

#[test]
fn file_errors_name_the_file() {
    let e = fx::load("/nonexistent/m.pt2").err().unwrap().to_string();
    assert!(e.starts_with("/nonexistent/m.pt2: cannot read the file"), "{e}");
}

#[test]
fn truncated_and_foreign_files() {
    let bytes = original();
    let e = error(&bytes[..bytes.len() / 2]);
    assert!(e.contains("not a readable .pt2 archive"), "{e}");
    let e = error(b"PK\x03\x04 this is not really a zip");
    assert!(e.contains("not a readable .pt2 archive"), "{e}");
    let e = error(b"");
    assert!(e.contains("not a readable .pt2 archive"), "{e}");
}

#[test]
fn format_markers_are_checked() {
    let e = error(&rewrite(|rel, b| {
        if rel == "archive_format" {
            Some(b"zip".to_vec())
        } else {
            Some(b)
        }
    }));
    assert!(e.contains("archive_format is \"zip\""), "{e}");
    let e = error(&rewrite(|rel, b| {
        if rel == "archive_version" {
            Some(b"7".to_vec())
        } else {
            Some(b)
        }
    }));
    assert!(e.contains("archive_version \"7\" is not supported"), "{e}");
    let e = error(&rewrite(|rel, b| {
        if rel == "byteorder" {
            Some(b"big".to_vec())
        } else {
            Some(b)
        }
    }));
    assert!(e.contains("only little-endian"), "{e}");
    let e = error(&rewrite(|rel, b| (rel != "models/model.json").then_some(b)));
    assert!(e.contains("no program under models/"), "{e}");
}

#[test]
fn unknown_schema_versions_are_refused() {
    let bytes = edit_program(|v| v["schema_version"] = serde_json::json!({"major": 9, "minor": 0}));
    match fx::load_bytes(&bytes) {
        Err(FxErrorKind::SchemaVersion { found }) => assert_eq!(found, "9.0"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("loaded"),
    }
    let e = error(&bytes);
    assert!(e.contains("optc reads schema 8.x"), "{e}");
}

#[test]
fn malformed_json_names_the_entry() {
    let e = error(&rewrite(|rel, b| {
        if rel == "models/model.json" {
            Some(b[..b.len() / 3].to_vec())
        } else {
            Some(b)
        }
    }));
    assert!(e.starts_with("models/model.json:"), "{e}");
    let e = error(&edit_program(|v| {
        v["graph_module"]["graph"]["nodes"] = Json::from(3)
    }));
    assert!(e.starts_with("models/model.json:"), "{e}");
}

#[test]
fn missing_and_short_weights() {
    // weight_1 holds layer 0's q_proj.
    let e = error(&rewrite(|rel, b| (rel != "data/weights/weight_1").then_some(b)));
    assert!(
        e.contains("weight model.model.layers.0.self_attn.q_proj.weight"),
        "{e}"
    );
    assert!(e.contains("no entry llama/data/weights/weight_1"), "{e}");
    let e = error(&rewrite(|rel, b| {
        if rel == "data/weights/weight_1" {
            Some(b[..100].to_vec())
        } else {
            Some(b)
        }
    }));
    assert!(
        e.contains("needs 16384 bytes but the storage entry holds 100"),
        "{e}"
    );
    let e = error(&rewrite(|rel, b| {
        (rel != "data/weights/model_weights_config.json").then_some(b)
    }));
    assert!(e.contains("no payload for it"), "{e}");
    let e = error(&rewrite(|rel, b| {
        (rel != "data/constants/model_constants_config.json").then_some(b)
    }));
    assert!(e.contains("weight model.model.rotary_emb.inv_freq"), "{e}");
}

/// Rewrites the layer 0 q_proj weight's recorded view through `f`.
fn edit_q_proj_view(f: impl Fn(&mut Json)) -> Vec<u8> {
    rewrite(|rel, bytes| {
        if rel != "data/weights/model_weights_config.json" {
            return Some(bytes);
        }
        let mut v: Json = serde_json::from_slice(&bytes).unwrap();
        f(&mut v["config"]["model.model.layers.0.self_attn.q_proj.weight"]["tensor_meta"]);
        Some(serde_json::to_vec(&v).unwrap())
    })
}

#[test]
fn views_too_large_for_their_storage_are_errors() {
    // Stride 0 repeats one element 2^62 times: the storage check passes,
    // the copy cannot.
    let e = error(&edit_q_proj_view(|tm| {
        tm["sizes"] = serde_json::json!([{"as_int": 1i64 << 62}]);
        tm["strides"] = serde_json::json!([{"as_int": 0}]);
    }));
    assert!(
        e.contains("q_proj.weight") && e.contains("element count overflows"),
        "{e}"
    );
    let e = error(&edit_q_proj_view(|tm| {
        tm["sizes"] = serde_json::json!([{"as_int": 1i64 << 40}]);
        tm["strides"] = serde_json::json!([{"as_int": 0}]);
    }));
    assert!(e.contains("over the 1073741824-byte limit"), "{e}");
    // Sizes and strides whose last index does not fit in 128 bits.
    let e = error(&edit_q_proj_view(|tm| {
        let big = serde_json::json!({"as_int": i64::MAX});
        tm["sizes"] = serde_json::json!([big, big, big, big, big]);
        tm["strides"] = serde_json::json!([big, big, big, big, big]);
    }));
    assert!(
        e.contains("element count overflows") || e.contains("index overflows"),
        "{e}"
    );
}

#[test]
fn every_unmapped_op_is_listed() {
    let bytes = edit_program(|v| {
        for n in nodes(v) {
            let t = n["target"].as_str().unwrap().to_string();
            let t = t
                .replace("aten.silu.default", "aten.my_silu.default")
                .replace("aten.rsqrt.default", "aten.my_rsqrt.default");
            n["target"] = Json::from(t);
        }
    });
    match fx::load_bytes(&bytes) {
        Err(FxErrorKind::Unmapped { list }) => {
            let t: Vec<(&str, usize)> = list.0.iter().map(|u| (u.target.as_str(), u.count)).collect();
            assert_eq!(t, [("aten.my_rsqrt.default", 5), ("aten.my_silu.default", 2)]);
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("loaded"),
    }
    let e = error(&bytes);
    assert!(
        e.contains("2 ATen op(s) optc cannot map: aten.my_rsqrt.default (5x, first at node rsqrt)"),
        "{e}"
    );
}

#[test]
fn metadata_disagreeing_with_the_mapping_is_an_error() {
    // Declare the first rsqrt's output f16: the mapping computes f32.
    let bytes = edit_program(|v| {
        v["graph_module"]["graph"]["tensor_values"]["rsqrt"]["dtype"] = Json::from(6);
    });
    let e = error(&bytes);
    assert!(e.contains("node rsqrt (aten.rsqrt.default)"), "{e}");
    assert!(e.contains("torch recorded dtype f16"), "{e}");
    // A wrong size.
    let bytes = edit_program(|v| {
        v["graph_module"]["graph"]["tensor_values"]["rsqrt"]["sizes"][2] = serde_json::json!({"as_int": 3});
    });
    let e = error(&bytes);
    assert!(e.contains("torch recorded f32[1, s70, 3]"), "{e}");
    // A negative size (unbind would have made that many pieces).
    let bytes = edit_program(|v| {
        v["graph_module"]["graph"]["tensor_values"]["rsqrt"]["sizes"][2] = serde_json::json!({"as_int": -1});
    });
    let e = error(&bytes);
    assert!(e.contains("negative size -1"), "{e}");
    let bytes = edit_program(|v| {
        v["graph_module"]["graph"]["tensor_values"]["input_ids"]["sizes"][0] =
            serde_json::json!({"as_int": -1});
    });
    let e = error(&bytes);
    assert!(
        e.contains("input input_ids") && e.contains("negative size -1"),
        "{e}"
    );
}

#[test]
fn nodes_out_of_order_are_an_error() {
    let bytes = edit_program(|v| nodes(v).reverse());
    let e = error(&bytes);
    assert!(e.contains("is used before it is defined"), "{e}");
}

#[test]
fn mutating_graphs_are_refused() {
    let bytes = edit_program(|v| {
        v["graph_module"]["signature"]["output_specs"][0] =
            serde_json::json!({"buffer_mutation": {"arg": {"name": "linear_14"}, "buffer_name": "x"}});
    });
    let e = error(&bytes);
    assert!(e.contains("output of kind buffer_mutation"), "{e}");
}

#[test]
fn an_unsupported_argument_names_the_node() {
    let bytes = edit_program(|v| {
        for n in nodes(v) {
            if n["target"] == "torch.ops.aten.scaled_dot_product_attention.default" {
                n["inputs"]
                    .as_array_mut()
                    .unwrap()
                    .push(serde_json::json!({"name": "dropout_p", "arg": {"as_float": 0.5}, "kind": 2}));
            }
        }
    });
    let e = error(&bytes);
    assert!(
        e.contains("(aten.scaled_dot_product_attention.default): dropout_p = 0.5"),
        "{e}"
    );
}

/// Truncations and byte flips at many places: every one is an error or a
/// load, none a panic.
#[test]
fn mutations_never_panic() {
    let bytes = original();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..200 {
        let mut b = bytes.clone();
        let at = (next() % b.len() as u64) as usize;
        if next() % 3 == 0 {
            b.truncate(at);
        } else {
            b[at] ^= 1 << (next() % 8);
        }
        let _ = fx::load_bytes(&b);
    }
    // The program JSON mutated inside a valid container.
    let json = rewrite(|rel, b| (rel == "models/model.json").then_some(b));
    let mut zin = zip::ZipArchive::new(Cursor::new(&json)).unwrap();
    let mut text = Vec::new();
    zin.by_index(0).unwrap().read_to_end(&mut text).unwrap();
    for _ in 0..100 {
        let mut t = text.clone();
        let at = (next() % t.len() as u64) as usize;
        t[at] = b"{}[]\",:0123456789-eE"[(next() % 20) as usize];
        let b = rewrite(|rel, bytes| {
            Some(if rel == "models/model.json" {
                t.clone()
            } else {
                bytes
            })
        });
        let _ = fx::load_bytes(&b);
    }
}
