#!/usr/bin/env python3
"""Reference logits and greedy continuations from `transformers` (fp32, CPU).

Makes tests/data/golden/<model>.json for:

    nano-llama    tests/data/nano/nano-llama.gguf   (6 raw prompts)
    nano-llama3   tests/data/nano/nano-llama3.gguf  (3 raw prompts)
    smollm2       SmolLM2-135M-Instruct.Q4_1.gguf   (4 raw + 3 chat-templated prompts)

Each model is loaded with AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32,
attn_implementation="eager"): transformers dequantizes every tensor to fp32 with the `gguf` package
(and un-permutes attn_q / attn_k from llama.cpp's layout), and the forward pass runs in fp32 on the
CPU. The script asserts that every Linear is a plain fp32 torch.nn.Linear (no quantized kernels).

nano-llama3: transformers' GGUF loader ignores the `rope_freqs.weight` tensor, so the llama3 RoPE
scaling is passed to from_pretrained as `rope_parameters` (the same constants make_nano_model.py
used), and the script asserts that transformers' resulting inverse frequencies equal the default
ones divided by the file's rope_freqs factors (relative error < 1e-5).

Prompt ids come from the tokenizer transformers builds from the GGUF (gguf_file=), except that its
pre-tokenizer is replaced by the `smollm` one (digits split one by one, then GPT-2's byte-level
regex -- the same as SmolLM2's own tokenizer.json), which transformers does not know; the script
records whether the stock tokenizer would have given the same ids, and checks the ids against
tools/llamacpp_tok.py (a port of llama.cpp's tokenizer; a difference is recorded as "llamacpp_ids").
Chat prompts are rendered with the GGUF's `tokenizer.chat_template` (apply_chat_template,
add_generation_prompt=True) and then tokenized without adding special tokens.

Per case the JSON holds:
    name, chat, prompt_text, messages (chat cases), prompt_ids,
    greedy_ids       32 generated ids, greedy (argmax, first index on ties), no EOS stopping,
                     decoded incrementally with the KV cache
    greedy_text      the tokenizer's decode of greedy_ids (for people; not for comparison)
    greedy_margins   top-1 minus top-2 logit at each of the 32 steps
    last_logits      all logits at the last prompt position (only when vocab < 1000)
    last_logits_top  the 64 highest [id, logit] at the last prompt position, highest first
    last_logits_stats {max, mean, std} of those logits (std is the population std, ddof=0)
All floats are f32 values written as the shortest decimal that reads back to the same f32.

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_model_goldens.py [--models nano-llama,nano-llama3,smollm2]
        [--smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf]

The SmolLM2 GGUF is looked for at $HEARTH_SMOLLM2_GGUF, then /work/models/; its sha256 is checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from tokenizers import pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_tok  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "golden"
NANO_DIR = REPO / "tests" / "data" / "nano"

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_GEN = 32
N_TOP = 64
FULL_LOGITS_MAX_VOCAB = 1000

# The constants tools/make_nano_model.py wrote into rope_freqs.weight of nano-llama3.gguf.
NANO_LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                        high_freq_factor=4.0, original_max_position_embeddings=128)

LONG_TEXT = (
    "Once upon a time there was a little house at the edge of the forest. In the house lived an old man "
    "and his dog. Every morning the man would open the door, look at the sky and say: the sun is up, the "
    "day is good, and there is work to do. The dog would run out into the garden and the man would follow "
    "him with a cup of tea in his hand. One day the dog did not come back, and the man"
)

NANO_PROMPTS = [
    ("capital", "The capital of France is"),
    ("story", "Once upon a time, there was a little"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n"),
    ("digits_unicode", "Numbers 1234567 and 3.14159; caf\u00e9 na\u00efve \u65e5\u672c \U0001F44D"),
    ("special_tokens", "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"),
    ("long", LONG_TEXT),
]
NANO_LLAMA3_PROMPTS = [
    ("capital", "The capital of France is"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n"),
    ("long", LONG_TEXT),
]
SMOLLM2_PROMPTS = [
    ("capital", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
    ("once_upon", "Once upon a time"),
    ("counting", "1, 2, 3, 4, 5,"),
]
SMOLLM2_CHATS = [
    ("chat_sky", [{"role": "user", "content": "Why is the sky blue?"}]),
    ("chat_haiku", [{"role": "user", "content": "Write a haiku about the sea."}]),
    ("chat_system", [{"role": "system", "content": "You are a concise assistant. Answer in one sentence."},
                     {"role": "user", "content": "What is the capital of Japan?"}]),
]


def f32(x) -> float:
    """A Python float whose JSON text is the shortest decimal that reads back as the same f32."""
    v = np.float32(x)
    if not np.isfinite(v):
        raise ValueError(f"non-finite value {v}")
    out = float(np.format_float_scientific(v, unique=True))
    assert np.float32(out) == v and np.float32(float(repr(out))) == v
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm_pre_tokenizer():
    """llama.cpp's `smollm` pre-tokenizer == SmolLM2's tokenizer.json: digits one by one, then GPT-2's regex."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def load(path: Path, rope_parameters: dict | None = None):
    kwargs = dict(dtype=torch.float32, attn_implementation="eager")
    if rope_parameters is not None:
        kwargs["rope_parameters"] = rope_parameters
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, **kwargs)
    model.eval()
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            assert type(mod) is torch.nn.Linear and mod.weight.dtype == torch.float32, f"{name} is not a plain fp32 Linear"
    stock = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    return model, tok, stock


def check_llama3_rope(model, path: Path) -> None:
    import gguf
    reader = gguf.GGUFReader(str(path))
    factors = torch.tensor(np.array([t for t in reader.tensors if t.name == "rope_freqs.weight"][0].data, dtype=np.float32))
    head_dim = model.config.head_dim
    base = 1.0 / (NANO_LLAMA3_ROPE["rope_theta"] ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    inv = model.model.rotary_emb.inv_freq.to(torch.float32)
    err = float(((base / factors) / inv - 1).abs().max())
    assert err < 1e-5, f"transformers' llama3 inv_freq disagrees with rope_freqs.weight (rel err {err})"
    print(f"  llama3 rope: transformers inv_freq == base / rope_freqs (max rel err {err:.2e})")


@torch.no_grad()
def run_case(model, tok, stock, port, name: str, text: str, chat: bool, messages=None) -> dict:
    if chat:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        stock_ids = stock(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(text)["input_ids"]
        stock_ids = stock(text)["input_ids"]
    vocab = model.config.vocab_size

    out = model(torch.tensor([ids]), use_cache=True)
    logits = out.logits[0, -1].to(torch.float32)
    assert logits.shape[0] == vocab
    past = out.past_key_values
    last = logits.clone()

    greedy, margins = [], []
    for _ in range(N_GEN):
        top2 = torch.topk(logits, 2)
        nxt = int(torch.argmax(logits))
        assert nxt == int(top2.indices[0]) or float(top2.values[0]) == float(top2.values[1])
        greedy.append(nxt)
        margins.append(f32(top2.values[0] - top2.values[1]))
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].to(torch.float32)

    top = torch.topk(last, N_TOP)
    l64 = last.double()
    case = {
        "name": name,
        "chat": chat,
        "prompt_text": text,
    }
    if messages is not None:
        case["messages"] = messages
    case.update({
        "prompt_ids": ids,
        "greedy_ids": greedy,
        "greedy_text": tok.decode(greedy),
        "greedy_margins": margins,
    })
    if vocab < FULL_LOGITS_MAX_VOCAB:
        case["last_logits"] = [f32(v) for v in last.tolist()]
    case["last_logits_top"] = [[int(i), f32(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())]
    case["last_logits_stats"] = {"max": f32(last.max()), "mean": f32(l64.mean()), "std": f32(l64.std(unbiased=False))}
    port_ids = port.encode(text, add_special=not chat, parse_special=True)
    if port_ids != ids:
        print(f"  WARNING {name}: tools/llamacpp_tok.py gives other prompt ids: {port_ids}")
        case["llamacpp_ids"] = port_ids
    if stock_ids != ids:
        case["note"] = "transformers' stock GGUF tokenizer (GPT-2 regex, no digit split) gives other ids: " + json.dumps(stock_ids)
    print(f"  {name:16s} {len(ids):3d} prompt ids, min margin {min(margins):.4f}, "
          f"margins<0.05: {sum(m < 0.05 for m in margins)}/{N_GEN}{'  (stock tokenizer differs)' if stock_ids != ids else ''}")
    print(f"      -> {tok.decode(greedy)!r}")
    return case


def make(model_name: str, path: Path, raw_prompts, chats=(), rope_parameters=None) -> dict:
    print(f"{model_name}: {path}")
    model, tok, stock = load(path, rope_parameters)
    port = llamacpp_tok.Vocab(str(path))
    if rope_parameters is not None:
        check_llama3_rope(model, path)
    cases = []
    for name, text in raw_prompts:
        cases.append(run_case(model, tok, stock, port, name, text, chat=False))
    for name, messages in chats:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        cases.append(run_case(model, tok, stock, port, name, text, chat=True, messages=messages))
    digest = sha256(path)
    source = (f"transformers {transformers.__version__} (torch {torch.__version__}) fp32 CPU eager attention on "
              f"{path.name} sha256 {digest}")
    if rope_parameters is not None:
        source += "; rope_parameters " + json.dumps(rope_parameters, sort_keys=True) + " passed to from_pretrained"
    doc = {"model": model_name, "source": source, "n_vocab": model.config.vocab_size, "cases": cases}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{model_name}.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes)")
    return doc


def find_smollm2(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("HEARTH_SMOLLM2_GGUF"), "/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"):
        if cand and Path(cand).is_file():
            p = Path(cand)
            digest = sha256(p)
            if digest != SMOLLM2_SHA256:
                sys.exit(f"{p}: sha256 {digest} is not the expected {SMOLLM2_SHA256}")
            return p
    sys.exit("SmolLM2-135M-Instruct.Q4_1.gguf not found: pass --smollm2 PATH or set HEARTH_SMOLLM2_GGUF")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="nano-llama,nano-llama3,smollm2")
    ap.add_argument("--smollm2", default=None, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for m in args.models.split(","):
        if m == "nano-llama":
            make(m, NANO_DIR / "nano-llama.gguf", NANO_PROMPTS)
        elif m == "nano-llama3":
            make(m, NANO_DIR / "nano-llama3.gguf", NANO_LLAMA3_PROMPTS, rope_parameters=NANO_LLAMA3_ROPE)
        elif m == "smollm2":
            make(m, find_smollm2(args.smollm2), SMOLLM2_PROMPTS, SMOLLM2_CHATS)
        else:
            sys.exit(f"unknown model {m}")


if __name__ == "__main__":
    main()
