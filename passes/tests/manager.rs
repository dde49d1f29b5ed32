//! The pass manager: pipelines from TOML, the verifier after every pass
//! (naming the pass that broke the graph), numerical checking (naming the
//! pass that changed results), dumps, and the report.

use std::sync::Arc;

use optc_ir::ops::{Op, UnaryKind};
use optc_ir::{parse, Graph, WeightStore};
use optc_passes::check::CheckConfig;
use optc_passes::{
    DumpConfig, Pass, PassContext, PassError, PassManager, PassRegistry, PassReport, Pipeline,
};

const TEXT: &str = "graph g(%x: f32[B, 4]) -> (%y: f32[B, 4]) {\n  %0: f32[B, 4] = exp(%x)\n  %1: f32[B, 4] = exp(%x)\n  %2: f32[B, 4] = add(%0, %1)\n  %3: f32[B, 4] = neg(%x)\n  return %2\n}";

/// Replaces every `exp` with `neg`: valid graph, wrong results.
struct WrongPass;

impl Pass for WrongPass {
    fn name(&self) -> &str {
        "wrong"
    }
    fn description(&self) -> &str {
        "a broken rewrite, for tests"
    }
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let ids: Vec<_> = g.node_ids().collect();
        for n in ids {
            if g.node(n).op() == Some(&Op::Unary(UnaryKind::Exp)) {
                g.node_mut(n).kind = optc_ir::NodeKind::Op(Op::Unary(UnaryKind::Neg));
            }
        }
        Ok(PassReport::with_rewrites(1))
    }
}

/// Removes a node that is still used: an invalid graph.
struct BreakingPass;

impl Pass for BreakingPass {
    fn name(&self) -> &str {
        "breaking"
    }
    fn description(&self) -> &str {
        "leaves a dangling operand, for tests"
    }
    fn run(&self, g: &mut Graph, _: &mut PassContext) -> Result<PassReport, PassError> {
        let first = g.node_ids().find(|&n| g.node(n).op().is_some()).unwrap();
        g.remove_node(first);
        Ok(PassReport::default())
    }
}

fn registry() -> PassRegistry {
    let mut r = PassRegistry::builtin();
    r.register(Arc::new(WrongPass));
    r.register(Arc::new(BreakingPass));
    r
}

fn pipeline(names: &[&str]) -> Pipeline {
    let toml: String = names
        .iter()
        .map(|n| format!("[[pass]]\nname = \"{n}\"\n"))
        .collect();
    Pipeline::from_toml("test.toml", &toml).unwrap()
}

#[test]
fn default_pipeline_cleans_up_and_reports() {
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &Pipeline::default_pipeline())
        .unwrap()
        .with_check(CheckConfig::default());
    let report = pm.run(&mut g, &mut WeightStore::new()).unwrap();
    assert_eq!(
        pm.pass_names()[..4],
        ["canonicalize", "constant_fold", "cse", "dce"]
    );
    assert_eq!(g.op_counts()["exp"], 1);
    assert_eq!(g.op_counts().get("neg"), None);
    let table = report.table();
    assert!(table.contains("cse"), "{table}");
    assert!(report.runs.iter().all(|r| r.max_abs_error == Some(0.0)));
    assert_eq!(report.runs[2].rewrites, 1);
}

#[test]
fn verifier_names_the_pass_that_broke_the_graph() {
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &pipeline(&["cse", "breaking"])).unwrap();
    let e = pm.run(&mut g, &mut WeightStore::new()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("pass 'breaking' left an invalid graph: "),
        "{e}"
    );
}

#[test]
fn checking_names_the_pass_that_changed_results() {
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &pipeline(&["cse", "wrong", "dce"]))
        .unwrap()
        .with_check(CheckConfig::default());
    let e = pm.run(&mut g, &mut WeightStore::new()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("pass 'wrong' changed the graph's results: max abs error"),
        "{e}"
    );
    // Without checking, the wrong pass goes through (it leaves a valid graph).
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &pipeline(&["wrong"])).unwrap();
    pm.run(&mut g, &mut WeightStore::new()).unwrap();
}

#[test]
fn dumps_text_ir_and_diffs() {
    let dir = std::env::temp_dir().join(format!("optc-dump-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &pipeline(&["cse", "dce"]))
        .unwrap()
        .with_dump(DumpConfig {
            dir: dir.clone(),
            after: vec!["dce".into()],
        });
    pm.run(&mut g, &mut WeightStore::new()).unwrap();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["00-input.ir", "02-dce.diff", "02-dce.ir"]);
    let diff = std::fs::read_to_string(dir.join("02-dce.diff")).unwrap();
    assert!(diff.contains("-  %2: f32[B, 4] = neg(%x)"), "{diff}");
    let ir = std::fs::read_to_string(dir.join("02-dce.ir")).unwrap();
    assert_eq!(parse(&ir).unwrap(), g);
}

#[test]
fn dumping_after_a_pass_not_in_the_pipeline_is_an_error() {
    let dir = std::env::temp_dir().join(format!("optc-dump-bad-{}", std::process::id()));
    let mut g = parse(TEXT).unwrap();
    let pm = PassManager::new(&registry(), &pipeline(&["cse", "dce"]))
        .unwrap()
        .with_dump(DumpConfig {
            dir: dir.clone(),
            after: vec!["dcee".into()],
        });
    let err = pm.run(&mut g, &mut WeightStore::new()).unwrap_err().to_string();
    assert_eq!(err, "unknown pass 'dcee' (known: cse, dce)");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pipeline_files_are_checked() {
    let p = Pipeline::from_toml(
        "p.toml",
        "[[pass]]\nname = \"constant_fold\"\noptions = { max_elements = 8 }\n\n[[pass]]\nname = \"cse\"\nenabled = false\n",
    )
    .unwrap();
    assert_eq!(p.passes.len(), 2);
    assert!(!p.passes[1].enabled);
    let bad = |text: &str| Pipeline::from_toml("p.toml", text).unwrap_err().to_string();
    assert_eq!(
        bad("[[pass]]\nenabled = true\n"),
        "p.toml: pass #1 needs a string 'name'"
    );
    assert_eq!(
        bad("[[pass]]\nname = \"dce\"\nenable = true\n"),
        "p.toml: pass #1: unknown key 'enable' (expected name, enabled, options)"
    );
    assert_eq!(
        bad("passes = 1\n"),
        "p.toml: unknown key 'passes' (a pipeline is a list of [[pass]] tables)"
    );
    assert!(bad("[[pass]\n").starts_with("p.toml: "));
    let e = PassManager::new(&registry(), &pipeline(&["fuse_everything"]))
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "unknown pass 'fuse_everything' (known: breaking, canonicalize, cast_weights, constant_fold, cse, dce, fuse_add_rmsnorm, fuse_attention, fuse_gelu, fuse_gemm, fuse_layernorm, fuse_rmsnorm, fuse_rope, fuse_swiglu, insert_kv_cache, insert_past_kv, matmul_to_linear, quantize_int8, simplify_outer_products, sink_rope_transposes, wrong)"
    );
    let opt = Pipeline::from_toml(
        "p.toml",
        "[[pass]]\nname = \"constant_fold\"\noptions = { max_elements = \"x\" }\n",
    )
    .unwrap();
    let mut g = parse(TEXT).unwrap();
    let e = PassManager::new(&registry(), &opt)
        .unwrap()
        .run(&mut g, &mut WeightStore::new())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "pass 'constant_fold': option 'max_elements' must be an integer, found \"x\""
    );
}
