//! Every op against an independent reference: `scripts/make_op_goldens.py`
//! computes expected outputs with numpy (float64, rounded once to the output
//! dtype) from the op definitions, not from the Rust code, and stores them
//! with small graphs in `tests/data/op_goldens.json`. This test runs each
//! graph on the interpreter and compares.

use std::collections::BTreeMap;

use optc_ir::{parse, run, DType, Tensor, WeightStore};
use serde_json::Value as Json;

fn number(v: &Json) -> f64 {
    match v {
        Json::String(s) if s == "nan" => f64::NAN,
        Json::String(s) if s == "inf" => f64::INFINITY,
        Json::String(s) if s == "-inf" => f64::NEG_INFINITY,
        Json::Number(n) => n.as_f64().expect("finite number"),
        other => panic!("not a number: {other}"),
    }
}

fn tensor(v: &Json) -> Tensor {
    let dtype: DType = v["dtype"].as_str().expect("dtype").parse().expect("known dtype");
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data = v["data"].as_array().expect("data");
    if dtype.is_float() {
        let f: Vec<f64> = data.iter().map(number).collect();
        Tensor::from_f64(dtype, &shape, &f)
    } else {
        // Integers are read as i64 so values near ±2^63 stay exact.
        let i: Vec<i64> = data.iter().map(|d| d.as_i64().expect("integer data")).collect();
        Tensor::from_i64(dtype, &shape, &i)
    }
}

/// Checks one output; returns a description of the first mismatch.
fn compare(got: &Tensor, want: &Tensor, atol: f64, rtol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "got {}{:?}, want {}{:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    if !want.dtype().is_float() {
        return if got.to_i64_vec() == want.to_i64_vec() {
            Ok(())
        } else {
            Err(format!(
                "got {:?}, want {:?}",
                got.to_i64_vec(),
                want.to_i64_vec()
            ))
        };
    }
    for (i, (g, w)) in got.to_f64_vec().into_iter().zip(want.to_f64_vec()).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            return Err(format!("element {i}: got {g}, want {w}"));
        }
    }
    Ok(())
}

#[test]
fn interpreter_matches_numpy_goldens() {
    let text = include_str!("data/op_goldens.json");
    let doc: Json = serde_json::from_str(text).expect("valid JSON");
    let cases = doc["cases"].as_array().expect("cases");
    let mut failures = Vec::new();
    let mut ops = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let ir = case["ir"].as_str().expect("ir");
        let g = match parse(ir) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{name}: does not parse: {e}"));
                continue;
            }
        };
        ops.extend(g.op_counts().into_keys());
        let inputs: BTreeMap<String, Tensor> = case["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, v)| (k.clone(), tensor(v)))
            .collect();
        let outs = match run(&g, &inputs, &WeightStore::new()) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let (atol, rtol) = (number(&case["atol"]), number(&case["rtol"]));
        for (k, want) in case["outputs"].as_array().expect("outputs").iter().enumerate() {
            if let Err(e) = compare(&outs[k], &tensor(want), atol, rtol) {
                failures.push(format!("{name} output {k}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let missing: Vec<&str> = optc_ir::Op::names()
        .into_iter()
        .filter(|n| !ops.contains(n))
        .collect();
    assert!(missing.is_empty(), "ops without a golden case: {missing:?}");
}
