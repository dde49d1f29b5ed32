#!/usr/bin/env python3
"""Tiny random Hugging Face models + transformers reference outputs.

Writes tests/fixtures/hf/:
  <name>/            a checkpoint folder written by save_pretrained
                     (config.json, generation_config.json, *.safetensors,
                     tokenizer.json, tokenizer_config.json)
  <name>/reference.safetensors
                     ids    i64 [T]      prompt ids (bos + encode(prompt))
                     logits f32 [T, V]   logits at every position (batch 1)
                     greedy i64 [32]     32 greedy new tokens
  tokenizer_cases.json
  README.md          (hand-written, not generated)

Fixtures: llama (transformers-4 config spelling), llama_bf16, mistral
(sharded, sliding window 4), qwen2 (no `architectures` key), qwen2_f16,
phi3, gpt2. See tests/fixtures/hf/README.md.

References are computed by transformers itself (eager attention) on the
model *reloaded from the written folder*, so they check exactly what a loader
sees on disk.

Deterministic: fixed seeds, single-threaded torch.

Usage (from the repo root): python3 scripts/make_fixtures.py [OUT_DIR]
"""

import copy
import json
import os
import shutil
import sys

import torch

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join("tests", "fixtures", "hf")

VOCAB_SIZE = 320  # config vocab (>= tokenizer size)
TOKENIZER_VOCAB = 300  # BPE trainer target, includes the special tokens
BOS, EOS = "<|bos|>", "<|eos|>"
NEW_TOKENS = 32

PROMPT = "The robot and the dog."

# ----------------------------------------------------------------------------
# Tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. The dog did not care; it was "
    "asleep in the warm afternoon sun, dreaming of the river and the trees.",
    "Once upon a time there was a little robot who wanted to learn how to read. "
    "Every morning the robot walked to the library, opened a book, and tried to "
    "understand the strange marks on the page. The words were hard at first, but "
    "the robot did not give up.",
    "Compilers translate programs written in one language into another language. "
    "A good compiler reads the source, checks it for errors, and then produces "
    "fast code for the machine. The compiler in this project turns models into "
    "kernels that run on the hardware.",
    "In the evening the town was quiet. People walked along the river, talking "
    "about the weather, the market, and the news of the day. Children played in "
    "the park until their parents called them home for dinner.",
    "It is a truth universally acknowledged, that a single man in possession of a "
    "good fortune, must be in want of a wife. However little known the feelings "
    "or views of such a man may be on his first entering a neighbourhood, this "
    "truth is so well fixed in the minds of the surrounding families.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 2024 3.14159 -7 1e-5.\n"
    "Code: fn main() { println!(\"hello, world\"); }\n\tdef f(x):\n\t\treturn x * 2\n",
    "Unicode: café, naïve, résumé, Zürich, São Paulo, Ångström, façade, jalapeño. "
    "日本語のテキスト。中文文本。한국어 텍스트. Ελληνικά. Русский текст. "
    "Emoji: 😀 😂 👍 🎉 🚀 ❤️ 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷.",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    # Default post-processing: prepend <|bos|> (single), and for pairs
    # "<|bos|> A <|bos|> B". The ByteLevel offset trimming is irrelevant to ids.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS)
    assert len(hf) <= VOCAB_SIZE, len(hf)
    return hf, bos_id, eos_id


TOKENIZER_TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces",
    "trailing spaces   ",
    "multiple     spaces   between words",
    "line one\nline two\n\nline four\r\nend",
    "tabs\tand\t\tmore\ttabs",
    "café naïve résumé Zürich Ångström",
    "日本語のテキスト 中文文本 한국어",
    "emoji 😀👍🚀 and more 🎉",
    "ZWJ: 👩‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️",
    "It's 3.14159, isn't it? (yes!) <|bos|> not special? <|eos|>",
    " ",
    "",
]


def tokenizer_cases(tok):
    cases = []
    for text in TOKENIZER_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        with_special = tok(text)["input_ids"]
        assert tok.decode(ids) == text or BOS in text, (text, tok.decode(ids))
        cases.append({"text": text, "ids": ids, "ids_with_special": with_special})
    return cases


# ----------------------------------------------------------------------------
# Models


def common_llama_like(bos_id, eos_id):
    return dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        hidden_act="silu",
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=None,
        attn_implementation="eager",
    )


def is_norm_weight(name, p):
    if p.ndim != 1 or not name.endswith(".weight"):
        return False
    return "norm" in name or ".ln_" in name or name.startswith("ln_")


FINAL_NORM_GAIN = 3.0  # final norm weight (and bias) *= this: logits std ~4


def is_final_norm(name):
    return name in ("model.norm.weight", "transformer.ln_f.weight", "transformer.ln_f.bias")


@torch.no_grad()
def randomize(model, seed, scale):
    """Default init happened at construction; make activations non-trivial:
    matrices *= scale, norm weights ~ 1 + 0.1 N(0,1), biases ~ 0.1 N(0,1),
    final norm additionally *= FINAL_NORM_GAIN (so logits are spread out and
    greedy argmaxes have comfortable margins)."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, p in model.named_parameters():  # tied params appear once
        if is_norm_weight(name, p):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.mul_(scale)
        if is_final_norm(name):
            p.mul_(FINAL_NORM_GAIN)


def make_model(cls, config, seed, scale):
    torch.manual_seed(seed)
    model = cls(config)
    randomize(model, seed, scale)
    return model.eval()


def cast_like_loader(model, dtype):
    """A copy of `model` in `dtype`, as from_pretrained(dtype=...) would build
    it: parameters cast, but the rotary inv_freq buffers stay float32 (a plain
    .to(bf16) would round them too)."""
    m = copy.deepcopy(model).to(dtype)
    src = dict(model.named_buffers())
    for name, buf in m.named_buffers():
        if "inv_freq" in name:
            buf.data = src[name].detach().clone()
    return m


@torch.no_grad()
def greedy_full_forward(model, ids, eos_id):
    """Greedy decoding by full recompute (no cache), eos masked like
    min_new_tokens does. Returns (tokens, logits of prompt + greedy rows)."""
    seq = ids.clone()
    for _ in range(NEW_TOKENS):
        lg = model(seq[None]).logits[0, -1].to(torch.float32)
        lg[eos_id] = -float("inf")
        seq = torch.cat([seq, lg.argmax().view(1)])
    rows = model(seq[None]).logits[0, :-1].to(torch.float32)
    rows[ids.numel() - 1 :, eos_id] = -float("inf")
    return seq[ids.numel() :], rows


def top2_margin(logits):
    """Smallest top-1 minus top-2 gap over the rows (how robust an argmax is)."""
    t = logits.to(torch.float32).topk(2, dim=-1).values
    return float((t[..., 0] - t[..., 1]).min())


# Minimal top-1/top-2 logit gap required over all prompt rows and all greedy
# steps, per compute dtype (a few ulps of the logits at |logit| ~ 8-16), so
# that an independent implementation reproduces every argmax.
MIN_MARGIN = {torch.float32: 0.05, torch.bfloat16: 0.125, torch.float16: 0.04}


def make_model_searched(cls, config, base_seed, scale, ids, eos_id, dtypes=(torch.float32,), tries=500):
    """make_model with the first seed (base_seed*1000 + k) whose argmaxes all
    have margins >= MIN_MARGIN in every dtype of `dtypes`. Deterministic."""
    for k in range(tries):
        seed = base_seed * 1000 + k
        model = make_model(cls, config, seed, scale)
        ok = True
        for dt in dtypes:
            # deepcopy: a .to(half).to(float) round trip would round the
            # weights and the (non-persistent) inv_freq buffers in place.
            m = model if dt == torch.float32 else cast_like_loader(model, dt)
            _, rows = greedy_full_forward(m, ids, eos_id)
            if top2_margin(rows) < MIN_MARGIN[dt]:
                ok = False
                break
        if ok:
            print(f"{cls.__name__}: seed {seed} ({k + 1} tries)")
            return model, seed
    raise RuntimeError(f"no seed found for {cls.__name__}")


# ----------------------------------------------------------------------------
# Saving and references


def save(model, tok, path, dtype=torch.float32, **kw):
    if os.path.isdir(path):
        shutil.rmtree(path)
    model = copy.deepcopy(model).to(dtype)  # never round the f32 original
    model.save_pretrained(path, safe_serialization=True, **kw)
    tok.save_pretrained(path)


def edit_config(path, fn):
    cfg_path = os.path.join(path, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg = fn(cfg)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def load(path, dtype):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=dtype, attn_implementation="eager", output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, (path, bad)
    return model.eval()


@torch.no_grad()
def compute_reference(model, ids):
    x = ids[None]
    logits = model(x).logits[0].to(torch.float32)
    out = model.generate(
        x,
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
    )
    greedy = out[0, ids.numel():].to(torch.int64)
    assert greedy.numel() == NEW_TOKENS
    return logits, greedy


@torch.no_grad()
def check_greedy_no_cache(model, ids, greedy, eos_id):
    """Recompute the greedy continuation without the KV cache (full forward
    each step, eos masked as min_new_tokens does). Returns #mismatches."""
    seq = ids.clone()
    bad = 0
    for i in range(NEW_TOKENS):
        lg = model(seq[None]).logits[0, -1].to(torch.float32)
        lg[eos_id] = -float("inf")
        nxt = int(lg.argmax())
        bad += nxt != int(greedy[i])
        seq = torch.cat([seq, greedy[i : i + 1]])  # follow the reference path
    return bad


def write_reference(path, ids, logits, greedy):
    save_file(
        {
            "ids": ids.to(torch.int64).contiguous(),
            "logits": logits.to(torch.float32).contiguous(),
            "greedy": greedy.to(torch.int64).contiguous(),
        },
        os.path.join(path, "reference.safetensors"),
    )


@torch.no_grad()
def greedy_path_logits(model, ids, greedy):
    seq = torch.cat([ids, greedy])
    return model(seq[None]).logits[0, ids.numel() - 1 : -1].to(torch.float32)


def finish(name, path, dtype, ids, eos_id, summary, mem_model=None):
    model = load(path, dtype)
    logits, greedy = compute_reference(model, ids)
    write_reference(path, ids, logits, greedy)
    nc = check_greedy_no_cache(model, ids, greedy, eos_id)
    gl = greedy_path_logits(model, ids, greedy)
    eos_would_win = int((gl.argmax(-1) == eos_id).sum())
    gl[:, eos_id] = -float("inf")
    info = {
        "dtype": str(dtype).replace("torch.", ""),
        "logits_std": round(float(logits.std()), 3),
        "logits_absmax": round(float(logits.abs().max()), 3),
        "greedy": greedy.tolist(),
        "greedy_nocache_mismatches": nc,
        "prompt_top2_margin_min": round(top2_margin(logits), 5),
        "greedy_top2_margin_min": round(top2_margin(gl), 5),
        "greedy_steps_where_eos_was_argmax": eos_would_win,
    }
    if mem_model is not None:  # what was saved == what was built
        with torch.no_grad():
            mem = cast_like_loader(mem_model, dtype)(ids[None]).logits[0].to(torch.float32)
        info["saved_vs_in_memory_maxdiff"] = float((mem - logits).abs().max())
    summary[name] = info
    print(name, json.dumps(info))
    return model, logits


def main():
    os.makedirs(OUT, exist_ok=True)
    tok, bos_id, eos_id = build_tokenizer()
    print(f"tokenizer: {len(tok)} tokens, bos={bos_id} eos={eos_id}")

    with open(os.path.join(OUT, "tokenizer_cases.json"), "w") as f:
        json.dump({"cases": tokenizer_cases(tok)}, f, indent=1, ensure_ascii=False)
        f.write("\n")

    prompt_ids = tok.encode(PROMPT, add_special_tokens=False)
    ids = torch.tensor([bos_id] + prompt_ids, dtype=torch.int64)
    print(f"prompt: {len(ids)} tokens {ids.tolist()}")
    assert 12 <= len(ids) <= 16, len(ids)

    summary = {}
    rope_l3 = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }

    # -- llama (f32, tied, GQA, llama3 rope; config rewritten to v4 spelling)
    cfg = LlamaConfig(
        **common_llama_like(bos_id, eos_id),
        rope_parameters={"rope_theta": 10000.0, **rope_l3},
        tie_word_embeddings=True,
    )
    llama, llama_seed = make_model_searched(
        LlamaForCausalLM, cfg, 1, 8.0, ids, eos_id, dtypes=(torch.float32, torch.bfloat16)
    )
    path = os.path.join(OUT, "llama")
    save(llama, tok, path)
    v5_logits = load(path, torch.float32)(ids[None]).logits[0].detach()

    def to_v4(c):
        rp = c.pop("rope_parameters")
        c["rope_theta"] = rp.pop("rope_theta")
        c["rope_scaling"] = rp
        c["torch_dtype"] = c.pop("dtype")
        return c

    edit_config(path, to_v4)
    # llama3 scaling must matter for this model: compare with plain rope.
    plain = LlamaForCausalLM(
        LlamaConfig(**common_llama_like(bos_id, eos_id), rope_parameters={"rope_theta": 10000.0},
                    tie_word_embeddings=True)
    ).eval()
    plain.load_state_dict(llama.state_dict())
    with torch.no_grad():
        plain_logits = plain(ids[None]).logits[0]
    _, v4_logits = finish("llama", path, torch.float32, ids, eos_id, summary, mem_model=llama)
    summary["llama"]["v4_vs_v5_config_maxdiff"] = float((v4_logits - v5_logits).abs().max())
    summary["llama"]["llama3_vs_plain_rope_maxdiff"] = float((v4_logits - plain_logits).abs().max())
    assert summary["llama"]["v4_vs_v5_config_maxdiff"] == 0.0
    assert summary["llama"]["llama3_vs_plain_rope_maxdiff"] > 1e-2

    # -- llama_bf16 (same weights, stored and run in bf16; v5 spelling)
    path = os.path.join(OUT, "llama_bf16")
    save(llama, tok, path, dtype=torch.bfloat16)
    _, lg = finish("llama_bf16", path, torch.bfloat16, ids, eos_id, summary, mem_model=llama)
    summary["llama_bf16"]["vs_f32_maxdiff"] = float((lg - v4_logits).abs().max())

    # -- mistral (f32, untied, sliding window 4, sharded)
    cfg = MistralConfig(
        **common_llama_like(bos_id, eos_id),
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        sliding_window=4,
        tie_word_embeddings=False,
    )
    mistral, mistral_seed = make_model_searched(MistralForCausalLM, cfg, 2, 8.0, ids, eos_id)
    path = os.path.join(OUT, "mistral")
    save(mistral, tok, path, max_shard_size="100KB")
    full = MistralForCausalLM(MistralConfig(**{**cfg.to_dict(), "sliding_window": None})).eval()
    full.config._attn_implementation = "eager"
    full.load_state_dict(mistral.state_dict())
    with torch.no_grad():
        full_logits = full(ids[None]).logits[0]
    _, lg = finish("mistral", path, torch.float32, ids, eos_id, summary, mem_model=mistral)
    summary["mistral"]["window_vs_full_maxdiff"] = float((lg - full_logits).abs().max())
    summary["mistral"]["window_vs_full_first4_maxdiff"] = float((lg[:4] - full_logits[:4]).abs().max())
    assert summary["mistral"]["window_vs_full_maxdiff"] > 1e-2

    # -- qwen2 (f32, untied, qkv bias, no `architectures`)
    cfg = Qwen2Config(
        **common_llama_like(bos_id, eos_id),
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    qwen, qwen_seed = make_model_searched(
        Qwen2ForCausalLM, cfg, 3, 8.0, ids, eos_id, dtypes=(torch.float32, torch.float16)
    )
    path = os.path.join(OUT, "qwen2")
    save(qwen, tok, path)

    def drop_arch(c):
        c.pop("architectures", None)
        return c

    edit_config(path, drop_arch)
    _, q32 = finish("qwen2", path, torch.float32, ids, eos_id, summary, mem_model=qwen)

    # -- qwen2_f16
    path = os.path.join(OUT, "qwen2_f16")
    save(qwen, tok, path, dtype=torch.float16)
    _, lg = finish("qwen2_f16", path, torch.float16, ids, eos_id, summary, mem_model=qwen)
    summary["qwen2_f16"]["vs_f32_maxdiff"] = float((lg - q32).abs().max())

    # -- phi3 (f32, untied, fused qkv_proj / gate_up_proj, no rope scaling)
    cfg = Phi3Config(
        **common_llama_like(bos_id, eos_id),
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 1.0},
        original_max_position_embeddings=128,
        sliding_window=None,
        tie_word_embeddings=False,
    )
    phi3, phi3_seed = make_model_searched(Phi3ForCausalLM, cfg, 4, 8.0, ids, eos_id)
    path = os.path.join(OUT, "phi3")
    save(phi3, tok, path)
    finish("phi3", path, torch.float32, ids, eos_id, summary, mem_model=phi3)

    # -- gpt2 (f32, tied, learned positions, gelu_new)
    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        activation_function="gelu_new",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        attn_implementation="eager",
    )
    gpt2, gpt2_seed = make_model_searched(GPT2LMHeadModel, cfg, 5, 8.0, ids, eos_id)
    path = os.path.join(OUT, "gpt2")
    save(gpt2, tok, path)
    finish("gpt2", path, torch.float32, ids, eos_id, summary, mem_model=gpt2)

    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "greedy"} for k, v in summary.items()},
                     indent=1))


if __name__ == "__main__":
    main()
