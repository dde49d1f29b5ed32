//! The CPU target against the reference interpreter: the same graphs on the
//! same inputs. Model graphs before any pass (every op the frontends emit,
//! many of them through reference fallbacks), fused graphs, and step graphs
//! over several steps with the paged cache carried as state.

use std::collections::BTreeMap;
use std::path::Path;

use optc::codegen::cpu::CpuProgram;
use optc::frontends::hf;
use optc::ir::{run, Bindings, DType, Graph, Tensor, WeightStore};
use optc::passes::kv_cache::StepInputs;
use optc::passes::Pipeline;
use optc::Compiler;

const BLOCK: usize = 4;
const FIXTURES: [(&str, f32); 7] = [
    ("llama", 1e-4),
    ("mistral", 1e-4),
    ("qwen2", 1e-4),
    ("phi3", 1e-4),
    ("gpt2", 1e-4),
    ("llama_bf16", 2e-2),
    ("qwen2_f16", 2e-2),
];

fn load(name: &str) -> hf::HfModel {
    hf::load(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hf")
            .join(name),
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let (a, b) = (a.cast(DType::F32).to_f32_vec(), b.cast(DType::F32).to_f32_vec());
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn ids_input(ids: &[i64]) -> BTreeMap<String, Tensor> {
    BTreeMap::from([(
        "ids".to_string(),
        Tensor::from_i64(DType::I64, &[1, ids.len()], ids),
    )])
}

fn compare_full(name: &str, g: &Graph, w: &WeightStore, tol: f32) {
    let ids: Vec<i64> = (0..9).map(|i| (i * 53 + 1) % 300).collect();
    let want = run(g, &ids_input(&ids), w).unwrap();
    let mut p = CpuProgram::new(g, w).unwrap();
    let got = p.run(&ids_input(&ids)).unwrap();
    let d = max_diff(&want[0], &got["logits"]);
    assert!(d <= tol, "{name}: cpu logits differ from the interpreter by {d}");
}

#[test]
fn model_graphs_match_the_interpreter() {
    for (name, tol) in FIXTURES {
        let mut m = load(name);
        compare_full(name, &m.graph, &m.weights, tol);
        Compiler::new().compile(&mut m.graph, &mut m.weights).unwrap();
        compare_full(&format!("{name} (fused)"), &m.graph, &m.weights, tol);
    }
}

#[test]
fn step_graphs_match_the_interpreter_across_steps() {
    for (name, tol) in FIXTURES {
        let mut m = load(name);
        Compiler::new()
            .set_pipeline(Pipeline::serving(BLOCK))
            .compile(&mut m.graph, &mut m.weights)
            .unwrap();
        let g = &m.graph;
        let mut cpu = CpuProgram::new(g, &m.weights).unwrap();
        let summary = cpu.summary().clone();
        assert_eq!(
            summary.kernels.get("paged_attention"),
            Some(&m.config.num_layers),
            "{name}"
        );
        assert!(
            summary.buffers < summary.values,
            "{name}: no buffer reuse: {summary:?}"
        );
        cpu.init_state(&Bindings::from([("NB".to_string(), 8)])).unwrap();
        let vocab = m.config.vocab_size as i64;
        let a: Vec<i64> = (0..11).map(|i| (i * 37 + 5) % vocab).collect();
        let b: Vec<i64> = (0..8).map(|i| (i * 91 + 2) % vocab).collect();
        let seqs = [(a, vec![5i64, 2, 7]), (b, vec![0, 3])];
        let steps: [&[(usize, usize, usize)]; 3] =
            [&[(0, 0, 5)], &[(0, 5, 4), (1, 0, 7)], &[(1, 7, 1), (0, 9, 2)]];
        let mut caches: BTreeMap<String, Tensor> = BTreeMap::new();
        for step in steps {
            let mut s = StepInputs::default();
            for &(seq, start, len) in step {
                s.ids.extend(&seqs[seq].0[start..start + len]);
                s.push_seq(&seqs[seq].1, BLOCK, start, len, true);
            }
            let mut inputs = s.tensors(g, 8, DType::I64).unwrap();
            let mut cpu_inputs = inputs.clone();
            cpu_inputs.retain(|k, _| !k.contains("_cache."));
            for (k, v) in &caches {
                inputs.insert(k.clone(), v.clone());
            }
            let want = run(g, &inputs, &m.weights).unwrap();
            for (o, t) in g.outputs().iter().zip(&want).skip(1) {
                caches.insert(o.name.clone(), t.clone());
            }
            let got = cpu.run(&cpu_inputs).unwrap();
            let d = max_diff(&want[0], &got["logits"]);
            assert!(d <= tol, "{name}: step logits differ by {d}");
        }
        // The state equals the interpreter's caches.
        let nb = Bindings::from([("NB".to_string(), 8)]);
        let k0 = cpu.state_tensor("k_cache.0", &nb).unwrap();
        assert!(
            max_diff(&k0, &caches["k_cache.0"]) <= tol,
            "{name}: caches differ"
        );
    }
}

#[test]
fn bad_inputs_are_errors_naming_what_is_wrong() {
    let mut m = load("llama");
    Compiler::new()
        .set_pipeline(Pipeline::serving(BLOCK))
        .compile(&mut m.graph, &mut m.weights)
        .unwrap();
    let mut cpu = CpuProgram::new(&m.graph, &m.weights).unwrap();
    cpu.init_state(&Bindings::from([("NB".to_string(), 2)])).unwrap();
    let mut s = StepInputs {
        ids: vec![1, 2, 3],
        ..Default::default()
    };
    s.push_seq(&[1], BLOCK, 0, 3, true);
    let ok = s.tensors(&m.graph, 2, DType::I64).unwrap();
    let clean = |mut t: BTreeMap<String, Tensor>| {
        t.retain(|k, _| !k.contains("_cache."));
        t
    };
    assert!(cpu.run(&clean(ok.clone())).is_ok());
    // A token id outside the vocabulary.
    let mut bad = clean(ok.clone());
    bad.insert("ids".into(), Tensor::from_i64(DType::I64, &[3], &[1, 9999, 3]));
    let e = cpu.run(&bad).unwrap_err().to_string();
    assert!(e.contains("9999") && e.contains("embedding"), "{e}");
    // A block outside the cache.
    let mut bad = clean(ok.clone());
    bad.insert("block_tables".into(), Tensor::from_i64(DType::I64, &[1, 1], &[7]));
    let e = cpu.run(&bad).unwrap_err().to_string();
    assert!(e.contains("outside the cache"), "{e}");
    // A missing input.
    let mut bad = clean(ok);
    bad.remove("positions");
    let e = cpu.run(&bad).unwrap_err().to_string();
    assert!(e.contains("positions"), "{e}");
}

/// `cast_weights` stores the f32 linear and embedding weights as f16: the
/// interpreter and the CPU target agree on the rewritten graph, the CPU
/// target reads the half weights directly (half the weight bytes, no cast
/// run), and the logits stay close to the f32 model's.
#[test]
fn half_weights_through_cast_weights() {
    let mut m = load("llama");
    let full = m.graph.clone();
    let mut half = m.graph.clone();
    let mut p = Pipeline::default_pipeline();
    let mut spec = optc::passes::PassSpec::new("cast_weights");
    spec.options
        .insert("min_elements".into(), toml::Value::Integer(0));
    p.passes.push(spec);
    Compiler::new()
        .set_pipeline(p)
        .compile(&mut half, &mut m.weights)
        .unwrap();
    let casts = half.op_counts().get("cast").copied().unwrap_or(0);
    assert!(casts >= 9, "one cast per linear/embedding weight, got {casts}");
    let ids: Vec<i64> = (0..9).map(|i| (i * 53 + 1) % 300).collect();
    let want = run(&half, &ids_input(&ids), &m.weights).unwrap();
    let mut cpu = CpuProgram::new(&half, &m.weights).unwrap();
    assert!(
        !cpu.summary().reference.contains_key("cast"),
        "{:?}",
        cpu.summary()
    );
    let got = cpu.run(&ids_input(&ids)).unwrap();
    assert!(max_diff(&want[0], &got["logits"]) < 1e-4);
    let f32_logits = run(&full, &ids_input(&ids), &m.weights).unwrap();
    let scale = f32_logits[0]
        .to_f32_vec()
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()));
    let d = max_diff(&f32_logits[0], &got["logits"]);
    assert!(
        d < 1e-2 * scale,
        "f16 weights moved logits by {d} (largest {scale})"
    );
    let f32_bytes = CpuProgram::new(&full, &m.weights).unwrap().summary().weight_bytes;
    assert!(
        cpu.summary().weight_bytes * 3 < f32_bytes * 2,
        "{} vs {f32_bytes}",
        cpu.summary().weight_bytes
    );
}

/// `quantize_int8` writes int8 blocks with f32 scales and their
/// dequantisation into the graph: the CPU target keeps the blocks packed
/// (about a quarter of the f32 bytes, the chain is a view) and computes what
/// the interpreter computes on the rewritten graph; logits stay close to the
/// f32 model's.
#[test]
fn int8_weights_through_quantize_int8() {
    let mut m = load("llama");
    let full = m.graph.clone();
    let mut q = m.graph.clone();
    let mut p = Pipeline::default_pipeline();
    let mut spec = optc::passes::PassSpec::new("quantize_int8");
    spec.options
        .insert("min_elements".into(), toml::Value::Integer(0));
    p.passes.push(spec);
    let report = Compiler::new()
        .set_pipeline(p)
        .compile(&mut q, &mut m.weights)
        .unwrap();
    assert_eq!(
        report.runs.last().unwrap().rewrites,
        9,
        "every linear weight (the LM head too)"
    );
    let ids: Vec<i64> = (0..9).map(|i| (i * 53 + 1) % 300).collect();
    let want = run(&q, &ids_input(&ids), &m.weights).unwrap();
    let mut cpu = CpuProgram::new(&q, &m.weights).unwrap();
    let s = cpu.summary().clone();
    // No dequantizing cast or multiply of its own: the one binary kernel
    // is the rotary angles' (`simplify_outer_products`).
    assert!(
        !s.reference.contains_key("cast") && s.kernels.get("binary").copied().unwrap_or(0) <= 1,
        "{s:?}"
    );
    let got = cpu.run(&ids_input(&ids)).unwrap();
    let scale = want[0].to_f32_vec().iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max_diff(&want[0], &got["logits"]) < 1e-4 * scale.max(1.0));
    let f32_logits = run(&full, &ids_input(&ids), &m.weights).unwrap();
    let d = max_diff(&f32_logits[0], &got["logits"]);
    assert!(
        d < 5e-2 * scale,
        "int8 weights moved logits by {d} (largest {scale})"
    );
    let f32_bytes = CpuProgram::new(&full, &m.weights).unwrap().summary().weight_bytes;
    // The embedding table stays f32 (it is also the tied LM head's source).
    assert!(
        s.weight_bytes < f32_bytes * 3 / 4,
        "{} vs {f32_bytes}",
        s.weight_bytes
    );
}
