//! `GPT2LMHeadModel`, spelled as `transformers.models.gpt2.modeling_gpt2`
//! computes it: learned positions added to token embeddings, LayerNorm,
//! Conv1D projections (`addmm` with `[in, out]` weights), attention scores
//! divided by `sqrt(head_dim)` with an additive causal mask, the
//! `gelu_new` tanh formula written out, and an LM head tied to the token
//! embeddings.

use optc_ir::ops::{BinaryKind, LayerNorm, Op, Split, UnaryKind};
use optc_ir::{DType, Graph, Shape, TensorType, Value};

use super::checkpoint::Checkpoint;
use super::config::ModelConfig;
use super::trace::{batch, seq, ScaleStyle, Tracer};
use super::HfError;

/// `Conv1D.forward`: `addmm(bias, x.view(-1, nx), weight).view(B, S, nf)`.
fn conv1d(t: &mut Tracer, key: &str, x: Value, nx: usize, nf: usize) -> Result<Value, HfError> {
    let w = t.weight(&format!("{key}.weight"), &[nx, nf])?;
    let b = t.weight(&format!("{key}.bias"), &[nf])?;
    let flat = t.reshape(x, vec![&batch() * &seq(), nx.into()])?;
    let mm = t.matmul(flat, w)?;
    let y = t.add(b, mm)?;
    t.reshape(y, vec![batch(), seq(), nf.into()])
}

/// `nn.LayerNorm` (one `layer_norm` op in a trace).
fn layer_norm(t: &mut Tracer, key: &str, x: Value, n: usize, eps: f64) -> Result<Value, HfError> {
    let w = t.weight(&format!("{key}.weight"), &[n])?;
    let b = t.weight(&format!("{key}.bias"), &[n])?;
    t.op(Op::LayerNorm(LayerNorm { axis: -1, eps }), &[x, w, b])
}

/// `NewGELUActivation`: `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
fn gelu_new(t: &mut Tracer, x: Value) -> Result<Value, HfError> {
    let dt = t.dtype;
    let three = t.scalar(3.0, dt)?;
    let cube = t.binary(BinaryKind::Pow, x, three)?;
    let c = t.scalar(0.044715, dt)?;
    let cube = t.mul(cube, c)?;
    let inner = t.add(x, cube)?;
    let k = t.scalar((2.0 / std::f64::consts::PI).sqrt(), dt)?;
    let inner = t.mul(inner, k)?;
    let th = t.unary(UnaryKind::Tanh, inner)?;
    let one = t.scalar(1.0, dt)?;
    let th = t.add(th, one)?;
    let half = t.scalar(0.5, dt)?;
    let hx = t.mul(x, half)?;
    t.mul(hx, th)
}

fn activation(t: &mut Tracer, c: &ModelConfig, x: Value) -> Result<Value, HfError> {
    if c.hidden_act == "gelu_new" {
        gelu_new(t, x)
    } else {
        super::llama::activation(t, c, x)
    }
}

/// Builds `%ids: i64[B, S]` → `%logits: DT[B, S, vocab]`.
pub fn build(c: &ModelConfig, ck: &Checkpoint) -> Result<Graph, HfError> {
    let dtype = c.dtype.unwrap_or_else(|| ck.majority_dtype());
    let arch = "GPT2LMHeadModel";
    let mut t = Tracer::new("gpt2", ck, dtype, arch);
    // Checkpoints saved from GPT2LMHeadModel prefix the body with
    // "transformer."; the original OpenAI conversions do not.
    let p = if ck.contains("transformer.wte.weight") {
        "transformer."
    } else {
        ""
    };
    let (d, nh) = (c.hidden_size, c.num_heads);
    let hd = c.head_dim;
    let ids =
        t.b.input("ids", TensorType::new(DType::I64, Shape(vec![batch(), seq()])));
    t.loc("transformer.wte");
    let wte = t.weight(&format!("{p}wte.weight"), &[c.vocab_size, d])?;
    let tok = t.embedding(wte, ids)?;
    t.loc("transformer.wpe");
    let wpe = t.weight(&format!("{p}wpe.weight"), &[c.max_position_embeddings, d])?;
    let pos = t.positions()?;
    let pos = t.embedding(wpe, pos)?;
    let mut h = t.add(tok, pos)?;
    t.loc("transformer.causal_mask");
    let mask = t.causal_mask(None)?;
    for i in 0..c.num_layers {
        let l = format!("{p}h.{i}");
        t.loc(format!("transformer.h.{i}.attn"));
        let x = layer_norm(&mut t, &format!("{l}.ln_1"), h, d, c.norm_eps)?;
        let qkv = conv1d(&mut t, &format!("{l}.attn.c_attn"), x, d, 3 * d)?;
        let parts = t.ops(
            Op::Split(Split {
                axis: 2,
                sizes: vec![d.into(), d.into(), d.into()],
            }),
            &[qkv],
        )?;
        let q = t.split_heads(parts[0], nh, hd)?;
        let k = t.split_heads(parts[1], nh, hd)?;
        let v = t.split_heads(parts[2], nh, hd)?;
        let a = t.eager_attention(q, k, v, mask, ScaleStyle::Div((hd as f64).sqrt()), false)?;
        let a = t.merge_heads(a, nh, hd)?;
        let a = conv1d(&mut t, &format!("{l}.attn.c_proj"), a, d, d)?;
        h = t.add(a, h)?;
        t.loc(format!("transformer.h.{i}.mlp"));
        let x = layer_norm(&mut t, &format!("{l}.ln_2"), h, d, c.norm_eps)?;
        let f = conv1d(&mut t, &format!("{l}.mlp.c_fc"), x, d, c.intermediate_size)?;
        let f = activation(&mut t, c, f)?;
        let f = conv1d(&mut t, &format!("{l}.mlp.c_proj"), f, c.intermediate_size, d)?;
        h = t.add(h, f)?;
    }
    t.loc("transformer.ln_f");
    let h = layer_norm(&mut t, &format!("{p}ln_f"), h, d, c.norm_eps)?;
    t.loc("lm_head");
    let head = if ck.contains("lm_head.weight") && !c.tie_word_embeddings {
        t.weight("lm_head.weight", &[c.vocab_size, d])?
    } else {
        wte
    };
    let logits = t.linear(h, head, None)?;
    t.finish(logits)
}
