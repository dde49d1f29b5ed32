#!/usr/bin/env python3
"""Reference outputs for the SmolLM2 GGUF test, computed by transformers from
the same GGUF file (dequantised to float32, eager attention).

Writes tests/fixtures/gguf/smollm2_reference.json:
  prompts: [{text, ids, top: [[[token, logit] x 20] per position]}]
  tokenizer_cases: [{text, ids}]   (tokenizer(text)["input_ids"])
  chats: [{messages, text, ids}]   (apply_chat_template with the generation prompt)

Needs torch, transformers, gguf and accelerate; run scripts/get-smollm2.sh
first. Usage: python3 scripts/make_gguf_reference.py
"""

import json
import os
import shutil
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "target/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = "tests/fixtures/gguf/smollm2_reference.json"
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Once upon a time, in a land far away, there lived a",
]
TOKENIZER_CASES = [
    "Hello world",
    "  leading and trailing spaces  ",
    "multiple   spaces\tand\ttabs",
    "line one\nline two\n\nline four\r\n",
    "Café naïve résumé Ærøskøbing",
    "日本語のテキストと中文",
    "emoji 😀🎉 and a family 👨‍👩‍👧‍👦 and a flag 🇫🇷",
    "numbers 1234567 and 3.14159",
    "<|im_start|>user\nhi<|im_end|>",
    "",
]


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ],
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    tmp = tempfile.mkdtemp()
    try:
        os.symlink(os.path.abspath(GGUF), os.path.join(tmp, "model.gguf"))
        tok = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
        model = AutoModelForCausalLM.from_pretrained(
            tmp, gguf_file="model.gguf", dtype=torch.float32, attn_implementation="eager"
        )
    finally:
        shutil.rmtree(tmp)
    prompts = []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        top = torch.topk(logits, 20, dim=-1)
        prompts.append(
            {
                "text": text,
                "ids": ids,
                "top": [
                    [[int(i), float(v)] for i, v in zip(idx.tolist(), val.tolist())]
                    for idx, val in zip(top.indices, top.values)
                ],
            }
        )
    cases = [{"text": t, "ids": tok(t)["input_ids"]} for t in TOKENIZER_CASES]
    chats = []
    for messages in CHATS:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        chats.append({"messages": messages, "text": text, "ids": ids})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(
            {"gguf": os.path.basename(GGUF), "prompts": prompts, "tokenizer_cases": cases, "chats": chats}, f, indent=1
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
