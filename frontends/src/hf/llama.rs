//! The Llama family (`LlamaForCausalLM`, `MistralForCausalLM`,
//! `Qwen2ForCausalLM`, `Phi3ForCausalLM`), spelled as
//! `transformers.models.llama.modeling_llama` computes it: RMSNorm with the
//! f32 upcast, rotate_half rotary, repeat_kv for GQA, eager attention with
//! an additive causal mask and an f32 softmax, and a gated MLP. Mistral adds
//! a sliding window to the mask, Qwen2 q/k/v biases, and Phi-3 checkpoints
//! store fused `qkv_proj` and `gate_up_proj` weights that the model slices.

use optc_ir::ops::{Gelu, GeluApprox, Op, Split, UnaryKind};
use optc_ir::{DType, Graph, Shape, Tensor, TensorType, Value};

use super::checkpoint::Checkpoint;
use super::config::{Architecture, ModelConfig};
use super::rope::inv_freq;
use super::trace::{batch, seq, ScaleStyle, Tracer};
use super::HfError;

/// The activation of the gated MLP.
pub(super) fn activation(t: &mut Tracer, c: &ModelConfig, x: Value) -> Result<Value, HfError> {
    match c.hidden_act.as_str() {
        "silu" | "swish" => t.unary(UnaryKind::Silu, x),
        "gelu" => t.op(
            Op::Gelu(Gelu {
                approximate: GeluApprox::None,
            }),
            &[x],
        ),
        "gelu_pytorch_tanh" => t.op(
            Op::Gelu(Gelu {
                approximate: GeluApprox::Tanh,
            }),
            &[x],
        ),
        "relu" => t.unary(UnaryKind::Relu, x),
        other => Err(HfError::Config {
            path: c.source.clone(),
            message: format!(
                "hidden_act '{other}' is not supported (supported: silu, gelu, gelu_pytorch_tanh, relu)"
            ),
        }),
    }
}

/// `rotate_half`-style rotary on `[B, H, S, d]`: `x*cos + rotate_half(x)*sin`
/// on the first `rot` channels (the rest pass through, as Phi-3's partial
/// rotary does).
fn apply_rope(
    t: &mut Tracer,
    x: Value,
    cos: Value,
    sin: Value,
    d: usize,
    rot: usize,
) -> Result<Value, HfError> {
    let (x_rot, x_pass) = if rot < d {
        let r = t.slice_last(x, 0, Some(rot as i64))?;
        let p = t.slice_last(x, rot as i64, None)?;
        (r, Some(p))
    } else {
        (x, None)
    };
    let half = (rot / 2) as i64;
    let x1 = t.slice_last(x_rot, 0, Some(half))?;
    let x2 = t.slice_last(x_rot, half, None)?;
    let neg = t.unary(UnaryKind::Neg, x2)?;
    let rotated = t.concat(&[neg, x1], -1)?;
    let a = t.mul(x_rot, cos)?;
    let b = t.mul(rotated, sin)?;
    let embedded = t.add(a, b)?;
    match x_pass {
        Some(p) => t.concat(&[embedded, p], -1),
        None => Ok(embedded),
    }
}

/// `LlamaRotaryEmbedding.forward`: cos/sin tables `[1, 1, S, rot]` in the
/// model dtype.
fn rotary_tables(t: &mut Tracer, c: &ModelConfig, rot: usize) -> Result<(Value, Value), HfError> {
    t.loc("model.rotary_emb");
    let inv = inv_freq(c, rot);
    let inv = t.op(
        Op::Constant(optc_ir::ops::Constant {
            value: Tensor::from_f32(DType::F32, &[rot / 2, 1], &inv),
        }),
        &[],
    )?;
    let pos = t.positions()?;
    let pos = t.to(pos, DType::F32)?;
    let pos = t.unsqueeze(pos, vec![0])?;
    let freqs = t.matmul(inv, pos)?;
    let freqs = t.transpose(freqs, vec![1, 0])?;
    let emb = t.concat(&[freqs, freqs], -1)?;
    let cos = t.unary(UnaryKind::Cos, emb)?;
    let sin = t.unary(UnaryKind::Sin, emb)?;
    let cos = t.to(cos, t.dtype)?;
    let sin = t.to(sin, t.dtype)?;
    let cos = t.unsqueeze(cos, vec![0, 1])?;
    let sin = t.unsqueeze(sin, vec![0, 1])?;
    Ok((cos, sin))
}

/// Query, key and value projections, `[B, S, heads*d]` each.
fn qkv(t: &mut Tracer, c: &ModelConfig, p: &str, h: Value) -> Result<(Value, Value, Value), HfError> {
    let (nh, nkv, d, hid) = (c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size);
    if c.architecture == Architecture::Phi3 {
        let w = t.weight(
            &format!("{p}.self_attn.qkv_proj.weight"),
            &[(nh + 2 * nkv) * d, hid],
        )?;
        let qkv = t.linear(h, w, None)?;
        let (qe, ke) = ((nh * d) as i64, ((nh + nkv) * d) as i64);
        let q = t.slice_last(qkv, 0, Some(qe))?;
        let k = t.slice_last(qkv, qe, Some(ke))?;
        let v = t.slice_last(qkv, ke, None)?;
        return Ok((q, k, v));
    }
    let mut proj = |name: &str, heads: usize| -> Result<Value, HfError> {
        let w = t.weight(&format!("{p}.self_attn.{name}.weight"), &[heads * d, hid])?;
        let b = if c.attention_bias {
            Some(t.weight(&format!("{p}.self_attn.{name}.bias"), &[heads * d])?)
        } else {
            None
        };
        t.linear(h, w, b)
    };
    let q = proj("q_proj", nh)?;
    let k = proj("k_proj", nkv)?;
    let v = proj("v_proj", nkv)?;
    Ok((q, k, v))
}

fn mlp(t: &mut Tracer, c: &ModelConfig, p: &str, h: Value) -> Result<Value, HfError> {
    let (hid, inter) = (c.hidden_size, c.intermediate_size);
    let bias = |t: &mut Tracer, name: &str, n: usize| -> Result<Option<Value>, HfError> {
        if c.mlp_bias {
            Ok(Some(t.weight(&format!("{p}.mlp.{name}.bias"), &[n])?))
        } else {
            Ok(None)
        }
    };
    let act_up = if c.architecture == Architecture::Phi3 {
        let w = t.weight(&format!("{p}.mlp.gate_up_proj.weight"), &[2 * inter, hid])?;
        let gate_up = t.linear(h, w, None)?;
        let parts = t.ops(
            Op::Split(Split {
                axis: -1,
                sizes: vec![inter.into(), inter.into()],
            }),
            &[gate_up],
        )?;
        let act = activation(t, c, parts[0])?;
        t.mul(parts[1], act)?
    } else {
        let wg = t.weight(&format!("{p}.mlp.gate_proj.weight"), &[inter, hid])?;
        let bg = bias(t, "gate_proj", inter)?;
        let wu = t.weight(&format!("{p}.mlp.up_proj.weight"), &[inter, hid])?;
        let bu = bias(t, "up_proj", inter)?;
        let g = t.linear(h, wg, bg)?;
        let g = activation(t, c, g)?;
        let u = t.linear(h, wu, bu)?;
        t.mul(g, u)?
    };
    let wd = t.weight(&format!("{p}.mlp.down_proj.weight"), &[hid, inter])?;
    let bd = bias(t, "down_proj", hid)?;
    t.linear(act_up, wd, bd)
}

fn layer(
    t: &mut Tracer,
    c: &ModelConfig,
    i: usize,
    h: Value,
    cos: Value,
    sin: Value,
    mask: Value,
) -> Result<Value, HfError> {
    let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let p = format!("model.layers.{i}");
    t.loc(format!("{p}.input_layernorm"));
    let w = t.weight(&format!("{p}.input_layernorm.weight"), &[c.hidden_size])?;
    let x = t.rms_norm(h, w, c.norm_eps)?;
    t.loc(format!("{p}.self_attn"));
    let (q, k, v) = qkv(t, c, &p, x)?;
    let q = t.split_heads(q, nh, d)?;
    let k = t.split_heads(k, nkv, d)?;
    let v = t.split_heads(v, nkv, d)?;
    let rot = c.rotary_dim();
    let q = apply_rope(t, q, cos, sin, d, rot)?;
    let k = apply_rope(t, k, cos, sin, d, rot)?;
    let k = t.repeat_kv(k, nkv, nh / nkv, d)?;
    let v = t.repeat_kv(v, nkv, nh / nkv, d)?;
    let scaling = (d as f64).powf(-0.5);
    let a = t.eager_attention(q, k, v, mask, ScaleStyle::Mul(scaling), true)?;
    let a = t.merge_heads(a, nh, d)?;
    let wo = t.weight(&format!("{p}.self_attn.o_proj.weight"), &[c.hidden_size, nh * d])?;
    let bo = if c.attention_bias && c.architecture != Architecture::Qwen2 {
        Some(t.weight(&format!("{p}.self_attn.o_proj.bias"), &[c.hidden_size])?)
    } else {
        None
    };
    let a = t.linear(a, wo, bo)?;
    let h = t.add(h, a)?;
    t.loc(format!("{p}.post_attention_layernorm"));
    let w = t.weight(&format!("{p}.post_attention_layernorm.weight"), &[c.hidden_size])?;
    let x = t.rms_norm(h, w, c.norm_eps)?;
    t.loc(format!("{p}.mlp"));
    let m = mlp(t, c, &p, x)?;
    t.add(h, m)
}

/// Builds `%ids: i64[B, S]` → `%logits: DT[B, S, vocab]`.
pub fn build(c: &ModelConfig, ck: &Checkpoint) -> Result<Graph, HfError> {
    let dtype = c.dtype.unwrap_or_else(|| ck.majority_dtype());
    let arch = c.architecture.class_name();
    let mut t = Tracer::new(&arch.to_lowercase(), ck, dtype, arch);
    let ids =
        t.b.input("ids", TensorType::new(DType::I64, Shape(vec![batch(), seq()])));
    let rot = c.rotary_dim();
    if rot == 0 || rot > c.head_dim {
        return Err(HfError::Config {
            path: c.source.clone(),
            message: format!("rotary dim {rot} does not fit head_dim {}", c.head_dim),
        });
    }
    t.loc("model.embed_tokens");
    let embed = t.weight("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
    let mut h = t.embedding(embed, ids)?;
    let (cos, sin) = rotary_tables(&mut t, c, rot)?;
    t.loc("model.causal_mask");
    let mask = t.causal_mask(c.sliding_window)?;
    for i in 0..c.num_layers {
        h = layer(&mut t, c, i, h, cos, sin, mask)?;
    }
    t.loc("model.norm");
    let w = t.weight("model.norm.weight", &[c.hidden_size])?;
    let h = t.rms_norm(h, w, c.norm_eps)?;
    t.loc("lm_head");
    let head = if c.tie_word_embeddings && !ck.contains("lm_head.weight") {
        embed
    } else {
        t.weight("lm_head.weight", &[c.vocab_size, c.hidden_size])?
    };
    let logits = t.linear(h, head, None)?;
    t.finish(logits)
}
