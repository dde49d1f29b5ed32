//! The `optc` binary: `inspect` and `eval` on the tiny decoder, and user
//! errors that exit non-zero with a message naming the problem (no panic).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use optc::fixtures::{random_ids, tiny_decoder, SplitMix64, TinyDecoderConfig};
use optc::ir::weights::write_safetensors;
use optc::ir::{print, Tensor, WeightStore};

fn optc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_optc"))
        .args(args)
        .output()
        .expect("optc runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with `message` in stderr, exit code 1, and no panic.
fn assert_user_error(o: &Output, message: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert!(err.contains(message), "expected {message:?} in:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Writes the tiny decoder bundle into a fresh directory.
fn bundle(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("optc-cli-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (g, store) = tiny_decoder(&TinyDecoderConfig::default()).unwrap();
    std::fs::write(dir.join("m.ir"), print(&g)).unwrap();
    let w: Vec<(String, Tensor)> = store
        .names()
        .map(|n| (n.to_string(), store.get(n).unwrap()))
        .collect();
    write_safetensors(dir.join("w.safetensors"), &w).unwrap();
    let ids = random_ids(&[1, 4], 64, &mut SplitMix64(9));
    write_safetensors(dir.join("ids.safetensors"), &[("ids".into(), ids)]).unwrap();
    dir
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

#[test]
fn inspect_summarises_the_graph() {
    let dir = bundle("inspect");
    let o = optc(&["inspect", &p(&dir, "m.ir")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("input    %ids: i64[B, S]"), "{out}");
    assert!(out.contains("output   %logits: f32[B, S, 64]"), "{out}");
    assert!(out.contains("symbols  B, S"), "{out}");
    assert!(
        out.contains("weights  21 tensors, 22688 parameters (f32 22688)"),
        "{out}"
    );
    assert!(out.contains("linear                         15"), "{out}");
    let o = optc(&["inspect", "--ir", &p(&dir, "m.ir")]);
    assert_eq!(stdout(&o), std::fs::read_to_string(dir.join("m.ir")).unwrap());
}

#[test]
fn eval_writes_the_interpreters_outputs() {
    let dir = bundle("eval");
    let o = optc(&[
        "eval",
        &p(&dir, "m.ir"),
        "--weights",
        &p(&dir, "w.safetensors"),
        "--input",
        &format!("ids={}", p(&dir, "ids.safetensors")),
        "--out",
        &p(&dir, "out.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("%logits: f32[1, 4, 64]"), "{}", stdout(&o));
    let mut got = WeightStore::new();
    got.open_safetensors(dir.join("out.safetensors")).unwrap();
    let (g, store) = tiny_decoder(&TinyDecoderConfig::default()).unwrap();
    let ids = random_ids(&[1, 4], 64, &mut SplitMix64(9));
    let want = optc::ir::run(&g, &[("ids".to_string(), ids)].into(), &store).unwrap();
    assert_eq!(got.get("logits").unwrap(), want[0]);
}

#[test]
fn user_errors_are_reported_not_panicked() {
    let dir = bundle("errors");
    assert_user_error(&optc(&["inspect", &p(&dir, "nope.ir")]), "cannot read");
    std::fs::write(
        dir.join("bad.ir"),
        "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  %0: f32[2] = neg(%q)\n  return %0\n}",
    )
    .unwrap();
    assert_user_error(
        &optc(&["inspect", &p(&dir, "bad.ir")]),
        &format!("{}:2:20: %q is not defined", p(&dir, "bad.ir")),
    );
    std::fs::write(
        dir.join("ill.ir"),
        "graph g(%x: f32[2]) -> (%y: f32[3]) {\n  %0: f32[3] = neg(%x)\n  return %0\n}",
    )
    .unwrap();
    assert_user_error(
        &optc(&["inspect", &p(&dir, "ill.ir")]),
        "invalid graph: %0 = neg declares f32[3] but its operands give f32[2]",
    );
    // A weight whose element count overflows (a hand-made file).
    std::fs::write(
        dir.join("huge.ir"),
        "graph g(%x: f32[2]) -> (%y: f32[2]) {\n  weight @w: f32[4294967296, 4294967296, 4294967296] = \"w\"\n  %0: f32[2] = neg(%x)\n  return %0\n}",
    )
    .unwrap();
    assert_user_error(&optc(&["inspect", &p(&dir, "huge.ir")]), "weight w: dims");
    let m = p(&dir, "m.ir");
    let w = p(&dir, "w.safetensors");
    assert_user_error(&optc(&["eval", &m, "--weights", &w]), "missing input %ids");
    assert_user_error(
        &optc(&["eval", &m, "--weights", &w, "--input", "ids"]),
        "expected NAME=FILE.safetensors",
    );
    let ids = format!("ids={}", p(&dir, "ids.safetensors"));
    assert_user_error(
        &optc(&["eval", &m, "--input", &ids]),
        "no weight named 'model.embed_tokens.weight'",
    );
    assert_user_error(
        &optc(&["eval", &m, "--weights", &p(&dir, "m.ir"), "--input", &ids]),
        "not a valid safetensors file",
    );
    // Ids of the wrong dtype.
    let f = Tensor::from_f32(optc::ir::DType::F32, &[1, 2], &[0.0, 1.0]);
    write_safetensors(dir.join("f.safetensors"), &[("ids".into(), f)]).unwrap();
    let fids = format!("ids={}", p(&dir, "f.safetensors"));
    assert_user_error(
        &optc(&["eval", &m, "--weights", &w, "--input", &fids]),
        "input %ids: expected i64[B, S], got f32[1, 2]",
    );
}

#[test]
fn inspect_and_logits_on_a_model_folder() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let llama = root.join("llama").display().to_string();
    let o = optc(&["inspect", &llama]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("arch     Llama (LlamaForCausalLM)"), "{out}");
    assert!(
        out.contains("2 layers, hidden 64, 4 heads / 2 kv heads of 16, mlp 128, vocab 320"),
        "{out}"
    );
    assert!(out.contains("params   94528 (f32 94528)"), "{out}");
    let o = optc(&["inspect", "--ir", &llama]);
    assert!(stdout(&o).starts_with("graph llamaforcausallm(%ids: i64[B, S]) -> (%logits: f32[B, S, 320]) {"));

    // Logits for the reference prompt, given as text, equal transformers' within 1e-4.
    let dir = bundle("logits");
    let outf = p(&dir, "logits.safetensors");
    let gpt2 = root.join("gpt2").display().to_string();
    let o = optc(&[
        "logits",
        &gpt2,
        "--text",
        "The robot and the dog.",
        "--out",
        &outf,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = WeightStore::new();
    got.open_safetensors(&outf).unwrap();
    let mut want = WeightStore::new();
    want.open_safetensors(root.join("gpt2/reference.safetensors"))
        .unwrap();
    let (g, w) = (got.get("logits").unwrap(), want.get("logits").unwrap());
    assert_eq!(g.shape(), w.shape());
    assert!(g.max_abs_diff(&w) < 1e-4);

    assert_user_error(
        &optc(&["logits", &gpt2, "--ids", "1,2,999"]),
        "token id 999 is outside the vocabulary (0..320)",
    );
    assert_user_error(
        &optc(&["logits", &gpt2]),
        "give the prompt with --ids 1,2,3 or --text",
    );
    assert_user_error(
        &optc(&["logits", &p(&dir, "nothing-here")]),
        "no such file or folder",
    );
}

#[test]
fn sizes_and_settings_out_of_range_are_user_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let llama = root.join("llama").display().to_string();
    // Prompt + output lengths that overflow when the cache is sized.
    assert_user_error(
        &optc(&[
            "bench",
            &llama,
            "--input-len",
            "18446744073709551615",
            "--output-len",
            "1",
        ]),
        "overflow",
    );
    // A cache too large to count (2^40 tokens).
    assert_user_error(
        &optc(&[
            "bench",
            &llama,
            "--input-len",
            "1099511627776",
            "--output-len",
            "1",
        ]),
        "holds 2^32 tokens or more",
    );
    // A temperature whose division would overflow the logits is greedy
    // (vLLM's rule below 1e-5).
    let run = |t: &str| {
        optc(&[
            "generate",
            &llama,
            "--ids",
            "1,2",
            "--max-tokens",
            "6",
            "--temperature",
            t,
        ])
    };
    let (tiny, greedy) = (run("1e-40"), run("0"));
    assert!(tiny.status.success(), "{}", stderr(&tiny));
    assert_eq!(stdout(&tiny), stdout(&greedy));
    // The GPU memory fraction: only where a GPU holds the cache, and in
    // (0, 1] (checked before anything is loaded, so no GPU is needed).
    assert_user_error(
        &optc(&[
            "generate",
            &llama,
            "--ids",
            "1,2",
            "--gpu-memory-utilization",
            "0.5",
        ]),
        "--gpu-memory-utilization sizes the KV cache on a GPU: it needs --target nvrtc",
    );
    for (cmd, u) in [("generate", "1.5"), ("bench", "0"), ("generate", "NaN")] {
        let mut args = vec![cmd, &llama, "--target", "nvrtc", "--gpu-memory-utilization", u];
        if cmd == "generate" {
            args.extend(["--ids", "1"]);
        }
        assert_user_error(
            &optc(&args),
            &format!("--gpu-memory-utilization {u} is not in (0, 1]"),
        );
    }
    // Check inputs of 2^64 elements.
    assert_user_error(
        &optc(&[
            "compile",
            &llama,
            "--check-passes",
            "--check-symbol",
            "B=4294967296",
            "--check-symbol",
            "S=4294967296",
        ]),
        "elements (pick smaller check symbols)",
    );
}

#[test]
fn compile_runs_a_pipeline_with_dumps_and_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf");
    let dir = bundle("compile");
    let dumps = p(&dir, "dumps");
    let out = p(&dir, "final.ir");
    let llama = root.join("llama").display().to_string();
    let o = optc(&[
        "compile",
        &llama,
        "-v",
        "--check-passes",
        "--dump-after",
        "all",
        "--dump-dir",
        &dumps,
        "-o",
        &out,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table = stderr(&o);
    for pass in ["canonicalize", "constant_fold", "cse", "dce"] {
        assert!(table.contains(pass), "{table}");
    }
    let text = std::fs::read_to_string(&out).unwrap();
    optc::ir::verify(&optc::ir::parse(&text).unwrap()).unwrap();
    for f in ["00-input.ir", "01-canonicalize.ir", "03-cse.diff", "04-dce.ir"] {
        assert!(dir.join("dumps").join(f).exists(), "{f}");
    }
    // A pipeline file naming a pass that does not exist.
    std::fs::write(dir.join("p.toml"), "[[pass]]\nname = \"fuse_magic\"\n").unwrap();
    assert_user_error(
        &optc(&["compile", &llama, "--pipeline", &p(&dir, "p.toml")]),
        "unknown pass 'fuse_magic' (known: canonicalize, cast_weights, constant_fold, cse, dce, fuse_add_rmsnorm, fuse_attention, fuse_gelu, fuse_gemm, fuse_layernorm, fuse_rmsnorm, fuse_rope, fuse_swiglu, insert_kv_cache, insert_past_kv, matmul_to_linear, quantize_int8, simplify_outer_products, sink_rope_transposes)",
    );
    let o = optc(&["passes"]);
    assert!(
        stdout(&o).contains("cse                      merge ops"),
        "{}",
        stdout(&o)
    );
}

/// Without a GPU, the nvrtc target is a clear error, not a panic (cudarc's
/// loaders panic on a missing library; optc looks first).
#[test]
fn the_nvrtc_target_without_a_gpu_says_so() {
    if optc::codegen::nvrtc::available().is_ok() {
        eprintln!("skipping: this machine has a GPU (tests/nvrtc_target.rs covers it)");
        return;
    }
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let model = model.display().to_string();
    let o = optc(&[
        "generate",
        &model,
        "--target",
        "nvrtc",
        "--ids",
        "1,2,3",
        "--max-tokens",
        "2",
    ]);
    assert_user_error(&o, "use --target cpu");
    let o = optc(&[
        "compile",
        &model,
        "--kv-cache",
        "--target",
        "nvrtc",
        "-o",
        "/dev/null",
    ]);
    assert_user_error(&o, "use --target cpu");
}

/// The tensorrt target writes a folder from `compile`; what it cannot do
/// is said, not panicked or ignored.
#[test]
fn the_tensorrt_target_says_what_it_needs() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let model = model.display().to_string();
    let dir = bundle("tensorrt");
    let out = p(&dir, "engine");
    let trt = |extra: &[&str]| {
        let mut args = vec!["compile", &model, "--target", "tensorrt"];
        args.extend(extra);
        optc(&args)
    };
    assert_user_error(&trt(&[]), "--target tensorrt needs -o DIR");
    assert_user_error(
        &trt(&["-o", &out, "--kv-cache"]),
        "drop --pipeline and --kv-cache",
    );
    assert_user_error(&trt(&["-o", &out, "--emit", "onnx"]), "drop --emit onnx");
    assert_user_error(
        &trt(&["-o", &out, "--plan-only"]),
        "--plan-only is for --target nvrtc",
    );
    assert_user_error(
        &trt(&["-o", &out, "--max-batch-size", "0"]),
        "--max-batch-size (0) and --max-input-len (1024) must be at least 1",
    );
    assert!(!dir.join("engine").exists(), "nothing is written on an error");
    // A misspelt target is refused before the passes run or anything is written.
    let never = p(&dir, "never.ir");
    assert_user_error(
        &optc(&["compile", &model, "--target", "tensorrtt", "-o", &never]),
        "unknown target 'tensorrtt' (known: cpu, nvrtc, reference; tensorrt for optc compile)",
    );
    assert!(!dir.join("never.ir").exists());
    // A graph without attention has no cache to take.
    let ir_dir = bundle("tensorrt-mlp");
    std::fs::write(
        ir_dir.join("mlp.ir"),
        "graph mlp(%ids: i64[B, S]) -> (%y: f32[B, S]) {\n  %0: f32[B, S] = cast(%ids) {to = f32}\n  return %0\n}\n",
    )
    .unwrap();
    assert_user_error(
        &optc(&[
            "compile",
            &p(&ir_dir, "mlp.ir"),
            "--target",
            "tensorrt",
            "-o",
            &out,
            "--max-seq-len",
            "16",
        ]),
        "pass 'insert_past_kv': the graph has no scaled_dot_product_attention to cache",
    );
    let run = [
        optc(&["generate", &model, "--target", "tensorrt", "--ids", "1"]),
        optc(&["bench", &model, "--target", "tensorrt"]),
    ];
    for o in &run {
        assert_user_error(o, "optc compile MODEL --target tensorrt -o DIR");
    }
    let o = trt(&["-o", &out, "--check-passes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o)
            .contains("2 attention layers, batch up to 8, 128 new tokens a call, sequences up to 128 tokens"),
        "{}",
        stdout(&o)
    );
}

/// `--plan-only` shows the nvrtc plan without a GPU: a Llama step graph's
/// rotary tables are one generated kernel, and every norm (the final one
/// included, through the logits rows' gather) goes into a GEMV at decode
/// batch sizes.
#[test]
fn the_nvrtc_plan_needs_no_gpu() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/llama");
    let model = model.display().to_string();
    let o = optc(&[
        "compile",
        &model,
        "--kv-cache",
        "--target",
        "nvrtc",
        "--plan-only",
        "-o",
        "/dev/null",
    ]);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("no GPU used"), "{err}");
    assert!(err.contains("elementwise chain (generated) 1"), "{err}");
    assert!(err.contains("5 linears do the norm before them"), "{err}");
    let o = optc(&["compile", &model, "--plan-only"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

fn fx_fixture(f: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fx")
        .join(f)
        .display()
        .to_string()
}

#[test]
fn pt2_archives_inspect_eval_and_compile() {
    let dir = bundle("pt2");
    let m = fx_fixture("llama.pt2");
    let o = optc(&["inspect", &m]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("(torch 2.11.0+cu130, export schema 8.17)"), "{out}");
    assert!(out.contains("range    s70 in 2..=inf"), "{out}");
    assert!(out.contains("input    %input_ids: i64[1, s70]"), "{out}");
    assert!(out.contains("output   %output: f32[1, s70, 320]"), "{out}");
    assert!(out.contains("scaled_dot_product_attention   2"), "{out}");

    let mut r = WeightStore::new();
    r.open_safetensors(fx_fixture("llama.reference.safetensors"))
        .unwrap();
    write_safetensors(
        dir.join("ids13.safetensors"),
        &[("input_ids".into(), r.get("input_13").unwrap())],
    )
    .unwrap();
    let out_file = p(&dir, "out.safetensors");
    let o = optc(&[
        "eval",
        &m,
        "--input",
        &format!("input_ids={}", p(&dir, "ids13.safetensors")),
        "--out",
        &out_file,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut got = WeightStore::new();
    got.open_safetensors(&out_file).unwrap();
    let err = got
        .get("output")
        .unwrap()
        .max_abs_diff(&r.get("output_13").unwrap());
    assert!(err <= 1e-4, "eval of the archive is off torch by {err}");

    // One token is outside the exported range (s70 >= 2).
    write_safetensors(
        dir.join("ids1.safetensors"),
        &[(
            "input_ids".into(),
            Tensor::from_i64(optc::ir::DType::I64, &[1, 1], &[3]),
        )],
    )
    .unwrap();
    assert_user_error(
        &optc(&[
            "eval",
            &m,
            "--input",
            &format!("input_ids={}", p(&dir, "ids1.safetensors")),
        ]),
        "symbol s70 = 1 is outside the range the program was exported for (2..=unbounded)",
    );

    let o = optc(&["compile", &m, "--check-passes", "-o", &p(&dir, "fused.ir")]);
    assert!(o.status.success(), "{}", stderr(&o));
    // With -o, the pass report (time, node change, max error) is on stderr.
    assert!(stderr(&o).contains("fuse_rope"), "{}", stderr(&o));
    let fused = std::fs::read_to_string(dir.join("fused.ir")).unwrap();
    assert!(fused.contains("rope("), "{fused}");

    std::fs::write(dir.join("bad.pt2"), b"not a zip").unwrap();
    assert_user_error(
        &optc(&["inspect", &p(&dir, "bad.pt2")]),
        "bad.pt2: not a readable .pt2 archive",
    );
}
