"""Writes a GPT-2-small-shaped model with random bf16 weights (config.json +
model.safetensors, no tokenizer) for `optc bench`, the way hf_baseline.py's
save_model part writes its Llama: a GPT-2 family model (Conv1D projections,
gelu_new, LayerNorm, learned positions) to time on the GPU.

    python3 scripts/random_gpt2.py DIR [--layers 12 --hidden 768 --heads 12]
"""
import argparse

import torch
import transformers

p = argparse.ArgumentParser()
p.add_argument("dir")
p.add_argument("--layers", type=int, default=12)
p.add_argument("--hidden", type=int, default=768)
p.add_argument("--heads", type=int, default=12)
a = p.parse_args()
torch.manual_seed(0)
cfg = transformers.GPT2Config(n_layer=a.layers, n_embd=a.hidden, n_head=a.heads, n_positions=1024)
model = transformers.GPT2LMHeadModel(cfg).to(torch.bfloat16)
model.save_pretrained(a.dir, safe_serialization=True)
print(f"wrote a random GPT-2 ({a.layers} layers, hidden {a.hidden}) to {a.dir}")
