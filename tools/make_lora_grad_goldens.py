#!/usr/bin/env python3
"""Write tests/data/golden/nano-lora-grads.json: the loss and LoRA adapter gradients of one
sequence through the nano Llama model (tests/data/nano/nano-llama.gguf), computed by PyTorch
autograd in float64 -- an independent reference for Hearth's own autograd (src/train/).

The model is rebuilt here from the GGUF with the `gguf` package's dequantizers (every block
type of the nano file), in GGUF's own layout: Q/K rows as the file stores them, so RoPE pairs
adjacent dimensions (2i, 2i+1) as llama.cpp's LLAMA_ROPE_TYPE_NORM does. LoRA on all seven
projections (attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down) of both layers,
rank 2, alpha 4 (scale alpha/rank = 2), A and B drawn from a fixed NumPy seed (B non-zero, so
that A's gradient is not zero as it is at PEFT's initialisation). Loss: mean cross-entropy over
the rows whose target is not -1.

Deterministic: running it again rewrites the same file.

    .venv-tools/bin/python tools/make_lora_grad_goldens.py
"""

import json
import pathlib

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/data/nano/nano-llama.gguf"
OUT = ROOT / "tests/data/golden/nano-lora-grads.json"
RANK, ALPHA = 2, 4.0
TARGETS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def load():
    r = GGUFReader(str(MODEL))
    meta = {f.name: f.parts[f.data[0]] for f in r.fields.values() if len(f.data) == 1}
    w = {}
    for t in r.tensors:
        v = dequantize(t.data, t.tensor_type).astype(np.float64)
        ne0 = int(t.shape[0])
        w[t.name] = torch.tensor(v.reshape(-1, ne0) if len(t.shape) > 1 else v.reshape(-1))
    return meta, w


def scalar(meta, key):
    return meta[key].tolist()[0]


def rms_norm(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def rope(x, n_head, head_dim, base):
    """Interleaved pairs (2i, 2i+1) rotated by pos * base^(-2i/head_dim)."""
    n = x.shape[0]
    x = x.view(n, n_head, head_dim // 2, 2)
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).view(n, -1)


def main():
    meta, w = load()
    n_layer = scalar(meta, "llama.block_count")
    n_head = scalar(meta, "llama.attention.head_count")
    n_kv = scalar(meta, "llama.attention.head_count_kv")
    eps = scalar(meta, "llama.attention.layer_norm_rms_epsilon")
    base = scalar(meta, "llama.rope.freq_base")
    n_embd = w["token_embd.weight"].shape[1]
    hd = n_embd // n_head
    n_vocab = w["token_embd.weight"].shape[0]

    rng = np.random.default_rng(11)
    tokens = rng.integers(0, n_vocab, size=13).tolist()
    # Rows 0-2 are a "prompt": no target; the last row has no next token.
    targets = [-1, -1, -1] + tokens[4:] + [-1]

    params = {}
    for layer in range(n_layer):
        for t in TARGETS:
            n_out, n_in = w[f"blk.{layer}.{t}.weight"].shape
            a = rng.uniform(-1, 1, size=(RANK, n_in)) / np.sqrt(n_in)
            b = rng.uniform(-1, 1, size=(n_out, RANK)) * 0.3
            params[(layer, t)] = (
                torch.tensor(a, requires_grad=True),
                torch.tensor(b, requires_grad=True),
            )
    scale = ALPHA / RANK

    def proj(x, layer, t):
        a, b = params[(layer, t)]
        return x @ w[f"blk.{layer}.{t}.weight"].T + scale * (x @ a.T) @ b.T

    n = len(tokens)
    x = w["token_embd.weight"][tokens]
    mask = torch.full((n, n), float("-inf"), dtype=torch.float64).triu(1)
    for layer in range(n_layer):
        h = rms_norm(x, w[f"blk.{layer}.attn_norm.weight"], eps)
        q = rope(proj(h, layer, "attn_q"), n_head, hd, base).view(n, n_head, hd)
        k = rope(proj(h, layer, "attn_k"), n_kv, hd, base).view(n, n_kv, hd)
        v = proj(h, layer, "attn_v").view(n, n_kv, hd)
        group = n_head // n_kv
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        s = torch.einsum("ihd,jhd->hij", q, k) / np.sqrt(hd) + mask
        o = torch.einsum("hij,jhd->ihd", torch.softmax(s, -1), v).reshape(n, n_head * hd)
        x = x + proj(o, layer, "attn_output")
        h = rms_norm(x, w[f"blk.{layer}.ffn_norm.weight"], eps)
        act = torch.nn.functional.silu(proj(h, layer, "ffn_gate")) * proj(h, layer, "ffn_up")
        x = x + proj(act, layer, "ffn_down")
    logits = rms_norm(x, w["output_norm.weight"], eps) @ w["output.weight"].T
    t = torch.tensor(targets)
    keep = t >= 0
    loss = torch.nn.functional.cross_entropy(logits[keep], t[keep])
    loss.backward()

    def flat(v):
        return [float(f"{x:.9g}") for x in v.detach().reshape(-1).tolist()]

    out = {
        "model": "nano/nano-llama.gguf",
        "rank": RANK,
        "alpha": ALPHA,
        "tokens": tokens,
        "targets": targets,
        "loss": loss.item(),
        "pairs": [
            {
                "layer": layer,
                "target": t,
                "a": flat(a),
                "b": flat(b),
                "grad_a": flat(a.grad),
                "grad_b": flat(b.grad),
            }
            for (layer, t), (a, b) in params.items()
        ],
    }
    OUT.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"loss {loss.item():.6f}; wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
