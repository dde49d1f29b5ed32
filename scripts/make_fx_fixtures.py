#!/usr/bin/env python3
"""torch.export archives (.pt2) of the tiny fixture models + torch's outputs.

Writes tests/fixtures/fx/:
  <name>.pt2                 torch.export.save(torch.export.export(...)),
                             with a dynamic sequence (or batch) dimension
  <name>.reference.safetensors
                             for each length L in LENGTHS:
                               input_<L>   the input (ids i64 [1, L], or
                                           f32 [L, ...] for the MLP)
                               output_<L>  f32: what the *exported program*
                                           computes (ep.module()), which the
                                           script checks against the eager
                                           model first
  MANIFEST.json              torch/transformers versions, the ATen targets
                             of every graph, the export example length

Models:
  llama   tests/fixtures/hf/llama  (LlamaForCausalLM, GQA, llama3 rope)
  qwen2   tests/fixtures/hf/qwen2  (Qwen2ForCausalLM, q/k/v bias)
  gpt2    tests/fixtures/hf/gpt2   (GPT2LMHeadModel, Conv1D = addmm)
  mlp     a small non-LLM model: patch tokens -> layer_norm -> bidirectional
          multi-head sdpa -> gelu MLP -> mean pool -> linear -> softmax,
          dynamic batch
  ops     OpZoo: ATen ops the others do not use (rms_norm, clamp, mm, bmm,
          permute, stack/unbind, split_with_sizes, flatten/unflatten,
          select, index_select of a buffer, where, factories with symbolic
          sizes, unary math, log_softmax, triu/tril, reductions, argmax,
          t, strided slices), dynamic batch

The HF models are loaded from the safetensors fixtures with
attn_implementation="sdpa" and wrapped so forward(input_ids) returns the
logits (use_cache=False), which is what a user exports for optc.

Run on the GPU machine (torch 2.11, transformers 5.17), from the repo root:
    python3 scripts/make_fx_fixtures.py [OUT_DIR] [--only=NAME ...]
It runs on the CPU there (fp32, one thread, deterministic).
"""

import json
import os
import sys
import traceback
import zipfile

import torch

torch.set_num_threads(1)
torch.manual_seed(0)

import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [a for a in sys.argv[1:] if not a.startswith("--only=")]
ONLY = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--only=")]
OUT = ARGS[0] if ARGS else os.path.join(ROOT, "tests", "fixtures", "fx")
EXAMPLE_LEN = 8
LENGTHS = [5, 8, 13]


class Logits(torch.nn.Module):
    """forward(input_ids) -> logits, the graph a user exports."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False).logits


class PatchMlp(torch.nn.Module):
    """A tiny vision-transformer-like classifier (no LLM ops but sdpa)."""

    def __init__(self, patches=6, patch_dim=12, dim=32, heads=4, classes=10):
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Linear(patch_dim, dim)
        self.pos = torch.nn.Parameter(torch.randn(patches, dim) * 0.02)
        self.norm1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.norm2 = torch.nn.LayerNorm(dim)
        self.fc1 = torch.nn.Linear(dim, 2 * dim)
        self.fc2 = torch.nn.Linear(2 * dim, dim)
        self.head = torch.nn.Linear(dim, classes)

    def forward(self, x):  # x: [B, patches, patch_dim]
        b, n, _ = x.shape
        h = self.embed(x) + self.pos
        q, k, v = self.qkv(self.norm1(h)).chunk(3, dim=-1)
        split = lambda t: t.view(b, n, self.heads, -1).transpose(1, 2)  # noqa: E731
        a = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, -1))
        h = h + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(h))))
        return torch.softmax(self.head(h.mean(dim=1)), dim=-1)


class OpZoo(torch.nn.Module):
    """Many ATen ops the LLM fixtures do not use, each checked against torch."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(6, 6)
        self.norm = torch.nn.RMSNorm(6, eps=1e-6)
        self.w = torch.nn.Parameter(torch.randn(6, 6) * 0.3)
        self.register_buffer("pick", torch.tensor([2, 0]))

    def forward(self, x):  # x: [B, 4, 6]
        b = x.shape[0]
        h = torch.clamp(self.norm(self.lin(x)), min=-1.5, max=1.5)
        m = torch.mm(h.reshape(-1, 6), self.w).view(b, 4, 6)
        bm = torch.bmm(m, m.transpose(1, 2))
        p = m.permute(0, 2, 1)
        u0, u1 = torch.unbind(torch.stack([p, p * 2.0], dim=1), dim=1)
        a, c = torch.split(u0, [2, 4], dim=1)
        g = torch.flatten(u1, 1).unflatten(1, (4, 6))
        sel = g.select(1, -1)
        isel = torch.index_select(g, 2, self.pick)
        wh = torch.where(g > 0, g, torch.zeros_like(g))
        full = torch.ones(b, 4, 6) * torch.full((b, 4, 6), 0.5)
        e = torch.exp(-g.abs()) * torch.sigmoid(g) + torch.erf(g) + torch.relu(g)
        e = e - torch.sqrt(g.abs() + 1) / torch.log(g.abs() + 2) + torch.tanh(g).neg()
        tri = torch.triu(bm, diagonal=1) + torch.tril(bm)
        parts = [
            e.reshape(b, -1),
            torch.log_softmax(g, dim=-1).reshape(b, -1),
            (wh + full + torch.minimum(g, wh) + torch.maximum(g, -wh)).reshape(b, -1),
            tri.reshape(b, -1),
            sel,
            isel.reshape(b, -1),
            a.sum(1) + c.mean(1),
            torch.amax(g, dim=-1) + g.sum(dim=(1, 2))[:, None] + g.mean(),
            torch.argmax(g, dim=-1).float(),
            (sel @ self.w.t()),
            g.pow(2).add(1.0).rsqrt().reshape(b, -1),
            torch.softmax(bm, dim=1).reshape(b, -1) / 3,
            g.unsqueeze(0).squeeze(0)[:, 1:3, ::2].reshape(b, -1),
        ]
        return torch.cat(parts, dim=1)


def targets(ep):
    counts = {}

    def walk(gm):
        for n in gm.graph.nodes:
            if n.op == "call_function":
                t = str(n.target)
                counts[t] = counts.get(t, 0) + 1
            if n.op == "get_attr":
                sub = getattr(gm, n.target, None)
                if isinstance(sub, torch.fx.GraphModule):
                    walk(sub)

    walk(ep.graph_module)
    return dict(sorted(counts.items()))


def export(name, module, make_input, dim_index):
    example = make_input(EXAMPLE_LEN)
    tried = []
    ep = None
    for label, dim in [
        ("Dim(min=2,max=64)", torch.export.Dim("seq" if dim_index == 1 else "batch", min=2, max=64)),
        ("Dim.AUTO", torch.export.Dim.AUTO),
    ]:
        try:
            ep = torch.export.export(module, (example,), dynamic_shapes=({dim_index: dim},))
            break
        except Exception as e:  # noqa: BLE001
            tried.append(f"{label}: {type(e).__name__}: {str(e)[:400]}")
    if ep is None:
        raise RuntimeError("export failed: " + " | ".join(tried))
    path = os.path.join(OUT, f"{name}.pt2")
    torch.export.save(ep, path)
    reloaded = torch.export.load(path).module()
    tensors = {}
    for n in LENGTHS:
        x = make_input(n)
        with torch.no_grad():
            eager = module(x)
            got = reloaded(x)
        err = (eager - got).abs().max().item()
        assert err < 1e-5, f"{name}: exported program differs from eager by {err} at length {n}"
        tensors[f"input_{n}"] = x.contiguous()
        tensors[f"output_{n}"] = got.float().contiguous()
    save_file(tensors, os.path.join(OUT, f"{name}.reference.safetensors"))
    with zipfile.ZipFile(path) as z:
        files = [(i.filename, i.file_size) for i in z.infolist()]
    return {
        "dynamic": tried and "Dim.AUTO" or "Dim(min=2,max=64)",
        "export_failures": tried,
        "targets": targets(ep),
        "archive": files,
        "bytes": os.path.getsize(path),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    manifest = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "example_len": EXAMPLE_LEN,
        "lengths": LENGTHS,
        "models": {},
    }
    path = os.path.join(OUT, "MANIFEST.json")
    if ONLY and os.path.exists(path):
        with open(path) as f:
            manifest["models"] = json.load(f)["models"]
    wanted = lambda name: not ONLY or name in ONLY  # noqa: E731
    failed = []
    for name in [n for n in ["llama", "qwen2", "gpt2"] if wanted(n)]:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                os.path.join(ROOT, "tests", "fixtures", "hf", name),
                attn_implementation="sdpa",
                dtype=torch.float32,
            ).eval()
            vocab = model.config.vocab_size
            g = torch.Generator().manual_seed(len(name))

            def ids(n, vocab=vocab, g=g):
                return torch.randint(0, vocab, (1, n), generator=g)

            manifest["models"][name] = export(name, Logits(model).eval(), ids, 1)
        except Exception:  # noqa: BLE001
            failed.append(name)
            traceback.print_exc()
    def zoo():
        torch.manual_seed(2)
        g = torch.Generator().manual_seed(11)
        return OpZoo().eval(), lambda n: torch.randn(n, 4, 6, generator=g)

    def mlp():
        torch.manual_seed(1)
        g = torch.Generator().manual_seed(7)
        return PatchMlp().eval(), lambda n: torch.randn(n, 6, 12, generator=g)

    # Non-LLM modules, exported with a dynamic batch (dim 0).
    for name, build in [("ops", zoo), ("mlp", mlp)]:
        if not wanted(name):
            continue
        try:
            module, make_input = build()
            manifest["models"][name] = export(name, module, make_input, 0)
        except Exception:  # noqa: BLE001
            failed.append(name)
            traceback.print_exc()
    with open(path, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, m in manifest["models"].items():
        print(f"{name}: {m['bytes']} bytes, dynamic {m['dynamic']}, {sum(m['targets'].values())} calls")
        for t, c in m["targets"].items():
            print(f"   {c:4d} {t}")
    if failed:
        print("FAILED:", failed)
        sys.exit(1)


if __name__ == "__main__":
    main()
