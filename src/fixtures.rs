//! Small random models that the repo makes instead of downloading: the README
//! demo, tests and benches use them.
//!
//! [`tiny_decoder`] builds a Llama-shaped decoder exactly as a trace of the
//! Hugging Face code would give it (RMSNorm as pow/mean/add/rsqrt/mul,
//! rotary as rotate_half with cos/sin, GQA through repeat_kv, attention as
//! matmul → scale → causal mask → softmax → matmul, SwiGLU as silu·up): the
//! plain graph that later passes must recognise and fuse.

use optc_ir::ops::{
    Arange, BinaryKind, Concat, Constant, Expand, Full, Op, Reduce, ReduceKind, Scalar, Slice, Triangular,
    UnaryKind, Unsqueeze,
};
use optc_ir::{BuildError, DType, Dim, GraphBuilder, Shape, Tensor, TensorType, Value, WeightStore};

/// Sizes of the tiny decoder.
#[derive(Clone, Debug)]
pub struct TinyDecoderConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub rope_theta: f64,
    pub rms_eps: f64,
    pub seed: u64,
}

impl Default for TinyDecoderConfig {
    fn default() -> Self {
        TinyDecoderConfig {
            vocab: 64,
            hidden: 32,
            heads: 4,
            kv_heads: 2,
            intermediate: 64,
            layers: 2,
            rope_theta: 10000.0,
            rms_eps: 1e-5,
            seed: 0x5eed,
        }
    }
}

impl TinyDecoderConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// SplitMix64: a tiny, well-known generator, so fixtures are reproducible
/// without a dependency.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn next_f32(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A tensor of uniform values in `[-scale, scale)`.
pub fn random_tensor(dtype: DType, shape: &[usize], scale: f32, rng: &mut SplitMix64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next_f32() * scale).collect();
    Tensor::from_f32(dtype, shape, &v)
}

/// Random token ids in `0..vocab`.
pub fn random_ids(shape: &[usize], vocab: usize, rng: &mut SplitMix64) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<i64> = (0..n).map(|_| (rng.next_u64() % vocab as u64) as i64).collect();
    Tensor::from_i64(DType::I64, shape, &v)
}

struct Ctx<'a> {
    b: GraphBuilder,
    store: WeightStore,
    rng: SplitMix64,
    cfg: &'a TinyDecoderConfig,
}

fn f32_ty(dims: &[usize]) -> TensorType {
    TensorType::new(DType::F32, Shape(dims.iter().map(|&d| Dim::from(d)).collect()))
}

fn dims(v: &[Dim]) -> Vec<Dim> {
    v.to_vec()
}

impl Ctx<'_> {
    /// Declares a weight and stores random values for it.
    fn weight(&mut self, name: &str, key: &str, shape: &[usize]) -> Value {
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        let t = random_tensor(DType::F32, shape, 1.0 / fan_in.sqrt(), &mut self.rng);
        self.store.insert(key, t).expect("fixture keys are unique");
        self.b.weight(name, key, f32_ty(shape))
    }

    /// A weight that starts at 1 plus noise (norm scales).
    fn norm_weight(&mut self, name: &str, key: &str) -> Value {
        let h = self.cfg.hidden;
        let v: Vec<f32> = (0..h).map(|_| 1.0 + 0.1 * self.rng.next_f32()).collect();
        self.store
            .insert(key, Tensor::from_f32(DType::F32, &[h], &v))
            .expect("unique");
        self.b.weight(name, key, f32_ty(&[h]))
    }

    fn scalar(&mut self, v: f32) -> Result<Value, BuildError> {
        self.b.op1(
            Op::Constant(Constant {
                value: Tensor::scalar_f32(v),
            }),
            &[],
        )
    }

    /// `x * rsqrt(mean(x^2) + eps) * w`, spelled as transformers computes it.
    fn rms_norm(&mut self, x: Value, w: Value) -> Result<Value, BuildError> {
        let two = self.scalar(2.0)?;
        let sq = self.b.binary(BinaryKind::Pow, x, two)?;
        let mean = self.b.op1(
            Op::Reduce(Reduce {
                kind: ReduceKind::Mean,
                axes: vec![-1],
                keepdims: true,
            }),
            &[sq],
        )?;
        let eps = self.scalar(self.cfg.rms_eps as f32)?;
        let var = self.b.add(mean, eps)?;
        let inv = self.b.unary(UnaryKind::Rsqrt, var)?;
        let normed = self.b.mul(x, inv)?;
        self.b.mul(w, normed)
    }

    fn slice(&mut self, x: Value, start: i64, end: Option<i64>) -> Result<Value, BuildError> {
        self.b.op1(
            Op::Slice(Slice {
                axis: -1,
                start,
                end,
                step: 1,
            }),
            &[x],
        )
    }

    /// `x * cos + rotate_half(x) * sin`.
    fn rope(&mut self, x: Value, cos: Value, sin: Value) -> Result<Value, BuildError> {
        let half = (self.cfg.head_dim() / 2) as i64;
        let x1 = self.slice(x, 0, Some(half))?;
        let x2 = self.slice(x, half, None)?;
        let neg = self.b.unary(UnaryKind::Neg, x2)?;
        let rot = self.b.op1(Op::Concat(Concat { axis: -1 }), &[neg, x1])?;
        let a = self.b.mul(x, cos)?;
        let c = self.b.mul(rot, sin)?;
        self.b.add(a, c)
    }

    /// `[B, S, n*hd]` → `[B, n, S, hd]`.
    fn heads(&mut self, x: Value, n: usize) -> Result<Value, BuildError> {
        let (bd, sd) = (Dim::sym("B"), Dim::sym("S"));
        let hd = self.cfg.head_dim();
        let r = self.b.reshape(x, dims(&[bd, sd, n.into(), hd.into()]))?;
        self.b.transpose(r, vec![0, 2, 1, 3])
    }

    /// transformers' `repeat_kv`: `[B, kv, S, hd]` → `[B, kv*rep, S, hd]`.
    fn repeat_kv(&mut self, x: Value) -> Result<Value, BuildError> {
        let c = self.cfg;
        let rep = c.heads / c.kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (bd, sd) = (Dim::sym("B"), Dim::sym("S"));
        let u = self.b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![2] }), &[x])?;
        let e = self.b.op1(
            Op::Expand(Expand {
                shape: dims(&[
                    bd.clone(),
                    c.kv_heads.into(),
                    rep.into(),
                    sd.clone(),
                    c.head_dim().into(),
                ]),
            }),
            &[u],
        )?;
        self.b
            .reshape(e, dims(&[bd, c.heads.into(), sd, c.head_dim().into()]))
    }

    fn layer(
        &mut self,
        i: usize,
        h: Value,
        cos: Value,
        sin: Value,
        mask: Value,
    ) -> Result<Value, BuildError> {
        let c = self.cfg;
        let (hd, nh, nkv) = (c.head_dim(), c.heads, c.kv_heads);
        let p = format!("model.layers.{i}");
        self.b.set_loc(Some(format!("{p}.input_layernorm")));
        let w = self.norm_weight(&format!("l{i}.attn_norm"), &format!("{p}.input_layernorm.weight"));
        let x = self.rms_norm(h, w)?;
        self.b.set_loc(Some(format!("{p}.self_attn")));
        let wq = self.weight(
            &format!("l{i}.q"),
            &format!("{p}.self_attn.q_proj.weight"),
            &[nh * hd, c.hidden],
        );
        let wk = self.weight(
            &format!("l{i}.k"),
            &format!("{p}.self_attn.k_proj.weight"),
            &[nkv * hd, c.hidden],
        );
        let wv = self.weight(
            &format!("l{i}.v"),
            &format!("{p}.self_attn.v_proj.weight"),
            &[nkv * hd, c.hidden],
        );
        let wo = self.weight(
            &format!("l{i}.o"),
            &format!("{p}.self_attn.o_proj.weight"),
            &[c.hidden, nh * hd],
        );
        let q = self.b.linear(x, wq, None)?;
        let k = self.b.linear(x, wk, None)?;
        let v = self.b.linear(x, wv, None)?;
        let q = self.heads(q, nh)?;
        let k = self.heads(k, nkv)?;
        let v = self.heads(v, nkv)?;
        let q = self.rope(q, cos, sin)?;
        let k = self.rope(k, cos, sin)?;
        let k = self.repeat_kv(k)?;
        let v = self.repeat_kv(v)?;
        let kt = self.b.transpose(k, vec![0, 1, 3, 2])?;
        let scores = self.b.matmul(q, kt)?;
        let scale = self.scalar(1.0 / (hd as f32).sqrt())?;
        let scores = self.b.mul(scores, scale)?;
        let scores = self.b.add(scores, mask)?;
        let probs = self.b.softmax(scores, -1)?;
        let ctx = self.b.matmul(probs, v)?;
        let ctx = self.b.transpose(ctx, vec![0, 2, 1, 3])?;
        let ctx = self
            .b
            .reshape(ctx, dims(&[Dim::sym("B"), Dim::sym("S"), (nh * hd).into()]))?;
        let o = self.b.linear(ctx, wo, None)?;
        let h = self.b.add(h, o)?;
        self.b.set_loc(Some(format!("{p}.post_attention_layernorm")));
        let w = self.norm_weight(
            &format!("l{i}.mlp_norm"),
            &format!("{p}.post_attention_layernorm.weight"),
        );
        let x = self.rms_norm(h, w)?;
        self.b.set_loc(Some(format!("{p}.mlp")));
        let wg = self.weight(
            &format!("l{i}.gate"),
            &format!("{p}.mlp.gate_proj.weight"),
            &[c.intermediate, c.hidden],
        );
        let wu = self.weight(
            &format!("l{i}.up"),
            &format!("{p}.mlp.up_proj.weight"),
            &[c.intermediate, c.hidden],
        );
        let wd = self.weight(
            &format!("l{i}.down"),
            &format!("{p}.mlp.down_proj.weight"),
            &[c.hidden, c.intermediate],
        );
        let g = self.b.linear(x, wg, None)?;
        let u = self.b.linear(x, wu, None)?;
        let g = self.b.unary(UnaryKind::Silu, g)?;
        let a = self.b.mul(g, u)?;
        let d = self.b.linear(a, wd, None)?;
        self.b.add(h, d)
    }

    /// cos/sin tables `[1, 1, S, hd]` from positions `0..S`, and the additive
    /// causal mask `[S, S]` (`-inf` above the diagonal).
    fn tables(&mut self) -> Result<(Value, Value, Value), BuildError> {
        let c = self.cfg;
        let hd = c.head_dim();
        let sd = Dim::sym("S");
        let pos = self.b.op1(
            Op::Arange(Arange {
                start: Dim::constant(0),
                end: sd.clone(),
                step: 1,
                dtype: DType::I64,
            }),
            &[],
        )?;
        let pos = self.b.cast(pos, DType::F32)?;
        let pos = self.b.op1(Op::Unsqueeze(Unsqueeze { axes: vec![-1] }), &[pos])?;
        let inv: Vec<f32> = (0..hd / 2)
            .map(|i| (1.0 / c.rope_theta.powf(2.0 * i as f64 / hd as f64)) as f32)
            .collect();
        let inv = self.b.op1(
            Op::Constant(Constant {
                value: Tensor::from_f32(DType::F32, &[1, hd / 2], &inv),
            }),
            &[],
        )?;
        let freqs = self.b.mul(pos, inv)?;
        let emb = self.b.op1(Op::Concat(Concat { axis: -1 }), &[freqs, freqs])?;
        let emb = self
            .b
            .op1(Op::Unsqueeze(Unsqueeze { axes: vec![0, 1] }), &[emb])?;
        let cos = self.b.unary(UnaryKind::Cos, emb)?;
        let sin = self.b.unary(UnaryKind::Sin, emb)?;
        self.b.set_loc(Some("model.causal_mask".into()));
        let full = self.b.op1(
            Op::Full(Full {
                shape: vec![sd.clone(), sd],
                value: Scalar::Float(f64::NEG_INFINITY),
                dtype: DType::F32,
            }),
            &[],
        )?;
        let mask = self
            .b
            .op1(Op::Triangular(Triangular { upper: true, k: 1 }), &[full])?;
        Ok((cos, sin, mask))
    }
}

/// Builds the tiny decoder graph (`%ids: i64[B, S]` → `%logits: f32[B, S,
/// vocab]`) and a store holding its random f32 weights.
pub fn tiny_decoder(cfg: &TinyDecoderConfig) -> Result<(optc_ir::Graph, WeightStore), BuildError> {
    let mut cx = Ctx {
        b: GraphBuilder::new("tiny_decoder"),
        store: WeightStore::new(),
        rng: SplitMix64(cfg.seed),
        cfg,
    };
    let ids = cx.b.input(
        "ids",
        TensorType::new(DType::I64, Shape(vec![Dim::sym("B"), Dim::sym("S")])),
    );
    cx.b.set_loc(Some("model.rotary_emb".into()));
    let (cos, sin, mask) = cx.tables()?;
    cx.b.set_loc(Some("model.embed_tokens".into()));
    let embed = cx.weight("embed", "model.embed_tokens.weight", &[cfg.vocab, cfg.hidden]);
    let mut h = cx.b.op1(Op::Embedding(optc_ir::ops::Embedding), &[embed, ids])?;
    for i in 0..cfg.layers {
        h = cx.layer(i, h, cos, sin, mask)?;
    }
    cx.b.set_loc(Some("model.norm".into()));
    let w = cx.norm_weight("final_norm", "model.norm.weight");
    let h = cx.rms_norm(h, w)?;
    cx.b.set_loc(Some("lm_head".into()));
    let head = cx.weight("lm_head", "lm_head.weight", &[cfg.vocab, cfg.hidden]);
    let logits = cx.b.linear(h, head, None)?;
    cx.b.output("logits", logits);
    let g = cx.b.finish().map_err(|e| BuildError {
        node: "tiny_decoder".into(),
        message: e.to_string(),
    })?;
    Ok((g, cx.store))
}

/// Sizes of a Llama-family checkpoint written by [`write_sparse_llama`].
#[derive(Clone, Debug)]
pub struct LlamaShape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl LlamaShape {
    /// The shape of Llama-3.2-1B (1.24 B parameters, tied embeddings).
    pub fn llama_3_2_1b() -> LlamaShape {
        LlamaShape {
            vocab: 128_256,
            hidden: 2048,
            intermediate: 8192,
            layers: 16,
            heads: 32,
            kv_heads: 8,
            head_dim: 64,
        }
    }
}

/// Writes `config.json` and a bf16 `model.safetensors` of the given shape
/// into `dir`, with a real header and a sparse data section (the file is
/// extended, not written: all weights read as zero and take no disk). For
/// measuring and testing that loading never reads weight bytes.
pub fn write_sparse_llama(dir: &std::path::Path, s: &LlamaShape) -> std::io::Result<u64> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let config = format!(
        r#"{{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": {}, "hidden_size": {},
  "intermediate_size": {}, "num_hidden_layers": {}, "num_attention_heads": {}, "num_key_value_heads": {},
  "head_dim": {}, "rms_norm_eps": 1e-05, "max_position_embeddings": 131072, "tie_word_embeddings": true,
  "rope_theta": 500000.0, "rope_scaling": {{"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, "torch_dtype": "bfloat16",
  "bos_token_id": 128000, "eos_token_id": 128001}}"#,
        s.vocab, s.hidden, s.intermediate, s.layers, s.heads, s.kv_heads, s.head_dim
    );
    std::fs::write(dir.join("config.json"), config)?;
    let (h, q, kv) = (s.hidden, s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![s.vocab, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    for i in 0..s.layers {
        let p = format!("model.layers.{i}");
        tensors.extend([
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![s.intermediate, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![s.intermediate, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, s.intermediate]),
        ]);
    }
    let mut header = String::from("{");
    let mut offset = 0u64;
    for (k, (name, shape)) in tensors.iter().enumerate() {
        let bytes = 2 * shape.iter().product::<usize>() as u64;
        if k > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            r#""{name}":{{"dtype":"BF16","shape":{shape:?},"data_offsets":[{offset},{}]}}"#,
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut f = std::fs::File::create(dir.join("model.safetensors"))?;
    f.write_all(&(header.len() as u64).to_le_bytes())?;
    f.write_all(header.as_bytes())?;
    f.set_len(8 + header.len() as u64 + offset)?;
    Ok(offset)
}
