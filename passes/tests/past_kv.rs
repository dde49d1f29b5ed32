//! `insert_past_kv` (and `insert_kv_cache` where they share a rule) on
//! small text-IR graphs: what it cannot extend over a past is an error
//! naming the node, and the graph is left as it was.
//! (Its numerics, on every fixture architecture, are in the top-level
//! `tests/tensorrt_target.rs`.)

use optc_ir::{parse, print, WeightStore};
use optc_passes::{PassContext, PassRegistry};

/// Runs the built-in pass `pass` on `text`: the graph after it, or its
/// error and whether the graph was left as it was.
fn run(pass: &str, text: &str) -> Result<optc_ir::Graph, (String, bool)> {
    let mut g = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let before = print(&g);
    let mut store = WeightStore::new();
    let r = PassRegistry::builtin().get(pass).unwrap().run(
        &mut g,
        &mut PassContext {
            weights: &mut store,
            options: &toml::Table::new(),
        },
    );
    match r {
        Ok(_) => Ok(g),
        Err(e) => Err((e.to_string(), print(&g) == before)),
    }
}

/// `insert_past_kv`'s error on `text`, and whether the graph is unchanged.
fn failure(text: &str) -> (String, bool) {
    run("insert_past_kv", text)
        .map(|_| ())
        .expect_err("the pass refuses this graph")
}

/// A causal attention of `%3` to itself, for [`graph`].
const CAUSAL: &str =
    "%4: f32[B, 2, S, 8] = scaled_dot_product_attention(%3, %3, %3) {causal = true} loc(\"layer.0.attn\")";

/// Token ids to heads `[B, 2, S, 8]`, attended to themselves by `attn`
/// (the attention line, with `%3` as q, k and v).
fn graph(attn: &str, extra_inputs: &str) -> String {
    format!(
        "graph g(%ids: i64[B, S]{extra_inputs}) -> (%y: f32[B, 2, S, 8]) {{
  weight @emb: f32[32, 16] = \"emb\"
  %0: f32[B, S, 16] = embedding(@emb, %ids) loc(\"embed\")
  %1: f32[B, S, 2, 8] = reshape(%0) {{shape = [B, S, 2, 8]}} loc(\"layer.0\")
  %3: f32[B, 2, S, 8] = transpose(%1) {{perm = [0, 2, 1, 3]}} loc(\"layer.0\")
  {attn}
  return %4
}}
"
    )
}

#[test]
fn attention_that_is_not_causal_is_refused_by_name() {
    let text = graph(
        "%4: f32[B, 2, S, 8] = scaled_dot_product_attention(%3, %3, %3) {causal = false} loc(\"layer.0.attn\")",
        "",
    );
    let (e, unchanged) = failure(&text);
    assert!(
        e.contains("layer.0.attn") && e.contains("attention is not causal"),
        "{e}"
    );
    assert!(unchanged);
}

#[test]
fn a_mask_that_is_not_a_sliding_window_is_refused_by_name() {
    // An upper triangle one diagonal further out than causal's.
    let text = graph(
        "%m0: f32[S, S] = full() {shape = [S, S], value = -inf, dtype = f32}
  %m: f32[S, S] = triu(%m0) {k = 2}
  %4: f32[B, 2, S, 8] = scaled_dot_product_attention(%3, %3, %3, %m) {causal = false} loc(\"layer.0.attn\")",
        "",
    );
    let (e, unchanged) = failure(&text);
    assert!(
        e.contains("layer.0.attn") && e.contains("neither causal nor a sliding window"),
        "{e}"
    );
    assert!(unchanged);
}

#[test]
fn a_graph_already_using_the_past_symbol_is_refused() {
    let text = graph(CAUSAL, ", %extra: f32[P]");
    let (e, unchanged) = failure(&text);
    assert!(e.contains("pass 'insert_past_kv': expected one input"), "{e}");
    assert!(unchanged);
    let text = graph(CAUSAL, "")
        .replace("[B, S]", "[P, S]")
        .replace("[B, ", "[P, ");
    let (e, unchanged) = failure(&text);
    assert!(e.contains("already uses the symbol P"), "{e}");
    assert!(unchanged);
}

/// torch.export writes a batch of one as the number 1: the pass takes it,
/// and the pasts have that batch.
#[test]
fn a_fixed_batch_of_one_is_kept() {
    let text = graph(CAUSAL, "").replace("[B, ", "[1, ");
    let g = run("insert_past_kv", &text).unwrap_or_else(|(e, _)| panic!("{e}"));
    optc_ir::verify(&g).unwrap();
    let printed = print(&g);
    assert!(
        printed.contains("%past_key_values.0.key: f32[1, 2, P, 8]")
            && printed.contains("%present.0.key: f32[1, 2, P+S, 8]"),
        "{printed}"
    );
}

/// The step graph flattens every token into one batch row, so a fixed
/// batch other than one is refused by `insert_kv_cache`.
#[test]
fn the_step_graph_refuses_a_fixed_batch_of_two() {
    let text = graph(CAUSAL, "").replace("[B, ", "[2, ");
    let (e, unchanged) = run("insert_kv_cache", &text)
        .map(|_| ())
        .expect_err("a batch of two");
    assert!(e.contains("fixed batch of 2") && unchanged, "{e}");
}
