//! Bad ONNX input gives errors that name the file, node, op and what is
//! wrong; none panics. Models are built here from the protobuf types.

use std::path::Path;

use optc::frontends::onnx::proto::{
    attr_type, data_type, dimension, type_proto, AttributeProto, Dimension, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto, DATA_LOCATION_EXTERNAL,
};
use optc::frontends::onnx::{self, ImportOptions, OnnxErrorKind};
use prost::Message;

fn vi(name: &str, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d)),
                            denotation: String::new(),
                        })
                        .collect(),
                }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>) -> ModelProto {
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 21,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "g".into(),
            initializer: inits,
            input: vec![vi("x", &[2, 3])],
            output: vec![vi("y", &[2, 3])],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn import(m: &ModelProto) -> OnnxErrorKind {
    match onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()) {
        Ok(_) => panic!("imported a bad model"),
        Err(e) => e.kind,
    }
}

#[test]
fn malformed_and_truncated_protobufs() {
    let good = model(vec![node("Relu", "r", &["x"], &["y"])], vec![]).encode_to_vec();
    assert!(onnx::load_bytes(&good, None, &ImportOptions::default()).is_ok());
    for cut in [good.len() / 3, good.len() - 1] {
        let e = onnx::load_bytes(&good[..cut], None, &ImportOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("not a valid ONNX protobuf"), "{e}");
    }
    let e = onnx::load_bytes(&[0xff, 0xff, 0xff, 0x07, 0x12], None, &ImportOptions::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a valid ONNX protobuf"), "{e}");
    // A file path is named.
    let dir = std::env::temp_dir().join("optc-onnx-errors");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("truncated.onnx");
    std::fs::write(&p, &good[..10]).unwrap();
    let e = onnx::load(&p).err().unwrap().to_string();
    assert!(e.contains("truncated.onnx"), "{e}");
    let e = onnx::load(Path::new("/nonexistent/m.onnx"))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("/nonexistent/m.onnx") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn unsupported_ops_and_attributes_name_the_node() {
    let e = import(&model(vec![node("Frobnicate", "f1", &["x"], &["y"])], vec![]));
    let s = e.to_string();
    assert!(e.is_unsupported());
    assert!(
        s.contains("Frobnicate node 'f1' (opset 21)") && s.contains("not supported"),
        "{s}"
    );
    let mut n = node("Relu", "r1", &["x"], &["y"]);
    n.attribute.push(AttributeProto {
        name: "bogus".into(),
        r#type: attr_type::INT,
        i: 1,
        ..Default::default()
    });
    let s = import(&model(vec![n], vec![])).to_string();
    assert!(
        s.contains("Relu node 'r1'") && s.contains("attribute 'bogus' is not supported"),
        "{s}"
    );
    let mut m = model(vec![node("Relu", "r", &["x"], &["y"])], vec![]);
    m.opset_import[0].version = 3;
    assert!(import(&m).to_string().contains("opset 3 is not supported"));
}

#[test]
fn wrong_tensor_sizes_and_shape_mismatches() {
    let w = TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: data_type::FLOAT,
        raw_data: vec![0; 20],
        ..Default::default()
    };
    let s = import(&model(vec![node("Add", "a", &["x", "w"], &["y"])], vec![w])).to_string();
    assert!(
        s.contains("initializer 'w'") && s.contains("needs 24 bytes but 20 were given"),
        "{s}"
    );
    let w = TensorProto {
        name: "w".into(),
        dims: vec![4],
        data_type: data_type::FLOAT,
        float_data: vec![1.0; 4],
        ..Default::default()
    };
    let s = import(&model(vec![node("Add", "add1", &["x", "w"], &["y"])], vec![w])).to_string();
    assert!(s.contains("Add node 'add1'") && s.contains("broadcast"), "{s}");
}

#[test]
fn missing_external_data_is_named() {
    let w = TensorProto {
        name: "w".into(),
        dims: vec![2, 3],
        data_type: data_type::FLOAT,
        data_location: DATA_LOCATION_EXTERNAL,
        external_data: vec![StringStringEntryProto {
            key: "location".into(),
            value: "weights.bin".into(),
        }],
        ..Default::default()
    };
    let m = model(vec![node("Add", "a", &["x", "w"], &["y"])], vec![w.clone()]);
    let dir = std::env::temp_dir().join("optc-onnx-external");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.onnx");
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let s = onnx::load(&p).err().unwrap().to_string();
    assert!(s.contains("initializer 'w'") && s.contains("weights.bin"), "{s}");
    // Too short a file, and a location outside the model's folder.
    std::fs::write(dir.join("weights.bin"), [0u8; 8]).unwrap();
    let s = onnx::load(&p).err().unwrap().to_string();
    assert!(s.contains("24 bytes but 8"), "{s}");
    let mut bad = w;
    bad.external_data[0].value = "../escape.bin".into();
    let m = model(vec![node("Add", "a", &["x", "w"], &["y"])], vec![bad]);
    std::fs::write(&p, m.encode_to_vec()).unwrap();
    let s = onnx::load(&p).err().unwrap().to_string();
    assert!(s.contains("relative path inside the model's folder"), "{s}");
    std::fs::write(dir.join("weights.bin"), [0u8; 24]).unwrap();
    let good = model(
        vec![node("Add", "a", &["x", "w"], &["y"])],
        vec![TensorProto {
            name: "w".into(),
            dims: vec![2, 3],
            data_type: data_type::FLOAT,
            data_location: DATA_LOCATION_EXTERNAL,
            external_data: vec![StringStringEntryProto {
                key: "location".into(),
                value: "weights.bin".into(),
            }],
            ..Default::default()
        }],
    );
    std::fs::write(&p, good.encode_to_vec()).unwrap();
    assert!(onnx::load(&p).is_ok());
}

#[test]
fn cyclic_and_dangling_graphs() {
    let cyc = model(
        vec![
            node("Relu", "a", &["y"], &["t"]),
            node("Relu", "b", &["t"], &["y"]),
        ],
        vec![],
    );
    let s = import(&cyc).to_string();
    assert!(s.contains("cycle") && s.contains("Relu node 'a'"), "{s}");
    let dangling = model(vec![node("Relu", "a", &["nope"], &["y"])], vec![]);
    let s = import(&dangling).to_string();
    assert!(
        s.contains("'nope'") && s.contains("no node, graph input or initializer defines"),
        "{s}"
    );
    let twice = model(
        vec![
            node("Relu", "a", &["x"], &["y"]),
            node("Relu", "b", &["x"], &["y"]),
        ],
        vec![],
    );
    assert!(import(&twice).to_string().contains("defined twice"));
}

#[test]
fn shapes_from_graph_inputs_must_be_static() {
    let mut m = model(vec![node("Reshape", "rs", &["x", "shape"], &["y"])], vec![]);
    let g = m.graph.as_mut().unwrap();
    let mut shape_in = vi("shape", &[2]);
    if let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(t)),
        ..
    }) = &mut shape_in.r#type
    {
        t.elem_type = data_type::INT64;
    }
    g.input.push(shape_in);
    let s = import(&m).to_string();
    assert!(
        s.contains("Reshape node 'rs'") && s.contains("input 'shape' must be known"),
        "{s}"
    );
    // Fixing the input makes it a constant.
    let mut opts = ImportOptions::default();
    opts.fixed_inputs.insert(
        "shape".into(),
        optc::ir::Tensor::from_i64(optc::ir::DType::I64, &[2], &[3, 2]),
    );
    let r = onnx::load_bytes(&m.encode_to_vec(), None, &opts);
    assert!(
        r.is_err(),
        "declared output [2, 3] but reshape gives [3, 2]: must not silently pass"
    );
}

/// A model over the given graph inputs (all float), one node, opset 23.
fn model_over(inputs: &[(&str, &[i64])], n: NodeProto) -> ModelProto {
    let mut m = model(vec![n], vec![]);
    m.opset_import[0].version = 23;
    let g = m.graph.as_mut().expect("model() makes a graph");
    g.input = inputs.iter().map(|(name, dims)| vi(name, dims)).collect();
    m
}

fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: attr_type::INT,
        i,
        ..Default::default()
    }
}

#[test]
fn axes_and_ranks_that_do_not_fit_are_errors() {
    // Axis 0 of a scalar: Split and Squeeze index the input's dims with it.
    let s = import(&model_over(&[("s", &[])], node("Split", "sp", &["s"], &["y"]))).to_string();
    assert!(s.contains("Split node 'sp'") && s.contains("scalar"), "{s}");
    let mut n = node("Squeeze", "sq", &["s", "ax"], &["y"]);
    n.input.truncate(1);
    n.attribute.push(AttributeProto {
        name: "axes".into(),
        r#type: attr_type::INTS,
        ints: vec![0],
        ..Default::default()
    });
    let mut m = model_over(&[("s", &[])], n);
    m.opset_import[0].version = 11;
    let s = import(&m).to_string();
    assert!(s.contains("Squeeze node 'sq'") && s.contains("scalar"), "{s}");
    // Concat of a matrix and a vector.
    let mut n = node("Concat", "c", &["x", "v"], &["y"]);
    n.attribute.push(int_attr("axis", 1));
    let s = import(&model_over(&[("x", &[2, 3]), ("v", &[4])], n)).to_string();
    assert!(
        s.contains("Concat node 'c'") && s.contains("ranks 2 and 1"),
        "{s}"
    );
    // An empty input may have another rank: it adds nothing.
    let mut n = node("Concat", "c0", &["e", "x"], &["y"]);
    n.attribute.push(int_attr("axis", 0));
    let m = model_over(&[("e", &[0]), ("x", &[2, 3])], n);
    assert!(onnx::load_bytes(&m.encode_to_vec(), None, &ImportOptions::default()).is_ok());
    // num_outputs must be the node's output count (not a loop bound).
    let mut n = node("Split", "sp2", &["x"], &["y"]);
    n.attribute.push(int_attr("num_outputs", 1 << 40));
    let s = import(&model_over(&[("x", &[2, 3])], n)).to_string();
    assert!(
        s.contains("Split node 'sp2'") && s.contains("num_outputs is 1099511627776"),
        "{s}"
    );
    // A past key that is not 4-D.
    let n = node("Attention", "at", &["q", "k", "v", "", "pk", "pv"], &["y"]);
    let q = [1, 2, 3, 8];
    let s = import(&model_over(
        &[("q", &q), ("k", &q), ("v", &q), ("pk", &[5]), ("pv", &[5])],
        n,
    ))
    .to_string();
    assert!(
        s.contains("Attention node 'at'") && s.contains("must be 4-D"),
        "{s}"
    );
    // An identity table of 10^12 entries for a declared [10^6, 10^6] input.
    let n = node("EyeLike", "eye", &["x"], &["y"]);
    let s = import(&model_over(&[("x", &[1_000_000, 1_000_000])], n)).to_string();
    assert!(s.contains("EyeLike node 'eye'") && s.contains("too large"), "{s}");
    // A block size whose square overflows, and a stride that would overflow
    // the SAME padding arithmetic.
    let mut n = node("DepthToSpace", "d2s", &["x"], &["y"]);
    n.attribute.push(int_attr("blocksize", 1 << 40));
    let s = import(&model_over(&[("x", &[1, 4, 2, 2])], n)).to_string();
    assert!(
        s.contains("DepthToSpace node 'd2s'") && s.contains("blocksize 1099511627776"),
        "{s}"
    );
    let mut n = node("MaxPool", "mp", &["x"], &["y"]);
    for (name, v) in [("kernel_shape", vec![2, 2]), ("strides", vec![i64::MAX, 1])] {
        n.attribute.push(AttributeProto {
            name: name.into(),
            r#type: attr_type::INTS,
            ints: v,
            ..Default::default()
        });
    }
    n.attribute.push(AttributeProto {
        name: "auto_pad".into(),
        r#type: attr_type::STRING,
        s: b"SAME_UPPER".to_vec(),
        ..Default::default()
    });
    let s = import(&model_over(&[("x", &[1, 1, 4, 4])], n)).to_string();
    assert!(
        s.contains("MaxPool node 'mp'") && s.contains("must lie in 1..=16777216"),
        "{s}"
    );
}
