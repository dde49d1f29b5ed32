//! `insert_kv_cache` on every fixture architecture: the step graph, run on
//! the reference interpreter over several steps (chunked prefill of two
//! sequences sharing steps, decode, blocks out of order, block boundaries,
//! Mistral's sliding window shorter than the sequence), gives the model
//! graph's logits at every position.

use std::collections::BTreeMap;
use std::path::Path;

use optc::frontends::hf;
use optc::ir::{run, DType, Graph, Tensor, WeightStore};
use optc::passes::kv_cache::StepInputs;
use optc::passes::{PassError, Pipeline};
use optc::Compiler;

const BLOCK: usize = 4;

fn load(name: &str) -> hf::HfModel {
    hf::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(name),
    )
    .unwrap()
}

fn full_logits(g: &Graph, w: &WeightStore, ids: &[i64]) -> Vec<Vec<f32>> {
    let input = Tensor::from_i64(DType::I64, &[1, ids.len()], ids);
    let out = run(g, &BTreeMap::from([("ids".to_string(), input)]), w).unwrap();
    let vocab = out[0].shape()[2];
    let v = out[0].cast(DType::F32).to_f32_vec();
    v.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// One sequence's share of a step: (which sequence, first position, count).
type Part = (usize, usize, usize);

fn run_steps(
    g: &Graph,
    w: &WeightStore,
    seqs: &[(Vec<i64>, Vec<i64>)],
    steps: &[Vec<Part>],
    vocab: usize,
) -> Vec<Vec<(usize, usize, Vec<f32>)>> {
    let mut caches: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut results = Vec::new();
    for step in steps {
        let mut s = StepInputs::default();
        let mut rows = Vec::new();
        for &(seq, start, len) in step {
            let (ids, blocks) = &seqs[seq];
            s.ids.extend(&ids[start..start + len]);
            s.push_seq(blocks, BLOCK, start, len, false);
            for p in start..start + len {
                rows.push((seq, p));
            }
        }
        s.logits_indices = (0..s.ids.len() as i64).collect();
        let mut inputs = s.tensors(g, 8, DType::I64).unwrap();
        for (k, v) in &caches {
            inputs.insert(k.clone(), v.clone());
        }
        let out = run(g, &inputs, w).unwrap();
        for (o, t) in g.outputs().iter().zip(&out).skip(1) {
            caches.insert(o.name.clone(), t.clone());
        }
        let logits = out[0].cast(DType::F32).to_f32_vec();
        assert_eq!(logits.len(), rows.len() * vocab);
        results.push(
            rows.into_iter()
                .zip(logits.chunks(vocab))
                .map(|((seq, p), l)| (seq, p, l.to_vec()))
                .collect(),
        );
    }
    results
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn step_graph_matches_the_model_on_every_fixture() {
    for (name, tol) in [
        ("llama", 1e-4),
        ("mistral", 1e-4),
        ("qwen2", 1e-4),
        ("phi3", 1e-4),
        ("gpt2", 1e-4),
        ("llama_bf16", 1e-2),
        ("qwen2_f16", 2e-3),
    ] {
        let mut m = load(name);
        let mut step = m.graph.clone();
        let w = &mut m.weights;
        let report = Compiler::new()
            .set_pipeline(Pipeline::serving(BLOCK))
            .compile(&mut step, w)
            .unwrap();
        let counts = step.op_counts();
        assert_eq!(
            counts.get("paged_attention"),
            Some(&m.config.num_layers),
            "{name}"
        );
        assert_eq!(counts.get("scaled_dot_product_attention"), None, "{name}");
        assert!(report.runs.iter().any(|r| r.name == "insert_kv_cache"));
        let vocab = m.config.vocab_size;
        let a: Vec<i64> = (0..11).map(|i| (i * 37 + 5) % vocab as i64).collect();
        let b: Vec<i64> = (0..8).map(|i| (i * 91 + 2) % vocab as i64).collect();
        let seqs = vec![(a.clone(), vec![5, 2, 7]), (b.clone(), vec![0, 3])];
        let steps = vec![
            vec![(0, 0, 5)],
            vec![(0, 5, 4), (1, 0, 7)],
            vec![(1, 7, 1), (0, 9, 2)],
        ];
        // The same pipeline without the cache: only insert_kv_cache differs.
        let mut fused = m.graph.clone();
        Compiler::new().compile(&mut fused, w).unwrap();
        let want = [full_logits(&fused, w, &a), full_logits(&fused, w, &b)];
        let mut checked = 0;
        for step in run_steps(&step, w, &seqs, &steps, vocab) {
            for (seq, p, row) in step {
                let d = max_diff(&row, &want[seq][p]);
                assert!(
                    d <= tol,
                    "{name}: sequence {seq} position {p}: logits differ by {d}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 19, "{name}");
    }
}

#[test]
fn check_passes_covers_the_cache_insertion() {
    let m = load("llama");
    let (mut g, mut w) = (m.graph, m.weights);
    let report = Compiler::new()
        .set_pipeline(Pipeline::serving(BLOCK))
        .check_passes(Default::default())
        .compile(&mut g, &mut w)
        .unwrap();
    let kv = report.runs.iter().find(|r| r.name == "insert_kv_cache").unwrap();
    assert!(kv.max_abs_error.unwrap() < 1e-4, "{:?}", kv.max_abs_error);
}

#[test]
fn only_requested_rows_get_logits() {
    let mut m = load("qwen2");
    let (mut g, w) = (m.graph.clone(), &mut m.weights);
    Compiler::new()
        .set_pipeline(Pipeline::serving(BLOCK))
        .compile(&mut g, w)
        .unwrap();
    let ids: Vec<i64> = (0..6).collect();
    let mut s = StepInputs {
        ids: ids.clone(),
        ..Default::default()
    };
    s.push_seq(&[1, 0], BLOCK, 0, 6, true);
    let out = run(&g, &s.tensors(&g, 2, DType::I64).unwrap(), w).unwrap();
    assert_eq!(out[0].shape(), &[1, m.config.vocab_size]);
    let full = full_logits(&m.graph, w, &ids);
    assert!(max_diff(&out[0].to_f32_vec(), &full[5]) < 1e-4);
}

#[test]
fn errors_name_what_cannot_be_cached() {
    // A graph without attention.
    let text = "graph g(%ids: i64[B, S]) -> (%y: f32[B, S, 4]) {\n  weight @e: f32[10, 4] = \"e\"\n  %0: f32[B, S, 4] = embedding(@e, %ids)\n  %1: f32[B, S, 4] = linear(%0, @w)\n  weight @w: f32[4, 4] = \"w\"\n  return %1\n}\n";
    let mut g = optc::ir::parse(text).unwrap();
    let mut w = WeightStore::new();
    let err = Compiler::new()
        .set_pipeline(Pipeline::serving(BLOCK))
        .compile(&mut g, &mut w)
        .unwrap_err();
    assert!(matches!(err, PassError::Failed { .. }), "{err}");
    assert!(err.to_string().contains("no attention"), "{err}");

    // Two inputs.
    let text = "graph g(%ids: i64[B, S], %mask: bool[B, S]) -> (%y: i64[B, S]) {\n  return %ids\n}\n";
    let mut g = optc::ir::parse(text).unwrap();
    let err = Compiler::new()
        .set_pipeline(Pipeline::serving(BLOCK))
        .compile(&mut g, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("ids, mask"), "{err}");

    // A bad block size.
    let m = load("llama");
    let (mut g, mut w) = (m.graph, m.weights);
    let mut p = Pipeline::serving(0);
    p.passes.retain(|s| s.name == "insert_kv_cache");
    let err = Compiler::new()
        .set_pipeline(p)
        .compile(&mut g, &mut w)
        .unwrap_err();
    assert!(err.to_string().contains("block_size"), "{err}");
}
